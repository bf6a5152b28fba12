"""Compile-only checks for a TPU and an NVIDIA GPU that are not attached (the `aot` extra: libtpu and the jax-cuda12
plugin): a small config compiles for TPU v5e-8 and one H200 (prefill, decode step, generate); the decode step moves
no more than 1.3x the bytes it must (weights read once, recurrent cache read and written, logits); a prefill's
temp memory does not grow with the prompt (4x the tokens within 1.5x the temp). Nothing runs on a device: the
figures are XLA's accounting of the compiled programs (`benchmarks/_aot.py`). Fast CPU-only tests: XLA's cost model
counts a loop body once, `_aot.loop_flops` counts it times its trip count (scanned vs unrolled programs).

The TPU / GPU compiles run in a subprocess: the CUDA plugin registers only when JAX_PLATFORMS=cpu is set before jax
starts, and the test session's jax is already started.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _aot_extra_missing():
    from importlib.util import find_spec

    missing = [name for name in ("libtpu", "jax_plugins.xla_cuda12") if find_spec(name.split(".")[0]) is None
               or (name == "jax_plugins.xla_cuda12" and not _has_cuda_plugin())]
    return missing


def _has_cuda_plugin():
    try:
        from importlib.metadata import version

        import jax

        return version("jax-cuda12-plugin") == jax.__version__
    except Exception:  # noqa: BLE001
        return False


_MISSING = _aot_extra_missing()
needs_aot = pytest.mark.skipif(bool(_MISSING), reason=f"the `aot` extra is not installed (no {', '.join(_MISSING)} "
                               f"matching this jax): pip install -e .[aot]")

# One block of the 7B's shape (D=4096, 8 heads, bf16) with a small vocabulary: compiles in seconds, and its matrices
# are the 7B's (a much smaller D measures per-op overheads, TPU tile padding and XLA:GPU's matrix-vector
# heuristics, rather than the weights' traffic that bounds a real decode step).
SMALL = dict(embedding_dim=4096, num_blocks=1, num_heads=8, vocab_size=4096, prefill_segment_size=256,
             chunk_size=64, compute_dtype="bfloat16")

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path[:0] = [{bench!r}, {repo!r}]
    import jax.numpy as jnp
    from _aot import TARGETS, analyse, compile_only, hlo_figures, target_devices
    from _aot_workloads import build_model, inference_mesh, prefill, decode_step, generate

    model, shapes = build_model("xlstm-7b", dtype=jnp.bfloat16, **{small!r})
    out = {{}}
    for target in ("v5e-8", "h200"):
        mesh = inference_mesh(model.config, target_devices(TARGETS[target]))
        progs = {{"prefill-1x": prefill(model, shapes, mesh, 1, 1024), "prefill-4x": prefill(model, shapes, mesh, 1, 4096),
                  "decode-b1": decode_step(model, shapes, mesh, 1), "decode-b8": decode_step(model, shapes, mesh, 8),
                  "generate": generate(model, shapes, mesh, 1, 1024, 4)}}
        for name, p in progs.items():
            compiled = compile_only(p.fn, p.args, p.in_shardings, p.out_shardings, p.donate_argnums)
            a = analyse(compiled)
            a.update(hlo_figures(compiled.as_text(), p.loop_trips_hint))
            a["ideal_bytes"], a["ideal_flops"] = p.ideal_bytes, p.ideal_flops
            out[target + "/" + name] = a
    # 8 GPUs, tensor parallel: at batch 1 XLA:GPU turns a plain embedding lookup into a dynamic-slice of the
    # all-gathered table; the vocabulary-parallel lookup (sharding.vocab_parallel_take) gathers nothing
    mesh = inference_mesh(model.config, target_devices(TARGETS["h200-x8"]))
    p = decode_step(model, shapes, mesh, 1)
    compiled = compile_only(p.fn, p.args, p.in_shardings, p.out_shardings, p.donate_argnums)
    out["h200-x8/decode-b1"] = dict(analyse(compiled), mesh=dict(mesh.shape))
    print("RESULT", json.dumps(out))
""")


