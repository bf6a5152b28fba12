"""The one place that imports transformers' Flax-only classes, which transformers 5 removed.

With transformers 4.x: its `FlaxPreTrainedModel` and Flax output classes. With transformers 5.x: the port's own base
and output classes (`flax_base`). `TRANSFORMERS_FLAX` says which. Generation never uses transformers' Flax loop (it
is our own `generation_loop` under both majors; transformers 4.x's loop is only a test oracle).
"""

try:
    from transformers.modeling_flax_outputs import FlaxBaseModelOutput, FlaxCausalLMOutput
    from transformers.modeling_flax_utils import FlaxPreTrainedModel

    TRANSFORMERS_FLAX = True
except ImportError:  # transformers >= 5
    from .flax_base import FlaxBaseModelOutput, FlaxCausalLMOutput, FlaxPreTrainedModel

    TRANSFORMERS_FLAX = False

__all__ = ["FlaxBaseModelOutput", "FlaxCausalLMOutput", "FlaxPreTrainedModel", "TRANSFORMERS_FLAX"]
