"""Checkpoint files: the stored formats every load and conversion reads (`loading` turns them into a model's params;
the one writer is `checkpoint_writer`), the dtypes params may have, and where a model's files are.

* Flax safetensors (`model.safetensors`, or shards listed by `model.safetensors.index.json`) and transformers'
  PyTorch safetensors (metadata format "pt"): `SafetensorsCheckpoint`, read with `safetensors.safe_open` only
  (header validation, `get_slice` windows): no header is parsed by hand;
* Flax msgpack (`flax_model.msgpack` or shards with `flax_model.msgpack.index.json`; read whole, one file at a
  time): `MsgpackCheckpoint`.

An index must name files inside the model folder (plain relative names, `file_name_problem`; their symlinks may lead
into the folder or, in the Hugging Face Hub cache, its repo's blobs, `link_roots`), and every file it names must
exist and hold exactly the tensors the index maps to it.

Where a model's files are: `resolve_model_dir(name_or_path, subfolder)` gives a local model folder, or a Hub id
downloaded (or found in the cache, offline) by huggingface_hub; its cache keeps a repo as `models--ORG--NAME/{blobs/
<hash>, refs/main, snapshots/<rev>/<file> -> ../../blobs/<hash>}`, and a snapshot is the model folder.
`resolve_model_source(value, option)` decides between a local folder and a Hub id (a missing path, a file, a broken
link or a symlink loop is a `ValueError` naming the option and the value).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Callable, Optional

import numpy as np

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"
WEIGHT_FILE_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, FLAX_WEIGHTS_NAME, FLAX_WEIGHTS_INDEX_NAME)

class LazyTable(Mapping):
    """A read-only dict built by `build()` on first use: the dtype tables need `ml_dtypes` (bfloat16), whose import
    takes seconds on some installs, and `xlstm-flax convert ... --help` imports this module without reading any
    tensor."""

    def __init__(self, build: Callable[[], dict]):
        self._build, self._table = build, None

    def _get(self) -> dict:
        if self._table is None:
            self._table = self._build()
        return self._table

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def bfloat16() -> np.dtype:
    """numpy's bfloat16 dtype (`ml_dtypes`, imported here on first use)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


SAFETENSORS_DTYPES = LazyTable(lambda: {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": bfloat16(), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(bool),
})
_DTYPE_CODES = LazyTable(lambda: {v: k for k, v in SAFETENSORS_DTYPES.items()})
_LIST_LIMIT = 50
# What to do with PyTorch pickle weights (`pytorch_model*.bin`), which this port never unpickles.
CONVERT_BIN_HINT = ("convert them to safetensors first: load with transformers' xLSTMForCausalLM, then "
                    "save_pretrained(folder, safe_serialization=True) (tied embeddings: model.config.save_pretrained("
                    "folder) and safetensors.torch.save_model(model, folder + '/model.safetensors', "
                    "metadata={'format': 'pt'}))")


