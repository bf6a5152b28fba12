"""Flax xLSTM language model (xlstm-jax `xlstm_parallel` family) as Hugging Face `FlaxPreTrainedModel`s.

Param names follow transformers' PyTorch `xLSTMForCausalLM` (so `from_pt=True` maps its state dict directly):

    backbone/embeddings/embedding (V, D)
    backbone/blocks/<i>/norm_mlstm/scale (D,)          backbone/blocks/<i>/norm_ffn/scale (D,)
    backbone/blocks/<i>/mlstm_layer/...                backbone/blocks/<i>/ffn/{proj_up_gate,proj_up,proj_down}
    backbone/out_norm/scale (D,)                       lm_head/kernel (D, V)

With `scan_blocks=True` the blocks are `backbone/blocks/scanned/...` with a leading block axis
(`stack_block_params` / `unstack_block_params` convert). The mapping to upstream's xlstm-jax tree is in
`modeling_xlstm_flax.conversion.upstream_params`.

Shapes: B batch, S sequence, D embedding_dim, NH heads, DHQK / DHV head dims, V vocabulary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import weakref
from functools import partial
from pathlib import Path
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.frozen_dict import freeze, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict
from transformers import GenerationConfig
from transformers.modeling_flax_outputs import FlaxBaseModelOutput, FlaxCausalLMOutput
from transformers.modeling_flax_utils import FlaxPreTrainedModel

from .configuration import XLSTMFlaxConfig
from . import mlstm_kernels
from .input_checks import check_batch_size, check_cache, check_generate_inputs, check_inputs

logger = logging.getLogger(__name__)

# A finite "minus infinity" for gate pre-activations of masked (padding) tokens: exp() of it is 0, and rows made
# only of masked tokens stay finite in every kernel form.
MASKED_IGATE = -1e30
# Forget gate pre-activation of masked tokens: log_sigmoid(1e4) == 0 in float32, i.e. f = 1, the state is kept.
MASKED_FGATE = 1e4


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


def soft_cap(x: jax.Array, cap: Optional[float]) -> jax.Array:
    """cap * tanh(x / cap); identity when cap is None."""
    if cap is None:
        return x
    return cap * jnp.tanh(x / cap)


ACTIVATIONS = {
    "gelu": nn.gelu,  # tanh approximation, as upstream (flax default)
    "relu": nn.relu,
    "relu^2": lambda x: jnp.square(nn.relu(x)),
    "sigmoid": nn.sigmoid,
    "swish": nn.silu,
    "selu": nn.selu,
}


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

    x: (B, S, F), window: (B, K-1, F) or None (zeros) -> y (B, S, F), new window (B, K-1, F).
    """

    kernel_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, window: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        B, S, F = x.shape
        K = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (K, F), jnp.float32).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (F,), jnp.float32).astype(self.dtype)
        x = x.astype(self.dtype)
        if window is None:
            window = jnp.zeros((B, K - 1, F), self.dtype)
        padded = jnp.concatenate([window.astype(self.dtype), x], axis=1)  # (B, K-1+S, F)
        y = bias + sum(padded[:, j : j + S] * kernel[j] for j in range(K))
        return y, padded[:, S:]


