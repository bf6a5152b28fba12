"""Loading and saving edges that were silently wrong or crashed unclearly: each now loads correctly or ends in a
ValueError naming the problem, and a refused save writes nothing.

Classes: a stored value beyond the range of the dtype it is loaded in (float64 -> float32, float32 -> float16);
a param dtype that is no float dtype (or no dtype); a shard holding a tensor its index maps elsewhere (or does not
list); params of another structure, shape, dtype or with non-finite values given to `save_pretrained` or to the
model; `generation_config.json` loaded, saved, round-tripped and refused when corrupt; a missing `subfolder`, a
PyTorch pickle (`pytorch_model.bin`, whole or truncated), a `max_shard_size` that is no size.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core.frozen_dict import freeze

from conftest import assert_params_identical, tiny_config

KEY = "backbone.out_norm.scale"  # a float tensor every tiny model has (D,)


@pytest.fixture(scope="module")
def model():
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    return FlaxXLSTMForCausalLM(tiny_config(), seed=1)


@pytest.fixture
def saved(model, tmp_path):
    from safetensors.numpy import load_file

    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m", load_file(str(tmp_path / "m" / "model.safetensors"))


def _resave(directory, tensors):
    from safetensors.numpy import save_file

    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "flax"})


def _load(directory, **kwargs):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    return FlaxXLSTMForCausalLM.from_pretrained(directory, _do_init=False, **kwargs)[1]


def _snapshot(directory):
    """{name: bytes} of every file under `directory` (to prove a refused save changed nothing)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- overflow on load
@pytest.mark.parametrize("stored, value, param_dtype, overflows", [
    ("float64", 1e39, None, "float32"),           # float64 checkpoint beyond float32's 3.4e38
    ("float32", 1e5, jnp.float16, "float16"),     # float16 holds at most 65504
    ("float32", 1e5, "float16", "float16"),
    ("float64", -1e300, jnp.bfloat16, "bfloat16"),
])
def test_value_beyond_the_load_dtype_is_refused(saved, stored, value, param_dtype, overflows):
    directory, tensors = saved
    bad = tensors[KEY].astype(stored)
    bad[3] = value
    _resave(directory, {**tensors, KEY: bad})
    with pytest.raises(ValueError, match=rf"model\.safetensors:{KEY}: 1 of {bad.size} values overflow {overflows} "
                                         r"\(largest \|value\| [0-9.e+]+"):
        _load(directory, param_dtype=param_dtype)


def test_values_within_range_load_exactly(saved):
    """The same large values load where the dtype holds them (the refusal is about range, not size)."""
    directory, tensors = saved
    bad = tensors[KEY].copy()
    bad[3] = 60000.0
    _resave(directory, {**tensors, KEY: bad.astype(np.float64)})
    np.testing.assert_array_equal(np.asarray(_load(directory)["backbone"]["out_norm"]["scale"]), bad)
    half = _load(directory, param_dtype=jnp.float16)["backbone"]["out_norm"]["scale"]
    np.testing.assert_array_equal(np.asarray(half), bad.astype(np.float16))


@pytest.mark.parametrize("param_dtype", [jnp.int8, "int8", np.int32, bool, "bogus", "complex64", 3, "float8_e4m3fn",
                                         "float64"])
def test_param_dtype_that_is_no_float_dtype_is_refused(saved, param_dtype):
    """float64 needs 64-bit JAX, which the tests run without (JAX would keep float32 and overflow to inf)."""
    directory, _ = saved
    with pytest.raises(ValueError, match=r"^param_dtype=.*(is not a dtype params can have|needs 64-bit JAX)"):
        _load(directory, param_dtype=param_dtype)


def test_compute_dtype_that_is_no_float_dtype_is_refused(saved):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    directory, _ = saved
    for dtype in ("bogus", jnp.int32):
        with pytest.raises(ValueError, match=r"^dtype=.* is not a dtype params can have"):
            FlaxXLSTMForCausalLM.from_pretrained(directory, dtype=dtype)
        with pytest.raises(ValueError, match=r"^dtype="):
            FlaxXLSTMForCausalLM(tiny_config(), dtype=dtype, _do_init=False)


# ---------------------------------------------------------------------------------------------- shards and index
def _sharded(model, tmp_path, safe: bool):
    model.save_pretrained(tmp_path, max_shard_size="8KB", safe_serialization=safe)
    index = json.loads((tmp_path / ("model.safetensors.index.json" if safe else
                                    "flax_model.msgpack.index.json")).read_text())["weight_map"]
    assert len(set(index.values())) > 2
    return index