# the module fixture compiles 11 programs (~45 s of one idle core): the tests that read it are marked slow
@pytest.fixture(scope="module")
def figures():
    code = SCRIPT.format(bench=str(REPO / "benchmarks"), repo=str(REPO), small=SMALL)
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")  # compile-only: no chip to share
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"compile-only run failed:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@needs_aot
@pytest.mark.slow
@pytest.mark.parametrize("target", ["v5e-8", "h200"])
def test_compiles_for_tpu_and_gpu(figures, target):
    """prefill, decode steps and generate compile; memory and HBM traffic are reported for each."""
    for name in ("prefill-1x", "prefill-4x", "decode-b1", "decode-b8", "generate"):
        a = figures[f"{target}/{name}"]
        assert a["argument_bytes"] > 0 and a["temp_bytes"] >= 0, (target, name, a)
        assert a["hbm_bytes"] and a["hbm_bytes"] > 0, (target, name, a)


@needs_aot
@pytest.mark.slow
@pytest.mark.parametrize("target", ["v5e-8", "h200"])
@pytest.mark.parametrize("batch", [1, 8])
def test_decode_step_bytes_near_ideal(figures, target, batch):
    """One decode step reads each weight once and the cache once, writes the cache: HBM bytes <= 1.3x that."""
    a = figures[f"{target}/decode-b{batch}"]
    ratio = a["hbm_bytes"] / a["ideal_bytes"]
    assert ratio <= 1.3, f"{target} decode b{batch}: {ratio:.2f}x the ideal bytes ({a})"


@needs_aot
@pytest.mark.slow
def test_tensor_parallel_decode_gathers_no_embedding_table(figures):
    """A batch-1 decode step on 8 H200s (tensor 8, vocabulary split over it): no all-gather at all (it was the
    whole embedding table, every step), only the all-reduces of tensor parallelism and of the lookup."""
    a = figures["h200-x8/decode-b1"]
    assert a["mesh"]["tensor"] == 8, a
    assert "all-gather" not in a["collectives"] and a["collectives"].get("all-reduce", 0) >= 3, a


@needs_aot
@pytest.mark.slow
@pytest.mark.parametrize("target", ["v5e-8", "h200"])
def test_prefill_temp_does_not_grow_with_prompt(figures, target):
    """A prefill runs the prompt segment by segment: 4x the tokens keeps temp memory within 1.5x."""
    small, large = figures[f"{target}/prefill-1x"]["temp_bytes"], figures[f"{target}/prefill-4x"]["temp_bytes"]
    assert large <= 1.5 * small, f"{target}: temp {small} B at 1024 tokens, {large} B at 4096"


@needs_aot
@pytest.mark.slow
@pytest.mark.parametrize("target", ["v5e-8", "h200"])
def test_generate_flops_are_prefill_plus_decode_steps(figures, target):
    """Counted with loop bodies times their trips, generate's flops (1024-token prompt, 4 new tokens) are its
    prefill's + 3 decode steps' (each compiled alone) within 2%; XLA's own count (the loop body once) is below."""
    gen, pre, dec = (figures[f"{target}/{name}"] for name in ("generate", "prefill-1x", "decode-b1"))
    parts = pre["loop_flops"] + 3 * dec["loop_flops"]
    assert gen["loop_flops"] == pytest.approx(parts, rel=0.02), (target, gen["loop_flops"], parts)
    assert gen["flops"] < gen["loop_flops"] - 1.5 * dec["loop_flops"], (target, gen)


def _bench_import(name):
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    import importlib

    return importlib.import_module(name)


def _scan_program(n):
    import jax
    import jax.numpy as jnp

    def f(w, x):  # n matmuls (64 x 256) @ (256 x 256) in a scan
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=n)[0]

    return jax.jit(f).lower(jax.ShapeDtypeStruct((256, 256), jnp.float32),
                            jax.ShapeDtypeStruct((64, 256), jnp.float32)).compile()


