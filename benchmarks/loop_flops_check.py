"""Where XLA's cost model loses flops: the 160M's programs compiled for this CPU (compile only), XLA's own count
(a loop body once) and `_aot.loop_flops` (every loop body times its trip count), each over the analytic count of
`_aot_workloads` (see benchmarks/README.md, "Flops the cost model misses").

    python benchmarks/loop_flops_check.py                      # all programs (~5 min on one free core)
    python benchmarks/loop_flops_check.py --programs forward,decode
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

PROGRAMS = ("forward", "forward-scan", "prefill", "decode", "generate", "train-scan")


def rows(names):
    import jax
    import jax.numpy as jnp

    from _aot import analyse, compile_only, hlo_figures
    from _aot_workloads import build_model, decode_step, forward_no_cache, generate, prefill, train_step
    from modeling_xlstm_flax import sharding as shd

    devices = jax.devices("cpu")[:1]
    for name in names:
        scan = name.endswith("-scan")
        if name == "train-scan":
            model, shapes = build_model("xlstm-160m", dtype=jnp.bfloat16, scan_blocks=True,
                                        gradient_checkpointing=True)
            prog = train_step(model, shapes, shd.make_mesh(fsdp=1, devices=devices), 1, 512)
        else:
            model, shapes = build_model("xlstm-160m", dtype=jnp.float32, scan_blocks=scan)
            mesh = shd.make_mesh(data=1, devices=devices)
            prog = {"forward": lambda: forward_no_cache(model, shapes, mesh, 1, 512),
                    "forward-scan": lambda: forward_no_cache(model, shapes, mesh, 1, 512),
                    "prefill": lambda: prefill(model, shapes, mesh, 1, 4096),
                    "decode": lambda: decode_step(model, shapes, mesh, 1),
                    "generate": lambda: generate(model, shapes, mesh, 1, 64, 32)}[name]()
        start = time.perf_counter()
        compiled = compile_only(prog.fn, prog.args, prog.in_shardings, prog.out_shardings, prog.donate_argnums)
        counted = analyse(compiled)
        whole = hlo_figures(compiled.as_text(), prog.loop_trips_hint, compiled.runtime_executable().hlo_modules()[0])
        yield (name, whole["while_trip_counts"], counted["flops"] / prog.ideal_flops,
               (whole["loop_flops"] or float("nan")) / prog.ideal_flops, time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", default=",".join(PROGRAMS), help=f"comma list of {', '.join(PROGRAMS)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.programs.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown or not names:
        raise SystemExit(f"loop_flops_check.py: unknown program {unknown or args.programs!r}; choose from "
                         f"{', '.join(PROGRAMS)}")
    print("| program (160M, CPU) | loop trip counts | XLA's count / analytic | loop_flops / analytic | compile s |")
    print("|---|---|---|---|---|")
    for name, trips, xla, whole, seconds in rows(names):
        print(f"| {name} | {sorted(set(trips), key=str)} | {xla:.3f} | {whole:.3f} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