def mask_gates(
    config: XLSTMFlaxConfig,
    igate: jax.Array,
    fgate: jax.Array,
    attention_mask: Optional[jax.Array],
    document_borders: Optional[jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """Gate pre-activations (B, S, NH) in float32 after soft cap, document resets and padding masks.

    Padding tokens (attention_mask == 0) get i = -inf-like and f = 1, so they never touch the state.
    """
    igate = soft_cap(igate.astype(jnp.float32), config.gate_soft_cap)
    fgate = soft_cap(fgate.astype(jnp.float32), config.gate_soft_cap)
    if document_borders is not None and config.reset_at_document_boundaries:
        fgate = jnp.where(document_borders[..., None], jnp.float32(config.reset_fgate_value), fgate)
    if attention_mask is not None:
        keep = attention_mask[..., None].astype(bool)
        igate = jnp.where(keep, igate, MASKED_IGATE)
        fgate = jnp.where(keep, fgate, MASKED_FGATE)
    return igate, fgate


def run_mlstm_cell(
    config: XLSTMFlaxConfig,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    igate: jax.Array,
    fgate: jax.Array,
    state: Optional[mlstm_kernels.MLSTMState],
) -> tuple[jax.Array, Optional[mlstm_kernels.MLSTMState]]:
    """Dispatch to a kernel form. q, k (B, S, NH, DHQK), v (B, S, NH, DHV), gates (B, S, NH).

    Without a state, `parallel_stabilized` runs upstream's quadratic form; with a state it is the chunkwise form
    with one chunk. A single token with a state uses the step form. Returns h (B, S, NH, DHV) and the new state
    (None when no state was given).
    """
    to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # (B, S, NH, ...) <-> (B, NH, S, ...)
    q, k, v, igate, fgate = map(to_heads, (q, k, v, igate, fgate))
    S = q.shape[2]
    eps = config.cell_eps
    kernel = config.sequence_kernel
    if state is None and kernel == "parallel_stabilized":
        return to_heads(mlstm_kernels.parallel_stabilized(q, k, v, igate, fgate, eps=eps)), None
    if state is not None and S == 1:  # config.step_kernel == "recurrent", the only step form
        h, new_state = mlstm_kernels.recurrent_step(state, q[:, :, 0], k[:, :, 0], v[:, :, 0], igate[..., 0],
                                                    fgate[..., 0], eps=eps)
        h = h[:, :, None]
    elif kernel == "recurrent":
        h, new_state = mlstm_kernels.recurrent_sequence(q, k, v, igate, fgate, state=state, eps=eps)
    else:
        chunk = S if kernel == "parallel_stabilized" else config.chunk_size
        h, new_state = mlstm_kernels.chunkwise(q, k, v, igate, fgate, state=state, chunk_size=chunk, eps=eps)
    return to_heads(h), (new_state if state is not None else None)


class XLSTMQKNorm(nn.Module):
    """Optional per-head q/k norm (upstream `add_qk_norm`): normalises the head dim, scale (DH,)."""

    config: XLSTMFlaxConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        if not self.config.add_qk_norm:
            return q, k
        norm = partial(XLSTMNorm, self.config.mlstm_norm_type, self.config.cell_norm_eps, dtype=self.dtype)
        return norm(name="q_norm")(q), norm(name="k_norm")(k)


class XLSTMLayerV1(nn.Module):
    """The xLSTM-7B mLSTM layer (`mlstm_v1`): dense q/k/v/o, gates from x, multi-head out-norm, sigmoid o-gate.

    x: (B, S, D) -> y (B, S, D), new state. State: {"c", "n", "m"} (see `mlstm_kernels.MLSTMState`).
    """

    config: XLSTMFlaxConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask=None, document_borders=None, state=None, deterministic=True):
        cfg = self.config
        B, S, D = x.shape
        NH = cfg.num_heads
        dense = partial(nn.Dense, use_bias=cfg.bias, dtype=self.dtype, param_dtype=jnp.float32)
        qkv_init = small_init(D, cfg.init_distribution)
        q = dense(cfg.qk_dim, kernel_init=qkv_init, name="q")(x)
        k = dense(cfg.qk_dim, kernel_init=qkv_init, name="k")(x)
        v = dense(cfg.v_dim, kernel_init=qkv_init, name="v")(x)
        o = dense(cfg.v_dim, kernel_init=nn.initializers.zeros, name="ogate_preact")(x)
        gate = partial(nn.Dense, NH, use_bias=True, dtype=jnp.dtype(cfg.gate_dtype), param_dtype=jnp.float32,
                       kernel_init=nn.initializers.zeros)
        igate = gate(bias_init=gate_bias_init(cfg.igate_bias_init_range), name="igate_preact")(x)
        fgate = gate(bias_init=gate_bias_init(cfg.fgate_bias_init_range), name="fgate_preact")(x)
        igate, fgate = mask_gates(cfg, igate, fgate, attention_mask, document_borders)

        q = q.reshape(B, S, NH, cfg.qk_head_dim)
        k = k.reshape(B, S, NH, cfg.qk_head_dim)
        v = v.reshape(B, S, NH, cfg.v_head_dim)
        q, k = XLSTMQKNorm(cfg, dtype=self.dtype, name="qk_norm")(q, k)
        cell_state = None if state is None else mlstm_kernels.MLSTMState(state["c"], state["n"], state["m"])
        h, new_cell = run_mlstm_cell(cfg, q, k, v, igate, fgate, cell_state)
        h = XLSTMNorm(cfg.cell_norm_type_v1, cfg.cell_norm_eps, num_heads=NH, dtype=self.dtype,
                      name="multihead_norm")(h.reshape(B, S, cfg.v_dim))
        h = nn.sigmoid(o) * h
        y = dense(D, kernel_init=output_init(cfg.output_init_fn, D, cfg.num_blocks, cfg.init_distribution),
                  name="out_proj")(h)
        y = nn.Dropout(rate=cfg.dropout)(y, deterministic=deterministic)
        new_state = None if new_cell is None else dict(new_cell._asdict())
        return y, new_state


class XLSTMLayerConv(nn.Module):
    """The original Mamba-style mLSTM layer (`mlstm`): up-projection, causal conv1d, headwise q/k/v, learnable
    skip, swish z branch. x: (B, S, D) -> y (B, S, D), new state {"c", "n", "m", "conv"} with the conv window
    (B, K-1, inner_dim) - upstream's cache forgets it, ours carries it.
    """

    config: XLSTMFlaxConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask=None, document_borders=None, state=None, deterministic=True):
        cfg = self.config
        B, S, D = x.shape
        NH, NPH, inner = cfg.num_heads, cfg.num_proj_heads, cfg.inner_dim
        dense = partial(nn.Dense, use_bias=cfg.bias, dtype=self.dtype, param_dtype=jnp.float32)
        up_init = small_init(D, cfg.init_distribution)
        x_mlstm = dense(inner, kernel_init=up_init, name="proj_up_mlstm")(x)
        z = dense(cfg.v_dim, kernel_init=up_init, name="proj_up_z")(x)
        if cfg.debug_cell:
            h = z
            new_state = state
        else:
            if attention_mask is not None:  # padding must not leak into the conv window
                x_mlstm = jnp.where(attention_mask[..., None].astype(bool), x_mlstm, 0)
            window = None if state is None else state["conv"]
            x_conv, new_window = CausalConv1d(cfg.conv1d_kernel_size, dtype=self.dtype, name="conv1d")(x_mlstm, window)
            x_conv_act = nn.swish(x_conv)

            headwise = partial(HeadwiseLinear, NPH, use_bias=cfg.bias, kernel_init=small_init(D, cfg.init_distribution),
                               dtype=self.dtype)
            if cfg.vmap_qk:
                qk = nn.vmap(HeadwiseLinear, variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=None, out_axes=0, axis_size=2)(
                    NPH, cfg.qk_dim, cfg.bias, small_init(D, cfg.init_distribution), dtype=self.dtype, name="qk_proj"
                )(x_conv_act)
                q, k = qk[0], qk[1]
            else:
                q = headwise(cfg.qk_dim, name="q_proj")(x_conv_act)
                k = headwise(cfg.qk_dim, name="k_proj")(x_conv_act)
            v = headwise(cfg.v_dim, name="v_proj")(x_mlstm)

            gate_in = {"qkv": None, "x_mlstm": x_mlstm, "x_mlstm_conv": x_conv, "x_mlstm_conv_act": x_conv_act}[
                cfg.gate_input
            ]
            if gate_in is None:
                parts = (q, k, v)
                if cfg.gate_linear_headwise:  # group each head's q, k and v features together
                    parts = [p.reshape(B, S, NH, -1) for p in parts]
                    gate_in = jnp.concatenate(parts, axis=-1).reshape(B, S, -1)
                else:
                    gate_in = jnp.concatenate(parts, axis=-1)
            gate_dtype = jnp.dtype(cfg.gate_dtype)
            if cfg.gate_linear_headwise:
                gate = partial(HeadwiseLinear, NH, NH, True, nn.initializers.zeros, dtype=gate_dtype)
            else:
                gate = partial(nn.Dense, NH, use_bias=True, dtype=gate_dtype, param_dtype=jnp.float32,
                               kernel_init=nn.initializers.zeros)
            igate = gate(bias_init=gate_bias_init(cfg.igate_bias_init_range), name="igate_preact")(gate_in)
            fgate = gate(bias_init=gate_bias_init(cfg.fgate_bias_init_range), name="fgate_preact")(gate_in)
            igate, fgate = mask_gates(cfg, igate, fgate, attention_mask, document_borders)

            q = q.reshape(B, S, NH, cfg.qk_head_dim)
            k = k.reshape(B, S, NH, cfg.qk_head_dim)
            q, k = XLSTMQKNorm(cfg, dtype=self.dtype, name="qk_norm")(q, k)
            cell_state = None if state is None else mlstm_kernels.MLSTMState(state["c"], state["n"], state["m"])
            h, new_cell = run_mlstm_cell(cfg, q, k, v.reshape(B, S, NH, cfg.v_head_dim), igate, fgate, cell_state)
            h = XLSTMNorm(cfg.mlstm_norm_type, cfg.cell_norm_eps, num_heads=NH, dtype=self.dtype,
                          name="multihead_norm")(h.reshape(B, S, cfg.v_dim))
            if cfg.v_dim != inner:
                x_conv_act = headwise(cfg.v_dim, name="x_mlstm_conv_scaling")(x_conv_act)
            skip = self.param("learnable_skip", nn.initializers.ones, (x_conv_act.shape[-1],), jnp.float32)
            h = (h + skip.astype(self.dtype) * x_conv_act) * nn.swish(z)
            new_state = None if new_cell is None else dict(new_cell._asdict(), conv=new_window.astype(jnp.float32))
        y = dense(D, kernel_init=output_init(cfg.output_init_fn, D, cfg.num_blocks, cfg.init_distribution),
                  name="out_proj")(h)
        y = nn.Dropout(rate=cfg.dropout)(y, deterministic=deterministic)
        return y, new_state


