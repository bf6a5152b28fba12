"""Shared test helpers. The golden fixtures from upstream xlstm-jax live in tests/fixtures (copied unchanged from
the project's shared fixtures; tests/fixtures/README.md says how they were made); never edited."""

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

# Compile speed (the suite's cost is XLA:CPU compiling many small programs), set before jax is imported and
# inherited by pytest-xdist workers and by the subprocesses tests start:
# - LLVM optimisation level 1 with its expensive passes off, and where jaxlib has the option, XLA:CPU's older loop
#   emitters instead of its fusion emitters: each compile faster, same outputs (tests/test_compile_flags.py compares
#   gradients against a process with default flags). CPU time of test_kernels/properties/model/upstream_parity/
#   transformers_parity: level 0 ~90 s, level 1 ~141 s (measured on the shared 2-core machine, so +-30%).
#   Not level 0 (`--xla_backend_optimization_level=0`): with jaxlib 0.10 it made compiled gradients of the parallel and
#   chunkwise forms NaN after one AdamW step (an XLA:CPU code generation fault users at default flags never see:
#   tests/xla_o0_nan_repro.py), and tests must not run under a setting that changes what users get.
# - One persistent compilation cache per test session, in a fresh temporary folder (so every run starts cold and
#   nothing outlives it): an identical program built by another model instance, worker or subprocess is read back
#   instead of compiled again.
def _jaxlib_before(major_minor: tuple) -> bool:
    from importlib.metadata import version

    return tuple(int(part) for part in version("jaxlib").split(".")[:2]) < major_minor


FAST_XLA_FLAGS = ["--xla_backend_optimization_level=1", "--xla_llvm_disable_expensive_passes=true"]
if _jaxlib_before((0, 12)):  # an XLA:CPU option jaxlib 0.12 no longer has (an unknown flag aborts the process)
    FAST_XLA_FLAGS.append("--xla_cpu_use_fusion_emitters=false")
for _flag in FAST_XLA_FLAGS:
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# A CPU suite: with the `aot` extra installed (libtpu, the CUDA plugin), a jax process that may pick any platform
# initialises libtpu and holds its multi-process lockfile, so a second process compiling for a TPU topology
# (tests/test_aot.py) is refused. The tests' processes, their workers and subprocesses run on CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="xlstm-flax-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# For subprocesses that need no PyTorch (transformers imports torch at start-up unless told not to): ~3.5 s less CPU
# per process start (measured: `import modeling_xlstm_flax.hub` 6.9 s -> 3.5 s user+sys)
NO_TORCH = {"USE_TORCH": "0", "USE_TF": "0"}

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "xlstm_jax"
FIXTURE_MODELS = ["v1", "v1_scan", "v2", "v2_ffn"]


def load_fixture(name: str, **overrides):
    """(config, params, inputs, logits) of an upstream fixture, params mapped to our layout."""
    from safetensors.numpy import load_file

    from modeling_xlstm_flax.configuration_xlstm_flax import from_upstream_config
    from modeling_xlstm_flax.loading import upstream_to_flax

    folder = FIXTURES / name
    if not folder.is_dir():
        pytest.fail(f"upstream fixtures missing at {folder} (tests/fixtures is part of the repository)")
    config = from_upstream_config(json.loads((folder / "config.json").read_text()), **overrides)
    params = upstream_to_flax(load_file(str(folder / "params.safetensors")), config)
    return config, params, np.load(folder / "inputs.npy"), np.load(folder / "logits.npy")


SLSTM_FIXTURES = REPO / "tests" / "fixtures" / "slstm"


def load_slstm_fixture(name: str):
    """(library config dict, library state dict, other arrays) of a frozen `xlstm==2.0.6` fixture
    (tests/fixtures/slstm, made by its make_fixtures.py)."""
    meta = json.loads((SLSTM_FIXTURES / f"{name}.json").read_text())
    with np.load(SLSTM_FIXTURES / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    sd = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
    return meta["library_config"], sd, {k: v for k, v in arrays.items() if not k.startswith("sd/")}


def assert_left_padded_generation_is_per_prompt(model, prompts, max_new_tokens: int, what: str = ""):
    """Greedy generation of the left-padded batch of `prompts` gives, row by row, the tokens each prompt generates
    alone (pad id 1). Returns (ids, mask) of the padded batch."""
    ids, mask = left_padded(prompts)
    width = ids.shape[1]
    batch = np.asarray(model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                      pad_token_id=1).sequences)
    for row, p in enumerate(prompts):
        alone = np.asarray(model.generate(p[None], max_new_tokens=max_new_tokens, pad_token_id=1).sequences)
        np.testing.assert_array_equal(batch[row, width:], alone[0, len(p):], err_msg=f"{what} row {row}")
    return ids, mask


