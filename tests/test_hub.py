"""Hub export (modeling_xlstm_flax.hub), model cards, and the remote-code load in a fresh virtual environment.

The fresh environment is a new venv with this environment's installed distributions linked in, except this package
(`remote_code_venv`).
"""

import ast
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from conftest import REPO, causal_lm_loader, max_abs_diff, tiny_config
from modeling_xlstm_flax import FlaxXLSTMForCausalLM
from modeling_xlstm_flax.hub import AUTO_MAP, code_files, export_hub_folder, main, push_to_hub
from modeling_xlstm_flax.hub import build_model_card, check_model_card, save_model_card
from test_pipeline import build_tokenizer

CARD_KWARGS = dict(perplexity=12.34, eval_dataset="pydoc_data.topics", base_model="NX-AI/xLSTM-7b",
                   datasets=["wikitext"], tags=["tiny"])


# ---------------------------------------------------------------------------------------------- fixtures
def run_remote(python: Path, script: str, jobs, cwd: Path, hf_home: Path) -> subprocess.CompletedProcess:
    """`script` with `json.dumps(jobs)` as its argument, run by `python` (a `remote_code_venv`) in `cwd`: offline,
    Hub files under `hf_home`, no PYTHON* / VIRTUAL_ENV variables or user site-packages of this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(hf_home), JAX_PLATFORMS="cpu",
               PYTHONNOUSERSITE="1")
    return subprocess.run([str(python), "-c", script, json.dumps(jobs)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def remote_code_venv(tmp_path: Path) -> Path:
    """The python of a new venv holding this environment's installed distributions except this package: every
    entry of our site-packages is linked into the new venv's site-packages but `modeling_xlstm_flax`, its
    dist-info and any editable-install hook (seconds instead of a pip install; the same versions by construction)."""
    root = tmp_path / "remote-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True)
    python = root / "bin" / "python"
    ours = Path(importlib.util.find_spec("modeling_xlstm_flax").origin).resolve().parent
    target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    for source in {Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()}:
        for entry in source.iterdir():
            name = entry.name.lower()
            if ("xlstm_flax" in name or "xlstm-flax" in name or name.startswith("__editable__")
                    or entry.resolve() == ours or (target / entry.name).exists()):
                continue
            (target / entry.name).symlink_to(entry)
    probe = subprocess.run([str(python), "-c", "import importlib.util, flax, jax, transformers; "
                            "assert importlib.util.find_spec('modeling_xlstm_flax') is None"],
                           capture_output=True, text=True, cwd=tmp_path,
                           env={k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))})
    assert probe.returncode == 0, f"the venv without the package is unusable:\n{probe.stderr[-3000:]}"
    return python


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def models(tokenizer):
    """A tiny random model of each layer type, with the test tokenizer's vocabulary."""
    return {layer: FlaxXLSTMForCausalLM(tiny_config(layer, vocab_size=len(tokenizer), chunk_size=8), seed=3)
            for layer in ("mlstm_v1", "mlstm")}


