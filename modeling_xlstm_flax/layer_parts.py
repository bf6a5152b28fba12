"""The building blocks every layer kind shares (mLSTM layers in `xlstm_layers`, sLSTM layers in `slstm`), and the
one rule for padding masks and document borders that they follow.

Initialisers (small / Wang / gate bias), `XLSTMNorm`, `HeadwiseLinear`, `CausalConv1d`; the mask/border rule:

- A masked position (attention_mask == 0) changes no state: its input gate is exp(-1e30) = 0 and its forget gate
  is exactly 1, so the mLSTM memory (C, n, m) is untouched, and it never enters the conv window of the `mlstm`
  layer: each token convolves over the K-1 previous *unmasked* tokens (the window carried in the cache counts as
  unmasked). Its own output is meaningless (finite).
- A document border (document_borders True; needs `reset_at_document_boundaries`) resets both: the forget gate of
  the border token is exactly 0 (log f = -1e30, so the memory before it is multiplied by exp(-1e30) = 0) and conv
  taps reaching before the border read zeros, as a fresh sequence's zero window does. The next document runs as a
  fresh sequence (up to the stabiliser m, which enters only through eps). A border on a masked token still resets.

Upstream xlstm-jax approximates the reset with a forget-gate pre-activation of `reset_fgate_value` (-25): the old
memory then survives as exp(-25 + m_prev - i), visible once m_prev - i nears 25; and it keeps the conv window.

Shapes: B batch, S sequence, NH heads, F features, K conv kernel size.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# A finite "minus infinity" for gate pre-activations of masked (padding) tokens: exp() of it is 0, and rows made
# only of masked tokens stay finite in every kernel form.
MASKED_IGATE = -1e30
# Forget gate pre-activation of masked tokens: log_sigmoid(1e4) == 0 in float32, i.e. f = 1, the state is kept.
MASKED_FGATE = 1e4
# Forget gate pre-activation at a document border: log_sigmoid(-1e30) == -1e30, i.e. f = 0 in every form. Finite,
# so no -inf - -inf (NaN) appears in the stabiliser arithmetic or in gradients.
BORDER_FGATE = -1e30
# upstream's default `reset_fgate_value`, the only value accepted (the reset here is exact, see above)
UPSTREAM_RESET_FGATE_VALUE = -25.0


def check_borders_allowed(config, document_borders: Optional[jax.Array]) -> None:
    """Borders are honoured only with `reset_at_document_boundaries`; given to a model without it they would be
    silently ignored, so that is an error (trace time, plain Python values)."""
    if document_borders is None:
        return
    if not config.reset_at_document_boundaries:
        raise ValueError("document_borders were given, but this model has reset_at_document_boundaries=False and "
                         "would ignore them: build it with reset_at_document_boundaries=True (borders then reset "
                         "the memory and the conv window) or pass no document_borders")
    if config.reset_fgate_value != UPSTREAM_RESET_FGATE_VALUE:
        raise ValueError(f"reset_fgate_value={config.reset_fgate_value!r} is not supported: a document border "
                         "resets the memory exactly (forget gate 0), which upstream's reset_fgate_value="
                         f"{UPSTREAM_RESET_FGATE_VALUE} approximates; leave it at {UPSTREAM_RESET_FGATE_VALUE}")


def mask_gate_preacts(igate: jax.Array, fgate: jax.Array, attention_mask: Optional[jax.Array],
                      document_borders: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Gate pre-activations (B, S, NH) float32 -> the same with the rule applied (mask, then borders, so a border
    on a masked token still resets)."""
    if attention_mask is not None:
        keep = attention_mask[..., None].astype(bool)
        igate = jnp.where(keep, igate, MASKED_IGATE)
        fgate = jnp.where(keep, fgate, MASKED_FGATE)
    if document_borders is not None:
        fgate = jnp.where(document_borders[..., None].astype(bool), jnp.float32(BORDER_FGATE), fgate)
    return igate, fgate


def conv_taps(x: jax.Array, window: jax.Array, attention_mask: Optional[jax.Array],
              document_borders: Optional[jax.Array]) -> tuple[list[jax.Array], jax.Array]:
    """Inputs of a depthwise causal conv under the rule.

    x (B, S, F), window (B, K-1, F) (the previous K-1 unmasked inputs), mask / borders (B, S) or None.
    Returns taps, a list of K arrays (B, S, F) where taps[j] is the input K-1-j unmasked tokens back (taps[K-1] the
    token itself; zeros before a border or the start), and the new window (B, K-1, F): the last K-1 unmasked inputs.
    """
    B, S, F = x.shape
    W = window.shape[1]  # K - 1
    seq = jnp.concatenate([window.astype(x.dtype), x], axis=1)  # (B, P, F), P = W + S
    if attention_mask is None and document_borders is None:  # every token kept: plain shifted slices
        return [seq[:, j : j + S] for j in range(W + 1)], seq[:, S:]
    P = W + S
    keep = jnp.ones((B, S), bool) if attention_mask is None else attention_mask.astype(bool)
    keep = jnp.concatenate([jnp.ones((B, W), bool), keep], axis=1)  # (B, P)
    rank = jnp.cumsum(keep.astype(jnp.int32), axis=1)  # kept tokens up to and including p
    order = jnp.argsort(~keep, axis=1, stable=True)  # order[:, r - 1]: position of the r-th kept token
    positions = jnp.broadcast_to(jnp.arange(P), (B, P))
    if document_borders is None:
        start = jnp.zeros((B, P), jnp.int32)
    else:
        border = jnp.concatenate([jnp.zeros((B, W), bool), document_borders.astype(bool)], axis=1)
        start = jax.lax.cummax(jnp.where(border, positions, 0), axis=1)  # first position of each token's document

    def gather(ranks: jax.Array, doc_start: jax.Array) -> jax.Array:  # ranks, doc_start (B, N) -> (B, N, F)
        src = jnp.take_along_axis(order, jnp.clip(ranks, 1, P) - 1, axis=1)
        values = jnp.take_along_axis(seq, src[..., None], axis=1)
        return jnp.where((src >= doc_start)[..., None], values, jnp.zeros((), x.dtype))

    current_rank, current_start = rank[:, W:], start[:, W:]  # (B, S)
    taps = [gather(current_rank - (W - j), current_start) for j in range(W + 1)]
    last_rank, last_start = rank[:, -1:], start[:, -1:]  # (B, 1)
    new_window = gather(last_rank - (W - 1) + jnp.arange(W), jnp.broadcast_to(last_start, (B, W)))
    return taps, new_window


