"""Registration with transformers' Auto classes (idempotent): `AutoConfig` always; `FlaxAutoModel` /
`FlaxAutoModelForCausalLM` where transformers has them (4.x; transformers 5 removed every Flax auto class)."""

from transformers import AutoConfig, xLSTMConfig

try:
    from transformers import FlaxAutoModel, FlaxAutoModelForCausalLM
except ImportError:  # transformers >= 5
    FlaxAutoModel = FlaxAutoModelForCausalLM = None

from .configuration_xlstm_flax import XLSTMFlaxConfig
from .modeling_flax_xlstm import FlaxXLSTMForCausalLM, FlaxXLSTMModel


class FlaxXLSTMForCausalLMFromTorchConfig(FlaxXLSTMForCausalLM):
    """Entry for transformers' `xLSTMConfig` in `FlaxAutoModelForCausalLM`: translates the config on construction
    (the model then carries an `XLSTMFlaxConfig`, which is what `save_pretrained` writes)."""

    config_class = xLSTMConfig


class FlaxXLSTMModelFromTorchConfig(FlaxXLSTMModel):
    """Entry for transformers' `xLSTMConfig` in `FlaxAutoModel`."""

    config_class = xLSTMConfig


def register_auto_classes() -> None:
    AutoConfig.register(XLSTMFlaxConfig.model_type, XLSTMFlaxConfig, exist_ok=True)
    if FlaxAutoModel is not None:
        FlaxAutoModel.register(XLSTMFlaxConfig, FlaxXLSTMModel, exist_ok=True)
        FlaxAutoModelForCausalLM.register(XLSTMFlaxConfig, FlaxXLSTMForCausalLM, exist_ok=True)
        FlaxAutoModel.register(xLSTMConfig, FlaxXLSTMModelFromTorchConfig, exist_ok=True)
        FlaxAutoModelForCausalLM.register(xLSTMConfig, FlaxXLSTMForCausalLMFromTorchConfig, exist_ok=True)
    # The Flax text-generation pipeline, task "xlstm-flax-text-generation" (idempotent).
    from .pipeline import register_pipeline

    register_pipeline()
