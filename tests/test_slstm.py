"""sLSTM blocks against NX-AI's PyTorch `xlstm==2.0.6` (frozen fixtures, vanilla backend, float32, weights perturbed
away from the default init; `tests/fixtures/slstm/make_fixtures.py` regenerates them with the library).

Tolerance: 1e-5 max abs on outputs of magnitude ~1-6 (measured ~1e-6). Negative controls check that each known trap
(i/f name swap, tanh GELU, bias storage order) moves the result far outside that tolerance.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from conftest import load_slstm_fixture

from modeling_xlstm_flax import slstm
from modeling_xlstm_flax.cache import mlstm_block_cache, slstm_block_cache as zero_layer_state
from modeling_xlstm_flax.configuration_xlstm_flax import XLSTMFlaxConfig
from modeling_xlstm_flax.slstm import SLSTMBlock, SLSTMConfig, SLSTMLayer
from modeling_xlstm_flax.xlstm_layers import FlaxXLSTMBlock
from modeling_xlstm_flax.config_translation import slstm_config_from_library
from modeling_xlstm_flax.library_params import (
    bias_from_library, block_params_from_library, block_params_to_library, mlstm_block_params_from_library,
    mlstm_fields_from_library,
)

TOL = 1e-5
BLOCKS = ["block", "block_k0", "block_lstm"]


load = load_slstm_fixture  # (library config, state dict, arrays) of a frozen fixture


def load_block(name: str):
    library_config, sd, arrays = load(name)
    config, backend = slstm_config_from_library(library_config)
    return config, backend, block_params_from_library(sd, config, backend), arrays


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def run_block(config, params, x):
    return SLSTMBlock(config).apply({"params": params}, jnp.asarray(x))[0]


def run_steps(config, params, x, prefill: int = 0):
    """Block over x (B, S, D): the first `prefill` tokens in one call with a fresh state, then one token per call."""
    state = zero_layer_state(config, x.shape[0])
    apply = jax.jit(lambda p, xt, st: SLSTMBlock(config).apply({"params": p}, xt, None, None, st))
    outs = []
    if prefill:
        y, state = apply(params, jnp.asarray(x[:, :prefill]), state)
        outs.append(y)
    for t in range(prefill, x.shape[1]):
        y, state = apply(params, jnp.asarray(x[:, t : t + 1]), state)
        outs.append(y)
    return jnp.concatenate(outs, axis=1), state


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", BLOCKS)
def test_block_and_layer_match_library(name):
    config, _, params, arrays = load_block(name)
    assert max_diff(run_block(config, params, arrays["x"]), arrays["y"]) <= TOL
    layer_y, _ = SLSTMLayer(config).apply({"params": params["slstm_layer"]}, jnp.asarray(arrays["x"]))
    assert max_diff(layer_y, arrays["layer_y"]) <= TOL


@pytest.mark.parametrize("name", BLOCKS)
def test_final_state_and_given_initial_state_match_library(name):
    config, _, params, arrays = load_block(name)
    layer = SLSTMLayer(config)
    x = jnp.asarray(arrays["x"])
    _, state = layer.apply({"params": params["slstm_layer"]}, x, None, None, zero_layer_state(config, x.shape[0]))
    cell_state = slstm.SLSTMState(*(state[k] for k in "ycnm"))
    assert max_diff(slstm.state_to_library(cell_state, config.function), arrays["state"]) <= TOL
    start = zero_layer_state(config, x.shape[0])
    given = slstm.state_from_library(arrays["state0"], config.num_heads, config.function)
    start = start.replace(**given._asdict())
    y, state = layer.apply({"params": params["slstm_layer"]}, x, None, None, start)
    cell_state = slstm.SLSTMState(*(state[k] for k in "ycnm"))
    assert max_diff(y, arrays["layer_y_state0"]) <= TOL
    assert max_diff(slstm.state_to_library(cell_state, config.function), arrays["state_from_state0"]) <= TOL


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("prefill", [0, 5])
def test_steps_from_token_0_match_library_step(name, prefill):
    """Our one-token step (and a prefill followed by steps) against the library's `step` from token 0."""
    config, _, params, arrays = load_block(name)
    y, _ = run_steps(config, params, arrays["x"], prefill)
    assert max_diff(y, arrays["y_step"]) <= TOL


