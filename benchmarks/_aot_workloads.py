"""The workloads `benchmarks/accelerators.py` compiles for GPUs and TPUs, built from the model's own entry points
(no second model): prefill (the model called with a cache and `logits_to_keep=1`, i.e. generate's prefill, which
runs `prefill_segment_size` tokens at a time), one decode step (a one-token call with the recurrent cache), the
whole `generate` program and one training step (`sharded_steps`' loss, optax adamw, gradient checkpointing, FSDP).
Shardings come from `modeling_xlstm_flax.sharding`'s rules.

Each workload gives a `Program`: the function, its ShapeDtypeStruct arguments (sharded), in/out shardings, the
tokens it handles and its ideal flops and bytes per device (`ideal_*`, see `ideal_figures`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from _aot import shard_bytes, structs
from modeling_xlstm_flax import sharding as shd
from modeling_xlstm_flax.configuration_xlstm_flax import load_preset
from modeling_xlstm_flax.modeling_flax_xlstm import FlaxXLSTMForCausalLM

WORKLOADS = ("prefill-2k", "prefill-16k", "prefill-128k", "decode-b1", "decode-b8", "decode-b64", "generate",
             "train-4k", "forward-16k")
# report name -> (preset file, fields set on it). 160M-sLSTM: the 160M with every other block an sLSTM block (the
# xLSTM paper's [1:1]-style mix; 4 heads, the library's gated GELU feedforward at proj_factor 1.3)
PRESETS = {
    "7B": ("xlstm-7b", {}),
    "160M": ("xlstm-160m", {}),
    "160M-sLSTM": ("xlstm-160m", dict(slstm_at=[1, 3, 5, 7, 9, 11], slstm_block={
        "slstm": {"num_heads": 4}, "feedforward": {"proj_factor": 1.3}})),
}


@dataclass
class Program:
    fn: Callable
    args: tuple
    in_shardings: Any
    out_shardings: Any = None
    donate_argnums: tuple = ()
    tokens: int = 0  # tokens processed per call (all sequences)
    ideal_flops: float = 0.0  # per device
    ideal_bytes: float = 0.0  # per device
    loop_trips_hint: Optional[int] = None  # trips of a while loop whose count the HLO does not record (generate's)
    notes: list = field(default_factory=list)


def build_model(preset, dtype=jnp.bfloat16, **overrides):
    """The model (no weights: `_do_init=False`) and its param shapes. `preset`: a preset name, a `PRESETS` value
    (preset name, fields) or a config (not changed: a copy gets the overrides); `overrides` apply in every case."""
    if isinstance(preset, tuple):
        name, fields = preset
        config = load_preset(name, **{**fields, **overrides})
    elif isinstance(preset, str):
        config = load_preset(preset, **overrides)
    else:
        config = copy.deepcopy(preset)
        config.update(overrides)  # names checked, the result validated
    model = FlaxXLSTMForCausalLM(config, dtype=dtype, _do_init=False,
                                 gradient_checkpointing=overrides.get("gradient_checkpointing"))
    return model, model.params_shape_tree


def inference_mesh(config, devices):
    """Tensor parallel over as many devices as the heads allow (a divisor of num_heads), the rest data parallel."""
    n = len(devices)
    tensor = max(t for t in range(1, n + 1) if n % t == 0 and config.num_heads % t == 0)
    return shd.make_mesh(data=n // tensor, tensor=tensor, devices=devices)


def matmul_params(config, shapes) -> int:
    """Params that multiply activations once per token: all but the embedding table (a lookup)."""
    from flax.traverse_util import flatten_dict
    from flax.core.frozen_dict import unfreeze

    flat = flatten_dict(unfreeze(shapes), sep="/")
    return int(sum(np.prod(v.shape) for k, v in flat.items() if "embeddings" not in k))


def cell_flops_per_token(config, chunk: Optional[int]) -> float:
    """mLSTM cell flops per token and layer (all heads): chunkwise with chunk L: q.k^T and (qk).v inside the
    chunk (2 L (DHQK + DHV)), the chunk state's read q.C and its update k^T v (2 x 2 DHQK DHV); the step form
    (chunk None): C update and read, 2 x 2 DHQK DHV."""
    NH, DK, DV = config.num_heads, config.qk_head_dim, config.v_head_dim
    intra = 0 if chunk is None else 2 * chunk * (DK + DV)
    return NH * (intra + 4 * DK * DV)


def stack_cell_flops_per_token(config, chunk: Optional[int]) -> float:
    """Cell flops per token of the whole block stack beyond 2 x `matmul_params`: `cell_flops_per_token` for each
    mLSTM block, 0 for each sLSTM block. An sLSTM block's matrix work is all weights applied once per token, so
    2 x its params already counts it: the recurrent matmul y.R (4 gates x D x D/NH multiply-adds: 2 x 4 D DH),
    the four headwise gate projections (4 x NH x DH x DH), the causal conv (K x D) and the feedforward; what its
    cell adds is elementwise (gates, stabiliser, c/n/h, group norm: tens of flops per channel, < 1% of a 160M
    block's), left out as the mLSTM cell's elementwise work is."""
    mlstm_blocks = config.num_blocks - len(config.slstm_block_indices)
    return mlstm_blocks * cell_flops_per_token(config, chunk)


def _param_structs(shapes, config, mesh, dtype):
    p_sh = shd.param_shardings(shapes, config, mesh)
    return structs(shapes, p_sh, dtype), p_sh


def _cache_structs(model, batch, mesh):
    cache = jax.eval_shape(lambda: model.init_cache(batch))
    c_sh = shd.cache_shardings(cache, model.config, mesh)
    return structs(cache, c_sh), c_sh


def _weight_bytes(params, tokens: int) -> int:
    """Bytes of the weights one device reads per call: all its param shards except the embedding table, of which
    only the `tokens` looked-up rows are read."""
    emb = params["backbone"]["embeddings"]["embedding"]
    return shard_bytes(params) - shard_bytes(emb) + tokens * emb.shape[1] * emb.dtype.itemsize


def _ids(shape, mesh):
    sh = shd.batch_sharding(shape, mesh)
    return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sh), sh


def forward_with_cache(model, mesh, logits_to_keep):
    """model(ids, past_key_values=cache) under the sharding rules: (logits, new cache) - the path `generate`
    runs for its prefill (logits_to_keep=1) and each step."""

    def fn(params, ids, cache):
        with shd.activation_sharding(mesh):
            out = model(ids, past_key_values=cache, params=params, logits_to_keep=logits_to_keep)
        return out.logits, out.past_key_values

    return fn


def prefill(model, shapes, mesh, batch: int, seq: int) -> Program:
    cfg = model.config
    params, p_sh = _param_structs(shapes, cfg, mesh, model.dtype)
    cache, c_sh = _cache_structs(model, batch, mesh)
    ids, b_sh = _ids((batch, seq), mesh)
    n = mesh.size
    pm = matmul_params(cfg, shapes) - cfg.embedding_dim * cfg.vocab_size  # the LM head runs on one position
    flops = (2 * pm + stack_cell_flops_per_token(cfg, cfg.chunk_size)) * batch * seq \
        + 2 * cfg.embedding_dim * cfg.vocab_size * batch
    ideal_bytes = _weight_bytes(params, batch * seq) + 2 * shard_bytes(cache) + 4 * batch * seq
    return Program(forward_with_cache(model, mesh, 1), (params, ids, cache), (p_sh, b_sh, c_sh),
                   tokens=batch * seq, ideal_flops=flops / n, ideal_bytes=ideal_bytes,
                   notes=["ideal bytes: weights once + cache in and out + ids (a lower bound: a segmented prefill "
                          "reads the weights once per segment)"])


def forward_no_cache(model, shapes, mesh, batch: int, seq: int) -> Program:
    """model(ids) without a cache (scoring a sequence), logits of the last position only: the one-pass forward."""
    cfg = model.config
    params, p_sh = _param_structs(shapes, cfg, mesh, model.dtype)
    ids, b_sh = _ids((batch, seq), mesh)

    def fn(params, ids):
        with shd.activation_sharding(mesh):
            return model(ids, params=params, logits_to_keep=1).logits

    pre = prefill(model, shapes, mesh, batch, seq)
    return Program(fn, (params, ids), (p_sh, b_sh), tokens=batch * seq, ideal_flops=pre.ideal_flops,
                   ideal_bytes=pre.ideal_bytes - 2 * shard_bytes(_cache_structs(model, batch, mesh)[0]),
                   notes=["ideal: as prefill, without the cache"])


def decode_step(model, shapes, mesh, batch: int) -> Program:
    cfg = model.config
    params, p_sh = _param_structs(shapes, cfg, mesh, model.dtype)
    cache, c_sh = _cache_structs(model, batch, mesh)
    ids, b_sh = _ids((batch, 1), mesh)
    l_sh = NamedSharding(mesh, shd.fit_spec((shd.BATCH_AXES, None, shd.TENSOR), (batch, 1, cfg.vocab_size), mesh))
    logits = jax.ShapeDtypeStruct((batch, 1, cfg.vocab_size), jnp.float32, sharding=l_sh)
    flops = (2 * matmul_params(cfg, shapes) + stack_cell_flops_per_token(cfg, None)) * batch
    ideal_bytes = _weight_bytes(params, batch) + 2 * shard_bytes(cache) + shard_bytes(logits)
    return Program(forward_with_cache(model, mesh, 0), (params, ids, cache), (p_sh, b_sh, c_sh),
                   out_shardings=(l_sh, c_sh), donate_argnums=(2,), tokens=batch,
                   ideal_flops=flops / mesh.size, ideal_bytes=ideal_bytes,
                   notes=["ideal bytes: weights read once (of the embedding table the looked-up rows) + cache read and "
                          "written + logits written"])


def generate(model, shapes, mesh, batch: int, prompt: int, new_tokens: int) -> Program:
    """`model.generate` (greedy) as `sharded_steps.sharded_generate` builds it: the cache pinned at every step."""
    from functools import partial

    from modeling_xlstm_flax.generation import cache_constraint

    cfg = model.config
    params, p_sh = _param_structs(shapes, cfg, mesh, model.dtype)
    ids, b_sh = _ids((batch, prompt), mesh)
    constrain = partial(shd.constrain_cache, config=cfg, mesh=mesh)

    def fn(params, input_ids):
        with shd.activation_sharding(mesh), cache_constraint(constrain):
            # compile-only: the program is the same whatever eos id stops it at run time (an id outside the
            # vocabulary, the old way to mean "never stop", is refused by generate)
            return model.generate(input_ids, params=params, max_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=0).sequences

    pre = prefill(model, shapes, mesh, batch, prompt)
    dec = decode_step(model, shapes, mesh, batch)
    return Program(fn, (params, ids), (p_sh, b_sh), out_shardings=b_sh, tokens=batch * new_tokens,
                   loop_trips_hint=new_tokens - 1,  # the decode loop (stops early only at eos: at most this)
                   ideal_flops=pre.ideal_flops + (new_tokens - 1) * dec.ideal_flops,
                   ideal_bytes=pre.ideal_bytes + (new_tokens - 1) * dec.ideal_bytes,
                   notes=["ideal: prefill + (new_tokens - 1) decode steps; the loop bodies are counted once by "
                          "XLA's cost model (see while_trip_counts), so counted/ideal is far below 1"])


def train_step(model, shapes, mesh, batch: int, seq: int) -> Program:
    """One adamw step on float32 params with bf16 compute, gradient checkpointing and FSDP (`sharded_steps`)."""
    import optax

    from modeling_xlstm_flax.sharded_steps import _loss_fn, _optimizer_state_shardings

    cfg = model.config
    params, p_sh = _param_structs(shapes, cfg, mesh, jnp.float32)
    optimizer = optax.adamw(1e-4)
    o_shapes = jax.eval_shape(optimizer.init, shapes)
    o_sh = _optimizer_state_shardings(optimizer, shapes, cfg, mesh, shd.DEFAULT_FSDP_MIN_WEIGHT_SIZE)
    opt_state = structs(o_shapes, o_sh)
    ids, b_sh = _ids((batch, seq), mesh)
    rep = NamedSharding(mesh, P())

    def step(params, opt_state, input_ids):
        loss, grads = jax.value_and_grad(lambda p: _loss_fn(model, mesh, p, input_ids, None, None, None))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    pm = matmul_params(cfg, shapes)
    tokens = batch * seq
    cell = stack_cell_flops_per_token(cfg, cfg.chunk_size)
    flops = 3 * (2 * pm + cell) * tokens  # forward + backward (twice the forward's flops)
    return Program(step, (params, opt_state, ids), (p_sh, o_sh, b_sh), out_shardings=(p_sh, o_sh, rep),
                   donate_argnums=(0, 1), tokens=tokens, ideal_flops=flops / mesh.size,
                   ideal_bytes=3 * shard_bytes(params) + 2 * shard_bytes(opt_state),
                   notes=["ideal flops: 3 x (2 x matmul params + cell flops) x tokens (forward + backward; "
                          "gradient checkpointing adds one more forward, 8/6 of this)",
                          "ideal bytes: params read + written + grads, optimizer state read + written"])


def workload(name: str, model, shapes, mesh) -> Program:
    """One named workload (see WORKLOADS)."""
    if name.startswith("prefill-"):
        return prefill(model, shapes, mesh, 1, int(name.split("-")[1][:-1]) * 1024)
    if name.startswith("forward-"):
        return forward_no_cache(model, shapes, mesh, 1, int(name.split("-")[1][:-1]) * 1024)
    if name.startswith("decode-b"):
        return decode_step(model, shapes, mesh, int(name[len("decode-b"):]))
    if name == "generate":
        return generate(model, shapes, mesh, 1, 2048, 256)
    if name == "train-4k":
        batch = 2 * mesh.size if mesh.size > 8 else mesh.size
        return train_step(model, shapes, mesh, batch, 4096)
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
