"""The mLSTM cell in its three forms, in plain JAX: parallel (quadratic), chunkwise, recurrent.

Shapes: B batch, NH heads, S sequence, DHQK query/key head dim, DHV value head dim.
All forms take q, k (B, NH, S, DHQK), v (B, NH, S, DHV) and gate pre-activations (B, NH, S) and return
h (B, NH, S, DHV). The stateful forms also take and return the state

    C (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH)      (always float32)

which represents the unstabilised memory C * exp(m), n * exp(m). The zero state (C=0, n=0, m=0) is the start of a
sequence. Gates, the decay matrix and the state are computed in float32 whatever the compute dtype; q.k and the
retrieval run in the input dtype with float32 accumulation. Keys are scaled by 1/sqrt(DHQK).

Output for every form (m_t is a stabiliser that cancels out except in `eps`):

    h_t = (q_t . C_t) / (max(|q_t . n_t|, exp(-m_t)) + eps)
    C_t = f_t C_{t-1} + i_t k_t v_t^T,   n_t = f_t n_{t-1} + i_t k_t,   f_t = sigmoid(fpre_t), i_t = exp(ipre_t)

`reference_float64` (at the end) is the independent oracle: a plain float64 NumPy loop over time that the kernel
tests and the GPU device check hold every form against. It uses NumPy only (this module imports no other module of
the package, so it also loads on its own, by path).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class MLSTMState(NamedTuple):
    """Recurrent mLSTM state of one layer: C (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH), float32."""

    c: jax.Array
    n: jax.Array
    m: jax.Array


def zero_state(batch_size: int, num_heads: int, qk_head_dim: int, v_head_dim: int) -> MLSTMState:
    """The state at the start of a sequence."""
    return MLSTMState(
        c=jnp.zeros((batch_size, num_heads, qk_head_dim, v_head_dim), jnp.float32),
        n=jnp.zeros((batch_size, num_heads, qk_head_dim), jnp.float32),
        m=jnp.zeros((batch_size, num_heads), jnp.float32),
    )


def _matmul(a: jax.Array, b: jax.Array, spec: str) -> jax.Array:
    """einsum in the inputs' dtype with float32 accumulation and result."""
    dtype = jnp.promote_types(a.dtype, b.dtype)
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def segment_log_decay(log_f: jax.Array) -> jax.Array:
    """log decay between positions: out[..., t, s] = sum_{r=s+1..t} log_f[..., r] for s <= t, -inf above.

    Summed per (t, s) pair from zero instead of as a difference of two long cumulative sums, which would lose
    float32 precision once |cumsum| is large (long sequences, saturated forget gates). log_f (..., S) -> (..., S, S).
    """
    S = log_f.shape[-1]
    strictly_lower = jnp.tril(jnp.ones((S, S), dtype=bool), k=-1)
    terms = jnp.where(strictly_lower, log_f[..., :, None], 0.0)  # [r, s] = log_f[r] if r > s
    out = jnp.cumsum(terms, axis=-2)
    return jnp.where(jnp.tril(jnp.ones((S, S), dtype=bool)), out, -jnp.inf)


def parallel_stabilized(
    q: jax.Array, k: jax.Array, v: jax.Array, igate: jax.Array, fgate: jax.Array, eps: float = 1e-6
) -> jax.Array:
    """Quadratic form with row-wise stabilised decay matrix (upstream `parallel_stabilized_simple`).

    Args: q, k (B, NH, S, DHQK); v (B, NH, S, DHV); igate, fgate pre-activations (B, NH, S).
    Returns: h (B, NH, S, DHV) in v's dtype.
    """
    k = k / math.sqrt(q.shape[-1])
    log_f = jax.nn.log_sigmoid(fgate.astype(jnp.float32))
    # log D[t, s] = sum_{r=s+1..t} log f_r + i_s for s <= t, -inf above the diagonal
    log_d = segment_log_decay(log_f) + igate.astype(jnp.float32)[..., None, :]
    m = jnp.max(log_d, axis=-1, keepdims=True)  # (B, NH, S, 1); finite: the diagonal is always there
    d = jnp.exp(log_d - m)
    c = _matmul(q, k, "...td,...sd->...ts") * d
    normaliser = jnp.maximum(jnp.abs(jnp.sum(c, axis=-1, keepdims=True)), jnp.exp(-m))
    c = c / (normaliser + eps)
    return _matmul(c.astype(v.dtype), v, "...ts,...sd->...td").astype(v.dtype)


