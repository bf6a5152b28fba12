"""The typed recurrent cache (`modeling_xlstm_flax/cache.py`): one cache type per block kind, its layout, the host
check, the sharding axes of every field; and the one runtime stack (our base class under both transformers majors).

Shapes here are what the layers compute with (head dims from the config's documented formulas), not values our
own code produced: a mixed [sLSTM, mLSTM, sLSTM] stack of embedding_dim 32, 4 heads, `mlstm` layer (proj factor 2:
inner 64; qk head dim 0.5 * 64 / 4 = 8, v head dim 64 / 4 = 16), conv kernel 4; sLSTM head dim 32 / 4 = 8.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modeling_xlstm_flax.cache import MLSTMCache, SLSTMCache, check_cache, init_cache
from modeling_xlstm_flax.configuration_xlstm_flax import XLSTMFlaxConfig, load_preset


def mixed_config(**overrides) -> XLSTMFlaxConfig:
    fields = dict(vocab_size=32, embedding_dim=32, num_blocks=3, slstm_at=[0, 2], layer_type="mlstm", num_heads=4,
                  compute_dtype="float32", ff_type=None, conv1d_kernel_size=4,
                  slstm_block={"slstm": {"num_heads": 4, "conv1d_kernel_size": 4}})
    return XLSTMFlaxConfig(**{**fields, **overrides})


def test_init_cache_has_one_typed_cache_per_block_of_its_kind():
    config = mixed_config()
    cache = init_cache(config, 2)
    assert [type(c) for c in cache] == [SLSTMCache, MLSTMCache, SLSTMCache]
    NH, DHQK, DHV, inner = config.num_heads, config.qk_head_dim, config.v_head_dim, config.inner_dim
    assert (inner, DHQK, DHV) == (64, 8, 16)  # the config's formulas: inner = 2 D, qk 0.5 inner / NH, v inner / NH
    m = cache[1]
    assert m.c.shape == (2, NH, DHQK, DHV) and m.n.shape == (2, NH, DHQK) and m.m.shape == (2, NH)
    assert m.conv.shape == (2, 3, inner)
    for s in (cache[0], cache[2]):
        assert all(getattr(s, k).shape == (2, 4, 8) for k in "ycnm")
        assert s.conv.shape == (2, 3, 32)
    leaves = jax.tree_util.tree_leaves(cache)
    assert len(leaves) == 5 + 4 + 5 and all(leaf.dtype == jnp.float32 and not np.any(leaf) for leaf in leaves)
    # field access by attribute and by name, as documented; absent fields are not there
    assert cache[1]["c"] is cache[1].c and set(cache[0]) == {"y", "c", "n", "m", "conv"}
    v1 = init_cache(load_preset("tiny-mlstm-v1"), 1)[0]
    assert v1.conv is None and "conv" not in v1 and v1.keys() == ("c", "n", "m")
    with pytest.raises(KeyError, match="MLSTMCache has no field 'conv'"):
        v1["conv"]


def test_scan_blocks_layout_is_one_stacked_cache_and_pytree_behaviour_is_kept():
    config = load_preset("tiny-mlstm", scan_blocks=True)
    cache = init_cache(config, 3)
    assert isinstance(cache, MLSTMCache) and cache.c.shape[:2] == (3, config.num_blocks)
    # pytree: tree_map keeps the type, pickling round-trips, jit passes it through
    doubled = jax.tree_util.tree_map(lambda a: a + 1, cache)
    assert isinstance(doubled, MLSTMCache) and float(doubled.m[0, 0, 0]) == 1.0
    again = pickle.loads(pickle.dumps(doubled))
    assert isinstance(again, MLSTMCache) and np.array_equal(np.asarray(again.conv), np.asarray(doubled.conv))
    assert isinstance(jax.jit(lambda c: c)(cache), MLSTMCache)
    with pytest.raises(ValueError, match="dtype=.*bfloat16.* is not supported: the recurrent state is float32"):
        init_cache(config, 1, dtype=jnp.bfloat16)


@pytest.mark.parametrize("make_bad, message", [
    (lambda c: c[:2], r"past_key_values must be a list of 3 per-block caches .* got a list of 2"),
    (lambda c: [c[1], c[1], c[2]], r"past_key_values\[0\] must be an SLSTMCache with fields \['y', 'c', 'n', 'm', "
                                   r"'conv'\] \(this block's kind.*got an MLSTMCache"),
    (lambda c: [dict(c[0].items())] + c[1:], r"past_key_values\[0\] must be an SLSTMCache .* got a dict"),
    (lambda c: [c[0].replace(conv=None)] + c[1:], r"past_key_values\[0\] must be an SLSTMCache"),
    (lambda c: [c[0], c[1].replace(c=c[1].c[:, :2])] + c[1:2],
     r"past_key_values\[1\]\.c has shape \(2, 2, 8, 16\) \(float32\), expected \(2, 4, 8, 16\)"),
    (lambda c: [c[0].replace(m=c[0].m.astype(jnp.bfloat16))] + c[1:],
     r"past_key_values\[0\]\.m has shape \(2, 4, 8\) \(bfloat16\), expected \(2, 4, 8\) \(float32\)"),
    (lambda c: [c[0].replace(n=np.full((2, 4, 8), np.nan, np.float32))] + c[1:], "holds NaN or infinite values"),
])
def test_host_check_refuses_a_wrong_cache_by_name(make_bad, message):
    config = mixed_config()
    good = init_cache(config, 2)
    check_cache(good, config, 2)  # the right one passes
    with pytest.raises(ValueError, match=message):
        check_cache(make_bad(good), config, 2)
    with pytest.raises(ValueError, match=r"past_key_values\[0\]\.y has shape \(2, 4, 8\) .*expected \(3, 4, 8\)"):
        check_cache(good, config, 3)  # another batch size


def test_model_call_runs_the_host_check():
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM

    model = FlaxXLSTMForCausalLM(load_preset("tiny-mlstm-v1"), seed=0)
    cache = model.init_cache(2)
    with pytest.raises(ValueError, match=r"past_key_values\[0\]\.n has shape"):
        model(np.ones((2, 3), "i4"), past_key_values=[cache[0].replace(n=cache[0].n[:1])] + cache[1:])


@pytest.mark.parametrize("scan", [False, True])
def test_every_cache_field_has_sharding_axes(scan):
    from jax.sharding import PartitionSpec as P

    from modeling_xlstm_flax import sharding as sh

    config = load_preset("tiny-mlstm", scan_blocks=True) if scan else mixed_config()
    cache = jax.eval_shape(lambda: init_cache(config, 2))
    specs = sh.cache_partition_specs(cache, config, {"data": 2, "fsdp": 1, "tensor": 2})
    blocks = [specs] if scan else specs
    for block, shapes in zip(blocks, [cache] if scan else cache):
        assert type(block) is type(shapes) and block.keys() == shapes.keys()
        for key in shapes.keys():
            spec = block[key]
            assert isinstance(spec, P) and len(spec) == len(shapes[key].shape), key
            assert spec[0] == ("data", "fsdp") and (spec[1] is None if scan else True), key
            head_dim = 2 if scan else 1
            want = "tensor" if key != "conv" else None  # conv: (K-1, channels), channels on tensor
            assert spec[head_dim] == want, (key, spec)
            if key == "conv":
                assert spec[-1] == "tensor"


def test_models_are_not_transformers_flax_classes():
    """One runtime stack: under transformers 4.x too, the models are built on the port's own base class, never on
    transformers' `FlaxPreTrainedModel` (transformers 5 has none)."""
    from modeling_xlstm_flax import FlaxXLSTMForCausalLM, FlaxXLSTMModel
    from modeling_xlstm_flax.flax_base import FlaxPreTrainedModel

    try:
        from transformers.modeling_flax_utils import FlaxPreTrainedModel as TransformersFlaxModel
    except ImportError:  # transformers 5
        TransformersFlaxModel = None
    for cls in (FlaxXLSTMForCausalLM, FlaxXLSTMModel):
        assert issubclass(cls, FlaxPreTrainedModel)
        if TransformersFlaxModel is not None:
            assert not issubclass(cls, TransformersFlaxModel)
    # what transformers 4.x's auto classes call on a remote-code model class before its from_pretrained
    class Remote(FlaxXLSTMForCausalLM):
        pass

    Remote.register_for_auto_class(type("FlaxAutoModelForCausalLM", (), {}))
    assert Remote._auto_class == "FlaxAutoModelForCausalLM" and FlaxXLSTMForCausalLM._auto_class is None
    import modeling_xlstm_flax

    assert not hasattr(modeling_xlstm_flax, "hf_compat")
    with pytest.raises(ImportError):
        __import__("modeling_xlstm_flax.hf_compat")
