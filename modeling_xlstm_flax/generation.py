"""Generation for the Flax xLSTM: the one path behind `model.generate`, the pipeline and `sharded_generate`.

* `generate(model, ...)`: host-side checks of the prompt and options, the eos/pad defaults, left padding to a
  multiple (`pad_to_multiple_of`), then the decode loop compiled once per model, generation arguments and input
  signature (`jitted`), or run as is inside someone else's trace.
* the loop is our own (`generation_loop`: greedy, sampling, beam search) under transformers 4 and 5 alike; it gives
  transformers 4.x's Flax loop's tokens (tested against it), which is kept only as a test oracle: the model's
  `prepare_inputs_for_generation` / `update_inputs_for_generation` (defined here: `prepare_inputs`,
  `update_inputs`) make the recurrent state its cache.
* `cache_constraint(fn)`: while a `generate` is traced under it, every cache the loop creates or carries goes
  through `fn` (the sharded generate pins it to its shardings this way).

Shapes: B batch, S prompt length, L = max_length (prompt + new tokens).
"""

from __future__ import annotations

import copy
import json
import weakref
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .generation_loop import (  # noqa: F401  (cache_constraint: the sharded steps' way in)
    cache_constraint, check_logits_processors, constrained as _constrained, generate_loop, with_unset_defaults,
)
from .input_checks import check_generate_inputs

# Compiled functions per model: {model: {kind: {key: jitted fn}}}; bounded, never keeps a model alive.
_COMPILED: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_MAX_COMPILED_PER_MODEL = 32


def jitted(model, kind: str, key, build: Callable[[], Any]) -> Any:
    """The compiled function stored for `model` under (`kind`, `key`), built by `build()` on first use. The one
    cache of compiled programs per model: kinds "forward" (`model(...)`), "generate" (`model.generate`) and the
    sharded steps' "sharded_forward", "sharded_loss_and_grad", "sharded_train_step", "sharded_generate"; at most
    `_MAX_COMPILED_PER_MODEL` per kind (the oldest is dropped). What `build` returns must not hold `model` strongly
    (use a weakref), or the model is never freed."""
    compiled = _COMPILED.setdefault(model, {}).setdefault(kind, {})
    fn = compiled.get(key)
    if fn is None:
        fn = build()
        if len(compiled) >= _MAX_COMPILED_PER_MODEL:
            compiled.pop(next(iter(compiled)))
        compiled[key] = fn
    return fn


def forget_compiled(model) -> None:
    """Drop every compiled program kept for `model` (after its module was rebuilt)."""
    _COMPILED.pop(model, None)


def model_key(model) -> tuple:
    """What a compiled program of `model` depends on besides its arguments: the module object and the config's
    current values (a config field changed after a call gives a new program, never a stale one)."""
    return id(model.module), repr(sorted(vars(model.config).items()))


def prepare_inputs(model, input_ids, max_length, attention_mask=None) -> dict:
    """Prefill inputs for the loop: a fresh cache, the prompt's mask and, for a prompt of several tokens,
    `logits_to_keep=1` (the loop reads the last position only). A prompt of one token runs inside the loop's
    `lax.while_loop`, whose carry must keep one structure, so it gets no `logits_to_keep`."""
    inputs = {"past_key_values": _constrained(model.init_cache(input_ids.shape[0], max_length)),
              "attention_mask": attention_mask}
    if input_ids.shape[1] > 1 and model.has_lm_head:
        inputs["logits_to_keep"] = 1
    return inputs


def update_inputs(model_outputs, model_kwargs) -> dict:
    """After each call: carry the new state; generated tokens are never padding, so no mask is needed."""
    model_kwargs["past_key_values"] = _constrained(model_outputs.past_key_values)
    model_kwargs["attention_mask"] = None
    model_kwargs.pop("logits_to_keep", None)
    return model_kwargs


def _is_plain(value) -> bool:
    """A generation argument that can key a compiled program: None, bool, int, float, str, or lists/tuples of them."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _config_key(config) -> Optional[str]:
    return None if config is None else json.dumps(config.to_dict(), sort_keys=True, default=str)


def is_traced(*arrays) -> bool:
    """Whether any leaf of `arrays` is a JAX tracer (we are inside someone's jit/grad/vmap)."""
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(arrays))


