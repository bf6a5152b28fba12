"""Many devices and many hosts with JAX's own SPMD machinery: a named `Mesh`, `PartitionSpec` rules for every
parameter, `NamedSharding` + `jax.device_put`, and `jax.jit` with in/out shardings.

Mesh axes (any may have size 1):

    data    pure data parallelism: parameters replicated, the batch split
    fsdp    fully sharded data parallelism: the batch split *and* the large parameters split along one dim
            (gathered by XLA where they are used, gradients reduce-scattered)
    tensor  tensor (model) parallelism: mLSTM heads, feedforward hidden units and the vocabulary split

Partition rules (`param_partition_spec`), written for the unrolled layout; with `scan_blocks` the leading block
axis is never sharded (`None` in front). T = tensor where the layer is head-parallel, F = fsdp when the param has at
least `fsdp_min_weight_size` elements (upstream's `ParallelConfig.fsdp_min_weight_size`), M = tensor on a dim that
is not head-aligned (feedforward, vocabulary):

    mlstm_v1 layer  q, k, v, ogate_preact kernel (D, NH*DH)      (F, T)   column-wise by head; bias (T,)
                    igate_preact, fgate_preact kernel (D, NH)   (F, T)   one column per head; bias (T,)
                    multihead_norm scale (NH*DHV,)              (T,)     per head slice
                    out_proj kernel (NH*DHV, D)                 (T, F)   row-wise by head (one all-reduce); bias ()
    mlstm layer     proj_up_mlstm, proj_up_z kernel (D, inner)  (F, T)   conv/headwise chain stays local; bias (T,)
                    conv1d kernel (K, inner), bias (inner,)     (None, T), (T,)   depthwise: per channel
                    q/k/v_proj, x_mlstm_conv_scaling (NPH,o,i)  (T, None, None)  by projection block (no F, below)
                    qk_proj (vmap_qk) kernel (2, NPH, o, i)     (None, T, None, None)
                    igate/fgate_preact (in, NH) | headwise (NH, 1, in/NH)  (F, T) | (T, None, None); bias (T,)
                    learnable_skip, multihead_norm (NH*DHV,)    (T,)
                    out_proj kernel (NH*DHV, D)                 (T, F); bias ()
    feedforward     proj_up, proj_up_gate kernel (D, ff)        (F, M); bias (M,)   (Megatron column/row pair)
                    proj_down kernel (ff, D)                    (M, F); bias ()
    embeddings      embedding (V, D)                            (M, F), else (F, M), else (None, (F, M))
    lm_head         kernel (D, V)                               (F, M), else (M, F), else ((F, M), None)
    norms           scale (D,) / q_norm, k_norm scale (DH,)     ()       replicated

The headwise kernels (NPH * blocksize^2 elements, always tiny) are never FSDP-sharded: splitting their block
axis over ("tensor", "fsdp") - the only layout that keeps a tensor shard's blocks contiguous - is an axis tuple out
of mesh order, and jax 0.10.2's default Shardy partitioner computes wrong gradients for such a weight (measured:
errors of 0.4 in the q/k/v_proj grads on a 2x2x2 mesh; a 10-line einsum reproduces it, GSPMD gets it right). So no
rule emits a multi-axis entry out of mesh order (data, fsdp, tensor); tests check that.

Head-parallel means `num_heads % tensor == 0` (and for `mlstm` also `num_proj_heads % tensor == 0`, so a tensor
shard holds whole projection blocks and whole heads); otherwise the layer's T dims are replicated on `tensor`
(the feedforward and vocabulary still use it). Every axis that does not divide its dim is dropped (JAX requires
divisible shardings), so any config runs on any mesh. The specs decide where communication happens, not what is
computed: XLA inserts the collectives, and the tests check every entry point against the single-device run (which
is how the partitioner bug above was found).

The batch is split over (data, fsdp); the recurrent cache like the batch, with heads (and the conv window's
channels) on `tensor`, i.e. exactly where the layer computing it keeps them. Inside the entry points,
`activation_sharding` pins each block's residual stream to (batch over data+fsdp, features replicated) so XLA
gathers FSDP weights instead of sharding activations by feature.

Multi-host: call `jax.distributed.initialize()` first in every process, then build the same mesh everywhere
(`make_mesh` uses all global devices); see the README section "Many devices and hosts".
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
from flax.core.frozen_dict import unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import param_table

logger = logging.getLogger(__name__)

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
AXES = (DATA, FSDP, TENSOR)
BATCH_AXES = (DATA, FSDP)
# upstream xlstm-jax's ParallelConfig default: smaller params are not FSDP-sharded (gathering them costs more
# latency than the memory they save)
DEFAULT_FSDP_MIN_WEIGHT_SIZE = 2**18

AxisSizes = Union[Mesh, Mapping[str, int]]

__all__ = [
    "DATA", "FSDP", "TENSOR", "AXES", "BATCH_AXES", "DEFAULT_FSDP_MIN_WEIGHT_SIZE", "PARALLEL_CONFIG_MAPPING",
    "make_mesh", "mesh_from_parallel_config", "is_head_parallel", "fit_spec", "param_partition_spec",
    "param_partition_specs", "param_shardings", "shard_params", "init_sharded_params", "batch_spec",
    "batch_sharding", "shard_batch", "cache_partition_specs", "cache_shardings", "shard_cache",
    "init_sharded_cache", "constrain_cache", "residual_spec", "activation_sharding", "load_sharded_params",
    "from_pretrained_sharded", "sharded_forward",
    "causal_lm_loss", "sharded_loss_and_grad", "init_sharded_optimizer_state", "sharded_train_step",
    "sharded_generate",
]


# ---------------------------------------------------------------------------------------------- meshes
def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A `Mesh` with axes ("data", "fsdp", "tensor") of the given sizes; one size may be -1 (the rest of the
    devices). `devices`: default all global devices (every host's after `jax.distributed.initialize()`), laid
    out so that `tensor`, then `fsdp`, vary fastest (they stay within a host / fast interconnect)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis size may be -1, got data={data}, fsdp={fsdp}, tensor={tensor}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if known <= 0 or len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into data={data}, fsdp={fsdp}, tensor={tensor}")
        sizes[sizes.index(-1)] = len(devices) // known
    if any(s < 1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive (or one -1), got {dict(zip(AXES, sizes))}")
    n = math.prod(sizes)
    if n > len(devices):
        raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {n} devices, only {len(devices)} available")
    devices = devices[:n]
    try:
        from jax.experimental import mesh_utils

        array = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # topologies mesh_utils does not know: plain order (process-major on GPU and CPU)
        array = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(array, AXES)


# upstream xlstm_jax.models.configs.ParallelConfig field -> our counterpart
PARALLEL_CONFIG_MAPPING = {
    "data_axis_size": "make_mesh(data=...) (-1: the remaining devices, as upstream)",
    "fsdp_axis_size": "make_mesh(fsdp=...)",
    "model_axis_size": "make_mesh(tensor=...)",
    "pipeline_axis_size": "no counterpart: must be 1 (no pipeline parallelism; upstream's xlstm_parallel has none)",
    "data_axis_name": "fixed name 'data' (upstream 'dp')",
    "fsdp_axis_name": "fixed name 'fsdp' (upstream 'fsdp')",
    "model_axis_name": "fixed name 'tensor' (upstream 'tp')",
    "pipeline_axis_name": "no counterpart (upstream 'pipe')",
    "fsdp_min_weight_size": "fsdp_min_weight_size= of the rule functions (same meaning, same default 2**18)",
    "fsdp_modules": "no counterpart: every param at or above fsdp_min_weight_size is FSDP-sharded",
    "fsdp_gather_dtype": "no counterpart: use compute_dtype / load with dtype=bfloat16 (params gathered as stored)",
    "fsdp_grad_scatter_dtype": "no counterpart: gradients reduce in the params' dtype",
    "remat": "no counterpart (activation checkpointing is not implemented)",
    "tp_async_dense": "no counterpart: XLA schedules the collectives (no hand-written async TP)",
}


def mesh_from_parallel_config(parallel: Any, devices: Optional[Sequence[Any]] = None) -> tuple[Mesh, dict]:
    """Upstream xlstm-jax `ParallelConfig` (object or dict) -> (our mesh, rule kwargs {"fsdp_min_weight_size"}).

    Axis sizes map to data/fsdp/tensor (`PARALLEL_CONFIG_MAPPING`); a pipeline axis larger than 1 raises.
    Fields without a counterpart are ignored (listed in the mapping)."""
    get = (lambda k, d: parallel.get(k, d)) if isinstance(parallel, Mapping) else (lambda k, d: getattr(parallel, k, d))
    if get("pipeline_axis_size", 1) not in (1, None):
        raise ValueError(f"pipeline_axis_size={get('pipeline_axis_size', 1)}: no pipeline parallelism here; use 1")
    mesh = make_mesh(
        data=get("data_axis_size", -1), fsdp=get("fsdp_axis_size", 1), tensor=get("model_axis_size", 1),
        devices=devices,
    )
    return mesh, {"fsdp_min_weight_size": int(get("fsdp_min_weight_size", DEFAULT_FSDP_MIN_WEIGHT_SIZE))}


def _axis_sizes(mesh: AxisSizes) -> dict[str, int]:
    sizes = dict(mesh.shape) if isinstance(mesh, Mesh) else dict(mesh)
    return {a: int(sizes.get(a, 1)) for a in AXES} | {k: int(v) for k, v in sizes.items() if k not in AXES}


# ---------------------------------------------------------------------------------------------- rules
def is_head_parallel(config, mesh: AxisSizes) -> bool:
    """Whether the mLSTM layer's heads (and, for `mlstm`, its projection blocks) split evenly over `tensor`."""
    t = _axis_sizes(mesh)[TENSOR]
    if config.num_heads % t:
        return False
    return config.layer_type != "mlstm" or config.num_proj_heads % t == 0


