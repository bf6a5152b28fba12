"""The training command: loss decreases, resume continues the same run, a data x tensor mesh gives the one-device
run's numbers, orbax checkpoints, the non-finite stop, bad options refused.

The training runs happen in two subprocesses started together (tests/training_runs.py: `single` on one device,
`mesh` on 4 host CPU devices, which pytest's process cannot have); the tests read their output folders.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from modeling_xlstm_flax.training import main

HERE = Path(__file__).resolve().parent
MESH_TOL = 1e-5  # float32, data 2 x tensor 2 vs one device, after 8 AdamW steps (measured: losses 1e-6, params 2e-7)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("training")
    env = dict(os.environ, JAX_PLATFORMS="cpu", USE_TORCH="0", USE_TF="0")  # transformers without torch: 4 s less
    procs = {group: subprocess.Popen([sys.executable, str(HERE / "training_runs.py"), str(out), group], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for group in ("single", "mesh")}
    results = {}
    try:
        for group, proc in procs.items():
            _, err = proc.communicate(timeout=900)
            file = out / f"{group}.json"
            if proc.returncode != 0 or not file.is_file():
                pytest.fail(f"training_runs.py {group} failed ({proc.returncode}):\n{err[-6000:]}")
            results.update(json.loads(file.read_text())["runs"])
            results[f"{group}_check"] = json.loads(file.read_text())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    results["out"] = out
    return results


def ok(runs, name) -> Path:
    """The output folder of a run that must have succeeded."""
    assert runs[name]["rc"] == 0, runs[name]["stderr"]
    return runs["out"] / {"fine_tune": "tuned"}.get(name, name)


def history(folder: Path, key: str) -> list:
    return [h[key] for h in json.loads((folder / "training_log.json").read_text())["history"] if key in h]


def params(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


# ---------------------------------------------------------------------------------------------- training runs
def test_loss_decreases_and_outputs_are_written(runs):
    straight = ok(runs, "straight")
    losses = history(straight, "loss")
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3  # it learns
    val = history(straight, "val_perplexity")  # at step 4 and at the end
    assert len(val) == 2 and val[1] < val[0] < 300  # below uniform over the 300-token vocab
    log = json.loads((straight / "training_log.json").read_text())
    assert log["steps"] == 8 and log["val_perplexity"] == val[1]
    # --no-progress: no bar, but the loss still shows, one line per --log-every (1) steps
    lines = [line for line in runs["straight"]["stdout"].splitlines() if ": loss " in line]
    assert lines == [f"step {i + 1}: loss {loss:.3f}" for i, loss in enumerate(losses)]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "loss_curve.png"):
        assert (straight / name).is_file(), name


def test_checkpoints_are_orbax_steps_with_params_optimizer_and_state(runs):
    """checkpoints/step_N/{params,opt_state,state} by orbax's CheckpointManager; the JSON state holds the step,
    seed, history and arguments; --keep-checkpoints 1 leaves only the newest; no unfinished temp folders."""
    straight = ok(runs, "straight")
    steps = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert steps == ["step_4", "step_8"]
    step = straight / "checkpoints" / "step_4"
    assert {"params", "opt_state", "state", "_CHECKPOINT_METADATA"} <= {p.name for p in step.iterdir()}
    state = json.loads((step / "state" / "metadata").read_text())
    assert state["step"] == 4 and state["seed"] == 0 and state["args"]["steps"] == 8
    assert [h["step"] for h in state["history"] if "loss" in h] == [1, 2, 3, 4]
    assert [p.name for p in (ok(runs, "resumed") / "checkpoints").iterdir()] == ["step_8"]  # --keep-checkpoints 1
    assert not list(runs["out"].glob("*/checkpoints/*tmp*"))


def test_resume_continues_the_same_run_exactly(runs):
    """Stopped after the step-4 checkpoint, then --resume to step 8: bit for bit the straight run (same programs,
    same data order and rng from (seed, step)), on one device and on the mesh."""
    straight, resumed = ok(runs, "straight"), ok(runs, "resumed")
    assert "resumed from" in runs["resumed"]["stderr"] and "at step 4" in runs["resumed"]["stderr"]
    assert history(resumed, "loss") == history(straight, "loss")
    assert history(resumed, "val_perplexity") == history(straight, "val_perplexity")
    assert max_diff(params(resumed), params(straight)) == 0.0
    assert max_diff(params(ok(runs, "mesh_resumed")), params(ok(runs, "mesh"))) == 0.0


def test_mesh_run_equals_one_device_run(runs):
    """--mesh-data 2 --mesh-tensor 2 on 4 CPU devices: the batch split in two, heads, feedforward and vocabulary
    split in two; same losses, validation and final params as one device within MESH_TOL."""
    assert runs["mesh_check"]["device_count"] == 4
    straight, mesh = ok(runs, "straight"), ok(runs, "mesh")
    np.testing.assert_allclose(history(mesh, "loss"), history(straight, "loss"), rtol=0, atol=MESH_TOL * 10)
    np.testing.assert_allclose(history(mesh, "val_perplexity"), history(straight, "val_perplexity"), rtol=MESH_TOL)
    assert max_diff(params(mesh), params(straight)) <= MESH_TOL


def test_checkpoint_restores_onto_another_mesh(runs):
    """The mesh run's checkpoint (params split over tensor when saved) restored onto one device by
    restore_checkpoint: every leaf carries the live tree's sharding and the saved model's values."""
    r = runs["mesh_check"]["restored"]
    assert r["step"] == 8 and r["saved_tensor_sharded"] > 0
    assert r["sharding_mismatches"] == [] and r["same_names"] and r["max_diff_to_saved_model"] == 0.0


def test_fine_tune_from_saved_model(runs):
    """--model DIR (on the mesh), --stop-at-step 2 of 8: the params move, the log says 2 steps, one checkpoint."""
    base, tuned = ok(runs, "mesh"), ok(runs, "fine_tune")
    assert json.loads((tuned / "training_log.json").read_text())["steps"] == 2
    assert [p.name for p in (tuned / "checkpoints").iterdir()] == ["step_2"]
    assert max_diff(params(tuned), params(base)) > 0


def test_non_finite_loss_stops_the_run_and_saves_nothing_non_finite(runs):
    """A learning rate of 1e30 (bfloat16 compute) makes the second step's loss NaN: exit 1 with a message naming the
    last checkpoint, no model saved, and the checkpoint written before holds finite params (the bad step's update
    is never kept)."""
    import orbax.checkpoint as ocp

    r = runs["non_finite"]
    assert r["rc"] == 1
    assert re.search(r"step 2: the training loss is (nan|inf|-inf)", r["stderr"]), r["stderr"]
    assert "Nothing from this step was saved; the last checkpoint is " in r["stderr"]
    out = runs["out"] / "non_finite"
    assert not (out / "model.safetensors").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_1"]
    saved = ocp.StandardCheckpointer().restore(out / "checkpoints" / "step_1" / "params")
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(saved))


def test_non_finite_params_are_never_saved(tmp_path):
    """A step with finite loss and gradients can still overflow the params (a huge --lr): save_checkpoint refuses
    them, naming the last good checkpoint, and writes nothing."""
    from modeling_xlstm_flax.training_io import NonFiniteLossError, checkpoint_manager, save_checkpoint

    good, bad = {"w": np.ones(3, np.float32)}, {"w": np.array([1, np.inf, 1], np.float32)}
    with checkpoint_manager(tmp_path / "checkpoints", keep=2, create=True) as manager:
        save_checkpoint(manager, good, {"count": np.zeros((), np.int32)}, {"step": 1})
        manager.wait_until_finished()
        with pytest.raises(NonFiniteLossError, match=r"step 2: the parameters are no longer finite; stopping "
                                                     r"without saving; the last checkpoint is .*step_1"):
            save_checkpoint(manager, bad, {"count": np.ones((), np.int32)}, {"step": 2})
        assert manager.all_steps() == [1]


# ---------------------------------------------------------------------------------------------- bad input (issue 13)
@pytest.mark.parametrize(
    "args,message",
    [
        (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
        (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
        (["--lr", "0"], "--lr must be a positive finite number, got 0.0"),
        (["--steps", "3", "--warmup-steps", "5"], "--steps 3 is below --warmup-steps 5"),
        (["--batch-size", "0"], "--batch-size must be positive, got 0"),
        (["--seq-len", "-4"], "--seq-len must be positive, got -4"),
        (["--seq-len", "1"], "--seq-len must be at least 2"),
        (["--val-fraction", "1.0"], r"--val-fraction must be in (0, 1), got 1.0"),
        (["--val-fraction", "nan"], r"--val-fraction must be in (0, 1), got nan"),
        (["--grad-clip", "0"], "--grad-clip must be a positive finite number"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints must be positive, got 0"),
        (["--mesh-fsdp", "0"], "--mesh-fsdp must be positive, got 0"),
        (["--mesh-data", "TOO_MANY"], "--mesh-data TOO_MANY x --mesh-fsdp 1 x --mesh-tensor 1 = TOO_MANY devices, "
                                      "but jax.device_count() is DEVICES"),
        (["--mesh-tensor", "TOO_MANY"], "= TOO_MANY devices, but jax.device_count() is DEVICES"),
        (["--batch-size", "3", "--mesh-data", "2"], "--batch-size 3 is not divisible by --mesh-data 2 x --mesh-fsdp 1"),
        (["--set", "num_blockz=3"], "--set 'num_blockz=3': unknown XLSTMFlaxConfig field 'num_blockz' (did you mean "
                                    "'num_blocks'?)"),
        (["--resume"], "--resume: no checkpoint in"),
        (["--text-file", "EMPTY"], "the file is empty (no text to train on)"),
        (["--text-file", "MISSING"], "no such file"),
    ],
)
def test_bad_options_rejected_up_front(tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("\n \n")
    names = {"EMPTY": str(tmp_path / "empty.txt"), "MISSING": str(tmp_path / "nope.txt"),
             "TOO_MANY": str(jax.device_count() + 1), "DEVICES": str(jax.device_count())}
    args = [names.get(a, a) for a in args]
    for name, value in names.items():
        message = message.replace(name, value)
    assert main(["--output-dir", str(tmp_path / "out"), "--no-progress"] + args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("xlstm-flax train: error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_without_orbax_the_error_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # import fails as if it were not installed
    assert main(["--output-dir", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "pip install orbax-checkpoint" in err and "pip install '.[train]'" in err
    assert not (tmp_path / "out").exists()
