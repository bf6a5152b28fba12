"""The training script: a few steps on a tiny config, loss decreases, resume continues the same run."""

import json
import re

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from modeling_xlstm_flax import FlaxXLSTMForCausalLM
from modeling_xlstm_flax.training import main

COMMON = ["--preset", "tiny-mlstm-v1", "--seq-len", "32", "--batch-size", "8", "--tokenizer-vocab-size", "300",
          "--lr", "3e-3", "--warmup-steps", "2", "--log-every", "1", "--eval-every", "0", "--no-progress"]


def _params(path):
    return flatten_dict(FlaxXLSTMForCausalLM.from_pretrained(path).params)


def test_loss_decreases_and_resume_continues(tmp_path):
    straight = tmp_path / "straight"
    assert main(COMMON + ["--output-dir", str(straight), "--steps", "24", "--save-every", "12"]) == 0
    log = json.loads((straight / "training_log.json").read_text())
    losses = [h["loss"] for h in log["history"] if "loss" in h]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5  # it learns
    assert np.isfinite(log["val_perplexity"]) and log["val_perplexity"] < 300  # below uniform over the vocab
    assert (straight / "checkpoints" / "step_0000012").is_dir() and (straight / "tokenizer.json").is_file()

    # interrupted after 12 steps, then resumed to 24: the same run as the straight one
    resumed = tmp_path / "resumed"
    assert main(COMMON + ["--output-dir", str(resumed), "--steps", "24", "--stop-at-step", "12"]) == 0
    assert json.loads((resumed / "training_log.json").read_text())["steps"] == 12
    assert main(COMMON + ["--output-dir", str(resumed), "--steps", "24", "--save-every", "12", "--resume"]) == 0
    resumed_log = json.loads((resumed / "training_log.json").read_text())
    assert resumed_log["steps"] == 24
    a, b = _params(straight), _params(resumed)
    for key in a:
        np.testing.assert_allclose(np.asarray(b[key]), np.asarray(a[key]), rtol=0, atol=1e-6, err_msg=str(key))


def test_fine_tune_from_saved_model(tmp_path):
    base = tmp_path / "base"
    main(COMMON + ["--output-dir", str(base), "--steps", "4"])
    tuned = tmp_path / "tuned"
    assert main(["--model", str(base), "--output-dir", str(tuned), "--steps", "4", "--seq-len", "32",
                 "--batch-size", "4", "--eval-every", "0", "--no-progress", "--bf16"]) == 0
    before, after = _params(base), _params(tuned)
    assert set(before) == set(after)
    assert any(not np.array_equal(before[k], after[k]) for k in before)


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
        (["--val-fraction", "1.0"], r"--val-fraction must be in (0, 1), got 1.0"),
        (["--val-fraction", "nan"], r"--val-fraction must be in (0, 1), got nan"),
        (["--grad-clip", "0"], "--grad-clip must be a positive finite number"),
        (["--set", "num_blockz=3"], "--set 'num_blockz=3': unknown XLSTMFlaxConfig field 'num_blockz' (did you mean "
                                    "'num_blocks'?)"),
        (["--resume"], "--resume: no checkpoint in"),
        (["--text-file", "EMPTY"], "the file is empty (no text to train on)"),
        (["--text-file", "MISSING"], "no such file"),
    ],
)
def test_bad_options_rejected_up_front(tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("\n \n")
    args = [{"EMPTY": str(tmp_path / "empty.txt"), "MISSING": str(tmp_path / "nope.txt")}.get(a, a) for a in args]
    assert main(["--output-dir", str(tmp_path / "out"), "--no-progress"] + args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("xlstm-flax-train: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_non_finite_loss_stops_the_run_and_saves_nothing_non_finite(tmp_path, capsys):
    """A learning rate of 1e30 makes the second step's loss NaN: exit 1 with a message, and every checkpoint written
    before holds finite params (the bad step's update is never kept)."""
    out = tmp_path / "out"
    assert main(["--preset", "tiny-mlstm-v1", "--output-dir", str(out), "--seq-len", "8", "--batch-size", "2",
                 "--tokenizer-vocab-size", "260", "--lr", "1e30", "--warmup-steps", "0", "--steps", "4",
                 "--save-every", "1", "--eval-every", "0", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"step \d+: the training loss is (nan|inf|-inf)", err), err
    assert "Nothing from this step was saved" in err and not (out / "model.safetensors").exists()
    checkpoints = out / "checkpoints"
    for step in checkpoints.iterdir() if checkpoints.exists() else []:
        from flax import serialization

        params = serialization.msgpack_restore((step / "params.msgpack").read_bytes())
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(params)), step
