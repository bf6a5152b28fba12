"""xlstm-flax: the xLSTM language model of xlstm-jax in Flax, with transformers' Flax model API.

`from modeling_xlstm_flax import FlaxAutoModelForCausalLM` loads a saved model under transformers 4.x and 5.x
(`auto`). Importing the package registers the config with `AutoConfig` (model_type `xlstm_flax`) and, under
transformers 4.x, the models with transformers' `FlaxAutoModel` / `FlaxAutoModelForCausalLM`, for both our config
and transformers' PyTorch `xLSTMConfig` (model_type `xlstm`), so a `NX-AI/xLSTM-7b`-layout directory loads too.
Only the `xlstm-flax` command itself (`cli`) skips that at import, so that its `--help` starts without jax or
transformers: there the names below are imported, and the classes registered, on first use.
"""

import importlib
import logging
import sys

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
    "register_auto_classes": "registration",
}

__all__ = sorted(_EXPORTS)


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


def _started_as_the_command() -> bool:
    """Whether this process is the `xlstm-flax` console script or `python -m modeling_xlstm_flax.cli`."""
    if sys.argv and sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] in ("xlstm-flax", "xlstm-flax.exe"):
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and b == f"{__name__}.cli" for a, b in zip(argv, argv[1:]))


if not _started_as_the_command():
    importlib.import_module(".auto", __name__)  # registers the auto classes (idempotent)
