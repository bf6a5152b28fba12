"""Model behaviour: dtypes, scan vs unrolled, gradients, dropout, hidden states, field semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture, max_abs_diff, tiny_config
from modeling_xlstm_flax import FlaxXLSTMForCausalLM, stack_block_params, unstack_block_params


def test_bfloat16_close_to_float32():
    """bfloat16 compute (params float32, gates/norm stats/state float32) vs float32 on upstream's v1 fixture.

    Tolerance: 0.25 max abs on logits soft-capped at 30 (observed ~0.1); greedy argmax agrees on >= 90%."""
    config, params, inputs, logits = load_fixture("v1")
    model = FlaxXLSTMForCausalLM(config, dtype=jnp.bfloat16, _do_init=False)
    out = model(inputs, params=params).logits
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    assert max_abs_diff(out, logits) < 0.25
    assert np.mean(np.argmax(out, -1) == np.argmax(logits, -1)) >= 0.9


@pytest.mark.parametrize("layer_type", ["mlstm_v1", "mlstm"])
def test_scan_blocks_equals_unrolled(layer_type):
    config = tiny_config(layer_type)
    unrolled = FlaxXLSTMForCausalLM(config, seed=0)
    scanned = FlaxXLSTMForCausalLM(tiny_config(layer_type, scan_blocks=True), _do_init=False)
    ids = np.random.RandomState(1).randint(0, config.vocab_size, (2, 12))
    stacked = stack_block_params(unrolled.params, config.num_blocks)
    out_scan = scanned(ids, params=stacked, output_hidden_states=True)
    out_unrolled = unrolled(ids, output_hidden_states=True)
    # same math; XLA fuses the scan body differently, so float32 rounding may differ by a few ulps
    assert max_abs_diff(out_scan.logits, out_unrolled.logits) <= 1e-5
    assert len(out_scan.hidden_states) == len(out_unrolled.hidden_states) == config.num_blocks + 1
    back = unstack_block_params(stacked, config.num_blocks)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: np.array_equal(a, b), back,
                                                         jax.tree_util.tree_map(np.asarray, unrolled.params)))


@pytest.mark.parametrize("layer_type", ["mlstm_v1", "mlstm"])
def test_gradients_finite(layer_type):
    config = tiny_config(layer_type, dropout=0.1)
    model = FlaxXLSTMForCausalLM(config, seed=0)
    ids = np.random.RandomState(2).randint(0, config.vocab_size, (2, 16))

    def loss_fn(params):
        logits = model(ids[:, :-1], params=params, train=True, dropout_rng=jax.random.PRNGKey(0)).logits
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], -1))

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(model.params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) > 0 for g in leaves) >= len(leaves) - 1  # nearly every param learns


def test_dropout_only_in_training():
    config = tiny_config(dropout=0.5, add_embedding_dropout=True)
    model = FlaxXLSTMForCausalLM(config, seed=0)
    ids = np.ones((1, 8), "i4")
    eval_a, eval_b = model(ids).logits, model(ids).logits
    np.testing.assert_array_equal(eval_a, eval_b)
    train = model(ids, train=True, dropout_rng=jax.random.PRNGKey(1)).logits
    assert max_abs_diff(train, eval_a) > 1e-3


@pytest.fixture(scope="module")
def base_model():
    """The preset's model, read only: one instance, so its forward is traced and compiled once for the module."""
    return FlaxXLSTMForCausalLM(tiny_config(), seed=0)


@pytest.mark.parametrize(
    "overrides",
    [dict(tie_word_embeddings=True), dict(add_post_norm=True), dict(add_post_blocks_norm=False),
     dict(add_qk_norm=True), dict(bias=True), dict(ff_type="ffn", ff_act_fn="relu^2"), dict(logits_soft_cap=None),
     dict(lm_head_dtype="bfloat16")],
)
def test_fields_change_params_or_outputs(overrides, base_model):
    """Each field is honoured: it changes the param tree or the logits, and the model stays finite."""
    base = base_model
    model = FlaxXLSTMForCausalLM(tiny_config(**overrides), seed=0)
    ids = np.arange(10)[None] % 97
    out = model(ids).logits
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
    same_tree = jax.tree_util.tree_structure(base.params) == jax.tree_util.tree_structure(model.params)
    assert not same_tree or max_abs_diff(out, base(ids).logits) > 1e-6


