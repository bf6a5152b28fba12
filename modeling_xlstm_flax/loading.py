"""Loading: the model's plan (param names -> shapes), the checkpoint as a `Source`, its checks and the one load
sequence, plan -> open -> check -> load, behind `from_pretrained`, the sharded loader (`sharding.
load_sharded_params`) and the converters.

* `model_plan(config)`: `/`-joined param names -> shapes of the model a config builds (the causal LM, or the bare
  backbone with `lm_head=False`; scanned as the config says, or as asked), from `jax.eval_shape` of the module's
  init (nothing allocated), computed once per shape-defining config and kept; `plan_tree` is the same plan as a
  nested tree of `jax.ShapeDtypeStruct`s (float32: the params' dtype at init), the models' `params_shape_tree`.
* `Source`: any checkpoint this port reads, its tensors under OUR unrolled causal-LM names (`backbone/blocks/<i>/
  ...`, see `param_table`), each with its shape in our layout, its stored dtype and a `read(index)` that loads
  just that tensor (or a window of it) as a fresh C-contiguous array: Flax safetensors or msgpack, unrolled or
  scanned (a stacked tensor serves each block's slice), transformers' PyTorch safetensors (dense weights
  transposed on read), a checkpoint folder of NX-AI's `xlstm` library (translated, `library_checkpoint`), params
  in memory, and orbax runs of upstream xlstm-jax (`convert_orbax_to_hf`).
* `load_checkpoint(directory, config)`: opens the folder (`open_model_source`), checks names, shapes and dtype
  classes against the plan (no data read), then `load_params` reads tensor by tensor, checks values are finite
  (on by default: one pass over each tensor, about 0.3 s/GB; `check_finite=False` skips it), keeps each stored
  float dtype or casts to the one asked for (a value beyond its range is an error, never an inf) and places the
  tensor on its device or sharding at once, so host memory stays near the largest tensor.
* the checks of a param tree handed to a model (`model(ids, params=...)`, `generate(params=...)`,
  `save_pretrained(params=...)`): this model's names and shapes, so another model's params or a tree wrapped in
  {"params": ...} is named, not run or written; floating-point leaves; and for saving finite values. Each
  problem is a `ValueError` naming the params.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Optional
import weakref

import numpy as np

from . import param_table
from .checkpoint_io import (
    FLAX_WEIGHTS_INDEX_NAME, FLAX_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, CONVERT_BIN_HINT,
    CheckpointFileError, MsgpackCheckpoint, SafetensorsCheckpoint, WEIGHT_FILE_NAMES, _check_cast, _fmt_list,
    is_float_dtype, is_pytorch_layout, param_dtype_of,
)


# ---------------------------------------------------------------------------------------------- the plan
_PLANS: dict = {}  # (shape-defining config fields, lm_head, scanned) -> (shape tree, flat plan); bounded


def _plan_entry(config, lm_head: bool, scanned: Optional[bool]) -> tuple[dict, Mapping[str, tuple[int, ...]]]:
    from .configuration_xlstm_flax import RUNTIME_FIELDS, TRANSFORMERS_FIELDS

    scanned = bool(config.scan_blocks) if scanned is None else bool(scanned)
    fields = {k: v for k, v in config.to_dict().items()
              if k not in RUNTIME_FIELDS and k not in TRANSFORMERS_FIELDS and not k.startswith("_")}
    key = (json.dumps(fields, sort_keys=True, default=repr), bool(lm_head), scanned)
    entry = _PLANS.get(key)
    if entry is None:
        import jax
        import jax.numpy as jnp
        from flax.core.frozen_dict import unfreeze
        from flax.traverse_util import flatten_dict

        from .xlstm_layers import FlaxXLSTMForCausalLMModule, FlaxXLSTMModule

        cfg = config if scanned == bool(config.scan_blocks) else type(config)(**{**config.to_dict(),
                                                                                "scan_blocks": scanned})
        module = (FlaxXLSTMForCausalLMModule if lm_head else FlaxXLSTMModule)(cfg, dtype=jnp.float32)
        tree = unfreeze(jax.eval_shape(lambda rng: module.init(rng, jnp.zeros((1, 1), "i4")),
                                       jax.random.PRNGKey(0))["params"])
        flat = {"/".join(k): tuple(v.shape) for k, v in flatten_dict(tree).items()}
        entry = (tree, MappingProxyType(flat))
        if len(_PLANS) >= 32:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[key] = entry
    return entry


def model_plan(config, *, lm_head: bool = True, scanned: Optional[bool] = None) -> Mapping[str, tuple[int, ...]]:
    """`/`-joined param names -> shapes of the model `config` builds: the causal LM (`lm_head=False`: the bare
    backbone, names without `backbone/`), scanned blocks as `config.scan_blocks` says (or `scanned`). Read-only,
    computed once per shape-defining config (fields that change no shape, `RUNTIME_FIELDS`, do not count)."""
    return _plan_entry(config, lm_head, scanned)[1]


def plan_tree(config, *, lm_head: bool = True, scanned: Optional[bool] = None) -> dict:
    """`model_plan` as a nested dict of `jax.ShapeDtypeStruct` (float32), a fresh copy of its containers."""
    import jax

    return jax.tree_util.tree_map(lambda leaf: leaf, _plan_entry(config, lm_head, scanned)[0])


def param_plan(model) -> Mapping[str, tuple[int, ...]]:
    """The plan of `model` (`FlaxXLSTMModel` or `FlaxXLSTMForCausalLM`)."""
    return model_plan(model.config, lm_head=model.has_lm_head)


# ---------------------------------------------------------------------------------------------- sources
@dataclass
class SourceTensor:
    """One input tensor in our unrolled layout: `read(index)` returns it, or the window `index` of it, with its
    stored dtype, C-contiguous; `origin` names it as the input does (file:key or upstream key) for messages."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[..., np.ndarray]
    origin: str


