"""The sLSTM recurrence (NX-AI `xlstm` library, `function: "slstm"` and `"lstm"`) as a float32 `lax.scan`.

Shapes: B batch, S sequence, NH heads, DH head dim (D = NH * DH). Gate order is always (i, f, z, o). A feature
(head h, dim d) is `h * DH + d`, as in the library.

Per step and head, element-wise on (B, DH) (the `slstm` function, with the library's stabiliser):

    r_g = Wx_g + y_prev @ R[h, :, g, :] + b[h, g]          recurrent mixing only inside a head
    lfm = m_prev + log_sigmoid(r_f)
    m   = r_i                if n_prev == 0 (a fresh state, tested per element)
          max(r_i, lfm)      otherwise
    i   = min(exp(r_i - m), 1);   f = min(exp(lfm - m), 1)      the clamps keep the first step finite
    c   = f c_prev + i tanh(r_z);  n = f n_prev + i;  y = sigmoid(r_o) c / n

`lstm`: i = sigmoid(r_i), f = sigmoid(r_f), c = f c_prev + i tanh(r_z), y = sigmoid(r_o) tanh(c); n and m stay 0.

Layouts: the recurrent kernel is (NH, DH_in, 4 * DH_out), output index `g * DH + d` (the library's `cuda` storage
layout); the bias is (NH, 4, DH). Inside the scan the carry is head-major (NH, B, DH) and the recurrent product is a
batched matmul over heads (the fast layout on CPU, measured in the research notes); the public state is batch-first
(B, NH, DH) so generation can gather beams on axis 0. Everything runs in float32; the recurrent matmul asks for
`Precision.HIGHEST` (on accelerators the default float32 matmul may round through TF32, and a recurrence compounds it).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from .config_translation import FUNCTIONS, check_function  # noqa: F401  (part of this module's API)


class SLSTMState(NamedTuple):
    """The recurrent state, each (B, NH, DH) float32. `lstm` uses y and c only (n and m stay zero)."""

    y: jax.Array
    c: jax.Array
    n: jax.Array
    m: jax.Array


def zero_state(batch: int, num_heads: int, head_dim: int) -> SLSTMState:
    """The fresh state: all zeros (n == 0 marks it fresh for the stabiliser)."""
    zeros = jnp.zeros((batch, num_heads, head_dim), jnp.float32)
    return SLSTMState(zeros, zeros, zeros, zeros)


def _pointwise(raw: jax.Array, carry: tuple, function: str) -> tuple:
    """raw (..., 4, DH) pre-activations, carry (y, c, n, m) each (..., DH) -> new (y, c, n, m)."""
    r_i, r_f, r_z, r_o = (raw[..., g, :] for g in range(4))
    _, c, n, m = carry
    if function == "lstm":
        c_new = jax.nn.sigmoid(r_f) * c + jax.nn.sigmoid(r_i) * jnp.tanh(r_z)
        return jax.nn.sigmoid(r_o) * jnp.tanh(c_new), c_new, n, m
    lfm = m + jax.nn.log_sigmoid(r_f)
    m_new = jnp.where(n == 0.0, r_i, jnp.maximum(r_i, lfm))
    i = jnp.minimum(jnp.exp(r_i - m_new), 1.0)
    f = jnp.minimum(jnp.exp(lfm - m_new), 1.0)
    c_new = f * c + i * jnp.tanh(r_z)
    n_new = f * n + i
    return jax.nn.sigmoid(r_o) * c_new / n_new, c_new, n_new, m_new


def _step_head_major(carry: tuple, wx_t: jax.Array, kernel: jax.Array, bias: jax.Array, function: str,
                     keep_t: Optional[jax.Array], reset_t: Optional[jax.Array]) -> tuple:
    """One step on a head-major carry (y, c, n, m) each (NH, B, DH); wx_t (NH, B, 4, DH); kernel (NH, DH, 4DH);
    bias (NH, 4, DH); keep_t / reset_t (B,) bool or None. Returns the new carry."""
    if reset_t is not None:  # a document border: this token starts from the fresh state
        carry = tuple(jnp.where(reset_t[None, :, None], 0.0, s) for s in carry)
    NH, B, DH = carry[0].shape
    recurrent = jax.lax.dot_general(carry[0], kernel, (((2,), (1,)), ((0,), (0,))),
                                    precision=jax.lax.Precision.HIGHEST)  # (NH, B, 4DH)
    raw = wx_t + recurrent.reshape(NH, B, 4, DH) + bias[:, None]
    new = _pointwise(raw, carry, function)
    if keep_t is not None:  # a padding token leaves the state untouched
        new = tuple(jnp.where(keep_t[None, :, None], s_new, s) for s_new, s in zip(new, carry))
    return new


def _to_head_major(state: SLSTMState) -> tuple:
    return tuple(jnp.swapaxes(s.astype(jnp.float32), 0, 1) for s in state)


def _to_batch_major(carry: tuple) -> SLSTMState:
    return SLSTMState(*(jnp.swapaxes(s, 0, 1) for s in carry))


def slstm_sequence(wx: jax.Array, kernel: jax.Array, bias: jax.Array, state: Optional[SLSTMState] = None,
                   function: str = "slstm", keep: Optional[jax.Array] = None, reset: Optional[jax.Array] = None,
                   unroll: int = 1) -> tuple[jax.Array, SLSTMState]:
    """Run the recurrence over a sequence.

    wx (B, S, 4, NH, DH): input pre-activations (gate, head, dim); kernel (NH, DH, 4DH); bias (NH, 4, DH);
    state: the state before the first token (zeros when None); keep (B, S) bool: False holds the state (padding);
    reset (B, S) bool: True starts that token from the fresh state (document border).
    Returns y (B, S, NH, DH) float32 (on held positions: the held y) and the state after the last token.
    """
    check_function(function)
    B, S, _, NH, DH = wx.shape
    if state is None:
        state = zero_state(B, NH, DH)
    wx_hm = jnp.transpose(wx.astype(jnp.float32), (1, 3, 0, 2, 4))  # (S, NH, B, 4, DH)
    kernel = kernel.astype(jnp.float32)
    bias = bias.astype(jnp.float32)
    xs = (wx_hm, None if keep is None else jnp.swapaxes(keep.astype(bool), 0, 1),
          None if reset is None else jnp.swapaxes(reset.astype(bool), 0, 1))

    def body(carry, inputs):
        wx_t, keep_t, reset_t = inputs
        carry = _step_head_major(carry, wx_t, kernel, bias, function, keep_t, reset_t)
        return carry, carry[0]

    carry, ys = jax.lax.scan(body, _to_head_major(state), xs, unroll=unroll)  # ys (S, NH, B, DH)
    return jnp.transpose(ys, (2, 0, 1, 3)), _to_batch_major(carry)


def slstm_step(wx_t: jax.Array, kernel: jax.Array, bias: jax.Array, state: SLSTMState, function: str = "slstm",
               keep_t: Optional[jax.Array] = None, reset_t: Optional[jax.Array] = None
               ) -> tuple[jax.Array, SLSTMState]:
    """One token: wx_t (B, 4, NH, DH), state each (B, NH, DH), keep_t / reset_t (B,) bool or None.
    Returns y (B, NH, DH) and the new state. The same step function as `slstm_sequence`'s scan body."""
    check_function(function)
    wx_hm = jnp.transpose(wx_t.astype(jnp.float32), (2, 0, 1, 3))  # (NH, B, 4, DH)
    carry = _step_head_major(_to_head_major(state), wx_hm, kernel.astype(jnp.float32), bias.astype(jnp.float32),
                             function, keep_t, reset_t)
    new_state = _to_batch_major(carry)
    return new_state.y, new_state


def state_to_library(state: SLSTMState, function: str = "slstm") -> jax.Array:
    """Our state -> the library's (num_states, B, D) tensor layout ((y, c, n, m) or (y, c) for lstm)."""
    parts = state if function == "slstm" else state[:2]
    return jnp.stack([s.reshape(s.shape[0], -1) for s in parts])


def state_from_library(states, num_heads: int, function: str = "slstm") -> SLSTMState:
    """The library's (num_states, B, D) state -> ours (each (B, NH, DH))."""
    states = jnp.asarray(states, jnp.float32)
    B, D = states.shape[1:]
    parts = [states[k].reshape(B, num_heads, D // num_heads) for k in range(states.shape[0])]
    if function == "lstm":
        parts += [jnp.zeros_like(parts[0])] * 2
    return SLSTMState(*parts)
