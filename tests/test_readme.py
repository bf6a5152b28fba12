"""The README and the bundled model's card run as written: their Python blocks (extracted from the files themselves,
run in order in one fresh process, under whichever transformers major this environment has), the README's training
command is the one that made the bundled model, and its test command is what .ci/run runs."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NO_TORCH, REPO

README = REPO / "README.md"
BUNDLED_CARD = REPO / "modeling_xlstm_flax" / "bundled_model" / "README.md"


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


_NEXT_FILE = "----- test_readme: next file -----"
_RUNNER = f"""
import json, sys
for i, (name, code) in enumerate(json.loads(sys.argv[1])):
    if i:
        print({_NEXT_FILE!r}, flush=True)
        print({_NEXT_FILE!r}, file=sys.stderr, flush=True)
    exec(compile(code, name, "exec"), {{"__name__": "__main__"}})
"""


@pytest.fixture(scope="module")
def python_blocks(tmp_path_factory):
    """{file: (stdout, stderr) or None}: the README's python blocks, then the bundled model card's, each file's
    blocks in order in a namespace of its own, in one fresh process (one start-up for both; the README first, so
    that its stderr holds what importing the packages prints). A file whose code fails ends the run: it and the
    files after it get None, the process's stderr is under "error"."""
    files = [README, BUNDLED_CARD]
    codes = []
    for path in files:
        code = "\n\n".join(blocks(path, "python"))
        assert code, f"{path} has no python blocks"
        codes.append((str(path), code))
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(codes)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path_factory.mktemp("readme"))
    outs, errs = proc.stdout.split(_NEXT_FILE + "\n"), proc.stderr.split(_NEXT_FILE + "\n")
    ran = {path: (outs[i], errs[i]) if i < len(outs) else None for i, path in enumerate(files)}
    if proc.returncode != 0:  # the last file that started is the one that failed
        ran[files[len(outs) - 1]] = None
    ran["error"] = proc.stderr[-4000:]
    return ran


def test_readme_python_blocks_run_as_written(python_blocks):
    assert python_blocks[README] is not None, python_blocks["error"]
    stdout, stderr = python_blocks[README]
    # the generate block's text, then the pipeline's: each the prompt and its continuation
    assert stdout.startswith("The with statement") and stdout.count("The with statement") == 2
    assert len(stdout) > 2 * len("The with statement") + 40
    # the noise fixed at its cause: none of these on the README's own path
    for noise in ("PyTorch was not found", "clean_up_tokenization_spaces", "to instantiate a model of type"):
        assert noise not in stderr, stderr[-3000:]


def test_bundled_model_card_python_block_runs(python_blocks):
    assert python_blocks[BUNDLED_CARD] is not None, python_blocks["error"]
    assert python_blocks[BUNDLED_CARD][0].startswith("The xLSTM")


def _train_args(command: str):
    from modeling_xlstm_flax.training import build_parser

    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w.endswith("xlstm-flax") or w.endswith("xlstm-flax-train"))
    words = words[start + 1:]
    return build_parser().parse_args(words[1:] if words[0] == "train" else words)


def test_readme_training_command_reproduces_the_bundled_model():
    """Same options as the logged command that made the bundled model, plus --stop-at-step at the shipped step; the
    config those options build (preset + --set, the trained tokenizer's ids and size) is the bundled config."""
    from modeling_xlstm_flax import XLSTMFlaxConfig, load_preset
    from modeling_xlstm_flax.configuration_xlstm_flax import parse_field_overrides

    block = next(b for b in blocks(README, "bash") if "xlstm-flax train" in b and "--stop-at-step" in b)
    ours = _train_args(next(line for line in block.replace("\\\n", " ").splitlines() if "xlstm-flax train" in line))
    log = json.loads((BUNDLED_CARD.parent / "training_log.json").read_text())
    logged = _train_args(log["train_command"])
    assert ours.stop_at_step == log["selected_step"]
    mine, theirs = vars(ours), vars(logged)
    for key in ("output_dir", "stop_at_step"):
        mine.pop(key), theirs.pop(key)
    assert mine == theirs

    bundled = XLSTMFlaxConfig.from_pretrained(BUNDLED_CARD.parent)
    fields = {**load_preset(ours.preset).to_dict(),
              **dict(vocab_size=ours.tokenizer_vocab_size, bos_token_id=bundled.bos_token_id,
                     eos_token_id=bundled.eos_token_id, pad_token_id=bundled.pad_token_id,
                     context_length=ours.seq_len, compute_dtype="float32"),
              **parse_field_overrides(ours.set, "--set")}
    built = XLSTMFlaxConfig(**fields).to_dict()
    stored = json.loads((BUNDLED_CARD.parent / "config.json").read_text())
    for key in ("architectures", "transformers_version"):
        stored.pop(key)
    assert {k: built.get(k) for k in stored} == stored


def test_ci_runs_the_readme_test_command():
    test_command = next(b for b in blocks(README, "bash") if "pytest" in b).strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command.replace('install "', 'install -q "') in ci
    main_job = next(b for b in blocks(README, "bash") if "generate" in b).strip()
    assert main_job.split(" && ")[0].split()[-1] != test_command.split(" && ")[0].split()[-1]  # distinct venvs


_MESH_EXAMPLE = """
import os
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
import numpy as np
from modeling_xlstm_flax import sharded_steps as steps, sharding as sh
from modeling_xlstm_flax import bundled_model_path
mesh = sh.make_mesh(data=2, fsdp=2, tensor=2)
model, params = sh.from_pretrained_sharded(str(bundled_model_path()), mesh, param_dtype="bfloat16")
ids = np.zeros((8, 16), np.int32)
logits = steps.sharded_forward(model, mesh)(params, ids)
tokens = steps.sharded_generate(model, mesh, max_new_tokens=2)(params, ids)
loss, grads = steps.sharded_loss_and_grad(model, mesh)(params, ids)
print(logits.shape, tokens.shape)
"""


@pytest.mark.slow
def test_mesh_example_without_rematerialization(tmp_path):
    """docs/sharding.md's (2, 2, 2) mesh example (on 8 virtual CPU devices, the bundled model): XLA does not have to
    rematerialise the embedding lookup's output in full (jax 0.10's partitioner warned "[SPMD] Involuntary full
    rematerialization" when the lookup gathered rows of the fsdp-sharded table)."""
    proc = subprocess.run([sys.executable, "-c", _MESH_EXAMPLE], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=dict(os.environ, **NO_TORCH))  # torch: 3.5 s of start-up it never uses
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rematerialization" not in proc.stderr, proc.stderr[-3000:]