@dataclass
class Source:
    """A checkpoint opened for reading: tensors keyed by our unrolled causal-LM names, in a read-friendly order."""

    description: str
    tensors: dict[str, SourceTensor]
    # whether the input stores block params stacked (scan_blocks layout); the source itself is always unrolled
    stacked_blocks: bool = False
    # a param of ours as this input names and shapes it: (name, shape) -> (name, shape), for messages
    input_naming: Callable[[str, tuple], tuple] = lambda name, shape: (name, tuple(shape))


def compare_to_plan(what: str, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                    optional: Iterable[str] = (), may_be_missing: Iterable[str] = (),
                    origins: Optional[dict[str, str]] = None, unexpected_extra: Optional[list[str]] = None,
                    input_naming: Callable[[str, tuple], tuple] = lambda name, shape: (name, tuple(shape))
                    ) -> list[str]:
    """Check `found` (name -> shape) against `expected`; raise `CheckpointFileError` listing every unexpected,
    missing and mis-shaped name. `optional` names may be present or absent in `found` even if not expected;
    `may_be_missing` expected names are returned instead of reported; `origins` annotates names with the input's
    own key; `unexpected_extra` are input keys that mapped to nothing (already formatted); `input_naming` turns our
    (name, shape) into the input's for messages. Returns the missing names that `may_be_missing` allowed."""
    origins = origins or {}
    optional, may_be_missing = set(optional), set(may_be_missing)
    label = lambda k: f"{k} (from {origins[k]})" if k in origins and origins[k] != k else k  # noqa: E731
    unexpected = list(unexpected_extra or []) + [f"{label(k)} {tuple(found[k])}" for k in found
                                                 if k not in expected and k not in optional]
    missing = [k for k in expected if k not in found]
    allowed = [k for k in missing if k in may_be_missing]
    named = lambda k, shape: "{} {}".format(*input_naming(k, shape))  # noqa: E731
    missing = [named(k, expected[k]) for k in missing if k not in may_be_missing]
    where = lambda k: f" (in {origins[k]})" if k in origins and origins[k] != k else ""  # noqa: E731
    mismatched = [f"{input_naming(k, found[k])[0]}: has {input_naming(k, found[k])[1]}, the config needs "
                  f"{input_naming(k, expected[k])[1]}{where(k)}"
                  for k in found if k in expected and tuple(found[k]) != tuple(expected[k])]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (no counterpart in the model):" + _fmt_list(unexpected))
    if missing:
        problems.append(f"{len(missing)} missing tensors:" + _fmt_list(missing))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches:" + _fmt_list(mismatched))
    if problems:
        raise CheckpointFileError(f"{what} does not fit its config:\n  " + "\n  ".join(problems))
    return allowed


