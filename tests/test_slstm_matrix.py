"""Every way in x every way out for models with sLSTM blocks (issue #26): params bit-equal and logits equal.

Ways in (the folders are built from the frozen `xlstm==2.0.6` fixtures in tests/fixtures/slstm, so no library is
needed here):
* `helibrunna`: `config.yaml` with a `model:` section and no backend key (the library's default "cuda" storage
  layout), `model.safetensors` with `xLSTMLMModel` keys in the cuda layout: the mixed [mLSTM, sLSTM] LM;
* `distil`: Distil-xLSTM's `config.json` (`model_type` "xlstm", the library config under `xlstm_cfg`), vanilla
  layout, tied embeddings stored as `lm_head.weight` only: the sLSTM-only LM (S > context_length);
* `ours`: our own `save_pretrained` folder of the sLSTM-only LM with `scan_blocks=True` (stacked params).
Ways out: `save_pretrained` as one file, `save_pretrained` sharded (small `max_shard_size`), the Hub export loaded
through transformers' remote code in a venv where this package cannot be imported, and back to the library's
layout (`library_checkpoint.save_library_folder`) in both storage backends.

Equal means: every param bit for bit (a library folder read back with the way-in model's own `scan_blocks`), and
logits within 1e-6 of the way-in model's (float32; the same program on the same params gives the same bits); each
way-in model also matches the library's frozen logits to 1e-5 (measured ~6e-7).
"""

import json
from pathlib import Path

import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import save_file

from conftest import load_slstm_fixture, slstm_cuda_layout

from modeling_xlstm_flax.library_checkpoint import save_library_folder
from modeling_xlstm_flax.modeling_flax_xlstm import FlaxXLSTMForCausalLM

LIBRARY_TOL = 1e-5  # against the library's frozen logits (float32, logits ~1-3)
SAME_TOL = 1e-6  # a way out against the way-in model
WAYS_IN = ("helibrunna", "distil", "ours")
LOCAL_WAYS_OUT = ("single", "sharded", "library-vanilla", "library-cuda")


def flat(params) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()}


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def assert_same_params(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), what
    for key, value in want.items():
        assert got[key].dtype == value.dtype, f"{what} {key}"
        np.testing.assert_array_equal(got[key], value, err_msg=f"{what} {key}")


def write_folder(folder: Path, config_files: dict, sd: dict) -> Path:
    folder.mkdir(parents=True)
    for name, text in config_files.items():
        (folder / name).write_text(text)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder


def cuda_layout(sd: dict, heads: int) -> dict:
    return slstm_cuda_layout(sd, heads)


def way_in_folders(root: Path) -> dict:
    """{way in: (folder, library fixture name)}."""
    import yaml  # PyYAML: a dependency of transformers

    mixed_cfg, mixed_sd, _ = load_slstm_fixture("lm_mixed")
    helibrunna_cfg = json.loads(json.dumps(mixed_cfg))
    assert helibrunna_cfg["slstm_block"]["slstm"].pop("backend") == "vanilla"  # absent: the library's "cuda"
    helibrunna = write_folder(root / "helibrunna", {"config.yaml": yaml.safe_dump(
        {"training": {"batch_size": 8}, "model": helibrunna_cfg})},
        cuda_layout(mixed_sd, mixed_cfg["slstm_block"]["slstm"]["num_heads"]))

    slstm_cfg, slstm_sd, _ = load_slstm_fixture("lm_slstm")
    assert slstm_cfg["tie_weights"] and slstm_cfg["slstm_block"]["slstm"]["backend"] == "vanilla"
    distil = write_folder(root / "distil", {"config.json": json.dumps(
        {"model_type": "xlstm", "architectures": ["DistilxLSTM"], "xlstm_cfg": slstm_cfg})},
        {k: v for k, v in slstm_sd.items() if k != "token_embedding.weight"})

    scanned = FlaxXLSTMForCausalLM.from_pretrained(distil, scan_blocks=True)
    scanned.save_pretrained(root / "ours")
    return {"helibrunna": (helibrunna, "lm_mixed"), "distil": (distil, "lm_slstm"), "ours": (root / "ours", "lm_slstm")}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """{way in: {"model", "params", "logits", "idx", "library_logits", "out": {way out: folder}}}: each way-in model
    loaded once and written every local way out once (the Hub export is its own test: a subprocess)."""
    root = tmp_path_factory.mktemp("slstm-matrix")
    cases = {}
    for way, (folder, fixture) in way_in_folders(root / "in").items():
        _, _, arrays = load_slstm_fixture(fixture)
        model = FlaxXLSTMForCausalLM.from_pretrained(folder)
        out = {"single": root / way / "single", "sharded": root / way / "sharded"}
        model.save_pretrained(out["single"])
        model.save_pretrained(out["sharded"], max_shard_size="20KB")
        for backend in ("vanilla", "cuda"):
            out[f"library-{backend}"] = save_library_folder(model.params, model.config,
                                                            root / way / f"library-{backend}", backend)
        cases[way] = dict(model=model, params=flat(model.params), idx=arrays["idx"],
                          logits=np.asarray(model(arrays["idx"]).logits), library_logits=arrays["logits"], out=out)
    return cases


@pytest.mark.parametrize("way_in", WAYS_IN)
def test_each_way_in_matches_the_library(matrix, way_in):
    case = matrix[way_in]
    config = case["model"].config
    assert config.slstm_block_indices == ([1] if way_in == "helibrunna" else [0, 1])
    assert config.scan_blocks == (way_in == "ours")
    assert config.tie_word_embeddings == (way_in != "helibrunna")
    assert max_diff(case["logits"], case["library_logits"]) <= LIBRARY_TOL


