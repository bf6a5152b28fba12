"""transformers' Flax conventions: hidden states as transformers' PyTorch xLSTM returns them, the `__call__`
keywords and positional order of its Flax causal LMs, `Flax...Module` class names, gradient checkpointing."""

import copy
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import max_abs_diff, tiny_config, transformers_flax_class
from modeling_xlstm_flax import FlaxXLSTMForCausalLM, FlaxXLSTMModel, stack_block_params

TOL = 1e-4


def _model_and_params(config, seed=0):
    """A model without init and random params of its tree, normal(0, 0.1) (much cheaper than an init on CPU)."""
    model = FlaxXLSTMForCausalLM(config, _do_init=False)
    shapes = jax.eval_shape(lambda rng: model.init_weights(rng, (1, 1)), jax.random.PRNGKey(0))
    rng = np.random.RandomState(seed)
    return model, jax.tree_util.tree_map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


# ---------------------------------------------------------------------------------------------- hidden states
@pytest.fixture(scope="module")
def pt_and_flax(tmp_path_factory):
    """transformers' PyTorch xLSTMForCausalLM with perturbed random weights and our model loaded from it.
    (Its known limits: hidden_size * qk_dim_factor a multiple of 64, sequences shorter than chunk_size.)"""
    torch = pytest.importorskip("torch")
    from transformers import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(5)
    config = xLSTMConfig(vocab_size=101, hidden_size=128, num_hidden_layers=2, num_heads=2, qk_dim_factor=0.5,
                         chunk_size=128, mode="inference", autocast_kernel_dtype="float32", dtype="float32")
    pt = xLSTMForCausalLM(config).eval()
    with torch.no_grad():
        for param in pt.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    path = tmp_path_factory.mktemp("pt_xlstm")
    pt.save_pretrained(path)
    return (pt, *FlaxXLSTMForCausalLM.from_pretrained(path, dtype=jnp.float32, _do_init=False))


@pytest.mark.parametrize("scan_blocks", [False, True])
def test_hidden_states_match_pytorch_xlstm(pt_and_flax, scan_blocks):
    """Both model classes return transformers' PyTorch tuple: each block's output, then the final normalised
    state (== last_hidden_state); NB + 1 entries, the embeddings not among them."""
    import torch

    pt, lm, params = pt_and_flax
    config = lm.config
    if scan_blocks:
        config = copy.deepcopy(config)
        config.scan_blocks = True
        params = stack_block_params(params, config.num_blocks)
    ids = np.random.RandomState(7).randint(0, config.vocab_size, (2, 19))
    with torch.no_grad():
        ref = pt(torch.tensor(ids), output_hidden_states=True)
    ref_hidden = [h.numpy() for h in ref.hidden_states]
    assert len(ref_hidden) == config.num_blocks + 1

    lm = FlaxXLSTMForCausalLM(config, dtype=jnp.float32, _do_init=False)
    base = FlaxXLSTMModel(config, dtype=jnp.float32, _do_init=False)

    @jax.jit
    def run(params, ids):  # the bare model in tuple form: (last_hidden_state, hidden_states), as transformers' Flax
        return (lm(ids, params=params, output_hidden_states=True),
                base(ids, params=params["backbone"], output_hidden_states=True, return_dict=False))

    ours_lm, (last, base_hidden) = run(params, ids)
    assert max_abs_diff(ours_lm.logits, ref.logits.numpy()) <= TOL
    for hidden in (ours_lm.hidden_states, base_hidden):
        assert len(hidden) == len(ref_hidden)
        for i, (h, r) in enumerate(zip(hidden, ref_hidden)):
            assert h.shape == r.shape == (2, 19, config.hidden_size)
            assert max_abs_diff(h, r) <= TOL, i
    np.testing.assert_array_equal(base_hidden[-1], last)


