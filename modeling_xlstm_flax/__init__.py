"""xlstm-flax: the xLSTM language model of xlstm-jax in Flax, with transformers' Flax model API.

`from modeling_xlstm_flax import FlaxAutoModelForCausalLM` loads a saved model under transformers 4.x and 5.x
(`auto`). Importing the package itself is cheap (no jax, no transformers: the `xlstm-flax` command starts from it);
the public names below are imported on first use, and the first use of any of them registers this port with
transformers (`auto.register_auto_classes`, idempotent): the config with `AutoConfig` (model_type `xlstm_flax`),
under transformers 4.x the models with transformers' `FlaxAutoModel` / `FlaxAutoModelForCausalLM` for both our
config and transformers' PyTorch `xLSTMConfig` (model_type `xlstm`), and the text-generation pipeline task. Code
that only imports submodules calls `modeling_xlstm_flax.register_auto_classes()` before using transformers' Auto
classes with our folders.
"""

import importlib
import logging
from pathlib import Path

from .safe_output import record_dropped_interrupts  # standard library only

record_dropped_interrupts()  # before jax loads: a Ctrl-C its gc callback drops is still seen by the commands

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "XLSTMFlaxConfig": "configuration_xlstm_flax", "load_preset": "configuration_xlstm_flax",
    "preset_names": "configuration_xlstm_flax",
    "FlaxXLSTMForCausalLM": "modeling_flax_xlstm", "FlaxXLSTMModel": "modeling_flax_xlstm",
    "FlaxXLSTMPreTrainedModel": "modeling_flax_xlstm", "stack_block_params": "modeling_flax_xlstm",
    "unstack_block_params": "modeling_flax_xlstm",
    "FlaxAutoModel": "auto", "FlaxAutoModelForCausalLM": "auto",
    "register_auto_classes": "auto", "FlaxTextGenerationPipeline": "auto", "text_generation_pipeline": "auto",
}

__all__ = sorted(_EXPORTS) + ["bundled_model_path"]


def bundled_model_path() -> Path:
    """Folder of the bundled model (config, safetensors, tokenizer, card) inside the installed package."""
    return Path(__file__).parent / "bundled_model"


def _drop_torch_absent_note(record: logging.LogRecord) -> bool:
    """transformers 5 without torch logs "PyTorch was not found. Models won't be available ..." when it is imported
    (twice: its `processing_utils` executes transformers' `__init__` a second time). This port's models need no
    torch, so for its users the note is wrong; only that message is dropped, and only if transformers is imported
    after this package."""
    return not str(record.msg).startswith("PyTorch was not found. Models won't be available")


if _drop_torch_absent_note not in logging.getLogger("transformers").filters:
    logging.getLogger("transformers").addFilter(_drop_torch_absent_note)


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(".auto", __name__)  # registers the auto classes once (idempotent)
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
