"""The xLSTM network as Flax linen modules (xlstm-jax `xlstm_parallel` family): mLSTM layers, feed-forward, blocks
(mLSTM, and sLSTM from `slstm`; unrolled or `nn.scan`ned), the backbone and the causal-LM head; plus the
param-layout helpers. The building blocks every layer kind shares (norm, headwise linear, causal conv, inits, the
mask/border rule) are in `layer_parts`; the per-block cache types in `cache`.

Param names follow transformers' PyTorch `xLSTMForCausalLM` (so `from_pt=True` maps its state dict directly):

    backbone/embeddings/embedding (V, D)
    backbone/blocks/<i>/norm_mlstm/scale (D,)          backbone/blocks/<i>/norm_ffn/scale (D,)
    backbone/blocks/<i>/mlstm_layer/...                backbone/blocks/<i>/ffn/{proj_up_gate,proj_up,proj_down}
    backbone/out_norm/scale (D,)                       lm_head/kernel (D, V)

With `scan_blocks=True` the blocks are `backbone/blocks/scanned/...` with a leading block axis
(`stack_block_params` / `unstack_block_params` convert). The one table of every param's names in the other layouts
is `param_table`. The Hugging Face wrapper classes are in `modeling_flax_xlstm`.

Shapes: B batch, S sequence, D embedding_dim, NH heads, DHQK / DHV head dims, V vocabulary.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.frozen_dict import unfreeze

from . import mlstm_kernels
from .cache import MLSTMCache, from_scan_layout, to_scan_layout
from .configuration_xlstm_flax import XLSTMFlaxConfig
from .flax_base import FlaxBaseModelOutput, FlaxCausalLMOutput
from .layer_parts import (
    CausalConv1d, HeadwiseLinear, XLSTMNorm, check_borders_allowed, gate_bias_init, mask_gate_preacts, output_init,
    small_init,
)
from .slstm import SLSTMBlock

# Masks and document borders follow one rule for every layer and form: see `layer_parts`.


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


def mask_gates(
    config: XLSTMFlaxConfig,
    igate: jax.Array,
    fgate: jax.Array,
    attention_mask: Optional[jax.Array],
    document_borders: Optional[jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """Gate pre-activations (B, S, NH) in float32 after soft cap, padding masks and document resets
    (`layer_parts.mask_gate_preacts`: padding never touches the state, a border zeroes it)."""
    check_borders_allowed(config, document_borders)
    igate = soft_cap(igate.astype(jnp.float32), config.gate_soft_cap)
    fgate = soft_cap(fgate.astype(jnp.float32), config.gate_soft_cap)
    return mask_gate_preacts(igate, fgate, attention_mask, document_borders)


def _cell(state: Optional[MLSTMCache]) -> Optional[mlstm_kernels.MLSTMState]:
    """The kernels' (c, n, m) part of a block's cache (no copy: the same arrays)."""
    return None if state is None else mlstm_kernels.MLSTMState(state.c, state.n, state.m)


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

    x: (B, S, D) -> y (B, S, D), new state. State: a `cache.MLSTMCache` (c, n, m; no conv window).
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
        h, new_cell = run_mlstm_cell(cfg, q, k, v, igate, fgate, _cell(state))
        h = XLSTMNorm(cfg.cell_norm_type_v1, cfg.cell_norm_eps, num_heads=NH, dtype=self.dtype,
                      name="multihead_norm")(h.reshape(B, S, cfg.v_dim))
        h = nn.sigmoid(o) * h
        y = dense(D, kernel_init=output_init(cfg.output_init_fn, D, cfg.num_blocks, cfg.init_distribution),
                  name="out_proj")(h)
        y = nn.Dropout(rate=cfg.dropout)(y, deterministic=deterministic)
        return y, None if new_cell is None else MLSTMCache(*new_cell)


class XLSTMLayerConv(nn.Module):
    """The original Mamba-style mLSTM layer (`mlstm`): up-projection, causal conv1d, headwise q/k/v, learnable
    skip, swish z branch. x: (B, S, D) -> y (B, S, D), new state: a `cache.MLSTMCache` with the conv window
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
            window = None if state is None else state.conv
            x_conv, new_window = CausalConv1d(cfg.conv1d_kernel_size, dtype=self.dtype, name="conv1d")(
                x_mlstm, window, attention_mask, document_borders)
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
            h, new_cell = run_mlstm_cell(cfg, q, k, v.reshape(B, S, NH, cfg.v_head_dim), igate, fgate, _cell(state))
            h = XLSTMNorm(cfg.mlstm_norm_type, cfg.cell_norm_eps, num_heads=NH, dtype=self.dtype,
                          name="multihead_norm")(h.reshape(B, S, cfg.v_dim))
            if cfg.v_dim != inner:
                x_conv_act = headwise(cfg.v_dim, name="x_mlstm_conv_scaling")(x_conv_act)
            skip = self.param("learnable_skip", nn.initializers.ones, (x_conv_act.shape[-1],), jnp.float32)
            h = (h + skip.astype(self.dtype) * x_conv_act) * nn.swish(z)
            new_state = None if new_cell is None else MLSTMCache(*new_cell, conv=new_window.astype(jnp.float32))
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
        cfg = self.config
        if cfg.slstm_block_indices:  # an all-sLSTM stack (the config refuses a scanned mixed one)
            borders = document_borders if cfg.reset_at_document_boundaries else None
            x, new_state = SLSTMBlock(cfg.slstm_block_config(0), dtype=self.dtype, name="block")(
                x, attention_mask, borders, state, deterministic)
            return x, (new_state, x)
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
            cache = to_scan_layout(cache)
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
            return x, from_scan_layout(new_cache), hidden
        remat = partial(nn.remat, static_argnums=(5,)) if self.gradient_checkpointing else (lambda cls: cls)
        slstm_at = set(cfg.slstm_block_indices)
        new_cache = [] if cache is not None else None
        hidden = ()
        for i in range(cfg.num_blocks):  # block i: `SLSTMBlock` where `slstm_at` says so, else `FlaxXLSTMBlock`
            state = None if cache is None else cache[i]
            # borders reset the state only with `reset_at_document_boundaries`, in both kinds of block
            borders = document_borders if cfg.reset_at_document_boundaries or i not in slstm_at else None
            block = (remat(SLSTMBlock)(cfg.slstm_block_config(i), dtype=self.dtype, name=str(i)) if i in slstm_at
                     else remat(FlaxXLSTMBlock)(cfg, dtype=self.dtype, name=str(i)))
            x, new_state = block(x, attention_mask, borders, state, deterministic)
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
        check_borders_allowed(self.config, document_borders)  # also where no layer reads them (debug_cell)
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


