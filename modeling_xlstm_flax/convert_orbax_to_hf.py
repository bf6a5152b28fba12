"""xlstm-jax orbax checkpoint -> Hugging Face model directory (Flax layout): `xlstm-flax convert from-orbax` (its
options: `convert_common.CONVERSIONS`).

Input: a `checkpoint_<step>` folder as upstream's trainer writes it (`tests/fixtures/README.md`), or a run
folder holding such folders (directly or under `checkpoints/`; the highest step unless `--step`). Read with
`orbax-checkpoint` on CPU without a device mesh: the model config from `metadata/metadata` (JSON, `model` ->
`model_config`, translated by `configuration.from_upstream_config`), the `params` item leaf by leaf (orbax partial
restore into NumPy; the other leaves are placeholders, so one tensor is in memory at a time - a stacked
`scan_blocks` leaf (NB, 1, ...) counts as one tensor).

Output: `config.json` (XLSTMFlaxConfig), `generation_config.json`, `model.safetensors` in our Flax layout (what
`FlaxXLSTMForCausalLM.from_pretrained` reads; see `convert_common.output_tensors`), optional tokenizer files. Upstream
keys map to ours through `param_table` (the one documented upstream mapping), e.g.
`xlstm_block_stack/blocks/0/xlstm_res_block/xlstm/dense_q/Dense_0/kernel (D, Dqk)` ->
`backbone/blocks/0/mlstm_layer/q/kernel (D, Dqk)`, `token_embedding/sharded/embedding/value (1, V, D)` ->
`backbone/embeddings/embedding (V, D)`.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path
from typing import Optional

import numpy as np

from .convert_common import (
    ConversionError,
    Source,
    SourceTensor,
    converter_output_dir,
    check_logits,
    compare_to_plan,
    model_plan,
    copy_tokenizer,
    flax_dir_logits,
    flax_logits,
    output_tensors,
    round_params,
    save_flax_config,
    verify_ids,
    verify_rounding,
    write_weights,
)
from .loading import upstream_to_flax
from .param_table import UPSTREAM_SCANNED_BLOCKS, upstream_array_to_flax, upstream_key_to_flax
from .safe_output import check_output_path

_STEP_RE = re.compile(r"^checkpoint_(\d+)$")


def find_checkpoint(path, step: Optional[int] = None) -> Path:
    """The `checkpoint_<step>` folder for `path` (itself, or the highest / the named step below it)."""
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"orbax checkpoint {path}: no such directory")
    if (path / "params").is_dir() and (path / "metadata").exists():
        if step is not None and _STEP_RE.match(path.name) and int(_STEP_RE.match(path.name).group(1)) != step:
            raise ConversionError(f"{path} is step {path.name}, but --step {step} was asked for")
        return path
    for folder in (path, path / "checkpoints"):
        steps = {int(m.group(1)): p for p in (folder.iterdir() if folder.is_dir() else [])
                 if p.is_dir() and (m := _STEP_RE.match(p.name))}
        if steps:
            if step is None:
                return steps[max(steps)]
            if step not in steps:
                raise ConversionError(f"{folder}: no checkpoint_{step}; available steps: {sorted(steps)}")
            return steps[step]
    raise ConversionError(f"{path}: not an orbax checkpoint (no params/ and metadata/) and no checkpoint_<step> "
                          "folders in it or in its checkpoints/")


def _unstringify(value):
    """Undo the trainer metadata's stringified values: "None" -> None, "{...}" / "[...]" Python literals -> dict /
    list. Reprs of objects (`ParallelConfig(...)`, classes) stay strings (runtime state the translation skips)."""
    if isinstance(value, dict):
        return {k: _unstringify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unstringify(v) for v in value]
    if value == "None":
        return None
    if isinstance(value, str) and value[:1] in "{[":
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return _unstringify(parsed) if isinstance(parsed, (dict, list)) else value
    return value


def read_upstream_config(checkpoint: Path) -> dict:
    """The upstream model config dict recorded in `<checkpoint>/metadata/metadata`. Upstream's trainer writes
    non-JSON values as strings (None as "None", dicts as their repr); those are turned back into values."""
    meta_path = checkpoint / "metadata" / "metadata"
    try:
        metadata = json.loads(meta_path.read_text())
        return _unstringify(metadata["model"]["model_config"])
    except FileNotFoundError:
        raise ConversionError(f"{meta_path}: file not found (the trainer's metadata holds the model config)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{meta_path}: not valid JSON ({e})") from None
    except (KeyError, TypeError):
        raise ConversionError(f"{meta_path}: has no model -> model_config entry") from None


class OrbaxParams:
    """The `params` item of an orbax checkpoint, read leaf by leaf into NumPy (no mesh, no devices)."""

    def __init__(self, params_dir: Path):
        try:
            import orbax.checkpoint as ocp
        except ImportError:
            raise ConversionError("reading orbax checkpoints needs orbax-checkpoint: pip install "
                                  "orbax-checkpoint") from None
        from flax.traverse_util import flatten_dict

        logging.getLogger("absl").setLevel(logging.ERROR)  # orbax warns about optional metadata files
        self.ocp, self.params_dir = ocp, params_dir
        self.checkpointer = ocp.PyTreeCheckpointer()
        if not params_dir.is_dir():
            raise ConversionError(f"{params_dir}: no such directory (the checkpoint has no params item)")
        try:
            meta = self.checkpointer.metadata(str(params_dir))
            tree = getattr(getattr(meta, "item_metadata", None), "tree", None) or getattr(meta, "tree", None) or meta
            self.leaves = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flatten_dict(dict(tree)).items()}
        except Exception as e:
            raise ConversionError(f"orbax checkpoint {params_dir}: cannot read its metadata "
                                  f"({type(e).__name__}: {e})") from None
        self._cache: tuple[Optional[tuple], Optional[np.ndarray]] = (None, None)

    def read(self, key: tuple) -> np.ndarray:
        """One leaf as a NumPy array (the last one read is cached: a stacked leaf serves all its blocks)."""
        if self._cache[0] == key:
            return self._cache[1]
        from flax.traverse_util import unflatten_dict

        ocp = self.ocp
        self._cache = (None, None)
        item = {k: (np.zeros((), np.float32) if k == key else ocp.PLACEHOLDER) for k in self.leaves}
        restore_args = {k: (ocp.RestoreArgs(restore_type=np.ndarray) if k == key else ocp.PLACEHOLDER)
                        for k in self.leaves}
        try:
            tree = self.checkpointer.restore(str(self.params_dir), args=ocp.args.PyTreeRestore(
                item=unflatten_dict(item), restore_args=unflatten_dict(restore_args)))
            value = tree
            for part in key:
                value = value[part]
            value = np.asarray(value)
        except Exception as e:
            raise ConversionError(f"orbax checkpoint {self.params_dir}: cannot read {'/'.join(key)} "
                                  f"({type(e).__name__}: {e})") from None
        if value.shape != self.leaves[key][0]:
            raise ConversionError(f"orbax checkpoint {self.params_dir}: {'/'.join(key)} restored with shape "
                                  f"{value.shape}, its metadata says {self.leaves[key][0]}")
        self._cache = (key, value)
        return value

    def read_all(self) -> dict[str, np.ndarray]:
        """Every leaf, `/`-joined keys (for --verify: the whole tree in memory)."""
        return {"/".join(k): self.read(k) for k in self.leaves}


def _mapped_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """Shape after `upstream_array_to_flax` without data (a zero-stride view)."""
    return tuple(upstream_array_to_flax(np.broadcast_to(np.zeros((), np.int8), shape), kind).shape)


def open_orbax_params(params: OrbaxParams, config) -> Source:
    """The params item as a Source in our unrolled names, checked against `config` (nothing read yet)."""
    tensors: dict[str, SourceTensor] = {}
    origins: dict[str, str] = {}
    unexpected: list[str] = []
    for key, (shape, dtype) in params.leaves.items():
        up = "/".join(key)
        up_plain = up[len("params/"):] if up.startswith("params/") else up
        up_plain = up_plain[: -len("/value")] if up_plain.endswith("/value") else up_plain
        if up_plain.startswith(UPSTREAM_SCANNED_BLOCKS) and shape:  # (NB, ...): upstream's scan_blocks
            rest = up_plain[len(UPSTREAM_SCANNED_BLOCKS):]
            unrolled_prefix = UPSTREAM_SCANNED_BLOCKS[: -len("block/")]  # xlstm_block_stack/blocks/
            per_block = [(i, f"{unrolled_prefix}{i}/{rest}") for i in range(shape[0])]
        else:
            per_block = [(None, up_plain)]
        for index, block_key in per_block:
            mapped = upstream_key_to_flax(block_key, config.layer_type)
            if mapped is None:
                unexpected.append(f"{up} {shape}")
                break
            name, kind = mapped
            leaf_shape = shape if index is None else shape[1:]
            if index is None:
                read = lambda index=(), k=key, kd=kind: np.ascontiguousarray(  # noqa: E731
                    upstream_array_to_flax(params.read(k), kd)[tuple(index)])
            else:  # one block of a stacked leaf (the leaf stays cached while its blocks are read)
                read = lambda idx=(), k=key, kd=kind, i=index: np.ascontiguousarray(  # noqa: E731
                    upstream_array_to_flax(params.read(k)[i], kd)[tuple(idx)])
            tensors[name] = SourceTensor(_mapped_shape(leaf_shape, kind), dtype, read,
                                         up if index is None else f"{up}[{index}]")
            origins[name] = tensors[name].origin
    compare_to_plan(f"orbax checkpoint {params.params_dir}", {k: t.shape for k, t in tensors.items()},
                    model_plan(config, scanned=False), origins=origins, unexpected_extra=unexpected)
    return Source(f"orbax checkpoint {params.params_dir}", tensors)


def convert_orbax(input_path, output_dir, *, step: Optional[int] = None, dtype: str = "keep",
                  max_shard_size=None, flax_shard_format: str = "safetensors", tokenizer: Optional[str] = None,
                  overrides: Optional[dict] = None, verify: bool = False, tolerance: float = 1e-4,
                  verify_length: int = 16, seed: int = 0, overwrite: bool = False, progress: bool = True) -> Path:
    """Convert; returns the output directory. Raises ConversionError / VerificationError (see module doc)."""
    check_output_path(output_dir, (input_path, tokenizer), "output")  # before any work
    from .configuration_xlstm_flax import from_upstream_config

    checkpoint = find_checkpoint(input_path, step)
    upstream_config = read_upstream_config(checkpoint)
    try:
        config = from_upstream_config(upstream_config, **(overrides or {}))
    except (ValueError, TypeError, KeyError) as e:
        raise ConversionError(f"{checkpoint / 'metadata' / 'metadata'}: the model config cannot be translated: "
                              f"{type(e).__name__}: {e}") from None
    params = OrbaxParams(checkpoint / "params")
    source = open_orbax_params(params, config)
    tensors = output_tensors(source, config, "flax", dtype)
    with converter_output_dir(output_dir, overwrite, (input_path, tokenizer), "xlstm-flax convert from-orbax") as tmp:
        save_flax_config(config, tmp)
        copy_tokenizer(tokenizer, tmp)
        write_weights(tmp, tensors, layout="flax", max_shard_size=max_shard_size,
                      flax_shard_format=flax_shard_format, progress=progress)
        if verify:
            ids = verify_ids(config, verify_length, seed)
            reference = upstream_to_flax(params.read_all(), config)  # the in-memory mapping, independently
            round_to = verify_rounding(dtype)
            check_logits(flax_logits(config, round_params(reference, round_to), ids), flax_dir_logits(tmp, ids),
                         tolerance, ids)
    return Path(output_dir)
