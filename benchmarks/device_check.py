#!/usr/bin/env python3
"""One-shot accelerator check: correctness on the device, kernel speed, and the 7B shape against NX-AI's figures.

    python3 benchmarks/device_check.py --out device_check              # one GPU: within 8 minutes on an H200
    python3 benchmarks/device_check.py --dry-run --out /tmp/dc         # CPU, tiny shapes, well under a minute

Everything is built on the device from random weights (no downloads, no network). Writes
`<out>/device_check.json` and `<out>/device_check.md` (a table against NX-AI's H100 figures and the H200 targets),
rewritten after every measurement, so a run stopped half-way keeps what it finished.

Sections, each item guarded (an error is recorded in the JSON, the rest still runs):

1. `correctness`: the three sequence forms of `mlstm_kernels` (parallel_stabilized, chunkwise, recurrent) and the
   step form against a float64 NumPy recurrence on small shapes (float32 at "highest" and at the default matmul
   precision, which is TF32 on recent NVIDIA GPUs, and bfloat16), outputs and final states; and the upstream
   golden fixtures' logits (every kernel form, upstream's recurrent backend, and token-by-token decoding).
2. `kernel`: our chunkwise forward at the TFLA shape (bfloat16, 8 x 8192 tokens, 16 heads, qk 128, v 256) for
   each chunk size.
3. `model`: the `xlstm-7b` preset, bfloat16 params and compute, random init compiled on the device: time to first
   token, prefill tokens/s, greedy decode ms/token after short and long contexts at batch 1 and 8, peak memory.
4. `kernel.tfla` (optional, last, with the time left): the TFLA Triton kernel (`mlstm_kernels` PyTorch package) on
   the same shapes as 2. in the same run, when `torch` (with CUDA) and `mlstm_kernels` import.

A global time budget (`--time-budget-s`) skips what is left once it is spent (recorded as skipped).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = 1
FIXTURE_MODELS = ("v1", "v1_scan", "v2", "v2_ffn")

# NX-AI's published xLSTM-7B figures: one H100, bfloat16, their PyTorch code (CUDA graphs, Triton kernels).
ANCHORS_H100 = {
    "decode_b1_tokens_per_s": 157.0,
    "ttft_ms": [8.7, 46.0, 179.0, 349.0],  # at 128 / 2k / 8k / 16k prompt tokens
    "prefill_tokens_per_s": 47_600.0,
    "memory_gb": 14.2,
    "tfla_forward_ms": 6.4,  # 65,536 tokens per call, 16 heads, qk 128, v 256, chunk 128
}
# Targets of issue 16 on one H200 (bfloat16, 7B shape).
TARGETS_H200 = {
    "decode_b1_tokens_per_s": 200.0,
    "decode_flat_ratio": 1.1,  # ms/token after the long context over after the short one
    "prefill_tokens_per_s": 50_000.0,
    "ttft_16k_ms": 350.0,
    "kernel_vs_tfla": 1.5,
}
# Dense bfloat16 peak and memory bandwidth of known devices (vendor figures), for the fractions in the JSON.
DEVICE_PEAKS = {
    "H200": {"bf16_tflops": 989.0, "bandwidth_gbs": 4800.0},
    "H100": {"bf16_tflops": 989.0, "bandwidth_gbs": 3350.0},
}

FULL = {
    "check_cases": [(37, False), (37, True), (160, False), (160, True)],  # (S, with initial state), float32
    "check_cases_other": [(37, False), (160, True)],  # the other dtype/precisions
    "check_shape": {"B": 2, "NH": 2, "DK": 16, "DV": 24},
    "check_chunk": 16,
    "fixtures": FIXTURE_MODELS,
    "fixture_kernels": ("parallel_stabilized", "chunkwise", "recurrent"),
    "kernel_shape": {"B": 8, "NH": 16, "S": 8192, "DK": 128, "DV": 256},
    "kernel_chunks": (64, 128, 256),
    "kernel_repeats": 5,
    "preset": "xlstm-7b",
    "model_overrides": {},
    "ttft_lens": (128, 2048, 8192, 16384),
    "prefill_shapes": ((1, 2048), (1, 16384), (32, 2048)),
    "decode_contexts": (128, 16384),
    "decode_batches": (1, 8),
    "new_tokens": 64,
    "repeats": 3,
    "segment": None,  # the config's prefill_segment_size
}
DRY = {  # every code path, as few compiled programs as that allows
    "check_cases": [(37, False), (37, True)],
    "check_cases_other": [(37, False)],
    "check_shape": {"B": 2, "NH": 2, "DK": 16, "DV": 24},
    "check_chunk": 16,
    "fixtures": ("v1",),
    "fixture_kernels": ("chunkwise",),
    "kernel_shape": {"B": 1, "NH": 2, "S": 256, "DK": 16, "DV": 32},
    "kernel_chunks": (16, 64),
    "kernel_repeats": 2,
    "preset": "tiny-mlstm-v1",
    "model_overrides": {"num_blocks": 1},  # the path is the same with 1 block; compiling is half the work
    "ttft_lens": (16, 128),
    "prefill_shapes": ((1, 128), (2, 16)),
    "decode_contexts": (16, 128),
    "decode_batches": (1, 2),
    "new_tokens": 4,
    "repeats": 2,
    "segment": 64,  # so the 128-token prompts take the segmented (lax.scan) prefill path
}


# ---------------------------------------------------------------------------------------------- bookkeeping
_T0 = time.monotonic()  # the process start, near enough: the budget and the log count from here


def log(msg: str) -> None:
    """Progress line with the time since the start, flushed at once."""
    print(f"[device_check {time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


class Budget:
    """Global wall-clock budget from the start of the process (imports included): once spent, the remaining items
    are recorded as skipped."""

    def __init__(self, seconds: float, start: Optional[float] = None):
        self.seconds = float(seconds)
        self.start = _T0 if start is None else start

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


class Recorder:
    """Holds the results, runs each item guarded, and rewrites the JSON and markdown files after each item.

    Results live in `data[section][item]`; each item dict has `status` ("ok", "error", "skipped"), `seconds`,
    and on error `error` and `traceback` (last lines).
    """

    def __init__(self, out_dir: Path, budget: Budget, meta: dict):
        self.out_dir = out_dir
        self.budget = budget
        self.data: dict = {"schema_version": SCHEMA_VERSION, "meta": meta, "correctness": {}, "kernel": {},
                           "model": {}, "table": [], "summary": {}}
        out_dir.mkdir(parents=True, exist_ok=True)

    def status(self, section: str, item: str) -> Optional[str]:
        return self.data[section].get(item, {}).get("status")

    def run(self, section: str, item: str, fn: Callable[[], dict], need_s: float = 0.0,
            requires: tuple = ()) -> Optional[dict]:
        """fn() -> result dict, stored under data[section][item]; never raises. Skipped when the budget has less
        than `need_s` seconds left or an item named in `requires` ("section.item") did not finish."""
        missing = [r for r in requires if self.status(*r.split(".", 1)) != "ok"]
        if missing:
            entry = {"status": "skipped", "reason": f"needs {', '.join(missing)}"}
        elif self.budget.left() <= need_s:
            entry = {"status": "skipped", "reason": f"time budget ({self.budget.seconds:.0f} s) spent"}
        else:
            log(f"{section}.{item} ...")
            t0, cpu0 = time.monotonic(), time.process_time()
            try:
                entry = {"status": "ok", **fn()}
            except Exception as err:  # noqa: BLE001  (recorded; the other items still run)
                entry = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000],
                         "traceback": traceback.format_exc()[-3000:]}
            entry["seconds"] = time.monotonic() - t0
            entry["cpu_s"] = time.process_time() - cpu0  # host CPU of this process (compiling, tracing)
            log(f"{section}.{item}: {entry['status']} ({entry['seconds']:.1f} s)"
                + (f": {entry['error'][:300]}" if entry["status"] == "error" else ""))
        if entry["status"] == "skipped":
            log(f"{section}.{item}: skipped ({entry['reason']})")
        self.data[section][item] = entry
        self.write()
        return entry if entry["status"] == "ok" else None

    def write(self) -> None:
        """Rewrite device_check.json and device_check.md from the current results. A failure to build the table
        is recorded in the JSON (`report_error`) instead of stopping the run."""
        self.data["meta"]["elapsed_s"] = self.budget.elapsed()
        try:
            self.data["table"] = table_rows(self.data)
            self.data["summary"] = summarise(self.data)
            text = markdown(self.data)
            self.data.pop("report_error", None)
        except Exception as err:  # noqa: BLE001
            self.data["report_error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"
            text = f"# device check\n\nthe table could not be built: {self.data['report_error']}\n"
        (self.out_dir / "device_check.json").write_text(json.dumps(_jsonable(self.data), indent=1))
        (self.out_dir / "device_check.md").write_text(text)


def _jsonable(obj):
    """Numpy scalars and arrays, tuples and paths as plain JSON values (NaN stays NaN so tests can see it)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------------- timing helpers
