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
import logging
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
from flax.core.frozen_dict import unfreeze
from flax.traverse_util import flatten_dict
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import param_table
from .cache import field_axes

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
    "from_pretrained_sharded", "vocab_parallel_take",
]


# ---------------------------------------------------------------------------------------------- meshes
def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A `Mesh` with axes ("data", "fsdp", "tensor") of the given sizes; one size may be -1 (the rest of the
    devices). `devices`: default all global devices (every host's after `jax.distributed.initialize()`), laid
    out so that `tensor`, then `fsdp`, vary fastest (they stay within a host / fast interconnect)."""
    for axis, size in zip(AXES, (data, fsdp, tensor)):
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
            raise ValueError(f"make_mesh({axis}={size!r}): mesh axis sizes must be ints >= 1 (or one -1 for the "
                             "remaining devices)")
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(data), int(fsdp), int(tensor)]
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


def init_sharded_params(model, mesh: Mesh, rng: Optional[jax.Array] = None,
                        fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """Random init directly into the mesh (jit with out_shardings): no device ever holds the full model."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    shardings = param_shardings(model.params_shape_tree, model.config, mesh, fsdp_min_weight_size)
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


def cache_partition_specs(cache, config, mesh: AxisSizes):
    """Specs for a cache from `model.init_cache` (or a model call), from each field's logical axes
    (`cache.field_axes`): batch over (data, fsdp), heads on tensor (c, n, m, y: the dim after batch [and block];
    conv window: channels), the scanned block axis unsharded. Same layout as `cache`, PartitionSpec leaves."""
    T = TENSOR if is_head_parallel(config, mesh) else None
    names = {"batch": BATCH_AXES, "blocks": None, "heads": T, "channels": T, None: None}
    return field_axes(cache, lambda axes, leaf: fit_spec(tuple(names[a] for a in axes), np.shape(leaf), mesh))


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


def vocab_parallel_take(table: jax.Array, ids: jax.Array, mesh: Mesh) -> jax.Array:
    """`table[clip(ids, 0, V - 1)]` for a table (V, D) whose vocabulary is split over `tensor` (V divisible by its
    size), without gathering the table: inside `jax.shard_map` each tensor shard looks up the ids that fall in its
    own V / tensor rows (zeros for the others) and one `psum` over `tensor` adds the pieces (one nonzero term per
    element, so the sum is exact in any dtype). ids (...) int -> (..., D) in the table's dtype, ids' dim 0 over
    (data, fsdp) where it divides (`batch_spec`), replicated on `tensor`. Ids outside [0, V - 1] are clamped first,
    as the backbone clamps traced ids before its embedding (so the result equals the unsharded lookup)."""
    vocab = table.shape[0]
    ids = jnp.clip(ids, 0, vocab - 1)
    ids_spec = batch_spec(ids.shape, mesh)

    def local(rows, local_ids):  # rows (V / tensor, D): this shard's slice of the vocabulary
        local_ids = local_ids - jax.lax.axis_index(TENSOR) * rows.shape[0]
        mine = (local_ids >= 0) & (local_ids < rows.shape[0])
        found = jnp.take(rows, jnp.where(mine, local_ids, 0), axis=0)
        return jax.lax.psum(jnp.where(mine[..., None], found, jnp.zeros((), rows.dtype)), TENSOR)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(TENSOR, None), ids_spec),
                         out_specs=P(*ids_spec, None))(table, ids)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh):
    """Within this context (and inside jit), every block's input and output residual stream is pinned to
    `residual_spec` with `jax.lax.with_sharding_constraint`, via flax's `nn.intercept_methods` (the model code is
    unchanged). Without it XLA's propagation is free to keep activations feature-sharded over fsdp and all-reduce
    them (measured: norms and projections then all-reduce activations); with it, FSDP gathers weights and tensor
    parallelism all-reduces once after out_proj and proj_down - the Megatron/FSDP schedule. Numerics are the same
    either way. The embedding lookup runs on the table with its fsdp dim gathered; where its vocabulary is split
    over `tensor`, by `vocab_parallel_take` (no device gathers the table). The sharded entry points below use it."""
    from .slstm import SLSTMBlock
    from .xlstm_layers import FlaxXLSTMBlock

    def constrain(x):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, residual_spec(x.shape, mesh)))

    def embed(module: nn.Embed, ids):
        # The lookup of `nn.Embed.__call__` (the table cast to the compute dtype, `jnp.take` of the rows) with the
        # table's fsdp dim gathered first, as FSDP gathers every weight where it is used: gathering rows of a
        # feature-sharded table gives feature-sharded activations, which XLA cannot turn into the batch-sharded
        # residual stream without rematerialising them in full ("[SPMD] Involuntary full rematerialization").
        # With the vocabulary split over tensor, each shard looks up its own rows (`vocab_parallel_take`): left to
        # XLA, a lookup XLA:GPU turns into a dynamic-slice (batch 1) all-gathers the whole table every step.
        table = module.embedding
        spec = fit_spec((TENSOR, None), table.shape, mesh)
        table = jax.lax.with_sharding_constraint(table, NamedSharding(mesh, spec))
        table = table.astype(module.dtype or table.dtype)
        if spec[0] == TENSOR:
            return constrain(vocab_parallel_take(table, ids, mesh))
        return constrain(jnp.take(table, ids, axis=0))

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not args:
            return next_fun(*args, **kwargs)
        if type(context.module) is nn.Embed and not kwargs:
            return embed(context.module, args[0])
        if not isinstance(context.module, (FlaxXLSTMBlock, SLSTMBlock)):  # every block kind
            return next_fun(*args, **kwargs)
        x, state = next_fun(constrain(args[0]), *args[1:], **kwargs)
        return constrain(x), state

    with nn.intercept_methods(interceptor):
        yield