def _as_tuple(entry) -> tuple:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _entry(axes: Sequence[str]):
    axes = tuple(axes)
    return None if not axes else axes[0] if len(axes) == 1 else axes


def fit_spec(spec: Sequence, shape: Sequence[int], mesh: AxisSizes) -> P:
    """Drop, per dim, trailing mesh axes until their size product divides the dim (JAX needs divisible shards).

    `spec` entries: None, an axis name or a tuple of names; missing trailing entries mean None."""
    sizes = _axis_sizes(mesh)
    spec = tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))
    if len(spec) > len(shape):
        raise ValueError(f"spec {spec} has more entries than shape {tuple(shape)}")
    out = []
    for entry, dim in zip(spec, shape):
        axes = list(_as_tuple(entry))
        while axes and dim % math.prod(sizes[a] for a in axes):
            axes.pop()
        out.append(_entry(axes))
    return P(*out)


def _lost(spec, fitted) -> int:
    return sum(len(_as_tuple(a)) - len(_as_tuple(b)) for a, b in zip(spec, fitted))


def _choose(candidates, shape, mesh) -> P:
    """The first candidate that fits without dropping an axis, else the first one fitted."""
    for spec in candidates:
        fitted = fit_spec(spec, shape, mesh)
        if _lost(tuple(spec) + (None,) * (len(shape) - len(spec)), tuple(fitted)) == 0:
            return fitted
    return fit_spec(candidates[0], shape, mesh)