def check_source(source: Source, expected: dict[str, tuple[int, ...]], optional: Iterable[str] = (),
                 may_be_missing: Iterable[str] = ()) -> list[str]:
    """`compare_to_plan` for an opened source (names its tensors as the input does); returns the allowed missing."""
    return compare_to_plan(source.description, {k: t.shape for k, t in source.tensors.items()}, expected,
                           optional=optional, may_be_missing=may_be_missing,
                           origins={k: t.origin for k, t in source.tensors.items()},
                           input_naming=source.input_naming)


def _check_float(source: Source) -> None:
    """Every param of this model is floating point: integer or bool data is an error naming the tensor."""
    bad = [f"{t.origin} ({t.dtype})" for t in source.tensors.values() if not is_float_dtype(t.dtype)]
    if bad:
        raise CheckpointFileError(f"{source.description}: {len(bad)} tensors hold non-floating-point data where the "
                                  f"model has float params:" + _fmt_list(bad))


def open_flax_dir(directory, num_blocks: int) -> Source:
    """A Flax-layout checkpoint directory (safetensors single/sharded or msgpack single/sharded), unrolled or
    scanned blocks, with or without the `backbone` prefix (a `FlaxXLSTMModel` checkpoint): unrolled LM names."""
    directory = Path(directory)
    if (directory / SAFE_WEIGHTS_NAME).is_file() or (directory / SAFE_WEIGHTS_INDEX_NAME).is_file():
        ckpt = SafetensorsCheckpoint(directory)
        if ckpt.metadata.get("format") == "pt":
            raise CheckpointFileError(f"{directory}: the safetensors metadata says format 'pt' (transformers' "
                                      "PyTorch layout); open it with open_pytorch_dir / xlstm-flax convert from-pytorch")
        names = {key: key.replace(".", "/") for key in ckpt.stored()}
    elif (directory / FLAX_WEIGHTS_NAME).is_file() or (directory / FLAX_WEIGHTS_INDEX_NAME).is_file():
        ckpt = MsgpackCheckpoint(directory)
        names = {key: key for key in ckpt.stored()}
    else:
        raise CheckpointFileError(f"{directory}: no Flax weights ({', '.join(WEIGHT_FILE_NAMES)})")
    stored = ckpt.stored()
    backbone_only = param_table.is_backbone_plan(names.values())
    tensors: dict[str, SourceTensor] = {}
    for key, name in names.items():
        shape, dtype = stored[key]
        name = param_table.with_backbone_prefix(name) if backbone_only else name
        if param_table.is_scanned(name):
            if not shape or shape[0] != num_blocks:
                raise CheckpointFileError(f"{ckpt.describe(key)}: stacked block tensor {tuple(shape)} should have "
                                          f"{num_blocks} blocks on its leading axis (the config's num_blocks)")
            for i, unrolled in enumerate(param_table.unrolled_names(name, num_blocks)):
                tensors[unrolled] = SourceTensor(tuple(shape[1:]), dtype,
                                                 lambda index=(), k=key, i=i: ckpt.read(k, (i,) + tuple(index)),
                                                 f"{ckpt.describe(key)}[{i}]")
        else:
            tensors[name] = SourceTensor(tuple(shape), dtype, lambda index=(), k=key: ckpt.read(k, tuple(index)),
                                         ckpt.describe(key))
    source = Source(f"Flax checkpoint {directory}", tensors,
                    stacked_blocks=any(param_table.is_scanned(n) for n in names.values()))
    _check_float(source)
    return source


