"""Host-side checks of model inputs and checkpoint files, run before any compute.

JAX would otherwise clamp an out-of-range embedding gather, broadcast a mis-shaped mask or fail deep inside XLA.
Checks of arrays run on concrete inputs only: inside `jax.jit` (traced inputs) they are skipped, and out-of-range ids
there are clamped into [0, vocab_size) by the embedding (see the README, "Errors and limits"). Checks of plain Python
arguments (generation options, batch sizes) run in traces too.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import jax
import numpy as np


class _DropAutoClassNote(logging.Filter):
    """transformers' Auto classes pass `trust_remote_code=True` on to the model class they resolved, whose
    `from_pretrained` then says the argument "has no effect here": on a correct remote-code load of this model that
    note is wrong, so it is dropped (only that message, only from transformers' Flax loader)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The argument `trust_remote_code` is to be used with Auto classes")


if not any(isinstance(f, _DropAutoClassNote) for f in logging.getLogger("transformers.modeling_flax_utils").filters):
    logging.getLogger("transformers.modeling_flax_utils").addFilter(_DropAutoClassNote())


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _unreadable(*xs: Any) -> bool:
    """Whether any of `xs` cannot be read on this host: traced, or a global array with shards on other processes
    (its checks run where the data is made)."""
    return any(_is_traced(x) or (isinstance(x, jax.Array) and not x.is_fully_addressable) for x in xs)


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_input_ids(input_ids: Any, vocab_size: int, name: str = "input_ids") -> None:
    """(batch, sequence) integer ids in [0, vocab_size); raises ValueError naming the first offending entry."""
    if input_ids is None:
        raise ValueError(f"{name} is required: an integer array of shape (batch, sequence)")
    if _unreadable(input_ids):
        return
    ids = np.asarray(_as_array(input_ids, name))
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, sequence), got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError(f"{name} is empty (shape {ids.shape}); batch and sequence must both be >= 1")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = _first_bad(bad)
        raise ValueError(
            f"{name}{list(where)} = {int(ids[where])} is outside the vocabulary range [0, {vocab_size}) "
            f"({int(bad.sum())} ids out of range)"
        )


def check_mask(mask: Any, input_ids: Any, name: str, binary_ints: bool = True) -> None:
    """A (batch, sequence) mask matching input_ids, with values 0/1 (or booleans)."""
    if mask is None or _unreadable(mask, input_ids):
        return
    values = np.asarray(_as_array(mask, name))
    shape = np.shape(_as_array(input_ids, "input_ids"))
    if values.shape != tuple(shape):
        raise ValueError(f"{name} has shape {values.shape}, but input_ids has shape {tuple(shape)}; they must match")
    if values.dtype.kind == "b":
        return
    if values.dtype.kind not in "iuf" or not binary_ints:
        raise ValueError(f"{name} must be booleans or 0/1 integers, got dtype {values.dtype}")
    bad = (values != 0) & (values != 1)
    if bad.any():
        where = _first_bad(bad)
        raise ValueError(f"{name}{list(where)} = {values[where].item()!r}; allowed values are 0 and 1")


def check_inputs(input_ids, attention_mask: Optional[Any], document_borders: Optional[Any], vocab_size: int):
    check_input_ids(input_ids, vocab_size)
    check_mask(attention_mask, input_ids, "attention_mask")
    check_mask(document_borders, input_ids, "document_borders")


def check_not_donated(tree: Any, name: str) -> None:
    """No array of `tree` (params, optimizer state) may be a deleted buffer: donating a tree to a jitted step
    (`sharded_train_step(donate=True)`) frees it, and any later use fails deep inside XLA."""
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array) and not _is_traced(leaf) and leaf.is_deleted():
            raise ValueError(f"{name} holds deleted arrays: they were donated to an earlier call (sharded_train_step "
                             f"donates params and opt_state unless donate=False) and freed; pass the {name} that "
                             "call returned")


def check_dropout_rng(train: Any, dropout: float, dropout_rng: Any) -> None:
    """train=True with dropout > 0 needs a dropout key."""
    if train and dropout > 0 and dropout_rng is None:
        raise ValueError(f"train=True with dropout={dropout} needs dropout_rng (e.g. jax.random.PRNGKey(0)); or "
                         "pass train=False")
# ---------------------------------------------------------------------------------------------- generate
# Longest sequence `generate` accepts (prompt + new tokens): its output buffer is allocated up front.
MAX_GENERATION_LENGTH = 1 << 24
DEFAULT_MAX_LENGTH = 20  # transformers' GenerationConfig default (transformers 5 leaves it None until generate)


def _as_array(value: Any, name: str) -> Any:
    """A list/tuple given for an array argument as a numpy array (as the model call accepts); arrays pass."""
    if not isinstance(value, (list, tuple)):
        return value
    try:
        return np.asarray(value)
    except ValueError as exc:  # ragged rows
        raise ValueError(f"{name} is a ragged list (rows of different lengths): pad the prompts on the left and "
                         "pass an attention_mask") from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_int(name: str, value: Any, low: int, high: Optional[int] = None, hint: str = "") -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        allowed = f"an int >= {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}{hint}")


def check_left_padding(attention_mask: Any) -> None:
    """`generate` continues after the last position of every row: a row that ends in padding (right padding) or has
    no token at all is refused. Padding inside or before a prompt is fine (it never touches the state)."""
    if attention_mask is None or _unreadable(attention_mask):
        return
    mask = np.asarray(attention_mask).astype(bool)
    empty = ~mask.any(axis=1)
    if empty.any():
        raise ValueError(f"attention_mask row {int(np.argmax(empty))} is all zeros: that prompt has no tokens")
    right = ~mask[:, -1]
    if right.any():
        row = int(np.argmax(right))
        raise ValueError(f"attention_mask row {row} ends with padding ({np.asarray(attention_mask)[row].tolist()}): "
                         "generate continues after the last position, so pad prompts on the left "
                         "(tokenizer.padding_side = 'left')")