# ---------------------------------------------------------------------------------------------- initialisers
def _distribution_init(distribution: str, std: float):
    if distribution == "normal":
        return nn.initializers.normal(stddev=std)
    if distribution == "truncated_normal":
        return nn.initializers.truncated_normal(stddev=std)
    if distribution == "uniform":
        bound = std * math.sqrt(3.0)
        return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    raise ValueError(f"unknown init distribution {distribution!r}")


def small_init(dim: int, distribution: str = "normal"):
    """Transformers-without-tears init: std = sqrt(2 / (5 dim))."""
    return _distribution_init(distribution, math.sqrt(2.0 / (5.0 * dim)))


def wang_init(dim: int, num_blocks: int, distribution: str = "normal"):
    """Wang init for output projections: std = 2 / num_blocks / sqrt(dim)."""
    return _distribution_init(distribution, 2.0 / num_blocks / math.sqrt(dim))


def output_init(fn_name: str, dim: int, num_blocks: int, distribution: str):
    return wang_init(dim, num_blocks, distribution) if fn_name == "wang" else small_init(dim, distribution)


def gate_bias_init(init_range):
    """Gate bias init: None -> normal(0.1); number -> constant; [low, high] -> linspace over heads."""
    if init_range is None:
        return nn.initializers.normal(stddev=0.1)
    if isinstance(init_range, (list, tuple)):
        low, high = init_range
        return lambda key, shape, dtype=jnp.float32: jnp.linspace(low, high, shape[-1], dtype=dtype).reshape(shape)
    return nn.initializers.constant(init_range)


# ---------------------------------------------------------------------------------------------- components
class XLSTMNorm(nn.Module):
    """LayerNorm or RMSNorm over the last axis with statistics in float32; scale only, no bias.

    With `num_heads > 1` the last axis (F = NH * DH) is normalised per head slice of DH features (the multi-head
    out-norm); the scale stays one flat (F,) vector as in transformers' PyTorch xLSTM.
    x: (..., F) -> (..., F) in `dtype`.
    """

    norm_type: str
    eps: float
    num_heads: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], self.num_heads, features // self.num_heads)
        if self.norm_type == "layernorm":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y.reshape(x.shape) * scale).astype(self.dtype)


class HeadwiseLinear(nn.Module):
    """Block-diagonal projection (upstream `LinearHeadwiseExpand`): kernel (NH, out/NH, in/NH), bias (out,).

    x: (..., in) -> (..., out).
    """

    num_heads: int
    out_features: int
    use_bias: bool = False
    kernel_init: Any = nn.initializers.zeros
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_per_head = x.shape[-1] // self.num_heads
        kernel = self.param(
            "kernel", self.kernel_init, (self.num_heads, self.out_features // self.num_heads, in_per_head), jnp.float32
        )
        x = x.astype(self.dtype).reshape(*x.shape[:-1], self.num_heads, in_per_head)
        y = jnp.einsum("...hd,hod->...ho", x, kernel.astype(self.dtype)).reshape(*x.shape[:-2], -1)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.out_features,), jnp.float32).astype(self.dtype)
        return y


class CausalConv1d(nn.Module):
    """Depthwise causal conv: kernel (K, F), bias (F,). Carries the last K-1 inputs as state for decoding.

    x: (B, S, F), window: (B, K-1, F) or None (zeros), attention_mask / document_borders (B, S) or None
    -> y (B, S, F), new window (B, K-1, F). Masked tokens never enter the window; taps before a border read zeros
    (`conv_taps`).
    """

    kernel_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, window: Optional[jax.Array] = None, attention_mask: Optional[jax.Array] = None,
                 document_borders: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        B, S, F = x.shape
        K = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (K, F), jnp.float32).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (F,), jnp.float32).astype(self.dtype)
        x = x.astype(self.dtype)
        if window is None:
            window = jnp.zeros((B, K - 1, F), self.dtype)
        taps, new_window = conv_taps(x, window, attention_mask, document_borders)
        y = bias + sum(taps[j] * kernel[j] for j in range(K))
        return y, new_window