class XLSTMFeedForward(nn.Module):
    """Gated (`ffn_gated`: act(proj_up_gate x) * proj_up x) or plain (`ffn`) feedforward. (B, S, D) -> (B, S, D)."""

    config: XLSTMFlaxConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        D = x.shape[-1]
        dense = partial(nn.Dense, use_bias=cfg.bias, dtype=self.dtype, param_dtype=jnp.float32)
        up_init = small_init(D, cfg.ff_init_distribution)
        act = ACTIVATIONS[cfg.ff_act_fn]
        if cfg.ff_type == "ffn_gated":
            h = act(dense(cfg.ff_dim, kernel_init=up_init, name="proj_up_gate")(x))
            h = h * dense(cfg.ff_dim, kernel_init=up_init, name="proj_up")(x)
        else:
            h = act(dense(cfg.ff_dim, kernel_init=up_init, name="proj_up")(x))
        down_init = output_init(cfg.ff_output_init_fn, D, cfg.num_blocks, cfg.ff_init_distribution)
        y = dense(D, kernel_init=down_init, name="proj_down")(h)
        return nn.Dropout(rate=cfg.dropout)(y, deterministic=deterministic)


class FlaxXLSTMBlock(nn.Module):
    """Pre-norm residual block: x + mLSTM(norm(x)), then x + FFN(norm(x)); optional post-norms on the branch
    outputs. x: (B, S, D) -> (B, S, D), new layer state. `deterministic` is positional argument 5 (counting
    self), static under `nn.remat`."""

    config: XLSTMFlaxConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask=None, document_borders=None, state=None, deterministic=True):
        cfg = self.config
        norm = partial(XLSTMNorm, cfg.block_norm_type, cfg.block_norm_eps, dtype=self.dtype)
        layer_cls = XLSTMLayerV1 if cfg.layer_type == "mlstm_v1" else XLSTMLayerConv
        y, new_state = layer_cls(cfg, dtype=self.dtype, name="mlstm_layer")(
            norm(name="norm_mlstm")(x), attention_mask, document_borders, state, deterministic
        )
        if cfg.add_post_norm:
            y = norm(name="post_norm_mlstm")(y)
        x = x + y
        if cfg.ff_type is not None:
            y = XLSTMFeedForward(cfg, dtype=self.dtype, name="ffn")(norm(name="norm_ffn")(x), deterministic)
            if cfg.add_post_norm:
                y = norm(name="post_norm_ffn")(y)
            x = x + y
        return x, new_state


class _ScannedBlock(nn.Module):
    """`FlaxXLSTMBlock` in the (carry, xs) -> (carry, ys) form `nn.scan` needs; ys = (new state, block output).
    `deterministic` is positional argument 5 (counting self), static under `nn.remat`."""

    config: XLSTMFlaxConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, state, attention_mask, document_borders, deterministic):
        x, new_state = FlaxXLSTMBlock(self.config, dtype=self.dtype, name="block")(
            x, attention_mask, document_borders, state, deterministic
        )
        return x, (new_state, x)


class FlaxXLSTMBlockCollection(nn.Module):
    """The stack of blocks, unrolled (`blocks/<i>/...`) or scanned (`blocks/scanned/block/...`, leading axis).

    cache: per-block states (a list, or one pytree with a leading block axis when scanned), or None.
    Returns the last block's output (B, S, D), the new cache (same layout, or None) and, when
    `output_hidden_states`, the tuple of the NB block outputs, each (B, S, D).

    gradient_checkpointing: each block runs under `nn.remat` (inside the `nn.scan` body when scanned), so a
    backward pass keeps only the blocks' inputs (B, S, D) and recomputes everything inside a block; same
    numbers, same param tree. (XLA:CPU does not lower its peak for the unrolled layout, only for the scanned
    one: `benchmarks/README.md`.)
    """

    config: XLSTMFlaxConfig
    dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    @nn.compact
    def __call__(self, x, attention_mask=None, document_borders=None, cache=None, deterministic=True,
                 output_hidden_states=False):
        cfg = self.config
        if cfg.scan_blocks:
            # the cache is batch-first (B, NB, ...) so generation utilities can gather beams; scan wants NB first
            if cache is not None:
                cache = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 1, 0), cache)
            body = _ScannedBlock
            if self.gradient_checkpointing:  # scan already stops CSE across iterations: prevent_cse is not needed
                body = nn.remat(_ScannedBlock, static_argnums=(5,), prevent_cse=False)
            scan = nn.scan(
                body,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0 if cache is not None else nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_blocks,
            )
            x, (new_cache, per_block) = scan(cfg, dtype=self.dtype, name="scanned")(
                x, cache, attention_mask, document_borders, deterministic
            )
            hidden = tuple(per_block[i] for i in range(cfg.num_blocks)) if output_hidden_states else None
            if new_cache is not None:
                new_cache = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 1), new_cache)
            return x, new_cache, hidden
        block_cls = nn.remat(FlaxXLSTMBlock, static_argnums=(5,)) if self.gradient_checkpointing else FlaxXLSTMBlock
        new_cache = [] if cache is not None else None
        hidden = ()
        for i in range(cfg.num_blocks):
            state = None if cache is None else cache[i]
            x, new_state = block_cls(cfg, dtype=self.dtype, name=str(i))(
                x, attention_mask, document_borders, state, deterministic
            )
            hidden += (x,)
            if cache is not None:
                new_cache.append(new_state)
        return x, new_cache, (hidden if output_hidden_states else None)