def open_pytorch_dir(directory, plan: dict[str, tuple[int, ...]]) -> Source:
    """A transformers PyTorch xLSTM directory (`model.safetensors` or shards): unrolled LM names via the param
    table over `plan` (unrolled names -> shapes; `weight` alone does not say kernel, scale or embedding). Dense
    weights (out, in) are read as kernels (in, out), window by window."""
    directory = Path(directory)
    if not ((directory / SAFE_WEIGHTS_NAME).is_file() or (directory / SAFE_WEIGHTS_INDEX_NAME).is_file()):
        bins = sorted(p.name for p in directory.glob("pytorch_model*.bin*"))
        hint = f" (found PyTorch pickle weights {bins}; {CONVERT_BIN_HINT})" if bins else ""
        raise CheckpointFileError(f"{directory}: no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}{hint}")
    ckpt = SafetensorsCheckpoint(directory)
    to_flax = param_table.pytorch_to_flax_names(plan)
    tensors, unexpected = {}, []
    for key, (shape, dtype) in ckpt.stored().items():
        name = to_flax.get(key)
        if name is None:
            if key != param_table.TIED_PYTORCH_KEY:  # transformers ties lm_head.weight to the embeddings on load
                unexpected.append(f"{ckpt.describe(key)} {tuple(shape)}")
            continue
        transposed = param_table.pytorch_is_transposed(name)

        def read(index=(), k=key, transposed=transposed):
            if transposed:
                return np.ascontiguousarray(ckpt.read(k, tuple(reversed(tuple(index)))).T)
            return ckpt.read(k, tuple(index))

        tensors[name] = SourceTensor(param_table.pytorch_to_flax_shape(name, shape), dtype, read, ckpt.describe(key))
    if unexpected:
        raise CheckpointFileError(f"PyTorch checkpoint {directory} does not fit its config:\n  {len(unexpected)} "
                                  "unexpected tensors (no counterpart in the model):" + _fmt_list(unexpected))
    source = Source(f"PyTorch checkpoint {directory}", tensors, input_naming=lambda name, shape: (
        param_table.flax_to_pytorch_name(name), param_table.flax_to_pytorch_shape(name, shape)))
    _check_float(source)
    return source


def open_checkpoint(directory, plan: dict[str, tuple[int, ...]], num_blocks: int) -> Source:
    """Any local checkpoint directory this port reads, as a `Source` (layout detected from the files)."""
    if is_pytorch_layout(directory):
        return open_pytorch_dir(directory, plan)
    return open_flax_dir(directory, num_blocks)


def params_source(params, description: str = "params in memory") -> Source:
    """A nested param tree (our layout, unrolled or scanned, LM or backbone names) as a `Source`."""
    from flax.core.frozen_dict import unfreeze
    from flax.traverse_util import flatten_dict

    flat = flatten_dict(unfreeze(params), sep="/")
    backbone_only = param_table.is_backbone_plan(flat)
    tensors = {}
    for key, value in flat.items():
        name = param_table.with_backbone_prefix(key) if backbone_only else key
        if param_table.is_scanned(name):
            for i, unrolled in enumerate(param_table.unrolled_names(name, np.shape(value)[0])):
                tensors[unrolled] = SourceTensor(tuple(np.shape(value)[1:]), np.dtype(value.dtype),
                                                 lambda index=(), v=value, i=i: np.ascontiguousarray(
                                                     np.asarray(v[(i,) + tuple(index)])), f"{key}[{i}]")
        else:
            tensors[name] = SourceTensor(tuple(np.shape(value)), np.dtype(value.dtype),
                                         lambda index=(), v=value: np.ascontiguousarray(np.asarray(v[tuple(index)])),
                                         key)
    return Source(description, tensors)


def _check_finite(data: np.ndarray, origin: str) -> None:
    if data.size and not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise CheckpointFileError(f"{origin}: {bad} of {data.size} values are not finite (NaN or inf); pass "
                                  "check_finite=False to load it anyway")


