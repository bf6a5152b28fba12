"""The three mLSTM forms against an independent float64 NumPy recurrence, and against each other."""

import jax
import numpy as np
import pytest

from conftest import max_abs_diff, tiny_config
from modeling_xlstm_flax import FlaxXLSTMForCausalLM
from modeling_xlstm_flax.mlstm_kernels import reference_float64
from modeling_xlstm_flax import mlstm_kernels as K


def random_inputs(seed, S, B=2, NH=2, DK=8, DV=6, gate_scale=5.0):
    rng = np.random.RandomState(seed)
    q, k = rng.randn(B, NH, S, DK).astype(np.float32), rng.randn(B, NH, S, DK).astype(np.float32)
    v = rng.randn(B, NH, S, DV).astype(np.float32)
    gates = (rng.uniform(-1, 1, (2, B, NH, S)) * gate_scale).astype(np.float32)
    return q, k, v, gates[0], gates[1]


@pytest.mark.parametrize("S", [1, 37, 300])
@pytest.mark.parametrize("with_state", [False, True])
def test_forms_match_float64_reference(S, with_state):
    """Relative tolerance 2e-5 of max|h| (observed <= 5e-6); chunk size 16 so 37 and 300 are not multiples."""
    inputs = random_inputs(S, S)
    state = None
    if with_state:
        _, state = reference_float64(*random_inputs(99, 20))
        state = K.MLSTMState(*(np.asarray(x, np.float32) for x in state))
    ref, (C, n, m) = reference_float64(*inputs, state=state)
    tol = 2e-5 * max(1.0, np.abs(ref).max())
    h_chunk, s_chunk = K.chunkwise(*inputs, state=state, chunk_size=16)
    h_rec, s_rec = K.recurrent_sequence(*inputs, state=state)
    assert max_abs_diff(h_chunk, ref) <= tol and max_abs_diff(h_rec, ref) <= tol
    if not with_state:
        assert max_abs_diff(K.parallel_stabilized(*inputs), ref) <= tol
    for s in (s_chunk, s_rec):  # the states represent the same memory C * exp(m)
        assert s.c.dtype == np.float32
        scale = np.exp(np.asarray(s.m, np.float64) - m)
        assert max_abs_diff(np.asarray(s.c) * scale[..., None, None], C) <= 1e-4 * max(1.0, np.abs(C).max())
        assert max_abs_diff(np.asarray(s.n) * scale[..., None], n) <= 1e-4 * max(1.0, np.abs(n).max())


def test_step_matches_sequence():
    inputs = random_inputs(3, 5)
    h_seq, final = K.recurrent_sequence(*inputs)
    state = K.zero_state(2, 2, 8, 6)
    for t in range(5):
        h, state = K.recurrent_step(state, *(x[:, :, t] for x in inputs))
        assert max_abs_diff(h, h_seq[:, :, t]) <= 1e-5  # same ops, eager vs scanned (fused) rounding
    assert max_abs_diff(state.c, final.c) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("form", ["parallel", "chunkwise", "recurrent"])
def test_no_nan_for_long_sequences_and_extreme_gates(form):
    """S = 16384 (the quadratic parallel form: 8192, its (S, S) matrices are 256 MB each) with gate
    pre-activations uniform in [-50, 50] and saturated stretches stays finite."""
    q, k, v, i, f = random_inputs(7, 8192 if form == "parallel" else 16384, B=1, NH=1, DK=16, DV=16, gate_scale=50.0)
    f[..., 1000:3000] = 50.0  # forget gate saturated at 1
    i[..., 5000:7000] = -50.0
    f[..., 8000:9000] = -50.0  # forget gate saturated at 0
    if form == "parallel":
        h = jax.jit(K.parallel_stabilized)(q, k, v, i, f)
    elif form == "chunkwise":
        h, _ = jax.jit(K.chunkwise)(q, k, v, i, f)
    else:
        h, _ = jax.jit(K.recurrent_sequence)(q, k, v, i, f)
    assert np.all(np.isfinite(np.asarray(h)))


@pytest.mark.slow
@pytest.mark.parametrize("layer_type", ["mlstm_v1", "mlstm"])
def test_model_forms_agree_on_2048_tokens_with_initial_state(layer_type):
    """Logits of 2048 tokens continuing a 100-token prefix (the prefix state is the initial state): the three
    sequence forms agree within 1e-4 (float32), and equal the whole 2148-token sequence in one call."""
    rng = np.random.RandomState(5)
    ids = rng.randint(0, 97, (1, 2148))
    models = {kern: FlaxXLSTMForCausalLM(tiny_config(layer_type, sequence_kernel=kern, chunk_size=64), seed=0)
              for kern in ("parallel_stabilized", "chunkwise", "recurrent")}
    params = models["chunkwise"].params
    whole = np.asarray(models["chunkwise"](ids, params=params).logits)
    for kern, model in models.items():
        prefix = model(ids[:, :100], params=params, past_key_values=model.init_cache(1))
        rest = model(ids[:, 100:], params=params, past_key_values=prefix.past_key_values)
        got = np.concatenate([np.asarray(prefix.logits), np.asarray(rest.logits)], axis=1)
        assert max_abs_diff(got, whole) <= 1e-4, kern
