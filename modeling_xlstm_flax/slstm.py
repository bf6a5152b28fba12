"""The sLSTM: recurrence, layer, gated feedforward and block (NX-AI `xlstm` library's `sLSTMLayer` / `sLSTMBlock`) as Flax modules.

Shapes: B batch, S sequence, D embedding dim, NH heads, DH = D / NH, K conv kernel size, FF feedforward width.

    block(x)  = x1 + FFN(norm_ffn(x1)),   x1 = x + slstm_layer(norm_slstm(x))        (FFN only if configured)
    layer(h)  = GroupNorm_per_head(cell(Wx)),  Wx = [igate(xc), fgate(xc), zgate(h), ogate(h)]
                xc = SiLU(causal_conv(h)) when K > 0, else h

Params (the library's names and layouts are translated once, in `library_params`):

    norm_slstm/scale (D,)                        norm_ffn/scale (D,)
    slstm_layer/conv1d/{kernel (K, D), bias (D,)}           (only when K > 0)
    slstm_layer/{igate,fgate,zgate,ogate}/kernel (NH, DH, DH)     headwise, y[h, o] = sum_j x[h, j] W[h, o, j]
    slstm_layer/recurrent_kernel (NH, DH, 4 DH)  slstm_layer/bias (NH, 4, DH)    (see the recurrence below)
    slstm_layer/group_norm/scale (D,)                        (only with `group_norm_weight`)
    ffn/{proj_up_gate,proj_up}/kernel (D, FF)    ffn/proj_down/kernel (FF, D)    (+ bias with `ff_bias`)

Norm scales are the full scale (the library's residual-weight norms store `weight` with scale = 1 + weight).
The layer state (decoding) is a `cache.SLSTMCache`: y, c, n, m (B, NH, DH) float32, conv (B, K-1, D) (None when
K == 0).

The recurrence (NX-AI `xlstm` library, `function: "slstm"` and `"lstm"`) as a float32 `lax.scan`.

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

from functools import partial
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from .cache import SLSTMCache
from .layer_parts import CausalConv1d, HeadwiseLinear, XLSTMNorm, small_init, wang_init
from .config_translation import ACTIVATION_NAMES, FUNCTIONS, SLSTMConfig, check_function  # noqa: F401  (part of the API)


# ---------------------------------------------------------------------------------------------- the recurrence
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


# ---------------------------------------------------------------------------------------------- layer and block
# The library's feedforward activations by name (`xlstm.components.feedforward`); "gelu" is torch's exact erf GELU.
LIBRARY_ACTIVATIONS = {
    "gelu": partial(nn.gelu, approximate=False),
    "relu": nn.relu,
    "relu^2": lambda x: jnp.square(nn.relu(x)),
    "sigmoid": nn.sigmoid,
    "swish": nn.silu,
    "selu": nn.selu,
}
assert tuple(LIBRARY_ACTIVATIONS) == ACTIVATION_NAMES  # the config module checks names without importing flax


def powerlaw_bias_init(config: SLSTMConfig):
    """The library's `powerlaw_blockdependent` bias (NH, 4, DH): forget gate per head
    -(-5 + 12 * (d / (DH - 1)) ** (0.3 + 1.3 * block_idx / (num_blocks - 1))), the other gates 0."""

    def init(key, shape, dtype=jnp.float32):
        ratio = config.block_idx / (config.num_blocks - 1) if config.num_blocks > 1 else 0.0
        dims = jnp.arange(config.head_dim, dtype=jnp.float32) / max(config.head_dim - 1, 1)
        fgate = -(-5.0 + 12.0 * dims ** (0.3 + 1.3 * ratio))
        return jnp.zeros(shape, dtype).at[:, 1, :].set(fgate.astype(dtype))

    return init


def _group_norm(y: jax.Array, scale: Optional[jax.Array], eps: float) -> jax.Array:
    """Per-head layer norm of y (B, S, NH, DH) in float32 (biased variance), times scale (D,) -> (B, S, D)."""
    y = y - jnp.mean(y, axis=-1, keepdims=True)
    y = y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=-1, keepdims=True) + eps)
    y = y.reshape(*y.shape[:2], -1)
    return y if scale is None else y * scale


class SLSTMLayer(nn.Module):
    """x (B, S, D) -> y (B, S, D) float32-accurate, new state (or None when no state was given).

    The argument order is `FlaxXLSTMBlock`'s (x, attention_mask, document_borders, state, deterministic).
    state: None (fresh, no state returned) or the block's `cache.SLSTMCache`. With S == 1 and a state this is the
    one-token step (no scan). attention_mask (B, S): 0 = padding (holds the state, zero conv input);
    document_borders (B, S): True = the token starts from the fresh state.
    """

    config: SLSTMConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask=None, document_borders=None, state=None, deterministic=True):
        cfg = self.config
        if not deterministic and cfg.dropout > 0:
            raise NotImplementedError(f"sLSTM dropout={cfg.dropout} in training (deterministic=False) is not "
                                      "implemented; train with dropout 0")
        B, S, D = x.shape
        NH, DH, K = cfg.num_heads, cfg.head_dim, cfg.conv1d_kernel_size
        keep = None if attention_mask is None else attention_mask.astype(bool)
        if K > 0:  # the shared conv follows the mask/border rule (`layer_parts`): a masked token never enters the
            # window, a border starts an empty one (as for the mLSTM layers)
            xc, window = CausalConv1d(K, dtype=self.dtype, name="conv1d")(
                x, None if state is None else state.conv, attention_mask, document_borders)
            xc = nn.silu(xc)
        else:
            xc, window = x, None
        headwise = partial(HeadwiseLinear, NH, D, use_bias=False, kernel_init=small_init(D), dtype=self.dtype)
        wx = jnp.stack([headwise(name="igate")(xc), headwise(name="fgate")(xc),
                        headwise(name="zgate")(x), headwise(name="ogate")(x)], axis=2)  # (B, S, 4, D)
        wx = wx.reshape(B, S, 4, NH, DH)
        kernel = self.param("recurrent_kernel", nn.initializers.zeros, (NH, DH, 4 * DH), jnp.float32)
        bias = self.param("bias", powerlaw_bias_init(cfg), (NH, 4, DH), jnp.float32)
        cell_state = None if state is None else SLSTMState(state.y, state.c, state.n, state.m)
        reset = document_borders
        if S == 1 and cell_state is not None:
            y, cell_state = slstm_step(wx[:, 0], kernel, bias, cell_state, cfg.function,
                                       None if keep is None else keep[:, 0],
                                       None if reset is None else reset[:, 0].astype(bool))
            y = y[:, None]
        else:
            y, cell_state = slstm_sequence(wx, kernel, bias, cell_state, cfg.function, keep, reset)
        new_state = None if state is None else SLSTMCache(
            *cell_state, conv=None if window is None else window.astype(jnp.float32))
        scale = GroupNormScale(D, name="group_norm")() if cfg.group_norm_weight else None
        return _group_norm(y, scale, cfg.norm_eps).astype(self.dtype), new_state


class GroupNormScale(nn.Module):
    """Holds the per-head group norm's scale (D,) under `group_norm/scale` (ones at init)."""

    features: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)


