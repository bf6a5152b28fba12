"""sLSTM layer, gated feedforward and block (NX-AI `xlstm` library's `sLSTMLayer` / `sLSTMBlock`) as Flax modules.

Shapes: B batch, S sequence, D embedding dim, NH heads, DH = D / NH, K conv kernel size, FF feedforward width.

    block(x)  = x1 + FFN(norm_ffn(x1)),   x1 = x + slstm_layer(norm_slstm(x))        (FFN only if configured)
    layer(h)  = GroupNorm_per_head(cell(Wx)),  Wx = [igate(xc), fgate(xc), zgate(h), ogate(h)]
                xc = SiLU(causal_conv(h)) when K > 0, else h

Params (the library's names and layouts are translated once, in `library_params`):

    norm_slstm/scale (D,)                        norm_ffn/scale (D,)
    slstm_layer/conv1d/{kernel (K, D), bias (D,)}           (only when K > 0)
    slstm_layer/{igate,fgate,zgate,ogate}/kernel (NH, DH, DH)     headwise, y[h, o] = sum_j x[h, j] W[h, o, j]
    slstm_layer/recurrent_kernel (NH, DH, 4 DH)  slstm_layer/bias (NH, 4, DH)    (see `slstm_cell`)
    slstm_layer/group_norm/scale (D,)                        (only with `group_norm_weight`)
    ffn/{proj_up_gate,proj_up}/kernel (D, FF)    ffn/proj_down/kernel (FF, D)    (+ bias with `ff_bias`)

Norm scales are the full scale (the library's residual-weight norms store `weight` with scale = 1 + weight).
The layer state (decoding) is a dict {"y", "c", "n", "m": (B, NH, DH) float32, "conv": (B, K-1, D)} ("conv" only
when K > 0).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import slstm_cell
from .config_translation import ACTIVATION_NAMES, SLSTMConfig  # noqa: F401  (SLSTMConfig is part of this module's API)
from .xlstm_layers import CausalConv1d, HeadwiseLinear, XLSTMNorm, small_init, wang_init

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


def zero_layer_state(config: SLSTMConfig, batch: int) -> dict:
    """The fresh decoding state of one sLSTM layer (see the module docstring)."""
    state = slstm_cell.zero_state(batch, config.num_heads, config.head_dim)._asdict()
    if config.conv1d_kernel_size > 0:
        state["conv"] = jnp.zeros((batch, config.conv1d_kernel_size - 1, config.embedding_dim), jnp.float32)
    return state


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
    state: None (fresh, no state returned) or the dict of `zero_layer_state`. With S == 1 and a state this is the
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
        new_state = {} if state is not None else None
        if K > 0:  # the shared conv follows the mask/border rule (`masking`): a masked token never enters the
            # window, a border starts an empty one (as for the mLSTM layers)
            xc, window = CausalConv1d(K, dtype=self.dtype, name="conv1d")(
                x, None if state is None else state["conv"], attention_mask, document_borders)
            xc = nn.silu(xc)
            if state is not None:
                new_state["conv"] = window.astype(jnp.float32)
        else:
            xc = x
        headwise = partial(HeadwiseLinear, NH, D, use_bias=False, kernel_init=small_init(D), dtype=self.dtype)
        wx = jnp.stack([headwise(name="igate")(xc), headwise(name="fgate")(xc),
                        headwise(name="zgate")(x), headwise(name="ogate")(x)], axis=2)  # (B, S, 4, D)
        wx = wx.reshape(B, S, 4, NH, DH)
        kernel = self.param("recurrent_kernel", nn.initializers.zeros, (NH, DH, 4 * DH), jnp.float32)
        bias = self.param("bias", powerlaw_bias_init(cfg), (NH, 4, DH), jnp.float32)
        cell_state = None if state is None else slstm_cell.SLSTMState(*(state[k] for k in ("y", "c", "n", "m")))
        reset = document_borders
        if S == 1 and cell_state is not None:
            y, cell_state = slstm_cell.slstm_step(wx[:, 0], kernel, bias, cell_state, cfg.function,
                                                  None if keep is None else keep[:, 0],
                                                  None if reset is None else reset[:, 0].astype(bool))
            y = y[:, None]
        else:
            y, cell_state = slstm_cell.slstm_sequence(wx, kernel, bias, cell_state, cfg.function, keep, reset)
        if new_state is not None:
            new_state.update(cell_state._asdict())
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
