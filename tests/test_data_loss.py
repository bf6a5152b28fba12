"""No writer loses data (`modeling_xlstm_flax.safe_output`, shared by save_pretrained, the export, the converters
and the training command): empty or overlapping output paths refused, --overwrite replaces only the writer's own
files, replacing a model is all-or-nothing under a fault at every move/rename/remove step, stale partial folders of
dead runs are cleaned (live ones kept), SIGINT/SIGTERM stop a command before it replaces anything (also when the
interrupt is swallowed where it lands)."""

import hashlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import NO_TORCH, REPO, assert_params_identical, tiny_config

BUNDLED = REPO / "modeling_xlstm_flax" / "bundled_model"
CONVERTERS = ("convert_orbax_to_hf", "convert_pytorch_to_flax", "convert_flax_to_pytorch")


def _tree_digest(folder: Path) -> dict:
    """{relative path: sha256} of every file under `folder` (what must stay untouched)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def two_models():
    """Two tiny models of one config with different weights: `old` and `new` (no params initialised twice)."""
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    config = tiny_config(num_blocks=1)
    old = FlaxXLSTMForCausalLM(config, seed=0)
    new = FlaxXLSTMForCausalLM(config, seed=1)
    return old, new


def _load_params(folder: Path):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    return FlaxXLSTMForCausalLM.from_pretrained(folder, _do_init=False)[1]


def _loads_as(folder: Path, old, new) -> str:
    """"old" or "new": which model `folder` holds, completely (any other state fails the test)."""
    params = _load_params(folder)
    for name, model in (("old", old), ("new", new)):
        try:
            assert_params_identical(params, model.params)
            return name
        except AssertionError:
            pass
    raise AssertionError(f"{folder} holds neither the old nor the new model")


# ---------------------------------------------------------------------------------------------- empty paths
def test_empty_output_path_is_refused_everywhere(two_models, tmp_path, monkeypatch, capsys):
    """`--output ""` (or `$OUT` unset), `save_pretrained("")`, `--output-dir ""`: one clear error, the current
    folder untouched."""
    from modeling_xlstm_flax import hub, training
    from modeling_xlstm_flax.safe_output import OutputPathError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("keep")
    before = _tree_digest(tmp_path)
    with pytest.raises(OutputPathError, match="empty"):
        two_models[0].save_pretrained("")
    for module in CONVERTERS:
        assert importlib.import_module(f"modeling_xlstm_flax.{module}").main([str(BUNDLED), "", "-q"]) == 1
        assert "output is empty" in capsys.readouterr().err
    assert hub.main(["--model", str(BUNDLED), "--output", "", "--overwrite"]) == 1
    assert "--output is empty" in capsys.readouterr().err
    assert training.main(["--output-dir", "", "--no-progress"]) == 1
    assert "--output-dir is empty" in capsys.readouterr().err
    with pytest.raises(OutputPathError, match="current folder"):
        two_models[0].save_pretrained(".")
    assert _tree_digest(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["mine.txt"]


# ---------------------------------------------------------------------------------------------- overlap
@pytest.mark.parametrize("where", ["same", "inside", "holds", "symlink"])
def test_output_overlapping_an_input_is_refused(tmp_path, capsys, where):
    """The output is, lies inside, or holds the input (also through a symlink): refused by every command, the
    input untouched."""
    from modeling_xlstm_flax import hub

    model = tmp_path / "work" / "model"
    shutil.copytree(BUNDLED, model)
    before = _tree_digest(tmp_path / "work")
    if where == "symlink":
        (tmp_path / "link").symlink_to(model, target_is_directory=True)
    output = {"same": model, "inside": model / "sub", "holds": tmp_path / "work",
              "symlink": tmp_path / "link"}[where]
    for module in CONVERTERS:
        argv = [str(model), str(output), "--overwrite", "-q"]
        assert importlib.import_module(f"modeling_xlstm_flax.{module}").main(argv) == 1, module
        err = capsys.readouterr().err
        assert "the input would be replaced" in err and len(err.strip().splitlines()) == 1, err
    assert hub.main(["--model", str(model), "--output", str(output), "--overwrite"]) == 1
    assert "the input would be replaced" in capsys.readouterr().err
    assert _tree_digest(tmp_path / "work") == before
    assert _leftovers(model.parent) == [] and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- --overwrite
def test_overwrite_replaces_only_the_writers_files(two_models, tmp_path, capsys):
    """export-hub --overwrite on a training folder (checkpoints/, notes) is refused, naming them; over a previous
    export it replaces it. save_pretrained keeps the other files of its folder and drops stale shards."""
    from modeling_xlstm_flax import hub

    old, new = two_models
    run = tmp_path / "run"
    old.save_pretrained(run)
    (run / "checkpoints" / "step_4").mkdir(parents=True)
    (run / "checkpoints" / "step_4" / "state").write_text("{}")
    (run / "training_log.json").write_text("{}")
    before = _tree_digest(run)
    model = tmp_path / "model"
    shutil.copytree(BUNDLED, model)
    assert hub.main(["--model", str(model), "--output", str(run), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "checkpoints/" in err and "training_log.json" in err and "replaces only its own files" in err
    assert _tree_digest(run) == before

    export = tmp_path / "export"
    assert hub.main(["--model", str(model), "--output", str(export)]) == 0
    assert hub.main(["--model", str(model), "--output", str(export)]) == 1  # no --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert hub.main(["--model", str(model), "--output", str(export), "--overwrite"]) == 0

    # save_pretrained: sharded first, then one file: the shards go, the other files stay (hard links, same bytes)
    new.save_pretrained(run, max_shard_size="20KB")
    assert len(list(run.glob("model-*-of-*.safetensors"))) > 1
    new.save_pretrained(run)
    assert not list(run.glob("model-*-of-*.safetensors")) and not (run / "model.safetensors.index.json").exists()
    after = _tree_digest(run)
    for name in ("checkpoints/step_4/state", "training_log.json"):
        assert after[name] == before[name]
    assert _loads_as(run, old, new) == "new" and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- injected faults
FAULT_TARGETS = [(os, "rename"), (os, "replace"), (os, "link"), (os, "symlink"), (os, "rmdir"), (shutil, "rmtree"),
                 (shutil, "copy2"), (shutil, "copytree")]


class _Fault:
    """Counts the calls of the move/rename/link/copy/remove functions and raises at call number `at`."""

    def __init__(self, monkeypatch, at: int, error):
        from modeling_xlstm_flax import safe_output

        self.calls, self.at, self.error, self.fired = 0, at, error, False
        for module, name in FAULT_TARGETS:
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name), name))
        monkeypatch.setattr(safe_output, "_exchange", self._wrap(safe_output._exchange, "_exchange"))

    def _wrap(self, fn, name):
        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                self.fired = True
                raise self.error(f"injected fault at call {self.at} ({name})")
            return fn(*args, **kwargs)

        return wrapped


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_replacing_a_model_is_all_or_nothing_under_a_fault_at_each_step(two_models, tmp_path, monkeypatch,
                                                                         exchange, error):
    """save_pretrained over an existing model (with other files beside it), with a fault (an OSError, or Ctrl-C)
    injected at each move/rename/link/copy/remove call in turn: after each, the folder loads as the old model or
    the complete new one, the other files are intact, and the next save cleans every leftover."""
    from modeling_xlstm_flax import safe_output

    old, new = two_models
    folder = tmp_path / "model"
    old.save_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"mine": 1}')
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "state.json").write_text("{}")
    others = {k: v for k, v in _tree_digest(folder).items() if k in ("tokenizer.json", "checkpoints/state.json")}
    if not exchange:
        monkeypatch.setattr(safe_output, "_exchange", lambda a, b: False)
    outcomes = []
    for at in range(1, 60):
        with monkeypatch.context() as m:
            fault = _Fault(m, at, error)
            try:
                new.save_pretrained(folder)
            except (OSError, KeyboardInterrupt) as exc:
                assert fault.fired and "injected fault" in str(exc)
        state = _loads_as(folder, old, new)
        outcomes.append(state)
        digest = _tree_digest(folder)
        assert {k: digest.get(k) for k in others} == others, f"fault at call {at}"
        if not fault.fired:
            break
        if state == "new":
            old.save_pretrained(folder)  # back to the old model for the next step
    assert not fault.fired, "more steps than expected"
    assert outcomes[-1] == "new" and "old" in outcomes
    assert len(outcomes) >= (5 if exchange else 6)  # each step of the swap was hit once
    old.save_pretrained(folder)  # a clean run removes what the faults left (its own, finished partial folders)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_converter_and_export_overwrite_is_all_or_nothing_under_a_fault_at_each_step(two_models, tmp_path,
                                                                                      monkeypatch, exchange):
    """What the converters and export-hub --overwrite run (`atomic_output_dir` owning the model and tokenizer
    files, no carry-over), with Ctrl-C injected at each move/rename/remove call in turn: the old output or the
    complete new one, never a mix; nothing left beside it after the next clean run."""
    from modeling_xlstm_flax import safe_output
    from modeling_xlstm_flax.safe_output import MODEL_FILES, TOKENIZER_FILES, atomic_output_dir

    old, new = two_models
    folder = tmp_path / "converted"
    old.save_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"old": 1}')
    if not exchange:
        monkeypatch.setattr(safe_output, "_exchange", lambda a, b: False)

    def convert(model, tag):
        with atomic_output_dir(folder, True, owned=MODEL_FILES + TOKENIZER_FILES) as tmp:
            model.save_pretrained(tmp)
            (tmp / "tokenizer.json").write_text(f'{{"{tag}": 1}}')

    outcomes = []
    for at in range(1, 40):
        with monkeypatch.context() as m:
            fault = _Fault(m, at, KeyboardInterrupt)
            try:
                convert(new, "new")
            except KeyboardInterrupt as exc:
                assert fault.fired and "injected fault" in str(exc)
        state = _loads_as(folder, old, new)
        assert (folder / "tokenizer.json").read_text() == f'{{"{state}": 1}}', f"a mix after a fault at call {at}"
        outcomes.append(state)
        if not fault.fired:
            break
        if state == "new":
            convert(old, "old")
    assert not fault.fired and outcomes[-1] == "new" and "old" in outcomes
    convert(old, "old")
    assert _leftovers(tmp_path) == []


def test_a_folder_that_cannot_be_swapped_gets_its_files_replaced(two_models, tmp_path, monkeypatch, capsys):
    """A mount point (or a folder in a read-only parent) cannot be renamed: the writer builds inside it and moves
    each finished file in, says so, keeps the other files, drops its stale shards and leaves no partial folder."""
    old, new = two_models
    folder = tmp_path / "mounted"
    old.save_pretrained(folder, max_shard_size="20KB")
    (folder / "tokenizer.json").write_text('{"mine": 1}')
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == folder)
    new.save_pretrained(folder)
    assert "replaced one by one" in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ["config.json", "generation_config.json", "model.safetensors",
                                          "tokenizer.json"]
    assert (folder / "tokenizer.json").read_text() == '{"mine": 1}' and _loads_as(folder, old, new) == "new"
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- stale partials
def test_stale_partial_folders_are_removed_live_ones_kept(two_models, tmp_path):
    """Partial folders of a dead process of this host go; a live process's, another host's and unrelated names
    stay; an old folder a killed swap had moved aside comes back when the target is missing."""
    from modeling_xlstm_flax import safe_output

    host = safe_output._HOST
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"dead": f".model.partial-{dead.pid}-{host}-abcd1234", "live": f".model.partial-{live.pid}-{host}-x1",
                 "other_host": f".model.partial-{dead.pid}-otherhost-x2", "other_name": f".other.partial-{dead.pid}"
                 f"-{host}-x3", "old_format": ".model.partial-k2j3h4"}
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "f").write_text("x")
        two_models[0].save_pretrained(tmp_path / "model")
        left = sorted(p.name for p in tmp_path.iterdir())
        assert names["dead"] not in left
        for key in ("live", "other_host", "other_name", "old_format"):
            assert names[key] in left, key
    finally:
        live.kill()
        live.wait()
    # a swap killed between its two renames (no renameat2): the target is missing, the old folder aside
    target = tmp_path / "model"
    aside = tmp_path / f".model.old-{dead.pid}-{host}-zz99"
    os.rename(target, aside)
    two_models[1].save_pretrained(target)  # puts the old one back first, then replaces it completely
    assert not aside.exists() and _loads_as(target, *two_models) == "new"
    assert safe_output.remove_stale_partials(tmp_path / "model") == []  # nothing of ours left


# ---------------------------------------------------------------------------------------------- signals
def test_a_ctrl_c_python_drops_still_stops_the_swap(two_models, tmp_path, monkeypatch):
    """A KeyboardInterrupt raised in a garbage-collection callback (where jax's `_xla_gc_callback` dropped the
    reported Ctrl-C: Python prints "Exception ignored" and goes on) is remembered through sys.unraisablehook, before
    or during a command: the writer stops before its swap, the old model stays."""
    import gc

    from modeling_xlstm_flax import safe_output

    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)  # (pytest's own hook would warn)
    safe_output.record_dropped_interrupts()
    old, new = two_models
    folder = tmp_path / "model"
    old.save_pretrained(folder)

    def dropped_ctrl_c():
        def callback(phase, info):
            if phase == "start":
                raise KeyboardInterrupt

        gc.callbacks.append(callback)
        try:
            gc.collect()  # "Exception ignored in: <function callback>": the interrupt goes nowhere
        finally:
            gc.callbacks.remove(callback)

    for before_command in (True, False):
        if before_command:
            dropped_ctrl_c()  # e.g. while the command imports jax
        with safe_output.signals_as_interrupts():
            with pytest.raises(KeyboardInterrupt):
                with safe_output.atomic_output_dir(folder, True) as tmp:
                    new.save_pretrained(tmp)
                    if not before_command:
                        dropped_ctrl_c()
        assert _loads_as(folder, old, new) == "old" and _leftovers(tmp_path) == []
    assert safe_output.interrupted_signal() is None  # the command's end clears it


def _export_with_signal(tmp_path: Path, pause: str, sig: int):
    """export-hub --overwrite over an existing export, in a subprocess paused at `pause` (safe_output's test hook),
    where it receives `sig`. Returns (exit status, stderr, the output's files before, after)."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", **NO_TORCH)
    cmd = [sys.executable, "-m", "modeling_xlstm_flax.hub", "--model", str(BUNDLED), "--output", str(out)]
    if not out.exists():
        from modeling_xlstm_flax import hub

        assert hub.main(cmd[3:]) == 0  # the existing export, written in this process
    before = _tree_digest(out)
    proc = subprocess.Popen(cmd + ["--overwrite"], env=dict(env, XLSTM_FLAX_TEST_PAUSE=pause),
                            stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:  # wait for the pause
        lines.append(line)
        if "xlstm-flax: test pause at" in line or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    try:
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, "".join(lines) + rest, before, _tree_digest(out)


@pytest.mark.slow
def test_swallowed_ctrl_c_during_export_overwrite_still_stops_it(tmp_path):
    """The reported case: Ctrl-C landing where Python drops it (jax's gc callback; here the test hook swallows it
    the same way) used to let the export replace the old one. Now it stops before the swap: exit 130, the old
    export unchanged, no partial folder left."""
    status, err, before, after = _export_with_signal(tmp_path, "swap:swallow", signal.SIGINT)
    assert status == 130 and "interrupted" in err, err[-2000:]
    assert after == before and _leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("pause,sig", [("start", signal.SIGTERM), ("swap", signal.SIGTERM), ("swap", signal.SIGINT),
                                       ("start:swallow", signal.SIGINT)])
def test_signals_during_export_overwrite_keep_the_old_export(tmp_path, pause, sig):
    """SIGTERM is handled like Ctrl-C, at the start of the write and just before the swap: exit 128 + signal, the
    old export unchanged, nothing left beside it."""
    status, err, before, after = _export_with_signal(tmp_path, pause, sig)
    assert status == 128 + sig and "interrupted" in err, err[-2000:]
    assert after == before and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- training output
def _train(argv) -> int:
    from modeling_xlstm_flax import training

    return training.main([str(a) for a in argv] + ["--no-progress"])


@pytest.fixture
def corpus(tmp_path) -> Path:
    from modeling_xlstm_flax.data import pydoc_topics

    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(pydoc_topics()[:30]))
    return path


@pytest.mark.parametrize("case", ["model", "previous_run", "overwrite_foreign", "resume_and_overwrite",
                                  "inside_model", "config_json", "config_folder"])
def test_training_output_and_input_refusals(tmp_path, capsys, case):
    """Before any data is read: a non-empty --output-dir without --resume/--overwrite (a model, a previous run),
    --overwrite over files the command does not write, --resume with --overwrite, an output inside the --model
    folder, an invalid --config: one line each, nothing changed."""
    out = tmp_path / "out"
    shutil.copytree(BUNDLED, out)  # a model folder (with tokenizer, log and loss curve)
    argv, message = ["--output-dir", out], None
    if case == "model":
        (out / "training_log.json").unlink()
        message = "is not empty (holds a model"
    elif case == "previous_run":
        (out / "checkpoints" / "step_4").mkdir(parents=True)
        message = "holds a previous training run"
    elif case == "overwrite_foreign":
        (out / "notes.txt").write_text("mine")
        (out / "README.md").unlink()
        argv, message = argv + ["--overwrite"], "holds files xlstm-flax train does not write (notes.txt)"
    elif case == "resume_and_overwrite":
        argv, message = argv + ["--resume", "--overwrite"], "give one of them"
    elif case == "inside_model":
        argv, message = ["--output-dir", out / "tuned", "--model", out], "lies inside the input"
    elif case == "config_json":
        (tmp_path / "bad.json").write_text('{"num_blocks": 2,')
        argv, message = ["--output-dir", tmp_path / "new", "--config", tmp_path / "bad.json"], "not valid JSON"
    elif case == "config_folder":
        argv, message = ["--output-dir", tmp_path / "new", "--config", tmp_path], "is a folder"
    before = _tree_digest(tmp_path)
    assert _train(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("xlstm-flax train: error: ") and message in err and len(err.splitlines()) == 1, err
    assert _tree_digest(tmp_path) == before and not (tmp_path / "new").exists()


def test_training_data_and_tokenizer_problems_are_one_line(tmp_path, capsys, corpus, two_models):
    """--seq-len longer than the corpus; a --model folder without tokenizer files (it would otherwise train a new
    tokenizer that does not fit the model's embeddings): one line naming the problem, no output."""
    assert _train(["--output-dir", tmp_path / "a", "--text-file", corpus, "--seq-len", "100000",
                   "--tokenizer-vocab-size", "300"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--seq-len 100000 is longer than the corpus allows" in err and len(err.splitlines()) == 1, err
    model = tmp_path / "model"
    two_models[0].save_pretrained(model)
    assert _train(["--output-dir", tmp_path / "b", "--model", model, "--text-file", corpus]) == 1
    err = capsys.readouterr().err.strip()
    assert "--model" in err and "has no tokenizer files" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _train_captured(argv, capsys) -> tuple:
    """(exit status, stderr) of the command run in this process (the suite compiles at XLA:CPU level 1, where the
    train step's gradients are finite: tests/test_compile_flags.py; a subprocess per run cost ~4 s of start-up)."""
    capsys.readouterr()
    status = _train(argv)
    return status, capsys.readouterr().err


@pytest.mark.slow
def test_training_rerun_resume_and_overwrite(tmp_path, capsys, corpus):
    """A 3-step run with a checkpoint per step; then: a plain re-run is refused; --resume with another --lr is
    refused naming it, with --set num_blocks=2 is one line naming num_blocks; the newest checkpoint truncated,
    --resume --steps 4 (no other option: the run's are read back) warns, continues from step 2 with the run's
    corpus and window length; --overwrite starts afresh (the old checkpoints gone)."""
    out = tmp_path / "out"
    common = ["--text-file", corpus, "--set", "num_blocks=1", "--seq-len", "16", "--batch-size", "2",
              "--tokenizer-vocab-size", "300", "--eval-every", "0"]
    status, err = _train_captured(["--output-dir", out, "--steps", "3", "--save-every", "1", "--keep-checkpoints",
                                   "3"] + common, capsys)
    assert status == 0, err[-3000:]
    first = _tree_digest(out)
    for extra, message in ((["--steps", "3"] + common, "is not empty (holds a previous training run"),
                           (["--resume", "--lr", "0.1"], "--resume: --lr 0.1 differs from the run's 0.003"),
                           (["--resume", "--set", "num_blocks=2"], "the run's model has num_blocks=1, this command "
                                                                   "builds num_blocks=2")):
        assert _train(["--output-dir", out] + extra) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert _tree_digest(out) == first
    data = max((p for p in (out / "checkpoints" / "step_3" / "params").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    os.truncate(data, data.stat().st_size // 4)
    status, err = _train_captured(["--output-dir", out, "--resume", "--steps", "4"], capsys)
    assert status == 0, err[-3000:]
    assert "step_3 cannot be read" in err and "at step 2" in err, err
    log = __import__("json").loads((out / "training_log.json").read_text())
    assert log["steps"] == 4 and log["args"]["text_file"] == [str(corpus)] and log["args"]["seq_len"] == 16
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_3", "step_4"]
    assert [p.name.split("-")[0] for p in (out / "corrupt_checkpoints").iterdir()] == ["step_3"]
    status, err = _train_captured(["--output-dir", out, "--overwrite", "--steps", "1", "--save-every", "0"] + common,
                                  capsys)
    assert status == 0, err[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]
    assert not (out / "corrupt_checkpoints").exists() and _leftovers(tmp_path) == []


def test_model_folder_without_tokenizer_is_one_line(tmp_path, capsys, two_models):
    """xlstm-flax generate and text_generation_pipeline on a model folder without tokenizer files: one line
    naming the folder and what is missing (xlstm-flax train: test_training_data_and_tokenizer_problems_are_one_line)."""
    from modeling_xlstm_flax import generate
    from modeling_xlstm_flax.pipeline import text_generation_pipeline

    model = tmp_path / "model"
    two_models[0].save_pretrained(model)
    with pytest.raises(ValueError, match="the folder has no tokenizer files"):
        text_generation_pipeline(str(model))
    assert generate.main(["--model", str(model), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err.strip()
    assert "has no tokenizer files" in err and str(model) in err and len(err.splitlines()) == 1, err
