"""Compile-only report for GPUs and TPUs on a CPU machine: per-device memory, flops, bytes, roofline bounds and
collectives of the xLSTM's prefill, decode step, generate and training step, for NVIDIA H100 SXM / H200 (1 and 8
GPUs) and TPU v5e-8, v6e-8, v5p-8 and v5p-64 (v5p:4x4x2, 32 chips on 8 hosts).

    JAX_PLATFORMS=cpu python benchmarks/accelerators.py                         # everything (long: the 7B)
    python benchmarks/accelerators.py --presets 160M --targets h200,v5e-8 --workloads decode-b1,prefill-2k

Needs the `aot` extra (`pip install -e .[aot]`). Nothing runs on an accelerator: these are XLA's own figures for
the compiled program (see benchmarks/README.md, "GPUs and TPUs"), never measurements. Writes
<out>.json, <out>.md and <out>.png (default benchmarks/results/accelerators); an existing report is replaced only
once the new one is complete, and entries of other (target, workload, preset) triples in it are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax starts: the CUDA plugin registers only so on a CPU host

from _aot import TARGETS, AotUnavailable, analyse, compile_only, hbm_traffic, target_devices  # noqa: E402

GIB = 2**30
DEFAULT_OUT = HERE / "results" / "accelerators"


def _pick(text: str, allowed, what: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"accelerators.py: unknown {what} {unknown or text!r}; choose from {', '.join(allowed)}")
    return chosen


def run_one(target_name: str, workload_name: str, preset: str, dtype: str = "bfloat16") -> dict:
    """Compile one (target, workload, preset) with params and compute in `dtype` (a training step keeps float32
    params) and return its entry (figures per device)."""
    import jax.numpy as jnp

    from _aot_workloads import PRESETS, build_model, inference_mesh, workload
    from modeling_xlstm_flax import sharding as shd

    target = TARGETS[target_name]
    devices = target_devices(target)
    train = workload_name.startswith("train")
    overrides = dict(scan_blocks=True, gradient_checkpointing=True) if train else {}
    model, shapes = build_model(PRESETS[preset], dtype=jnp.dtype(dtype), **overrides)
    mesh = shd.make_mesh(fsdp=len(devices), devices=devices) if train else inference_mesh(model.config, devices)
    prog = workload(workload_name, model, shapes, mesh)
    start = time.perf_counter()
    compiled = compile_only(prog.fn, prog.args, prog.in_shardings, prog.out_shardings, prog.donate_argnums)
    seconds = time.perf_counter() - start
    entry = {"target": target_name, "workload": workload_name, "preset": preset, "dtype": dtype,
             "mesh": dict(mesh.shape), "devices": len(devices), "hosts": target.hosts,
             "compile_seconds": round(seconds, 1), "tokens": prog.tokens, **analyse(compiled)}
    entry["hbm_bytes"] = hbm_traffic(compiled.as_text())
    entry["ideal_flops"], entry["ideal_bytes"] = prog.ideal_flops, prog.ideal_bytes
    entry["notes"] = prog.notes
    entry.update(derived(entry, target))
    return entry


def derived(e: dict, target) -> dict:
    """Ratios and roofline bounds. roofline_s = max(flops / peak, bytes / bandwidth) per device with the HBM
    traffic read from the HLO (`hbm_bytes`) where available: a lower bound on the time, an upper bound on tokens/s.
    Programs with loops get only the bound from the ideal flops and bytes (their counted figures are not whole)."""
    out = {}
    mem = e.get("argument_bytes", 0) + e.get("output_bytes", 0) - e.get("alias_bytes", 0) + e.get("temp_bytes", 0)
    out["memory_bytes"] = mem
    out["fits"] = mem <= target.memory
    flops = e.get("flops")
    moved = e.get("hbm_bytes") or e.get("bytes_accessed")
    out["flops_ratio"] = flops / e["ideal_flops"] if flops and e["ideal_flops"] else None
    out["bytes_ratio"] = moved / e["ideal_bytes"] if moved and e["ideal_bytes"] else None
    out["cost_bytes_ratio"] = (e["bytes_accessed"] / e["ideal_bytes"]) if e.get("bytes_accessed") else None
    ideal_s = max(e["ideal_flops"] / target.peak_flops, e["ideal_bytes"] / target.bandwidth)
    out["ideal_tokens_per_s"] = e["tokens"] / ideal_s if ideal_s else None
    out["roofline_s"] = out["roofline_tokens_per_s"] = None
    # with loops XLA counts a body once (flops) and hbm_traffic over-counts inside bodies: no compiled roofline
    if flops is not None and moved is not None and not e.get("while_trip_counts"):
        compute_s, memory_s = flops / target.peak_flops, moved / target.bandwidth
        out["roofline_s"] = max(compute_s, memory_s)
        out["bound"] = "compute" if compute_s >= memory_s else "memory"
        out["roofline_tokens_per_s"] = e["tokens"] / out["roofline_s"] if out["roofline_s"] else None
    else:
        out["bound"] = "compute" if e["ideal_flops"] / target.peak_flops >= e["ideal_bytes"] / target.bandwidth \
            else "memory"
    return out


def _fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def markdown(entries: list[dict]) -> str:
    lines = ["| preset | target | workload | dtype | memory/device GiB (args + temp + out) | fits | flops/ideal | "
             "HBM bytes/ideal (cost-model bytes/ideal) | bound | roofline tokens/s (ideal) | collectives | "
             "compile s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (e["preset"], e["target"], e["workload"], e.get("dtype", ""))):
        dtype = e.get("dtype", "bfloat16").replace("bfloat16", "bf16").replace("float32", "f32")
        if "error" in e:
            lines.append(f"| {e['preset']} | {e['target']} | {e['workload']} | {dtype} | error: {e['error']} "
                         "| | | | | | | |")
            continue
        mem = (f"{e['memory_bytes'] / GIB:.2f} ({e['argument_bytes'] / GIB:.2f} + {e['temp_bytes'] / GIB:.2f} + "
               f"{(e['output_bytes'] - e['alias_bytes']) / GIB:.2f})")
        coll = ", ".join(f"{k} {v}" for k, v in e["collectives"].items()) or "none"
        loops = e.get("while_trip_counts") or []
        flops = _fmt(e.get("flops_ratio")) + ("*" if loops else "")
        lines.append(
            f"| {e['preset']} | {e['target']} | {e['workload']} | {dtype} | {mem} | "
            f"{'yes' if e['fits'] else '**no**'} | "
            f"{flops} | {_fmt(e.get('bytes_ratio'))} ({_fmt(e.get('cost_bytes_ratio'))}) | {e.get('bound', '-')} | "
            f"{_fmt(e.get('roofline_tokens_per_s'), ',.0f')} ({_fmt(e.get('ideal_tokens_per_s'), ',.0f')}) | "
            f"{coll} | {e['compile_seconds']} |")
    lines.append("")
    lines.append("\\* the program has `while` loops (segments, decode steps, chunks): XLA's cost model counts a loop "
                 "body once, so counted flops are below the real ones; HBM bytes multiply bodies by their trip count "
                 "and over-count inside them (an upper bound).")
    return "\n".join(lines) + "\n"


def plot(entries: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    ok = [e for e in entries if "error" not in e]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    labels = [f"{e['preset']} {e['target']}\n{e['workload']}" for e in ok]
    axes[0].barh(labels, [e["memory_bytes"] / GIB for e in ok])
    axes[0].set_xlabel("memory per device, GiB (compiler accounting)")
    axes[0].set_xscale("log")
    axes[1].barh(labels, [e.get("roofline_tokens_per_s") or 0 for e in ok])
    axes[1].set_xlabel("roofline tokens/s (upper bound, not measured)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.tick_params(axis="y", labelsize=6)
    fig.suptitle("xLSTM compile-only figures per device (XLA's accounting, no accelerator ran)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> int:
    from _aot_workloads import PRESETS, WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    parser.add_argument("--presets", default="160M,7B", help="comma list of 160M, 7B")
    parser.add_argument("--skip", default="7B/v5p-64/train-4k",
                        help="comma list of preset/target/workload to leave out (default: the 7B training step on "
                             "v5p-64, ~7 min alone on 2 cores); '' for none")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="params and compute dtype of the inference workloads (default bfloat16)")
    parser.add_argument("--redraw", action="store_true",
                        help="compile nothing: recompute the derived figures of <out>.json, rewrite .md and .png")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output path without suffix (.json, .md, .png)")
    args = parser.parse_args(argv)
    targets = _pick(args.targets, list(TARGETS), "target")
    workloads = _pick(args.workloads, WORKLOADS, "workload")
    presets = _pick(args.presets, list(PRESETS), "preset")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out = Path(args.out)
    if out.is_dir() or not out.name:
        raise SystemExit(f"accelerators.py: --out {out} is a folder; give a path without suffix")
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    kept = []
    if json_path.is_file():
        kept = json.loads(json_path.read_text()).get("entries", [])
    if args.redraw:
        for e in kept:
            if "error" not in e:
                e.update(derived(e, TARGETS[e["target"]]))
        targets = workloads = presets = []
    entries = []
    for preset in presets:
        for target in targets:
            for name in workloads:
                if f"{preset}/{target}/{name}" in skip:
                    continue
                print(f"{preset} {target} {name} ...", file=sys.stderr, flush=True)
                try:
                    entries.append(run_one(target, name, preset, args.dtype))
                except AotUnavailable as err:
                    raise SystemExit(f"accelerators.py: {err}")
                except Exception as err:  # noqa: BLE001  (a compile that fails, e.g. out of memory, is a result)
                    entries.append({"target": target, "workload": name, "preset": preset, "dtype": args.dtype,
                                    "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
                print(json.dumps({k: v for k, v in entries[-1].items() if k != "notes"}, default=str),
                      file=sys.stderr, flush=True)
    key = lambda e: (e["preset"], e["target"], e["workload"], e.get("dtype", "bfloat16"))  # noqa: E731
    done = {key(e) for e in entries}
    entries += [e for e in kept if key(e) not in done]
    report = {"what": "compile-only figures per device (XLA's accounting of the compiled program, not measured)",
              "targets": {name: vars(t) for name, t in TARGETS.items()}, "entries": entries}
    for path, text in ((json_path, json.dumps(report, indent=1, default=str)),
                       (out.with_suffix(".md"), markdown(entries))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    plot(entries, out.with_suffix(".png"))
    print(markdown(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
