"""Streaming checkpoint files: safetensors (single or sharded with `model.safetensors.index.json`) and Flax msgpack
(`flax_model.msgpack`, or shards with `flax_model.msgpack.index.json`, what transformers' Flax `save_pretrained`
writes when it shards).

Reading never maps whole files: each safetensors file is validated with `safetensors.safe_open` (the check
transformers runs: header, dtypes, offsets covering the file, so a truncated file fails here, by name), then each
tensor (or one block slice `[i]` of a stacked tensor) is read with positioned reads into a fresh array. Msgpack has
no index of offsets, so a msgpack file is read whole, one file at a time.

Writing streams too: every tensor's name, shape and dtype is known before any data is read, so a safetensors
header is written first and the tensors follow one by one, each produced as parts (for example the blocks of a
stacked tensor) and dropped after writing. The files are the ones `safetensors` writes: 8-byte little-endian
header length, JSON header padded with spaces to a multiple of 8, `__metadata__` {"format": "pt" | "flax"},
contiguous data ordered by decreasing item size (keeps every tensor aligned).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import ml_dtypes
import numpy as np

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool),
}
_DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


class CheckpointFileError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or inconsistent with its index (message names it)."""


# ---------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives in a safetensors file: shape, dtype and absolute byte range."""

    shape: tuple[int, ...]
    dtype: np.dtype
    begin: int
    end: int


class SafetensorsFile:
    """Lazy reader of one safetensors file (validated on open; data read on demand with positioned reads)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointFileError(f"{self.path}: file not found")
        from safetensors import safe_open

        try:  # the same validation transformers' loaders run: header, dtypes, offsets, file length
            with safe_open(str(self.path), framework="numpy") as f:
                self.metadata = f.metadata() or {}
        except Exception as e:  # SafetensorError, OSError
            raise CheckpointFileError(f"{self.path}: not a valid safetensors file ({e})") from None
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        start = 8 + header_len
        self.tensors: dict[str, StoredTensor] = {}
        for name, info in header.items():
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise CheckpointFileError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
            b, e = info["data_offsets"]
            self.tensors[name] = StoredTensor(tuple(info["shape"]), SAFETENSORS_DTYPES[info["dtype"]], start + b,
                                              start + e)

    def read(self, name: str, index: Optional[int] = None) -> np.ndarray:
        """Tensor `name`, or its slice `[index]` along the leading axis, as a fresh (writable) array."""
        t = self.tensors[name]
        shape, begin, nbytes = t.shape, t.begin, t.end - t.begin
        if index is not None:
            if not shape or not 0 <= index < shape[0]:
                raise IndexError(f"{self.path}: {name} {shape} has no block {index}")
            nbytes //= shape[0]
            begin += index * nbytes
            shape = shape[1:]
        out = np.empty(nbytes, np.uint8)
        view = memoryview(out)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(begin)
            done = 0
            while done < nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise CheckpointFileError(f"{self.path}: truncated while reading {name}")
                done += got
        return out.view(t.dtype).reshape(shape)


def _read_index(index_path: Path) -> dict[str, str]:
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except Exception as e:
        raise CheckpointFileError(f"{index_path}: not a valid checkpoint index ({type(e).__name__}: {e})") from None
    return weight_map


class SafetensorsCheckpoint:
    """All tensors of `model.safetensors` or of the shards a `model.safetensors.index.json` lists: name -> file."""

    def __init__(self, directory):
        directory = Path(directory)
        single, index_path = directory / SAFE_WEIGHTS_NAME, directory / SAFE_WEIGHTS_INDEX_NAME
        if single.is_file():
            files = {single.name: SafetensorsFile(single)}
            self.location = {name: single.name for name in files[single.name].tensors}
        elif index_path.is_file():
            weight_map = _read_index(index_path)
            files = {name: SafetensorsFile(directory / name) for name in sorted(set(weight_map.values()))}
            self.location = {}
            for name, file in files.items():
                listed = {t for t, f in weight_map.items() if f == name}
                absent = sorted(listed - set(file.tensors))
                if absent:
                    raise CheckpointFileError(f"{file.path}: index {index_path.name} lists tensors the file lacks: "
                                              f"{absent[:20]}")
                for t in file.tensors:
                    self.location[t] = name
        else:
            raise CheckpointFileError(f"{directory}: neither {SAFE_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME} found")
        self.directory, self.files = directory, files
        self.metadata = next(iter(files.values())).metadata if files else {}

    def tensors(self) -> dict[str, StoredTensor]:
        return {name: self.files[file].tensors[name] for name, file in self.location.items()}

    def read(self, name: str, index: Optional[int] = None) -> np.ndarray:
        return self.files[self.location[name]].read(name, index)

    def describe(self, name: str) -> str:
        return f"{self.location[name]}:{name}"


class MsgpackCheckpoint:
    """Flax msgpack checkpoint (`flax_model.msgpack` or shards + index); names `/`-joined. Each file is read whole
    when one of its tensors is needed, and only the last file read is kept."""

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
        if not path.is_file():
            raise CheckpointFileError(f"{path}: file not found")
        try:
            state = msgpack_restore(path.read_bytes())
            flat = {"/".join(k): np.asarray(v) for k, v in flatten_dict(state).items()}
        except Exception as e:
            raise CheckpointFileError(f"{path}: not a valid Flax msgpack file ({type(e).__name__}: {e})") from None
        self._cache = (name, flat)
        return flat

    def read(self, name: str, index: Optional[int] = None) -> np.ndarray:
        value = self._load(self.location[name])[name]
        return np.array(value if index is None else value[index])

    def describe(self, name: str) -> str:
        return f"{self.location[name]}:{name}"


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class OutTensor:
    """One tensor to write. `parts()` yields arrays whose C-order bytes, concatenated, are the tensor (one part,
    or one per block of a stacked tensor); each part is converted to `dtype` by the writer."""

    key: tuple[str, ...]  # path parts: joined with "." for safetensors, "/" (nested) for msgpack
    shape: tuple[int, ...]
    dtype: np.dtype
    parts: Callable[[], Iterable[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def parse_size(size) -> int:
    """'5GB', '500MB', '100KB' (powers of 1000, as transformers) or a byte count -> bytes."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        value = convert_file_size_to_int(size)
    except ValueError:
        raise ValueError(f"--max-shard-size {size!r}: expected a byte count or digits with a unit like 5GB, 500MB")
    if value <= 0:
        raise ValueError(f"--max-shard-size {size!r} must be positive")
    return value


