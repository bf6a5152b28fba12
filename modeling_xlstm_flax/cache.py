"""The recurrent cache (the generation state): one typed cache per block kind, its one layout, `init_cache`, the
host-side check and the sharding axes of every field.

Shapes: B batch, NB blocks, NH heads, DHQK / DHV mLSTM head dims, DH sLSTM head dim, K conv kernel size,
inner = the `mlstm` layer's inner dim, D embedding dim. Every field is float32.

    MLSTMCache (an mLSTM block)   c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH);
                                  conv (B, K-1, inner) for the `mlstm` layer type (its conv window), else None
    SLSTMCache (an sLSTM block)   y, c, n, m (B, NH, DH); conv (B, K-1, D) with a conv (K > 0), else None

Layout (`init_cache`): a list with one cache per block (block i of kind `slstm_at`), or, with `scan_blocks` (a
homogeneous stack), ONE cache of the blocks' kind whose fields carry the block axis second: (B, NB, ...). The
batch is always axis 0, so generation can repeat and gather rows (beams) on every leaf.

Both classes are `flax.struct` dataclasses (JAX pytrees: `jax.tree_util`, `jax.jit`, pickling work) and read a
field by attribute or by name (`cache[i].c`, `cache[i]["c"]`); `replace(...)` gives a changed copy.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


class _FieldsByName:
    """Read access by field name (`cache["c"]`), the field names present (`keys()`, iteration, `in`: the fields
    that are not None), as for the dicts the cache was before."""

    FIELDS: tuple = ()
    # per field, the logical axis of each dim after the batch (and, stacked, the block) axis: "heads" and
    # "channels" are split over the tensor axis of a mesh where they divide (`sharding.cache_partition_specs`)
    AXES: dict = {}

    def __getitem__(self, name: str):
        if name not in self.FIELDS or getattr(self, name) is None:
            raise KeyError(f"{type(self).__name__} has no field {name!r} (fields: {list(self.keys())})")
        return getattr(self, name)

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, name) -> bool:
        return name in self.keys()

    def keys(self) -> tuple:
        return tuple(k for k in self.FIELDS if getattr(self, k) is not None)

    def items(self):
        return tuple((k, getattr(self, k)) for k in self.keys())


@flax.struct.dataclass
class MLSTMCache(_FieldsByName):
    """The state of one mLSTM block (see the module docstring)."""

    c: Any
    n: Any
    m: Any
    conv: Any = None

    FIELDS = ("c", "n", "m", "conv")
    AXES = {"c": ("heads", None, None), "n": ("heads", None), "m": ("heads",), "conv": (None, "channels")}


@flax.struct.dataclass
class SLSTMCache(_FieldsByName):
    """The state of one sLSTM block (see the module docstring)."""

    y: Any
    c: Any
    n: Any
    m: Any
    conv: Any = None

    FIELDS = ("y", "c", "n", "m", "conv")
    AXES = {"y": ("heads", None), "c": ("heads", None), "n": ("heads", None), "m": ("heads", None),
            "conv": (None, "channels")}


BlockCache = Union[MLSTMCache, SLSTMCache]
Cache = Union[list, BlockCache]  # per-block list, or one stacked cache with `scan_blocks`
CACHE_TYPES = (MLSTMCache, SLSTMCache)


def _check_dtype(dtype) -> None:
    if jnp.dtype(dtype) != jnp.float32:
        raise ValueError(f"init_cache: dtype={dtype!r} is not supported: the recurrent state is float32 whatever the "
                         "compute dtype (the kernels accumulate it in float32)")


def mlstm_block_cache(config, batch_size: int, dtype=jnp.float32) -> MLSTMCache:
    """The fresh (all zero) cache of an mLSTM block of `config` (an `XLSTMFlaxConfig`)."""
    _check_dtype(dtype)
    zeros = lambda *shape: jnp.zeros((batch_size, *shape), dtype)  # noqa: E731
    NH, DHQK = config.num_heads, config.qk_head_dim
    conv = zeros(config.conv1d_kernel_size - 1, config.inner_dim) if config.layer_type == "mlstm" else None
    return MLSTMCache(zeros(NH, DHQK, config.v_head_dim), zeros(NH, DHQK), zeros(NH), conv=conv)


def slstm_block_cache(config, batch_size: int, dtype=jnp.float32) -> SLSTMCache:
    """The fresh (all zero: n == 0 marks it fresh) cache of an sLSTM block of `config` (an `SLSTMConfig`)."""
    _check_dtype(dtype)
    zeros = lambda *shape: jnp.zeros((batch_size, *shape), dtype)  # noqa: E731
    K = config.conv1d_kernel_size
    return SLSTMCache(*(zeros(config.num_heads, config.head_dim) for _ in range(4)),
                      conv=zeros(K - 1, config.embedding_dim) if K > 0 else None)


def block_cache(config, index: int, batch_size: int, dtype=jnp.float32) -> BlockCache:
    """The fresh cache of block `index` of `config` (an `XLSTMFlaxConfig`): its kind as `slstm_at` says."""
    if index in set(config.slstm_block_indices):
        return slstm_block_cache(config.slstm_block_config(index), batch_size, dtype)
    return mlstm_block_cache(config, batch_size, dtype)


def init_cache(config, batch_size: int, dtype=jnp.float32) -> Cache:
    """The recurrent state of every block at the start of a sequence, in the one layout (module docstring)."""
    from .checks import check_batch_size

    check_batch_size(batch_size)
    if config.scan_blocks:  # a homogeneous stack (the config refuses a scanned mixed one): block 0's kind, stacked
        one = block_cache(config, 0, batch_size, dtype)
        return jax.tree_util.tree_map(lambda a: jnp.repeat(a[:, None], config.num_blocks, axis=1), one)
    return [block_cache(config, i, batch_size, dtype) for i in range(config.num_blocks)]


def to_scan_layout(cache: Optional[BlockCache]) -> Optional[BlockCache]:
    """A stacked cache (B, NB, ...) -> (NB, B, ...), the block axis first as `nn.scan` runs over it."""
    return None if cache is None else jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 1, 0), cache)


def from_scan_layout(cache: Optional[BlockCache]) -> Optional[BlockCache]:
    """The inverse of `to_scan_layout`: (NB, B, ...) -> (B, NB, ...)."""
    return None if cache is None else jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 1), cache)


# ---------------------------------------------------------------------------------------------- sharding axes
def field_axes(cache: Cache, fn: Callable[[tuple, Any], Any]) -> Cache:
    """The same layout with each field replaced by `fn(axes, leaf)`: axes the logical axis of each of the leaf's
    dims, "batch" first, then "blocks" for a stacked cache, then the field's `AXES` ("heads", "channels" or
    None). A field that is None stays None. `sharding.cache_partition_specs` turns the axes into specs."""

    def one(block: BlockCache, stacked: bool) -> BlockCache:
        if not isinstance(block, CACHE_TYPES):
            raise ValueError(f"expected a cache of init_cache (MLSTMCache / SLSTMCache per block), got "
                             f"{_describe(block)}")
        lead = ("batch", "blocks") if stacked else ("batch",)
        return block.replace(**{k: fn(lead + block.AXES[k], getattr(block, k)) for k in block.keys()})

    if isinstance(cache, (list, tuple)):
        return [one(block, False) for block in cache]
    return one(cache, True)


# ---------------------------------------------------------------------------------------------- host-side check
def _describe(tree: Any) -> str:
    if isinstance(tree, CACHE_TYPES):
        return f"an {type(tree).__name__} with fields {list(tree.keys())}"
    if isinstance(tree, dict):
        return f"a dict with keys {sorted(map(str, tree))}"
    if isinstance(tree, (list, tuple)):
        return f"a {type(tree).__name__} of {len(tree)}"
    return type(tree).__name__


def _compare_block(got: Any, want: BlockCache, path: str) -> None:
    if type(got) is not type(want) or got.keys() != want.keys():
        raise ValueError(f"{path} must be {_describe(want)} (this block's kind, as init_cache builds it), got "
                         f"{_describe(got)}")
    for key in want.keys():
        leaf, ref = getattr(got, key), getattr(want, key)
        shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        if shape is None or dtype is None:
            raise ValueError(f"{path}.{key} must be an array of shape {tuple(ref.shape)} ({ref.dtype}), got "
                             f"{type(leaf).__name__}")
        if tuple(shape) != tuple(ref.shape) or np.dtype(dtype) != np.dtype(ref.dtype):
            raise ValueError(f"{path}.{key} has shape {tuple(shape)} ({np.dtype(dtype)}), expected "
                             f"{tuple(ref.shape)} ({ref.dtype}): the cache was built for another batch size or "
                             "config (init_cache(batch_size) builds a matching one)")


_all_finite = jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))


def check_cache(cache: Any, config, batch_size: int, name: str = "past_key_values") -> None:
    """A concrete cache against `init_cache(config, batch_size)`: layout, block kinds, field shapes, float32 and
    finite values; a ValueError naming the first difference. Call on the host (not on traced values)."""
    want = jax.eval_shape(lambda: init_cache(config, batch_size))
    if isinstance(want, list):
        if not isinstance(cache, (list, tuple)) or len(cache) != len(want):
            raise ValueError(f"{name} must be a list of {len(want)} per-block caches (one per block, as "
                             f"init_cache builds it), got {_describe(cache)}")
        for i, (got, ref) in enumerate(zip(cache, want)):
            _compare_block(got, ref, f"{name}[{i}]")
    else:
        _compare_block(cache, want, f"{name} (scan_blocks: one stacked cache)")
    if not bool(_all_finite(jax.tree_util.tree_leaves(cache))):
        raise ValueError(f"{name} holds NaN or infinite values: a cache from a diverged or corrupted run; start "
                         "from init_cache(batch_size)")


__all__ = ["BlockCache", "Cache", "MLSTMCache", "SLSTMCache", "block_cache", "check_cache", "field_axes",
           "from_scan_layout", "init_cache", "mlstm_block_cache", "slstm_block_cache",
           "to_scan_layout"]
