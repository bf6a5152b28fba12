"""`FlaxAutoModel` and `FlaxAutoModelForCausalLM` under every supported transformers major, and the registration
with transformers' Auto classes (`register_auto_classes`, idempotent: `AutoConfig` always; `FlaxAutoModel` /
`FlaxAutoModelForCausalLM` where transformers has them, 4.x; the text-generation pipeline task).

Importing this module registers (it is what `from modeling_xlstm_flax import <any public name>` imports first);
`import modeling_xlstm_flax` alone registers nothing, so that the command line starts without transformers.

`from modeling_xlstm_flax import FlaxAutoModelForCausalLM` works under both:

* transformers 4.x: transformers' own classes, with this port registered in them for our config (`xlstm_flax`) and
  transformers' PyTorch `xLSTMConfig` (`xlstm`);
* transformers 5.x (which removed every Flax auto class): `_FlaxAutoClass` subclasses of the same names and calls,
  `from_pretrained(folder_or_hub_id, *args, **kwargs)` / `from_config(config, **kwargs)` / `register(config_class,
  model_class)`, resolving the config the way `AutoConfig` does (model_type `xlstm_flax` or `xlstm`; another
  model_type is a `ValueError` naming it and the supported ones).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, xLSTMConfig

from .configuration_xlstm_flax import XLSTMFlaxConfig
from .modeling_flax_xlstm import FlaxXLSTMForCausalLM, FlaxXLSTMModel

try:  # transformers 4.x
    from transformers import FlaxAutoModel as _TransformersFlaxAutoModel
    from transformers import FlaxAutoModelForCausalLM as _TransformersFlaxAutoModelForCausalLM
except ImportError:  # transformers >= 5 removed every Flax auto class
    _TransformersFlaxAutoModel = _TransformersFlaxAutoModelForCausalLM = None

__all__ = ["FlaxAutoModel", "FlaxAutoModelForCausalLM", "register_auto_classes"]

# The keyword arguments of `from_pretrained` that also locate the config (a Hub id's download options).
_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder", "proxies")


class _FlaxAutoClass:
    """transformers 4.x's Flax auto-class calls for the models this package registers (transformers 5.x)."""

    _model_mapping: dict[str, type]  # config model_type -> model class (both types load into our classes)

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(f"{type(self).__name__} is designed to be instantiated with "
                               f"`{type(self).__name__}.from_pretrained(...)` or `.from_config(config)`")

    @classmethod
    def _model_class(cls, config) -> type:
        model_type = getattr(config, "model_type", None)
        if model_type not in cls._model_mapping:
            raise ValueError(f"Unrecognized configuration class {type(config).__name__} (model_type "
                             f"{model_type!r}) for {cls.__name__}; model types supported: "
                             f"{', '.join(sorted(cls._model_mapping))}")
        return cls._model_mapping[model_type]

    @classmethod
    def from_config(cls, config, **kwargs: Any):
        """A randomly initialised model for `config` (`XLSTMFlaxConfig` or transformers' `xLSTMConfig`)."""
        return cls._model_class(config)(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs: Any):
        """The model saved in a folder (or Hub id): its config.json says which class; the weights load as the
        class's `from_pretrained` loads them (every keyword argument passed on)."""
        config = kwargs.pop("config", None)
        if config is None:
            hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
            config = XLSTMFlaxConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        model_class = cls._model_class(config)
        return model_class.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    @classmethod
    def register(cls, config_class, model_class, exist_ok: bool = False) -> None:
        """Map `config_class.model_type` to `model_class` (as transformers' auto classes do)."""
        model_type = config_class.model_type
        if model_type in cls._model_mapping and not exist_ok and cls._model_mapping[model_type] is not model_class:
            raise ValueError(f"'{model_type}' is already used by {cls._model_mapping[model_type].__name__}")
        cls._model_mapping[model_type] = model_class


class FlaxXLSTMForCausalLMFromTorchConfig(FlaxXLSTMForCausalLM):
    """Entry for transformers' `xLSTMConfig` in transformers 4's `FlaxAutoModelForCausalLM`: translates the config on
    construction (the model then carries an `XLSTMFlaxConfig`, which is what `save_pretrained` writes)."""

    config_class = xLSTMConfig


class FlaxXLSTMModelFromTorchConfig(FlaxXLSTMModel):
    """Entry for transformers' `xLSTMConfig` in transformers 4's `FlaxAutoModel`."""

    config_class = xLSTMConfig


def register_auto_classes() -> None:
    """Register our config with `AutoConfig`, our models with transformers 4's Flax auto classes (for our config and
    transformers' `xLSTMConfig`), and the text-generation pipeline task (`pipeline.register_pipeline`)."""
    AutoConfig.register(XLSTMFlaxConfig.model_type, XLSTMFlaxConfig, exist_ok=True)
    if _TransformersFlaxAutoModel is not None:
        _TransformersFlaxAutoModel.register(XLSTMFlaxConfig, FlaxXLSTMModel, exist_ok=True)
        _TransformersFlaxAutoModelForCausalLM.register(XLSTMFlaxConfig, FlaxXLSTMForCausalLM, exist_ok=True)
        _TransformersFlaxAutoModel.register(xLSTMConfig, FlaxXLSTMModelFromTorchConfig, exist_ok=True)
        _TransformersFlaxAutoModelForCausalLM.register(xLSTMConfig, FlaxXLSTMForCausalLMFromTorchConfig,
                                                       exist_ok=True)
    from .pipeline import register_pipeline

    register_pipeline()


register_auto_classes()
if _TransformersFlaxAutoModel is not None:  # transformers 4.x: its own classes, registered
    FlaxAutoModel = _TransformersFlaxAutoModel
    FlaxAutoModelForCausalLM = _TransformersFlaxAutoModelForCausalLM
else:

    class FlaxAutoModel(_FlaxAutoClass):  # noqa: D101 (the module docstring)
        _model_mapping = {"xlstm_flax": FlaxXLSTMModel, "xlstm": FlaxXLSTMModel}

    class FlaxAutoModelForCausalLM(_FlaxAutoClass):  # noqa: D101
        _model_mapping = {"xlstm_flax": FlaxXLSTMForCausalLM, "xlstm": FlaxXLSTMForCausalLM}