def test_xla_counts_a_loop_body_once_loop_flops_every_trip():
    """The cause of the training step's 'missing' flops: XLA's cost model gives a scan of 8 matmuls the flops of
    one; `loop_flops` (XLA's cost model per loop body x trip count) gives 8x, the analytic 2 m n k x 8 within 2%."""
    aot = _bench_import("_aot")
    one, eight = _scan_program(1), _scan_program(8)
    xla_one, xla_eight = (aot._cost(c)[0]["flops"] for c in (one, eight))
    assert xla_eight == pytest.approx(xla_one, rel=0.01)
    flops, unknown = aot.loop_flops(eight.as_text())
    assert unknown == 0 and flops == pytest.approx(8 * 2 * 64 * 256 * 256, rel=0.02)


@pytest.mark.slow  # two model compiles: ~12 s on one core under load
def test_loop_flops_of_scanned_blocks_equal_the_unrolled_model():
    """The tiny model's forward with its blocks scanned (`scan_blocks`) and unrolled: XLA's own count of the
    scanned one is about 1/num_blocks of the unrolled one; with loops counted whole both agree within 3%."""
    import jax
    import jax.numpy as jnp

    aot = _bench_import("_aot")
    from modeling_xlstm_flax.configuration_xlstm_flax import load_preset
    from modeling_xlstm_flax.modeling_flax_xlstm import FlaxXLSTMForCausalLM

    counts = {}
    for scan in (False, True):
        config = load_preset("tiny-mlstm", scan_blocks=scan, num_blocks=3, embedding_dim=128)
        model = FlaxXLSTMForCausalLM(config, _do_init=False)
        params = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model.params_shape_tree)
        compiled = jax.jit(lambda p, ids: model(ids, params=p).logits).lower(
            params, jax.ShapeDtypeStruct((1, 64), jnp.int32)).compile()
        counts[scan] = (aot._cost(compiled)[0]["flops"], aot.loop_flops(compiled.as_text())[0])
    assert counts[True][0] < 0.5 * counts[False][0], counts  # XLA: the scanned blocks' body once
    assert counts[True][1] == pytest.approx(counts[False][1], rel=0.03), counts


def test_trip_count_reads_the_counter_step():
    """A TPU loop without `known_trip_count`: `counter < 16`, the counter starting at 2 (a copy of a constant, as
    TPU writes it) and stepped by 2 (SPMD's windowed matmul loops) runs 7 times; a GPU / CPU loop's recorded count
    is taken as is."""
    aot = _bench_import("_aot")
    hlo = "\n".join([
        "HloModule m",
        "%cond (p: (u32[], f32[4])) -> pred[] {",
        "  %p = (u32[], f32[4]) parameter(0)",
        "  %c = u32[] constant(16)",
        "  %i = u32[] get-tuple-element(%p), index=0",
        "  ROOT %lt = pred[] compare(%i, %c), direction=LT",
        "}",
        "%body (q: (u32[], f32[4])) -> (u32[], f32[4]) {",
        "  %q = (u32[], f32[4]) parameter(0)",
        "  %j = u32[] get-tuple-element(%q), index=0",
        "  %two = u32[] constant(2)",
        "  %next = u32[] add(%j, %two)",
        "  %x = f32[4] get-tuple-element(%q), index=1",
        "  ROOT %t = (u32[], f32[4]) tuple(%next, %x)",
        "}",
        "ENTRY %main (a: f32[4]) -> (u32[], f32[4]) {",
        "  %a = f32[4] parameter(0)",
        "  %start = u32[] constant(2)",
        "  %counter = u32[] copy(%start)",
        "  %init = (u32[], f32[4]) tuple(%counter, %a)",
        "  ROOT %w = (u32[], f32[4]) while(%init), condition=%cond, body=%body",
        "}",
    ])
    assert aot.while_loops(hlo) == [7]  # from 2 to 16 by 2
    comps = aot._parse(hlo)[0]
    assert aot._trip_count('%w = f32[] while(%a), condition=%cond, body=%body, backend_config={"known_trip_count":'
                           '{"n":"5"}}', comps) == 5


