"""xlstm-flax: the xLSTM language model of xlstm-jax in Flax, as Hugging Face `FlaxPreTrainedModel`s.

Importing the package registers the config with `AutoConfig` (model_type `xlstm_flax`) and the models with
`FlaxAutoModel` / `FlaxAutoModelForCausalLM`, for both our config and transformers' PyTorch `xLSTMConfig`
(model_type `xlstm`), so a `NX-AI/xLSTM-7b`-layout directory loads with `from_pt=True`.
"""

from .safe_output import record_dropped_interrupts

record_dropped_interrupts()  # before jax loads: a Ctrl-C its gc callback drops is still seen by the commands

from .configuration_xlstm_flax import XLSTMFlaxConfig, load_preset, preset_names  # noqa: E402
from .modeling_flax_xlstm import (  # noqa: E402
    FlaxXLSTMForCausalLM,
    FlaxXLSTMModel,
    FlaxXLSTMPreTrainedModel,
    stack_block_params,
    unstack_block_params,
)
from .registration import register_auto_classes  # noqa: E402

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "XLSTMFlaxConfig", "FlaxXLSTMForCausalLM", "FlaxXLSTMModel", "FlaxXLSTMPreTrainedModel", "load_preset",
    "preset_names", "stack_block_params", "unstack_block_params", "register_auto_classes",
]
