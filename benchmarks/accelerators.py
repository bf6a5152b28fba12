"""Compile-only report for GPUs and TPUs on a CPU machine: per-device memory, flops, bytes, roofline bounds and
collectives of the xLSTM's prefill, decode step, generate and training step, for NVIDIA H100 SXM / H200 (1 and 8
GPUs) and TPU v5e-8, v6e-8, v5p-8 and v5p-64 (v5p:4x4x2, 32 chips on 8 hosts).

    JAX_PLATFORMS=cpu python benchmarks/accelerators.py                         # everything (long: the 7B)
    python benchmarks/accelerators.py --presets 160M --targets h200,v5e-8 --workloads decode-b1,prefill-2k
    python benchmarks/accelerators.py --presets 160M-sLSTM --targets h200 --workloads decode-b1   # sLSTM blocks

Needs the `aot` extra (`pip install -e .[aot]`). Nothing runs on an accelerator: these are XLA's own figures for
the compiled program (see benchmarks/README.md, "GPUs and TPUs"), never measurements. Writes
<out>.json, <out>.md and <out>.png (default benchmarks/results/accelerators); an existing report is replaced only
once the new one is complete, and entries of other (target, workload, preset) triples in it are kept.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax starts: the CUDA plugin registers only so on a CPU host

from _aot import TARGETS, AotUnavailable, analyse, compile_only, hlo_figures, target_devices  # noqa: E402

GIB = 2**30
DEFAULT_OUT = HERE / "results" / "accelerators"
DEFAULT_HLO_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xlstm-flax-aot-hlo"


def _pick(text: str, allowed, what: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"accelerators.py: unknown {what} {unknown or text!r}; choose from {', '.join(allowed)}")
    return chosen


def run_one(target_name: str, workload_name: str, preset: str, dtype: str = "bfloat16",
            hlo_dir: Path | None = None) -> dict:
    """Compile one (target, workload, preset) with params and compute in `dtype` (a training step keeps float32
    params) and return its entry (figures per device). With `hlo_dir`, the optimised HLO is saved there (gzip), so
    that `--redraw` can recount it without compiling again."""
    import jax.numpy as jnp

    from _aot_workloads import PRESETS, build_model, inference_mesh, workload
    from modeling_xlstm_flax import load_preset, sharding as shd

    target = TARGETS[target_name]
    devices = target_devices(target)
    train = workload_name.startswith("train")
    # training: stacked blocks (one compiled block) where the stack is homogeneous; a mixed mLSTM/sLSTM stack
    # cannot be scanned and runs unrolled
    name, fields = PRESETS[preset]
    mixed = 0 < len(fields.get("slstm_at", [])) < load_preset(name, **fields).num_blocks
    overrides = dict(scan_blocks=not mixed, gradient_checkpointing=True) if train else {}
    model, shapes = build_model(PRESETS[preset], dtype=jnp.dtype(dtype), **overrides)
    mesh = shd.make_mesh(fsdp=len(devices), devices=devices) if train else inference_mesh(model.config, devices)
    prog = workload(workload_name, model, shapes, mesh)
    start = time.perf_counter()
    compiled = compile_only(prog.fn, prog.args, prog.in_shardings, prog.out_shardings, prog.donate_argnums)
    seconds = time.perf_counter() - start
    entry = {"target": target_name, "workload": workload_name, "preset": preset, "dtype": dtype,
             "mesh": dict(mesh.shape), "devices": len(devices), "hosts": target.hosts,
             "compile_seconds": round(seconds, 1), "tokens": prog.tokens, **analyse(compiled)}
    text = compiled.as_text()
    entry["ideal_flops"], entry["ideal_bytes"] = prog.ideal_flops, prog.ideal_bytes
    entry["loop_trips_hint"] = prog.loop_trips_hint
    entry["notes"] = prog.notes
    entry.update(hlo_figures(text, prog.loop_trips_hint))
    if hlo_dir is not None:
        hlo_dir.mkdir(parents=True, exist_ok=True)
        name = hlo_dir / f"{preset}_{target_name}_{workload_name}_{dtype}.hlo.gz"
        tmp = name.with_suffix(".tmp")
        with gzip.open(tmp, "wt") as fh:
            fh.write(text)
        os.replace(tmp, name)
        entry["hlo_file"] = name.name
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
    flops = e.get("loop_flops") or e.get("flops")  # loop bodies times trips; XLA's own counts them once
    moved = e.get("hbm_bytes") or e.get("bytes_accessed")
    out["flops_ratio"] = flops / e["ideal_flops"] if flops and e["ideal_flops"] else None
    out["xla_flops_ratio"] = e["flops"] / e["ideal_flops"] if e.get("flops") and e["ideal_flops"] else None
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
    lines = ["| preset | target | workload | dtype | memory/device GiB (args + temp + out) | fits | "
             "flops/ideal (XLA's count) | "
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
        whole = e.get("loop_flops") is not None or not loops
        flops = _fmt(e.get("flops_ratio")) + ("" if whole else "*")
        if e.get("loop_flops") is not None and loops:
            flops += f" ({_fmt(e.get('xla_flops_ratio'))})"
        lines.append(
            f"| {e['preset']} | {e['target']} | {e['workload']} | {dtype} | {mem} | "
            f"{'yes' if e['fits'] else '**no**'} | "
            f"{flops} | {_fmt(e.get('bytes_ratio'))} ({_fmt(e.get('cost_bytes_ratio'))}) | {e.get('bound', '-')} | "
            f"{_fmt(e.get('roofline_tokens_per_s'), ',.0f')} ({_fmt(e.get('ideal_tokens_per_s'), ',.0f')}) | "
            f"{coll} | {e['compile_seconds']} |")
    lines.append("")
    lines.append("flops: XLA's cost model with every `while` body counted times its trip count (`_aot.loop_flops`); "
                 "in brackets XLA's own count, which counts a loop body once. \\* an entry compiled before "
                 "`loop_flops` existed, with loops (segments, decode steps, chunks, scanned blocks): XLA's count only, "
                 "below the real flops. HBM bytes multiply loop bodies by their trip count and over-count inside them "
                 "(an upper bound) for programs with loops.")
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


def _key(e: dict) -> tuple:
    return e["preset"], e["target"], e["workload"], e.get("dtype", "bfloat16")


def _read(json_path: Path) -> list[dict]:
    return json.loads(json_path.read_text()).get("entries", []) if json_path.is_file() else []


def save(out: Path, new: list[dict], replace_all: bool = False) -> list[dict]:
    """Merge `new` into the report at <out>.json (re-read now: another run may have added entries meanwhile; an
    entry of the same (preset, target, workload, dtype) is replaced) and rewrite .json and .md, each complete
    before it replaces the old file. Returns all entries."""
    json_path = out.with_suffix(".json")
    done = {_key(e) for e in new}
    entries = list(new) + ([] if replace_all else [e for e in _read(json_path) if _key(e) not in done])
    report = {"what": "compile-only figures per device (XLA's accounting of the compiled program, not measured)",
              "targets": {name: vars(t) for name, t in TARGETS.items()}, "entries": entries}
    for path, text in ((json_path, json.dumps(report, indent=1, default=str)),
                       (out.with_suffix(".md"), markdown(entries))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return entries


def redraw(e: dict, hlo_dir: Path) -> dict:
    """Recount an entry's HLO figures from its saved HLO (when there) and recompute the derived ones."""
    if "error" in e:
        return e
    hlo = hlo_dir / e.get("hlo_file", "-")
    if e.get("hlo_file") and hlo.is_file():
        with gzip.open(hlo, "rt") as fh:
            e.update(hlo_figures(fh.read(), e.get("loop_trips_hint")))
    e.update(derived(e, TARGETS[e["target"]]))
    return e


