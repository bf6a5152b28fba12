"""Compile-only (ahead-of-time) programs for GPUs and TPUs that are not attached: targets, compile, the compiler's
accounting. Used by `benchmarks/accelerators.py` and `tests/test_aot.py`.

Nothing runs and no weights are allocated: inputs are `jax.ShapeDtypeStruct`s with `NamedSharding`s over a mesh of
compile-only devices (`jax.experimental.topologies.get_topology_desc`), and `jit(f).lower(...).compile()` runs the
real backend compiler (SPMD partitioning, fusion, buffer assignment). Every figure read here is the compiler's own
accounting per device, not a measurement.

Needs the `aot` extra (libtpu, the jax-cuda12 plugin of jax's version) and, for NVIDIA targets,
`JAX_PLATFORMS=cpu` set before jax starts (`require_cpu_platform` sets it; otherwise the CUDA plugin fails its
driver check on a machine without a GPU and is not registered).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

TARGETS_DIR = Path(__file__).resolve().parent / "targets"


def require_cpu_platform() -> None:
    """JAX_PLATFORMS=cpu unless set; must run before jax initialises its backends."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


@dataclass(frozen=True)
class Target:
    """One compile target. peak_flops: dense bf16 FLOP/s per device; bandwidth: HBM bytes/s per device;
    memory: HBM bytes per device (all from the vendors' published figures)."""

    name: str
    platform: str  # "tpu" or "cuda"
    devices: int
    peak_flops: float
    bandwidth: float
    memory: float
    topology: str = ""  # TPU topology name, e.g. "v5e:2x4"
    target_config: str = ""  # GPU: file under benchmarks/targets/
    hosts: int = 1
    source: str = ""


GIB = 2**30
# Figures: Google Cloud TPU docs (v5e: 197 TFLOP/s bf16, 16 GiB HBM2, 819 GB/s; v6e: 918 TFLOP/s, 32 GiB, 1640 GB/s;
# v5p: 459 TFLOP/s, 95 GiB, 2765 GB/s, per chip). NVIDIA datasheets: H100 SXM 989 TFLOP/s dense bf16, 80 GB,
# 3.35 TB/s; H200 989 TFLOP/s, 141 GB, 4.8 TB/s. Google names v5p slices by TensorCores (2 per chip): v5p-8 is
# 4 chips (v5p:2x2x1), v5p-64 is 32 chips on 8 hosts (v5p:4x4x2).
TARGETS = {
    "h100-sxm": Target("h100-sxm", "cuda", 1, 989e12, 3.35e12, 80 * GIB, target_config="h100_sxm.txtpb"),
    "h100-sxm-x8": Target("h100-sxm-x8", "cuda", 8, 989e12, 3.35e12, 80 * GIB, target_config="h100_sxm.txtpb"),
    "h200": Target("h200", "cuda", 1, 989e12, 4.8e12, 141e9, target_config="h200.txtpb"),
    "h200-x8": Target("h200-x8", "cuda", 8, 989e12, 4.8e12, 141e9, target_config="h200.txtpb"),
    "v5e-8": Target("v5e-8", "tpu", 8, 197e12, 819e9, 16 * GIB, topology="v5e:2x4"),
    "v6e-8": Target("v6e-8", "tpu", 8, 918e12, 1640e9, 32 * GIB, topology="v6e:2x4"),
    "v5p-8": Target("v5p-8", "tpu", 4, 459e12, 2765e9, 95 * GIB, topology="v5p:2x2x1"),
    "v5p-64": Target("v5p-64", "tpu", 32, 459e12, 2765e9, 95 * GIB, topology="v5p:4x4x2", hosts=8),
    # this machine's CPU (the program XLA:CPU builds here). No published peak: the limits benchmarks/run.py
    # measured on the project's CPU host (benchmarks/README.md: the model's GEMM 463 GFLOP/s, 78.6 GB/s read)
    "cpu": Target("cpu", "cpu", 1, 463e9, 78.6e9, 24 * GIB),
}