@pytest.fixture(scope="module")
def exported(models, tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {layer: export_hub_folder(model, root / f"xlstm-{layer}", tokenizer, repo_id=f"someone/xlstm-{layer}",
                                     **CARD_KWARGS)
            for layer, model in models.items()}


# ---------------------------------------------------------------------------------------------- export
def _relative_imports(path: Path) -> set:
    """The package modules a file imports relatively, at any depth (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return found


def test_export_ships_exactly_the_import_closure(exported, tokenizer, tmp_path):
    """The folder's modules are exactly what the auto classes' modules import, followed to the end (walked here
    independently of `hub`); no command code among them; each file as in the package, except that each root names
    the rest of its closure for transformers 4's local-folder loader (read with transformers' own function)."""
    from transformers.dynamic_module_utils import get_relative_imports

    from modeling_xlstm_flax.hub import COMMAND_MODULES, ROOT_MODULES

    package = REPO / "modeling_xlstm_flax"

    def closure(roots):
        seen, todo = set(), list(roots)
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += _relative_imports(package / f"{module}.py")
        return seen

    folder = exported["mlstm_v1"]
    names = {p.name for p in folder.iterdir()}
    shipped = {n[:-3] for n in names if n.endswith(".py")}
    assert shipped == closure(ROOT_MODULES) == {n[:-3] for n in code_files()}
    assert not shipped & set(COMMAND_MODULES) and "cli" not in shipped
    assert {"mlstm_kernels", "xlstm_layers", "checks", "generation", "checkpoint_io", "loading"} <= shipped
    # the tokenizer's own files: transformers 4 also writes special_tokens_map.json, transformers 5 does not
    tokenizer_files = {Path(f).name for f in tokenizer.save_pretrained(tmp_path / "tok") if Path(f).is_file()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= tokenizer_files
    assert names >= tokenizer_files | {"config.json", "model.safetensors", "generation_config.json", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["model_type"] == "xlstm_flax"
    assert config["architectures"] == ["FlaxXLSTMForCausalLM"]
    for module in shipped:
        text, source = (folder / f"{module}.py").read_text(), (package / f"{module}.py").read_text()
        if module in ROOT_MODULES:
            assert text.startswith(source.rstrip("\n")), module
            assert set(get_relative_imports(folder / f"{module}.py")) == closure([module]) - {module}, module
        else:
            assert text == source, module
        assert not any(line.strip().startswith(("import modeling_xlstm_flax", "from modeling_xlstm_flax"))
                       for line in text.splitlines()), module


def test_no_model_module_imports_command_code():
    """The model core (everything but the commands) never imports command code, lazily or not."""
    from modeling_xlstm_flax.hub import COMMAND_MODULES

    package = REPO / "modeling_xlstm_flax"
    for path in sorted(package.glob("*.py")):
        if path.stem not in COMMAND_MODULES:
            assert not _relative_imports(path) & set(COMMAND_MODULES), path.name


def test_export_refuses_non_empty_folder(models, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_hub_folder(models["mlstm_v1"], tmp_path)
    assert (tmp_path / "keep.txt").exists()


def test_export_loads_with_the_package_without_remote_code(exported, models):
    """Where the package is installed, the folder loads with the registered classes (no remote code): through
    FlaxAutoModelForCausalLM under transformers 4, our class under 5 (no Flax auto classes there)."""
    loaded = causal_lm_loader().from_pretrained(exported["mlstm_v1"])
    assert type(loaded) is FlaxXLSTMForCausalLM
    ids = np.random.RandomState(0).randint(3, loaded.config.vocab_size, (2, 9))
    assert max_abs_diff(loaded(ids).logits, models["mlstm_v1"](ids).logits) == 0.0


REMOTE_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer

    assert importlib.util.find_spec("modeling_xlstm_flax") is None, "the package must not be installed here"
    data = json.loads(sys.argv[1])
    report = {}
    for layer, job in data.items():
        config = AutoConfig.from_pretrained(job["folder"], trust_remote_code=True)
        try:  # transformers 4.x
            from transformers import FlaxAutoModelForCausalLM
            model = FlaxAutoModelForCausalLM.from_pretrained(job["folder"], trust_remote_code=True)
        except ImportError:  # transformers 5: no Flax auto classes; the auto_map entry names the class
            from transformers.dynamic_module_utils import get_class_from_dynamic_module
            cls = get_class_from_dynamic_module(config.auto_map["FlaxAutoModelForCausalLM"], job["folder"])
            model = cls.from_pretrained(job["folder"])
        # transformers 5 reads the config to pick the tokenizer: remote code there too
        tokenizer = AutoTokenizer.from_pretrained(job["folder"], trust_remote_code=True)
        ids = np.load(job["ids"])
        np.save(job["logits_out"], np.asarray(model(ids).logits))
        report[layer] = {"model_class": type(model).__module__ + "." + type(model).__name__,
                         "config_class": type(config).__module__ + "." + type(config).__name__}
        if job["prompt"]:
            prompt = tokenizer(job["prompt"], return_tensors="np")["input_ids"]
            greedy = model.generate(prompt, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id).sequences
            report[layer].update(prompt_ids=prompt[0].tolist(), greedy=np.asarray(greedy)[0].tolist())
    print("REPORT " + json.dumps(report))
""")


