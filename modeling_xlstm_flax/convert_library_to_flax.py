"""NX-AI `xlstm` library checkpoint folder -> this port's Flax layout. Command `xlstm-flax convert from-library`, or
`python -m modeling_xlstm_flax.convert_library_to_flax`.

Input: a folder `FlaxXLSTMForCausalLM.from_pretrained` reads as a library checkpoint (`library_checkpoint`: Helibrunna
`config.yaml`, Distil-xLSTM `config.json` with `xlstm_cfg` / `xlstm_config`, or a bare `xLSTMLMModelConfig` JSON;
`model.safetensors` with `xLSTMLMModel` keys). Output: `config.json` (XLSTMFlaxConfig, sLSTM blocks by `slstm_at`),
`generation_config.json`, `model.safetensors` (Flax layout, float32 unless `--dtype bfloat16`) and the input's
tokenizer files. Written all-or-nothing (`safe_output`, as every converter).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from .convert_common import ConversionError, check_converter_output, converter_output_dir, copy_tokenizer, run_cli


def convert_library_to_flax(input_dir, output_dir, *, dtype: str = "float32", tokenizer: Optional[str] = None,
                            overwrite: bool = False) -> Path:
    """Convert; returns the output directory. Raises ConversionError (bad input) or ValueError."""
    import jax
    import jax.numpy as jnp

    from .library_checkpoint import read_library_config
    from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

    check_converter_output(output_dir, (input_dir, tokenizer))  # empty, or overlapping an input: refused before any work
    source, target = Path(input_dir).absolute(), Path(output_dir).absolute()
    if not source.is_dir():
        raise ConversionError(f"{input_dir}: no such directory")
    if read_library_config(source) is None:
        raise ConversionError(f"{input_dir}: no xlstm library config (config.yaml, or config.json with xlstm_cfg / "
                              "xlstm_config or a bare xLSTMLMModelConfig)")
    if dtype not in ("float32", "bfloat16"):
        raise ConversionError(f"--dtype {dtype!r}: expected float32 or bfloat16")
    model = FlaxXLSTMForCausalLM.from_pretrained(source)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.dtype(dtype)), model.params)
    with converter_output_dir(target, overwrite, (input_dir, tokenizer), "xlstm-flax convert from-library") as tmp:
        copy_tokenizer(tokenizer, tmp, source_dir=source)
        model.save_pretrained(tmp, params=params)
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xlstm-flax convert from-library",
        description="Convert a checkpoint folder of NX-AI's PyTorch xlstm library (xLSTMLMModel with mLSTM and "
                    "sLSTM blocks: a Helibrunna config.yaml or a config.json holding the library config under "
                    "xlstm_cfg / xlstm_config, plus model.safetensors) into this port's Flax layout. Tokenizer "
                    "files are copied. Exit status: 0 done, 1 bad input, 2 usage.",
    )
    parser.add_argument("input", help="the library checkpoint folder")
    parser.add_argument("output", help="the Flax model directory to create")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="dtype of the written tensors (default float32; library bf16 tensors are exact in it)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID",
                        help="tokenizer to save beside the model (default: the input folder's tokenizer files)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("-q", "--quiet", action="store_true", help="accepted for symmetry with the other converters")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(lambda args: convert_library_to_flax(args.input, args.output, dtype=args.dtype,
                                                       tokenizer=args.tokenizer, overwrite=args.overwrite),
                   build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