def test_hbm_traffic_counts_a_sliced_prefetch_once():
    """XLA's TPU cost model charges every async slice of a VMEM prefetch the whole source; ours charges the slice."""
    hbm_traffic = _bench_import("_aot").hbm_traffic

    whole, half = "bf16[1024,256]{1,0:T(8,128)(2,1)}", "bf16[512,256]{1,0:T(8,128)(2,1)S(1)}"
    vmem = "bf16[1024,256]{1,0:T(8,128)(2,1)S(1)}"
    hlo = "\n".join([
        "HloModule m",
        "ENTRY %main (p: bf16[1024,256]) -> bf16[1024,256] {",
        f"  %p = {whole} parameter(0)",
        f"  %s0 = (({whole}), {half}, s32[]{{:S(2)}}) slice-start(%p), slice={{[0:512], [0:256]}}",
        f"  %s1 = (({whole}), {half}, s32[]{{:S(2)}}) slice-start(%p), slice={{[512:1024], [0:256]}}",
        f"  %d0 = {half} slice-done(%s0)",
        f"  %d1 = {half} slice-done(%s1)",
        f'  %c = {vmem} custom-call(%d0, %d1), custom_call_target="ConcatBitcast"',
        f"  ROOT %f = {whole} fusion(%c), kind=kLoop, calls=%fused",
        "}",
    ])
    weight = 1024 * 256 * 2
    assert hbm_traffic(hlo) == weight + weight  # read once by the two slices, the result written once


def test_build_model_applies_overrides_to_every_kind_of_preset():
    """`_aot_workloads.build_model` sets the overrides whether given a preset name, a PRESETS entry (name, fields)
    or a config object (a copy: the caller's config is not changed); the sLSTM preset has its sLSTM blocks."""
    import jax.numpy as jnp

    workloads = _bench_import("_aot_workloads")
    from modeling_xlstm_flax.configuration_xlstm_flax import load_preset

    config = load_preset("tiny-mlstm")
    for preset in ("tiny-mlstm", ("tiny-mlstm", {"num_heads": 2}), config):
        model, _ = workloads.build_model(preset, dtype=jnp.float32, num_blocks=1, vocab_size=64)
        assert (model.config.num_blocks, model.config.vocab_size) == (1, 64), preset
    assert config.num_blocks != 1
    name, fields = workloads.PRESETS["160M-sLSTM"]
    slstm = load_preset(name, **fields)
    assert slstm.slstm_block_indices == [1, 3, 5, 7, 9, 11] and slstm.slstm_block_config(1).num_heads == 4


def test_ideal_flops_of_a_mixed_stack_match_the_compiled_decode_step():
    """The ideal flops count each sLSTM block's matrix work once (its recurrent, gate, conv and feedforward weights
    in 2 x params) and no mLSTM cell for it: a decode step of an [mLSTM, sLSTM] model at the 160M's width (one
    mLSTM head: a 768 x 768 cell state, so a cell miscounted shows) compiled for this CPU counts 1.00-1.08x of it
    with every loop whole (measured 1.054x; the rest is elementwise work: the state's decay and outer-product add,
    norms, gates, GELU). Counting an mLSTM cell for the sLSTM block too (the old count) gives 0.965x: the ideal
    above what the program does."""
    import jax
    import jax.numpy as jnp

    aot, workloads = _bench_import("_aot"), _bench_import("_aot_workloads")
    from modeling_xlstm_flax import sharding as shd

    fields = dict(workloads.PRESETS["160M-sLSTM"][1], slstm_at=[1])
    model, shapes = workloads.build_model(("xlstm-160m", fields), dtype=jnp.float32, num_blocks=2, vocab_size=256,
                                          num_heads=1, qk_dim_factor=1.0)  # one 768 x 768 mLSTM cell state
    assert model.config.slstm_block_indices == [1]
    mesh = shd.make_mesh(data=1, devices=jax.devices("cpu")[:1])
    prog = workloads.decode_step(model, shapes, mesh, 1)
    compiled = aot.compile_only(prog.fn, prog.args, prog.in_shardings, prog.out_shardings, prog.donate_argnums)
    counted = aot.hlo_figures(compiled.as_text(), prog.loop_trips_hint,
                              compiled.runtime_executable().hlo_modules()[0])["loop_flops"]
    assert 1.0 <= counted / prog.ideal_flops <= 1.08, counted / prog.ideal_flops
