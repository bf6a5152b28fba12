"""Shared machinery of the conversion commands (`orbax_to_hf`, `pytorch_to_flax`, `flax_to_pytorch`).

Every input is opened as a `loading.Source` (tensors under our unrolled names, read one at a time, checked
against the config's plan before any data is read); `output_tensors` lays it out as
* "flax": our names, `.`-joined in safetensors (what `save_pretrained` writes), stacked (NB, ...) under
  `backbone/blocks/scanned/block/` when the config has `scan_blocks`;
* "pytorch": transformers' `xLSTMForCausalLM` state-dict names and shapes (`param_table`),
and `checkpoint_writer.write_checkpoint` writes it tensor by tensor into a temporary directory beside the target
(`atomic_output_dir`), optionally verified (same random tokens through source and output, max |logits diff|), then
renamed into place: a failed or interrupted conversion leaves no output and the old output stays until the new one
is complete.

Peak memory beyond the imports is independent of the checkpoint size: about 1.3x the largest tensor for
safetensors inputs (transposes and casts are copied in 64 MB pieces), about 2x the largest leaf for orbax (its
leaves are stored as one compressed chunk, decoded whole; a stacked `scan_blocks` leaf is one leaf), plus the
largest file for msgpack inputs. `benchmarks/conversion_memory.py` measures it on a 2.4 GB checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from . import checkpoint_io, loading, param_table
from .checkpoint_io import CheckpointFileError, is_float_dtype  # noqa: F401  (re-exported for the commands)
from .loading import Source, SourceTensor, compare_to_plan, model_plan  # noqa: F401  (re-exported for the commands)
from .checkpoint_writer import OutTensor, parse_size, write_checkpoint  # noqa: F401
from .cli import add_set_option, run_command
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
def check_converter_output(output_dir, inputs) -> None:
    """Before any work: `output_dir` not empty, not overlapping an input (`safe_output.check_output_path`)."""
    check_output_path(output_dir, inputs, "output")


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


# ---------------------------------------------------------------------------------------------- command lines
def parse_overrides(items: Optional[list[str]]) -> dict:
    """["field=value", ...] -> {field: value} (`configuration.parse_field_overrides`: JSON values, names checked)."""
    from .configuration_xlstm_flax import parse_field_overrides

    return parse_field_overrides(items, option="--set")


TOKENIZER_HELP = ("tokenizer to add instead of the input's tokenizer files: a folder, a single file, or a Hub id "
                  "saved with AutoTokenizer")


def verify_rounding(dtype: str) -> Optional[np.dtype]:
    """The dtype --verify rounds the input side's weights to before comparing: the output's, or None for "keep"."""
    return None if dtype == "keep" else DTYPES[dtype]


def convert_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of every convert function, from the options `add_common_arguments` defines."""
    kwargs = dict(dtype=args.dtype, max_shard_size=args.max_shard_size, tokenizer=args.tokenizer,
                  overrides=parse_overrides(args.set), verify=args.verify, tolerance=args.tolerance,
                  verify_length=args.verify_length, seed=args.seed, overwrite=args.overwrite,
                  progress=not args.quiet)
    if hasattr(args, "flax_shard_format"):
        kwargs["flax_shard_format"] = args.flax_shard_format
    return kwargs


def add_common_arguments(parser: argparse.ArgumentParser, output_layout: str, verify_reference: str,
                         tokenizer_help: str = TOKENIZER_HELP) -> None:
    """Options shared by all converters (`output_layout` "flax" or "pytorch" selects the help text;
    `verify_reference` says what --verify runs on the input side)."""
    parser.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID", help=tokenizer_help)
    parser.add_argument("--dtype", choices=["keep", "float32", "bfloat16"], default="keep",
                        help="dtype of the written floating-point tensors: keep each tensor's stored dtype "
                             "(default), or cast all to float32 / bfloat16")
    parser.add_argument("--max-shard-size", metavar="SIZE", default=None,
                        help="split the weights into shards of about SIZE (e.g. 5GB, 500MB, or bytes): tensors go "
                             "into a shard while it stays within SIZE, and a tensor larger than SIZE gets a shard "
                             "of its own (which then exceeds SIZE); an index in transformers' format "
                             "{metadata: {total_size}, weight_map: {name: file}} is written too. Default: one file"
                             + (" (model-0000i-of-0000N.safetensors + model.safetensors.index.json, or msgpack "
                                "shards with --flax-shard-format msgpack)" if output_layout == "flax" else
                                " (model-0000i-of-0000N.safetensors + model.safetensors.index.json)"))
    if output_layout == "flax":
        parser.add_argument("--flax-shard-format", choices=["msgpack", "safetensors"], default="safetensors",
                            help="file format of sharded Flax output (only with --max-shard-size): safetensors "
                                 "shards with model.safetensors.index.json (default) or msgpack shards "
                                 "(flax_model.msgpack.index.json, what transformers' Flax save_pretrained writes); "
                                 "FlaxXLSTMForCausalLM.from_pretrained reads both")
    add_set_option(parser, "set a field of the XLSTMFlaxConfig (configuration.FIELD_DOCS) before converting "
                           "(repeatable; VALUE is JSON where it parses, e.g. --set scan_blocks=true writes stacked "
                           "blocks, --set compute_dtype=float32)")
    parser.add_argument("--verify", action="store_true",
                        help="after writing, load the input and the output, run the same random token ids "
                             f"through both in float32 (input side: {verify_reference}; its weights rounded to the "
                             "output dtype first) and print the max absolute logits difference; exit status 3 and "
                             "no output when it exceeds --tolerance. Needs memory for both models")
    parser.add_argument("--tolerance", type=_tolerance, default=1e-4,
                        help="largest accepted max |logits diff| for --verify (default 1e-4)")
    parser.add_argument("--verify-length", type=_positive_int, default=16,
                        help="length of the random sequences --verify runs (default 16; kept below the PyTorch "
                             "chunk_size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ids for --verify (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT if it exists (it is replaced only after a successful conversion)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


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


def run_cli(convert: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
            argv: Optional[list[str]] = None) -> int:
    """Parse `argv`, run `convert` and print "wrote <the path it returns>", through the commands' one runner
    (`cli.run_command`: exit status 0 done, 1 bad input or any other failure, 2 usage, 3 verification failed,
    130 interrupted; `xlstm-flax --debug` shows tracebacks)."""

    def body(args_list):
        args = parser.parse_args(args_list)
        print(f"wrote {convert(args)}")
        return 0

    return run_command(parser.prog, body, argv,
                       exit_codes={VerificationError: EXIT_VERIFY_FAILED, ConversionError: EXIT_BAD_INPUT})