class FlaxXLSTMModule(nn.Module):
    """Embeddings, blocks and the post-blocks norm. input_ids (B, S) -> last hidden state (B, S, D).

    hidden_states (with `output_hidden_states`), as transformers' PyTorch `xLSTMModel` returns them: NB + 1
    arrays (B, S, D), the output of each of the NB blocks, then the final (normalised) state, equal to
    `last_hidden_state`. The embeddings are not included.
    """

    config: XLSTMFlaxConfig
    dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        cfg = self.config
        self.embeddings = nn.Embed(
            cfg.vocab_size, cfg.embedding_dim, dtype=self.dtype, param_dtype=jnp.float32,
            embedding_init=small_init(cfg.embedding_dim, cfg.init_distribution_embed),
        )
        self.dropout = nn.Dropout(rate=cfg.dropout)
        self.blocks = FlaxXLSTMBlockCollection(cfg, dtype=self.dtype,
                                               gradient_checkpointing=self.gradient_checkpointing)
        if cfg.add_post_blocks_norm:
            self.out_norm = XLSTMNorm(cfg.norm_type, cfg.norm_eps, dtype=self.dtype)

    def __call__(self, input_ids, attention_mask=None, document_borders=None, cache=None, deterministic=True,
                 output_hidden_states=False, return_dict=True):
        x = self.embeddings(jnp.clip(input_ids, 0, self.config.vocab_size - 1))  # traced ids: clamped, never NaN
        if self.config.add_embedding_dropout:
            x = self.dropout(x, deterministic=deterministic)
        x, new_cache, hidden = self.blocks(x, attention_mask, document_borders, cache, deterministic,
                                           output_hidden_states)
        if self.config.add_post_blocks_norm:
            x = self.out_norm(x)
        if output_hidden_states:
            hidden = hidden + (x,)
        if not return_dict:
            return tuple(v for v in (x, hidden, new_cache) if v is not None)
        output = FlaxBaseModelOutput(last_hidden_state=x, hidden_states=hidden)
        return output, new_cache

    def embedding_matrix(self) -> jax.Array:
        return self.embeddings.embedding


class FlaxXLSTMForCausalLMModule(nn.Module):
    """Backbone plus LM head (dense or tied), optional logit soft cap; logits float32 (B, S, V)."""

    config: XLSTMFlaxConfig
    dtype: Any = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        cfg = self.config
        self.backbone = FlaxXLSTMModule(cfg, dtype=self.dtype, gradient_checkpointing=self.gradient_checkpointing)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=jnp.dtype(cfg.lm_head_dtype), param_dtype=jnp.float32,
                kernel_init=small_init(cfg.embedding_dim, cfg.init_distribution_out),
            )

    def __call__(self, input_ids, attention_mask=None, document_borders=None, cache=None, deterministic=True,
                 output_hidden_states=False, return_dict=True, logits_to_keep: int = 0):
        """logits_to_keep > 0: logits (B, logits_to_keep, V) of the last positions only (a prefill needs 1)."""
        base, new_cache = self.backbone(input_ids, attention_mask, document_borders, cache, deterministic,
                                        output_hidden_states, return_dict=True)
        logits = self.logits(base.last_hidden_state, logits_to_keep)
        if not return_dict:
            return tuple(v for v in (logits, base.hidden_states, new_cache) if v is not None)
        return FlaxCausalLMOutput(logits=logits, hidden_states=base.hidden_states), new_cache

    def last_hidden_state(self, input_ids, attention_mask=None, document_borders=None, cache=None):
        """Backbone only, deterministic: (last hidden state (B, S, D), new cache). One prefill segment."""
        base, new_cache = self.backbone(input_ids, attention_mask, document_borders, cache, True, False,
                                        return_dict=True)
        return base.last_hidden_state, new_cache

    def logits(self, x: jax.Array, logits_to_keep: int = 0) -> jax.Array:
        """LM head (+ soft cap) on hidden states x (B, S, D) -> float32 logits (B, S or logits_to_keep, V)."""
        cfg = self.config
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        head_dtype = jnp.dtype(cfg.lm_head_dtype)
        if cfg.tie_word_embeddings:
            emb = self.backbone.embedding_matrix().astype(head_dtype)
            logits = jnp.einsum("bsd,vd->bsv", x.astype(head_dtype), emb)
        else:
            logits = self.lm_head(x)
        return soft_cap(logits.astype(jnp.float32), cfg.logits_soft_cap)


# The names before transformers' Flax naming convention (`Flax<Model>Module`); same classes, same param tree.
XLSTMBlock = FlaxXLSTMBlock
XLSTMBlockCollection = FlaxXLSTMBlockCollection
XLSTMModule = FlaxXLSTMModule
XLSTMForCausalLMModule = FlaxXLSTMForCausalLMModule


# ---------------------------------------------------------------------------------------------- HF wrappers
# Options transformers' Auto classes and `from_pretrained` pass along that change nothing for this loader (it reads
# the files themselves: `from_pt` is detected from the safetensors metadata).
_IGNORED_LOADING_KWARGS = (
    "from_pt", "from_tf", "from_flax", "trust_remote_code", "_from_auto", "_from_pipeline", "adapter_kwargs",
    "_commit_hash", "user_agent", "code_revision", "resume_download", "use_auth_token", "mirror", "_fast_init",
    "low_cpu_mem_usage", "ignore_mismatched_sizes", "use_safetensors", "variant", "output_loading_info",
)