def pad_prompt(model, input_ids, attention_mask, generation_config, kwargs: dict, multiple: Optional[int]):
    """Left-pad the prompt (B, S) to a multiple of `multiple` tokens, masked, so prompts of different lengths share
    one compiled program. Returns (input_ids, attention_mask, kwargs, pad); `max_length` / `min_length` are shifted
    so they keep counting the unpadded prompt."""
    if multiple is None:
        return input_ids, attention_mask, kwargs, 0
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"pad_to_multiple_of={multiple!r} is invalid: must be a positive int")
    pad = -input_ids.shape[1] % multiple
    xp = jnp if is_traced(input_ids) else np
    if attention_mask is None:  # always a mask, so a prompt of exactly the bucket length shares the program
        attention_mask = xp.ones(input_ids.shape, dtype="i4")
    if not pad:
        return input_ids, attention_mask, kwargs, 0
    kwargs = dict(kwargs)
    config = with_unset_defaults(generation_config if generation_config is not None else model.generation_config)
    pad_id = kwargs.get("pad_token_id", config.pad_token_id)
    pad_id = kwargs.get("eos_token_id", config.eos_token_id) if pad_id is None else pad_id
    pad_id = 0 if pad_id is None else int(np.ravel(pad_id)[0])
    input_ids = xp.pad(input_ids, ((0, 0), (pad, 0)), constant_values=pad_id)
    attention_mask = xp.pad(attention_mask, ((0, 0), (pad, 0)))
    if kwargs.get("max_new_tokens", config.max_new_tokens) is None:  # max_length counts the prompt
        kwargs["max_length"] = kwargs.get("max_length", config.max_length) + pad
    if kwargs.get("min_length", config.min_length):
        kwargs["min_length"] = kwargs.get("min_length", config.min_length) + pad
    return input_ids, attention_mask, kwargs, pad


def resolve_config(model, generation_config, kwargs: dict):
    """One GenerationConfig for our loop: the given one (or the model's), the call's `kwargs` merged in (an unknown
    name is a TypeError naming it), transformers 4's defaults for what transformers 5 leaves None. Length as in
    transformers' PyTorch `generate`: `max_new_tokens` counts after the prompt, else `max_length` counts the prompt
    (an explicit `max_length=20` too: transformers 4's Flax loop took it as 20 new tokens)."""
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    unused = config.update(**kwargs)
    if unused:
        raise TypeError(f"unknown generation arguments: {sorted(unused)} (neither GenerationConfig fields nor "
                        "generate arguments)")
    return with_unset_defaults(config)  # transformers 5 leaves these None until its generate fills them in


def run_loop(model, input_ids, attention_mask, generation_config, prng_key, params, kwargs: dict,
             processors: tuple = ()):
    """The decode loop itself (traceable): `generation_loop.generate_loop` with the resolved config."""
    config = resolve_config(model, generation_config, kwargs)
    params = model.params if params is None else params
    prng_key = jax.random.PRNGKey(0) if prng_key is None else prng_key  # transformers' default
    return generate_loop(model, params, input_ids, attention_mask, config, prng_key, processors)


def _finish(out, pad: int):
    """The padding cut from the sequences; per-step scores / logits (B * n, max_length - S, V) become a tuple of
    (B * n, V) arrays, one per step the loop ran, as transformers returns them (outside a trace only)."""
    if pad:
        out = out.replace(sequences=out.sequences[:, pad:])
    per_step = {name: getattr(out, name) for name in ("scores", "logits")
                if getattr(out, name) is not None and getattr(out, name).ndim == 3}
    if per_step and not is_traced(out.steps):
        steps = int(out.steps)
        out = out.replace(**{name: tuple(value[:, i] for i in range(steps)) for name, value in per_step.items()})
    return out


def generate(model, input_ids, generation_config=None, prng_key=None, trace: bool = True, params=None,
             logits_processor=None, *, attention_mask=None, pad_to_multiple_of: Optional[int] = None, **kwargs):
    """`model.generate`: see `FlaxXLSTMPreTrainedModel.generate`."""
    if not getattr(model, "has_lm_head", True):
        raise TypeError(f"{type(model).__name__} is the xLSTM backbone (hidden states, no LM head) and cannot "
                        "generate: load the model with FlaxXLSTMForCausalLM")
    processors = check_logits_processors(logits_processor)
    input_ids, attention_mask = check_generate_inputs(model, input_ids, attention_mask, generation_config, kwargs,
                                                      prng_key)
    input_ids, attention_mask, kwargs, pad = pad_prompt(model, input_ids, attention_mask, generation_config, kwargs,
                                                        pad_to_multiple_of)
    if (not trace or processors or not all(_is_plain(v) for v in kwargs.values())
            or is_traced(input_ids, attention_mask, params, prng_key)):
        out = run_loop(model, input_ids, attention_mask, generation_config, prng_key, params, kwargs, processors)
    else:
        key = (_config_key(generation_config), _config_key(model.generation_config), repr(sorted(kwargs.items())),
               attention_mask is not None, model_key(model))
        model_ref = weakref.ref(model)  # the compiled function must not keep the model alive

        def build():
            return jax.jit(lambda p, ids, mask, rng: run_loop(model_ref(), ids, mask, generation_config, rng, p,
                                                              kwargs))

        run = jitted(model, "generate", key, build)
        params = model.params if params is None else params
        prng_key = jax.random.PRNGKey(0) if prng_key is None else prng_key  # transformers' default
        out = run(params, input_ids, attention_mask, prng_key)
    return _finish(out, pad)