def _lm_logits(library_config, sd, idx, step: bool, mlstm_kernel: str = "chunkwise"):
    """A library `xLSTMLMModel` composed from our blocks (a test harness until the model wires mixed stacks):
    embedding, blocks by `slstm_at` (our `SLSTMBlock`; the library's mLSTM blocks on our `FlaxXLSTMBlock`), post
    norm, head. step: every block one token per call with its state, from token 0."""
    num_blocks = library_config["num_blocks"]
    slstm_at = library_config["slstm_at"]
    slstm_at = list(range(num_blocks)) if slstm_at == "all" else slstm_at
    s_config, backend = slstm_config_from_library(library_config["slstm_block"], library_config["embedding_dim"])
    m_config = None
    if library_config.get("mlstm_block"):
        m_config = XLSTMFlaxConfig(**mlstm_fields_from_library(library_config, sequence_kernel=mlstm_kernel))
    x = jnp.asarray(sd["token_embedding.weight"])[jnp.asarray(idx)]
    for i in range(num_blocks):
        prefix = f"xlstm_block_stack.blocks.{i}."
        if i in slstm_at:
            params = block_params_from_library(sd, s_config, backend, prefix)
            x = run_steps(s_config, params, np.asarray(x))[0] if step else run_block(s_config, params, x)
            continue
        params = mlstm_block_params_from_library(sd, m_config, prefix)
        apply = jax.jit(lambda p, xt, st: FlaxXLSTMBlock(m_config).apply({"params": p}, xt, None, None, st))
        if not step:
            x = apply(params, x, None)[0]
            continue
        state = mlstm_block_cache(m_config, x.shape[0])
        outs = []
        for t in range(x.shape[1]):
            y, state = apply(params, x[:, t : t + 1], state)
            outs.append(y)
        x = jnp.concatenate(outs, axis=1)
    scale = 1.0 + sd["xlstm_block_stack.post_blocks_norm.weight"]
    x = nn.LayerNorm(epsilon=1e-5, use_bias=False).apply({"params": {"scale": scale}}, x)
    return x @ jnp.asarray(sd["lm_head.weight"]).T


@pytest.mark.parametrize("step", [False, True], ids=["sequence", "steps"])
def test_slstm_only_lm_longer_than_context_matches_library(step):
    library_config, sd, arrays = load("lm_slstm")
    assert library_config["slstm_block"]["feedforward"]["_proj_up_dim"] == 0  # the width must be recomputed
    assert arrays["idx"].shape[1] > library_config["context_length"]
    np.testing.assert_array_equal(sd["lm_head.weight"], sd["token_embedding.weight"])  # tied
    logits = _lm_logits(library_config, sd, arrays["idx"], step)
    assert max_diff(logits, arrays["logits_step" if step else "logits"]) <= TOL


@pytest.mark.parametrize("step, kernel", [(False, "chunkwise"), (False, "parallel_stabilized"), (True, "chunkwise")],
                         ids=["chunkwise", "parallel", "steps"])
def test_mixed_lm_matches_library(step, kernel):
    """slstm_at [1]: block 0 is the library's mLSTM block on our existing `mlstm` layer, block 1 our sLSTM block."""
    library_config, sd, arrays = load("lm_mixed")
    assert library_config["slstm_at"] == [1] and arrays["idx"].shape[1] <= library_config["context_length"]
    logits = _lm_logits(library_config, sd, arrays["idx"], step, kernel)
    assert max_diff(logits, arrays["logits_step" if step else "logits"]) <= TOL


def test_library_mlstm_bias_is_refused():
    library_config, _, _ = load("lm_mixed")
    with pytest.raises(ValueError, match="bias=true is not supported"):
        mlstm_fields_from_library(dict(library_config, bias=True))


