"""Input edges of the model call and the sharded steps: the model's host-side checks guard every entry point
(sharded steps included), donated params are named, the loss never turns a bad target into a finite number, and
mesh sizes / block counts / seeds are checked by name. Sharded steps run on a 1-device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from modeling_xlstm_flax import FlaxXLSTMForCausalLM
from modeling_xlstm_flax import sharded_steps as steps
from modeling_xlstm_flax import sharding as sh
from modeling_xlstm_flax.xlstm_layers import stack_block_params, unstack_block_params

V = 97  # the tiny presets' vocabulary


@pytest.fixture(scope="module")
def model():
    return FlaxXLSTMForCausalLM(tiny_config(), seed=0)


@pytest.fixture(scope="module")
def mesh():
    return sh.make_mesh(devices=jax.devices()[:1])


def _entry_points(model, mesh):
    """name -> f(params, ids, mask) for every sharded entry point (checks run before anything compiles)."""
    opt = optax.sgd(0.1)
    opt_state = steps.init_sharded_optimizer_state(opt, model.params, model.config, mesh)
    forward, loss = steps.sharded_forward(model, mesh), steps.sharded_loss_and_grad(model, mesh)
    train = steps.sharded_train_step(model, mesh, opt, donate=False)
    generate = steps.sharded_generate(model, mesh, max_new_tokens=2)
    return {
        "forward": lambda p, ids, mask=None: forward(p, ids, attention_mask=mask),
        "loss_and_grad": lambda p, ids, mask=None: loss(p, ids, attention_mask=mask),
        "train_step": lambda p, ids, mask=None: train(p, opt_state, ids, attention_mask=mask),
        "generate": lambda p, ids, mask=None: generate(p, ids, attention_mask=mask),
        "model": lambda p, ids, mask=None: model(ids, attention_mask=mask, params=p),
    }


BAD_IDS = [
    (np.array([[1, V]]), r"input_ids\[0, 1\] = 97 is outside the vocabulary range \[0, 97\)"),
    (np.array([[1, -1]]), r"input_ids\[0, 1\] = -1 is outside the vocabulary range"),
    (np.array([[1.0, 2.7]]), "input_ids must be integer token ids, got dtype float64"),
    (jnp.array([[1, 500]]), r"= 500 is outside the vocabulary range"),  # a concrete device array: checked too
    ([[1, 2], [3]], "input_ids is a ragged list"),
]


@pytest.mark.parametrize("entry", ["forward", "loss_and_grad", "train_step", "generate", "model"])
def test_every_entry_point_refuses_bad_ids_and_masks(model, mesh, entry):
    """The sharded steps used to clamp out-of-range ids and truncate float ids: the model's checks now run first."""
    call = _entry_points(model, mesh)[entry]
    for ids, message in BAD_IDS:
        with pytest.raises(ValueError, match=message):
            call(model.params, ids)
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"attention_mask\[0, 2\] = 2; allowed values are 0 and 1"):
        call(model.params, ids, np.array([[1, 1, 2]]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2\), but input_ids has shape \(1, 3\)"):
        call(model.params, ids, np.array([[1, 1]]))


def test_sharded_generate_refuses_right_padding(model, mesh):
    generate = steps.sharded_generate(model, mesh, max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask row 1 ends with padding .* pad prompts on the left"):
        generate(model.params, np.array([[1, 2, 3], [4, 5, 6]]), np.array([[1, 1, 1], [1, 1, 0]]))


def test_donated_params_are_named(mesh):
    """After a donating train step the old params and optimizer state are freed: reusing them is a clear error
    (in the step, in the model call), and the returned ones work."""
    model = FlaxXLSTMForCausalLM(tiny_config(), seed=1)
    opt = optax.sgd(0.1, momentum=0.9)  # a state with arrays
    params = sh.shard_params(model.params, model.config, mesh)
    opt_state = steps.init_sharded_optimizer_state(opt, params, model.config, mesh)
    step = steps.sharded_train_step(model, mesh, opt)  # donate=True
    ids = np.random.RandomState(0).randint(0, V, (2, 8))
    new_params, new_state, loss = step(params, opt_state, ids)
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="params holds deleted arrays: they were donated to an earlier call"):
        step(params, new_state, ids)
    with pytest.raises(ValueError, match="opt_state holds deleted arrays"):
        step(new_params, opt_state, ids)
    with pytest.raises(ValueError, match="params holds deleted arrays"):
        model(ids, params=params)
    assert np.isfinite(np.asarray(model(ids, params=new_params).logits)).all()


def _reference_loss(logits, ids):
    """Mean next-token cross entropy in float64 numpy (independent of optax)."""
    logits = np.asarray(logits, np.float64)[:, :-1]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return -np.mean(np.take_along_axis(logp, np.asarray(ids)[:, 1:, None], -1))


def test_causal_lm_loss_refuses_bad_targets_on_host_and_is_nan_when_traced():
    logits = jnp.asarray(np.random.RandomState(0).randn(2, 5, 11), jnp.float32)
    ids = np.random.RandomState(1).randint(0, 11, (2, 5))
    np.testing.assert_allclose(float(steps.causal_lm_loss(logits, ids)), _reference_loss(logits, ids), rtol=1e-5)
    for bad in (11, -1):
        wrong = ids.copy()
        wrong[1, 3] = bad
        with pytest.raises(ValueError, match=rf"input_ids\[1, 3\] = {bad} is outside the vocabulary range \[0, 11\)"):
            steps.causal_lm_loss(logits, wrong)
        traced = jax.jit(steps.causal_lm_loss)(logits, jnp.asarray(wrong))  # no host check inside a trace
        assert np.isnan(float(traced)), bad  # never a finite wrong number (negative ids would wrap around)
    with pytest.raises(ValueError, match="input_ids must be integer token ids"):
        steps.causal_lm_loss(logits, ids.astype(np.float32))


@pytest.mark.parametrize("kwargs", [dict(data=True), dict(data=2.0), dict(data="2"), dict(fsdp=None),
                                    dict(tensor=np.bool_(True)), dict(data=1.0)])
def test_make_mesh_refuses_non_int_sizes(kwargs):
    (axis, value), = kwargs.items()
    with pytest.raises(ValueError, match=rf"make_mesh\({axis}={value!r}\): mesh axis sizes must be ints"):
        sh.make_mesh(**kwargs)


def test_make_mesh_accepts_numpy_ints():
    assert dict(sh.make_mesh(data=np.int64(1), devices=jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1,
                                                                                     "tensor": 1}


def test_block_stacking_checks_the_count(model):
    with pytest.raises(ValueError, match=r"the params hold blocks \['0', '1'\], not num_blocks=3"):
        stack_block_params(model.params, 3)
    with pytest.raises(ValueError, match="not num_blocks=1"):
        stack_block_params(model.params, 1)
    stacked = stack_block_params(model.params, 2)
    with pytest.raises(ValueError, match="do not hold num_blocks=3 blocks"):
        unstack_block_params(stacked, 3)
    again = unstack_block_params(stacked, 2)
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("seed", ["0", 1.5, None, True])
def test_seed_must_be_an_int(seed):
    with pytest.raises(ValueError, match=rf"seed={seed!r} is invalid: must be an int"):
        FlaxXLSTMForCausalLM(tiny_config(), seed=seed, _do_init=False)


def test_train_with_dropout_needs_a_key():
    model = FlaxXLSTMForCausalLM(tiny_config(dropout=0.1), seed=0)
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"train=True with dropout=0.1 needs dropout_rng"):
        model(ids, train=True)
    out = model(ids, train=True, dropout_rng=jax.random.PRNGKey(0))
    assert out.logits.shape == (1, 3, V)
