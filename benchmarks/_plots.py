"""PNG plots of a results dict (matplotlib, Agg backend). `python benchmarks/_plots.py results.json` re-plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REF_STYLE = {"chunkwise_fixed": ("tab:orange", "PyTorch chunkwise (fixed)"),
             "native_sequence": ("tab:red", "PyTorch native sequence")}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(s, key="tokens_per_s"):
    return [[s[key] - s[key + "_min"]], [s[key + "_max"] - s[key]]]


def prefill_plot(results, path):
    plt = _plt()
    entries = [e for e in results.get("prefill", []) if e["batch"] == 1]
    if not entries:
        return None
    fig, (ax, mx) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [e["seq_len"] for e in entries]
    ax.errorbar(xs, [e["ours"]["tokens_per_s"] for e in entries],
                yerr=[sum((_err(e["ours"])[i] for e in entries), []) for i in (0, 1)],
                marker="o", color="tab:blue", label="ours (Flax)", capsize=3)
    kernels = sorted({k for e in entries for k in e["reference"]})
    for k in kernels:
        pts = [e for e in entries if k in e["reference"]]
        color, label = REF_STYLE.get(k, ("gray", k))
        ax.errorbar([e["seq_len"] for e in pts], [e["reference"][k]["tokens_per_s"] for e in pts],
                    yerr=[sum((_err(e["reference"][k])[i] for e in pts), []) for i in (0, 1)],
                    marker="s", color=color, label=label, capsize=3)
    peak = results.get("machine", {}).get("limits", {}).get("peak_matmul_gflops")
    if peak:
        ax.plot(xs, [peak / e["model_gflops_per_token"] for e in entries], "k--", label="matmul-peak bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens (batch 1)")
    ax.set_ylabel("prefill tokens/s")
    ax.set_title("Prefill throughput (median, min-max bars)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ours_mem = [(e["seq_len"], (e["ours"].get("xla_memory") or {}).get("peak_mb")) for e in entries]
    mx.plot([x for x, y in ours_mem if y], [y for x, y in ours_mem if y], "o-", color="tab:blue",
            label="ours: XLA peak (weights + temp + out)")
    mx.plot(xs, [e["ours"].get("memory_run_peak_rss_delta_mb") or 0 for e in entries], "o:", color="tab:blue",
            label="ours: RSS rise during call")
    for k in kernels:
        pts = [e for e in entries if k in e["reference"]]
        color, label = REF_STYLE.get(k, ("gray", k))
        mx.plot([e["seq_len"] for e in pts], [e["reference"][k].get("memory_run_peak_rss_delta_mb") or 0
                                              for e in pts], "s:",
                color=color, label=f"{label}: RSS rise during call")
    model = results.get("model", {})
    if model.get("weights_mb"):
        mx.axhline(model["weights_mb"], color="gray", ls="--", label="float32 weights")
    if model.get("memory_bound_16k_mb"):
        mx.axhline(model["memory_bound_16k_mb"], color="k", ls="--", label="target bound (1.5 x (weights + chunk))")
    mx.set_xscale("log", base=2)
    mx.set_xlabel("prompt tokens (batch 1)")
    mx.set_ylabel("MB")
    mx.set_title("Prefill memory")
    mx.grid(True, alpha=0.3)
    mx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def decode_plot(results, path):
    plt = _plt()
    gen = results.get("generate", [])
    dec = results.get("decode", {}).get("contexts", [])
    if not gen and not dec:
        return None
    fig, (ax, cx) = plt.subplots(1, 2, figsize=(12, 4.5))
    if gen:
        labels = [f"batch {e['batch']}" for e in gen]
        pos = list(range(len(gen)))
        ax.bar([p - 0.2 for p in pos], [e["ours"]["tokens_per_s"] for e in gen], 0.4, color="tab:blue",
               label="ours (Flax)", yerr=[sum((_err(e["ours"])[i] for e in gen), []) for i in (0, 1)], capsize=3)
        if all(e.get("reference") for e in gen):
            ax.bar([p + 0.2 for p in pos], [e["reference"]["tokens_per_s"] for e in gen], 0.4, color="tab:orange",
                   label="PyTorch", yerr=[sum((_err(e["reference"])[i] for e in gen), []) for i in (0, 1)],
                   capsize=3)
        bound = results.get("decode", {}).get("bandwidth_bound_tokens_per_s")
        if bound:
            ax.axhline(bound, color="k", ls="--", label="batch-1 bandwidth bound")
        ax.set_xticks(pos)
        ax.set_xticklabels(labels)
        e0 = gen[0]
        ax.set_ylabel("new tokens/s (all sequences)")
        ax.set_title(f"greedy generate: {e0['new_tokens']} new tokens after {e0['prompt_len']}-token prompt")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    if dec:
        xs = [e["context"] for e in dec]
        cx.plot(xs, [e["ours"]["ms_per_token"] for e in dec], "o-", color="tab:blue", label="ours (Flax)")
        if all(e.get("reference") for e in dec):
            cx.plot(xs, [e["reference"]["ms_per_token"] for e in dec], "s-", color="tab:orange", label="PyTorch")
        cx.set_xscale("log", base=2)
        cx.set_ylim(bottom=0)
        cx.set_xlabel("context tokens before decoding (batch 1)")
        cx.set_ylabel("ms per decoded token")
        cx.set_title("Decode step time vs context length")
        cx.grid(True, alpha=0.3)
        cx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def targets_plot(results, path):
    plt = _plt()
    rows = [t for t in results.get("targets", []) if t.get("value") is not None]
    if not rows:
        return None
    scores = [(t["value"] / t["target"]) if t["op"] == ">=" else (t["target"] / t["value"] if t["value"] else 0)
              for t in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    colors = ["tab:green" if s >= 1 else "tab:red" for s in scores]
    shown = [min(s, 3.0) for s in scores]  # a far-exceeded target would squash the others
    ax.barh(range(len(rows)), shown, color=colors)
    for i, (t, s) in enumerate(zip(rows, scores)):
        ax.text(min(s, 3.0) + 0.03, i, f"{t['value']:.3g} ({t['op']} {t['target']:g})", va="center", fontsize=7)
    ax.set_xlim(0, 3.6)
    ax.axvline(1.0, color="k", ls="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([t["name"] for t in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("achieved / target (>= 1 meets the issue's target)")
    ax.set_title("Targets" + (" (disturbed by other load)" if results.get("disturbed") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def make_all(results, directory, prefix="results"):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, fn in (("prefill", prefill_plot), ("decode", decode_plot), ("targets", targets_plot)):
        path = fn(results, directory / f"{prefix}_{name}.png")
        if path:
            out.append(path)
    return out


if __name__ == "__main__":
    src = Path(sys.argv[1])
    print(make_all(json.loads(src.read_text()), src.parent, src.stem))