class AotUnavailable(RuntimeError):
    """The compiler for a target is not installed (the `aot` extra) or cannot start here."""


def target_devices(target: Target) -> list:
    """The compile-only devices of `target` (TPU topology or NVIDIA GPUs described by our target config)."""
    from jax.experimental import topologies

    if target.platform == "cpu":
        import jax

        return jax.devices("cpu")[: target.devices]
    try:
        if target.platform == "tpu":
            topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology)
        else:
            text = (TARGETS_DIR / target.target_config).read_text()
            topo = topologies.get_topology_desc(platform="cuda", topology_name="", target_config=text,
                                                topology=f"1x1x{target.devices}")
    except Exception as err:  # the plugin missing or refusing (e.g. CUDA's driver check without JAX_PLATFORMS=cpu)
        raise AotUnavailable(f"{target.name}: no compile-only {target.platform} devices ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); install the `aot` extra and set "
                             "JAX_PLATFORMS=cpu before jax starts") from err
    devices = list(topo.devices)
    if len(devices) != target.devices:
        raise AotUnavailable(f"{target.name}: expected {target.devices} devices, got {len(devices)}")
    return devices


def aot_available() -> Optional[str]:
    """None when both compilers can give devices here, else the reason (for skips)."""
    try:
        target_devices(TARGETS["v5e-8"])
        target_devices(TARGETS["h200"])
    except AotUnavailable as err:
        return str(err)
    except ImportError as err:
        return f"jax.experimental.topologies missing: {err}"
    return None


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*[^=]*?\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")


def collectives(hlo_text: str) -> dict[str, int]:
    """Count of each collective op in an optimised HLO module (ops inside loop bodies counted once)."""
    counts = {name: 0 for name in COLLECTIVES}
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if match:
            counts[match.group(1)] += 1
    return {k: v for k, v in counts.items() if v}


def while_loops(hlo_text: str) -> list[Optional[int]]:
    """Trip counts of the `while` ops in an optimised HLO module (`_trip_count`; None where unknown)."""
    comps, _, _ = _parse(hlo_text)
    return [_trip_count(line, comps) for lines in comps.values() for line in lines if re.search(r"\swhile\(", line)]