def load_params(source: Source, plan: dict[str, tuple[int, ...]], *, dtype=None, shardings=None,
                check_finite: bool = True, skip: Iterable[str] = (),
                on_read: Optional[Callable[[str, tuple, int], None]] = None):
    """Read `source` into the param tree `plan` describes (our names -> shapes, LM or backbone names, unrolled or
    scanned: a scanned target stacks its blocks), tensor by tensor.

    Each tensor (or, with `shardings` {name: Sharding}, each device's window of it) is read, checked for non-finite
    values, cast to `dtype` (a float dtype, `param_dtype_of`; a value beyond its range is an error, never an inf;
    None keeps each tensor's stored float dtype, float64 becoming float32 unless JAX runs 64-bit, as transformers
    keeps a float16 or bfloat16 checkpoint's dtype) and put on its device at once (`jax.device_put`, or
    `jax.make_array_from_callback` with a sharding), so the host holds about one tensor at a time. `skip`: plan
    names the source lacks (left out of the result). `on_read(name, index, nbytes)` is called for every read (for
    diagnostics). Returns a nested dict of jax arrays."""
    import jax
    from flax.traverse_util import unflatten_dict

    dtype = None if dtype is None else param_dtype_of(dtype)
    keep64 = jax.config.jax_enable_x64
    skip = set(skip)
    out = {}
    backbone_only = param_table.is_backbone_plan(plan)
    for name, shape in plan.items():
        if name in skip:
            continue
        lm_name = param_table.with_backbone_prefix(name) if backbone_only else name
        if param_table.is_scanned(lm_name):
            members = [source.tensors[n] for n in param_table.unrolled_names(lm_name, shape[0])]

            def read(index=(), members=members):
                index = tuple(index)
                blocks = range(shape[0])[index[0]] if index and isinstance(index[0], slice) else range(shape[0])
                return np.stack([members[b].read(index[1:]) for b in blocks])

            origin, stored = members[0].origin, members[0].dtype
        else:
            member = source.tensors[lm_name]
            read, origin, stored = member.read, member.origin, member.dtype
        target = dtype if dtype is not None else (
            np.dtype(np.float32) if np.dtype(stored) == np.float64 and not keep64 else np.dtype(stored))

        def window(index=(), read=read, origin=origin, name=name, target=target):
            data = read(index)
            if on_read is not None:
                on_read(name, index, data.nbytes)
            if check_finite:
                _check_finite(data, origin)
            with np.errstate(over="ignore"):  # an overflow is found and named by _check_cast
                cast = data.astype(target, copy=False)
            _check_cast(data, cast, origin)
            return cast

        if shardings is None:
            out[name] = jax.device_put(window())
        else:
            sharding = shardings[name]
            out[name] = jax.make_array_from_callback(
                tuple(shape), sharding, lambda index, w=window, s=tuple(shape): w(_normalise_index(index, s)))
    return unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})


def _normalise_index(index: tuple, shape: tuple) -> tuple:
    """A device's index from `make_array_from_callback` as one slice per axis (leading axes)."""
    out = []
    for s, n in zip(tuple(index) + (slice(None),) * (len(shape) - len(index)), shape):
        start, stop, step = s.indices(n) if isinstance(s, slice) else (s, s + 1, 1)
        out.append(slice(start, stop, step))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- the load sequence
def open_model_source(directory, config, expected: Optional[Mapping[str, tuple[int, ...]]] = None) -> Source:
    """Any local model folder as a `Source` for `config`: a checkpoint folder of NX-AI's `xlstm` library (its
    params translated in memory, `library_checkpoint`), transformers' PyTorch safetensors or our Flax layouts.
    `expected`: the unrolled causal-LM plan the PyTorch names are mapped through (default: the config's)."""
    from .library_params import library_config_fields, read_library_config

    lm = read_library_config(directory)
    if lm is not None:
        from .library_checkpoint import params_from_library, read_library_state_dict

        _, backend = library_config_fields(lm)
        params = params_from_library(read_library_state_dict(directory), config, backend)
        return params_source(params, f"xlstm library checkpoint {directory}")
    if expected is None:
        expected = model_plan(config, scanned=False)
    return open_checkpoint(directory, expected, config.num_blocks)


def check_weight_files(directory) -> None:
    """A model folder without weights (or with PyTorch pickles only, which are never unpickled here) is an error
    saying what to do."""
    from .library_params import read_library_config

    directory = Path(directory)
    if any((directory / name).is_file() for name in WEIGHT_FILE_NAMES) or read_library_config(directory):
        return
    bins = sorted(p.name for p in directory.glob("pytorch_model*.bin*"))
    if bins:  # a pickle: never unpickled here (arbitrary code), read only by torch
        raise CheckpointFileError(f"{directory}: holds PyTorch pickle weights {bins}, which this port does not read; "
                                  f"{CONVERT_BIN_HINT}")
    raise CheckpointFileError(f"{directory}: no weights ({', '.join(WEIGHT_FILE_NAMES)})")


