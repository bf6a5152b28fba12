"""Two-process (multi-host style) check of the sharded path on CPU: each process owns 4 host devices, together an
8-device (2, 2, 2) mesh, joined with `jax.distributed.initialize` (gloo CPU collectives).

    python tests/sharding_multihost.py OUT_DIR PORT [--full]   # launches both processes -> OUT_DIR/result.json

Each process: loads a saved model dir into the global mesh (`from_pretrained_sharded`: every process reads only
its own devices' shards), runs `sharded_forward` (with --full also `sharded_loss_and_grad` and `sharded_generate`)
on the same global batch, gathers the results and compares them with a local single-device run. This is the same
program as the README's multi-host command line, with localhost as the coordinator. tests/test_sharding.py runs
the forward-only form (the --full form costs ~70 CPU-seconds; run by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(out_dir: str, port: int, process_id: int, num_processes: int, full: bool) -> None:
    inherited = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in flag]
    os.environ["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=4"] + (inherited or [
        "--xla_llvm_disable_expensive_passes=true"]))  # no LLVM level 0: see tests/test_compile_flags.py
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(HERE))
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id)
    import numpy as np
    from jax.experimental import multihost_utils

    from conftest import max_abs_diff, tiny_config
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM
    from modeling_xlstm_flax import sharded_steps as steps, sharding as sh

    config = tiny_config("mlstm_v1", num_heads=8, vocab_size=96)  # divides tensor: the vocabulary-parallel lookup
    config.eos_token_id = None  # no eos: generation runs to max_new_tokens
    model_dir = os.path.join(out_dir, "model")
    if process_id == 0:  # one writer; the others wait at the barrier
        model = FlaxXLSTMForCausalLM(config, _do_init=False)
        rng = jax.device_put(jax.random.PRNGKey(1), jax.local_devices()[0])
        params = jax.jit(lambda r: model.init_weights(r, (1, 1)))(rng)
        model.save_pretrained(model_dir, params=jax.device_get(params))
    multihost_utils.sync_global_devices("saved")

    mesh = sh.make_mesh(2, 2, 2)
    model, params = sh.from_pretrained_sharded(model_dir, mesh, fsdp_min_weight_size=0)
    ids = np.random.RandomState(0).randint(3, 96, (8, 10)).astype(np.int32)  # the same global batch everywhere
    logits = steps.sharded_forward(model, mesh, 0)(params, ids)
    result = {
        "process_count": jax.process_count(),
        "global_devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "params_fully_addressable": any(x.is_fully_addressable for x in jax.tree_util.tree_leaves(params)),
        "local_shards_per_param": sorted({len(x.addressable_shards) for x in jax.tree_util.tree_leaves(params)}),
    }
    # single-device reference on this process's first device, from the same files
    local, ref_params = FlaxXLSTMForCausalLM.from_pretrained(model_dir, _do_init=False)
    ref_logits = jax.jit(lambda p: local(ids, params=p).logits)(ref_params)
    result["logits_diff"] = max_abs_diff(multihost_utils.process_allgather(logits, tiled=True), ref_logits)
    if full:
        loss, grads = steps.sharded_loss_and_grad(model, mesh, 0)(params, ids)
        tokens = steps.sharded_generate(model, mesh, 0, max_new_tokens=4)(params, ids[:, :6])
        loss, grads, tokens = multihost_utils.process_allgather((loss, grads, tokens), tiled=True)
        ref_loss, ref_grads = jax.value_and_grad(
            lambda p: steps.causal_lm_loss(local(ids, params=p).logits, ids))(ref_params)
        ref_tokens = local.generate(ids[:, :6], params=ref_params, max_new_tokens=4).sequences
        result["loss_diff"] = abs(float(loss) - float(ref_loss))
        result["grad_diff"] = max(max_abs_diff(a, b) for a, b in zip(jax.tree_util.tree_leaves(grads),
                                                                     jax.tree_util.tree_leaves(ref_grads)))
        result["tokens_equal"] = bool(np.array_equal(np.asarray(tokens), np.asarray(ref_tokens)))
    Path(out_dir, f"result{process_id}.json").write_text(json.dumps(result))
    multihost_utils.sync_global_devices("done")
    jax.distributed.shutdown()


def main() -> int:
    full = "--full" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--full"]
    if len(args) == 4:  # worker mode: OUT_DIR PORT PROCESS_ID NUM_PROCESSES
        worker(args[0], int(args[1]), int(args[2]), int(args[3]), full)
        return 0
    out_dir, port = args[0], int(args[1])
    os.makedirs(out_dir, exist_ok=True)
    procs = [subprocess.Popen([sys.executable, __file__, out_dir, str(port), str(i), "2"] + ["--full"] * full)
             for i in range(2)]
    codes = [p.wait(timeout=600) for p in procs]
    results = [json.loads(Path(out_dir, f"result{i}.json").read_text()) for i in range(2) if codes[i] == 0]
    Path(out_dir, "result.json").write_text(json.dumps({"returncodes": codes, "results": results}, indent=1))
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