def _as_flax_config(config) -> XLSTMFlaxConfig:
    if isinstance(config, XLSTMFlaxConfig):
        config.validate()  # a model is only ever built from a valid config (assignments are checked too)
        return config
    if type(config).__name__ == "xLSTMConfig":  # transformers' PyTorch config (e.g. NX-AI/xLSTM-7b)
        from .configuration import from_transformers_config

        return from_transformers_config(config)
    raise ValueError(f"expected an XLSTMFlaxConfig or transformers' xLSTMConfig, got {type(config).__name__}")


# Compiled `generate` functions per model: {model: {generation arguments: jitted fn}} (see `generate`).
_COMPILED_GENERATE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _is_plain(value) -> bool:
    """A generation argument that can key a compiled program: None, bool, int, float, str, or lists/tuples of them."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _config_key(config) -> Optional[str]:
    return None if config is None else json.dumps(config.to_dict(), sort_keys=True, default=str)


class FlaxXLSTMPreTrainedModel(FlaxPreTrainedModel):
    """Common loading, init and call logic. `dtype` None means the config's `compute_dtype`."""

    config_class = XLSTMFlaxConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    module_class: nn.Module = None

    def __init__(self, config, input_shape=(1, 1), seed: int = 0, dtype=None, _do_init: bool = True,
                 gradient_checkpointing: Optional[bool] = None, **kwargs):
        """gradient_checkpointing: None takes the config's `gradient_checkpointing` field."""
        config = _as_flax_config(config)
        dtype = jnp.dtype(config.compute_dtype) if dtype is None else jnp.dtype(dtype)
        if gradient_checkpointing is None:
            gradient_checkpointing = getattr(config, "gradient_checkpointing", False)
        module = self.module_class(config=config, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                                   **kwargs)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)

    def enable_gradient_checkpointing(self):
        """Rematerialise each block in the backward pass (`nn.remat` over the blocks, inside `nn.scan` with
        `scan_blocks`): a training step keeps only the blocks' inputs (B, S, D) and recomputes the rest, trading
        about one more forward pass for memory (XLA:CPU lowers the peak only with `scan_blocks=True`:
        `benchmarks/README.md`). Same outputs, gradients and params. Rebuilds the module; the config is left as
        it is (its `gradient_checkpointing` field is the default for newly built models)."""
        self._module = self.module_class(config=self.config, dtype=self.dtype, gradient_checkpointing=True)

    def disable_gradient_checkpointing(self):
        """Undo `enable_gradient_checkpointing`: keep every activation for the backward pass."""
        self._module = self.module_class(config=self.config, dtype=self.dtype, gradient_checkpointing=False)

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the blocks run under `nn.remat` (see `enable_gradient_checkpointing`)."""
        return self.module.gradient_checkpointing

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, dtype=None, *model_args, param_dtype=None,
                        allow_missing_keys: bool = False, check_finite: bool = True, **kwargs):
        """A model folder or Hub id -> model (or `(model, params)` with `_do_init=False`), streamed tensor by tensor.

        Reads every layout this port accepts (`checkpoint_io`): Flax safetensors (single or sharded), transformers'
        PyTorch xLSTM safetensors (single or sharded, `from_pt` or not: the files say which), Flax msgpack. Each
        tensor is read, checked (names, shapes, dtype class, finite values), cast to `param_dtype` (None: float32;
        `jnp.bfloat16` halves the memory) and put on the device at once: no random init, no float32 copy of the
        whole model on the host. A PyTorch `.bin` checkpoint (`from_pt=True`) goes through transformers' converter.

        * `dtype=None` (default) uses the config's `compute_dtype`;
        * a backbone checkpoint (`FlaxXLSTMModel`) loads into `FlaxXLSTMForCausalLM` with the LM head initialised
          and a warning naming it, as transformers does; any other missing param is an error naming it unless
          `allow_missing_keys=True`; with `_do_init=False` the missing keys are recorded, so
          `model.init_weights(rng, input_shape, params)` completes the params;
        * `check_finite=False` skips the NaN/inf check (one pass over each tensor, about 0.3 s per GB).
        """
        from . import checkpoint_io

        do_init = kwargs.pop("_do_init", True)
        config = kwargs.pop("config", None)
        for name in _IGNORED_LOADING_KWARGS:  # transformers' loading options with no meaning here
            kwargs.pop(name, None)
        hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "local_files_only",
                                                 "force_download", "subfolder", "proxies") if k in kwargs}
        directory = checkpoint_io.resolve_model_dir(pretrained_model_name_or_path, **hub_kwargs)
        if config is None:
            if not (directory / "config.json").is_file():
                raise ValueError(f"{directory} has no config.json; pass config=... or use a model directory written "
                                 "by save_pretrained or the conversion commands")
            config = XLSTMFlaxConfig.from_pretrained(directory)
        config = _as_flax_config(config)
        for key, value in kwargs.items():  # the rest are config fields, as transformers' from_pretrained allows
            if key not in config.to_dict() and not hasattr(config, key):
                raise ValueError(f"from_pretrained got an unknown argument {key}={value!r}: neither a loading option "
                                 "nor a field of XLSTMFlaxConfig")
            setattr(config, key, value)
        config.validate()
        if not checkpoint_io.has_weights(directory):
            bins = sorted(p.name for p in Path(directory).glob("pytorch_model*.bin*"))
            if bins:  # transformers' own converter (needs torch and an initialised model)
                return super().from_pretrained(directory, dtype, *model_args, config=config, from_pt=True,
                                               _do_init=do_init, **hub_kwargs)
            raise checkpoint_io.CheckpointFileError(
                f"{directory}: no weights ({', '.join(checkpoint_io.WEIGHT_FILE_NAMES)} or pytorch_model.bin)")
        model = cls(config, dtype=dtype, _do_init=False)
        params, missing = model._load_checkpoint(directory, param_dtype, allow_missing_keys, check_finite)
        if not do_init:
            return model, params
        if missing:
            params = model.init_weights(jax.random.PRNGKey(0), model.input_shape, params)
        model._is_initialized = True
        model.params = params
        return model

    def _load_checkpoint(self, directory, param_dtype, allow_missing_keys: bool, check_finite: bool):
        """(params in this model's layout, missing names) from a local checkpoint folder (see `from_pretrained`)."""
        from . import checkpoint_io, param_table

        plan = {"/".join(k): tuple(v.shape) for k, v in flatten_dict(unfreeze(self.params_shape_tree)).items()}
        expected = param_table.unrolled_plan(plan)
        source = checkpoint_io.open_checkpoint(directory, expected, self.config.num_blocks)
        is_lm = isinstance(self.module, FlaxXLSTMForCausalLMModule)
        head = {k for k in expected if k.startswith(param_table.LM_HEAD + "/")}
        source_head = {k for k in source.tensors if k.startswith(param_table.LM_HEAD + "/")}
        # a head the model does not use (bare backbone, tied embeddings) may be stored; a missing head is initialised
        optional = source_head if not is_lm or self.config.tie_word_embeddings else set()
        may_be_missing = set(expected) if allow_missing_keys else (head if not source_head else set())
        missing = checkpoint_io.check_source(source, expected, optional=optional, may_be_missing=may_be_missing)
        def lm_names(name, shape):  # this model's name -> the unrolled causal-LM names it covers
            name = name if is_lm else param_table.with_backbone_prefix(name)
            return param_table.unrolled_names(name, shape[0]) if param_table.is_scanned(name) else [name]

        missing_own = {name for name, shape in plan.items() if set(lm_names(name, shape)) & set(missing)}
        if missing_own:
            logger.warning("Some weights of %s were not in the checkpoint at %s and are newly initialized: %s. "
                           "Train the model before using it for predictions.", type(self).__name__, directory,
                           sorted(missing_own))
        params = checkpoint_io.load_params(source, plan, dtype=param_dtype, check_finite=check_finite,
                                           skip=missing_own)
        self._missing_keys = {tuple(name.split("/")) for name in missing_own}
        return params, missing_own

    def save_pretrained(self, save_directory, params=None, push_to_hub: bool = False, max_shard_size="10GB",
                        token=None, safe_serialization: bool = True, **kwargs):
        """config.json, generation_config.json and the weights, written by `checkpoint_io`: safetensors by default
        (`model.safetensors`, or shards of at most `max_shard_size` with `model.safetensors.index.json`), every
        tensor C-contiguous whatever the params' memory layout; the new weight files replace the old ones only once
        all are complete (and stale shards are removed). `safe_serialization=False` writes Flax msgpack.
        `push_to_hub=True` uploads the folder afterwards (`repo_id`, `commit_message` as in transformers)."""
        from . import checkpoint_io

        save_directory = str(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_pretrained: {save_directory} is a file, expected a folder")
        if push_to_hub:
            commit_message = kwargs.pop("commit_message", None)
            repo_id = kwargs.pop("repo_id", save_directory.split(os.path.sep)[-1])
            repo_id = self._create_repo(repo_id, token=token, **kwargs)
            files_timestamps = self._get_files_timestamps(save_directory)
        params = self.params if params is None else params
        tensors = checkpoint_io.params_tensors(params)
        with checkpoint_io.replace_files_atomically(save_directory,
                                                    stale=checkpoint_io.weight_files(save_directory)) as tmp:
            self.config.architectures = [type(self).__name__[4:]]
            self.config.save_pretrained(tmp)
            if self.can_generate() and self.generation_config is not None:
                self.generation_config.save_pretrained(tmp)
            checkpoint_io.write_checkpoint(tmp, tensors, file_format="safetensors" if safe_serialization else "msgpack",
                                           metadata_format="flax", max_shard_size=max_shard_size)
        if push_to_hub:
            self._upload_modified_files(save_directory, repo_id, files_timestamps, commit_message=commit_message,
                                        token=token)

    def init_weights(self, rng, input_shape, params=None):
        input_ids = jnp.zeros(input_shape, dtype="i4")
        params_rng, dropout_rng = jax.random.split(rng)
        random_params = self.module.init({"params": params_rng, "dropout": dropout_rng}, input_ids)["params"]
        if params is None:
            return random_params
        random_params = flatten_dict(unfreeze(random_params))
        params = flatten_dict(unfreeze(params))
        for missing_key in self._missing_keys:
            params[missing_key] = random_params[missing_key]
        self._missing_keys = set()
        return freeze(unflatten_dict(params))

    def init_cache(self, batch_size: int, max_length: Optional[int] = None):
        """The recurrent state of every block at the start of a sequence: the generation cache.

        Its size does not depend on `max_length` (accepted for the HF generation API only). Per block a dict with
        c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH) and, for the `mlstm` layer type, the conv window
        conv (B, K-1, inner_dim); all float32. A list over blocks, or with `scan_blocks` one dict whose leaves
        carry the block axis second: (B, NB, ...).
        """
        check_batch_size(batch_size)
        cfg = self.config
        state = mlstm_kernels.zero_state(batch_size, cfg.num_heads, cfg.qk_head_dim, cfg.v_head_dim)._asdict()
        if cfg.layer_type == "mlstm":
            state["conv"] = jnp.zeros((batch_size, cfg.conv1d_kernel_size - 1, cfg.inner_dim), jnp.float32)
        if cfg.scan_blocks:
            return {k: jnp.repeat(v[:, None], cfg.num_blocks, axis=1) for k, v in state.items()}
        return [dict(state) for _ in range(cfg.num_blocks)]

    def generate(self, input_ids, generation_config=None, prng_key=None, trace: bool = True, params=None,
                 logits_processor=None, *, attention_mask=None, pad_to_multiple_of: Optional[int] = None, **kwargs):
        """transformers' Flax `generate`, after checking the prompt ids and mask on the host, and compiled.

        transformers builds its loop functions anew on every call, so an eager `generate` compiles its whole loop
        again each time (about 3 s for a 160M model on a CPU, whatever the length). Called outside a trace, this
        runs it through a `jax.jit` kept per model and per generation arguments: a repeated call with the same
        shapes reuses the program. Inside a trace (your own `jax.jit`, `sharding.sharded_generate`, the
        pipeline), with `trace=False`, a `logits_processor` or arguments that are not plain values, it is
        transformers' `generate` as is. Same outputs either way.

        pad_to_multiple_of: left-pad the prompt (B, S) to a multiple of this many tokens, masked, so prompts of
        different lengths share one compiled program; padded tokens never touch the state, and the padding is
        cut from the returned sequences, so they are what the unpadded call returns (an explicit `max_length` /
        `min_length` still counts the unpadded prompt).
        """
        input_ids, attention_mask = check_generate_inputs(self, input_ids, attention_mask, generation_config, kwargs)
        resolved = generation_config if generation_config is not None else self.generation_config
        if kwargs.get("eos_token_id", getattr(resolved, "eos_token_id", None)) is None:
            # a checkpoint without an eos id (e.g. converted from upstream): generate to the length. transformers'
            # loop needs some id; the vocabulary size is one no logit can produce (and processors that mask the
            # eos column write out of bounds, which JAX drops).
            kwargs["eos_token_id"] = self.config.vocab_size
            if kwargs.get("pad_token_id", getattr(resolved, "pad_token_id", None)) is None:
                kwargs["pad_token_id"] = 0
        pad = 0
        if pad_to_multiple_of is not None:
            multiple = pad_to_multiple_of
            if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
                raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of!r} is invalid: must be a positive int")
            pad = -input_ids.shape[1] % multiple
            xp = jnp if isinstance(input_ids, jax.core.Tracer) else np
            if attention_mask is None:  # always a mask, so a prompt of exactly the bucket length shares the program
                attention_mask = xp.ones(input_ids.shape, dtype="i4")
        if pad:
            config = generation_config if generation_config is not None else self.generation_config
            pad_id = kwargs.get("pad_token_id", config.pad_token_id)
            pad_id = config.eos_token_id if pad_id is None else pad_id
            pad_id = 0 if pad_id is None else int(np.ravel(pad_id)[0])
            input_ids = xp.pad(input_ids, ((0, 0), (pad, 0)), constant_values=pad_id)
            attention_mask = xp.pad(attention_mask, ((0, 0), (pad, 0)))
            # max_length / min_length count the prompt: keep their unpadded meaning (transformers turns its default
            # max_length into that many new tokens by itself)
            if kwargs.get("max_new_tokens", config.max_new_tokens) is None:
                max_length = kwargs.get("max_length", config.max_length)
                if "max_length" in kwargs or max_length != GenerationConfig().max_length:
                    kwargs["max_length"] = max_length + pad
            if kwargs.get("min_length", config.min_length):
                kwargs["min_length"] = kwargs.get("min_length", config.min_length) + pad
        out = self._compiled_generate(input_ids, generation_config, prng_key, trace, params, logits_processor,
                                      attention_mask, kwargs)
        return out.replace(sequences=out.sequences[:, pad:]) if pad else out

    def _compiled_generate(self, input_ids, generation_config, prng_key, trace, params, logits_processor,
                           attention_mask, kwargs):
        """`generate` after the checks and padding: a cached jit of transformers' loop, or the loop as is."""
        # transformers' beam search expands a mask it is given, so never pass None
        mask_kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
        arrays = (input_ids, attention_mask, params, prng_key)
        if (not trace or logits_processor is not None or not all(_is_plain(v) for v in kwargs.values())
                or any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(arrays))):
            return super().generate(input_ids, generation_config, prng_key, trace, params, logits_processor,
                                    **kwargs, **mask_kwargs)
        key = (_config_key(generation_config), _config_key(self.generation_config), repr(sorted(kwargs.items())),
               attention_mask is not None)
        compiled = _COMPILED_GENERATE.setdefault(self, {})
        run = compiled.get(key)
        if run is None:
            model_ref = weakref.ref(self)  # the cache must not keep the model alive

            def generate_fn(p, ids, mask, rng):  # mask: a traced array, or None when the call has none
                traced_mask = {} if mask is None else {"attention_mask": mask}
                return FlaxPreTrainedModel.generate(model_ref(), ids, generation_config, rng, True, p, None,
                                                    **kwargs, **traced_mask)

            run = jax.jit(generate_fn)
            if len(compiled) >= 16:  # bounded: drop the oldest
                compiled.pop(next(iter(compiled)))
            compiled[key] = run
        params = self.params if params is None else params
        prng_key = jax.random.PRNGKey(0) if prng_key is None else prng_key  # transformers' default
        return run(params, input_ids, attention_mask, prng_key)

    def prepare_inputs_for_generation(self, input_ids, max_length, attention_mask: Optional[jax.Array] = None,
                                      **kwargs):
        """Prefill inputs for transformers' Flax generation loop: a fresh cache, the prompt's mask and, for a prompt
        of several tokens, `logits_to_keep=1` (the loop reads the last position only). transformers runs a prompt
        of one token inside its `lax.while_loop`, whose carry must keep one structure, so it gets no
        `logits_to_keep` (its logits have one position anyway)."""
        inputs = {"past_key_values": self.init_cache(input_ids.shape[0], max_length), "attention_mask": attention_mask}
        if input_ids.shape[1] > 1 and isinstance(self.module, FlaxXLSTMForCausalLMModule):
            inputs["logits_to_keep"] = 1
        return inputs

    def update_inputs_for_generation(self, model_outputs, model_kwargs):
        """After each call: carry the new state; generated tokens are never padding, so no mask is needed."""
        model_kwargs["past_key_values"] = model_outputs.past_key_values
        model_kwargs["attention_mask"] = None
        model_kwargs.pop("logits_to_keep", None)
        return model_kwargs

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        params: Optional[dict] = None,
        past_key_values=None,
        dropout_rng: Optional[jax.Array] = None,
        train: bool = False,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        *,
        document_borders=None,
        logits_to_keep: int = 0,
        use_cache: Optional[bool] = None,
    ):
        """Forward pass; positional order as transformers' Flax causal LMs (FlaxLlama, FlaxGPT2).

        input_ids (B, S) int; attention_mask (B, S) 0/1 (0: padding, which never touches the state);
        position_ids (B, S): accepted for transformers compatibility and ignored - a recurrent model has no
        positions, the state carries the order; params: the param tree (default `self.params`);
        past_key_values: the recurrent cache from `init_cache` or a previous call (per block c (B, NH, DHQK, DHV),
        n (B, NH, DHQK), m (B, NH), conv (B, K-1, inner_dim) for `mlstm`); dropout_rng / train: dropout;
        output_attentions: xLSTM has no attention, so True is a `ValueError` (None/False are accepted);
        output_hidden_states: also return NB + 1 arrays (B, S, D), each block's output and the final normalised
        state (== `last_hidden_state`), as transformers' PyTorch xLSTM does; return_dict: a ModelOutput (default)
        or a tuple.

        Keyword-only: document_borders (B, S) bool (True where a new document starts; with
        `reset_at_document_boundaries` the memory is reset there); logits_to_keep (causal LM only): 0 for logits
        (B, S, V) at every position, k > 0 for the last k positions only (B, k, V); use_cache: True returns the
        new recurrent state as `past_key_values` (starting from a zero state when none is given), False does not
        return it (a given `past_key_values` is still the starting state), None returns it when
        `past_key_values` is given.

        With a cache, no hidden states asked for and more than `config.prefill_segment_size` tokens (a prefill),
        the tokens run through the state segment by segment (`lax.scan`): only one segment's activations are
        alive at a time, so memory does not grow with the prompt beyond its hidden states (B, S, D).
        """
        check_inputs(input_ids, attention_mask, document_borders, self.config.vocab_size)
        check_cache(past_key_values, self.init_cache, input_ids)
        if output_attentions:
            raise ValueError("output_attentions=True is not supported: xLSTM is a recurrent model and has no "
                             "attention weights to return")
        del position_ids  # a recurrent model has no positions
        is_causal_lm = isinstance(self.module, FlaxXLSTMForCausalLMModule)
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep={logits_to_keep!r} is invalid: must be an int >= 0 (0: every position)")
        if logits_to_keep and not is_causal_lm:
            raise ValueError(f"logits_to_keep={logits_to_keep} needs a model with an LM head "
                             f"(FlaxXLSTMForCausalLM); {type(self).__name__} returns hidden states")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        input_ids = jnp.asarray(input_ids, dtype="i4")
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask, dtype="i4")
        if document_borders is not None:
            document_borders = jnp.asarray(document_borders, dtype=bool)
        if use_cache and past_key_values is None:
            past_key_values = self.init_cache(input_ids.shape[0])
        variables = {"params": params or self.params}
        segment = self.config.prefill_segment_size
        if (is_causal_lm and past_key_values is not None and not train and not output_hidden_states
                and segment is not None and input_ids.shape[1] > segment):
            logits, new_cache = self._segmented_prefill(variables, input_ids, attention_mask, document_borders,
                                                        past_key_values, logits_to_keep)
            outputs = FlaxCausalLMOutput(logits=logits, hidden_states=None)
        else:
            extra = {"logits_to_keep": logits_to_keep} if is_causal_lm else {}
            outputs, new_cache = self.module.apply(
                variables,
                input_ids,
                attention_mask=attention_mask,
                document_borders=document_borders,
                cache=past_key_values,
                deterministic=not train,
                output_hidden_states=output_hidden_states,
                return_dict=True,
                rngs=rngs,
                **extra,
            )
        if past_key_values is not None and use_cache is not False:
            outputs["past_key_values"] = new_cache
        if not return_dict:
            return outputs.to_tuple()
        return outputs

    def _segmented_prefill(self, variables, input_ids, attention_mask, document_borders, cache, logits_to_keep):
        """Run S tokens through the state in segments of L = `prefill_segment_size`: first the S mod L leading
        tokens, then `lax.scan` over the (S div L) full segments, so the compiled program holds the model twice at
        most whatever S is. Returns (logits (B, S or logits_to_keep, V), new cache); same numbers as one pass."""
        B, S = input_ids.shape
        L = self.config.prefill_segment_size
        n, r = divmod(S, L)
        run = partial(self.module.apply, variables, method=FlaxXLSTMForCausalLMModule.last_hidden_state)

        def split(a):  # (B, S, ...) -> leading (B, r, ...), segments (n, B, L, ...)
            if a is None:
                return None, None
            return a[:, :r], jnp.moveaxis(a[:, r:].reshape(B, n, L, *a.shape[2:]), 1, 0)

        (ids0, ids), (mask0, mask), (borders0, borders) = map(split, (input_ids, attention_mask, document_borders))
        hidden = []
        if r:
            x0, cache = run(ids0, mask0, borders0, cache)
            hidden.append(x0)

        def segment_step(state, segment):
            x, state = run(*segment, state)
            return state, x

        cache, xs = jax.lax.scan(segment_step, cache, (ids, mask, borders))
        hidden.append(jnp.moveaxis(xs, 0, 1).reshape(B, n * L, xs.shape[-1]))
        x = jnp.concatenate(hidden, axis=1) if len(hidden) > 1 else hidden[0]
        logits = self.module.apply(variables, x, logits_to_keep, method=FlaxXLSTMForCausalLMModule.logits)
        return logits, cache


