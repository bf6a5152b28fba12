"""The conversions on one skeleton: `CONVERSIONS` (`xlstm-flax convert NAME`; its options are its function's
keywords), `build_parser(name)`, `main(name, argv)` (the commands' one runner) and the functions
`convert_pytorch_to_flax`, `convert_flax_to_pytorch` (the NX-AI library's: `convert_library`; orbax:
`convert_orbax_to_hf`).

Every input is a `loading.Source` (tensors under our unrolled names, read one at a time, checked against the
config's plan before any data is read); `output_tensors` lays it out as "flax" (our names, `.`-joined; stacked
(NB, ...) under `backbone/blocks/scanned/block/` with `scan_blocks`) or "pytorch" (transformers' `xLSTMForCausalLM`
names and shapes, `param_table`); `write_weights` streams it into a temporary folder beside the target
(`safe_output.atomic_output_dir`), optionally verified (the same random ids through input and output), then renamed
into place: a failed or interrupted conversion leaves no output, and the old one stays until the new one is complete.
Peak memory beyond the imports: ~1.3x the largest tensor for safetensors inputs (copied in 64 MB pieces), ~2x the
largest orbax leaf (decoded whole), plus the largest file for msgpack (`benchmarks/conversion_memory.py`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from . import checkpoint_io, loading, param_table
from .checkpoint_io import CheckpointFileError, is_float_dtype  # noqa: F401  (re-exported for the commands)
from .loading import Source, SourceTensor, compare_to_plan, model_plan  # noqa: F401  (re-exported for the commands)
from .checkpoint_writer import OutTensor, parse_size, write_checkpoint  # noqa: F401
from .cli import add_set_option, run_command
from .checks import refuse_duplicate_keys
from .safe_output import MODEL_FILES, TOKENIZER_FILES, atomic_output_dir, check_output_path

DTYPES = checkpoint_io.LazyTable(lambda: {"float32": np.dtype(np.float32), "bfloat16": checkpoint_io.bfloat16()})
EXIT_BAD_INPUT = 1
EXIT_VERIFY_FAILED = 3
_LIST_LIMIT = 50


class ConversionError(Exception):
    """Bad input (names, shapes, config, files): the converters print it and exit with status 1."""


class VerificationError(Exception):
    """--verify found logits further apart than the tolerance: exit status 3."""


# ---------------------------------------------------------------------------------------------- sources
def open_flax_dir(directory, config) -> Source:
    """A Flax-layout checkpoint directory, checked against `config` (names, shapes, scanned or not)."""
    source = loading.open_flax_dir(directory, config.num_blocks)
    stored_scanned = source.stacked_blocks
    if stored_scanned != bool(config.scan_blocks):
        raise ConversionError(f"Flax checkpoint {directory}: its config says scan_blocks={config.scan_blocks}, but "
                              f"the weights are {'stacked' if stored_scanned else 'unrolled'} "
                              f"({'backbone.blocks.scanned.block.*' if stored_scanned else 'backbone.blocks.<i>.*'})")
    loading.check_source(source, model_plan(config, scanned=False))
    return source


def open_pytorch_dir(directory, config) -> Source:
    """A transformers PyTorch xLSTM directory (`model.safetensors` or shards), checked against `config`."""
    plan = model_plan(config, scanned=False)
    source = loading.open_pytorch_dir(directory, plan)
    optional = {param_table.LM_HEAD + "/kernel"} if config.tie_word_embeddings else set()
    loading.check_source(source, plan, optional=optional)
    source.tensors.pop(param_table.LM_HEAD + "/kernel", None) if config.tie_word_embeddings else None
    return source


# ---------------------------------------------------------------------------------------------- output layouts
def _out_dtype(choice: str, stored: np.dtype) -> np.dtype:
    """The dtype to write: `choice` for floating-point tensors unless it is "keep"; others keep theirs."""
    return DTYPES[choice] if choice != "keep" and is_float_dtype(stored) else np.dtype(stored)


def output_tensors(source: Source, config, layout: str, dtype: str = "keep") -> list[OutTensor]:
    """The tensors to write for `layout` ("flax" or "pytorch"), in the source's order, cast to `dtype`
    ("keep", "float32", "bfloat16"). Shapes: see `param_table`."""
    out: list[OutTensor] = []
    if layout == "pytorch":
        for name, t in source.tensors.items():
            pt_name = param_table.flax_to_pytorch_name(name)
            transposed = param_table.pytorch_is_transposed(name)
            out.append(OutTensor(tuple(pt_name.split(".")), param_table.flax_to_pytorch_shape(name, t.shape),
                                 _out_dtype(dtype, t.dtype),
                                 lambda t=t, tr=transposed: [t.read().T if tr else t.read()]))
        return out
    if layout != "flax":
        raise ValueError(f"unknown layout {layout!r}")
    if not config.scan_blocks:
        return [OutTensor(tuple(name.split("/")), t.shape, _out_dtype(dtype, t.dtype), lambda t=t: [t.read()])
                for name, t in source.tensors.items()]
    groups: dict[str, list[SourceTensor]] = {}
    for name, t in source.tensors.items():
        target, block = param_table.scanned_name(name)
        groups.setdefault(target, []).append((block, t))
    for target, members in groups.items():
        members.sort(key=lambda m: -1 if m[0] is None else m[0])
        first = members[0][1]
        shape = first.shape if members[0][0] is None else (len(members),) + tuple(first.shape)
        out.append(OutTensor(tuple(target.split("/")), shape, _out_dtype(dtype, first.dtype),
                             lambda ms=members: (t.read() for _, t in ms)))
    return out


# ---------------------------------------------------------------------------------------------- output directory
def converter_output_dir(output_dir, overwrite: bool, inputs, prog: str):
    """`safe_output.atomic_output_dir` for a converter: it owns the model and tokenizer files; --overwrite refuses
    a folder holding anything else (and an output overlapping `inputs`)."""
    return atomic_output_dir(output_dir, overwrite, owned=MODEL_FILES + TOKENIZER_FILES, inputs=inputs,
                             option="output", writer=prog)


def write_weights(directory, tensors: list[OutTensor], *, layout: str, max_shard_size=None,
                  flax_shard_format: str = "safetensors", progress: bool = True) -> list[str]:
    """Write the weights of `layout` into `directory` with a progress bar over tensors; returns file names.

    PyTorch layout: safetensors (format "pt"), sharded with `model.safetensors.index.json`. Flax layout:
    `model.safetensors` (format "flax") when unsharded; sharded as `flax_shard_format`: "msgpack" (what
    transformers' Flax `save_pretrained` writes when sharding) or "safetensors" (`model.safetensors.index.json`,
    the default); `FlaxXLSTMForCausalLM.from_pretrained` reads both."""
    from tqdm.auto import tqdm

    limit = parse_size(max_shard_size) if max_shard_size is not None else None
    sharded = limit is not None and sum(t.nbytes for t in tensors) > limit
    file_format = "msgpack" if layout == "flax" and sharded and flax_shard_format == "msgpack" else "safetensors"
    bar = tqdm(total=len(tensors), unit="tensor", desc="converting", disable=not progress, file=sys.stderr)

    def step(t: OutTensor) -> None:
        bar.set_postfix_str(".".join(t.key)[-60:], refresh=False)
        bar.update(1)

    try:
        return write_checkpoint(directory, tensors, file_format=file_format,
                                metadata_format="pt" if layout == "pytorch" else "flax", max_shard_size=limit,
                                on_tensor=step)
    finally:
        bar.close()


def copy_tokenizer(spec: Optional[str], directory, source_dir=None) -> list[str]:
    """Tokenizer files into `directory`: from `spec` (a folder: its tokenizer files; a file: that file; anything
    else: a Hub id saved with `AutoTokenizer`), else the tokenizer files (and `generation_config.json`) of
    `source_dir`. Returns the names written."""
    directory = Path(directory)
    written = []
    if spec is None:
        if source_dir is None:
            return []
        for name in TOKENIZER_FILES + ("generation_config.json",):
            if (Path(source_dir) / name).is_file():
                shutil.copy2(Path(source_dir) / name, directory / name)
                written.append(name)
        return written
    path = Path(spec)
    if path.is_dir():
        names = [n for n in TOKENIZER_FILES if (path / n).is_file()]
        if not names:
            raise ConversionError(f"--tokenizer {spec}: the folder has none of {list(TOKENIZER_FILES)}")
        for name in names:
            shutil.copy2(path / name, directory / name)
        return names
    if path.is_file():
        shutil.copy2(path, directory / path.name)
        return [path.name]
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except Exception as e:
        raise ConversionError(f"--tokenizer {spec!r} is neither a local folder or file nor a loadable tokenizer "
                              f"({type(e).__name__}: {e})") from None
    before = set(os.listdir(directory))
    tokenizer.save_pretrained(directory)
    return sorted(set(os.listdir(directory)) - before)


def save_flax_config(config, directory) -> None:
    """config.json and generation_config.json as `FlaxPreTrainedModel.save_pretrained` writes them."""
    from transformers import GenerationConfig

    config.architectures = ["XLSTMForCausalLM"]
    config.save_pretrained(directory)
    if not (Path(directory) / "generation_config.json").is_file():
        GenerationConfig.from_model_config(config).save_pretrained(directory)


# ---------------------------------------------------------------------------------------------- loading / verify
def load_flax_params(directory, config=None) -> dict:
    """Nested float32 Flax params of any Flax-layout directory (all in memory; for verification and tests)."""
    import jax.numpy as jnp

    from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

    _, params = FlaxXLSTMForCausalLM.from_pretrained(directory, dtype=jnp.float32, param_dtype=jnp.float32,
                                                     config=config, _do_init=False)
    return params


def round_params(params, dtype: Optional[np.dtype]):
    """Params rounded to `dtype` and back to float32 (None: only cast to float32)."""
    import jax

    def cast(x):
        x = np.asarray(x)
        if not is_float_dtype(x.dtype):
            return x
        return (x.astype(dtype) if dtype is not None else x).astype(np.float32)

    return jax.tree_util.tree_map(cast, params)


def flax_logits(config, params, ids: np.ndarray) -> np.ndarray:
    """Logits (B, S, V) float32 of our model with `params` (float32 compute)."""
    import jax.numpy as jnp

    from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

    model = FlaxXLSTMForCausalLM(config, dtype=jnp.float32, _do_init=False)
    return np.asarray(model(ids, params=round_params(params, None)).logits)


def flax_dir_logits(directory, ids: np.ndarray, round_to: Optional[np.dtype] = None) -> np.ndarray:
    """Logits of a Flax-layout directory, loaded the way users load it (`FlaxXLSTMForCausalLM.from_pretrained`)."""
    import jax.numpy as jnp

    from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

    model, params = FlaxXLSTMForCausalLM.from_pretrained(directory, dtype=jnp.float32, _do_init=False)
    return flax_logits(model.config, round_params(params, round_to), ids)


def pytorch_dir_logits(directory, ids: np.ndarray, round_to: Optional[np.dtype] = None) -> np.ndarray:
    """Logits of a transformers PyTorch xLSTM directory (float32, float32 kernels), via
    `xLSTMForCausalLM.from_pretrained`; weights rounded to `round_to` first when given."""
    try:
        import torch
        from transformers import xLSTMForCausalLM
    except ImportError as e:
        raise ConversionError(f"--verify with the PyTorch layout needs torch ({e})") from None
    model = xLSTMForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                             autocast_kernel_dtype="float32").eval()
    if round_to is not None and round_to == DTYPES["bfloat16"]:
        model = model.to(torch.bfloat16).to(torch.float32)
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids), dtype=torch.long)).logits.float().numpy()


def verify_ids(config, length: int, seed: int, pytorch_chunk_size: Optional[int] = None) -> np.ndarray:
    """Random token ids (2, length); shorter than transformers' PyTorch chunk size when a PyTorch side runs
    (transformers 4.57.6's chunkwise kernel fails once a sequence reaches it)."""
    if pytorch_chunk_size is not None:
        length = max(1, min(length, pytorch_chunk_size - 1))
    return np.random.default_rng(seed).integers(0, config.vocab_size, (2, length)).astype(np.int32)


def check_logits(source: np.ndarray, output: np.ndarray, tolerance: float, ids: np.ndarray) -> float:
    """Print max |source - output| and raise VerificationError above `tolerance` (or when not finite)."""
    diff = float(np.max(np.abs(np.asarray(source, np.float64) - np.asarray(output, np.float64))))
    print(f"verify: max |logits diff| = {diff:.3g} on random ids {tuple(ids.shape)} (tolerance {tolerance:g})",
          file=sys.stderr)
    if not np.isfinite(diff) or diff > tolerance:
        raise VerificationError(f"verification failed: max |logits diff| {diff:.3g} exceeds {tolerance:g}; no "
                                "output was written")
    return diff


# ---------------------------------------------------------------------------------------------- conversions
def read_json_config(directory) -> dict:
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise ConversionError(f"{directory}: no such directory")
    try:
        return json.loads(path.read_text(), object_pairs_hook=refuse_duplicate_keys)
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def convert_pytorch_to_flax(input_dir, output_dir, *, dtype: str = "keep", max_shard_size=None,
                            flax_shard_format: str = "safetensors", tokenizer: Optional[str] = None,
                            overrides: Optional[dict] = None, verify: bool = False, tolerance: float = 1e-4,
                            verify_length: int = 16, seed: int = 0, overwrite: bool = False,
                            progress: bool = True) -> Path:
    """Convert; returns the output directory. Raises ConversionError / VerificationError."""
    check_output_path(output_dir, (input_dir, tokenizer), "output")
    from .configuration_xlstm_flax import from_transformers_config

    pt_config = read_json_config(input_dir)
    if pt_config.get("model_type") != "xlstm":
        raise ConversionError(f"{Path(input_dir) / 'config.json'}: model_type {pt_config.get('model_type')!r}, "
                              "expected transformers' 'xlstm' (for xlstm_flax directories use xlstm-flax convert to-pytorch)")
    try:
        config = from_transformers_config(pt_config, **(overrides or {}))
    except (ValueError, TypeError) as e:
        raise ConversionError(f"{Path(input_dir) / 'config.json'}: cannot be translated: {e}") from None
    source = open_pytorch_dir(input_dir, config)
    tensors = output_tensors(source, config, "flax", dtype)
    with converter_output_dir(output_dir, overwrite, (input_dir, tokenizer), "xlstm-flax convert from-pytorch") as tmp:
        copy_tokenizer(tokenizer, tmp, source_dir=input_dir)
        save_flax_config(config, tmp)
        write_weights(tmp, tensors, layout="flax", max_shard_size=max_shard_size,
                      flax_shard_format=flax_shard_format, progress=progress)
        if verify:
            ids = verify_ids(config, verify_length, seed, pytorch_chunk_size=pt_config.get("chunk_size", 64))
            round_to = verify_rounding(dtype)
            check_logits(pytorch_dir_logits(input_dir, ids, round_to), flax_dir_logits(tmp, ids), tolerance, ids)
    return Path(output_dir)


def convert_flax_to_pytorch(input_dir, output_dir, *, dtype: str = "keep", max_shard_size=None,
                            tokenizer: Optional[str] = None, overrides: Optional[dict] = None, verify: bool = False,
                            tolerance: float = 1e-4, verify_length: int = 16, seed: int = 0, overwrite: bool = False,
                            progress: bool = True):
    """Convert; returns the output directory. Raises ConversionError / VerificationError."""
    check_output_path(output_dir, (input_dir, tokenizer), "output")
    from transformers import GenerationConfig

    from .configuration_xlstm_flax import XLSTMFlaxConfig, to_transformers_config

    config_dict = read_json_config(input_dir)
    if config_dict.get("model_type") != XLSTMFlaxConfig.model_type:
        raise ConversionError(f"{Path(input_dir) / 'config.json'}: model_type {config_dict.get('model_type')!r}, "
                              f"expected {XLSTMFlaxConfig.model_type!r} (this port's Flax layout)")
    try:
        config = XLSTMFlaxConfig.from_pretrained(input_dir)
        if overrides:
            config.update(overrides)  # names checked, all fields validated together
        pt_config = to_transformers_config(config)
    except (ValueError, TypeError) as e:
        raise ConversionError(f"{Path(input_dir) / 'config.json'}: cannot be expressed as transformers' "
                              f"xLSTMConfig: {e} (--set FIELD=VALUE changes a field explicitly, e.g. "
                              "reset_at_document_boundaries=false, which only matters with document_borders)"
                              ) from None
    if config.qk_dim % 64:
        limit = (f"transformers' PyTorch xLSTM cannot run a model whose hidden_size x qk_dim_factor "
                 f"({config.embedding_dim} x {config.qk_dim_factor} = {config.qk_dim}) is not a multiple of 64 (a limit "
                 "of its kernels, which fail with 'matC_old has wrong shape')")
        if verify:
            raise ConversionError(f"{limit}; the files would be written correctly, but --verify cannot run them")
        print(f"warning: {limit}; the files are written, but transformers cannot run them", file=sys.stderr)
    source = open_flax_dir(input_dir, config)
    tensors = output_tensors(source, config, "pytorch", dtype)
    float_dtypes = {t.dtype for t in tensors if t.dtype in (np.dtype(np.float32), DTYPES["bfloat16"],
                                                              np.dtype(np.float16))}
    pt_config.architectures = ["xLSTMForCausalLM"]
    if len(float_dtypes) == 1:  # what PyTorch's save_pretrained records: the dtype of the stored weights
        pt_config.dtype = {np.dtype(np.float32): "float32", DTYPES["bfloat16"]: "bfloat16",
                           np.dtype(np.float16): "float16"}[float_dtypes.pop()]
    with converter_output_dir(output_dir, overwrite, (input_dir, tokenizer), "xlstm-flax convert to-pytorch") as tmp:
        copy_tokenizer(tokenizer, tmp, source_dir=input_dir)
        pt_config.save_pretrained(tmp)
        if not (tmp / "generation_config.json").is_file():
            GenerationConfig.from_model_config(pt_config).save_pretrained(tmp)
        write_weights(tmp, tensors, layout="pytorch", max_shard_size=max_shard_size, progress=progress)
        if verify:
            ids = verify_ids(config, verify_length, seed, pytorch_chunk_size=pt_config.chunk_size)
            round_to = verify_rounding(dtype)
            check_logits(flax_dir_logits(input_dir, ids, round_to), pytorch_dir_logits(tmp, ids), tolerance, ids)
    return Path(output_dir)


# ---------------------------------------------------------------------------------------------- command lines
def parse_overrides(items: Optional[list[str]]) -> dict:
    """["field=value", ...] -> {field: value} (`configuration.parse_field_overrides`: JSON values, names checked)."""
    from .configuration_xlstm_flax import parse_field_overrides

    return parse_field_overrides(items, option="--set")


def verify_rounding(dtype: str) -> Optional[np.dtype]:
    """The dtype --verify rounds the input side's weights to before comparing: the output's, or None for "keep"."""
    return None if dtype == "keep" else DTYPES[dtype]


TOKENIZER_HELP = ("tokenizer to add instead of the input's tokenizer files: a folder, a single file, or a Hub id "
                  "saved with AutoTokenizer")
_STATUS = " Exit status: 0 done, 1 bad input, 2 usage, 3 --verify failed."
_STREAMS = " Streams tensor by tensor; writes into a temporary folder beside OUTPUT and renames it at the end."


@dataclass(frozen=True)
class Conversion:
    """One `xlstm-flax convert NAME`. `function` ("module:name") is called as `function(input, output, **options)`;
    the options the parser offers are the keyword arguments it takes (`_OPTIONS`), so none is accepted and ignored."""

    function: str
    summary: str  # the line in `xlstm-flax convert --help`
    description: str
    input_help: str
    output_help: str = "the Flax model directory to create"
    layout: str = "flax"  # the output layout: "flax" or "pytorch" (help texts)
    verify_reference: str = ""  # what --verify runs on the input side
    dtypes: tuple = ("keep", "float32", "bfloat16")
    tokenizer_help: str = TOKENIZER_HELP


CONVERSIONS = {
    "from-orbax": Conversion(
        "convert_orbax_to_hf:convert_orbax", "an xlstm-jax orbax run -> this port's Flax model folder",
        "Convert an xlstm-jax orbax checkpoint (written by upstream's trainer) into a Hugging Face model directory in "
        "this port's Flax layout: config.json, generation_config.json, model.safetensors (loads with "
        "FlaxAutoModelForCausalLM.from_pretrained), optional tokenizer files." + _STREAMS + _STATUS,
        "a checkpoint_<step> folder, or a run folder with checkpoint_<step> folders (directly or in checkpoints/): "
        "the highest step is used unless --step", "the model directory to create",
        verify_reference="this port's model with the whole params item mapped in memory by "
                         "loading.upstream_to_flax",
        tokenizer_help="tokenizer to add: a folder (its tokenizer.json, tokenizer_config.json, special_tokens_map.json, "
                       "vocab/merges files are copied), a single file, or a Hub id saved with AutoTokenizer (e.g. "
                       "EleutherAI/gpt-neox-20b for xLSTM-7B)"),
    "from-pytorch": Conversion(
        "convert_common:convert_pytorch_to_flax", "transformers' PyTorch xLSTM folder -> Flax model folder",
        "Convert a transformers PyTorch xLSTM directory (xLSTMForCausalLM.save_pretrained, the NX-AI/xLSTM-7b layout; "
        "model.safetensors or shards with model.safetensors.index.json) into this port's Flax layout (config.json, "
        "model.safetensors; loads with FlaxAutoModelForCausalLM.from_pretrained without from_pt). Tokenizer files "
        "and generation_config.json are copied." + _STREAMS + _STATUS,
        "the PyTorch model directory (config.json + safetensors)",
        verify_reference="transformers' PyTorch xLSTMForCausalLM, needs torch"),
    "to-pytorch": Conversion(
        "convert_common:convert_flax_to_pytorch", "Flax model folder -> transformers' PyTorch xLSTM folder",
        "Convert a directory in this port's Flax layout (config.json + model.safetensors, sharded safetensors or "
        "flax_model.msgpack shards) into the layout transformers' PyTorch xLSTMForCausalLM.from_pretrained loads "
        "(config.json as xLSTMConfig, model.safetensors). The config must be expressible by xLSTMConfig (mlstm_v1 "
        "layer, rmsnorm blocks, swish gated feedforward, no qk-norm or document resets): otherwise the error names "
        "the field. Tokenizer files and generation_config.json are copied." + _STREAMS + _STATUS
        + " (--verify needs torch)", "the Flax model directory", "the PyTorch model directory to create",
        layout="pytorch", verify_reference="this port's FlaxXLSTMForCausalLM; output side: transformers' PyTorch "
                                           "xLSTMForCausalLM, needs torch"),
    "from-library": Conversion(
        "convert_library:convert_library_to_flax", "NX-AI xlstm library folder (mLSTM + sLSTM) -> Flax model folder",
        "Convert a checkpoint folder of NX-AI's PyTorch xlstm library (xLSTMLMModel with mLSTM and sLSTM blocks: a "
        "Helibrunna config.yaml or a config.json holding the library config under xlstm_cfg / xlstm_config, plus "
        "model.safetensors) into this port's Flax layout. Tokenizer files are copied. Exit status: 0 done, 1 bad "
        "input, 2 usage.", "the library checkpoint folder", dtypes=("float32", "bfloat16"),
        tokenizer_help="tokenizer to save beside the model (default: the input folder's tokenizer files)"),
    "to-library": Conversion(
        "convert_library:convert_flax_to_library", "Flax model folder -> NX-AI xlstm library folder (mLSTM + sLSTM)",
        "Write a model this port loads (our Flax layout, a library folder, or a Hub id) as a checkpoint folder of "
        "NX-AI's PyTorch xlstm library: config.json with the xLSTMLMModelConfig under xlstm_cfg, model.safetensors "
        "with xLSTMLMModel keys in float32 and the sLSTM recurrent kernel and bias in --backend's storage layout. A "
        "model the library cannot express (an mlstm_v1 layer, rmsnorm, soft caps, a feedforward in mLSTM blocks, "
        "...) is refused naming the fields, before anything is written. Tokenizer files and generation_config.json "
        "are copied. Reads the whole model into memory; writes into a temporary folder beside OUTPUT and renames it "
        "at the end. Exit status: 0 done, 1 bad input, 2 usage.",
        "our model folder, a library folder or a Hub id", "the library checkpoint folder to create",
        tokenizer_help="tokenizer to save beside the model (default: the input folder's tokenizer files)"),
}


def _shard_help(c: Conversion) -> str:
    return ("split the weights into shards of about SIZE (e.g. 5GB, 500MB, or bytes): tensors go into a shard while "
            "it stays within SIZE, and a tensor larger than SIZE gets a shard of its own (which then exceeds SIZE); "
            "an index in transformers' format {metadata: {total_size}, weight_map: {name: file}} is written too. "
            "Default: one file (model-0000i-of-0000N.safetensors + model.safetensors.index.json"
            + (", or msgpack shards with --flax-shard-format msgpack)" if c.layout == "flax" else ")"))


# keyword argument of a convert function -> (its option's flags, argparse settings for a Conversion)
_OPTIONS = {
    "step": (("--step",), lambda c: dict(type=int, default=None,
                                         help="use checkpoint_<STEP> instead of the highest step")),
    "tokenizer": (("--tokenizer",), lambda c: dict(default=None, metavar="PATH_OR_ID", help=c.tokenizer_help)),
    "dtype": (("--dtype",), lambda c: dict(choices=list(c.dtypes), default=c.dtypes[0], help=(
        "dtype of the written floating-point tensors: keep each tensor's stored dtype (default), or cast all to "
        "float32 / bfloat16" if "keep" in c.dtypes else "dtype of the written tensors (default float32)"))),
    "max_shard_size": (("--max-shard-size",), lambda c: dict(metavar="SIZE", default=None, help=_shard_help(c))),
    "flax_shard_format": (("--flax-shard-format",), lambda c: dict(
        choices=["msgpack", "safetensors"], default="safetensors",
        help="file format of sharded Flax output (only with --max-shard-size): safetensors shards with "
             "model.safetensors.index.json (default) or msgpack shards (flax_model.msgpack.index.json, what "
             "transformers' Flax save_pretrained writes); FlaxXLSTMForCausalLM.from_pretrained reads both")),
    "backend": (("--backend",), lambda c: dict(
        choices=["vanilla", "cuda"], default="vanilla",
        help="storage layout of the sLSTM recurrent kernel and bias: the library's vanilla backend (default) or its "
             "cuda backend (Helibrunna's default); the same model either way, the library reads each with its "
             "backend")),
    "overrides": (None, None),  # the one --set option (`cli.add_set_option`)
    "verify": (("--verify",), lambda c: dict(
        action="store_true",
        help="after writing, load the input and the output, run the same random token ids through both in float32 "
             f"(input side: {c.verify_reference}; its weights rounded to the output dtype first) and print the max "
             "absolute logits difference; exit status 3 and no output when it exceeds --tolerance. Needs memory "
             "for both models")),
    "tolerance": (("--tolerance",), lambda c: dict(
        type=_tolerance, default=1e-4, help="largest accepted max |logits diff| for --verify (default 1e-4)")),
    "verify_length": (("--verify-length",), lambda c: dict(
        type=_positive_int, default=16,
        help="length of the random sequences --verify runs (default 16; kept below the PyTorch chunk_size)")),
    "seed": (("--seed",), lambda c: dict(type=int, default=0, help="seed of the random ids for --verify (default 0)")),
    "overwrite": (("--overwrite",), lambda c: dict(
        action="store_true", help="replace OUTPUT if it exists (it is replaced only after a successful conversion)")),
    "progress": (("-q", "--quiet"), lambda c: dict(action="store_false", dest="progress", help="no progress bar")),
}


def converter(name: str):
    """(The convert function of conversion `name`, its keyword-only parameters)."""
    module, function = CONVERSIONS[name].function.split(":")
    code = (function := getattr(importlib.import_module(f".{module}", __package__), function)).__code__
    return function, list(code.co_varnames[code.co_argcount: code.co_argcount + code.co_kwonlyargcount])


def build_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `xlstm-flax convert NAME`: INPUT, OUTPUT and an option per keyword of its convert function."""
    c = CONVERSIONS[name]
    parser = argparse.ArgumentParser(prog=f"xlstm-flax convert {name}", description=c.description)
    parser.add_argument("input", help=c.input_help)
    parser.add_argument("output", help=c.output_help)
    keywords = converter(name)[1]
    unknown = set(keywords) - set(_OPTIONS)
    if unknown:  # a packaging bug: every keyword is offered, or the conversion would ignore it
        raise TypeError(f"{c.function} takes {sorted(unknown)}, which no option of the skeleton sets")
    for keyword in _OPTIONS:
        if keyword not in keywords:
            continue
        flags, settings = _OPTIONS[keyword]
        if keyword == "overrides":
            add_set_option(parser, "set a field of the XLSTMFlaxConfig (configuration.FIELD_DOCS) before "
                                   "converting (repeatable; VALUE is JSON where it parses, e.g. --set "
                                   "scan_blocks=true writes stacked blocks, --set compute_dtype=float32)")
        else:
            parser.add_argument(*flags, **settings(c))
    return parser


def convert_kwargs(args: argparse.Namespace, name: str) -> dict:
    """The keyword arguments of conversion `name`'s function, from its parsed options."""
    keywords = converter(name)[1]
    kwargs = {k: getattr(args, k) for k in keywords if k != "overrides"}
    if "overrides" in keywords:
        kwargs["overrides"] = parse_overrides(args.set)
    return kwargs


def convert_command(argv: Optional[list[str]] = None) -> int:
    """`xlstm-flax convert NAME ARGS`: the conversion chosen by NAME, run by `main(NAME, ARGS)`."""
    from .cli import command_chooser, split_command

    head, rest = split_command(list(argv or []))
    chooser = command_chooser("xlstm-flax convert", {n: (c.summary,) for n, c in CONVERSIONS.items()},
                              "Convert checkpoints; every conversion writes into a temporary folder beside OUTPUT "
                              "and renames it when complete.", top=False)
    return main(chooser.parse_args(head).command, rest)


def main(name: str, argv: Optional[list[str]] = None) -> int:
    """`xlstm-flax convert NAME ARGS`: parse, convert and print "wrote OUTPUT", through the commands' one runner
    (`cli.run_command`: exit status 0 done, 1 bad input or any other failure, 2 usage, 3 verification failed,
    130 interrupted; `xlstm-flax --debug` shows tracebacks)."""
    parser = build_parser(name)

    def body(args_list):
        args = parser.parse_args(args_list)
        print(f"wrote {converter(name)[0](args.input, args.output, **convert_kwargs(args, name))}")
        return 0

    return run_command(parser.prog, body, argv,
                       exit_codes={VerificationError: EXIT_VERIFY_FAILED, ConversionError: EXIT_BAD_INPUT})


def _tolerance(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return value