# ---------------------------------------------------------------------------------------------- layouts
def test_both_storage_layouts_give_identical_params_and_round_trip():
    config, backend, params, _ = load_block("block")
    library_config, sd_cuda, _ = load("block_cuda_layout")
    config_cuda, backend_cuda = slstm_config_from_library(library_config)
    assert (backend, backend_cuda) == ("vanilla", "cuda") and config == config_cuda
    params_cuda = block_params_from_library(sd_cuda, config_cuda, backend_cuda)
    flat, flat_cuda = flatten_dict(params, sep="/"), flatten_dict(params_cuda, sep="/")
    assert flat.keys() == flat_cuda.keys()
    for key in flat:
        np.testing.assert_array_equal(flat[key], flat_cuda[key], err_msg=key)
    _, sd_vanilla, _ = load("block")
    for stored, layout in ((sd_vanilla, "vanilla"), (sd_cuda, "cuda")):
        back = block_params_to_library(params, config, layout)
        assert back.keys() == stored.keys()
        for key in stored:  # norm weights pass through 1 + w and back: equal to float32 rounding
            np.testing.assert_allclose(back[key], stored[key], rtol=0, atol=1e-7 if "norm" in key else 0,
                                       err_msg=f"{layout} {key}")


def test_kernel_in_the_other_layout_is_refused():
    library_config, sd, _ = load("block")  # vanilla storage
    library_config["slstm"].pop("backend")  # no key -> the library default, cuda
    config, backend = slstm_config_from_library(library_config)
    assert backend == "cuda"
    with pytest.raises(ValueError, match=r"_recurrent_kernel_ has shape \(4, 32, 8\).*'vanilla' layout"):
        block_params_from_library(sd, config, backend)


def test_compiled_prefix_is_stripped_and_missing_or_extra_params_refused():
    config, backend, params, _ = load_block("block")
    _, sd, _ = load("block")
    compiled = {f"_orig_mod.{k}": v for k, v in sd.items()}
    flat = flatten_dict(block_params_from_library(compiled, config, backend), sep="/")
    for key, value in flatten_dict(params, sep="/").items():
        np.testing.assert_array_equal(flat[key], value)
    with pytest.raises(ValueError, match=r"missing \['xlstm.zgate.weight'\]"):
        block_params_from_library({k: v for k, v in sd.items() if k != "xlstm.zgate.weight"}, config, backend)
    with pytest.raises(ValueError, match="unexpected.*xlstm.extra"):
        block_params_from_library({**sd, "xlstm.extra": np.zeros(1)}, config, backend)


def test_bfloat16_checkpoint_loads_as_float32():
    import ml_dtypes

    config, backend, _, _ = load_block("block")
    _, sd, _ = load("block")
    sd_bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
    params = block_params_from_library(sd_bf16, config, backend)
    expected = block_params_from_library({k: v.astype(np.float32) for k, v in sd_bf16.items()}, config, backend)
    for key, value in flatten_dict(params, sep="/").items():
        assert value.dtype == np.float32, key
        np.testing.assert_array_equal(value, flatten_dict(expected, sep="/")[key], err_msg=key)


@pytest.mark.parametrize("change, message", [
    ({"slstm": {"gradient_recurrent_clipval": 1.0}}, "gradient_recurrent_clipval=1.0 is not supported"),
    ({"slstm": {"function": "gru"}}, "function 'gru' is not supported"),
    ({"slstm": {"backend": "triton"}}, "backend 'triton' is unknown"),
    ({"feedforward": {"act_fn": "gelu_tanh"}}, "act_fn 'gelu_tanh' is not supported"),
    ({"feedforward": {"ff_type": "ffn"}}, "ff_type 'ffn' is not supported"),
])
def test_unsupported_library_settings_are_refused_by_name(change, message):
    library_config, _, _ = load("block")
    for section, fields in change.items():
        library_config[section].update(fields)
    with pytest.raises(ValueError, match=message):
        slstm_config_from_library(library_config)


def test_training_dropout_is_refused_not_ignored():
    library_config, _, _ = load("block")
    library_config["slstm"]["dropout"] = 0.1
    config, backend = slstm_config_from_library(library_config)
    _, sd, arrays = load("block")
    params = block_params_from_library(sd, config, backend)
    x = jnp.asarray(arrays["x"])
    assert max_diff(run_block(config, params, x), arrays["y"]) <= TOL  # inference: dropout is the identity
    with pytest.raises(NotImplementedError, match="dropout=0.1 in training"):
        SLSTMBlock(config).apply({"params": params}, x, None, None, None, False)