class FlaxXLSTMModel(FlaxXLSTMPreTrainedModel):
    """The bare xLSTM backbone returning the last hidden state (B, S, D)."""

    module_class = FlaxXLSTMModule


class FlaxXLSTMForCausalLM(FlaxXLSTMPreTrainedModel):
    """The xLSTM language model: logits (B, S, V) in float32."""

    module_class = FlaxXLSTMForCausalLMModule


# ---------------------------------------------------------------------------------------------- param layouts
def param_shapes(config: XLSTMFlaxConfig, scanned: Optional[bool] = None, lm_head: bool = True
                 ) -> dict[str, tuple[int, ...]]:
    """`/`-joined param names -> shapes of the causal LM (or the backbone, `lm_head=False`) for `config`, computed
    with `jax.eval_shape` (no weights). `scanned` None: as `config.scan_blocks` says."""
    cfg = config if scanned is None or scanned == config.scan_blocks else \
        config.__class__(**{**config.to_dict(), "scan_blocks": scanned})
    module = (FlaxXLSTMForCausalLMModule if lm_head else FlaxXLSTMModule)(cfg, dtype=jnp.float32)
    shapes = jax.eval_shape(lambda key: module.init(key, jnp.zeros((1, 1), "i4")), jax.random.PRNGKey(0))
    return {k: tuple(v.shape) for k, v in flatten_dict(unfreeze(shapes["params"]), sep="/").items()}


def stack_block_params(params: dict, num_blocks: int) -> dict:
    """Unrolled block params (`backbone/blocks/<i>/...`) -> scanned layout (`backbone/blocks/scanned/block/...`)."""
    params = unfreeze(params)
    blocks = params["backbone"]["blocks"]
    per_block = [blocks[str(i)] for i in range(num_blocks)]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *per_block)
    params["backbone"]["blocks"] = {"scanned": {"block": stacked}}
    return params


def unstack_block_params(params: dict, num_blocks: int) -> dict:
    """Scanned block params -> unrolled layout."""
    params = unfreeze(params)
    stacked = params["backbone"]["blocks"]["scanned"]["block"]
    params["backbone"]["blocks"] = {
        str(i): jax.tree_util.tree_map(lambda x: np.asarray(x)[i], stacked) for i in range(num_blocks)
    }
    return params