# ---------------------------------------------------------------------------------------------- param layouts
def stack_block_params(params: dict, num_blocks: int) -> dict:
    """Unrolled block params (`backbone/blocks/<i>/...`) -> scanned layout (`backbone/blocks/scanned/block/...`)."""
    params = unfreeze(params)
    blocks = params["backbone"]["blocks"]
    if sorted(blocks) != sorted(map(str, range(num_blocks))):
        raise ValueError(f"stack_block_params: the params hold blocks {sorted(blocks, key=str)}, not num_blocks="
                         f"{num_blocks} unrolled blocks 0..{num_blocks - 1}")
    per_block = [blocks[str(i)] for i in range(num_blocks)]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *per_block)
    params["backbone"]["blocks"] = {"scanned": {"block": stacked}}
    return params


def unstack_block_params(params: dict, num_blocks: int) -> dict:
    """Scanned block params -> unrolled layout."""
    params = unfreeze(params)
    stacked = params["backbone"]["blocks"]["scanned"]["block"]
    if {np.shape(x)[0] for x in jax.tree_util.tree_leaves(stacked)} != {num_blocks}:
        raise ValueError(f"unstack_block_params: the stacked params do not hold num_blocks={num_blocks} blocks")
    params["backbone"]["blocks"] = {
        str(i): jax.tree_util.tree_map(lambda x: np.asarray(x)[i], stacked) for i in range(num_blocks)
    }
    return params