def time_call(fn: Callable[[], Any], warmup: int, repeats: int) -> dict:
    """Wall-clock seconds of fn() until its outputs are ready: `warmup` untimed calls, then median/min/max of
    `repeats` timed ones."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats,
            "all_s": times}


def compile_jit(fn: Callable, *args, static_argnums=()) -> tuple[Any, float, dict]:
    """jax.jit(fn) lowered and compiled for args: (compiled, seconds, XLA memory analysis in bytes)."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn, static_argnums=static_argnums).lower(*args).compile()
    seconds = time.perf_counter() - t0
    return compiled, seconds, xla_memory(compiled)


def xla_memory(compiled) -> dict:
    """Bytes of a compiled program's arguments, outputs and temporaries (what XLA reserves to run it)."""
    try:
        m = compiled.memory_analysis()
        arg, out, temp = m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes
        alias = getattr(m, "alias_size_in_bytes", 0)
        return {"argument_bytes": int(arg), "output_bytes": int(out), "temp_bytes": int(temp),
                "alias_bytes": int(alias), "total_bytes": int(arg + out + temp - alias)}
    except Exception as err:  # noqa: BLE001  (not every backend reports it)
        return {"unavailable": f"{type(err).__name__}: {err}"[:300]}


def device_memory() -> dict:
    """bytes_in_use / peak_bytes_in_use / bytes_limit of the first device, or {} where the backend has none."""
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001
        stats = {}
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in stats}