@pytest.mark.parametrize("way_out", LOCAL_WAYS_OUT)
@pytest.mark.parametrize("way_in", WAYS_IN)
def test_every_way_out_loads_back_to_the_same_model(matrix, way_in, way_out):
    case = matrix[way_in]
    folder = case["out"][way_out]
    if way_out == "sharded":
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1 and not (folder / "model.safetensors").exists()
    if way_out.startswith("library-"):
        backend = way_out.split("-")[1]
        written = json.loads((folder / "config.json").read_text())["xlstm_cfg"]
        assert written["slstm_block"]["slstm"]["backend"] == backend
        assert written["slstm_at"] == case["model"].config.slstm_block_indices
        # the library folder holds no scan layout: read it back into the way-in model's own layout
        again = FlaxXLSTMForCausalLM.from_pretrained(folder, scan_blocks=case["model"].config.scan_blocks)
    else:
        again = FlaxXLSTMForCausalLM.from_pretrained(folder)
        assert again.config.to_dict()["slstm_block"] == case["model"].config.to_dict()["slstm_block"]
    assert again.config.slstm_block_indices == case["model"].config.slstm_block_indices
    assert_same_params(flat(again.params), case["params"], f"{way_in} -> {way_out}")
    logits = np.asarray(again(case["idx"]).logits)
    assert max_diff(logits, case["logits"]) <= SAME_TOL
    assert max_diff(logits, case["library_logits"]) <= LIBRARY_TOL


def test_library_layouts_differ_only_in_the_recurrent_kernel_and_bias(matrix):
    """The two backends' folders of one model hold the same tensors except the sLSTM kernel and bias, whose shapes
    (kernel) or order (bias) follow the backend: the round trips above read each layout, not one twice."""
    from safetensors.numpy import load_file

    out = matrix["helibrunna"]["out"]
    vanilla, cuda = (load_file(str(out[f"library-{b}"] / "model.safetensors")) for b in ("vanilla", "cuda"))
    assert vanilla.keys() == cuda.keys()
    differ = sorted(k for k in vanilla if vanilla[k].shape != cuda[k].shape or not np.array_equal(vanilla[k], cuda[k]))
    assert differ == ["xlstm_block_stack.blocks.1.xlstm.slstm_cell._bias_",
                      "xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_"]
    assert vanilla[differ[1]].shape == (4, 32, 8) and cuda[differ[1]].shape == (4, 8, 32)  # NH 4, DH 8


REMOTE_SCRIPT = """
import importlib.util, json, sys
import numpy as np

def importable():
    try:
        import modeling_xlstm_flax  # noqa: F401
    except ImportError:
        return False
    return True

assert importlib.util.find_spec("modeling_xlstm_flax") is None and not importable(), "the package is importable"
from flax.traverse_util import flatten_dict
from transformers import AutoConfig

jobs = json.loads(sys.argv[1])
for job in jobs:
    folder = job["folder"]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    try:  # transformers 4.x
        from transformers import FlaxAutoModelForCausalLM
        model = FlaxAutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    except ImportError:  # transformers 5: no Flax auto classes
        from transformers.dynamic_module_utils import get_class_from_dynamic_module
        model = get_class_from_dynamic_module(config.auto_map["FlaxAutoModelForCausalLM"], folder).from_pretrained(
            folder)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    params = {k: np.asarray(v) for k, v in flatten_dict(model.params, sep="/").items()}
    np.savez(job["params"], **params)
    np.save(job["logits"], np.asarray(model(np.load(job["ids"])).logits))
assert "modeling_xlstm_flax" not in sys.modules, "the remote code imported the package"
print("REMOTE OK", len(jobs))
"""


@pytest.mark.slow
def test_hub_export_of_every_way_in_loads_without_the_package(matrix, tmp_path):
    """One subprocess in a venv without this package (tests/test_hub.py::remote_code_venv) loads the Hub export of
    every way-in model through transformers' remote code: same params bit for bit, same logits."""
    from modeling_xlstm_flax.hub import export_hub_folder
    from test_hub import remote_code_venv, run_remote

    jobs = []
    for way in WAYS_IN:
        case = matrix[way]
        folder = export_hub_folder(case["model"], tmp_path / f"hub-{way}", repo_id=f"someone/{way}")
        np.save(tmp_path / f"{way}-ids.npy", case["idx"])
        jobs.append(dict(way=way, folder=str(folder), ids=str(tmp_path / f"{way}-ids.npy"),
                         params=str(tmp_path / f"{way}-params.npz"), logits=str(tmp_path / f"{way}-logits.npy")))
    python = remote_code_venv(tmp_path)
    proc = run_remote(python, REMOTE_SCRIPT, jobs, tmp_path, tmp_path / "hf-home")
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert f"REMOTE OK {len(WAYS_IN)}" in proc.stdout
    for job in jobs:
        case = matrix[job["way"]]
        with np.load(job["params"]) as z:
            assert_same_params({k: z[k] for k in z.files}, case["params"], f"{job['way']} -> hub")
        logits = np.load(job["logits"])
        assert max_diff(logits, case["logits"]) <= SAME_TOL
        assert max_diff(logits, case["library_logits"]) <= LIBRARY_TOL