def load_checkpoint(directory, config, *, lm_head: bool = True, dtype=None, shardings=None,
                    check_finite: bool = True, may_be_missing: str = "none",
                    on_read: Optional[Callable[[str, tuple, int], None]] = None) -> tuple[dict, list[str]]:
    """The one load sequence: plan (`model_plan(config, lm_head=...)`) -> open (`open_model_source`) -> check
    (names, shapes, float dtypes; nothing read yet) -> load (`load_params`: `dtype`, `shardings`, `check_finite`,
    `on_read` as there). Returns (nested params, the plan names the checkpoint lacks, left out of the params).

    A stored LM head the model does not use (bare backbone, tied embeddings) is accepted and not read.
    `may_be_missing`: which missing params are returned instead of refused: "none", "head" (the LM head, when the
    checkpoint has none: a backbone checkpoint loaded into the causal LM) or "all"."""
    plan = model_plan(config, lm_head=lm_head)
    expected = param_table.unrolled_plan(plan)
    source = open_model_source(directory, config, expected)
    head = {k for k in expected if k.startswith(param_table.LM_HEAD + "/")}
    source_head = {k for k in source.tensors if k.startswith(param_table.LM_HEAD + "/")}
    optional = source_head if not lm_head or config.tie_word_embeddings else set()
    allowed = {"none": set(), "head": set() if source_head else head, "all": set(expected)}[may_be_missing]
    missing = set(check_source(source, expected, optional=optional, may_be_missing=allowed))

    def lm_names(name, shape):  # a plan name -> the unrolled causal-LM names it covers
        name = name if lm_head else param_table.with_backbone_prefix(name)
        return param_table.unrolled_names(name, shape[0]) if param_table.is_scanned(name) else [name]

    missing_own = sorted(name for name, shape in plan.items() if set(lm_names(name, shape)) & missing)
    params = load_params(source, plan, dtype=dtype, shardings=shardings, check_finite=check_finite,
                         skip=missing_own, on_read=on_read)
    return params, missing_own


# ---------------------------------------------------------------------------------------------- param trees
_ACCEPTED: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()  # model -> signatures checked


