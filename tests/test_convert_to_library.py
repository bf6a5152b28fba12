"""`xlstm-flax convert to-library` (issue #26): our model folder -> a folder of NX-AI's PyTorch `xlstm` library, in
either sLSTM storage layout, and what it refuses.

The round trip starts from the frozen `xlstm==2.0.6` fixtures (tests/fixtures/slstm): the library's own state dict
-> `convert from-library` -> our save -> `convert to-library --backend B`. The written state dict must be the
fixture's (vanilla) or the fixture's rewritten in the cuda layout (`conftest.slstm_cuda_layout`, itself checked
against the library in test_slstm.py), and loading each written folder back must give our params bit for bit.
Exactness: every tensor is bit-equal except the norm weights, which we hold as scale = 1 + w (the library stores
w), so w comes back as fl(1 + w) - 1: within half a float32 ulp of 1 + w (<= 6e-8), exact again once loaded.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from conftest import load_slstm_fixture, slstm_cuda_layout

from modeling_xlstm_flax.convert_common import ConversionError, main
from modeling_xlstm_flax.modeling_flax_xlstm import FlaxXLSTMForCausalLM

BUNDLED = Path(__file__).resolve().parents[1] / "modeling_xlstm_flax" / "bundled_model"  # an mlstm_v1 model
NORM_WEIGHTS = ("xlstm_norm.weight", "ffn_norm.weight", "group_norm.weight", "outnorm.weight",
                "post_blocks_norm.weight")  # stored as w by the library, held as 1 + w by us


def flat(params) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()}


def library_folder(root: Path, fixture: str) -> Path:
    """The fixture as a library folder (Distil-xLSTM's config.json with `xlstm_cfg`, vanilla layout) with a
    tokenizer file beside it."""
    config, sd, _ = load_slstm_fixture(fixture)
    folder = root / fixture
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"xlstm_cfg": config}))
    (folder / "tokenizer.json").write_text('{"fixture": "%s"}' % fixture)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """{fixture: our save of it, written by `convert from-library`}: the mixed [mLSTM, sLSTM] LM (untied) and the
    sLSTM-only LM (tied embeddings)."""
    root = tmp_path_factory.mktemp("to-library")
    out = {}
    for fixture in ("lm_mixed", "lm_slstm"):
        out[fixture] = root / f"{fixture}-ours"
        assert main("from-library", [str(library_folder(root / "lib", fixture)), str(out[fixture])]) == 0
    return out


@pytest.mark.parametrize("backend", ["vanilla", "cuda"])
@pytest.mark.parametrize("fixture", ["lm_mixed", "lm_slstm"])
def test_round_trip_gives_the_library_state_dict_and_our_params_back(ours, tmp_path, fixture, backend):
    library_cfg, sd, _ = load_slstm_fixture(fixture)
    out = tmp_path / f"library-{backend}"
    argv = [str(ours[fixture]), str(out)] + (["--backend", backend] if backend != "vanilla" else [])  # the default
    assert main("to-library", argv) == 0
    assert json.loads((out / "tokenizer.json").read_text()) == {"fixture": fixture}  # carried along
    written_cfg = json.loads((out / "config.json").read_text())["xlstm_cfg"]
    assert written_cfg["slstm_block"]["slstm"]["backend"] == backend
    assert written_cfg["slstm_at"] == library_cfg["slstm_at"]
    assert written_cfg["tie_weights"] == library_cfg["tie_weights"]

    heads = library_cfg["slstm_block"]["slstm"]["num_heads"]
    want = sd if backend == "vanilla" else slstm_cuda_layout(sd, heads)
    got = load_file(str(out / "model.safetensors"))
    assert sorted(got) == sorted(want)  # tied too: both names, as the library's state_dict() (its strict load)
    inexact = []
    for key, value in want.items():
        assert got[key].dtype == np.float32 and got[key].shape == value.shape, key
        if not np.array_equal(got[key], value):
            inexact.append(key)
            half_ulp = np.spacing(np.abs(np.float32(1) + value)) / 2
            assert np.all(np.abs(got[key].astype(np.float64) - value) <= half_ulp), key
    assert inexact and all(k.endswith(NORM_WEIGHTS) for k in inexact), inexact
    if backend == "cuda":  # the layout really changed (so the vanilla case is not the same check twice)
        kernel = next(k for k in want if k.endswith("_recurrent_kernel_"))
        assert got[kernel].shape != sd[kernel].shape

    reference = FlaxXLSTMForCausalLM.from_pretrained(ours[fixture])
    again = FlaxXLSTMForCausalLM.from_pretrained(out)
    want_params, got_params = flat(reference.params), flat(again.params)
    assert sorted(got_params) == sorted(want_params)
    for key, value in want_params.items():
        np.testing.assert_array_equal(got_params[key], value, err_msg=key)


def _entries(folder: Path) -> list:
    return sorted(os.listdir(folder))


def test_refusals_leave_nothing_behind(ours, tmp_path, capsys):
    """A bad backend, a model the library cannot express (an mlstm_v1 layer; an option with no library
    equivalent) and an existing output without --overwrite are refused in one line naming the cause; nothing is
    written, an old output stays as it was; with --overwrite it is replaced."""
    from modeling_xlstm_flax.convert_library import convert_flax_to_library

    source = ours["lm_mixed"]
    with pytest.raises(SystemExit) as info:  # the command line offers the two layouts only
        main("to-library", [str(source), str(tmp_path / "out"), "--backend", "triton"])
    assert info.value.code == 2 and "invalid choice: 'triton'" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="--backend 'triton': expected one of vanilla, cuda"):
        convert_flax_to_library(source, tmp_path / "out", backend="triton")
    assert _entries(tmp_path) == []

    assert main("to-library", [str(BUNDLED), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot express this config: layer_type='mlstm_v1'" in err
    soft_capped = tmp_path / "soft-capped"
    soft_capped.mkdir()
    for name in os.listdir(source):
        os.link(source / name, soft_capped / name)
    config = json.loads((source / "config.json").read_text())
    (soft_capped / "config.json").unlink()
    (soft_capped / "config.json").write_text(json.dumps({**config, "logits_soft_cap": 30.0}))
    assert main("to-library", [str(soft_capped), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "logits_soft_cap=30.0 (library: None)" in err
    assert _entries(tmp_path) == ["soft-capped"]

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text("old")
    assert main("to-library", [str(source), str(old)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert _entries(old) == ["config.json"] and (old / "config.json").read_text() == "old"
    assert _entries(tmp_path) == ["old", "soft-capped"]
    assert main("to-library", [str(source), str(old), "--overwrite", "--backend", "cuda"]) == 0
    assert json.loads((old / "config.json").read_text())["xlstm_cfg"]["slstm_block"]["slstm"]["backend"] == "cuda"
    assert main("to-library", [str(source), str(source / "sub")]) == 1  # inside the input: refused
    assert "lies inside the input" in capsys.readouterr().err and not (source / "sub").exists()


def test_a_library_folder_and_a_scanned_save_convert_too(ours, tmp_path):
    """Other inputs: a library folder in the cuda layout (Helibrunna's default) rewritten in the vanilla layout, and
    our save with stacked blocks (`scan_blocks`), unstacked for the library: both give the file the unrolled save
    gives (the same tensors, bit for bit)."""
    import yaml  # PyYAML: a dependency of transformers

    library_cfg, sd, _ = load_slstm_fixture("lm_slstm")
    reference = tmp_path / "from-ours"
    assert main("to-library", [str(ours["lm_slstm"]), str(reference)]) == 0
    want = load_file(str(reference / "model.safetensors"))

    helibrunna = tmp_path / "helibrunna"
    helibrunna.mkdir()
    cfg = json.loads(json.dumps(library_cfg))
    assert cfg["slstm_block"]["slstm"].pop("backend") == "vanilla"  # absent: the library's "cuda"
    (helibrunna / "config.yaml").write_text(yaml.safe_dump({"model": cfg}))
    cuda = slstm_cuda_layout(sd, cfg["slstm_block"]["slstm"]["num_heads"])
    save_file({k: np.ascontiguousarray(v) for k, v in cuda.items()}, str(helibrunna / "model.safetensors"))
    scanned = tmp_path / "scanned"
    FlaxXLSTMForCausalLM.from_pretrained(ours["lm_slstm"], scan_blocks=True).save_pretrained(scanned)
    assert json.loads((scanned / "config.json").read_text())["scan_blocks"] is True

    for source in (helibrunna, scanned):
        out = tmp_path / f"{source.name}-library"
        assert main("to-library", [str(source), str(out)]) == 0
        got = load_file(str(out / "model.safetensors"))
        assert sorted(got) == sorted(want), source.name
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{source.name} {key}")
