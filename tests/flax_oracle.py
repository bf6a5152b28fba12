"""transformers 4.x's Flax generation loop (`FlaxGenerationMixin.generate`) as a TEST ORACLE for our models.

The package has one runtime stack under both transformers majors (its own base class and loop), so its models do
not carry what transformers' Flax loop calls: the mixin's methods (`_greedy_search`, `_beam_search`, ...) and the
generation hooks `prepare_inputs_for_generation` / `update_inputs_for_generation`. `flax_oracle(model)` gives them
to a copy of the model (same params, config and forward), here in the tests only. transformers 5 has no Flax loop:
`flax_loop()` is None there.
"""

from __future__ import annotations

import copy
from typing import Optional

_ORACLE_CLASSES: dict = {}


def flax_loop():
    """transformers' `FlaxGenerationMixin` (transformers 4.x), or None (transformers 5.x)."""
    try:
        from transformers.generation.flax_utils import FlaxGenerationMixin
    except ImportError:
        return None
    return FlaxGenerationMixin


def prepare_inputs(model, input_ids, max_length, attention_mask=None, **kwargs) -> dict:
    """The hook the Flax loop calls before its prefill: a fresh recurrent cache as `past_key_values`, the prompt's
    mask and, for a prompt of several tokens, `logits_to_keep=1` (the loop reads the last position only; a prompt
    of one token runs inside its `lax.while_loop`, whose carry must keep one structure)."""
    inputs = {"past_key_values": model.init_cache(input_ids.shape[0], max_length), "attention_mask": attention_mask}
    if input_ids.shape[1] > 1:
        inputs["logits_to_keep"] = 1
    return inputs


def update_inputs(model_outputs, model_kwargs) -> dict:
    """The hook the Flax loop calls after each step: carry the new recurrent state; no mask for generated tokens."""
    model_kwargs["past_key_values"] = model_outputs.past_key_values
    model_kwargs["attention_mask"] = None
    model_kwargs.pop("logits_to_keep", None)
    return model_kwargs


def flax_oracle(model) -> Optional[object]:
    """A shallow copy of `model` whose class also has transformers' Flax loop (its `generate` is the oracle), or
    None under transformers 5."""
    mixin = flax_loop()
    if mixin is None:
        return None
    cls = type(model)
    oracle_cls = _ORACLE_CLASSES.get(cls)
    if oracle_cls is None:
        oracle_cls = _ORACLE_CLASSES[cls] = type(f"Oracle{cls.__name__}", (mixin, cls), {
            "prepare_inputs_for_generation": lambda self, input_ids, max_length, attention_mask=None, **kw:
                prepare_inputs(self, input_ids, max_length, attention_mask),
            "update_inputs_for_generation": lambda self, outputs, kwargs: update_inputs(outputs, kwargs),
        })
    oracle = copy.copy(model)
    oracle.__class__ = oracle_cls
    return oracle