def _path_tuple(path) -> tuple[str, ...]:
    if isinstance(path, str):
        return tuple(p for p in path.replace(".", "/").split("/") if p)
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_partition_spec(path, shape: Sequence[int], config, mesh: AxisSizes,
                         fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE) -> P:
    """The `PartitionSpec` of one parameter: `path` as a tuple of names or "a/b/c" (also "a.b.c"), its shape,
    the model config and the mesh (or a dict of axis sizes). Raises `ValueError` for a path no rule knows."""
    path = _path_tuple(path)
    shape = tuple(int(s) for s in shape)
    lead: tuple = ()
    if "scanned" in path:  # scan_blocks: leading block axis, never sharded
        lead, inner_shape = (None,), shape[1:]
    else:
        inner_shape = shape
    size = math.prod(inner_shape) if inner_shape else 1
    F = FSDP if size >= fsdp_min_weight_size else None
    T = TENSOR if is_head_parallel(config, mesh) else None
    M = TENSOR
    symbols = {"F": F, "T": T, "M": M, None: None}

    def resolve(entry):
        if isinstance(entry, tuple):
            axes = tuple(a for a in (symbols[e] for e in entry) if a)
            return axes if len(axes) > 1 else (axes[0] if axes else None)
        return symbols[entry]

    candidates = [lead + tuple(resolve(e) for e in c)
                  for c in param_table.sharding_candidates("/".join(path), len(inner_shape), config.layer_type)]
    return _choose(candidates, shape, mesh) if len(candidates) > 1 else fit_spec(candidates[0], shape, mesh)