def test_feedforward_width_is_recomputed_and_no_feedforward_is_allowed():
    library_config, _, _ = load("block_k0")  # proj_factor 1.7, D 32 -> ceil(54.4 / 64) * 64
    library_config["feedforward"]["_proj_up_dim"] = 0
    assert slstm_config_from_library(library_config)[0].ff_dim == 64
    library_config["feedforward"]["round_proj_up_dim_up"] = False
    library_config["feedforward"]["round_proj_up_to_multiple_of"] = 16
    assert slstm_config_from_library(library_config)[0].ff_dim == 48
    library_config["feedforward"] = None
    assert slstm_config_from_library(library_config)[0].ff_proj_factor is None


# ---------------------------------------------------------------------------------------------- negative controls
def test_negative_control_without_the_if_swap_fails():
    config, _, params, arrays = load_block("block")
    layer = dict(params["slstm_layer"], igate=params["slstm_layer"]["fgate"], fgate=params["slstm_layer"]["igate"])
    assert max_diff(run_block(config, dict(params, slstm_layer=layer), arrays["x"]), arrays["y"]) > 100 * TOL


def test_negative_control_tanh_gelu_fails(monkeypatch):
    config, _, params, arrays = load_block("block")
    assert config.ff_act_fn == "gelu"
    monkeypatch.setitem(slstm.LIBRARY_ACTIVATIONS, "gelu", nn.gelu)  # flax's default: tanh approximation
    assert max_diff(run_block(config, params, arrays["x"]), arrays["y"]) > 10 * TOL


def test_negative_control_vanilla_bias_read_as_cuda_fails():
    config, _, params, arrays = load_block("block")
    _, sd, _ = load("block")
    wrong = bias_from_library(sd["xlstm.slstm_cell._bias_"], "cuda", config.num_heads)
    layer = dict(params["slstm_layer"], bias=wrong)
    assert max_diff(run_block(config, dict(params, slstm_layer=layer), arrays["x"]), arrays["y"]) > 100 * TOL


# ---------------------------------------------------------------------------------------------- numerics
def test_first_step_input_gate_of_minus_120_stays_finite():
    """Fresh state: m = r_i, i = 1, n = 1, so y = sigmoid(r_o) tanh(r_z) exactly, whatever r_i (exp(-120) == 0 in
    float32: without the min(exp(.), 1) clamps and the fresh-state rule this step is 0/0)."""
    B, S, NH, DH = 2, 3, 2, 4
    key = jax.random.PRNGKey(0)
    wx = jax.random.normal(key, (B, S, 4, NH, DH))
    wx = wx.at[:, :, 0].set(-120.0)  # every input-gate pre-activation
    kernel = jnp.zeros((NH, DH, 4 * DH))
    bias = jnp.zeros((NH, 4, DH))
    y, state = slstm.slstm_sequence(wx, kernel, bias)
    assert bool(jnp.all(jnp.isfinite(y))) and all(bool(jnp.all(jnp.isfinite(s))) for s in state)
    expected0 = jax.nn.sigmoid(wx[:, 0, 3]) * jnp.tanh(wx[:, 0, 2])
    np.testing.assert_allclose(np.asarray(y[:, 0]), np.asarray(expected0), rtol=1e-6, atol=1e-7)


def test_fresh_state_rule_is_per_element():
    """A batch row at a fresh state is unaffected by another row's used state (the library's vanilla backend tests
    n == 0 over the whole tensor; its cuda kernel and we test it per element)."""
    B, NH, DH = 2, 2, 4
    wx = jax.random.normal(jax.random.PRNGKey(1), (B, 5, 4, NH, DH)) * 3
    kernel = jax.random.normal(jax.random.PRNGKey(2), (NH, DH, 4 * DH)) * 0.3
    bias = jnp.zeros((NH, 4, DH))
    used = slstm.SLSTMState(*(jnp.ones((B, NH, DH)) * v for v in (0.1, 0.5, 2.0, 1.0)))
    mixed = slstm.SLSTMState(*(s.at[1].set(0.0) for s in used))
    y_mixed, _ = slstm.slstm_sequence(wx, kernel, bias, mixed)
    y_fresh, _ = slstm.slstm_sequence(wx[1:], kernel, bias)
    np.testing.assert_allclose(np.asarray(y_mixed[1]), np.asarray(y_fresh[0]), rtol=0, atol=1e-6)