def check_generation_options(generation_config: Any, kwargs: dict, prompt_length: int) -> None:
    """The length, beam and sampling options `generate` will use (`kwargs` over `generation_config`), each named with
    its value and what is allowed. Plain Python values, so this runs inside traces too."""
    from transformers import GenerationConfig

    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise ValueError(f"generation_config must be a transformers GenerationConfig, got "
                         f"{type(generation_config).__name__}")
    config = generation_config if generation_config is not None else GenerationConfig()
    get = lambda name: kwargs[name] if name in kwargs else getattr(config, name, None)  # noqa: E731
    limit = MAX_GENERATION_LENGTH
    new_tokens = get("max_new_tokens")
    if new_tokens is not None:
        _check_int("max_new_tokens", new_tokens, 1, limit - prompt_length,
                   f" (the prompt has {prompt_length} tokens; prompt + new tokens may be at most {limit})")
    elif "max_length" not in kwargs and get("max_length") in (None, DEFAULT_MAX_LENGTH) \
            and prompt_length >= DEFAULT_MAX_LENGTH:
        raise ValueError(f"no length given: the default max_length={DEFAULT_MAX_LENGTH} counts the "
                         f"prompt's {prompt_length} tokens, so nothing would be generated; pass max_new_tokens=N "
                         "(N new tokens after the prompt) or a larger max_length")
    else:  # max_length counts the prompt (an explicit 20 too, as transformers' PyTorch generate)
        max_length = get("max_length")
        if max_length is not None:
            _check_int("max_length", max_length, prompt_length + 1, limit,
                       f" (it counts the prompt's {prompt_length} tokens, so it must exceed them to generate "
                       "anything; or pass max_new_tokens)")
    for name in ("min_length", "min_new_tokens"):
        if get(name) is not None:
            _check_int(name, get(name), 0, limit)
    if new_tokens is not None and get("min_new_tokens") is not None and get("min_new_tokens") > new_tokens:
        raise ValueError(f"min_new_tokens={get('min_new_tokens')} is more than max_new_tokens={new_tokens}")
    length_penalty = get("length_penalty")
    if length_penalty is not None and (isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float))
                                       or not math.isfinite(length_penalty)):
        raise ValueError(f"length_penalty={length_penalty!r} is invalid: must be a finite number")
    _check_int("num_beams", get("num_beams") if get("num_beams") is not None else 1, 1, None,
               " (1: no beam search)")
    if get("num_return_sequences") is not None:
        _check_int("num_return_sequences", get("num_return_sequences"), 1)
    if not get("do_sample"):
        return
    temperature, top_k, top_p = get("temperature"), get("top_k"), get("top_p")
    if temperature is not None and (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
                                    or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"temperature={temperature!r} is invalid when sampling: must be a positive finite number")
    if top_k is not None:
        _check_int("top_k", top_k, 0, None, " when sampling (0: no top-k filter)")
    if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool)
                              or not math.isfinite(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} is invalid when sampling: must be in (0, 1]")


def check_prng_key(prng_key: Any) -> None:
    """None, `jax.random.PRNGKey(seed)` (shape (2,) uint32) or `jax.random.key(seed)` (a typed key, shape ())."""
    if prng_key is None or _is_traced(prng_key):
        return
    dtype, shape = getattr(prng_key, "dtype", None), tuple(getattr(prng_key, "shape", ()) or ())
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
    elif dtype is not None and np.dtype(dtype) == np.uint32 and shape == (2,):
        return
    got = f"shape {shape} {dtype}" if dtype is not None else type(prng_key).__name__
    raise ValueError(f"prng_key must be one key, jax.random.PRNGKey(seed) (shape (2,) uint32) or "
                     f"jax.random.key(seed), got {got}")


def check_generate_inputs(model: Any, input_ids: Any, attention_mask: Any, generation_config: Any,
                          kwargs: dict, prng_key: Any = None) -> tuple[Any, Any]:
    """Everything `model.generate` can check before compiling: lists become arrays (as in the model call), the prompt
    ids and mask (left padding only), the PRNG key, and the generation options (`kwargs` over `generation_config`,
    else the model's own). Returns (input_ids, attention_mask)."""
    input_ids = _as_array(input_ids, "input_ids")
    attention_mask = _as_array(attention_mask, "attention_mask")
    if generation_config is None:
        generation_config = model.generation_config
    if input_ids is not None and 0 in np.shape(input_ids):  # (shapes are known inside a trace too)
        raise ValueError(f"input_ids is empty (shape {np.shape(input_ids)}): generate continues a prompt, so give "
                         "at least one token per row (e.g. the tokenizer's bos_token_id)")
    check_prng_key(prng_key)
    check_input_ids(input_ids, model.config.vocab_size)
    check_mask(attention_mask, input_ids, "attention_mask")
    check_left_padding(attention_mask)
    check_generation_options(generation_config, kwargs, int(np.shape(input_ids)[-1]))
    return input_ids, attention_mask


# ---------------------------------------------------------------------------------------------- cache
# (the cache's own check is `cache.check_cache`)
def check_batch_size(batch_size: Any, name: str = "batch_size") -> None:
    """A positive int (Python or numpy)."""
    _check_int(name, batch_size, 1)
