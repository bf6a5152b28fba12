"""benchmarks/device_check.py --dry-run (CPU, tiny shapes) so the GPU device check cannot rot.

Checks that every section ran, every number is finite, the correctness checks passed and the markdown table was
written; never a speed (the dry run's numbers mean nothing).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # see setup.cfg: `pytest -m "not slow"` skips this file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.py"

MODEL_ITEMS = {"build", "ttft_16", "ttft_128", "decode_b1_ctx16", "decode_b1_ctx128", "decode_b2_ctx16",
               "decode_b2_ctx128", "prefill_2x16", "memory"}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "device_check.json").read_text()), proc.stdout


def _numbers(obj, path=""):
    """Every (path, float) leaf of a JSON tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        yield path, obj


def test_every_section_ran_with_finite_numbers(result):
    _, data, _ = result
    assert data["meta"]["mode"] == "dry-run" and "report_error" not in data
    assert set(data["correctness"]) == {"kernel_forms_float32_highest", "kernel_forms_float32_default",
                                        "kernel_forms_bfloat16", "fixtures"}
    assert set(data["kernel"]) == {"chunkwise_L16", "chunkwise_L64", "tfla"}
    assert set(data["model"]) == MODEL_ITEMS
    for section in ("correctness", "kernel", "model"):
        for item, entry in data[section].items():
            if (section, item) == ("kernel", "tfla"):
                assert entry["status"] == "skipped"  # the optional PyTorch comparison never runs on CPU
                continue
            assert entry["status"] == "ok", (section, item, entry.get("error"), entry.get("traceback"))
    bad = [(p, v) for p, v in _numbers(data) if not math.isfinite(v)]
    assert not bad, bad
    for item, entry in data["model"].items():
        if item.startswith(("ttft_", "prefill_")):
            assert entry["tokens_per_s"] > 0 and entry["ttft_ms"] > 0 and entry["logits_finite"]
        if item.startswith("decode_"):
            assert entry["ms_per_token"] > 0 and entry["tokens_in_vocab"]
    assert data["model"]["build"]["param_dtype"] == "bfloat16"
    for entry in data["kernel"].values():
        if entry["status"] == "ok":
            assert entry["ms"] > 0 and entry["output_finite"]


def test_correctness_checks_passed(result):
    _, data, _ = result
    assert data["summary"]["correctness_passed"] is True
    forms = data["correctness"]["kernel_forms_float32_highest"]
    assert {c["form"] for c in forms["cases"]} == {"parallel_stabilized", "chunkwise", "recurrent", "step"}
    assert any(c["with_state"] for c in forms["cases"])
    assert all(c["passed"] for c in forms["cases"])
    fixtures = data["correctness"]["fixtures"]
    assert fixtures["passed"] and fixtures["models"]["v1"]["step_max_abs_diff"] <= 1e-4


def test_table_and_markdown(result):
    out, data, stdout = result
    md = (out / "device_check.md").read_text()
    assert "| metric | ours | H100 anchor (NX-AI) | H200 target | met |" in md
    metrics = [r["metric"] for r in data["table"]]
    for needle in ("prefill 1x128", "prefill 2x16", "time to first token, 128", "decode batch 1 after 128",
                   "decode batch 2 after 16", "peak device memory", "our chunkwise / TFLA H100 anchor"):
        assert any(needle in m for m in metrics), needle
    assert all(r["metric"] in md for r in data["table"])
    assert {r["met"] for r in data["table"]} <= {"met", "missed", "-", "n/a"}
    assert "done in" in stdout


def _script():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return device_check


def test_time_budget_skips_the_rest(tmp_path):
    """Once the budget is spent an item is recorded as skipped without running, and the files are still written;
    an item whose prerequisite did not finish is skipped too; an error is recorded, not raised."""
    dc = _script()
    rec = dc.Recorder(tmp_path, dc.Budget(0.0), {"mode": "dry-run", "shapes": {}})
    calls = []
    assert rec.run("model", "build", lambda: calls.append(1) or {}) is None
    assert calls == [] and rec.data["model"]["build"]["status"] == "skipped"
    rec.budget = dc.Budget(1e6)
    rec.run("model", "ttft_1", lambda: {"x": 1.0}, requires=("model.build",))
    assert rec.data["model"]["ttft_1"]["status"] == "skipped"
    rec.run("kernel", "boom", lambda: 1 / 0)
    boom = rec.data["kernel"]["boom"]
    assert boom["status"] == "error" and "ZeroDivisionError" in boom["error"]
    data = json.loads((tmp_path / "device_check.json").read_text())
    assert data["model"]["build"]["status"] == "skipped" and (tmp_path / "device_check.md").is_file()