class SLSTMFeedForward(nn.Module):
    """The library's `GatedFeedForward`: proj_down(act(proj_up_gate x) * proj_up x). (B, S, D) -> (B, S, D)."""

    config: SLSTMConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = partial(nn.Dense, use_bias=cfg.ff_bias, dtype=self.dtype, param_dtype=jnp.float32)
        act = LIBRARY_ACTIVATIONS[cfg.ff_act_fn]
        up = partial(dense, cfg.ff_dim, kernel_init=small_init(cfg.embedding_dim))
        h = act(up(name="proj_up_gate")(x)) * up(name="proj_up")(x)
        return dense(cfg.embedding_dim, kernel_init=wang_init(cfg.embedding_dim, cfg.num_blocks), name="proj_down")(h)


class SLSTMBlock(nn.Module):
    """Pre-norm residual sLSTM block (+ gated feedforward). x (B, S, D) -> (B, S, D), new layer state (or None).
    Called like `FlaxXLSTMBlock`: (x, attention_mask, document_borders, state, deterministic)."""

    config: SLSTMConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask=None, document_borders=None, state=None, deterministic=True):
        cfg = self.config
        norm = partial(XLSTMNorm, "layernorm", cfg.norm_eps, dtype=self.dtype)
        y, new_state = SLSTMLayer(cfg, dtype=self.dtype, name="slstm_layer")(
            norm(name="norm_slstm")(x), attention_mask, document_borders, state, deterministic)
        x = x + y
        if cfg.ff_proj_factor is not None:
            x = x + SLSTMFeedForward(cfg, dtype=self.dtype, name="ffn")(norm(name="norm_ffn")(x))
        return x, new_state
