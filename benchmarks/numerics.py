"""Numerical agreement report (run by hand): kernel forms over long sequences and bfloat16 drift.

    python benchmarks/numerics.py [--lengths 4096 32768]

Prints JSON: max abs logit differences between the forms (float32) of a tiny random model at each length
(parallel only up to 4096: it is quadratic), and bfloat16 vs float32 on the same weights.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from modeling_xlstm_flax import FlaxXLSTMForCausalLM, load_preset


def logits_fn(config, dtype=jnp.float32):
    model = FlaxXLSTMForCausalLM(config, _do_init=False, dtype=dtype)
    return jax.jit(lambda p, x: model(x, params=p).logits)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--layer-type", default="mlstm_v1", choices=["mlstm_v1", "mlstm"])
    args = parser.parse_args()
    preset = "tiny-mlstm-v1" if args.layer_type == "mlstm_v1" else "tiny-mlstm"
    params = FlaxXLSTMForCausalLM(load_preset(preset), seed=0).params
    report = {"layer_type": args.layer_type}
    for length in args.lengths:
        ids = np.random.RandomState(length).randint(0, 97, (1, length))
        out = {k: np.asarray(logits_fn(load_preset(preset, sequence_kernel=k))(params, ids))
               for k in ("chunkwise", "recurrent") + (("parallel_stabilized",) if length <= 4096 else ())}
        bf16 = np.asarray(logits_fn(load_preset(preset), jnp.bfloat16)(params, ids))
        entry = {
            "chunkwise_vs_recurrent": float(np.abs(out["chunkwise"] - out["recurrent"]).max()),
            "bf16_vs_fp32_max_abs": float(np.abs(bf16 - out["chunkwise"]).max()),
            "bf16_vs_fp32_mean_abs": float(np.abs(bf16 - out["chunkwise"]).mean()),
            "bf16_argmax_agreement": float(np.mean(bf16.argmax(-1) == out["chunkwise"].argmax(-1))),
        }
        if "parallel_stabilized" in out:
            entry["parallel_vs_recurrent"] = float(np.abs(out["parallel_stabilized"] - out["recurrent"]).max())
        report[str(length)] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
