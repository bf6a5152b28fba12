"""Checkpoint reading: the one reader behind every load and conversion (the one writer: `checkpoint_writer`).

Reading. Every layout this port accepts is opened as a `Source`: its tensors under OUR unrolled Flax names (the
causal-LM layout, `backbone/blocks/<i>/...`, see `param_table`), each with its shape in our layout, its stored dtype
and a `read(index)` that loads just that tensor (or a window of it) as a fresh C-contiguous NumPy array:

* Flax safetensors (`model.safetensors`, or shards listed by `model.safetensors.index.json`), unrolled or scanned
  (a stacked tensor serves each block's slice);
* transformers' PyTorch safetensors (metadata format "pt", single or sharded; dense weights transposed on read);
* Flax msgpack (`flax_model.msgpack` or shards with `flax_model.msgpack.index.json`; read whole, one file at a time);
* orbax runs of upstream xlstm-jax (`conversion.orbax_to_hf` opens them as a `Source` too).

Safetensors files are read with `safetensors.safe_open` only (header validation, `get_slice` windows): no header is
parsed by hand. An index must name files inside the model folder, and every file it names must exist and hold the
tensors it lists. Opening checks names, shapes and dtype classes against the model's plan (no data read);
`load_params` then reads tensor by tensor, checks values are finite (on by default: one pass over each tensor,
about 0.3 s/GB; `check_finite=False` skips it), casts to the requested dtype and places the tensor on its device or
sharding at once, so host memory stays near the largest tensor.

Writing: `checkpoint_writer`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import ml_dtypes
import numpy as np

from . import param_table

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"
WEIGHT_FILE_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, FLAX_WEIGHTS_NAME, FLAX_WEIGHTS_INDEX_NAME)

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool),
}
_DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_LIST_LIMIT = 50


class CheckpointFileError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, inconsistent with its index or does not fit the model;
    the message names the file and tensor."""


def is_float_dtype(dtype) -> bool:
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype == np.dtype(ml_dtypes.bfloat16)  # bf16 is no np.floating


# ---------------------------------------------------------------------------------------------- stored files
class SafetensorsFile:
    """One safetensors file opened with `safe_open` (validated on open); tensors read on demand, windows with
    `get_slice`."""

    def __init__(self, path):
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointFileError(f"{self.path}: file not found")
        try:
            self._handle = safe_open(str(self.path), framework="numpy")
            self.metadata = self._handle.metadata() or {}
            self.tensors: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            for name in self._handle.keys():
                view = self._handle.get_slice(name)
                code = view.get_dtype()
                if code not in SAFETENSORS_DTYPES:
                    raise CheckpointFileError(f"{self.path}: tensor {name} has unsupported dtype {code}")
                self.tensors[name] = (tuple(view.get_shape()), SAFETENSORS_DTYPES[code])
        except CheckpointFileError:
            raise
        except Exception as e:  # SafetensorError, OSError: truncated, corrupt, not safetensors at all
            raise CheckpointFileError(f"{self.path}: not a valid safetensors file ({e}; truncated or corrupt?)"
                                      ) from None

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        """Tensor `name`, or the window `index` (a tuple of ints/slices over its leading axes), as a fresh
        C-contiguous array."""
        try:
            data = self._handle.get_slice(name)[index] if index else self._handle.get_tensor(name)
        except Exception as e:
            raise CheckpointFileError(f"{self.path}: cannot read tensor {name} ({e})") from None
        return np.ascontiguousarray(data)


def _read_index(index_path: Path) -> dict[str, str]:
    """The weight map of a transformers index, each file checked to lie inside the index's folder."""
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not an object of file names")
    except Exception as e:
        raise CheckpointFileError(f"{index_path}: not a valid checkpoint index ({type(e).__name__}: {e})") from None
    folder = index_path.parent.resolve()
    for tensor, file in weight_map.items():
        target = (index_path.parent / file).resolve()
        if os.path.isabs(file) or folder not in target.parents:
            raise CheckpointFileError(f"{index_path}: tensor {tensor} is mapped to {file!r}, a path outside the "
                                      f"model folder {folder}; refusing to read it")
        if not target.is_file():
            raise CheckpointFileError(f"{index_path}: names shard {file!r} (for {tensor}), which does not exist")
    return weight_map