def _cost(compiled) -> tuple[Optional[dict], str]:
    """(flops / bytes accessed per device, how obtained). TPU gives `cost_analysis()`; a compile-only GPU program
    does not ("not supported"), so XLA's cost model is run on its optimised HLO through the CPU client (a private
    jax API: when it is missing the figures are None and the reason says so)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (GetCostAnalysis is not supported)
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if cost:
        return cost, "cost_analysis()"
    try:
        import jax
        from jax._src.lib import _jax

        module = compiled.runtime_executable().hlo_modules()[0]
        cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
        return dict(cost), "hlo_module_cost_analysis(cpu client, optimised HLO)"
    except Exception as err:  # noqa: BLE001
        return None, f"unavailable ({type(err).__name__})"


def analyse(compiled) -> dict[str, Any]:
    """Per-device memory (arguments, output, alias, temp, generated code), flops, bytes accessed, collectives and
    while loops of a compiled program."""
    mem = compiled.memory_analysis()
    out: dict[str, Any] = {}
    if mem is not None:
        for field in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                      "temp_size_in_bytes", "generated_code_size_in_bytes"):
            out[field.replace("_size_in_bytes", "_bytes")] = int(getattr(mem, field, 0) or 0)
    cost, how = _cost(compiled)
    out["cost_source"] = how
    out["flops"] = None if cost is None else float(cost.get("flops", 0.0))
    out["bytes_accessed"] = None if cost is None else float(cost.get("bytes accessed", 0.0))
    text = compiled.as_text()
    out["collectives"] = collectives(text)
    out["while_trip_counts"] = while_loops(text)
    return out


def compile_only(fn: Callable, args: tuple, in_shardings, out_shardings=None, donate_argnums=(),
                 static_argnums=()) -> Any:
    """`jax.jit(fn, ...).lower(*args).compile()` for ShapeDtypeStruct args; returns the compiled program."""
    import jax

    kwargs = dict(in_shardings=in_shardings, donate_argnums=donate_argnums, static_argnums=static_argnums)
    if out_shardings is not None:
        kwargs["out_shardings"] = out_shardings
    return jax.jit(fn, **kwargs).lower(*args).compile()


def structs(tree, shardings, dtype=None):
    """ShapeDtypeStructs of a tree of arrays / shape structs with the given shardings (dtype: cast floats)."""
    import jax
    import jax.numpy as jnp

    def one(x, sharding):
        dt = x.dtype
        if dtype is not None and jnp.issubdtype(dt, jnp.floating):
            dt = jnp.dtype(dtype)
        return jax.ShapeDtypeStruct(x.shape, dt, sharding=sharding)

    return jax.tree_util.tree_map(one, tree, shardings)


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard of each leaf)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
    return total


# ------------------------------------------------------------------------------------------ HBM traffic from HLO
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z\d]*)\[([\d,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?(%[\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "copy-done", "slice-done",
               "after-all", "opt-barrier", "partition-id", "replica-id", "iota"}


def _hbm_bytes_of(shape: str) -> int:
    """Bytes of the arrays in an HLO shape string that live in device memory (memory space 0; TPU's VMEM and
    semaphores are S(1), S(2)...)."""
    total = 0
    for dtype, dims, layout in _ARRAY.findall(shape):
        if dtype not in _DTYPE_BYTES:
            continue
        space = re.search(r"S\((\d+)\)", layout or "")
        if space and space.group(1) != "0":
            continue
        n = 1
        for d in dims.split(","):
            if d:
                n *= int(d)
        total += n * _DTYPE_BYTES[dtype]
    return total


def _parse(hlo_text: str):
    """({computation: instruction lines}, {instruction: shape string}, entry computation name or None)."""
    comps: dict[str, list[str]] = {}
    shapes: dict[str, str] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(ENTRY\s+)?(%[\w.\-]+)\s.*\{\s*$", line)
        if head and not _INSTR.match(line):
            current = head.group(2)
            comps[current] = []
            if head.group(1):
                entry = current
            continue
        found = _INSTR.match(line)
        if found and current is not None:
            shapes[found.group(1)] = found.group(2)
            comps[current].append(line)
    return comps, shapes, entry


def _trip_count(while_line: str, comps: dict) -> Optional[int]:
    """A `while` op's trip count: XLA's `known_trip_count` where recorded (GPU, CPU), else read from its condition
    and body (TPU): `counter < N` against the one integer constant of the condition, the counter (tuple element k)
    stepped in the body by an integer constant s (jax's scan / fori_loop: 1; SPMD's windowed matmul loops, u32
    counters: 1 or 2), starting from the constant c the while's operand holds there: ceil((N - c) / s) trips
    (None when any of these cannot be read; a loop that may also stop early, like generate's at eos, gets its
    largest count)."""
    known = re.search(r'known_trip_count"?\s*[:=]\s*\{\s*"?n"?\s*[:=]\s*"?(\d+)', while_line)
    if known:
        return int(known.group(1))
    cond = re.search(r"condition=(%[\w.\-]+)", while_line)
    lines = comps.get(cond.group(1), []) if cond else []
    constants = [int(m.group(1)) for line in lines
                 for m in [re.search(r"[su](?:32|64)\[\]\S*\s+constant\((\d+)\)", line)] if m]
    if len(constants) != 1 or not any("direction=LT" in line for line in lines):
        return None
    index = [m.group(1) for line in lines for m in [re.search(r"get-tuple-element\(.*index=(\d+)", line)] if m]
    body = re.search(r"body=(%[\w.\-]+)", while_line)
    start = _counter_init(while_line, comps, index)
    if start is None:
        return None
    return max(-(-(constants[0] - start) // _counter_step(comps.get(body.group(1), []) if body else [], index)), 0)


def _counter_init(while_line: str, comps: dict, index: list) -> Optional[int]:
    """The constant the loop's counter (tuple element `index[0]` of the while's operand) starts from, through
    copies; None when it is not a constant there."""
    operand = re.search(r"\swhile\((%[\w.\-]+)\)", while_line)
    if len(index) != 1 or not operand:
        return None
    defs = {m.group(1): line for lines in comps.values() for line in lines for m in [_INSTR.match(line)] if m}
    tuple_line = defs.get(operand.group(1), "")
    if " tuple(" not in tuple_line:
        return None
    elements = re.findall(r"(%[\w.\-]+)", tuple_line.split(" tuple(", 1)[1])
    k = int(index[0])
    line = defs.get(elements[k], "") if k < len(elements) else ""
    for _ in range(8):  # through copies (TPU copies the constant into the loop's buffer)
        const = re.search(r"\sconstant\((-?\d+)\)", line)
        if const:
            return int(const.group(1))
        source = re.search(r"\s(?:copy|bitcast|convert)\((%[\w.\-]+)\)", line)
        if not source:
            return None
        line = defs.get(source.group(1), "")
    return None


def _counter_step(body: list, index: list) -> int:
    """The integer constant the body adds to tuple element `index[0]` (1 when it cannot be read)."""
    if len(index) != 1:
        return 1
    defs = {m.group(1): line for line in body for m in [_INSTR.match(line)] if m}
    root = next((line for line in body if line.lstrip().startswith("ROOT") and " tuple(" in line), None)
    if root is None:
        return 1
    operands = re.findall(r"(%[\w.\-]+)", root.split(" tuple(", 1)[1])
    k = int(index[0])
    step_line = defs.get(operands[k], "") if k < len(operands) else ""
    if not re.search(r"\sadd\(", step_line):
        return 1
    for name in re.findall(r"(%[\w.\-]+)", step_line.split(" add(", 1)[1].split(")")[0]):
        const = re.search(r"constant\((\d+)\)", defs.get(name, ""))
        if const:
            return max(int(const.group(1)), 1)
    return 1


def _fusion_reads(line: str, comps: dict, read: list) -> list:
    """Per operand of a fusion, the bytes it reads: an operand that the fused computation only slices
    (dynamic-slice / slice, e.g. one step's inputs inside a scan) costs the slices, not the whole array."""
    called = re.search(r"calls=(%[\w.\-]+)", line)
    body = comps.get(called.group(1), []) if called else []
    params = {}
    for instr in body:
        found = re.match(r"^\s*(%[\w.\-]+)\s*=.*\sparameter\((\d+)\)", instr)
        if found:
            params[found.group(1)] = int(found.group(2))
    out = list(read)
    for name, index in params.items():
        users = [instr for instr in body if re.search(re.escape(name) + r"[,)\s]", instr.split("=", 1)[1])]
        if users and index < len(out) and all(re.search(r"\s(dynamic-slice|slice)\(", u) for u in users):
            out[index] = sum(_hbm_bytes_of(_INSTR.match(u).group(2)) for u in users if _INSTR.match(u))
    return out


def hbm_traffic(hlo_text: str, trips_hint: Optional[int] = None) -> Optional[float]:
    """Device-memory (HBM) bytes read and written by one run of an optimised HLO module, per device: the operands
    and results of the entry computation's ops that live in device memory (memory space 0), fusions at their
    boundaries; a `while` counts its body times its known trip count (`trips_hint`, else once, when XLA records
    none); an async slice or copy into another memory space (TPU's VMEM prefetch) counts the bytes it moves,
    once; a slice, or a fusion operand that is only sliced inside, counts the slice. Inside loop bodies it still
    over-counts (a carried array that an op updates in place or reads partly counts whole), so for programs with
    loops it is an upper bound; for a decode step (no loop) it is the traffic of the compiled program.

    Why not `cost_analysis()['bytes accessed']`: on TPU, memory-space assignment prefetches each weight into VMEM
    as k async slices, and XLA's cost model charges every `slice-start` the whole source array (k-fold the weight)
    plus the VMEM concat, so a decode step showed ~4x the bytes it moves. None if the text cannot be parsed."""
    comps, shapes, entry = _parse(hlo_text)
    if entry is None:
        return None
    memo: dict[str, float] = {}

    def computation_bytes(name: str) -> float:
        if name in memo:
            return memo[name]
        memo[name] = 0.0
        total = 0.0
        for line in comps.get(name, []):
            found = _INSTR.match(line)
            _, shape, op, rest = found.groups()
            if op in _NO_TRAFFIC:
                continue
            operands = re.findall(r"(%[\w.\-]+)", rest.split(")")[0])
            if op == "while":
                body = re.search(r"body=(%[\w.\-]+)", line)
                trips = _trip_count(line, comps) or trips_hint or 1
                total += trips * (computation_bytes(body.group(1)) if body else 0)
                continue
            if op in ("call", "conditional"):
                for callee in re.findall(r"(?:to_apply|branch_computations|true_computation|false_computation)="
                                         r"\{?(%[\w.\-]+)", line):
                    total += computation_bytes(callee)
                continue
            if op == "slice-start":  # ((source), destination slice, sync flag): moves the slice once
                parts = _ARRAY.findall(shape)
                src = _hbm_bytes_of(shapes.get(operands[0], "")) if operands else 0
                dst = _hbm_bytes_of(shape) - src
                sliced = sum(_DTYPE_BYTES.get(d, 0) * math.prod(int(x) for x in dims.split(",") if x)
                             for d, dims, _ in parts[1:2])
                total += (sliced if src else 0) + dst
                continue
            if op == "copy-start":  # (destination, source, context)
                out = _ARRAY.findall(shape)
                dst = _hbm_bytes_of("".join(f"{d}[{s}]{lay}" for d, s, lay in out[:1]))
                src = _hbm_bytes_of(shapes.get(operands[0], "")) if operands else 0
                total += dst + src
                continue
            if op == "dynamic-slice" or op == "slice":  # reads the slice only
                total += 2 * _hbm_bytes_of(shape)
                continue
            read = [_hbm_bytes_of(shapes.get(o, "")) for o in operands]
            if op == "fusion":
                read = _fusion_reads(line, comps, read)
            total += _hbm_bytes_of(shape) + sum(read)
        memo[name] = total
        return total

    return computation_bytes(entry)


# ------------------------------------------------------------------------------- flops with loops counted whole
def _dims(shape: str) -> list[int]:
    """Dimensions of the first array in an HLO shape string."""
    found = _ARRAY.search(shape)
    return [int(d) for d in found.group(2).split(",") if d] if found else []


def _gemm_call_flops(name: str, comps: dict, shapes: dict, seen=None) -> float:
    """Flops of the cuBLAS gemm custom calls of a computation and the computations it calls (a `while` body once,
    as XLA's cost model counts it): 2 x output elements x contracted elements (dimension numbers from the call's
    backend_config). XLA's cost model counts these custom calls as 0 flops."""
    seen = set() if seen is None else seen
    total = 0.0
    for line in comps.get(name, []):
        _, shape, op, rest = _INSTR.match(line).groups()
        if op == "custom-call" and re.search(r'custom_call_target="__cublas\$(lt\$matmul|gemm)', line):
            lhs_name = re.findall(r"(%[\w.\-]+)", rest.split(")")[0])[:1]
            lhs = _dims(shapes.get(lhs_name[0], "")) if lhs_name else []
            found = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', line)
            k = math.prod(lhs[int(d)] for d in re.findall(r"\d+", found.group(1)) if int(d) < len(lhs)) \
                if found and lhs else 0
            total += 2.0 * math.prod(_dims(shape)) * k
        for callee in re.findall(r"\b(?:calls|to_apply|body|condition)=(%[\w.\-]+)", line):
            if callee not in seen:
                seen.add(callee)
                total += _gemm_call_flops(callee, comps, shapes, seen)
    return total


def _module_with_entry(hlo_text: str, comps: dict, entry: str, new_entry: str) -> str:
    """The module's text with `new_entry` (a loop body) as its entry computation (header attributes dropped: the
    entry layout would not match)."""
    out = ["HloModule loop_body"]
    for line in hlo_text.splitlines()[1:]:
        head = re.match(r"^(ENTRY\s+)?(%[\w.\-]+)(\s.*\{\s*)$", line)
        if head and not _INSTR.match(line) and head.group(2) in comps:
            line = ("ENTRY " if head.group(2) == new_entry else "") + head.group(2) + head.group(3)
        out.append(line)
    return "\n".join(out)


def loop_flops(hlo_text: str, module=None, trips_hint: Optional[int] = None) -> tuple[Optional[float], int]:
    """(flops of one run of an optimised HLO module per device with every `while` body counted times its trip
    count, number of loops whose trip count the HLO does not record).

    XLA's cost model (`cost_analysis()`, `hlo_module_cost_analysis`) counts a loop body once, whatever its trip
    count: a scanned program (the blocks under `scan_blocks`, the chunkwise kernel's chunk scan, prefill
    segments, generate's decode loop, SPMD's windowed matmul loops) shows a fraction of its flops. Here XLA's own
    cost model is run on each loop body as the entry of a module of its own, and
        flops(C) = xla(C) - sum over loops w in C of xla(body_w) + trips_w x flops(body_w)
    (nested loops recursively; a trip count from `_trip_count`, else `trips_hint`, else 1). cuBLAS gemm custom
    calls, 0 flops to XLA's GPU cost model, are added (`_gemm_call_flops`). `module`: the HloModule the text
    is of (saves parsing it once more). None when XLA's cost model or its text parser is unavailable here."""
    try:
        import jax
        from jax._src.lib import _jax
        from jaxlib import _hlo

        client = jax.devices("cpu")[0].client

        def xla(text_or_module) -> float:
            mod = _hlo.hlo_module_from_text(text_or_module) if isinstance(text_or_module, str) else text_or_module
            return float(dict(_jax.hlo_module_cost_analysis(client, mod)).get("flops", 0.0))

        comps, shapes, entry = _parse(hlo_text)
        if entry is None:
            return None, 0
        unknown = [0]
        memo: dict[str, float] = {}

        def whiles(name: str, seen: set):  # the while ops of a computation, looking through call / conditional
            for line in comps.get(name, []):
                op = _INSTR.match(line).group(3)
                if op == "while":
                    yield line
                elif op in ("call", "conditional"):
                    for callee in re.findall(r"(?:to_apply|branch_computations=\{[^}]*|true_computation|"
                                             r"false_computation)=?(%[\w.\-]+)", line):
                        if callee not in seen:
                            seen.add(callee)
                            yield from whiles(callee, seen)

        def flops(name: str, once: float) -> float:
            total = once + _gemm_call_flops(name, comps, shapes)
            for line in whiles(name, set()):
                body = re.search(r"body=(%[\w.\-]+)", line).group(1)
                trips = _trip_count(line, comps)
                if trips is None:
                    unknown[0] += 1
                    trips = trips_hint or 1
                if body not in memo:
                    memo[body] = (xla(_module_with_entry(hlo_text, comps, entry, body)), 0.0)
                    memo[body] = (memo[body][0], flops(body, memo[body][0]))
                once_body, whole_body = memo[body]
                total += trips * whole_body - once_body - _gemm_call_flops(body, comps, shapes)
            return total

        return flops(entry, xla(module if module is not None else hlo_text)), unknown[0]
    except Exception:  # noqa: BLE001  (a private jax API, or a module its text parser refuses)
        return None, 0


def hlo_figures(hlo_text: str, trips_hint: Optional[int] = None, module=None) -> dict[str, Any]:
    """The figures read from the optimised HLO itself: HBM traffic (`hbm_traffic`), flops with loop bodies times
    their trip counts (`loop_flops`), how many loops had no known trip count (`trips_hint` used for them), the
    loops' trip counts."""
    flops, unknown = loop_flops(hlo_text, module, trips_hint)
    return {"hbm_bytes": hbm_traffic(hlo_text, trips_hint), "loop_flops": flops, "loops_without_trip_count": unknown,
            "while_trip_counts": while_loops(hlo_text)}