def check_model_params(model, params, what: str) -> None:
    """`check_param_tree` against `model`'s plan, for every call of the model: a tree of the same structure,
    shapes and dtypes as one already accepted for this model passes after one flatten (about 1 ms for 24
    blocks); the full check with its messages runs once per new signature."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(params)
    signature = (treedef, tuple((getattr(leaf, "shape", None), getattr(leaf, "dtype", None)) for leaf in leaves))
    accepted = _ACCEPTED.setdefault(model, set())
    if signature in accepted:
        return
    check_param_tree(params, param_plan(model), what)
    if len(accepted) >= 16:
        accepted.clear()
    accepted.add(signature)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaves(params) -> list[tuple[str, Any]]:
    """[(name, leaf)] of a nested param tree, names `/`-joined."""
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in flat]


def check_param_tree(params, plan: dict[str, tuple[int, ...]], what: str) -> None:
    """`params` must have exactly the names and shapes of `plan` and floating-point leaves (arrays or tracers);
    `ValueError` naming `what` and each unexpected, missing, mis-shaped or non-float param otherwise."""
    if not hasattr(params, "keys"):
        raise ValueError(f"{what}: expected the model's param tree (a dict), got {type(params).__name__}")
    if not params:
        raise ValueError(f"{what}: an empty param tree; pass the model's params (or None for model.params)")
    leaves = _leaves(params)
    compare_to_plan(what, {name: tuple(np.shape(leaf)) for name, leaf in leaves}, plan)
    bad = []
    for name, leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not is_float_dtype(dtype):
            bad.append(f"{name} ({dtype if dtype is not None else type(leaf).__name__})")
    if bad:
        raise ValueError(f"{what}: {len(bad)} params are not floating point (the model's params are float):"
                         + _fmt_list(bad))


def check_params_to_save(params, plan: dict[str, tuple[int, ...]], what: str) -> None:
    """`check_param_tree`, then every value finite: what `save_pretrained` checks before it writes anything."""
    import jax

    check_param_tree(params, plan, what)
    bad = []
    for name, leaf in _leaves(params):
        if isinstance(leaf, jax.core.Tracer):
            raise ValueError(f"{what}: {name} is a traced value (inside jax.jit/grad); save concrete params")
        finite = np.isfinite(np.asarray(leaf))
        if not finite.all():
            bad.append(f"{name}: {int(finite.size - np.count_nonzero(finite))} of {finite.size} values")
    if bad:
        raise ValueError(f"{what}: {len(bad)} params hold NaN or inf values, which would be saved into a model "
                         "that does not load; nothing was written:" + _fmt_list(bad))


# ---------------------------------------------------------------------------------------------- whole upstream trees
# Upstream xlstm-jax param trees <-> ours, whole trees at a time (the streaming converter, `convert_orbax_to_hf`, uses
# `param_table`'s per-key functions), e.g. `params/xlstm_block_stack/blocks/0/xlstm_res_block/xlstm/dense_q/Dense_0/kernel`
# <-> `backbone/blocks/0/mlstm_layer/q/kernel`; `tests/fixtures/README.md` documents upstream's layout.
def _unstack_upstream_blocks(flat: dict) -> dict:
    """Upstream scan layout `blocks/block/...` (leading block axis) -> `blocks/<i>/...`."""
    out = {}
    for key, value in flat.items():
        if key.startswith(param_table.UPSTREAM_SCANNED_BLOCKS):
            rest = key[len(param_table.UPSTREAM_SCANNED_BLOCKS):]
            for i in range(value.shape[0]):
                out[f"{param_table.UPSTREAM_BLOCKS}/{i}/{rest}"] = value[i]
        else:
            out[key] = value
    return out


def upstream_to_flax(upstream: dict[str, Any], config) -> dict:
    """Upstream params (flat `/`-joined dict or nested dict, with or without the `params/` root) -> our nested
    params for `config` (scanned layout when `config.scan_blocks`). Raises ValueError listing unexpected or missing
    keys and shape mismatches."""
    from flax.traverse_util import flatten_dict, unflatten_dict  # here: importing this module needs no jax
    import numpy as np

    flat = upstream if all(isinstance(v, np.ndarray) or hasattr(v, "shape") for v in upstream.values()) else None
    if flat is None:
        flat = {"/".join(k): v for k, v in flatten_dict(upstream).items()}
    flat = {param_table.strip_upstream_key(k): np.asarray(v) for k, v in flat.items()}
    flat = _unstack_upstream_blocks(flat)

    ours: dict[str, np.ndarray] = {}
    unexpected = []
    for key, value in flat.items():
        mapped = param_table.upstream_key_to_flax(key, config.layer_type)
        if mapped is None:
            unexpected.append(f"{key} {tuple(value.shape)}")
        else:
            ours[mapped[0]] = param_table.upstream_array_to_flax(value, mapped[1])
    if unexpected:
        raise ValueError(f"upstream params have {len(unexpected)} keys with no counterpart: {unexpected[:10]}")
    params = unflatten_dict({tuple(k.split("/")): v for k, v in ours.items()})
    check_params_against_config(params_unrolled=params, config=config)
    if config.scan_blocks:
        from .xlstm_layers import stack_block_params

        params = stack_block_params(params, config.num_blocks)
    return params


def flax_to_upstream(params: dict, config) -> dict[str, np.ndarray]:
    """Our params -> upstream flat dict (`params/...` keys, unrolled blocks; stack them for upstream scan)."""
    from flax.traverse_util import flatten_dict
    import numpy as np

    from .xlstm_layers import unstack_block_params

    if config.scan_blocks:
        params = unstack_block_params(params, config.num_blocks)
    out = {}
    for key, value in flatten_dict(params, sep="/").items():
        up_key, kind = param_table.flax_to_upstream_key(key, config.layer_type)
        out[up_key] = param_table.flax_array_to_upstream(np.asarray(value), kind, config.num_heads)
    return out


def check_params_against_config(params_unrolled: dict, config) -> None:
    """Raise ValueError naming missing keys, unexpected keys and shape mismatches (first ten of each)."""
    from flax.traverse_util import flatten_dict
    import numpy as np

    expected = model_plan(config, scanned=False)
    got = {k: tuple(np.shape(v)) for k, v in flatten_dict(params_unrolled, sep="/").items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [f"{k}: got {got[k]}, config needs {expected[k]}" for k in sorted(set(got) & set(expected))
                  if got[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {missing[:10]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {unexpected[:10]}")
    if mismatched:
        problems.append(f"shape mismatches {len(mismatched)}: {mismatched[:10]}")
    if problems:
        raise ValueError("params do not fit the config: " + "; ".join(problems))