def recurrent_step(
    state: MLSTMState, q: jax.Array, k: jax.Array, v: jax.Array, igate: jax.Array, fgate: jax.Array,
    eps: float = 1e-6,
) -> tuple[jax.Array, MLSTMState]:
    """One token. q, k (B, NH, DHQK); v (B, NH, DHV); igate, fgate (B, NH). Returns h (B, NH, DHV), new state."""
    q32 = q.astype(jnp.float32)
    k32 = k.astype(jnp.float32) / math.sqrt(q.shape[-1])
    v32 = v.astype(jnp.float32)
    log_f = jax.nn.log_sigmoid(fgate.astype(jnp.float32))
    i_pre = igate.astype(jnp.float32)
    m_new = jnp.maximum(log_f + state.m, i_pre)
    f_act = jnp.exp(log_f + state.m - m_new)
    i_act = jnp.exp(i_pre - m_new)
    c_new = f_act[..., None, None] * state.c + i_act[..., None, None] * (k32[..., :, None] * v32[..., None, :])
    n_new = f_act[..., None] * state.n + i_act[..., None] * k32
    num = jnp.einsum("bhd,bhde->bhe", q32, c_new)
    den = jnp.maximum(jnp.abs(jnp.einsum("bhd,bhd->bh", q32, n_new)), jnp.exp(-m_new)) + eps
    h = num / den[..., None]
    return h.astype(v.dtype), MLSTMState(c_new, n_new, m_new)


def recurrent_sequence(
    q: jax.Array, k: jax.Array, v: jax.Array, igate: jax.Array, fgate: jax.Array,
    state: Optional[MLSTMState] = None, eps: float = 1e-6,
) -> tuple[jax.Array, MLSTMState]:
    """The step form scanned over the sequence: h (B, NH, S, DHV) and the final state."""
    B, NH, _, DHQK = q.shape
    if state is None:
        state = zero_state(B, NH, DHQK, v.shape[-1])

    def step(carry, xs):
        h, carry = recurrent_step(carry, *xs, eps=eps)
        return carry, h

    xs = (jnp.moveaxis(q, 2, 0), jnp.moveaxis(k, 2, 0), jnp.moveaxis(v, 2, 0),
          jnp.moveaxis(igate, 2, 0), jnp.moveaxis(fgate, 2, 0))
    state, h = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(h, 0, 2), state


def chunkwise(
    q: jax.Array, k: jax.Array, v: jax.Array, igate: jax.Array, fgate: jax.Array,
    state: Optional[MLSTMState] = None, chunk_size: int = 64, eps: float = 1e-6,
) -> tuple[jax.Array, MLSTMState]:
    """Chunkwise form: parallel inside chunks of `chunk_size`, recurrent over (C, n, m) between chunks.

    Memory O(S * chunk_size + DHQK * DHV) instead of O(S^2): one chunk's state at a time. Sequences that are not
    a multiple of the chunk size are padded at the end with tokens that leave the state untouched (i = -inf, f = 1).
    Returns h (B, NH, S, DHV) and the state after the last token.
    """
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    if state is None:
        state = zero_state(B, NH, DHQK, DHV)
    L = min(chunk_size, S)
    NC = -(-S // L)
    pad = NC * L - S
    i_pre = igate.astype(jnp.float32)
    log_f = jax.nn.log_sigmoid(fgate.astype(jnp.float32))
    if pad:
        pad4 = ((0, 0), (0, 0), (0, pad), (0, 0))
        q, k, v = jnp.pad(q, pad4), jnp.pad(k, pad4), jnp.pad(v, pad4)
        i_pre = jnp.pad(i_pre, pad4[:3], constant_values=-jnp.inf)
        log_f = jnp.pad(log_f, pad4[:3])
    k = k / math.sqrt(DHQK)
    qc = q.reshape(B, NH, NC, L, DHQK)
    kc = k.reshape(B, NH, NC, L, DHQK)
    vc = v.reshape(B, NH, NC, L, DHV)
    ic = i_pre.reshape(B, NH, NC, L)
    lfc = log_f.reshape(B, NH, NC, L)
    b = jnp.cumsum(lfc, axis=-1)  # decay from chunk start to t (inclusive)
    g = b[..., -1]  # (B, NH, NC) decay over the whole chunk
    # decay from s (exclusive) to the chunk end, summed directly rather than as g - b
    after = jnp.concatenate([jnp.cumsum(lfc[..., :0:-1], axis=-1)[..., ::-1], jnp.zeros_like(lfc[..., :1])], -1)

    # What each chunk adds to the state, stabilised by its own max.
    a = after + ic  # (B, NH, NC, L) log weight of token s at chunk end
    m_loc = jnp.max(a, axis=-1)  # may be -inf for an all-padding chunk
    m_loc_safe = jnp.where(jnp.isfinite(m_loc), m_loc, 0.0)
    w = jnp.exp(a - m_loc_safe[..., None])

    # One scan over the chunks computes each chunk's state contribution and reads the state at the chunk's start
    # (q.C0, q.n0) for its outputs, so only one chunk's (DHQK, DHV) state is alive at a time: materialising the
    # start states and contributions of all chunks at once costs 2 x S / L x NH x DHQK x DHV floats per layer
    # (measured: 34 GiB of temp for a 16k-token forward of the 7B on one H200).
    def advance(carry: MLSTMState, xs):
        q_c, k_c, v_c, w_c, g_c, m_l = xs
        c_l = _matmul(k_c * w_c[..., None].astype(k_c.dtype), v_c, "bhsd,bhse->bhde")
        n_l = jnp.sum(k_c.astype(jnp.float32) * w_c[..., None], axis=-2)
        q_c0 = _matmul(q_c, carry.c, "bhtd,bhde->bhte")  # read of the state at the chunk start
        q_n0 = jnp.einsum("bhtd,bhd->bht", q_c.astype(jnp.float32), carry.n)
        m_new = jnp.maximum(g_c + carry.m, m_l)
        scale_prev = jnp.exp(g_c + carry.m - m_new)
        scale_loc = jnp.exp(m_l - m_new)
        new = MLSTMState(
            c=scale_prev[..., None, None] * carry.c + scale_loc[..., None, None] * c_l,
            n=scale_prev[..., None] * carry.n + scale_loc[..., None] * n_l,
            m=m_new,
        )
        return new, (q_c0, q_n0, carry.m)

    xs = tuple(jnp.moveaxis(x, 2, 0) for x in (qc, kc, vc, w, g, m_loc))
    final, (q_c0, q_n0, m0) = jax.lax.scan(advance, state, xs)
    q_c0 = jnp.moveaxis(q_c0, 0, 2)  # (B, NH, NC, L, DHV)
    q_n0 = jnp.moveaxis(q_n0, 0, 2)  # (B, NH, NC, L)
    m0 = jnp.moveaxis(m0, 0, 2)  # (B, NH, NC)

    # Outputs: inter-chunk part from the start state, intra-chunk part as in the parallel form.
    log_d = segment_log_decay(lfc) + ic[..., None, :]  # (B, NH, NC, L, L)
    log_inter = b + m0[..., None]  # (B, NH, NC, L)
    m_t = jnp.maximum(jnp.max(log_d, axis=-1), log_inter)
    d = jnp.exp(log_d - m_t[..., None])
    inter = jnp.exp(log_inter - m_t)
    qk = _matmul(qc, kc, "bhctd,bhcsd->bhcts") * d
    num = _matmul(qk.astype(vc.dtype), vc, "bhcts,bhcse->bhcte")
    num = num + inter[..., None] * q_c0
    den = jnp.sum(qk, axis=-1) + inter * q_n0
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_t)) + eps)[..., None]
    h = h.reshape(B, NH, NC * L, DHV)[:, :, :S]
    return h.astype(v.dtype), final


