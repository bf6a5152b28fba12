"""The benchmark entry point (benchmarks/run.py) on a tiny config for a few steps, so it cannot rot.

Checks what must hold on any machine, never a speed (CI machines vary): every field is there, the numbers agree
with each other (rates = work / median seconds, speedups = ratio of rates, min <= median <= max, a target's "met" is
its comparison), and ours computes what the reference library computes (logits within 1e-3, the same greedy tokens).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # see setup.cfg: `pytest -m "not slow"` skips this file

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]

SMOKE_ARGS = [
    "--config", str(REPO / "benchmarks" / "configs" / "smoke.json"),
    "--seq-lens", "32", "--prefill-batch", "2x16", "--decode-batches", "1", "--prompt-len", "8",
    "--new-tokens", "3", "--decode-contexts", "8,32", "--compile-seq", "16", "--repeats", "1", "--warmup", "1",
    "--matmul-size", "128", "--bandwidth-mb", "4", "--limit-repeats", "1", "--pause", "0", "--no-recompile-check",
    "--quiet",
]

SUMMARY_FIELDS = ["runs", "seconds_median", "seconds_min", "seconds_max", "seconds_all", "peak_rss_mb",
                  "peak_rss_delta_mb", "other_load_cores", "disturbed"]
RATE_FIELDS = SUMMARY_FIELDS + ["tokens_per_s", "tokens_per_s_min", "tokens_per_s_max",
                               "memory_run_peak_rss_delta_mb"]


def _has(d, fields, where):
    missing = [f for f in fields if f not in d]
    assert not missing, f"{where} lacks {missing}"


def _consistent(summary, work, where, unit="tokens_per_s"):
    """A summary's numbers agree with its runs: min <= median <= max over `runs` timings, rate = work / median."""
    seconds = summary["seconds_all"]
    assert len(seconds) == summary["runs"] >= 1, where
    assert summary["seconds_min"] == min(seconds) <= summary["seconds_median"] <= max(seconds) == \
        summary["seconds_max"], where
    assert summary["seconds_min"] > 0, where
    assert summary[unit] == pytest.approx(work / summary["seconds_median"], rel=1e-9), where
    assert summary[unit + "_min"] <= summary[unit] <= summary[unit + "_max"], where