def _as_cached_hub_repo(folder: Path, hf_home: Path, repo_id: str) -> None:
    """Lay `folder` out as huggingface_hub's cache holds a downloaded repo, so that with HF_HUB_OFFLINE=1 the
    repo id resolves to it: transformers then takes its Hub code path (per-file import checks, recursive module
    copies) without any network."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


@pytest.mark.slow
def test_remote_code_load_in_fresh_venv(exported, models, tokenizer, tmp_path):
    """FlaxAutoModelForCausalLM.from_pretrained(..., trust_remote_code=True) in a venv without this package gives
    the original model's logits (both layer types) and greedy tokens (mlstm_v1): from the exported folder
    (mlstm_v1), and from a Hub repo id served offline from the Hub cache (mlstm)."""
    python = remote_code_venv(tmp_path)
    prompt = "The object"
    jobs = {}
    for layer, folder in exported.items():
        ids = np.random.RandomState(1).randint(3, models[layer].config.vocab_size, (2, 13))
        np.save(tmp_path / f"ids-{layer}.npy", ids)
        source = str(folder)
        if layer == "mlstm":
            source = f"someone/xlstm-{layer}"
            _as_cached_hub_repo(folder, tmp_path / "hf-home", source)
        jobs[layer] = {"folder": source, "ids": str(tmp_path / f"ids-{layer}.npy"),
                       "logits_out": str(tmp_path / f"logits-{layer}.npy"),
                       "prompt": prompt if layer == "mlstm_v1" else None}
    outside = tmp_path / "cwd"
    outside.mkdir()
    proc = run_remote(python, REMOTE_SCRIPT, jobs, outside, tmp_path / "hf-home")
    assert proc.returncode == 0, proc.stderr[-6000:]
    reports = [line[len("REPORT "):] for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert len(reports) == 1, f"no report from the remote-code run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(reports[0])
    for layer, model in models.items():
        info = report[layer]
        assert info["model_class"].startswith("transformers_modules.") and info["model_class"].endswith(
            "modeling_flax_xlstm.FlaxXLSTMForCausalLM")
        assert info["config_class"].endswith("configuration_xlstm_flax.XLSTMFlaxConfig")
        if layer == "mlstm":  # loaded through the Hub code path: modules live under the repo id and commit
            assert info["model_class"].startswith("transformers_modules.someone.")
        ids = np.load(jobs[layer]["ids"])
        diff = max_abs_diff(np.load(jobs[layer]["logits_out"]), model(ids).logits)
        print(f"{layer}: remote-code logits max |diff| = {diff:.3g}")
        assert diff <= 1e-6
        if layer != "mlstm_v1":
            continue
        prompt_ids = np.asarray(tokenizer(prompt, return_tensors="np")["input_ids"])
        assert info["prompt_ids"] == prompt_ids[0].tolist()
        ref = model.generate(prompt_ids, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id).sequences
        assert info["greedy"] == np.asarray(ref)[0].tolist()


# ---------------------------------------------------------------------------------------------- cards
def test_card_renders_and_validates(exported):
    from huggingface_hub import ModelCard

    path = exported["mlstm_v1"] / "README.md"
    card = ModelCard.load(path)  # strict parse (model-index included)
    check_model_card(path)
    data = card.data
    assert data.license == "apache-2.0" and data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation" and {"xlstm", "flax", "jax", "tiny"} <= set(data.tags)
    assert data.base_model == "NX-AI/xLSTM-7b" and data.datasets == ["wikitext"]
    (result,) = data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("perplexity", 12.34,
                                                                              "pydoc_data.topics")
    assert data.model_name == "xlstm-mlstm_v1"
    text = card.text
    assert 'from_pretrained("someone/xlstm-mlstm_v1", trust_remote_code=True)' in text
    assert "`mlstm_v1` mLSTM layer, 2 blocks" in text and "| pydoc_data.topics | validation | Perplexity | 12.34 |" in text
    assert "{{" not in text and "{%" not in text
    # the YAML block round-trips through huggingface_hub unchanged
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()


def test_card_checks_reject_bad_cards(tmp_path):
    config = tiny_config()
    good = build_model_card(config, model_name="m", num_parameters=1000)
    check_model_card(good)
    assert "Not evaluated." in good.text and good.data.eval_results is None
    with pytest.raises(ValueError, match="license"):
        check_model_card(str(good).replace("license: apache-2.0\n", ""))
    with pytest.raises(ValueError, match="unrendered"):
        check_model_card(str(good) + "\n{{ oops }}\n")
    with pytest.raises(ValueError, match="base_model"):
        check_model_card(build_model_card(config, model_name="m", base_model="not a repo id!"))
    with pytest.raises(ValueError, match="eval_dataset"):
        build_model_card(config, model_name="m", perplexity=3.0)
    with pytest.raises(ValueError, match="perplexity"):
        build_model_card(config, model_name="m", perplexity=float("nan"), eval_dataset="x")
    path = save_model_card(tmp_path, config, model_name="m", perplexity=5.5, eval_dataset="x",
                           training_details="Three steps.", remote_code=False)
    saved = check_model_card(path)
    assert "Three steps." in saved.text and "trust_remote_code" not in saved.text


# ---------------------------------------------------------------------------------------------- uploads
class _Uploads:
    """Stands in for HfApi.create_repo / upload_folder and records what would be sent."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, *args, **kwargs):
        self.repos.append(kwargs)
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, *args, **kwargs):
        folder = Path(kwargs["folder_path"])  # read now: a temporary export is gone after the call
        files = {p.name: p.stat().st_size for p in folder.iterdir()}
        config = json.loads((folder / "config.json").read_text())
        self.uploads.append({**kwargs, "files": files, "auto_map": config.get("auto_map")})
        return mock.sentinel.commit_info


