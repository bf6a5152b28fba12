"""Markdown tables from a results dict: `python benchmarks/_report.py results.json` prints them."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def _range(s, key="tokens_per_s"):
    return f"{_f(s[key])} ({_f(s[key + '_min'])}-{_f(s[key + '_max'])})"


def _d(*summaries):
    return "yes" if any(s and s.get("disturbed") for s in summaries) else "no"


def table(results) -> str:
    lim = results.get("machine", {}).get("limits", {})
    peak, bw = lim.get("peak_matmul_gflops"), lim.get("read_bandwidth_gbs")
    kernels = results.get("reference", {}).get("prefill_kernels_measured", [])
    main_k = kernels[0] if kernels else None
    lines = []
    m = results.get("machine", {})
    lines.append(f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {_f(m.get('memory_gb'))} GB; "
                 f"measured limits: float32 matmul {_f(peak)} GFLOP/s, read bandwidth {_f(bw)} GB/s. "
                 f"Disturbed by other load: {_f(results.get('disturbed'))}.")
    lines.append("")
    head = "| measurement | ours | " + " | ".join(f"reference [{k}]" for k in kernels) + " | ours / reference | " \
           "limit | ours / limit | disturbed |"
    lines.append(head)
    lines.append("|" + "---|" * (head.count("|") - 1))
    ncols = len(kernels)
    for e in results.get("prefill", []):
        refs = [e["reference"].get(k) for k in kernels]
        cells = [(_range(r) if r else "-") for r in refs]
        ratio = " / ".join(_f(e["speedup"].get(k), 2) for k in kernels if k in e["speedup"]) or "-"
        limit = peak / e["model_gflops_per_token"] if peak else None
        lines.append(f"| prefill {e['batch']}x{e['seq_len']} tok/s | {_range(e['ours'])} | " + " | ".join(cells)
                     + f" | {ratio} | {_f(limit)} (matmul peak) | {_f(e['ours_fraction_of_matmul_peak'], 2)} | "
                     f"{_d(e['ours'], *refs)} |")
    for e in results.get("prefill", []):
        mem = (e["ours"].get("xla_memory") or {}).get("peak_mb")
        refs = [e["reference"].get(k) for k in kernels]
        cells = [(_f(r.get("memory_run_peak_rss_delta_mb")) + " (RSS rise)" if r else "-") for r in refs]
        lines.append(f"| prefill {e['batch']}x{e['seq_len']} peak MB | {_f(mem)} (XLA), "
                     f"{_f(e['ours'].get('memory_run_peak_rss_delta_mb'))} (RSS rise) | " + " | ".join(cells)
                     + " | - | - | - | - |")
    dec = results.get("decode", {})
    for e in results.get("generate", []):
        r = e.get("reference")
        limit = dec.get("bandwidth_bound_tokens_per_s") if e["batch"] == 1 else None
        lines.append(f"| generate batch {e['batch']} ({e['prompt_len']}+{e['new_tokens']}) new tok/s | "
                     f"{_range(e['ours'])} | " + " | ".join([_range(r) if r else "-"] + ["same"] * (ncols - 1))
                     + f" | {_f(e.get('speedup'), 2)} | {_f(limit)} (bandwidth) | "
                     f"{_f(e.get('ours_fraction_of_bandwidth'), 2)} | {_d(e['ours'], r)} |")
    for e in dec.get("contexts", []):
        r = e.get("reference")
        lines.append(f"| decode after {e['context']} tokens, ms/token | {_f(e['ours']['ms_per_token'], 2)} "
                     f"(x{_f(e['ours_time_ratio_vs_shortest'], 2)}) | "
                     + " | ".join([(_f(r['ms_per_token'], 1) + f" (x{_f(e.get('reference_time_ratio_vs_shortest'), 2)})")
                                   if r else "-"] + ["same"] * (ncols - 1))
                     + f" | {_f(e.get('speedup'), 2)} | {_f(1e3 / dec['bandwidth_bound_tokens_per_s'], 1) if dec.get('bandwidth_bound_tokens_per_s') else '-'} (bandwidth) | "
                     f"{_f(e.get('ours_fraction_of_bandwidth'), 2)} | {_d(e['ours'], r)} |")
    comp = results.get("compile", {})
    if comp:
        f, g = comp.get("forward", {}), comp.get("generate", {})
        lines.append(f"| compile: forward 1x{f.get('seq_len')} s | {_f(f.get('compile_s'))} (first call "
                     f"{_f(f.get('first_call_s'))}) | " + " | ".join(["eager"] * ncols) + " | - | - | - | - |")
        lines.append(f"| compile: generate 1x{g.get('prompt_len')}+{g.get('new_tokens')} s | {_f(g.get('compile_s'))}"
                     f" (first call {_f(g.get('first_call_s'))}) | " + " | ".join(["eager"] * ncols)
                     + " | - | 20 (target) | - | - |")
    lines.append("")
    lines.append("| target | value | target | met |")
    lines.append("|---|---|---|---|")
    for t in results.get("targets", []):
        lines.append(f"| {t['name']} | {_f(t['value'], 2)} | {t['op']} {t['target']} | {_f(t['met'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1]).read_text())))