def test_tied_model_has_no_lm_head_and_uses_embedding():
    model = FlaxXLSTMForCausalLM(tiny_config(tie_word_embeddings=True, logits_soft_cap=None,
                                             add_post_blocks_norm=False), seed=0)
    assert "lm_head" not in model.params
    ids = np.arange(5)[None]
    hidden = model(ids, output_hidden_states=True).hidden_states[-1]
    expected = np.einsum("bsd,vd->bsv", hidden, model.params["backbone"]["embeddings"]["embedding"])
    assert max_abs_diff(model(ids).logits, expected) <= 1e-5


@pytest.mark.parametrize(
    "overrides",
    [dict(gate_input=g) for g in ("x_mlstm", "x_mlstm_conv", "x_mlstm_conv_act")]
    + [dict(gate_linear_headwise=True), dict(vmap_qk=True), dict(v_dim_factor=2.0), dict(qk_dim_factor=0.5),
       dict(debug_cell=True)],
)
def test_mlstm_layer_options_run(overrides):
    config = tiny_config("mlstm", **overrides)
    model = FlaxXLSTMForCausalLM(config, seed=0)
    out = model(np.arange(12)[None] % 97).logits
    assert out.shape == (1, 12, 97) and np.all(np.isfinite(out))
    layer = model.params["backbone"]["blocks"]["0"]["mlstm_layer"]
    if overrides.get("vmap_qk"):
        assert layer["qk_proj"]["kernel"].shape[0] == 2
    if overrides.get("gate_linear_headwise"):
        assert layer["igate_preact"]["kernel"].shape == (2, 1, config.gate_input_dim // 2)
    if overrides.get("debug_cell"):
        assert "conv1d" not in layer


def test_document_borders_reset_memory():
    """With reset_at_document_boundaries, tokens after a border do not depend on tokens before it
    (exact for every layer type and form: tests/test_masks_borders.py)."""
    config = tiny_config(reset_at_document_boundaries=True)
    model = FlaxXLSTMForCausalLM(config, seed=0)
    rng = np.random.RandomState(4)
    a, b = rng.randint(0, 97, (1, 10)), rng.randint(0, 97, (1, 10))
    a[:, 5:] = b[:, 5:]
    borders = np.zeros((1, 10), bool)
    borders[:, 5] = True
    out_a = model(a, document_borders=borders).logits
    out_b = model(b, document_borders=borders).logits
    assert max_abs_diff(out_a[:, 5:], out_b[:, 5:]) <= 1e-5
    assert max_abs_diff(model(a).logits[:, 5:], model(b).logits[:, 5:]) > 1e-3  # without borders they differ


def test_compiled_programs_shared_per_model_and_never_keep_it_alive():
    """`model(ids)`, `generate` and the sharded steps keep their compiled programs in one per-model cache: two
    `sharded_forward` functions of one model and mesh share one program; the cache does not keep a model alive."""
    import gc
    import weakref

    import optax

    from modeling_xlstm_flax import sharding as sh
    from modeling_xlstm_flax.generation import _COMPILED
    from modeling_xlstm_flax.sharded_steps import (
        init_sharded_optimizer_state, sharded_forward, sharded_generate, sharded_train_step,
    )

    model = FlaxXLSTMForCausalLM(tiny_config(), seed=0)
    mesh = sh.make_mesh(devices=jax.devices()[:1])
    ids = np.random.RandomState(0).randint(3, 97, (2, 8))
    first, second = sharded_forward(model, mesh), sharded_forward(model, mesh)
    assert max_abs_diff(first(model.params, ids), model(ids).logits) <= 1e-5
    assert max_abs_diff(second(model.params, ids), model(ids).logits) <= 1e-5
    assert len(_COMPILED[model]["sharded_forward"]) == 1
    optimizer = optax.sgd(0.1)
    step = sharded_train_step(model, mesh, optimizer, donate=False)
    params = jax.tree_util.tree_map(jnp.asarray, model.params)
    new_params, _, loss = step(params, init_sharded_optimizer_state(optimizer, params, model.config, mesh), ids)
    assert np.isfinite(float(loss)) and max_abs_diff(new_params["lm_head"]["kernel"],
                                                     params["lm_head"]["kernel"]) > 0
    sharded_generate(model, mesh, max_new_tokens=2, pad_token_id=1)(model.params, ids)
    model.generate(ids, max_new_tokens=2, pad_token_id=1)
    assert {"forward", "generate", "sharded_forward", "sharded_train_step", "sharded_generate"} <= set(
        _COMPILED[model])
    ref = weakref.ref(model)
    del model, first, second, step
    gc.collect()
    assert ref() is None