def _add_to_shard(path, name, value, safe: bool):
    if safe:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(path))
        tensors[name] = value
        save_file(tensors, str(path), metadata={"format": "flax"})
    else:
        from flax.serialization import msgpack_restore, msgpack_serialize
        from flax.traverse_util import flatten_dict, unflatten_dict

        flat = flatten_dict(msgpack_restore(path.read_bytes()), sep="/")
        flat[name] = value
        path.write_bytes(msgpack_serialize(unflatten_dict(flat, sep="/")))


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "msgpack"])
@pytest.mark.parametrize("case", ["second_copy", "unlisted"])
def test_shard_holding_what_its_index_maps_elsewhere_is_refused(model, tmp_path, safe, case):
    index = _sharded(model, tmp_path, safe)
    tensor, home = next(iter(index.items()))
    other = next(f for f in sorted(set(index.values())) if f != home)
    name = tensor if case == "second_copy" else tensor + "_extra"
    _add_to_shard(tmp_path / other, name, np.full(model.params["backbone"]["out_norm"]["scale"].shape
                                                  if tensor.endswith("out_norm.scale") else (3,), 7.0, np.float32),
                  safe)
    said = f"the index maps it to {home}" if case == "second_copy" else "not in the index"
    with pytest.raises(ValueError, match=rf"{other}: holds 1 tensors that index .* does not map to this file.*\n"
                                         rf"    {name} \({said}\)"):
        _load(tmp_path)


def test_sharded_save_loads_back_exactly(model, tmp_path):
    """Control for the shard checks: an untouched sharded folder (safetensors and msgpack) loads bit for bit."""
    _sharded(model, tmp_path / "st", True)
    _sharded(model, tmp_path / "mp", False)
    assert_params_identical(_load(tmp_path / "st"), model.params)
    assert_params_identical(_load(tmp_path / "mp"), model.params)


# ---------------------------------------------------------------------------------------------- params given
def _other_params():
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    return FlaxXLSTMForCausalLM(tiny_config(embedding_dim=32, num_heads=2), seed=2).params


def _nan(params):
    flat = jax.tree_util.tree_map(np.array, params)
    flat["backbone"]["out_norm"]["scale"][0] = np.nan
    return flat


def _inf(params):
    flat = jax.tree_util.tree_map(np.array, params)
    flat["lm_head"]["kernel"][0, 0] = -np.inf
    return flat


BAD_PARAMS = {
    "another_model": (lambda p: _other_params(), r"does not fit its config:\n  .*shape mismatches"),
    "wrapped": (lambda p: {"params": p}, r"unexpected tensors"),
    "missing_head": (lambda p: {"backbone": p["backbone"]}, r"1 missing tensors:\n    lm_head/kernel"),
    "integer": (lambda p: jax.tree_util.tree_map(lambda x: np.asarray(x).astype(np.int32), p),
                r"params are not floating point"),
    "empty": (lambda p: {}, r"an empty param tree"),
    "not_a_tree": (lambda p: np.zeros(3), r"expected the model's param tree"),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS) + ["nan", "inf"])
def test_save_pretrained_refuses_bad_params_before_writing(model, tmp_path, case):
    make, message = BAD_PARAMS.get(case, (_nan if case == "nan" else _inf, r"params hold NaN or inf values"))
    model.save_pretrained(tmp_path / "old")
    before = _snapshot(tmp_path / "old")
    for target in (tmp_path / "old", tmp_path / "new"):
        with pytest.raises(ValueError, match=r"(?s)^save_pretrained\(params=\.\.\.\) of FlaxXLSTMForCausalLM.*"
                                             + message):
            model.save_pretrained(target, params=make(model.params))
    assert _snapshot(tmp_path / "old") == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("case", sorted(set(BAD_PARAMS) - {"not_a_tree"}))
def test_model_call_refuses_params_that_are_not_its_own(model, case):
    make, message = BAD_PARAMS[case]
    ids = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match=r"(?s)^params passed to FlaxXLSTMForCausalLM.*" + message):
        model(ids, params=make(model.params))


def test_params_set_on_the_model_are_checked_too(model):
    """Params assigned to `model.params` (transformers 4.x's setter checks only missing keys) run only if they fit."""
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    other = FlaxXLSTMForCausalLM(tiny_config(), seed=3)
    other.params = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(np.int32), other.params)
    with pytest.raises(ValueError, match=r"^FlaxXLSTMForCausalLM\.params: .*not floating point"):
        other(np.zeros((1, 3), np.int32))


