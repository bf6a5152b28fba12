"""What two model-level changes would give our prefill, measured with today's public pieces (run by hand).

    .venv/bin/python benchmarks/prefill_variants.py --seq-lens 2048,16384 --segments 1024,2048

* `full`: what `run.py` timed before the two changes below were built into the model: `model(ids,
  past_key_values=init_cache)` in one pass (logits for every position), last row kept.
* `model`: what the model does now (`logits_to_keep=1`, `prefill_segment_size` 1024): what `run.py` times.
* `last`: the backbone (`FlaxXLSTMModel`) and the LM head + soft cap on the last position only, i.e. what a
  `logits_to_keep=1` argument in the causal-LM call (used by generate's prefill) would compute.
* `segN`: `last`, with the prompt fed in segments of N tokens through the recurrent state (`lax.scan` over segments),
  so only one segment's activations are alive: what a segmented prefill would give.

Prints tokens/s (median of --repeats after one warm-up run), XLA's peak memory estimate, and the largest difference
of the next-token logits from `full`. Random weights of --config (float32).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="xlstm-160m")
    p.add_argument("--seq-lens", default="2048,16384")
    p.add_argument("--segments", default="1024,2048")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import modeling_xlstm_flax as xf
    from modeling_xlstm_flax.xlstm_layers import soft_cap

    cfg = xf.load_preset(args.config, prefill_segment_size=None)  # `full`: one pass, as before segmenting existed
    model = xf.FlaxXLSTMForCausalLM(cfg, seed=0, dtype=jnp.float32)
    params = model.params
    backbone = xf.FlaxXLSTMModel(cfg, dtype=jnp.float32, _do_init=False)

    def head(params, h):
        return soft_cap(h @ params["lm_head"]["kernel"], cfg.logits_soft_cap)

    def full(params, ids):
        out = model(ids, params=params, past_key_values=model.init_cache(ids.shape[0]))
        return out.logits[:, -1], out.past_key_values

    segmented_model = xf.FlaxXLSTMForCausalLM(xf.load_preset(args.config), _do_init=False, dtype=jnp.float32)

    def built_in(params, ids):
        out = segmented_model(ids, params=params, past_key_values=model.init_cache(ids.shape[0]), logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values

    def last(params, ids):
        out = backbone(ids, params=params["backbone"], past_key_values=model.init_cache(ids.shape[0]))
        return head(params, out.last_hidden_state[:, -1]), out.past_key_values

    def segmented(seg):
        def prefill(params, ids):
            B, S = ids.shape
            segs = ids.reshape(B, S // seg, seg).swapaxes(0, 1)

            def body(cache, seg_ids):
                out = backbone(seg_ids, params=params["backbone"], past_key_values=cache)
                return out.past_key_values, out.last_hidden_state[:, -1]

            cache, lasts = jax.lax.scan(body, model.init_cache(B), segs)
            return head(params, lasts[-1]), cache

        return prefill

    for S in [int(x) for x in args.seq_lens.split(",")]:
        ids = np.random.RandomState(S).randint(3, cfg.vocab_size, (1, S)).astype(np.int32)
        variants = [("full", full), ("model", built_in), ("last", last)]
        variants += [(f"seg{n}", segmented(n)) for n in map(int, args.segments.split(",")) if S % n == 0 and n < S]
        ref = None
        for name, fn in variants:
            compiled = jax.jit(fn).lower(params, ids).compile()
            ma = compiled.memory_analysis()
            peak = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                    - ma.alias_size_in_bytes) / 2**20  # as run.py's xla_memory.peak_mb
            logits = np.asarray(jax.block_until_ready(compiled(params, ids))[0])
            ref = logits if ref is None else ref
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(params, ids))
                times.append(time.perf_counter() - t0)
            print(f"S={S:6d} {name:8s} {S / np.median(times):7.0f} tok/s (min {S / max(times):.0f}, max "
                  f"{S / min(times):.0f})  XLA weights+temp+out {peak:6.0f} MiB  logits diff {np.abs(logits - ref).max():.1e}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
