"""transformers PyTorch xLSTM directory -> this port's Flax layout. Command `xlstm-flax convert from-pytorch`, or
`python -m modeling_xlstm_flax.convert_pytorch_to_flax`.

Input: what `xLSTMForCausalLM.save_pretrained` writes (the `NX-AI/xLSTM-7b` layout): `config.json` (model_type
`xlstm`, translated by `configuration.from_transformers_config`) and `model.safetensors` or shards listed in
`model.safetensors.index.json`. Each tensor is read on its own (positioned reads, no whole-file mapping) and
written at once: `backbone.blocks.<i>.mlstm_layer.q.weight (Dqk, D)` -> `backbone.blocks.<i>.mlstm_layer.q.kernel
(D, Dqk)` (dense weights transposed; norms `weight` -> `scale`; `backbone.embeddings.weight (V, D)` ->
`backbone.embeddings.embedding`; `lm_head.weight (V, D)` -> `lm_head.kernel (D, V)`; see `modeling_xlstm_flax.param_table`).

Output: `config.json` (XLSTMFlaxConfig), `generation_config.json`, `model.safetensors` (Flax layout, metadata
format "flax", keys `.`-joined as `FlaxPreTrainedModel.save_pretrained` writes them; stacked under
`backbone.blocks.scanned.block.` with `--set scan_blocks=true`), the input's tokenizer files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from .config_checks import refuse_duplicate_keys
from .convert_common import (
    ConversionError,
    add_common_arguments,
    check_converter_output,
    converter_output_dir,
    check_logits,
    convert_kwargs,
    copy_tokenizer,
    flax_dir_logits,
    open_pytorch_dir,
    output_tensors,
    pytorch_dir_logits,
    run_cli,
    save_flax_config,
    verify_ids,
    verify_rounding,
    write_weights,
)


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
    check_converter_output(output_dir, (input_dir, tokenizer))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xlstm-flax convert from-pytorch",
        description="Convert a transformers PyTorch xLSTM directory (xLSTMForCausalLM.save_pretrained, the "
                    "NX-AI/xLSTM-7b layout; model.safetensors or shards with model.safetensors.index.json) into "
                    "this port's Flax layout (config.json, model.safetensors; loads with "
                    "FlaxAutoModelForCausalLM.from_pretrained without from_pt). Tokenizer files and "
                    "generation_config.json are copied. Streams tensor by tensor; writes into a temporary folder "
                    "beside OUTPUT and renames it at the end. Exit status: 0 done, 1 bad input, 2 usage, "
                    "3 --verify failed.",
    )
    parser.add_argument("input", help="the PyTorch model directory (config.json + safetensors)")
    parser.add_argument("output", help="the Flax model directory to create")
    add_common_arguments(parser, "flax",
                         "transformers' PyTorch xLSTMForCausalLM, needs torch")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(lambda args: convert_pytorch_to_flax(args.input, args.output, **convert_kwargs(args)),
                   build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