def test_model_call_and_generate_use_the_params_given(model):
    """Control: params of the same shapes (another seed, frozen or not) are used, not the model's own."""
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    other = FlaxXLSTMForCausalLM(tiny_config(), seed=9)
    ids = np.arange(6, dtype=np.int32)[None] % model.config.vocab_size
    expected = np.asarray(other(ids).logits)
    assert not np.allclose(expected, np.asarray(model(ids).logits))
    np.testing.assert_array_equal(np.asarray(model(ids, params=freeze(other.params)).logits), expected)
    as_int = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(np.int32), other.params)
    with pytest.raises(ValueError, match="not floating point"):  # a tree accepted before does not vouch for this
        model(ids, params=as_int)
    with pytest.raises(ValueError, match=r"(?s)params passed to FlaxXLSTMForCausalLM.*shape mismatches"):
        model.generate(ids, params=_other_params(), max_new_tokens=2)


# ---------------------------------------------------------------------------------------------- generation_config
def test_generation_config_is_loaded_saved_and_used(model, tmp_path):
    """A generation_config.json written by transformers itself is read on load; changes to
    model.generation_config survive save -> load; generate uses the loaded fields."""
    from transformers import GenerationConfig

    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    model.save_pretrained(tmp_path)
    written = GenerationConfig(max_new_tokens=4, do_sample=True, temperature=3.0, top_k=7, eos_token_id=None,
                               pad_token_id=0)
    written.save_pretrained(tmp_path)  # transformers' own file, replacing ours
    loaded = FlaxXLSTMForCausalLM.from_pretrained(tmp_path)
    got = loaded.generation_config
    assert (got.max_new_tokens, got.do_sample, got.temperature, got.top_k) == (4, True, 3.0, 7)
    assert FlaxXLSTMForCausalLM.from_pretrained(tmp_path, _do_init=False)[0].generation_config.top_k == 7

    ids = np.array([[3, 5, 7]], np.int32)
    rng = jax.random.PRNGKey(11)
    sampled = np.asarray(loaded.generate(ids, prng_key=rng).sequences)
    assert sampled.shape == (1, 3 + 4)  # max_new_tokens from the file
    explicit = np.asarray(loaded.generate(ids, generation_config=written, prng_key=rng).sequences)
    np.testing.assert_array_equal(sampled, explicit)
    greedy = np.asarray(loaded.generate(ids, prng_key=rng, do_sample=False).sequences)
    assert not np.array_equal(sampled, greedy)  # do_sample/temperature from the file are in effect

    loaded.generation_config.max_new_tokens = 2
    loaded.generation_config.top_k = 3
    loaded.save_pretrained(tmp_path / "again")
    again = FlaxXLSTMForCausalLM.from_pretrained(tmp_path / "again").generation_config
    assert (again.max_new_tokens, again.top_k, again.do_sample, again.temperature) == (2, 3, True, 3.0)
    on_disk = GenerationConfig.from_pretrained(tmp_path / "again")  # transformers reads what we wrote
    assert (on_disk.max_new_tokens, on_disk.top_k) == (2, 3)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "", '{"max_new_tokens": 2'])
def test_corrupt_generation_config_is_refused(model, tmp_path, text):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    model.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(text)
    with pytest.raises(ValueError, match=r"generation_config\.json: not a valid generation config \(.+\); fix or "
                                         "delete it"):
        FlaxXLSTMForCausalLM.from_pretrained(tmp_path)


def test_folder_without_generation_config_uses_the_model_config(model, tmp_path):
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    model.save_pretrained(tmp_path)
    os.remove(tmp_path / "generation_config.json")
    loaded = FlaxXLSTMForCausalLM.from_pretrained(tmp_path)
    assert loaded.generation_config.eos_token_id == model.config.eos_token_id
    assert loaded.generation_config.max_new_tokens is None


# ---------------------------------------------------------------------------------------------- unclear crashes
def test_missing_subfolder_is_named(saved):
    directory, _ = saved
    with pytest.raises(ValueError, match=r"^subfolder='nope': no such folder in the model"):
        _load(directory, subfolder="nope")


@pytest.mark.parametrize("truncate", [False, True])
def test_pytorch_pickle_gets_the_convert_first_error(saved, truncate):
    """Under both transformers majors (no torch needed): the pickle is never opened, whole or truncated."""
    directory, _ = saved
    for name in ("model.safetensors",):
        os.remove(directory / name)
    data = b"PK\x03\x04" + b"\x00" * 200
    (directory / "pytorch_model.bin").write_bytes(data[:50] if truncate else data)
    with pytest.raises(ValueError, match=r"holds PyTorch pickle weights \['pytorch_model\.bin'\].*convert them "
                                         r"to safetensors first.*safe_serialization=True.*save_model"):
        _load(directory)


@pytest.mark.parametrize("size", [2.5, True, None, float("nan"), "2.5GB", "lots", 0, -1])
def test_max_shard_size_that_is_no_size_is_refused_before_writing(model, tmp_path, size):
    with pytest.raises(ValueError, match=r"^max_shard_size="):
        model.save_pretrained(tmp_path / "new", max_shard_size=size)
    assert not (tmp_path / "new").exists()