class SafetensorsCheckpoint:
    """All tensors of `model.safetensors` or of the shards `model.safetensors.index.json` lists: name -> file."""

    def __init__(self, directory):
        directory = Path(directory)
        single, index_path = directory / SAFE_WEIGHTS_NAME, directory / SAFE_WEIGHTS_INDEX_NAME
        if single.is_file():
            self.files = {single.name: SafetensorsFile(single)}
            self.location = {name: single.name for name in self.files[single.name].tensors}
        elif index_path.is_file():
            weight_map = _read_index(index_path)
            self.files = {name: SafetensorsFile(directory / name) for name in sorted(set(weight_map.values()))}
            self.location = {}
            for name, file in self.files.items():
                listed = {t for t, f in weight_map.items() if f == name}
                absent = sorted(listed - set(file.tensors))
                if absent:
                    raise CheckpointFileError(f"{file.path}: index {index_path.name} lists tensors the file lacks: "
                                              f"{absent[:20]}")
                for t in file.tensors:
                    self.location[t] = name
        else:
            raise CheckpointFileError(f"{directory}: neither {SAFE_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME} found")
        self.directory = directory
        self.metadata = next(iter(self.files.values())).metadata if self.files else {}

    def stored(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {name: self.files[file].tensors[name] for name, file in self.location.items()}

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        return self.files[self.location[name]].read(name, index)

    def describe(self, name: str) -> str:
        return f"{self.directory / self.location[name]}:{name}"


class MsgpackCheckpoint:
    """Flax msgpack checkpoint (`flax_model.msgpack` or shards + index); names `/`-joined. Msgpack has no offsets,
    so a file is read whole when one of its tensors is needed, and only the last file read is kept."""

    def __init__(self, directory):
        directory = Path(directory)
        single, index_path = directory / FLAX_WEIGHTS_NAME, directory / FLAX_WEIGHTS_INDEX_NAME
        if single.is_file():
            names = [single.name]
        elif index_path.is_file():
            names = sorted(set(_read_index(index_path).values()))
        else:
            raise CheckpointFileError(f"{directory}: neither {FLAX_WEIGHTS_NAME} nor {FLAX_WEIGHTS_INDEX_NAME} found")
        self.directory = directory
        self._cache: tuple[Optional[str], dict] = (None, {})
        self.location: dict[str, str] = {}
        self.shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for name in names:  # one pass to learn names and shapes, one file in memory at a time
            for key, value in self._load(name).items():
                self.location[key] = name
                self.shapes[key] = (tuple(value.shape), value.dtype)
        self._cache = (None, {})

    def _load(self, name: str) -> dict[str, np.ndarray]:
        if self._cache[0] == name:
            return self._cache[1]
        from flax.serialization import msgpack_restore
        from flax.traverse_util import flatten_dict

        self._cache = (None, {})
        path = self.directory / name
        try:
            state = msgpack_restore(path.read_bytes())
            flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(state).items()}
        except Exception as e:
            raise CheckpointFileError(f"{path}: not a valid Flax msgpack file ({type(e).__name__}: {e})") from None
        self._cache = (name, flat)
        return flat

    def stored(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return dict(self.shapes)

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        value = self._load(self.location[name])[name]
        return np.ascontiguousarray(value[index] if index else value)

    def describe(self, name: str) -> str:
        return f"{self.directory / self.location[name]}:{name}"


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


def _fmt_list(items: list[str]) -> str:
    shown = "\n    ".join(items[:_LIST_LIMIT])
    more = f"\n    ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"\n    {shown}{more}"


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


def is_pytorch_layout(directory) -> bool:
    """Safetensors written by PyTorch (transformers' xLSTM layout): metadata format "pt"."""
    directory = Path(directory)
    if not ((directory / SAFE_WEIGHTS_NAME).is_file() or (directory / SAFE_WEIGHTS_INDEX_NAME).is_file()):
        return False
    return SafetensorsCheckpoint(directory).metadata.get("format") == "pt"


def has_weights(directory) -> bool:
    return any((Path(directory) / name).is_file() for name in WEIGHT_FILE_NAMES)


def open_flax_dir(directory, num_blocks: int) -> Source:
    """A Flax-layout checkpoint directory (safetensors single/sharded or msgpack single/sharded), unrolled or
    scanned blocks, with or without the `backbone` prefix (a `FlaxXLSTMModel` checkpoint): unrolled LM names."""
    directory = Path(directory)
    if (directory / SAFE_WEIGHTS_NAME).is_file() or (directory / SAFE_WEIGHTS_INDEX_NAME).is_file():
        ckpt = SafetensorsCheckpoint(directory)
        if ckpt.metadata.get("format") == "pt":
            raise CheckpointFileError(f"{directory}: the safetensors metadata says format 'pt' (transformers' "
                                      "PyTorch layout); open it with open_pytorch_dir / xlstm-flax-from-pytorch")
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
        hint = (f" (found {bins}: load it with transformers' xLSTMForCausalLM and save_pretrained(..., "
                "safe_serialization=True) first)") if bins else ""
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


# ---------------------------------------------------------------------------------------------- loading
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
    values, cast to `dtype` (None: float32) and put on its device at once (`jax.device_put`, or
    `jax.make_array_from_callback` with a sharding), so the host holds about one tensor at a time. `skip`: plan
    names the source lacks (left out of the result). `on_read(name, index, nbytes)` is called for every read (for
    diagnostics). Returns a nested dict of jax arrays."""
    import jax
    from flax.traverse_util import unflatten_dict

    dtype = np.dtype(np.float32) if dtype is None else np.dtype(dtype)
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

            origin = members[0].origin
        else:
            member = source.tensors[lm_name]
            read, origin = member.read, member.origin

        def window(index=(), read=read, origin=origin, name=name):
            data = read(index)
            if on_read is not None:
                on_read(name, index, data.nbytes)
            if check_finite:
                _check_finite(data, origin)
            return data.astype(dtype, copy=False)

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


def resolve_model_dir(name_or_path, subfolder: str = "", **hub_kwargs) -> Path:
    """A local model folder (symlinks resolved), or a Hub repo id downloaded with huggingface_hub (config, weights,
    tokenizer and generation files). ValueError naming the path when it is a file, a broken link or a link loop,
    or neither an existing folder nor a valid repo id (`cli.resolve_model_source` decides which)."""
    from .cli import resolve_model_source

    source = resolve_model_source(name_or_path, option="model", need_config=False)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path.resolve()
        return path / subfolder if subfolder else path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.yaml", "*.safetensors", "*.msgpack", "*.txt", "*.model", "*.jinja", "*.md"]
    try:
        local = snapshot_download(source, allow_patterns=[f"{subfolder}/{p}" if subfolder else p for p in patterns],
                                  **hub_kwargs)
    except Exception as e:
        raise OSError(f"cannot get model {source!r} from the Hub ({type(e).__name__}: {e})") from None
    return Path(local) / subfolder if subfolder else Path(local)