@pytest.fixture(scope="module")
def results_path(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--out", str(out), *SMOKE_ARGS],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path_factory.getbasetemp())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def results(results_path):
    return json.loads(results_path.read_text())


def test_top_level_and_machine(results):
    _has(results, ["schema_version", "meta", "machine", "model", "reference", "prefill", "decode", "generate",
                   "compile", "targets", "disturbed", "plots"], "results")
    _has(results["meta"], ["started", "finished", "command", "args", "versions", "torch_threads"], "meta")
    _has(results["machine"], ["cpu", "cores", "memory_gb", "simd", "limits", "loadavg_start", "loadavg_end"],
         "machine")
    lim = results["machine"]["limits"]
    _has(lim, ["matmul_gflops", "model_shape_matmul_gflops", "torch_matmul_gflops", "read_bandwidth",
               "read_bandwidth_gbs", "peak_matmul_gflops", "at_end", "disturbed"], "limits")
    _has(lim["matmul_gflops"], SUMMARY_FIELDS + ["gflops", "gflops_min", "gflops_max"], "matmul_gflops")
    assert lim["peak_matmul_gflops"] > 0 and lim["read_bandwidth_gbs"] > 0


def test_model_and_reference(results):
    _has(results["model"], ["params", "flops_per_token_blocks", "flops_lm_head_per_position",
                            "decode_bytes_per_step_batch1", "weights_mb", "memory_bound_16k_mb", "loader",
                            "chunk_size", "prefill_logits_last_only", "prefill_segment_size"], "model")
    ref = results["reference"]
    assert ref["skipped"] is False
    _has(ref, ["library", "dtype", "torch_threads", "mode", "prefill_kernels", "prefill_kernels_measured",
               "decode_kernel", "notes"], "reference")


def test_prefill(results):
    shapes = {(e["batch"], e["seq_len"]) for e in results["prefill"]}
    assert shapes == {(1, 32), (2, 16)}
    for e in results["prefill"]:
        _has(e, ["tokens", "ours", "reference", "speedup", "model_gflops_per_token", "ours_achieved_gflops",
                 "ours_fraction_of_matmul_peak"], "prefill entry")
        _has(e["ours"], RATE_FIELDS + ["compile_s", "xla_memory", "logits"], "prefill ours")
        want = {"chunkwise_fixed", "native_sequence"} if e["batch"] == 1 else {"chunkwise_fixed"}
        assert set(e["reference"]) == want  # the native loop runs at batch 1 only
        _consistent(e["ours"], e["tokens"], "prefill ours")
        assert e["tokens"] == e["batch"] * e["seq_len"]
        for kernel, ref in e["reference"].items():
            _has(ref, RATE_FIELDS + ["max_abs_logit_diff_vs_ours"], "prefill reference")
            assert ref["max_abs_logit_diff_vs_ours"] < 1e-3  # same weights, same function
            _consistent(ref, e["tokens"], f"prefill reference {kernel}")
            assert e["speedup"][kernel] == pytest.approx(e["ours"]["tokens_per_s"] / ref["tokens_per_s"])


def test_decode_and_generate(results):
    dec = results["decode"]
    _has(dec, ["compile_s", "bandwidth_bound_tokens_per_s", "contexts"], "decode")
    assert [e["context"] for e in dec["contexts"]] == [8, 32]
    for e in dec["contexts"]:
        _has(e, ["ours", "reference", "speedup", "greedy_tokens_equal_fraction", "ours_fraction_of_bandwidth",
                 "ours_time_ratio_vs_shortest", "reference_time_ratio_vs_shortest"], "decode entry")
        _has(e["ours"], RATE_FIELDS + ["ms_per_token"], "decode ours")
        assert e["greedy_tokens_equal_fraction"] == 1.0, e["context"]  # the reference library's tokens
        assert e["speedup"] == pytest.approx(e["ours"]["tokens_per_s"] / e["reference"]["tokens_per_s"])
    (gen,) = results["generate"]
    _has(gen, ["batch", "prompt_len", "new_tokens", "ours", "reference", "speedup",
               "greedy_tokens_equal_fraction", "ours_fraction_of_bandwidth"], "generate")
    _has(gen["ours"], RATE_FIELDS + ["compile_s", "first_call_s"], "generate ours")
    _has(gen["reference"], RATE_FIELDS + ["first_call_s"], "generate reference")
    assert gen["greedy_tokens_equal_fraction"] == 1.0  # model.generate's tokens are the reference library's
    assert gen["speedup"] == pytest.approx(gen["ours"]["tokens_per_s"] / gen["reference"]["tokens_per_s"])
    comp = results["compile"]
    _has(comp, ["forward", "generate", "reference_forward_first_call_s"], "compile")
    _has(comp["generate"], ["compile_s", "first_call_s"], "compile generate")


def test_targets_and_plots(results):
    names = [t["name"] for t in results["targets"]]
    assert len(names) == 10, names
    for t in results["targets"]:
        _has(t, ["name", "value", "target", "op", "met"], "target")
        if t["value"] is None:
            assert t["met"] is None, t
        else:
            assert t["met"] == (t["value"] >= t["target"] if t["op"] == ">=" else t["value"] <= t["target"]), t
    assert len(results["plots"]) == 3
    for path in results["plots"]:
        assert Path(path).is_file() and Path(path).stat().st_size > 1000


def test_merge_recomputes_targets(results_path, tmp_path):
    out = tmp_path / "merged.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--merge", str(results_path),
                           "--out", str(out), "--no-plots", "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    merged = json.loads(out.read_text())
    assert merged["prefill"] == json.loads(results_path.read_text())["prefill"]
    assert len(merged["targets"]) == 10 and merged["meta"]["merged_from"]