# ---------------------------------------------------------------------------------------------- float64 oracle
# The mLSTM recurrence as a plain float64 NumPy loop over time, written apart from the forms above: the oracle.
# Per step t, with log f = log sigmoid(fgate), k scaled by 1/sqrt(DK):
#     m_t = max(log f + m_{t-1}, igate);  C_t = e^(log f + m_{t-1} - m_t) C_{t-1} + e^(igate - m_t) k v^T
#     n_t likewise with k;  h_t = q C_t / (max(|q . n_t|, e^(-m_t)) + eps)
def reference_float64(q, k, v, igate, fgate, state=None, eps=1e-6):
    """Plain float64 loop over time of the mLSTM recurrence (B, NH, S, D) -> h, (C, n, m)."""
    q, k, v, igate, fgate = (np.asarray(x, np.float64) for x in (q, k, v, igate, fgate))
    B, NH, S, DK = q.shape
    k = k / np.sqrt(DK)
    if state is None:
        C, n, m = np.zeros((B, NH, DK, v.shape[-1])), np.zeros((B, NH, DK)), np.zeros((B, NH))
    else:
        C, n, m = (np.asarray(x, np.float64) for x in state)
    out = np.zeros(v.shape)
    for t in range(S):
        log_f = -np.logaddexp(0.0, -fgate[:, :, t])
        m_new = np.maximum(log_f + m, igate[:, :, t])
        f_act, i_act = np.exp(log_f + m - m_new), np.exp(igate[:, :, t] - m_new)
        C = f_act[..., None, None] * C + i_act[..., None, None] * np.einsum("bhd,bhe->bhde", k[:, :, t], v[:, :, t])
        n = f_act[..., None] * n + i_act[..., None] * k[:, :, t]
        m = m_new
        den = np.maximum(np.abs(np.einsum("bhd,bhd->bh", q[:, :, t], n)), np.exp(-m)) + eps
        out[:, :, t] = np.einsum("bhd,bhde->bhe", q[:, :, t], C) / den[..., None]
    return out, (C, n, m)
