"""The one place that imports transformers' Flax-only classes (the model base class, output classes, the Flax
generation loop and Auto classes), which transformers 5 removed."""

from transformers.generation.flax_utils import FlaxGenerationMixin
from transformers.modeling_flax_outputs import FlaxBaseModelOutput, FlaxCausalLMOutput
from transformers.modeling_flax_utils import FlaxPreTrainedModel

__all__ = ["FlaxBaseModelOutput", "FlaxCausalLMOutput", "FlaxGenerationMixin", "FlaxPreTrainedModel"]
