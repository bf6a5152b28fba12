"""This port's Flax layout -> transformers PyTorch xLSTM directory. Command `xlstm-flax convert to-pytorch`, or
`python -m modeling_xlstm_flax.convert_flax_to_pytorch`.

Input: a directory `FlaxXLSTMForCausalLM.save_pretrained` (or another converter here) wrote: `config.json`
(XLSTMFlaxConfig) and `model.safetensors`, sharded safetensors with `model.safetensors.index.json`, or
`flax_model.msgpack` (shards + `flax_model.msgpack.index.json`); unrolled or scanned blocks (a stacked tensor is
read one block slice at a time).

Output: what transformers' `xLSTMForCausalLM.from_pretrained` loads: `config.json` (`xLSTMConfig` from
`configuration.to_transformers_config`; a config it cannot express - e.g. the `mlstm` layer type, qk-norm,
document resets - is an error naming the field, `--set` can change such a field explicitly),
`generation_config.json`, `model.safetensors` (metadata format "pt") or shards with
`model.safetensors.index.json`, tokenizer files. Names and shapes: `backbone/blocks/<i>/mlstm_layer/q/kernel
(D, Dqk)` -> `backbone.blocks.<i>.mlstm_layer.q.weight (Dqk, D)`; see `modeling_xlstm_flax.param_table`. A tied model gets no
`lm_head.weight` (transformers ties it to the embeddings when loading).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import numpy as np

from .convert_common import (
    DTYPES,
    ConversionError,
    add_common_arguments,
    check_converter_output,
    converter_output_dir,
    check_logits,
    convert_kwargs,
    copy_tokenizer,
    flax_dir_logits,
    open_flax_dir,
    output_tensors,
    pytorch_dir_logits,
    run_cli,
    verify_ids,
    verify_rounding,
    write_weights,
)
from .convert_pytorch_to_flax import read_json_config


def convert_flax_to_pytorch(input_dir, output_dir, *, dtype: str = "keep", max_shard_size=None,
                            tokenizer: Optional[str] = None, overrides: Optional[dict] = None, verify: bool = False,
                            tolerance: float = 1e-4, verify_length: int = 16, seed: int = 0, overwrite: bool = False,
                            progress: bool = True):
    """Convert; returns the output directory. Raises ConversionError / VerificationError."""
    check_converter_output(output_dir, (input_dir, tokenizer))
    from pathlib import Path

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xlstm-flax convert to-pytorch",
        description="Convert a directory in this port's Flax layout (config.json + model.safetensors, sharded "
                    "safetensors or flax_model.msgpack shards) into the layout transformers' PyTorch "
                    "xLSTMForCausalLM.from_pretrained loads (config.json as xLSTMConfig, model.safetensors). "
                    "The config must be expressible by xLSTMConfig (mlstm_v1 layer, rmsnorm blocks, swish gated "
                    "feedforward, no qk-norm or document resets): otherwise the error names the field. Tokenizer "
                    "files and generation_config.json are copied. Streams tensor by tensor; writes into a "
                    "temporary folder beside OUTPUT and renames it at the end. Exit status: 0 done, 1 bad input, "
                    "2 usage, 3 --verify failed (--verify needs torch).",
    )
    parser.add_argument("input", help="the Flax model directory")
    parser.add_argument("output", help="the PyTorch model directory to create")
    add_common_arguments(parser, "pytorch",
                         "this port's FlaxXLSTMForCausalLM; output side: transformers' PyTorch "
                         "xLSTMForCausalLM, needs torch")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(lambda args: convert_flax_to_pytorch(args.input, args.output, **convert_kwargs(args)),
                   build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