def slstm_cuda_layout(sd: dict, heads: int) -> dict:
    """A library state dict's vanilla-layout sLSTM tensors rewritten in the cuda layout (the two layouts are checked
    against the library itself in test_slstm.py::test_both_storage_layouts_give_identical_params_and_round_trip)."""
    from modeling_xlstm_flax.library_params import (
        bias_from_library, bias_to_library, recurrent_kernel_from_library, recurrent_kernel_to_library,
    )

    out = dict(sd)
    for key, value in sd.items():
        if key.endswith("_recurrent_kernel_"):
            out[key] = recurrent_kernel_to_library(recurrent_kernel_from_library(value, "vanilla", heads), "cuda")
        elif key.endswith("slstm_cell._bias_"):
            out[key] = bias_to_library(bias_from_library(value, "vanilla", heads), "cuda")
    return out


def left_padded(prompts, pad_id: int = 1):
    """(ids, mask) (B, max length): the 1-D prompts left-padded with `pad_id`, mask 1 on the prompt tokens."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id)
    mask = np.zeros((len(prompts), width), "i4")
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    return ids, mask


def tiny_config(layer_type: str = "mlstm_v1", **overrides):
    """A small float32 config of either layer type."""
    from modeling_xlstm_flax import load_preset

    name = "tiny-mlstm-v1" if layer_type == "mlstm_v1" else "tiny-mlstm"
    return load_preset(name, **overrides)


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def assert_params_identical(a, b, what: str = "") -> None:
    """Two param trees with the same names, dtypes and values, bit for bit."""
    from flax.traverse_util import flatten_dict

    fa = {"/".join(map(str, k)): np.asarray(v) for k, v in flatten_dict(a).items()}
    fb = {"/".join(map(str, k)): np.asarray(v) for k, v in flatten_dict(b).items()}
    assert sorted(fa) == sorted(fb), what
    for key in fa:
        assert fa[key].dtype == fb[key].dtype, f"{what} {key}"
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=f"{what} {key}")


def config_fields(config) -> dict:
    """The config's fields, without bookkeeping entries that name where it was loaded from."""
    d = config.to_dict()
    for key in ("_name_or_path", "transformers_version"):
        d.pop(key, None)
    return d


def transformers_flax_class(name: str):
    """transformers' Flax class `name` ("FlaxAutoModelForCausalLM", "FlaxLlamaForCausalLM", ...) under
    transformers 4.x; None under 5.x, which removed every Flax class (users load with our classes there)."""
    import transformers

    return getattr(transformers, name, None)


def causal_lm_loader():
    """What a user loads a saved causal LM with: `FlaxAutoModelForCausalLM` (4.x), else `FlaxXLSTMForCausalLM`."""
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    return transformers_flax_class("FlaxAutoModelForCausalLM") or FlaxXLSTMForCausalLM


# pytest-xdist hands out whole test files (`--dist loadfile`) in collection order (setup.cfg's
# `--no-loadscope-reorder`; by default it orders files by their number of tests). The slowest files go first, so that
# both workers stay busy to the end instead of one of them starting a long file last (longest-first scheduling).
# Order: seconds per file of the suite's durations profile (2-core machine), heavy files with few tests included (one
# module fixture or subprocess each: test_aot, test_compile_flags, test_readme); the rest follows alphabetically.
SLOWEST_FILES_FIRST = (
    "test_sharding.py", "test_masks_borders.py", "test_generation.py", "test_data_loss.py", "test_aot.py",
    "test_compile_flags.py", "test_model.py", "test_kernels.py", "test_slstm_model.py", "test_generation_options.py",
    "test_generation_loop.py", "test_training.py", "test_readme.py", "test_reliability.py", "test_conversion.py",
    "test_hub.py", "test_benchmark_smoke.py", "test_slstm.py", "test_checkpoint_matrix.py", "test_device_check.py",
    "test_pipeline.py", "test_hub_cache.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
