"""Peak memory of one training step with and without gradient checkpointing (run by hand, not a test).

    .venv/bin/python benchmarks/remat_memory.py [--config xlstm-160m] [--batch 1] [--seq-lens 512 1024]
                                                [--layouts unrolled scan] [--time] [--out FILE.json]

The step is `jax.value_and_grad` of the next-token cross-entropy of `FlaxXLSTMForCausalLM` (float32,
`train=True`), jitted and compiled ahead of time with abstract params (nothing is allocated unless `--time`).
XLA's `memory_analysis()` of the compiled program gives the sizes of its buffers: `temp` is everything the step
allocates besides its inputs and outputs (activations kept for the backward pass, gradients in flight), `peak`
= arguments + outputs + temp - aliased. `--time` also runs each step a few times on random params and records the
median seconds (the recompute cost). Prints one JSON object (and writes it with `--out`).
"""

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from modeling_xlstm_flax import FlaxXLSTMForCausalLM, load_preset

MIB = 2**20


def train_step(model):
    """(params, ids (B, S+1)) -> (loss, grads): next-token cross-entropy, train mode, no dropout rng needed."""

    def loss_fn(params, ids):
        logits = model(ids[:, :-1], params=params, train=True).logits  # (B, S, V) float32
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    return jax.jit(jax.value_and_grad(loss_fn))


def measure(config_name, layout, checkpointing, batch, seq, time_it):
    config = load_preset(config_name, compute_dtype="float32", scan_blocks=layout == "scan",
                         gradient_checkpointing=checkpointing)
    model = FlaxXLSTMForCausalLM(config, dtype=jnp.float32, _do_init=False)
    params = jax.eval_shape(lambda rng: model.init_weights(rng, (1, 1)), jax.random.PRNGKey(0))
    ids = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
    step = train_step(model)
    start = time.perf_counter()
    compiled = step.lower(params, ids).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    entry = {
        "layout": layout, "gradient_checkpointing": checkpointing, "batch": batch, "seq": seq,
        "temp_mib": round(mem.temp_size_in_bytes / MIB, 1),
        "argument_mib": round(mem.argument_size_in_bytes / MIB, 1),
        "output_mib": round(mem.output_size_in_bytes / MIB, 1),
        "alias_mib": round(mem.alias_size_in_bytes / MIB, 1),
        "peak_mib": round((mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                           - mem.alias_size_in_bytes) / MIB, 1),
        "compile_s": round(compile_s, 1),
    }
    if time_it:
        real = model.init_weights(jax.random.PRNGKey(0), (1, 1))
        data = np.random.RandomState(0).randint(0, config.vocab_size, (batch, seq + 1)).astype(np.int32)
        jax.block_until_ready(compiled(real, data))
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(compiled(real, data))
            runs.append(time.perf_counter() - start)
        entry["step_s"] = round(float(np.median(runs)), 3)
    return entry


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="xlstm-160m", help="preset name")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--layouts", nargs="+", default=["unrolled", "scan"], choices=["unrolled", "scan"])
    parser.add_argument("--time", action="store_true", help="also run each step and record its median seconds")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()
    report = {"config": args.config, "dtype": "float32", "backend": jax.default_backend(),
              "device": jax.devices()[0].device_kind, "machine": platform.processor() or platform.machine(),
              "jax": jax.__version__, "runs": []}
    for seq in args.seq_lens:
        for layout in args.layouts:
            pair = [measure(args.config, layout, gc, args.batch, seq, args.time) for gc in (False, True)]
            report["runs"] += pair
            print(f"{layout:8s} B={args.batch} S={seq}: temp {pair[0]['temp_mib']} -> {pair[1]['temp_mib']} MiB, "
                  f"peak {pair[0]['peak_mib']} -> {pair[1]['peak_mib']} MiB", flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