def plan_shards(tensors: list[OutTensor], max_shard_size: Optional[int]) -> list[list[OutTensor]]:
    """Split in order, as transformers does: a new shard starts when the next tensor would exceed the limit; a
    tensor bigger than the limit gets a shard of its own."""
    if max_shard_size is None:
        return [list(tensors)]
    shards, current, size = [], [], 0
    for t in tensors:
        if current and size + t.nbytes > max_shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    shards.append(current)
    return shards


CHUNK_BYTES = 1 << 26


def _checked_parts(t: OutTensor, chunked: bool = False) -> Iterator[np.ndarray]:
    """The parts of `t` as contiguous arrays of its dtype; raises if they do not add up to its size. `chunked`
    splits each part along its leading axis into pieces of about CHUNK_BYTES, so a transposed view or a dtype
    cast is copied piece by piece (no second full-size copy of the tensor)."""
    total = 0
    for part in t.parts():
        part = np.asarray(part)
        rows = part.shape[0] if part.ndim else 1
        row_bytes = max(1, part.size // max(rows, 1) * t.dtype.itemsize)
        step = max(1, CHUNK_BYTES // row_bytes) if chunked and part.ndim else rows
        for start in range(0, rows, step):
            piece = part[start:start + step] if part.ndim else part
            piece = np.ascontiguousarray(piece.astype(t.dtype, copy=False))
            total += piece.nbytes
            yield piece
    if total != t.nbytes:
        raise ValueError(f"internal error: {'/'.join(t.key)} produced {total} bytes, its plan needs {t.nbytes}")


def write_safetensors(path, tensors: list[OutTensor], metadata: dict[str, str],
                      on_tensor: Callable[[OutTensor], None] = lambda t: None) -> None:
    """Write `tensors` into one safetensors file, streaming: header first, then one tensor (part) at a time."""
    ordered = sorted(tensors, key=lambda t: -t.dtype.itemsize)  # stable: keeps the given order per item size
    header: dict = {"__metadata__": metadata}
    offset = 0
    for t in ordered:
        name = ".".join(t.key)
        if name in header:
            raise ValueError(f"internal error: duplicate tensor name {name}")
        header[name] = {"dtype": _DTYPE_CODES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in ordered:
            for piece in _checked_parts(t, chunked=True):
                f.write(piece.reshape(-1).view(np.uint8).data)
            on_tensor(t)


def write_msgpack(path, tensors: list[OutTensor], on_tensor: Callable[[OutTensor], None] = lambda t: None) -> None:
    """Write `tensors` as one Flax msgpack file (a nested map, the bytes `flax.serialization.to_bytes` gives),
    streaming: map headers are written as the tree is walked, each leaf is serialised on its own."""
    import msgpack
    from flax.serialization import msgpack_serialize

    tree: dict = {}
    for t in tensors:
        node = tree
        for part in t.key[:-1]:
            node = node.setdefault(part, {})
        node[t.key[-1]] = t
    packer = msgpack.Packer()

    def walk(node: dict, f) -> None:
        f.write(packer.pack_map_header(len(node)))
        for key, value in node.items():
            f.write(packer.pack(key))
            if isinstance(value, dict):
                walk(value, f)
            else:
                parts = list(_checked_parts(value))
                array = parts[0].reshape(value.shape) if len(parts) == 1 else np.concatenate(
                    [p.reshape(-1) for p in parts]).reshape(value.shape)
                del parts
                f.write(msgpack_serialize(array))
                on_tensor(value)

    with open(path, "wb") as f:
        walk(tree, f)


def write_checkpoint(directory, tensors: list[OutTensor], *, file_format: str, metadata_format: str,
                     max_shard_size: Optional[int], on_tensor: Callable[[OutTensor], None] = lambda t: None
                     ) -> list[str]:
    """Write `tensors` into `directory` as transformers names them; returns the file names written.

    file_format "safetensors": `model.safetensors`, or `model-0000i-of-0000N.safetensors` +
    `model.safetensors.index.json`; file_format "msgpack": `flax_model.msgpack`, or
    `flax_model-0000i-of-0000N.msgpack` + `flax_model.msgpack.index.json`.
    Index: {"metadata": {"total_size": bytes, "total_parameters": n}, "weight_map": {name: file}} (names `.`-joined for
    safetensors, `/`-joined for msgpack, as transformers writes them).
    """
    directory = Path(directory)
    shards = plan_shards(tensors, max_shard_size)
    single, index_name, stem, suffix, sep = {
        "safetensors": (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "model", "safetensors", "."),
        "msgpack": (FLAX_WEIGHTS_NAME, FLAX_WEIGHTS_INDEX_NAME, "flax_model", "msgpack", "/"),
    }[file_format]
    names = [single] if len(shards) == 1 else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{suffix}"
                                               for i in range(len(shards))]
    for name, shard in zip(names, shards):
        if file_format == "safetensors":
            write_safetensors(directory / name, shard, {"format": metadata_format}, on_tensor)
        else:
            write_msgpack(directory / name, shard, on_tensor)
    if len(shards) == 1:
        return names
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in tensors),
                     "total_parameters": int(sum(int(np.prod(t.shape, dtype=np.int64)) for t in tensors))},
        "weight_map": {sep.join(t.key): name for name, shard in zip(names, shards) for t in shard},
    }
    (directory / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names + [index_name]


def directory_size(directory) -> int:
    """Bytes of all files under `directory`."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory) for f in files)