class CheckpointFileError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, inconsistent with its index or does not fit the model;
    the message names the file and tensor."""


def is_float_dtype(dtype) -> bool:
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype == bfloat16()  # bf16 is no np.floating


def param_dtypes() -> tuple:
    """The dtypes params can be loaded in (built on first use: bfloat16 needs `ml_dtypes`)."""
    return (np.dtype(np.float32), bfloat16(), np.dtype(np.float16), np.dtype(np.float64))


def param_dtype_of(value, what: str = "param_dtype") -> np.dtype:
    """`value` (a dtype, its name or type: "bfloat16", jnp.float16, ...; None: float32) as the NumPy dtype params
    are loaded in; ValueError naming `what` for an unknown name or a dtype params cannot have (integers, bool,
    complex, 8-bit floats)."""
    import ml_dtypes

    if value is None:
        return np.dtype(np.float32)
    try:
        dtype = np.dtype(getattr(ml_dtypes, value) if isinstance(value, str) and hasattr(ml_dtypes, value)
                         else value)
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.name not in {d.name for d in param_dtypes()}:  # (np.dtype == None is True)
        raise ValueError(f"{what}={value!r} is not a dtype params can have: use one of "
                         f"{', '.join(d.name for d in param_dtypes())}")
    if dtype == np.float64:
        import jax

        if not jax.config.jax_enable_x64:  # JAX would store the values as float32 (inf where they overflow)
            raise ValueError(f"{what}=float64 needs 64-bit JAX (jax.config.update('jax_enable_x64', True))")
    return dtype


def _check_cast(data: np.ndarray, cast: np.ndarray, origin: str) -> None:
    """`cast` (data in a narrower float dtype) must not gain non-finite values: a value beyond its range would
    silently become inf."""
    import ml_dtypes

    if cast is data or ml_dtypes.finfo(cast.dtype).max >= ml_dtypes.finfo(data.dtype).max or not cast.size:
        return
    gained = int(np.count_nonzero(~np.isfinite(cast)) - np.count_nonzero(~np.isfinite(data)))
    if gained > 0:
        largest = float(np.max(np.abs(data[np.isfinite(data)]).astype(np.float64)))
        raise CheckpointFileError(f"{origin}: {gained} of {data.size} values overflow {cast.dtype.name} (largest "
                                  f"|value| {largest:.4g}; {cast.dtype.name} holds at most "
                                  f"{float(ml_dtypes.finfo(cast.dtype).max):.4g}) and would load as inf; load it "
                                  f"with a wider param_dtype (float32 or {data.dtype.name})")


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


def locate_listed_file(index_path: Path, name: str, tensor: str) -> Path:
    """The shard `name` that `index_path` lists for `tensor`, as `index_path.parent / name`, after checking the
    name (`file_name_problem`), that the file exists and that its symlinks (the Hub cache's `snapshots/<rev>/f ->
    ../../blobs/<hash>`) end inside `link_roots(folder)`. Returned as listed, links unresolved."""
    folder = index_path.parent
    problem = file_name_problem(name)
    if problem:
        raise CheckpointFileError(f"{index_path}: tensor {tensor} is mapped to {name!r}, {problem} (model folder "
                                  f"{folder}); refusing to read it")
    path = folder / name
    if not path.is_file():
        raise CheckpointFileError(f"{index_path}: names shard {name!r} (for {tensor}), which does not exist")
    real = path.resolve()
    roots = link_roots(folder)
    if not any(real == root or root in real.parents for root in roots):
        raise CheckpointFileError(
            f"{index_path}: tensor {tensor} is mapped to {name!r}, a symbolic link to {real}, outside the model "
            f"folder {roots[0]}" + (" and its Hub cache repo's blobs" if len(roots) > 1 else "")
            + "; refusing to read it")
    return path


def _read_index(index_path: Path) -> dict[str, str]:
    """The weight map of a transformers index, each file checked to lie inside the index's folder
    (`locate_listed_file`)."""
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not an object of file names")
    except Exception as e:
        raise CheckpointFileError(f"{index_path}: not a valid checkpoint index ({type(e).__name__}: {e})") from None
    checked: set[str] = set()
    for tensor, file in weight_map.items():
        if file not in checked:
            locate_listed_file(index_path, file, tensor)
            checked.add(file)
    return weight_map


def _check_shard(index_path: Path, weight_map: dict[str, str], name: str, keys) -> None:
    """Shard `name` holds exactly the tensors `weight_map` maps to it: one it lacks, a second copy of a tensor
    mapped to another shard, or a tensor the index does not list is an error (which copy is meant is no guess)."""
    listed = {t for t, f in weight_map.items() if f == name}
    absent = sorted(listed - set(keys))
    path = index_path.parent / name
    if absent:
        raise CheckpointFileError(f"{path}: index {index_path.name} lists tensors the file lacks: {absent[:20]}")
    extra = sorted(set(keys) - listed)
    if extra:
        said = [f"{t} (the index maps it to {weight_map[t]})" if t in weight_map else f"{t} (not in the index)"
                for t in extra]
        raise CheckpointFileError(f"{path}: holds {len(extra)} tensors that index {index_path.name} does not map "
                                  "to this file; refusing to guess which copy is meant:" + _fmt_list(said))


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
                _check_shard(index_path, weight_map, name, file.tensors)
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
            weight_map = _read_index(index_path)
            names = sorted(set(weight_map.values()))
        else:
            raise CheckpointFileError(f"{directory}: neither {FLAX_WEIGHTS_NAME} nor {FLAX_WEIGHTS_INDEX_NAME} found")
        self.directory = directory
        self._cache: tuple[Optional[str], dict] = (None, {})
        self.location: dict[str, str] = {}
        self.shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for name in names:  # one pass to learn names and shapes, one file in memory at a time
            if index_path.is_file() and not single.is_file():
                _check_shard(index_path, weight_map, name, self._load(name))
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


def _fmt_list(items: list[str]) -> str:
    shown = "\n    ".join(items[:_LIST_LIMIT])
    more = f"\n    ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"\n    {shown}{more}"


def is_pytorch_layout(directory) -> bool:
    """Safetensors written by PyTorch (transformers' xLSTM layout): metadata format "pt"."""
    directory = Path(directory)
    if not ((directory / SAFE_WEIGHTS_NAME).is_file() or (directory / SAFE_WEIGHTS_INDEX_NAME).is_file()):
        return False
    return SafetensorsCheckpoint(directory).metadata.get("format") == "pt"


# ---------------------------------------------------------------------------------------------- model folders
def file_name_problem(name) -> Optional[str]:
    """Why `name` (a file or folder name a checkpoint index or a caller gives, relative to a model folder) is not
    a plain relative name inside that folder, or None. Judged as written, before any file system access: a name
    is `/`-separated parts, none empty, `.` or `..`; not absolute; no backslash, drive colon or NUL."""
    if not isinstance(name, str) or not name:
        return "an empty name"
    if name.startswith("/") or os.path.isabs(name):
        return "an absolute path, outside the model folder"
    if any(c in name for c in "\\:\0"):
        return "not a plain relative name (a backslash, drive colon or NUL character)"
    parts = name.split("/")
    if ".." in parts:
        return "a path outside the model folder (a '..' part)"
    if any(part in ("", ".") for part in parts):
        return "not a plain relative name (an empty or '.' part)"
    return None


def link_roots(folder: Path) -> list[Path]:
    """Where a file listed in `folder` may really lie (its symlinks resolved): the folder itself and, when the
    folder is (inside) a snapshot of the Hugging Face Hub cache (`<repo>/snapshots/<rev>/...`, files linking to
    `<repo>/blobs/<hash>`), that repo's blobs: never another repo's, nor anywhere else."""
    folder = folder.resolve()
    roots = [folder]
    for snapshot in (folder, *folder.parents):
        if snapshot.parent.name == "snapshots" and (snapshot.parent.parent / "blobs").is_dir():
            roots += [snapshot, (snapshot.parent.parent / "blobs").resolve()]
            break
    return roots


def _looks_like_hub_id(value: str) -> bool:
    if value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(value)
    except Exception:  # HFValidationError, or huggingface_hub missing
        return False
    return True


def resolve_model_source(value, option: str = "--model", need_config: bool = True) -> str:
    """`value` as given when it is a usable local model folder (holding config.json when `need_config`) or looks
    like a Hub id (`name` or `owner/name`, and no such local path); otherwise `ValueError` naming `option`."""
    text = str(value)
    path = Path(text).expanduser()
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop on older Pythons
            raise ValueError(f"{option} {text}: a broken symbolic link or a symlink loop") from None
    try:
        exists = path.exists()
    except OSError as exc:  # ELOOP through a looping parent, a name too long, ...
        raise ValueError(f"{option} {text}: cannot be read ({exc.strerror or exc})") from None
    if exists:
        if not path.is_dir():
            wanted = "a model folder (config.json, model.safetensors)" if need_config else "a folder"
            raise ValueError(f"{option} {text}: is a file; expected {wanted}")
        if need_config and not (path / "config.json").is_file():
            raise ValueError(f"{option} {text}: the folder has no config.json, so it is not a model folder")
        return str(path)
    if _looks_like_hub_id(text):
        return text
    raise ValueError(f"{option} {text}: no such folder (and not a Hub model id such as 'owner/name')")


def resolve_model_dir(name_or_path, subfolder: str = "", **hub_kwargs) -> Path:
    """A local model folder (symlinks resolved), or a Hub repo id downloaded with huggingface_hub (config, weights,
    tokenizer and generation files; a snapshot of its cache, whose files link into the repo's blobs). ValueError
    naming the path when it is a file, a broken link or a link loop, or neither an existing folder nor a valid repo
    id (`resolve_model_source` decides which), and when `subfolder` is not a plain relative name
    (`file_name_problem`) or no folder of the model."""
    if subfolder:
        problem = file_name_problem(subfolder)
        if problem:
            raise ValueError(f"subfolder={subfolder!r}: {problem}; expected a folder name inside the model")
    source = resolve_model_source(name_or_path, option="model", need_config=False)
    path = Path(source).expanduser()
    if path.is_dir():
        local = path.resolve()
    else:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.yaml", "*.safetensors", "*.msgpack", "*.txt", "*.model", "*.jinja", "*.md"]
        try:
            local = Path(snapshot_download(
                source, allow_patterns=[f"{subfolder}/{p}" if subfolder else p for p in patterns], **hub_kwargs))
        except Exception as e:
            raise OSError(f"cannot get model {source!r} from the Hub ({type(e).__name__}: {e})") from None
    if subfolder and not (local / subfolder).is_dir():
        raise ValueError(f"subfolder={subfolder!r}: no such folder in the model {source} ({local})")
    return local / subfolder if subfolder else local