def test_left_padding_starts_from_the_fresh_state():
    config, _, params, arrays = load_block("block")
    x = jnp.asarray(arrays["x"][:1])  # (1, S, D)
    pad = 3
    padded = jnp.concatenate([jnp.full((1, pad, x.shape[-1]), 7.0), x], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, pad), bool), jnp.ones((1, x.shape[1]), bool)], axis=1)
    layer = SLSTMLayer(config)
    y_ref, state_ref = layer.apply({"params": params["slstm_layer"]}, x, None, None, zero_layer_state(config, 1))
    y_pad, state_pad = layer.apply({"params": params["slstm_layer"]}, padded, mask, None, zero_layer_state(config, 1))
    assert max_diff(y_pad[:, pad:], y_ref) <= 1e-6
    for key in state_ref:
        assert max_diff(state_pad[key], state_ref[key]) <= 1e-6, key
    # a masked decoding step (a padded row in a batch) leaves the whole state untouched
    _, state_held = layer.apply({"params": params["slstm_layer"]}, x[:, :1] + 1.0, jnp.zeros((1, 1), bool), None,
                                 state_ref)
    for key in state_ref:
        np.testing.assert_array_equal(np.asarray(state_held[key]), np.asarray(state_ref[key]), err_msg=key)


def test_document_border_resets_the_state():
    NH, DH = 2, 3
    wx = jax.random.normal(jax.random.PRNGKey(3), (1, 6, 4, NH, DH)) * 2
    kernel = jax.random.normal(jax.random.PRNGKey(4), (NH, DH, 4 * DH)) * 0.5
    bias = jax.random.normal(jax.random.PRNGKey(5), (NH, 4, DH))
    reset = jnp.zeros((1, 6), bool).at[:, 2].set(True)
    y_doc, state_doc = slstm.slstm_sequence(wx, kernel, bias, reset=reset)
    y_alone, state_alone = slstm.slstm_sequence(wx[:, 2:], kernel, bias)
    assert max_diff(y_doc[:, 2:], y_alone) <= 1e-6
    assert max_diff(jnp.stack(state_doc), jnp.stack(state_alone)) <= 1e-6
    y_no_reset, _ = slstm.slstm_sequence(wx, kernel, bias)
    assert max_diff(y_no_reset[:, 2:], y_alone) > 1e-3  # the test can fail: history matters without the reset


# ---------------------------------------------------------------------------------------------- fresh init
@pytest.mark.parametrize("block_idx, num_blocks", [(0, 1), (0, 3), (1, 3), (2, 3)])
def test_fresh_bias_init_matches_library_powerlaw(block_idx, num_blocks):
    _, _, arrays = load("init_bias")
    config = SLSTMConfig(32, 4, block_idx=block_idx, num_blocks=num_blocks)
    x = jnp.zeros((1, 2, 32))
    params = SLSTMBlock(config).init(jax.random.PRNGKey(0), x)["params"]
    expected = bias_from_library(arrays[f"bias_{block_idx}_of_{num_blocks}"], "vanilla", 4)
    np.testing.assert_allclose(np.asarray(params["slstm_layer"]["bias"]), expected, rtol=0, atol=1e-6)
    assert not np.any(np.asarray(params["slstm_layer"]["recurrent_kernel"]))  # recurrent_weight_init "zeros"
    assert float(jnp.std(params["slstm_layer"]["igate"]["kernel"])) > 0
    y, _ = SLSTMBlock(config).apply({"params": params}, jax.random.normal(jax.random.PRNGKey(1), (2, 5, 32)))
    assert bool(jnp.all(jnp.isfinite(y)))