def param_partition_specs(params, config, mesh: AxisSizes,
                          fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """`PartitionSpec`s for a whole param tree (arrays or `jax.ShapeDtypeStruct`s), same structure."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: param_partition_spec(path, np.shape(x), config, mesh, fsdp_min_weight_size), unfreeze(params)
    )


def param_shardings(params, config, mesh: Mesh, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """`NamedSharding`s for a param tree (arrays or shape structs)."""
    specs = param_partition_specs(params, config, mesh, fsdp_min_weight_size)
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def shard_params(params, config, mesh: Mesh, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """Place a param tree (host numpy or device arrays) onto the mesh with `jax.device_put` by the rules."""
    params = unfreeze(params)
    return jax.device_put(params, param_shardings(params, config, mesh, fsdp_min_weight_size))


def _model_param_shapes(model):
    """The model's param tree as shape structs (nothing allocated)."""
    shapes = jax.eval_shape(lambda rng: model.init_weights(rng, (1, 1)), jax.random.PRNGKey(0))
    return unfreeze(shapes)


def init_sharded_params(model, mesh: Mesh, rng: Optional[jax.Array] = None,
                        fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """Random init directly into the mesh (jit with out_shardings): no device ever holds the full model."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    shardings = param_shardings(_model_param_shapes(model), model.config, mesh, fsdp_min_weight_size)
    init = jax.jit(lambda r: unfreeze(model.init_weights(r, (1, 1))), out_shardings=shardings)
    return init(rng)


# ---------------------------------------------------------------------------------------------- batch and cache
def batch_spec(shape: Sequence[int], mesh: AxisSizes) -> P:
    """Batch-first arrays (ids, masks, logits): dim 0 over (data, fsdp) where it divides, the rest replicated."""
    return fit_spec((BATCH_AXES,), shape, mesh)


def batch_sharding(shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(shape, mesh))


def shard_batch(x, mesh: Mesh):
    """device_put a batch-first array (or None) with `batch_sharding`. Multi-host: every process passes the same
    global array (for per-host data use `jax.make_array_from_process_local_data(batch_sharding(...), local)`)."""
    if x is None:
        return None
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    return jax.device_put(x, batch_sharding(x.shape, mesh))


def _cache_leaf_spec(name: str, shape, config, mesh, scanned: bool) -> P:
    T = TENSOR if is_head_parallel(config, mesh) else None
    rest = {"c": (T, None, None), "n": (T, None), "m": (T,), "conv": (None, T)}[name]
    lead = (BATCH_AXES, None) if scanned else (BATCH_AXES,)
    return fit_spec(lead + rest, shape, mesh)


def cache_partition_specs(cache, config, mesh: AxisSizes):
    """Specs for a cache from `model.init_cache` (or a model call): batch over (data, fsdp), heads on tensor
    (c, n, m: dim after batch [and block]; conv window: channels), the scanned block axis unsharded."""
    if isinstance(cache, Mapping):  # scan_blocks: one dict of (B, NB, ...) leaves
        return {k: _cache_leaf_spec(k, np.shape(v), config, mesh, True) for k, v in cache.items()}
    return [{k: _cache_leaf_spec(k, np.shape(v), config, mesh, False) for k, v in block.items()} for block in cache]


def cache_shardings(cache, config, mesh: Mesh):
    specs = cache_partition_specs(cache, config, mesh)
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def shard_cache(cache, config, mesh: Mesh):
    """device_put a cache with `cache_shardings`."""
    return jax.device_put(cache, cache_shardings(cache, config, mesh))


def constrain_cache(cache, config, mesh: Mesh):
    """`with_sharding_constraint` of a cache inside jit (same specs as `shard_cache`)."""
    return jax.lax.with_sharding_constraint(cache, cache_shardings(cache, config, mesh))


def init_sharded_cache(model, batch_size: int, mesh: Mesh):
    """`model.init_cache(batch_size)` created directly with `cache_shardings` (jit with out_shardings)."""
    shapes = jax.eval_shape(lambda: model.init_cache(batch_size))
    return jax.jit(lambda: model.init_cache(batch_size), out_shardings=cache_shardings(shapes, model.config, mesh))()


def residual_spec(shape: Sequence[int], mesh: AxisSizes) -> P:
    """The residual stream (B, S, D) between blocks: batch over (data, fsdp), features replicated."""
    return fit_spec((BATCH_AXES, None, None), shape, mesh)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh):
    """Within this context (and inside jit), every block's input and output residual stream is pinned to
    `residual_spec` with `jax.lax.with_sharding_constraint`, via flax's `nn.intercept_methods` (the model code is
    unchanged). Without it XLA's propagation is free to keep activations feature-sharded over fsdp and all-reduce
    them (measured: norms and projections then all-reduce activations); with it, FSDP gathers weights and tensor
    parallelism all-reduces once after out_proj and proj_down - the Megatron/FSDP schedule. Numerics are the same
    either way. The sharded entry points below use it."""
    from .modeling_flax_xlstm import XLSTMBlock

    def constrain(x):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, residual_spec(x.shape, mesh)))

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not isinstance(context.module, XLSTMBlock) or not args:
            return next_fun(*args, **kwargs)
        x, state = next_fun(constrain(args[0]), *args[1:], **kwargs)
        return constrain(x), state

    with nn.intercept_methods(interceptor):
        yield


# ---------------------------------------------------------------------------------------------- loading
def load_sharded_params(model_dir: str, model, mesh: Mesh, dtype: Any = None,
                        fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE, check_finite: bool = True,
                        on_read: Optional[Callable[[str, tuple, int], None]] = None):
    """Params of a saved model dir placed straight into the mesh, through the one checkpoint reader
    (`checkpoint_io`: every layout `from_pretrained` reads, same checks).

    Each param becomes a global array with `jax.make_array_from_callback`: every device's window is read from the
    file (safetensors `get_slice`, only that window) and put on that device, so neither one device nor the host
    ever holds the full model (a replicated param is read once per device). Multi-host: each process reads only
    its own devices' windows (the files must be visible to every host). `model`: a `FlaxXLSTMPreTrainedModel`
    (e.g. built with `_do_init=False`) whose config decides the target layout. `dtype`: cast on load (default
    float32). `on_read(name, index, nbytes)` is called for every read (diagnostics)."""
    from . import checkpoint_io
    from . import param_table

    config = model.config
    plan = {"/".join(k): tuple(v.shape) for k, v in flatten_dict(_model_param_shapes(model)).items()}
    expected = param_table.unrolled_plan(plan)
    source = checkpoint_io.open_checkpoint(model_dir, expected, config.num_blocks)
    optional = {k for k in source.tensors if k.startswith(param_table.LM_HEAD + "/")}
    checkpoint_io.check_source(source, expected, optional=optional)
    shardings = flatten_dict(param_shardings(unflatten_dict({tuple(k.split("/")): jax.ShapeDtypeStruct(s, jnp.float32)
                                                             for k, s in plan.items()}),
                                             config, mesh, fsdp_min_weight_size), sep="/")
    return checkpoint_io.load_params(source, plan, dtype=dtype, shardings=shardings, check_finite=check_finite,
                                     on_read=on_read)


def from_pretrained_sharded(model_dir: str, mesh: Mesh, dtype: Any = None, param_dtype: Any = None,
                            fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE, **config_overrides):
    """(model, params): the model class from the dir's config.json (ours or transformers' `xLSTMConfig`) built
    with `_do_init=False` (no params allocated) and its params loaded into the mesh (`load_sharded_params`).
    `dtype`: compute dtype (None: the config's); `param_dtype`: storage dtype of the params (None: float32)."""
    from transformers import AutoConfig

    from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

    config = AutoConfig.from_pretrained(model_dir, **config_overrides)
    model = FlaxXLSTMForCausalLM(config, dtype=dtype, _do_init=False)
    params = load_sharded_params(model_dir, model, mesh, dtype=param_dtype, fsdp_min_weight_size=fsdp_min_weight_size)
    return model, params


# ---------------------------------------------------------------------------------------------- entry points
def _batch_arg(x):
    """ids / masks / document borders as int32: jax arrays keep their placement, host data stays on the host
    until `_place` puts each shard on its device."""
    if x is None:
        return None
    return x.astype(jnp.int32) if isinstance(x, jax.Array) else np.asarray(x, np.int32)


def _place(args, shardings):
    """device_put each argument (None stays None) with its sharding (a no-op where it already has it)."""
    return tuple(a if a is None else jax.device_put(a, s) for a, s in zip(args, shardings))


def _logits_spec(shape, mesh) -> P:
    return fit_spec((BATCH_AXES, None, TENSOR), shape, mesh)


class _JitPerSignature:
    """One `jax.jit` per call signature (input shapes, which optional inputs are given): the in/out shardings
    depend on the batch size (an axis that does not divide the batch is dropped)."""

    def __init__(self, build: Callable[..., tuple[Callable, tuple]]):
        self.build = build
        self.jitted: dict = {}

    def __call__(self, key, *args):
        if key not in self.jitted:
            self.jitted[key] = self.build(*args)
        return self.jitted[key]


def sharded_forward(model, mesh: Mesh, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """A jitted forward `f(params, input_ids, attention_mask=None, document_borders=None, past_key_values=None)`
    with in/out shardings: params by the rules, ids/mask/borders/logits batch-sharded (logits' vocab on tensor
    where it divides), the cache by `cache_shardings`, block activations by `activation_sharding`. Returns logits
    (B, S, V) float32, or (logits, new cache) when a cache is given."""

    def build(params, shape, has_mask, has_borders, cache):
        p_sh = param_shardings(params, model.config, mesh, fsdp_min_weight_size)
        b_sh = batch_sharding(shape, mesh)
        c_sh = None if cache is None else cache_shardings(cache, model.config, mesh)
        l_sh = NamedSharding(mesh, _logits_spec(tuple(shape) + (model.config.vocab_size,), mesh))

        def forward(params, input_ids, attention_mask, document_borders, cache):
            with activation_sharding(mesh):
                out = model(input_ids, attention_mask=attention_mask, document_borders=document_borders,
                            past_key_values=cache, params=params)
            return out.logits if cache is None else (out.logits, out.past_key_values)

        in_sh = (p_sh, b_sh, b_sh if has_mask else None, b_sh if has_borders else None, c_sh)
        out_sh = l_sh if cache is None else (l_sh, c_sh)
        return jax.jit(forward, in_shardings=in_sh, out_shardings=out_sh), in_sh

    jits = _JitPerSignature(build)

    def call(params, input_ids, attention_mask=None, document_borders=None, past_key_values=None):
        params = unfreeze(params)
        shape = tuple(np.shape(input_ids))
        flags = (attention_mask is not None, document_borders is not None)
        cache_key = None if past_key_values is None else jax.tree_util.tree_structure(past_key_values)
        fn, in_sh = jits((shape, flags, cache_key), params, shape, *flags, past_key_values)
        args = (params, _batch_arg(input_ids), _batch_arg(attention_mask), _batch_arg(document_borders),
                past_key_values)
        return fn(*_place(args, in_sh))

    return call


def causal_lm_loss(logits: jax.Array, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean next-token cross entropy (position t predicts token t+1), over positions whose target is unmasked."""
    import optax

    targets = input_ids[:, 1:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), targets)
    mask = jnp.ones_like(ce) if attention_mask is None else attention_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _loss_fn(model, mesh, params, input_ids, attention_mask, document_borders, dropout_rng):
    with activation_sharding(mesh):
        logits = model(input_ids, attention_mask=attention_mask, document_borders=document_borders, params=params,
                       dropout_rng=dropout_rng, train=dropout_rng is not None).logits
    return causal_lm_loss(logits, input_ids, attention_mask)


def _batch_shardings(mesh, shape, has_mask, has_borders, has_rng):
    """in_shardings of (input_ids, attention_mask, document_borders, dropout_rng)."""
    b_sh = batch_sharding(shape, mesh)
    return (b_sh, b_sh if has_mask else None, b_sh if has_borders else None,
            NamedSharding(mesh, P()) if has_rng else None)


def sharded_loss_and_grad(model, mesh: Mesh, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """A jitted `f(params, input_ids, attention_mask=None, document_borders=None, dropout_rng=None)
    -> (loss, grads)`: the causal-LM loss (`causal_lm_loss`) and its gradient, grads sharded like the params
    (XLA reduces them over the batch axes and scatters them over fsdp). A dropout_rng turns on train mode."""

    def build(params, shape, *flags):
        p_sh = param_shardings(params, model.config, mesh, fsdp_min_weight_size)
        fn = jax.value_and_grad(lambda p, *batch: _loss_fn(model, mesh, p, *batch))
        in_sh = (p_sh,) + _batch_shardings(mesh, shape, *flags)
        return jax.jit(fn, in_shardings=in_sh, out_shardings=(NamedSharding(mesh, P()), p_sh)), in_sh

    jits = _JitPerSignature(build)

    def call(params, input_ids, attention_mask=None, document_borders=None, dropout_rng=None):
        params = unfreeze(params)
        shape = tuple(np.shape(input_ids))
        flags = (attention_mask is not None, document_borders is not None, dropout_rng is not None)
        fn, in_sh = jits((shape, flags), params, shape, *flags)
        args = (params, _batch_arg(input_ids), _batch_arg(attention_mask), _batch_arg(document_borders), dropout_rng)
        return fn(*_place(args, in_sh))

    return call


def _optimizer_state_shardings(optimizer, params, config, mesh, fsdp_min_weight_size):
    import optax

    p_sh = param_shardings(params, config, mesh, fsdp_min_weight_size)
    shapes = jax.eval_shape(optimizer.init, params)
    rep = NamedSharding(mesh, P())
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, shapes, p_sh,
                                 transform_non_params=lambda _: rep)


def init_sharded_optimizer_state(optimizer, params, config, mesh: Mesh,
                                 fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """`optimizer.init(params)` (an optax `GradientTransformation`) with every param-shaped leaf (momentum, Adam's
    mu/nu) sharded like its param and the rest (step counts) replicated."""
    params = unfreeze(params)
    o_sh = _optimizer_state_shardings(optimizer, params, config, mesh, fsdp_min_weight_size)
    p_sh = param_shardings(params, config, mesh, fsdp_min_weight_size)
    return jax.jit(optimizer.init, in_shardings=(p_sh,), out_shardings=o_sh)(params)


def sharded_train_step(model, mesh: Mesh, optimizer, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE,
                       donate: bool = True):
    """A jitted fine-tuning step `f(params, opt_state, input_ids, attention_mask=None, document_borders=None,
    dropout_rng=None) -> (params, opt_state, loss)` with an optax optimizer (state from
    `init_sharded_optimizer_state`); params and optimizer state stay sharded and are donated."""
    import optax

    def build(params, shape, *flags):
        p_sh = param_shardings(params, model.config, mesh, fsdp_min_weight_size)
        o_sh = _optimizer_state_shardings(optimizer, params, model.config, mesh, fsdp_min_weight_size)

        def step(params, opt_state, *batch):
            loss, grads = jax.value_and_grad(lambda p: _loss_fn(model, mesh, p, *batch))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        in_sh = (p_sh, o_sh) + _batch_shardings(mesh, shape, *flags)
        return jax.jit(step, in_shardings=in_sh, out_shardings=(p_sh, o_sh, NamedSharding(mesh, P())),
                       donate_argnums=(0, 1) if donate else ()), in_sh

    jits = _JitPerSignature(build)

    def call(params, opt_state, input_ids, attention_mask=None, document_borders=None, dropout_rng=None):
        params = unfreeze(params)
        shape = tuple(np.shape(input_ids))
        flags = (attention_mask is not None, document_borders is not None, dropout_rng is not None)
        fn, in_sh = jits((shape, flags), params, shape, *flags)
        args = (params, opt_state, _batch_arg(input_ids), _batch_arg(attention_mask), _batch_arg(document_borders),
                dropout_rng)
        return fn(*_place(args, in_sh))

    return call


def _cache_constrained_model(model, mesh: Mesh):
    """A shallow copy of `model` whose generation hooks pin the cache to `cache_shardings` inside jit (the
    prefill cache is created inside `generate`; every step's new cache is constrained the same way)."""
    gen = copy.copy(model)
    prepare, update = model.prepare_inputs_for_generation, model.update_inputs_for_generation

    def prepare_inputs_for_generation(input_ids, max_length, attention_mask=None, **kwargs):
        inputs = prepare(input_ids, max_length, attention_mask=attention_mask, **kwargs)
        inputs["past_key_values"] = constrain_cache(inputs["past_key_values"], model.config, mesh)
        return inputs

    def update_inputs_for_generation(model_outputs, model_kwargs):
        model_kwargs = update(model_outputs, model_kwargs)
        model_kwargs["past_key_values"] = constrain_cache(model_kwargs["past_key_values"], model.config, mesh)
        return model_kwargs

    gen.prepare_inputs_for_generation = prepare_inputs_for_generation
    gen.update_inputs_for_generation = update_inputs_for_generation
    return gen


def sharded_generate(model, mesh: Mesh, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE,
                     **generate_kwargs):
    """A jitted `f(params, input_ids, attention_mask=None, prng_key=None) -> sequences` running transformers' Flax
    `generate` (greedy, sampling or beams: `generate_kwargs` such as max_new_tokens, do_sample, num_beams) with
    params by the rules, the batch over (data, fsdp) and the recurrent cache by `cache_shardings` at every step."""
    gen = _cache_constrained_model(model, mesh)

    def build(params, shape):
        p_sh = param_shardings(params, model.config, mesh, fsdp_min_weight_size)
        b_sh = batch_sharding(shape, mesh)
        rep = NamedSharding(mesh, P())

        def run(params, input_ids, attention_mask, prng_key):
            with activation_sharding(mesh):
                return gen.generate(input_ids, attention_mask=attention_mask, params=params, prng_key=prng_key,
                                    **generate_kwargs).sequences

        in_sh = (p_sh, b_sh, b_sh, rep)
        return jax.jit(run, in_shardings=in_sh, out_shardings=b_sh), in_sh

    jits = _JitPerSignature(build)

    def call(params, input_ids, attention_mask=None, prng_key=None):
        params = unfreeze(params)
        shape = tuple(np.shape(input_ids))
        fn, in_sh = jits(shape, params, shape)
        if attention_mask is None:  # all tokens valid: the same numbers, one signature (and beams need a mask)
            attention_mask = np.ones(shape, np.int32)
        prng_key = jax.random.PRNGKey(0) if prng_key is None else prng_key
        return fn(*_place((params, _batch_arg(input_ids), _batch_arg(attention_mask), prng_key), in_sh))

    return call