@pytest.fixture
def fake_hub():
    from huggingface_hub import HfApi

    fake = _Uploads()
    with mock.patch.object(HfApi, "create_repo", autospec=True, side_effect=lambda self, **kw: fake.create_repo(**kw)), \
            mock.patch.object(HfApi, "upload_folder", autospec=True,
                              side_effect=lambda self, **kw: fake.upload_folder(**kw)):
        yield fake


def test_push_model_and_folder_to_hub(models, tokenizer, exported, fake_hub):
    info = push_to_hub(models["mlstm_v1"], "someone/tiny", tokenizer, private=True, perplexity=9.0,
                       eval_dataset="x")
    assert info is mock.sentinel.commit_info
    assert fake_hub.repos[0] == {"repo_id": "someone/tiny", "token": None, "private": True, "repo_type": "model",
                                 "exist_ok": True}
    sent = fake_hub.uploads[0]
    assert sent["repo_id"] == "someone/tiny" and sent["repo_type"] == "model" and sent["auto_map"] == AUTO_MAP
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json", "modeling_flax_xlstm.py"} <= set(
        sent["files"])
    assert not Path(sent["folder_path"]).exists()  # the temporary export is cleaned up
    # an exported folder is uploaded as it is
    push_to_hub(exported["mlstm"], "someone/tiny-mlstm", commit_message="hello")
    sent = fake_hub.uploads[1]
    assert sent["folder_path"] == str(exported["mlstm"]) and sent["commit_message"] == "hello"
    assert set(sent["files"]) == {p.name for p in exported["mlstm"].iterdir()}


def test_export_command(models, tokenizer, tmp_path, fake_hub, capsys):
    source = tmp_path / "model"
    models["mlstm_v1"].save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "out"
    assert main(["--model", str(source), "--output", str(out), "--push-to-hub", "someone/cli", "--perplexity", "7.5",
                 "--eval-dataset", "pydoc_data.topics", "--dataset", "wikitext"]) == 0
    assert (out / "tokenizer.json").is_file() and json.loads((out / "config.json").read_text())["auto_map"]
    card = check_model_card(out / "README.md")
    assert card.data.eval_results[0].metric_value == 7.5 and card.data.model_name == "cli"
    assert fake_hub.uploads[0]["folder_path"] == str(out) and fake_hub.repos[0]["repo_id"] == "someone/cli"
    assert "uploaded to someone/cli" in capsys.readouterr().out
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("xlstm-flax") == "modeling_xlstm_flax.cli:main"


# ---------------------------------------------------------------------------------------------- bad input (issue 13)
def test_export_command_tokenizer_sources_and_safe_overwrite(models, tokenizer, tmp_path, caplog, capsys):
    """A model folder without tokenizer files exports without one (and says so); --tokenizer DIR adds one; a failing
    --overwrite export leaves the previous output as it was and nothing half-written beside it."""
    source, tok_dir, out = tmp_path / "model", tmp_path / "tok", tmp_path / "out"
    models["mlstm_v1"].save_pretrained(source)
    tokenizer.save_pretrained(tok_dir)
    with caplog.at_level(logging.WARNING, logger="modeling_xlstm_flax.hub"):
        assert main(["--model", str(source), "--output", str(out)]) == 0
    assert "has no tokenizer files: exporting without a tokenizer" in caplog.text
    assert not (out / "tokenizer.json").exists() and (out / "model.safetensors").is_file()

    assert main(["--model", str(source), "--output", str(out), "--tokenizer", str(tok_dir), "--overwrite"]) == 0
    assert (out / "tokenizer.json").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    capsys.readouterr()
    assert main(["--model", str(source), "--output", str(out), "--tokenizer", str(source), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"xlstm-flax export-hub: error: tokenizer {source}: the folder has no tokenizer files " \
                  "(tokenizer.json, tokenizer_config.json)"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out", "tok"]  # no partial folders left


def test_export_of_the_bundled_model_carries_what_its_folder_knows(tmp_path):
    """The export's card takes the model name from the folder's card and the perplexity and training run from its
    training_log.json (it said "Not evaluated", "Not documented" and `model_name: bundled_model`); its usage snippet
    names the exported folder, not a Hub repo that does not exist."""
    from modeling_xlstm_flax import bundled_model_path

    log = json.loads((bundled_model_path() / "training_log.json").read_text())
    out = export_hub_folder(str(bundled_model_path()), tmp_path / "export")
    card = check_model_card(out / "README.md")
    assert card.data.model_name == "xlstm-flax-pydoc-tiny"
    assert card.data.eval_results[0].metric_value == round(log["val_perplexity"], 4)
    assert "Not evaluated" not in card.text and "Not documented" not in card.text
    assert f"{log['selected_step']} optimizer steps" in card.text and "--warmup-steps 50" in card.text
    assert f'from_pretrained("{out}", trust_remote_code=True)' in card.text