# ---------------------------------------------------------------------------------------------- loading
def load_sharded_params(model_dir: str, model, mesh: Mesh, dtype: Any = None,
                        fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE, check_finite: bool = True,
                        on_read: Optional[Callable[[str, tuple, int], None]] = None):
    """Params of a saved model dir placed straight into the mesh: the one load sequence of `from_pretrained`
    (`loading.load_checkpoint`: every layout it reads, the same checks) with this mesh's shardings.

    Each param becomes a global array with `jax.make_array_from_callback`: every device's window is read from the
    file (safetensors `get_slice`, only that window) and put on that device, so neither one device nor the host
    ever holds the full model (a replicated param is read once per device). Multi-host: each process reads only
    its own devices' windows (the files must be visible to every host). `model`: a `FlaxXLSTMPreTrainedModel`
    (e.g. built with `_do_init=False`) whose config decides the target layout. `dtype`: the params' dtype (None:
    as stored, like `from_pretrained`). A param the checkpoint lacks is an error naming it. `on_read(name, index,
    nbytes)` is called for every read (diagnostics)."""
    from .loading import load_checkpoint

    config = model.config
    shardings = flatten_dict(param_shardings(model.params_shape_tree, config, mesh, fsdp_min_weight_size), sep="/")
    params, _ = load_checkpoint(model_dir, config, lm_head=model.has_lm_head, dtype=dtype, shardings=shardings,
                                check_finite=check_finite, on_read=on_read)
    return params


def from_pretrained_sharded(model_dir: str, mesh: Mesh, dtype: Any = None, param_dtype: Any = None,
                            fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE, **config_overrides):
    """(model, params): the model class from the dir's config (ours, transformers' `xLSTMConfig` or an `xlstm`
    library checkpoint's), `config_overrides` (our field names) applied, built with `_do_init=False` (no params
    allocated) and its params loaded into the mesh (`load_sharded_params`). `dtype`: compute dtype (None: the config's); `param_dtype`: storage dtype of the
    params (None: as stored)."""
    from .configuration_xlstm_flax import XLSTMFlaxConfig
    from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

    config = XLSTMFlaxConfig.from_pretrained(model_dir)
    config.update(config_overrides)  # our field names, checked (a translated config took no overrides before)
    model = FlaxXLSTMForCausalLM(config, dtype=dtype, _do_init=False)
    params = load_sharded_params(model_dir, model, mesh, dtype=param_dtype, fsdp_min_weight_size=fsdp_min_weight_size)
    return model, params
