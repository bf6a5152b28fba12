"""The one place that imports transformers' Flax-only classes, which transformers 5 removed.

With transformers 4.x: its `FlaxPreTrainedModel`, Flax output classes and Flax generation loop (`FlaxGenerationMixin`,
used by `generation`). With transformers 5.x: the port's own base and output classes (`flax_base`) and no
`FlaxGenerationMixin` (`generation` then runs its own loop, `generation_loop`). `TRANSFORMERS_FLAX` says which.
"""

try:
    from transformers.generation.flax_utils import FlaxGenerationMixin
    from transformers.modeling_flax_outputs import FlaxBaseModelOutput, FlaxCausalLMOutput
    from transformers.modeling_flax_utils import FlaxPreTrainedModel

    TRANSFORMERS_FLAX = True
except ImportError:  # transformers >= 5
    from .flax_base import FlaxBaseModelOutput, FlaxCausalLMOutput, FlaxPreTrainedModel

    FlaxGenerationMixin = None
    TRANSFORMERS_FLAX = False

__all__ = ["FlaxBaseModelOutput", "FlaxCausalLMOutput", "FlaxGenerationMixin", "FlaxPreTrainedModel",
           "TRANSFORMERS_FLAX"]
