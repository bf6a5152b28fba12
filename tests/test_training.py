"""The training script: a few steps on a tiny config, loss decreases, resume continues the same run."""

import json

import numpy as np
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