def free_memory() -> None:
    """Drop unreferenced device buffers and compiled programs between sections."""
    import jax

    gc.collect()
    try:
        jax.clear_caches()
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------------------------------------- imports
def import_package() -> str:
    """Import modeling_xlstm_flax, installed or else from this source tree, and say which.

    The source folder alone lacks the subpackages that setup.cfg maps in (configuration/, conversion/,
    model_cards/ at the repo root), so the source-tree import puts the repo root on the package's __path__ too."""
    try:
        import modeling_xlstm_flax

        return f"installed: {modeling_xlstm_flax.__file__}"
    except ModuleNotFoundError as err:
        if err.name not in ("modeling_xlstm_flax", "modeling_xlstm_flax.configuration_xlstm_flax"):
            raise
    for name in [n for n in sys.modules if n.split(".")[0] == "modeling_xlstm_flax"]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        "modeling_xlstm_flax", REPO / "modeling_xlstm_flax" / "__init__.py",
        submodule_search_locations=[str(REPO / "modeling_xlstm_flax"), str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["modeling_xlstm_flax"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["modeling_xlstm_flax"]
        raise
    return f"source tree {REPO / 'modeling_xlstm_flax'} (not installed)"


def load_kernels():
    """(mlstm_kernels module, how the package was imported). Falls back to loading the kernels file on its own (it
    needs only jax) when the package does not import, e.g. under a transformers version it does not support."""
    try:
        how = import_package()
        from modeling_xlstm_flax import mlstm_kernels

        return mlstm_kernels, how
    except Exception as err:  # noqa: BLE001
        path = REPO / "modeling_xlstm_flax" / "mlstm_kernels.py"
        spec = importlib.util.spec_from_file_location("_device_check_mlstm_kernels", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module, f"{path} loaded alone (package import failed: {type(err).__name__}: {err})"[:500]


def versions() -> dict:
    """Versions of Python and the libraries involved (None where not installed)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "numpy", "transformers", "huggingface_hub", "tokenizers", "torch",
                 "triton", "mlstm_kernels", "jax-cuda12-plugin", "jax-cuda13-plugin"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    """Backend, device kinds and memory limit of the devices JAX sees."""
    import jax

    devices = jax.devices()
    return {"backend": jax.default_backend(), "count": len(devices), "kind": devices[0].device_kind,
            "devices": [str(d) for d in devices], "memory": device_memory(), "host": platform.node(),
            "cpu_count": os.cpu_count()}


# ---------------------------------------------------------------------------------------------- float64 reference
def _load_reference():
    """`reference_float64` of `modeling_xlstm_flax/mlstm_kernels.py` (NumPy and jax only: loaded on its own if the
    package does not import)."""
    try:
        from modeling_xlstm_flax.mlstm_kernels import reference_float64
    except Exception:  # noqa: BLE001
        path = REPO / "modeling_xlstm_flax" / "mlstm_kernels.py"
        spec = importlib.util.spec_from_file_location("_device_check_mlstm_kernels", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        reference_float64 = module.reference_float64
    return reference_float64


def reference_float64(*args, **kwargs):
    """The float64 NumPy mLSTM recurrence (see `modeling_xlstm_flax.mlstm_kernels.reference_float64`)."""
    return _load_reference()(*args, **kwargs)


def random_cell_inputs(seed: int, B: int, NH: int, S: int, DK: int, DV: int, gate_scale: float = 5.0):
    """float32 q, k (B, NH, S, DK), v (B, NH, S, DV), igate, fgate (B, NH, S) uniform in +-gate_scale."""
    rng = np.random.RandomState(seed)
    q = rng.randn(B, NH, S, DK).astype(np.float32)
    k = rng.randn(B, NH, S, DK).astype(np.float32)
    v = rng.randn(B, NH, S, DV).astype(np.float32)
    igate, fgate = (rng.uniform(-gate_scale, gate_scale, (2, B, NH, S))).astype(np.float32)
    return q, k, v, igate, fgate


def _rel(a, b) -> float:
    """max |a - b| over max(1, max |b|), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def state_errors(state, ref_state) -> dict:
    """Relative errors of a kernel state (c, n, m) against the reference's (C, n, m): compared as the memory they
    represent, C * exp(m) and n * exp(m), since the stabiliser m may differ between forms."""
    C_ref, n_ref, m_ref = ref_state
    scale = np.exp(np.asarray(state.m, np.float64) - m_ref)
    return {"c_rel_err": _rel(np.asarray(state.c, np.float64) * scale[..., None, None], C_ref),
            "n_rel_err": _rel(np.asarray(state.n, np.float64) * scale[..., None], n_ref)}


# ---------------------------------------------------------------------------------------------- 1. correctness
# (h tolerance, state tolerance) relative to max(1, max |reference|), per (dtype, matmul precision)
FORM_TOLERANCES = {
    ("float32", "highest"): (5e-5, 1e-4),  # CPU: h <= 8.3e-6 (recurrent form from a state), C <= 6e-7
    ("float32", "default"): (2e-2, 2e-2),  # TF32 matmuls on recent NVIDIA GPUs: about 1e-3 relative
    ("bfloat16", "default"): (3e-2, 3e-2),  # CPU: h <= 5.6e-3, C <= 2.2e-3
}


_JITTED: dict = {}


def jitted(K, name: str):
    """jax.jit of a kernels-module function, made once so cases of the same shapes share compiled programs."""
    import jax

    if name not in _JITTED:
        _JITTED[name] = jax.jit(getattr(K, name), static_argnames=("chunk_size",) if name == "chunkwise" else ())
    return _JITTED[name]


def run_forms(K, inputs, state, chunk: int) -> dict:
    """Every form of the kernels module on the same inputs: {form: (h (B, NH, S, DV), final state or None)}.

    inputs: q, k, v (any float dtype), igate, fgate float32; state: an MLSTMState or None."""
    out = {}
    if state is None:
        out["parallel_stabilized"] = (jitted(K, "parallel_stabilized")(*inputs), None)
    out["chunkwise"] = jitted(K, "chunkwise")(*inputs, state=state, chunk_size=chunk)
    out["recurrent"] = jitted(K, "recurrent_sequence")(*inputs, state=state)
    host = [np.asarray(x) for x in inputs]  # per-token slices taken on the host: no program per slice
    B, NH, S, DK = host[0].shape
    step = jitted(K, "recurrent_step")
    carry = state if state is not None else K.zero_state(B, NH, DK, host[2].shape[3])
    hs = []
    for t in range(S):
        h_t, carry = step(carry, *(x[:, :, t] for x in host))
        hs.append(np.asarray(h_t))
    out["step"] = (np.stack(hs, axis=2), carry)
    return out


def check_kernel_forms(K, dtype_name: str, precision: str, cases, shape: dict, chunk: int) -> dict:
    """The forms against `reference_float64` for each (S, with_state) case; q, k, v cast to `dtype_name` (the
    reference sees the same rounded values), gates float32 as in the model. Returns per-case errors and pass."""
    import jax
    import jax.numpy as jnp

    tol_h, tol_state = FORM_TOLERANCES[(dtype_name, precision)]
    dtype = jnp.dtype(dtype_name)
    results, passed = [], True
    for S, with_state in cases:
        q, k, v, i, f = random_cell_inputs(1000 + S, S=S, **shape)
        if with_state:
            f = f + 4.0  # forget gates mostly open, so the initial state reaches far into the sequence
        q, k, v = (x.astype(dtype).astype(np.float32) for x in (q, k, v))  # the reference sees the rounding
        state = None
        if with_state:
            _, prefix = reference_float64(*random_cell_inputs(7, S=20, **shape))
            state = K.MLSTMState(*(jnp.asarray(x, jnp.float32) for x in prefix))
        ref_h, ref_state = reference_float64(q, k, v, i, f, state=state)
        device_inputs = tuple(jnp.asarray(x.astype(dtype)) for x in (q, k, v)) + (jnp.asarray(i), jnp.asarray(f))
        with jax.default_matmul_precision(None if precision == "default" else precision):
            outs = run_forms(K, device_inputs, state, chunk)
        for form, (h, st) in outs.items():
            entry = {"S": S, "with_state": with_state, "form": form, "h_rel_err": _rel(h, ref_h),
                     "h_finite": bool(np.all(np.isfinite(np.asarray(h, np.float32)))),
                     "tol_h": tol_h, "tol_state": tol_state}
            if st is not None:
                entry.update(state_errors(st, ref_state))
            ok = entry["h_finite"] and entry["h_rel_err"] <= tol_h
            ok = ok and all(entry[key] <= tol_state for key in ("c_rel_err", "n_rel_err") if key in entry)
            entry["passed"] = bool(ok)
            passed = passed and ok
            results.append(entry)
    worst = {key: max(e.get(key, 0.0) for e in results) for key in ("h_rel_err", "c_rel_err", "n_rel_err")}
    return {"dtype": dtype_name, "matmul_precision": precision, "chunk_size": chunk, "shape": shape,
            "cases": results, "worst": worst, "passed": passed}


def find_fixtures(explicit: Optional[str]) -> Path:
    """The upstream fixture folder: --fixtures, else tests/fixtures/xlstm_jax, shared/fixtures/xlstm_jax in the
    repo (where a device copy of the working tree puts shared/), or ../shared/fixtures/xlstm_jax beside it."""
    candidates = [Path(explicit)] if explicit else [
        REPO / "tests" / "fixtures" / "xlstm_jax", REPO / "shared" / "fixtures" / "xlstm_jax",
        REPO.parent / "shared" / "fixtures" / "xlstm_jax"]
    for path in candidates:
        if (path / "v1" / "config.json").is_file():
            return path
    raise FileNotFoundError(f"upstream fixtures not found in {[str(c) for c in candidates]}")


def load_fixture_model(folder: Path, **overrides):
    """(model, params on the device, inputs (2, 32) int32, golden logits (2, 32, V)) of one upstream fixture,
    params mapped to our layout with the package's own converters (as tests/conftest.py does)."""
    import jax
    from safetensors.numpy import load_file

    from modeling_xlstm_flax import FlaxXLSTMForCausalLM
    from modeling_xlstm_flax.configuration_xlstm_flax import from_upstream_config
    from modeling_xlstm_flax.loading import upstream_to_flax

    config = from_upstream_config(json.loads((folder / "config.json").read_text()), **overrides)
    params = upstream_to_flax(load_file(str(folder / "params.safetensors")), config)
    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    return model, jax.device_put(params), np.load(folder / "inputs.npy"), np.load(folder / "logits.npy")


FIXTURE_TOL = 1e-4  # float32 at "highest" matmul precision, as tests/test_upstream_parity.py
FIXTURE_BF16_TOL = 0.5  # max |logit difference| of bfloat16 compute against float32 golden logits (scale ~ 5)


def forward_logits(model, params, ids):
    """Logits (B, S, V) float32 of the model's forward pass, jitted."""
    import jax

    return np.asarray(jax.jit(lambda p, x: model(x, params=p).logits)(params, ids))


def step_logits(model, params, ids):
    """Logits (B, S, V) of feeding ids one token at a time through the recurrent cache (the decode path)."""
    import jax

    step = jax.jit(lambda p, x, c: (lambda o: (o.logits, o.past_key_values))(model(x, params=p, past_key_values=c)))
    cache = model.init_cache(ids.shape[0])
    out = []
    for t in range(ids.shape[1]):
        logits, cache = step(params, ids[:, t:t + 1], cache)
        out.append(np.asarray(logits)[:, 0])
    return np.stack(out, axis=1)


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def check_fixtures(folder: Path, names, kernels) -> dict:
    """Our logits (2, 32, V) against upstream's golden ones: each kernel form in `kernels`, upstream's recurrent
    backend, token by token through the cache (where the fixture has step logits), all float32 at "highest"
    matmul precision (tolerance 1e-4); plus the chunkwise form at the default precision (informative) and in
    bfloat16 compute (loose tolerance)."""
    import jax

    results, passed = {}, True
    for name in names:
        sub = folder / name
        entry = {}
        with jax.default_matmul_precision("highest"):
            for kernel in kernels:
                model, params, ids, golden = load_fixture_model(sub, sequence_kernel=kernel, chunk_size=8)
                logits = forward_logits(model, params, ids)
                entry[f"{kernel}_max_abs_diff"] = _max_abs(logits, golden)
                if kernel == "recurrent" and (sub / "recurrent_logits.npy").is_file():
                    entry["upstream_recurrent_max_abs_diff"] = _max_abs(logits, np.load(sub / "recurrent_logits.npy"))
            if (sub / "step_logits.npy").is_file():
                model, params, ids, _ = load_fixture_model(sub, chunk_size=8)
                entry["step_max_abs_diff"] = _max_abs(step_logits(model, params, ids),
                                                      np.load(sub / "step_logits.npy"))
        strict = [v for k, v in entry.items() if k.endswith("_max_abs_diff")]
        if name == names[0] and jax.default_backend() != "cpu":  # informative: TF32 on recent NVIDIA GPUs
            model, params, ids, golden = load_fixture_model(sub, chunk_size=8)
            entry["chunkwise_default_precision_max_abs_diff_info"] = _max_abs(forward_logits(model, params, ids),
                                                                              golden)
        model, params, ids, golden = load_fixture_model(sub, chunk_size=8, compute_dtype="bfloat16")
        entry["chunkwise_bfloat16_max_abs_diff"] = _max_abs(forward_logits(model, params, ids), golden)
        entry["tol"] = FIXTURE_TOL
        entry["tol_bfloat16"] = FIXTURE_BF16_TOL
        entry["passed"] = bool(all(d <= FIXTURE_TOL for d in strict)
                               and entry["chunkwise_bfloat16_max_abs_diff"] <= FIXTURE_BF16_TOL)
        passed = passed and entry["passed"]
        results[name] = entry
    return {"folder": str(folder), "models": results, "passed": passed}


# ---------------------------------------------------------------------------------------------- 2. kernel speed
_CELL_INPUTS: dict = {}


def device_cell_inputs(B: int, NH: int, S: int, DK: int, DV: int, seed: int = 0):
    """Random bfloat16 q, k (B, NH, S, DK), v (B, NH, S, DV) and float32 gate pre-activations (B, NH, S) made on
    the device by one jitted program (input gate around -3, forget gate around +4, like a trained model's);
    kept for the next call with the same shape."""
    import jax
    import jax.numpy as jnp

    def make(key):
        kq, kk, kv, ki, kf = jax.random.split(key, 5)
        return (jax.random.normal(kq, (B, NH, S, DK), jnp.bfloat16),
                jax.random.normal(kk, (B, NH, S, DK), jnp.bfloat16),
                jax.random.normal(kv, (B, NH, S, DV), jnp.bfloat16),
                jax.random.normal(ki, (B, NH, S), jnp.float32) - 3.0,
                jax.random.normal(kf, (B, NH, S), jnp.float32) + 4.0)

    key = (B, NH, S, DK, DV, seed)
    if key not in _CELL_INPUTS:
        _CELL_INPUTS.clear()
        _CELL_INPUTS[key] = jax.block_until_ready(jax.jit(make)(jax.random.PRNGKey(seed)))
    return _CELL_INPUTS[key]


def chunkwise_flops(B: int, NH: int, S: int, DK: int, DV: int, L: int) -> float:
    """Matmul FLOPs of one chunkwise forward: intra-chunk q.k^T and (qk)v (causal half counted fully, as the
    kernel computes it), the chunk states k^T v, and the inter-chunk readout q C."""
    intra = 2 * S * L * (DK + DV)
    states = 2 * S * DK * DV
    readout = 2 * S * DK * DV
    return float(B * NH * (intra + states + readout))


def time_chunkwise(K, shape: dict, chunk: int, repeats: int) -> dict:
    """Our chunkwise forward (h and final state) at one chunk size: compile seconds, ms per call, tokens/s."""
    B, NH, S, DK, DV = (shape[x] for x in ("B", "NH", "S", "DK", "DV"))
    inputs = device_cell_inputs(B, NH, S, DK, DV)
    compiled, compile_s, mem = compile_jit(lambda *a: K.chunkwise(*a, chunk_size=chunk), *inputs)
    stats = time_call(lambda: compiled(*inputs), warmup=2, repeats=repeats)
    h = compiled(*inputs)[0]
    ms = 1e3 * stats["median_s"]
    return {"chunk_size": chunk, "ms": ms, "tokens_per_s": B * S / stats["median_s"],
            "tflops": chunkwise_flops(B, NH, S, DK, DV, chunk) / stats["median_s"] / 1e12,
            "compile_s": compile_s, "timing": stats, "xla_memory": mem,
            "output_finite": bool(np.isfinite(np.asarray(h.astype("float32"))).all())}


def _tfla_kernel():
    """The TFLA chunkwise kernel (`mlstm_kernels` PyTorch package, `triton_xl_chunk`)."""
    try:
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk

        return mlstm_chunkwise__xl_chunk, "mlstm_kernels.torch.chunkwise.triton_xl_chunk.mlstm_chunkwise__xl_chunk"
    except ImportError:
        from mlstm_kernels.torch import get_mlstm_kernel

        return get_mlstm_kernel("chunkwise--triton_xl_chunk"), "get_mlstm_kernel('chunkwise--triton_xl_chunk')"


def tfla_unavailable() -> Optional[str]:
    """Why the TFLA comparison cannot run here (None when it can): torch, CUDA and mlstm_kernels are needed."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("mlstm_kernels") is None:
        return "torch or mlstm_kernels not installed"
    try:
        import torch

        if not torch.cuda.is_available():
            return f"torch {torch.__version__} sees no CUDA device"
    except Exception as err:  # noqa: BLE001
        return f"torch does not import: {type(err).__name__}: {err}"[:300]
    return None


def time_torch(fn: Callable[[], Any], warmup: int, repeats: int) -> dict:
    """As time_call, for a PyTorch CUDA callable (synchronising the device around each call)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats,
            "all_s": times}


def tfla_section(K, shape: dict, chunks, repeats: int) -> dict:
    """TFLA's Triton chunkwise forward on the same shapes (bfloat16 q, k, v; float32 gates) for each chunk size,
    and its output against ours on a slice (1 x 2 heads x 1024 tokens) of the same inputs."""
    import jax.numpy as jnp
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    kernel, name = _tfla_kernel()
    B, NH, S, DK, DV = (shape[x] for x in ("B", "NH", "S", "DK", "DV"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    randn = lambda *dims, dtype=torch.bfloat16: torch.randn(*dims, device="cuda", dtype=dtype,  # noqa: E731
                                                           generator=gen)
    # q, k (B, NH, S, DK), v (B, NH, S, DV) bfloat16; input / forget gate pre-activations (B, NH, S) float32
    inputs = [randn(B, NH, S, DK), randn(B, NH, S, DK), randn(B, NH, S, DV),
              randn(B, NH, S, dtype=torch.float32) - 3.0, randn(B, NH, S, dtype=torch.float32) + 4.0]
    out = {"kernel": name, "torch_version": torch.__version__, "device": torch.cuda.get_device_name(0),
           "chunks": {}}
    with torch.inference_mode():
        for chunk in chunks:
            try:
                run = lambda: kernel(*inputs, chunk_size=chunk, return_last_states=True)  # noqa: E731
                stats = time_torch(run, warmup=2, repeats=repeats)
                out["chunks"][str(chunk)] = {"status": "ok", "ms": 1e3 * stats["median_s"],
                                             "tokens_per_s": B * S / stats["median_s"], "timing": stats}
            except Exception as err:  # noqa: BLE001
                out["chunks"][str(chunk)] = {"status": "error", "error": f"{type(err).__name__}: {err}"[:500]}
        try:  # same function? ours and TFLA on a slice of the same inputs
            sl = (slice(0, 1), slice(0, 2), slice(0, 1024))
            parts = [x[sl].contiguous() for x in inputs]
            h_tfla = kernel(*parts, chunk_size=128, return_last_states=False)
            h_tfla = h_tfla[0] if isinstance(h_tfla, tuple) else h_tfla
            as_jax = [jnp.asarray(p.float().cpu().numpy()).astype(jnp.bfloat16 if p.dtype == torch.bfloat16
                                                                   else jnp.float32) for p in parts]
            h_ours = np.asarray(K.chunkwise(*as_jax, chunk_size=128)[0].astype(jnp.float32))
            out["slice_rel_diff_vs_ours"] = _rel(h_ours, h_tfla.float().cpu().numpy())
        except Exception as err:  # noqa: BLE001
            out["slice_rel_diff_vs_ours"] = None
            out["slice_error"] = f"{type(err).__name__}: {err}"[:500]
    inputs.clear()
    torch.cuda.empty_cache()
    if not any(c["status"] == "ok" for c in out["chunks"].values()):
        raise RuntimeError(f"TFLA failed at every chunk size: {out['chunks']}")
    return out


# ---------------------------------------------------------------------------------------------- 3. model
class ModelBench:
    """The 7B-shaped model on the device and its compiled prefill / decode programs.

    prefill: (params, ids (B, S) int32) -> (next token (B,), finite flag, cache) via
    `model(ids, past_key_values=init_cache(B), logits_to_keep=1)`: what `generate` runs for a prompt.
    decode: (params, cache, token (B,)) -> tokens (B, N): N greedy steps of `model(token, past_key_values=cache)`
    in a `lax.fori_loop`.
    """

    def __init__(self, preset: str, overrides: dict, param_dtype: str, seed: int, new_tokens: int,
                 warmup: int, repeats: int):
        self.preset, self.overrides, self.param_dtype = preset, overrides, param_dtype
        self.seed, self.new_tokens, self.warmup, self.repeats = seed, new_tokens, warmup, repeats
        self.states: dict = {}  # prompt length -> (next token (1,), cache) at batch 1
        self.decoders: dict = {}  # batch -> compiled decode

    def build(self) -> dict:
        """Config from the preset, random params initialised by a jitted init whose outputs are `param_dtype`
        (no float32 copy of the model on the host)."""
        import jax
        import jax.numpy as jnp

        from modeling_xlstm_flax import FlaxXLSTMForCausalLM, load_preset

        self.config = load_preset(self.preset, **self.overrides)
        self.model = FlaxXLSTMForCausalLM(self.config, _do_init=False)
        dtype = jnp.dtype(self.param_dtype)

        def init(rng):
            params = self.model.init_weights(rng, (1, 1))
            return jax.tree_util.tree_map(lambda x: x.astype(dtype), params)

        t0 = time.perf_counter()
        self.params = jax.block_until_ready(jax.jit(init)(jax.random.PRNGKey(self.seed)))
        init_s = time.perf_counter() - t0
        leaves = jax.tree_util.tree_leaves(self.params)
        flat = jax.tree_util.tree_leaves_with_path(self.params)
        embed = sum(x.size for p, x in flat if "embeddings" in jax.tree_util.keystr(p))
        self.weights_bytes = int(sum(x.nbytes for x in leaves))
        head = sum(x.size for p, x in flat if "lm_head" in jax.tree_util.keystr(p))
        self.block_params = int(sum(x.size for x in leaves) - embed - head)  # matmul params per prompt token
        self.head_params = int(head)  # the LM head runs on the last position only
        cache_bytes = int(sum(x.nbytes for x in jax.tree_util.tree_leaves(self.model.init_cache(1))))
        self.decode_bytes = self.weights_bytes - embed * dtype.itemsize + 2 * cache_bytes
        cfg = self.config
        return {"preset": self.preset, "overrides": self.overrides, "param_dtype": self.param_dtype,
                "compute_dtype": cfg.compute_dtype, "params": int(sum(x.size for x in leaves)),
                "embedding_params": int(embed), "weights_bytes": self.weights_bytes,
                "cache_bytes_batch1": cache_bytes, "decode_bytes_per_step_batch1": self.decode_bytes,
                "init_s": init_s, "chunk_size": cfg.chunk_size, "prefill_segment_size": cfg.prefill_segment_size,
                "scan_blocks": cfg.scan_blocks, "num_blocks": cfg.num_blocks, "embedding_dim": cfg.embedding_dim,
                "num_heads": cfg.num_heads, "qk_head_dim": cfg.qk_head_dim, "v_head_dim": cfg.v_head_dim,
                "vocab_size": cfg.vocab_size, "device_memory_after_init": device_memory()}

    def _ids(self, batch: int, length: int, salt: int = 0):
        """Random prompt ids (batch, length) int32 on the device."""
        import jax

        rng = np.random.RandomState(1000 * batch + length + salt)
        return jax.device_put(rng.randint(3, self.config.vocab_size, (batch, length)).astype(np.int32))

    def _prefill(self, params, ids):
        import jax.numpy as jnp

        out = self.model(ids, params=params, past_key_values=self.model.init_cache(ids.shape[0]), logits_to_keep=1)
        logits = out.logits[:, -1]
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.all(jnp.isfinite(logits)), out.past_key_values

    def prefill(self, batch: int, length: int) -> dict:
        """Compile and time one prefill shape; TTFT = prompt on the device -> next token id on the host."""
        ids = self._ids(batch, length)
        compiled, compile_s, mem = compile_jit(self._prefill, self.params, ids)
        token, finite, cache = compiled(self.params, ids)
        if batch == 1:
            self.states[length] = (token, cache)
        stats = time_call(lambda: np.asarray(compiled(self.params, ids)[0]), 0, self.repeats)  # warm already
        tokens_per_s = batch * length / stats["median_s"]
        return {"batch": batch, "length": length, "ttft_ms": 1e3 * stats["median_s"],
                "tokens_per_s": tokens_per_s,
                "matmul_tflops": (2 * self.block_params * tokens_per_s + 2 * self.head_params * batch
                                  / stats["median_s"]) / 1e12,
                "logits_finite": bool(finite), "compile_s": compile_s, "timing": stats, "xla_memory": mem,
                "device_memory": device_memory()}

    def _decode(self, params, cache, token):
        import jax
        import jax.numpy as jnp

        def body(i, carry):
            cache, token, out = carry
            step = self.model(token[:, None], params=params, past_key_values=cache)
            token = jnp.argmax(step.logits[:, -1], axis=-1).astype(jnp.int32)
            return step.past_key_values, token, out.at[:, i].set(token)

        out = jnp.zeros((token.shape[0], self.new_tokens), jnp.int32)
        return jax.lax.fori_loop(0, self.new_tokens, body, (cache, token, out))[2]

    def state_for(self, batch: int, context: int):
        """(cache, token) after `context` prompt tokens, batch rows copied from the batch-1 prefill state (one
        compiled prefill serves every batch size; decode time does not depend on the state's values)."""
        import jax
        import jax.numpy as jnp

        if context not in self.states:
            self.prefill(1, context)
        token, cache = self.states[context]
        tile = lambda x: jnp.repeat(x, batch, axis=0)  # noqa: E731  (batch is axis 0 in both cache layouts)
        return jax.tree_util.tree_map(tile, cache), tile(token)

    def decode(self, batch: int, context: int) -> dict:
        """Greedy decode of new_tokens after `context` tokens: ms per step, tokens/s per sequence and in all."""
        cache, token = self.state_for(batch, context)
        compile_s, mem = None, None
        if batch not in self.decoders:
            self.decoders[batch], compile_s, mem = compile_jit(self._decode, self.params, cache, token)
        fn = self.decoders[batch]
        stats = time_call(lambda: fn(self.params, cache, token), self.warmup, self.repeats)
        tokens = np.asarray(fn(self.params, cache, token))
        per_token = stats["median_s"] / self.new_tokens
        return {"batch": batch, "context": context, "new_tokens": self.new_tokens, "ms_per_token": 1e3 * per_token,
                "tokens_per_s_per_sequence": 1.0 / per_token, "tokens_per_s_all": batch / per_token,
                "achieved_gbs": (self.decode_bytes / per_token / 1e9) if batch == 1 else None,
                "tokens_in_vocab": bool(((tokens >= 0) & (tokens < self.config.vocab_size)).all()),
                "compile_s": compile_s, "xla_memory": mem, "timing": stats, "device_memory": device_memory()}


def model_section(rec: Recorder, args, shapes: dict) -> None:
    """Build the model, then TTFT (batch-1 prefill) at each length, decode at each batch and context, the other
    prefill shapes and the peak memory; ordered so the most telling numbers come first."""
    overrides = {"compute_dtype": "bfloat16", **shapes["model_overrides"]}
    if args.model_chunk_size:
        overrides["chunk_size"] = args.model_chunk_size
    segment = args.prefill_segment_size if args.prefill_segment_size is not None else shapes["segment"]
    if segment is not None:
        overrides["prefill_segment_size"] = None if segment == 0 else segment
    if args.scan_blocks:
        overrides["scan_blocks"] = True
    bench = ModelBench(args.preset or shapes["preset"], overrides, "bfloat16", args.seed,
                       args.new_tokens or shapes["new_tokens"], warmup=1, repeats=args.repeats or shapes["repeats"])
    build = ("model.build",)
    rec.run("model", "build", bench.build, need_s=60)
    ttft, contexts = shapes["ttft_lens"], shapes["decode_contexts"]
    short = contexts[0]
    plan = []
    for length in ttft:
        plan.append((f"ttft_{length}", lambda n=length: bench.prefill(1, n)))
        if length == short:
            plan.append((f"decode_b1_ctx{short}", lambda: bench.decode(1, short)))
    for context in contexts[1:]:
        plan.append((f"decode_b1_ctx{context}", lambda c=context: bench.decode(1, c)))
    for batch in shapes["decode_batches"][1:]:
        for context in contexts:
            plan.append((f"decode_b{batch}_ctx{context}", lambda b=batch, c=context: bench.decode(b, c)))
    for batch, length in shapes["prefill_shapes"]:
        if batch == 1 and length in ttft:
            continue  # measured as a TTFT above
        plan.append((f"prefill_{batch}x{length}", lambda b=batch, n=length: bench.prefill(b, n)))
    for name, fn in plan:
        rec.run("model", name, fn, need_s=30, requires=build)  # a 7B program compiles in tens of seconds
    rec.data["model"]["memory"] = {"status": "ok", "device_memory_end": device_memory(), "seconds": 0.0}
    rec.write()


# ---------------------------------------------------------------------------------------------- table
def device_peaks(kind: str) -> Optional[dict]:
    """Vendor bf16 peak and bandwidth for a known device kind ("NVIDIA H200" -> H200's), else None."""
    return next((v for k, v in DEVICE_PEAKS.items() if k in kind.upper()), None)


def _judge(value: Optional[float], op: str, target: Optional[float]) -> str:
    """'met' / 'missed' against a target, '-' without one, 'n/a' without a value."""
    if target is None:
        return "-"
    if value is None or not math.isfinite(value):
        return "n/a"
    return "met" if (value >= target if op == ">=" else value <= target) else "missed"


def _get(data: dict, section: str, item: str, key: str):
    entry = data.get(section, {}).get(item, {})
    return entry.get(key) if entry.get("status") == "ok" else None


def table_rows(data: dict) -> list:
    """The rows of the comparison table: metric, ours, H100 anchor, H200 target, met."""
    rows = []

    def add(metric, value, anchor=None, target=None, op=">=", unit=""):
        rows.append({"metric": metric, "value": value, "anchor_h100": anchor, "target_h200": target, "op": op,
                     "unit": unit, "met": _judge(value if isinstance(value, (int, float)) else None, op, target)})

    corr = data.get("correctness", {})
    for item, label in (("kernel_forms_float32_highest", "kernel forms vs float64, float32 (highest)"),
                        ("kernel_forms_float32_default", "kernel forms vs float64, float32 (default precision)"),
                        ("kernel_forms_bfloat16", "kernel forms vs float64, bfloat16"),
                        ("fixtures", "upstream golden logits")):
        entry = corr.get(item, {})
        value = ("pass" if entry.get("passed") else "FAIL") if entry.get("status") == "ok" else entry.get("status")
        rows.append({"metric": f"correctness: {label}", "value": value, "anchor_h100": None,
                     "target_h200": "pass", "op": "==", "unit": "",
                     "met": "-" if value is None else ("met" if value == "pass" else "missed")})
    kernel = data.get("kernel", {})
    ours = {k: v for k, v in kernel.items() if k.startswith("chunkwise_L") and v.get("status") == "ok"}
    ks = data.get("meta", {}).get("shapes", {}).get("kernel_shape", {})
    where = f"{ks.get('B')}x{ks.get('S')} tokens, {ks.get('NH')} heads, qk {ks.get('DK')}, v {ks.get('DV')}"
    for key, entry in ours.items():
        add(f"our chunkwise forward ({where}), L={entry['chunk_size']}, ms (anchor: TFLA)", entry["ms"],
            ANCHORS_H100["tfla_forward_ms"], unit="ms")
    tfla = kernel.get("tfla", {})
    tfla_ms = [c["ms"] for c in tfla.get("chunks", {}).values() if c.get("status") == "ok"] \
        if tfla.get("status") == "ok" else []
    best_ours = min((e["ms"] for e in ours.values()), default=None)
    if tfla_ms:
        add("TFLA forward (same run, best chunk), ms", min(tfla_ms), ANCHORS_H100["tfla_forward_ms"], unit="ms")
        ratio = best_ours / min(tfla_ms) if best_ours else None
        add("our chunkwise / TFLA (same run, best of each)", ratio, None, TARGETS_H200["kernel_vs_tfla"], "<=")
    elif best_ours is not None:
        add("our chunkwise / TFLA H100 anchor (no TFLA in this run)", best_ours / ANCHORS_H100["tfla_forward_ms"],
            None, TARGETS_H200["kernel_vs_tfla"], "<=")
    model = data.get("model", {})
    ttft = sorted((e for k, e in model.items() if k.startswith("ttft_") and e.get("status") == "ok"),
                  key=lambda e: e["length"])
    prefills = [e for k, e in model.items() if (k.startswith("prefill_") or k.startswith("ttft_"))
                and e.get("status") == "ok"]
    meta_shapes = data.get("meta", {}).get("shapes", {})
    for batch, length in meta_shapes.get("prefill_shapes", []):
        entry = next((e for e in prefills if e["batch"] == batch and e["length"] == length), None)
        add(f"prefill {batch}x{length}, tokens/s", entry["tokens_per_s"] if entry else None,
            ANCHORS_H100["prefill_tokens_per_s"], TARGETS_H200["prefill_tokens_per_s"], ">=", "tok/s")
    lens = meta_shapes.get("ttft_lens", [])
    for pos, length in enumerate(lens):
        entry = next((e for e in ttft if e["length"] == length), None)
        anchor = ANCHORS_H100["ttft_ms"][pos] if pos < len(ANCHORS_H100["ttft_ms"]) else None
        target = TARGETS_H200["ttft_16k_ms"] if pos == len(lens) - 1 else None
        add(f"time to first token, {length} tokens, ms", entry["ttft_ms"] if entry else None, anchor, target, "<=",
            "ms")
    contexts = meta_shapes.get("decode_contexts", [])
    for batch in meta_shapes.get("decode_batches", []):
        for context in contexts:
            entry = model.get(f"decode_b{batch}_ctx{context}", {})
            ok = entry.get("status") == "ok"
            if batch == 1:
                add(f"decode batch 1 after {context} tokens, tokens/s",
                    entry["tokens_per_s_per_sequence"] if ok else None, ANCHORS_H100["decode_b1_tokens_per_s"],
                    TARGETS_H200["decode_b1_tokens_per_s"], ">=", "tok/s")
            else:
                add(f"decode batch {batch} after {context} tokens, tokens/s (all sequences)",
                    entry["tokens_per_s_all"] if ok else None, unit="tok/s")
        if len(contexts) > 1:
            first = _get(data, "model", f"decode_b{batch}_ctx{contexts[0]}", "ms_per_token")
            last = _get(data, "model", f"decode_b{batch}_ctx{contexts[-1]}", "ms_per_token")
            add(f"decode batch {batch}: ms/token after {contexts[-1]} / after {contexts[0]}",
                last / first if first and last else None, None,
                TARGETS_H200["decode_flat_ratio"] if batch == 1 else None, "<=")
    peak = device_peaks(data.get("meta", {}).get("device", {}).get("kind", ""))
    best = max(prefills, key=lambda e: e["matmul_tflops"], default=None)
    if best is not None:
        add(f"prefill matmul TFLOP/s (best: {best['batch']}x{best['length']})"
            + (f"; device bf16 peak {peak['bf16_tflops']:.0f}" if peak else ""), best["matmul_tflops"],
            unit="TFLOP/s")
    gbs = _get(data, "model", f"decode_b1_ctx{contexts[0]}", "achieved_gbs") if contexts else None
    if gbs is not None:
        add(f"decode batch 1 after {contexts[0]} tokens, GB/s read (weights + state twice)"
            + (f"; device {peak['bandwidth_gbs']:.0f}" if peak else ""), gbs, unit="GB/s")
    peaks = [e.get("device_memory", {}).get("peak_bytes_in_use") for k, e in model.items()
             if isinstance(e, dict) and e.get("status") == "ok" and "device_memory" in e
             and (e.get("batch") == 1)]
    peaks = [p for p in peaks if p is not None]
    add("peak device memory after the batch-1 items, GB", max(peaks) / 1e9 if peaks else None,
        ANCHORS_H100["memory_gb"], unit="GB")
    xla = [e.get("xla_memory", {}).get("total_bytes") for k, e in model.items()
           if k.startswith("ttft_") and e.get("status") == "ok"]
    xla = [x for x in xla if x is not None]
    add("largest batch-1 prefill program (XLA: weights + temporaries), GB", max(xla) / 1e9 if xla else None,
        ANCHORS_H100["memory_gb"], unit="GB")
    return rows


def summarise(data: dict) -> dict:
    """Counts of item statuses, targets met/missed, and whether every correctness check passed."""
    statuses: dict = {}
    for section in ("correctness", "kernel", "model"):
        for item, entry in data.get(section, {}).items():
            statuses.setdefault(entry.get("status"), []).append(f"{section}.{item}")
    corr = list(data.get("correctness", {}).values())
    met = [r["metric"] for r in data.get("table", []) if r["met"] == "met"]
    missed = [r["metric"] for r in data.get("table", []) if r["met"] == "missed"]
    passed = all(e.get("status") == "ok" and e.get("passed") for e in corr) if corr else None  # None: not run
    return {"items": statuses, "correctness_passed": passed, "targets_met": met, "targets_missed": missed}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def markdown(data: dict) -> str:
    """The report as markdown: header (device, versions, mode), the table, problems."""
    meta = data["meta"]
    dev = meta.get("device", {})
    ver = meta.get("versions", {})
    lines = [f"# xlstm-flax device check ({meta.get('mode')})", "",
             f"Started {meta.get('started')}, {meta.get('elapsed_s', 0):.0f} s so far/total; device "
             f"{dev.get('kind')} x{dev.get('count')} ({dev.get('backend')}); jax {ver.get('jax')}, jaxlib "
             f"{ver.get('jaxlib')}, flax {ver.get('flax')}, transformers {ver.get('transformers')}, torch "
             f"{ver.get('torch')}, mlstm_kernels {ver.get('mlstm_kernels')}; Python {ver.get('python')}.", ""]
    if meta.get("mode") == "dry-run":
        lines += ["**Dry run on CPU with tiny shapes: the anchors and targets are the 7B/H200 ones, shown only to "
                  "exercise the table; the numbers mean nothing.**", ""]
    lines += ["| metric | ours | H100 anchor (NX-AI) | H200 target | met |", "|---|---|---|---|---|"]
    for r in data.get("table", []):
        target = r["target_h200"] if isinstance(r["target_h200"], str) else (
            f"{r['op']} {_fmt(r['target_h200'])}" if r["target_h200"] is not None else "-")
        lines.append(f"| {r['metric']} | {_fmt(r['value'])} | {_fmt(r['anchor_h100'])} | {target} | {r['met']} |")
    problems = [(f"{s}.{i}", e) for s in ("correctness", "kernel", "model")
                for i, e in data.get(s, {}).items() if e.get("status") != "ok"]
    if problems:
        lines += ["", "Not measured:", ""]
        lines += [f"- `{name}`: {e.get('status')}: {e.get('error') or e.get('reason')}" for name, e in problems]
    lines += ["", "Anchors: NX-AI's xLSTM-7B on one H100 (bfloat16, their PyTorch code with CUDA graphs and TFLA "
              "Triton kernels). Prefill and TTFT: batch-1 prompts run through `model(ids, past_key_values=cache, "
              "logits_to_keep=1)`; TTFT includes copying the next token id to the host. Decode: greedy steps in a "
              "jitted `lax.fori_loop`, the batch rows copied from the batch-1 prefill state.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (device_check.json, device_check.md)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, every code path but TFLA (< 60 s)")
    p.add_argument("--time-budget-s", type=float, default=420.0,
                   help="after this many seconds the remaining items are skipped [420]")
    p.add_argument("--sections", default="correctness,kernel,tfla,model",
                   help="comma list of correctness, kernel, tfla, model [all]")
    p.add_argument("--fixtures", default=None, help="upstream fixture folder (default: found beside the repo)")
    p.add_argument("--preset", default=None, help="model preset [xlstm-7b; dry run: tiny-mlstm-v1]")
    p.add_argument("--model-chunk-size", type=int, default=None, help="chunk size of the model [the preset's]")
    p.add_argument("--prefill-segment-size", type=int, default=None,
                   help="the model's prefill_segment_size, 0 for one pass [the preset's]")
    p.add_argument("--scan-blocks", action="store_true", help="nn.scan over the blocks (faster compile)")
    p.add_argument("--new-tokens", type=int, default=None, help="decode steps per timed call [64]")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per model measurement [3]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile-cache", default="/tmp/xlstm_flax_jax_cache",
                   help="JAX persistent compilation cache folder (a rerun on the same machine compiles less); "
                        "'none' to turn off; never used in a dry run")
    return p


def setup_jax(args) -> None:
    """Platform and compilation cache before JAX starts (a dry run forces the CPU)."""
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
        # compiling dominates a dry run: LLVM's expensive passes off (as tests/sharding_checks.py)
        os.environ.setdefault("XLA_FLAGS", "--xla_llvm_disable_expensive_passes=true")
        os.environ.setdefault("USE_TORCH", "0")  # transformers need not import torch (seconds of CPU)
    import jax

    if not args.dry_run and args.compile_cache.lower() != "none":
        try:
            jax.config.update("jax_compilation_cache_dir", args.compile_cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        except Exception as err:  # noqa: BLE001
            log(f"compilation cache not enabled: {err}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    shapes = DRY if args.dry_run else FULL
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    setup_jax(args)
    import jax

    budget = Budget(args.time_budget_s)
    meta = {"mode": "dry-run" if args.dry_run else "full", "started": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "command": " ".join([sys.executable] + sys.argv),
        "args": vars(args), "time_budget_s": args.time_budget_s, "versions": versions(),
        "device": device_info(), "shapes": {k: v for k, v in shapes.items()},
        "anchors_h100": ANCHORS_H100, "targets_h200": TARGETS_H200, "device_peaks": DEVICE_PEAKS}
    rec = Recorder(Path(args.out), budget, meta)
    log(f"device {meta['device']['kind']} ({meta['device']['backend']}), jax {jax.__version__}, "
        f"budget {args.time_budget_s:.0f} s, out {args.out}")
    K, how = load_kernels()
    meta["kernels_module"] = how

    if "correctness" in sections:
        shape, chunk = shapes["check_shape"], shapes["check_chunk"]
        for dtype, precision in FORM_TOLERANCES:
            cases = shapes["check_cases" if (dtype, precision) == ("float32", "highest") else "check_cases_other"]
            rec.run("correctness", f"kernel_forms_{dtype}" + (f"_{precision}" if dtype == "float32" else ""),
                    lambda d=dtype, p=precision, c=cases: check_kernel_forms(K, d, p, c, shape, chunk))
        rec.run("correctness", "fixtures", lambda: check_fixtures(find_fixtures(args.fixtures), shapes["fixtures"],
                                                                  shapes["fixture_kernels"]), need_s=10)
        free_memory()
    if "kernel" in sections:
        for chunk in shapes["kernel_chunks"]:
            rec.run("kernel", f"chunkwise_L{chunk}",
                    lambda c=chunk: time_chunkwise(K, shapes["kernel_shape"], c, shapes["kernel_repeats"]),
                    need_s=10)
        _CELL_INPUTS.clear()
        free_memory()
    if "model" in sections:
        model_section(rec, args, shapes)
        free_memory()
    if "tfla" in sections:  # optional and compiles Triton kernels: last, with whatever time is left
        if args.dry_run:
            rec.data["kernel"]["tfla"] = {"status": "skipped", "reason": "dry run (CPU)"}
        else:
            reason = tfla_unavailable()
            if reason:
                rec.data["kernel"]["tfla"] = {"status": "skipped", "reason": reason}
            else:
                rec.run("kernel", "tfla", lambda: tfla_section(K, shapes["kernel_shape"], shapes["kernel_chunks"],
                                                               shapes["kernel_repeats"]), need_s=45)
    rec.write()
    summary = rec.data.get("summary") or {}
    verdict = {True: "passed", False: "FAILED", None: "not run"}[summary.get("correctness_passed")]
    log(f"done in {budget.elapsed():.0f} s: correctness {verdict}, "
        f"targets met {len(summary.get('targets_met', []))}, missed {len(summary.get('targets_missed', []))}; "
        f"{Path(args.out) / 'device_check.md'}")
    print((Path(args.out) / "device_check.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
