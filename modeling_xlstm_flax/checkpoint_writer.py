"""Checkpoint writing: the one writer behind every save and conversion (the readers: `checkpoint_io`, `loading`).

`write_checkpoint` streams tensors into safetensors (or msgpack) files: every part is made C-contiguous before its
bytes are written (safetensors' own `save_file` writes a NumPy view's raw memory, so a transposed view would be
saved transposed). Shards are planned with huggingface_hub's `split_state_dict_into_shards_factory` and get
transformers' index. Every writer writes into `safe_output.atomic_output_dir` (a folder beside the target that
replaces it in one rename when complete).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .checkpoint_io import (
    _DTYPE_CODES, FLAX_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_INDEX_NAME,
)


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class OutTensor:
    """One tensor to write. `parts()` yields arrays whose C-order bytes, concatenated, are the tensor (one part,
    or one per block of a stacked tensor); each part is converted to `dtype` and made contiguous by the writer."""

    key: tuple[str, ...]  # path parts: joined with "." for safetensors, "/" (nested) for msgpack
    shape: tuple[int, ...]
    dtype: np.dtype
    parts: Callable[[], Iterable[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def params_tensors(params) -> list[OutTensor]:
    """A nested param tree as tensors to write under its own names (`.`-joined in safetensors)."""
    from flax.core.frozen_dict import unfreeze
    from flax.traverse_util import flatten_dict

    return [OutTensor(key, tuple(np.shape(v)), np.dtype(v.dtype), lambda v=v: [np.asarray(v)])
            for key, v in flatten_dict(unfreeze(params)).items()]


def parse_size(size) -> int:
    """'5GB', '500MB', '100KB' (powers of 1000, as transformers) or a byte count -> bytes."""
    from transformers.utils.hub import convert_file_size_to_int

    if isinstance(size, bool) or not isinstance(size, (int, np.integer, str)):
        raise ValueError(f"max_shard_size={size!r}: expected a byte count (an int) or digits with a unit like 5GB, "
                         "500MB")
    try:
        value = convert_file_size_to_int(size)
    except (ValueError, TypeError):
        raise ValueError(f"max_shard_size={size!r}: expected a byte count or digits with a unit like 5GB, 500MB"
                         ) from None
    if value <= 0:
        raise ValueError(f"max_shard_size={size!r} must be positive")
    return value


CHUNK_BYTES = 1 << 26


def _checked_parts(t: OutTensor, chunked: bool = False) -> Iterator[np.ndarray]:
    """The parts of `t` as C-contiguous arrays of its dtype; raises if they do not add up to its size. `chunked`
    splits each part along its leading axis into pieces of about CHUNK_BYTES, so a transposed view or a dtype cast
    is copied piece by piece (no second full-size copy of the tensor)."""
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


def _write_safetensors(path, tensors: list[OutTensor], metadata: dict[str, str],
                       on_tensor: Callable[[OutTensor], None]) -> None:
    """One safetensors file in the format's layout (8-byte little-endian header length, JSON header padded to 8
    bytes, data ordered by decreasing item size), streamed: header first, then one contiguous piece at a time."""
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


def _write_msgpack(path, tensors: list[OutTensor], on_tensor: Callable[[OutTensor], None]) -> None:
    """One Flax msgpack file (the bytes `flax.serialization.to_bytes` gives), one leaf serialised at a time."""
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


def write_checkpoint(directory, tensors: list[OutTensor], *, file_format: str = "safetensors",
                     metadata_format: str = "flax", max_shard_size=None,
                     on_tensor: Callable[[OutTensor], None] = lambda t: None) -> list[str]:
    """Write `tensors` into `directory` as transformers names the files; returns the file names written.

    file_format "safetensors": `model.safetensors`, or `model-0000i-of-0000N.safetensors` +
    `model.safetensors.index.json`; "msgpack": `flax_model.msgpack`, or `flax_model-0000i-of-0000N.msgpack` +
    `flax_model.msgpack.index.json`. Shards are planned by huggingface_hub (`max_shard_size` None: one file).
    """
    from huggingface_hub import split_state_dict_into_shards_factory

    directory = Path(directory)
    pattern, index_name, sep = {
        "safetensors": ("model{suffix}.safetensors", SAFE_WEIGHTS_INDEX_NAME, "."),
        "msgpack": ("flax_model{suffix}.msgpack", FLAX_WEIGHTS_INDEX_NAME, "/"),
    }[file_format]
    by_name = {sep.join(t.key): t for t in tensors}
    if len(by_name) != len(tensors):
        raise ValueError("internal error: duplicate tensor names")
    limit = 1 << 62 if max_shard_size is None else parse_size(max_shard_size)
    split = split_state_dict_into_shards_factory(by_name, get_storage_size=lambda t: t.nbytes,
                                                 filename_pattern=pattern, max_shard_size=limit)
    names = []
    for file, members in split.filename_to_tensors.items():
        shard = [by_name[m] for m in members]
        if file_format == "safetensors":
            _write_safetensors(directory / file, shard, {"format": metadata_format}, on_tensor)
        else:
            _write_msgpack(directory / file, shard, on_tensor)
        names.append(file)
    if not split.is_sharded:
        return names
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors),
                          "total_parameters": int(sum(int(np.prod(t.shape, dtype=np.int64)) for t in tensors))},
             "weight_map": dict(split.tensor_to_filename)}
    (directory / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names + [index_name]


# ---------------------------------------------------------------------------------------------- output folders
# (the all-or-nothing output folder, shared by every writer, lives in `safe_output`)
def directory_size(directory) -> int:
    """Bytes of all files under `directory`."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory) for f in files)
