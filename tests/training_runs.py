"""The training runs of tests/test_training.py, in subprocesses: `single` (one device) and `mesh` (4 host CPU
devices, a data 2 x tensor 2 mesh); the test starts both at once (compiling is mostly single-threaded).

    python tests/training_runs.py OUT_DIR single|mesh

Compiling dominates these runs, so each group runs in one process with a persistent compilation cache
(OUT_DIR/jax_cache_GROUP): a resumed or fine-tuned run with the same shapes, mesh and optimizer settings reuses the
first run's programs; and XLA:CPU optimises at level 1 with LLVM's expensive passes off (about 2/3 of the default's
compile time). Not level 0 as in tests/sharding_checks.py: at level 0 (jax 0.10.2) the compiled train step returns
NaN gate gradients at the third step of these runs (the same gradient computed op by op is finite), and the
non-finite stop ends them. Every run is `xlstm-flax train`'s `main`; OUT_DIR/GROUP.json holds each run's exit
status, stderr tail and seconds, and for `mesh` the check of a checkpoint restored onto another mesh. The tests
read the output folders themselves.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

OUT, GROUP = Path(sys.argv[1]).absolute(), sys.argv[2]
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1"
                           " --xla_llvm_disable_expensive_passes=true"
                           + (" --xla_force_host_platform_device_count=4" if GROUP == "mesh" else ""))
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(OUT / f"jax_cache_{GROUP}")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import jax  # noqa: E402

from modeling_xlstm_flax.training import main  # noqa: E402

# 1 block (half the compile time of the preset's 2) and the quadratic kernel (a quarter less than chunkwise, which
# runs one chunk at 32 tokens anyway; the kernels have their own tests), 8 steps of 8 windows x 32 tokens,
# validation at step 4
COMMON = ["--preset", "tiny-mlstm-v1", "--set", "num_blocks=1", "--set", 'sequence_kernel="parallel_stabilized"',
          "--seq-len", "32", "--batch-size", "8", "--tokenizer-vocab-size", "300", "--lr", "3e-3",
          "--warmup-steps", "2", "--log-every", "1", "--eval-every", "4", "--steps", "8", "--no-progress"]
MESH = ["--mesh-data", "2", "--mesh-tensor", "2"]
RUNS = {  # name: (output folder, arguments); "copy": the folder as if the run had stopped after its step-4 checkpoint
    "single": [
        ("straight", "straight", COMMON + ["--save-every", "4"]),
        ("copy", "straight", "resumed"),
        ("resumed", "resumed", COMMON + ["--save-every", "4", "--resume", "--keep-checkpoints", "1"]),
        # lr 1e30: the second step's loss is NaN; bfloat16 compute
        ("non_finite", "non_finite", COMMON + ["--lr", "1e30", "--warmup-steps", "0", "--save-every", "1",
                                               "--bf16"]),
    ],
    "mesh": [  # (the fine-tune here: the two groups take about the same time)
        ("mesh", "mesh", COMMON + MESH + ["--save-every", "4"]),
        ("copy", "mesh", "mesh_resumed"),
        ("mesh_resumed", "mesh_resumed", COMMON + MESH + ["--save-every", "4", "--resume"]),
        # the mesh run's programs again (same shapes, mesh and optimizer settings), stopped after 2 of the 8 steps
        ("fine_tune", "tuned", ["--model", "{out}/mesh"] + COMMON[COMMON.index("--seq-len"):] + MESH
         + ["--stop-at-step", "2"]),
    ],
}


def restored_shardings(folder: Path) -> dict:
    """Restore the newest checkpoint of `folder` (written on the 2x2 mesh) onto one device with
    `restore_checkpoint`: do the restored params and optimizer state carry the live trees' shardings, and the
    params the saved model's values?"""
    import numpy as np
    from safetensors.numpy import load_file

    from modeling_xlstm_flax import FlaxXLSTMForCausalLM
    from modeling_xlstm_flax.sharded_steps import init_sharded_optimizer_state
    from modeling_xlstm_flax.sharding import make_mesh, shard_params
    from modeling_xlstm_flax.training import build_parser, make_optimizer
    from modeling_xlstm_flax.training_io import checkpoint_manager, restore_checkpoint

    model, params = FlaxXLSTMForCausalLM.from_pretrained(folder, _do_init=False)
    mesh = make_mesh()
    params = shard_params(params, model.config, mesh)
    args = build_parser().parse_args(COMMON[COMMON.index("--seq-len"):] + ["--output-dir", str(folder)])
    opt_state = init_sharded_optimizer_state(make_optimizer(args, params, model.config)[0], params, model.config, mesh)
    with checkpoint_manager(folder / "checkpoints") as manager:
        got_params, got_opt, state = restore_checkpoint(manager, params, opt_state)
    leaves = jax.tree_util.tree_leaves_with_path
    mismatches = [jax.tree_util.keystr(k) for (k, a), (_, b) in zip(leaves(got_params) + leaves(got_opt),
                                                                     leaves(params) + leaves(opt_state))
                  if a.sharding != b.sharding]
    saved = load_file(str(folder / "model.safetensors"))
    flat = {jax.tree_util.keystr(k, simple=True, separator="."): np.asarray(v) for k, v in leaves(got_params)}
    return {"step": state["step"], "sharding_mismatches": mismatches,
            "saved_tensor_sharded": _saved_tensor_sharded(folder / "checkpoints" / f"step_{state['step']}"),
            "max_diff_to_saved_model": max(float(np.max(np.abs(flat[k] - saved[k]))) for k in saved),
            "same_names": sorted(flat) == sorted(saved)}


def _saved_tensor_sharded(step_dir: Path) -> int:
    """How many params orbax's metadata records as split over the tensor axis when saved."""
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(step_dir / "params")
    meta = getattr(meta, "item_metadata", meta)
    return sum("tensor" in str(getattr(m, "sharding", "")) for m in jax.tree_util.tree_leaves(meta))


def run() -> dict:
    results = {"device_count": jax.device_count(), "runs": {}, "startup_cpu_seconds": time.process_time()}
    for name, folder, args in RUNS[GROUP]:
        if name == "copy":  # checkpoint step_4 and the tokenizer
            (OUT / args / "checkpoints").mkdir(parents=True)
            shutil.copytree(OUT / folder / "checkpoints" / "step_4", OUT / args / "checkpoints" / "step_4")
            for file in (OUT / folder).glob("*token*.json"):
                shutil.copy(file, OUT / args)
            continue
        args = [a.format(out=OUT) for a in args] + ["--output-dir", str(OUT / folder)]
        err, out = io.StringIO(), io.StringIO()
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(args)
        results["runs"][name] = {"rc": rc, "stderr": err.getvalue()[-3000:], "stdout": out.getvalue()[-3000:],
                                 "seconds": time.perf_counter() - t0,
                                 "cpu_seconds": time.process_time() - c0}
    (OUT / f"{GROUP}.json").write_text(json.dumps(results, indent=1))  # what ran, should the check below fail
    if GROUP == "mesh":
        t0 = time.perf_counter()
        results["restored"] = restored_shardings(OUT / "mesh")
        results["restored"]["seconds"] = time.perf_counter() - t0
    return results


if __name__ == "__main__":
    t0 = time.perf_counter()
    out = run()
    out["seconds"] = time.perf_counter() - t0
    (OUT / f"{GROUP}.json").write_text(json.dumps(out, indent=1))