# ---------------------------------------------------------------------------------------------- __call__
def test_call_signature_follows_transformers_flax_causal_lm():
    """Our positional parameters follow transformers' Flax causal LMs (4.x; transformers 5 has none to compare)."""
    ours = list(inspect.signature(FlaxXLSTMForCausalLM.__call__).parameters.values())
    keyword_only = {p.name for p in ours if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {"document_borders", "logits_to_keep", "use_cache"} <= keyword_only
    references = [transformers_flax_class(name) for name in ("FlaxLlamaForCausalLM", "FlaxGPT2LMHeadModel")]
    if None in references:
        pytest.skip("transformers 5 has no Flax models to hold the positional parameters against")
    for reference in references:
        expected = [n for n in inspect.signature(reference.__call__).parameters
                    if n not in ("token_type_ids", "head_mask", "encoder_hidden_states", "encoder_attention_mask")]
        assert [p.name for p in ours[: len(expected)]] == expected


def test_call_keywords_position_ids_attentions_use_cache():
    model, params = _model_and_params(tiny_config())
    ids = np.random.RandomState(0).randint(0, 97, (2, 9))
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    want = model(ids, attention_mask=mask, params=params).logits
    # positional order: (input_ids, attention_mask, position_ids, params); position_ids are ignored
    positions = np.broadcast_to(np.arange(9), ids.shape)
    np.testing.assert_array_equal(model(ids, mask, positions, params).logits, want)
    np.testing.assert_array_equal(model(ids, mask, positions[:, ::-1], params, output_attentions=False).logits, want)
    with pytest.raises(ValueError, match="no attention"):
        model(ids, params=params, output_attentions=True)

    # use_cache=True starts from a zero state and returns the new one; False returns none
    cached = model(ids, attention_mask=mask, params=params, use_cache=True)
    explicit = model(ids, attention_mask=mask, params=params, past_key_values=model.init_cache(2))
    assert max_abs_diff(cached.logits, want) <= 1e-5
    for a, b in zip(jax.tree_util.tree_leaves(cached.past_key_values),
                    jax.tree_util.tree_leaves(explicit.past_key_values)):
        assert max_abs_diff(a, b) <= 1e-5
    assert "past_key_values" not in model(ids, params=params)
    assert "past_key_values" not in model(ids, params=params, past_key_values=model.init_cache(2), use_cache=False)
    with pytest.raises(TypeError):  # document_borders is keyword-only
        model(ids, None, None, params, None, None, False, None, None, None, np.zeros(ids.shape, bool))


# ---------------------------------------------------------------------------------------------- class names
def test_module_class_names_follow_transformers_convention():
    """transformers' naming test: `Flax<X>Model` -> module `Flax<X>Module`, `Flax<X>ForCausalLM` ->
    `Flax<X>ForCausalLMModule`, in the model's own module."""
    import importlib

    for model_class in (FlaxXLSTMModel, FlaxXLSTMForCausalLM):
        name = model_class.__name__
        module_name = name[:-5] + "Module" if name.endswith("Model") else name + "Module"
        module_cls = getattr(importlib.import_module(model_class.__module__), module_name)
        assert model_class.module_class is module_cls and module_cls.__name__ == module_name


# ---------------------------------------------------------------------------------------------- gradient checkpointing
def _loss_and_grads(model, params, ids):
    def loss_fn(p):
        logits = model(ids[:, :-1], params=p, train=True).logits
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1))

    return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("layer_type", ["mlstm_v1", "mlstm"])
@pytest.mark.parametrize("scan_blocks", [False, True])
def test_gradient_checkpointing_same_loss_and_gradients(layer_type, scan_blocks):
    # remat wraps whole blocks, whatever the kernel form: the mlstm cases take the (cheaper to compile) quadratic one
    kernel = "chunkwise" if layer_type == "mlstm_v1" else "parallel_stabilized"
    config = tiny_config(layer_type, scan_blocks=scan_blocks, sequence_kernel=kernel)
    model, params = _model_and_params(config)
    ids = np.random.RandomState(3).randint(0, config.vocab_size, (2, 9))
    assert not model.gradient_checkpointing
    loss, grads = _loss_and_grads(model, params, ids)

    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    loss_gc, grads_gc = _loss_and_grads(model, params, ids)
    assert abs(float(loss) - float(loss_gc)) <= 1e-5
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(grads_gc)
    assert max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(max_abs_diff, grads, grads_gc))) <= 1e-5
    # the blocks really run under remat
    assert "remat" in str(jax.make_jaxpr(lambda p: model(ids, params=p, train=True).logits)(params))

    # the config field builds the same thing, with the same param tree
    from_config = FlaxXLSTMForCausalLM(tiny_config(layer_type, scan_blocks=scan_blocks, sequence_kernel=kernel,
                                                   gradient_checkpointing=True), _do_init=False)
    assert from_config.gradient_checkpointing
    shapes = jax.eval_shape(lambda rng: from_config.init_weights(rng, (1, 1)), jax.random.PRNGKey(0))
    assert jax.tree_util.tree_map(lambda a: a.shape, shapes) == jax.tree_util.tree_map(lambda a: a.shape, params)
    model.disable_gradient_checkpointing()
    assert not model.gradient_checkpointing
    assert "remat" not in str(jax.make_jaxpr(lambda p: model(ids, params=p).logits)(params))


def test_gradient_checkpointing_with_dropout_and_cache():
    """Dropout draws the same masks under remat; the cached (generation) path gives the same state.
    (`generate` calls the same cached path; tests/test_generation.py covers it.)"""
    model, params = _model_and_params(tiny_config("mlstm", dropout=0.2, add_embedding_dropout=True))
    ids = np.random.RandomState(4).randint(3, 97, (2, 8))

    def run():  # a new function each time, so jit traces the current module
        def fn(params, rng):
            train = model(ids, params=params, train=True, dropout_rng=rng).logits
            return train, model(ids, params=params, past_key_values=model.init_cache(2)).past_key_values

        return jax.jit(fn)(params, jax.random.PRNGKey(1))

    want = run()
    model.enable_gradient_checkpointing()
    assert "remat" in str(jax.make_jaxpr(lambda p: model(ids, params=p).logits)(params))
    got = run()
    assert max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(max_abs_diff, got, want))) <= 1e-5


def test_gradient_checkpointing_config_field():
    from modeling_xlstm_flax import XLSTMFlaxConfig

    assert XLSTMFlaxConfig().gradient_checkpointing is False
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        tiny_config(gradient_checkpointing="yes")
    config = tiny_config(gradient_checkpointing=True)
    assert XLSTMFlaxConfig.from_dict(config.to_dict()).gradient_checkpointing is True
    # an explicit constructor argument wins over the config
    assert not FlaxXLSTMForCausalLM(config, _do_init=False, gradient_checkpointing=False).gradient_checkpointing
