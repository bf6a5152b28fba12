"""Compile-only checks for a TPU and an NVIDIA GPU that are not attached (the `aot` extra: libtpu and the jax-cuda12
plugin): a small config compiles for TPU v5e-8 and one H200 (prefill, decode step, generate); the decode step moves
no more than 1.3x the bytes it must (weights read once, recurrent cache read and written, logits); a prefill's
temp memory does not grow with the prompt (4x the tokens within 1.5x the temp). Nothing runs on a device: the
figures are XLA's accounting of the compiled programs (`benchmarks/_aot.py`).

Runs in a subprocess: the CUDA plugin registers only when JAX_PLATFORMS=cpu is set before jax starts, and the test
session's jax is already started.
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
    from _aot import TARGETS, analyse, compile_only, hbm_traffic, target_devices
    from _aot_workloads import build_model, inference_mesh, prefill, decode_step, generate

    model, shapes = build_model("xlstm-7b", dtype=jnp.bfloat16, **{small!r})
    out = {{}}
    for target in ("v5e-8", "h200"):
        mesh = inference_mesh(model.config, target_devices(TARGETS[target]))
        progs = {{"prefill-1x": prefill(model, shapes, mesh, 1, 1024),
                  "prefill-4x": prefill(model, shapes, mesh, 1, 4096),
                  "decode-b1": decode_step(model, shapes, mesh, 1), "decode-b8": decode_step(model, shapes, mesh, 8),
                  "generate": generate(model, shapes, mesh, 1, 300, 4)}}
        for name, p in progs.items():
            compiled = compile_only(p.fn, p.args, p.in_shardings, p.out_shardings, p.donate_argnums)
            a = analyse(compiled)
            a["hbm_bytes"] = hbm_traffic(compiled.as_text())
            a["ideal_bytes"] = p.ideal_bytes
            out[target + "/" + name] = a
    print("RESULT", json.dumps(out))
""")


# the module fixture compiles 10 programs (~55 s of one idle core): the tests that read it are marked slow
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
@pytest.mark.parametrize("target", ["v5e-8", "h200"])
def test_prefill_temp_does_not_grow_with_prompt(figures, target):
    """A prefill runs the prompt segment by segment: 4x the tokens keeps temp memory within 1.5x."""
    small, large = figures[f"{target}/prefill-1x"]["temp_bytes"], figures[f"{target}/prefill-4x"]["temp_bytes"]
    assert large <= 1.5 * small, f"{target}: temp {small} B at 1024 tokens, {large} B at 4096"


def test_hbm_traffic_counts_a_sliced_prefetch_once():
    """XLA's TPU cost model charges every async slice of a VMEM prefetch the whole source; ours charges the slice."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _aot import hbm_traffic

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
