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
    from modeling_xlstm_flax.sharded_steps import (
        init_sharded_optimizer_state, sharded_forward, sharded_generate, sharded_train_step,
    )
    from test_generation import compiles

    model = FlaxXLSTMForCausalLM(tiny_config(), seed=0)
    mesh = sh.make_mesh(devices=jax.devices()[:1])
    ids = np.random.RandomState(0).randint(3, 97, (2, 8))
    first, second = sharded_forward(model, mesh), sharded_forward(model, mesh)
    assert max_abs_diff(first(model.params, ids), model(ids).logits) <= 1e-5
    with compiles() as built:
        assert max_abs_diff(second(model.params, ids), model(ids).logits) <= 1e-5
    assert built == []  # the second function reuses the first one's program
    optimizer = optax.sgd(0.1)
    params = jax.tree_util.tree_map(jnp.asarray, model.params)
    opt_state = init_sharded_optimizer_state(optimizer, params, model.config, mesh)

    def every_program():
        step = sharded_train_step(model, mesh, optimizer, donate=False)
        new_params, _, loss = step(params, opt_state, ids)
        assert np.isfinite(float(loss)) and max_abs_diff(new_params["lm_head"]["kernel"],
                                                         params["lm_head"]["kernel"]) > 0
        sharded_generate(model, mesh, max_new_tokens=2, pad_token_id=1)(model.params, ids)
        model.generate(ids, max_new_tokens=2, pad_token_id=1)
        return step

    every_program()
    with compiles() as built:  # new step/generate functions of the same model: the kept programs
        step = every_program()
    assert built == []
    ref = weakref.ref(model)
    del model, first, second, step, every_program
    gc.collect()
    assert ref() is None


# one changed value per init-free field (configuration_xlstm_flax.INIT_FREE_FIELDS)
_INIT_FREE_CHANGES = {
    "sequence_kernel": "recurrent", "chunk_size": 8, "prefill_segment_size": 5,
    "context_length": 64, "dropout": 0.1, "reset_at_document_boundaries": True, "reset_fgate_value": -20.0,
    "weight_decay_on_embedding": True, "bos_token_id": 3, "eos_token_id": 4, "pad_token_id": 5,
    "gate_soft_cap": 7.0, "logits_soft_cap": 11.0, "cell_eps": 1e-5, "norm_eps": 1e-5, "block_norm_eps": 1e-5,
    "cell_norm_eps": 1e-5, "compute_dtype": "bfloat16", "gate_dtype": "bfloat16", "lm_head_dtype": "bfloat16",
}


def _init_program(config) -> str:
    """The init's jaxpr reduced to what computes the params (dead-code elimination drops the forward pass flax runs
    to create them): equal text, equal random params for every seed."""
    from jax._src.interpreters import partial_eval as pe

    from modeling_xlstm_flax.xlstm_layers import FlaxXLSTMForCausalLMModule

    module = FlaxXLSTMForCausalLMModule(config, dtype=jnp.float32)
    closed = jax.make_jaxpr(lambda rng: module.init({"params": rng, "dropout": rng}, jnp.zeros((1, 1), "i4"))
                            ["params"])(jax.random.PRNGKey(0))
    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return str(jaxpr)


@pytest.mark.parametrize("base,each", [(dict(layer_type="mlstm_v1"), True), (dict(layer_type="mlstm"), True),
                                       (dict(layer_type="mlstm", slstm_at=[1]), False),
                                       (dict(layer_type="mlstm_v1", scan_blocks=True), False)])
def test_init_free_fields_do_not_change_the_init(base, each):
    """Models whose configs differ only in INIT_FREE_FIELDS share one compiled init (modeling_flax_xlstm.
    _compiled_init), which is right only if none of these fields reaches the computation of the params: each
    field changed alone (per layer type), and all together (also with sLSTM blocks and scanned blocks), leaves that
    computation as it is; an init-defining field (a control) changes it."""
    from modeling_xlstm_flax.configuration_xlstm_flax import INIT_FREE_FIELDS

    assert set(_INIT_FREE_CHANGES) == INIT_FREE_FIELDS
    base = dict(base)
    config = tiny_config(base.pop("layer_type"), **base)
    reference = _init_program(config)
    for field, value in _INIT_FREE_CHANGES.items():
        assert getattr(config, field) != value, field
        if each:
            assert _init_program(tiny_config(config.layer_type, **{**base, field: value})) == reference, field
    assert _init_program(tiny_config(config.layer_type, **base, **_INIT_FREE_CHANGES)) == reference
    assert _init_program(tiny_config(config.layer_type, **{**base, "bias": True})) != reference  # control
    assert _init_program(tiny_config(config.layer_type, **{**base, "init_distribution": "uniform"})) != reference


def test_models_differing_in_init_free_fields_share_one_init_program():
    """One init compile for a chunkwise and a recurrent model of one size; same params for one seed."""
    from test_generation import compiles

    first = FlaxXLSTMForCausalLM(tiny_config("mlstm", num_blocks=1, chunk_size=4, sequence_kernel="chunkwise"),
                                 seed=3)
    with compiles() as built:
        second = FlaxXLSTMForCausalLM(tiny_config("mlstm", num_blocks=1, sequence_kernel="recurrent",
                                                  logits_soft_cap=5.0), seed=3)
    assert not [name for name in built if "lambda" in str(name)], built  # only eager host-side ops may compile
    for a, b in zip(jax.tree_util.tree_leaves(first.params), jax.tree_util.tree_leaves(second.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
