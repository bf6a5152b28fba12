"""The two conversions of NX-AI's PyTorch `xlstm` library folders (`xlstm-flax convert from-library` and
`to-library`, entries of `convert_common.CONVERSIONS`): whole models in memory (library models are small), the
translation itself in `library_checkpoint`, the output folder written all-or-nothing (`safe_output`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .convert_common import ConversionError, converter_output_dir, copy_tokenizer
from .safe_output import check_output_path


def convert_library_to_flax(input_dir, output_dir, *, dtype: str = "float32", tokenizer: Optional[str] = None,
                            overwrite: bool = False) -> Path:
    """Convert; returns the output directory. Raises ConversionError (bad input) or ValueError."""
    import jax
    import jax.numpy as jnp

    from .library_checkpoint import read_library_config
    from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

    check_output_path(output_dir, (input_dir, tokenizer), "output")  # empty or overlapping an input: refused first
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


def convert_flax_to_library(input_dir, output_dir, *, backend: str = "vanilla", tokenizer: Optional[str] = None,
                            overwrite: bool = False) -> Path:
    """Write a model `FlaxXLSTMForCausalLM.from_pretrained` reads (our layout, a library folder, a Hub id) as a
    library folder (`library_checkpoint.write_library_files`, float32, sLSTM storage layout `backend`). The whole
    model is read into memory first; a config the library cannot express is refused (by field) before any output
    exists. Returns the output directory. Raises ConversionError (bad input)."""
    import jax.numpy as jnp

    from .checkpoint_io import resolve_model_dir
    from .configuration_xlstm_flax import XLSTMFlaxConfig
    from .library_checkpoint import library_config, library_state_dict, write_library_files
    from .library_params import BACKENDS
    from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

    check_output_path(output_dir, (input_dir, tokenizer), "output")  # empty or overlapping an input: refused first
    if backend not in BACKENDS:
        raise ConversionError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)} (the library's sLSTM "
                              "storage layouts)")
    try:
        source = resolve_model_dir(input_dir)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    try:  # the config first: a model the library cannot express is refused before its weights are read
        library_config(XLSTMFlaxConfig.from_pretrained(source), backend)
    except ValueError as e:
        raise ConversionError(f"{input_dir}: {e}") from None
    model, params = FlaxXLSTMForCausalLM.from_pretrained(source, dtype=jnp.float32, param_dtype=jnp.float32,
                                                         _do_init=False)
    lm = library_config(model.config, backend)
    state_dict = library_state_dict(params, model.config, backend)
    del params
    target = Path(output_dir).absolute()
    with converter_output_dir(target, overwrite, (input_dir, tokenizer), "xlstm-flax convert to-library") as tmp:
        copy_tokenizer(tokenizer, tmp, source_dir=source)
        write_library_files(tmp, lm, state_dict)
    return target