def main(argv=None) -> int:
    from _aot_workloads import PRESETS, WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    parser.add_argument("--presets", default="160M,7B",
                        help=f"comma list of {', '.join(PRESETS)} (160M-sLSTM: the 160M with sLSTM blocks at 1, 3, "
                             "..., 11; default 160M,7B)")
    parser.add_argument("--skip", default="7B/v5p-64/train-4k",
                        help="comma list of preset/target/workload to leave out (default: the 7B training step on "
                             "v5p-64, ~7 min alone on 2 cores); '' for none")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="params and compute dtype of the inference workloads (default bfloat16)")
    parser.add_argument("--force", action="store_true",
                        help="compile again the (preset, target, workload, dtype) entries the report already has "
                             "(default: keep them; a failed one is always tried again)")
    parser.add_argument("--redraw", action="store_true",
                        help="compile nothing: recount <out>.json's entries from their saved HLO (--hlo-dir), "
                             "recompute the derived figures, rewrite .md and .png")
    parser.add_argument("--hlo-dir", default=str(DEFAULT_HLO_DIR),
                        help=f"where each compiled program's optimised HLO is saved, gzipped (default {DEFAULT_HLO_DIR}"
                             "; not committed: the 7B's are tens of MB)")
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
    hlo_dir = Path(args.hlo_dir)
    if args.redraw:
        entries = save(out, [redraw(e, hlo_dir) for e in _read(out.with_suffix(".json"))], replace_all=True)
        plot(entries, out.with_suffix(".png"))
        print(markdown(entries))
        return 0
    have = {_key(e) for e in _read(out.with_suffix(".json")) if "error" not in e}
    entries = []
    for preset in presets:
        for target in targets:
            for name in workloads:
                if f"{preset}/{target}/{name}" in skip:
                    continue
                if not args.force and (preset, target, name, args.dtype) in have:
                    print(f"{preset} {target} {name}: in the report already (--force to compile again)",
                          file=sys.stderr)
                    continue
                print(f"{preset} {target} {name} ...", file=sys.stderr, flush=True)
                try:
                    entry = run_one(target, name, preset, args.dtype, hlo_dir)
                except AotUnavailable as err:
                    raise SystemExit(f"accelerators.py: {err}")
                except Exception as err:  # noqa: BLE001  (a compile that fails, e.g. out of memory, is a result)
                    entry = {"target": target, "workload": name, "preset": preset, "dtype": args.dtype,
                             "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
                print(json.dumps({k: v for k, v in entry.items() if k != "notes"}, default=str),
                      file=sys.stderr, flush=True)
                entries.append(entry)
                all_entries = save(out, [entry])  # after each compile: a stopped run keeps what it finished
    if entries:
        plot(all_entries, out.with_suffix(".png"))
    print(markdown(_read(out.with_suffix(".json"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
