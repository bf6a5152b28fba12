"""Generation for the Flax xLSTM: the one path behind `model.generate`, the pipeline and `sharded_generate`, under
transformers 4 and 5 alike.

* `generate(model, ...)`: host-side checks of the prompt and options, the eos/pad defaults, left padding to a
  multiple (`pad_to_multiple_of`), then the decode loop compiled once per model, generation arguments and input
  signature (`flax_base.jitted`), or run as is inside someone else's trace.
* `generate_loop`: the loop itself in pure JAX (greedy search, sampling, beam search) over the recurrent cache, with
  transformers' `GenerationConfig` meaning (the settings, processors and warpers are in `logits_processors`).
* `cache_constraint(fn)`: while a `generate` is traced under it, every cache the loop creates or carries (the
  prefill's, each step's, beam search's reordered one) goes through `fn` (the sharded generate pins it to its
  shardings this way).

Shapes: B batch, S prompt length, L = max_length (prompt + new tokens).

The loop
--------
It reads the GenerationConfig it is given by attribute. Tokens and scores are those of transformers 4.57's Flax loop (`FlaxGenerationMixin.generate`), which
tests/test_generation_loop.py holds it against, except where that loop ignores or mishandles a setting:

* `min_new_tokens`, `repetition_penalty` and `num_return_sequences` for sampling are ignored by the Flax loop;
  here they mean what transformers' PyTorch `generate` makes of them (eos masked while fewer than
  `min_new_tokens` tokens were generated; the penalty on every token of the sequence so far, prompt padding
  included; each prompt sampled `num_return_sequences` times, rows `b * n ... b * n + n - 1`).
* `min_length` keeps the Flax loop's count, one more than PyTorch's: eos is masked while the sequence so far
  (prompt included) has at most `min_length` tokens.
* `eos_token_id` may be a list of several ids (any of them ends a row); `None` means no row ever ends.
* `min_p`, `typical_p`, `bad_words_ids`, `output_scores` / `output_logits` (greedy search, sampling) are
  implemented as transformers' PyTorch `generate` has them (the Flax loop ignores them).
* A prompt of S >= max_length tokens is a ValueError (the Flax loop writes over the prompt or fails); so is any
  setting this loop does not implement (`logits_processors.REFUSED_FIELDS`, num_return_sequences > 1 for greedy
  search, beam sampling, ...), naming the field.
* `no_repeat_ngram_size` follows transformers' processors (its Flax one fails under jax 0.10).
* The beam-search prefill runs the prompt once per batch row, not once per beam (the beams of a row start from
  the same state, so the tokens are the same; the cache and logits are copied to the beams afterwards).

How `generate` should call it
-----------------------------
The caller (a model's `generate`) resolves the settings and the inputs first; this module checks them again and
refuses what it cannot honour (ValueError naming the field), but does not pick defaults beyond transformers' own:

* `generation_config`: one `transformers.GenerationConfig` with the call's keyword arguments already merged in
  (`config = copy.deepcopy(model.generation_config); config.update(**kwargs)`), model kwargs taken out.
* Length: `max_new_tokens` wins and counts after the prompt; otherwise `max_length` counts the prompt (the Flax
  loop's special case, "an explicitly passed `max_length` equal to 20 means 20 new tokens", is not made).
* eos / pad: `pad_token_id=None` falls back to the first eos id, as transformers does; with neither, finished
  rows cannot exist and pad 0 fills nothing visible. Checkpoints without an eos id can pass `eos_token_id=None`.
* Padding: prompts must be left-padded (B, S) with `attention_mask` (B, S) 0 on the padding (the model's prefill
  keeps padding out of the state); the mask is only used for the prefill. Right padding is not detected here.
* Compile: the function is traceable; wrap it in one `jax.jit` per model and settings, e.g.
  `jax.jit(lambda p, ids, mask, key: generate_loop(model, p, ids, mask, config, key))`.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import json
import weakref
from typing import Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .flax_base import is_traced, jitted, model_key
from .checks import check_generate_inputs
from .logits_processors import (  # noqa: F401  (the settings and processors are part of this module's API)
    HANDLED_FIELDS, NO_EFFECT_FIELDS, REFUSED_FIELDS, UNSET_DEFAULTS, LoopSettings, check_generation_config,
    logits_processor, logits_warper, with_unset_defaults,
)

_LOW = -1.0e7  # transformers' score for "not a candidate" in beam search
# The function applied to every cache the loop makes or carries while a generate is traced (see `cache_constraint`).
_CACHE_CONSTRAINT: contextvars.ContextVar[Optional[Callable]] = contextvars.ContextVar("xlstm_cache_constraint",
                                                                                        default=None)


@contextlib.contextmanager
def cache_constraint(fn: Callable):
    """Within this block, the loop passes every cache it creates or carries (after the prefill, after each step, after
    beam search's reordering) through `fn`, e.g. `jax.lax.with_sharding_constraint` to the cache shardings; meant
    around the tracing of a jitted generate (`sharded_generate`)."""
    token = _CACHE_CONSTRAINT.set(fn)
    try:
        yield
    finally:
        _CACHE_CONSTRAINT.reset(token)


def constrained(cache):
    """`cache` through the active `cache_constraint` function, if any."""
    fn = _CACHE_CONSTRAINT.get()
    return cache if fn is None else fn(cache)


@flax.struct.dataclass
class GenerationOutput:
    """sequences (B * n, max_length) int32: the prompt, then the new tokens, pad after a row's eos (n: the
    returned sequences per prompt). scores: beam search: (B * n,) float32, each returned sequence's
    length-penalised log-probability; greedy search / sampling with `output_scores`: (B * n, max_length - S, V)
    float32, the processed (and, sampling, warped) scores each step chose from, as transformers' PyTorch
    `generate` returns them (positions after the loop ended are -inf; `generate` trims them to a tuple); else None.
    logits: with `output_logits`, (B * n, max_length - S, V) the raw logits per step, else None. steps: () int32,
    the number of steps the loop ran (new tokens of the longest row)."""

    sequences: jax.Array
    scores: Optional[jax.Array] = None
    logits: Optional[jax.Array] = None
    steps: Optional[jax.Array] = None


def check_logits_processors(processors) -> tuple:
    """A user's `logits_processor`: None, one callable or a list of callables, each called as
    `fn(input_ids (N, L) int32, scores (N, V) float32, cur_len () int32) -> scores` (transformers' Flax
    processor signature), after the loop's own processors. Returns a tuple; ValueError for anything else."""
    if processors is None:
        return ()
    items = list(processors) if isinstance(processors, (list, tuple)) else [processors]
    for item in items:
        if not callable(item):
            raise ValueError(f"logits_processor must be a callable or a list of callables, got "
                             f"{type(item).__name__}")
        try:
            inspect.signature(item).bind(None, None, None)
        except TypeError:
            raise ValueError(f"logits_processor {item!r} must take (input_ids, scores, cur_len), as transformers' "
                             f"Flax processors do (a PyTorch LogitsProcessor takes (input_ids, scores) torch tensors "
                             f"and cannot run here)") from None
        except ValueError:  # builtins without a signature: accepted, as transformers would
            pass
    return tuple(items)


# ---------------------------------------------------------------------------------------------- the loop
def _is_eos(tokens: jax.Array, eos: tuple) -> jax.Array:
    if not eos:
        return jnp.zeros(tokens.shape, bool)
    return jnp.any(tokens[..., None] == jnp.asarray(eos, jnp.int32), axis=-1)


def _prefill(model, params, input_ids, attention_mask, copies: int):
    """The prompt (B, S) through the model once: (last logits (B * copies, V), cache with B * copies rows), each
    row repeated `copies` times in place (rows b * copies ... b * copies + copies - 1)."""
    out = model(input_ids, attention_mask=attention_mask, params=params,
                past_key_values=constrained(model.init_cache(input_ids.shape[0])), logits_to_keep=1)
    repeat = lambda x: jnp.repeat(x, copies, axis=0) if copies > 1 else x  # noqa: E731
    return repeat(out.logits[:, -1]), constrained(jax.tree_util.tree_map(repeat, out.past_key_values))


def _step(model, params, tokens, cache):
    """tokens (N,) -> (logits (N, V), new cache): one token per row through the recurrent state."""
    out = model(tokens[:, None], params=params, past_key_values=cache)
    return out.logits[:, -1], constrained(out.past_key_values)


def generate_loop(model, params, input_ids, attention_mask, generation_config, prng_key,
                  user_processors: Sequence[Callable] = ()) -> GenerationOutput:
    """Generate with the model's recurrent cache; traceable, one `lax.while_loop` (see the module docstring).

    model: `FlaxXLSTMForCausalLM` or anything with `init_cache(batch_size)` and
        `model(ids, attention_mask=..., params=..., past_key_values=cache, logits_to_keep=1)` returning `.logits`
        (B, s, V) float32 and `.past_key_values` (batch on axis 0 of every leaf);
    params: the model's param tree; input_ids (B, S) int; attention_mask (B, S) 0/1 (left padding) or None;
    generation_config: a resolved transformers.GenerationConfig; prng_key: a jax PRNG key (sampling only);
    user_processors: callables `fn(sequences (N, L), scores (N, V), cur_len) -> scores` run after the loop's own
    processors (`check_logits_processors`).
    Returns GenerationOutput (see there).
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    s = check_generation_config(generation_config, int(input_ids.shape[1]), vocab_size)
    own = logits_processor(s)
    extra = check_logits_processors(user_processors)

    def process(sequences, scores, cur_len):
        scores = own(sequences, scores, cur_len)
        for fn in extra:
            scores = fn(sequences, scores, cur_len)
        return scores

    if s.num_beams > 1:
        return _beam_search(model, params, input_ids, attention_mask, s, process)
    return _greedy_or_sample(model, params, input_ids, attention_mask, s, prng_key, process)


def _greedy_or_sample(model, params, input_ids, attention_mask, s: LoopSettings, prng_key,
                      process) -> GenerationOutput:
    """Greedy search or sampling; rows (N,) = B * num_return_sequences, sequences (N, max_length)."""
    n = s.num_return_sequences
    N, S = input_ids.shape[0] * n, input_ids.shape[1]
    warp = logits_warper(s)

    def record(state, name, values):  # values (N, V) of the step at cur_len into state[name] (N, L - S, V)
        return lax.dynamic_update_slice(state[name], values[:, None].astype(jnp.float32),
                                        (0, state["cur_len"] - S, 0))

    def choose(state, logits):  # the token at state["cur_len"] from logits (N, V) of the token before it
        key, next_key = jax.random.split(state["key"]) if s.do_sample else (state["key"], state["key"])
        scores = process(state["sequences"], logits, state["cur_len"])
        scores = warp(scores) if s.do_sample else scores
        token = jax.random.categorical(key, scores, axis=-1) if s.do_sample else jnp.argmax(scores, -1)
        token = jnp.where(state["finished"], s.pad, token).astype(jnp.int32)
        if s.output_scores:
            state = dict(state, scores=record(state, "scores", scores))
        if s.output_logits:
            state = dict(state, logits=record(state, "logits", logits))
        return dict(state, key=next_key, token=token, finished=state["finished"] | _is_eos(token, s.eos),
                    sequences=lax.dynamic_update_slice(state["sequences"], token[:, None], (0, state["cur_len"])),
                    cur_len=state["cur_len"] + 1)

    def cond(state):
        return (state["cur_len"] < s.max_length) & ~jnp.all(state["finished"])

    def body(state):
        logits, cache = _step(model, params, state["token"], state["cache"])
        return choose(dict(state, cache=cache), logits)

    logits, cache = _prefill(model, params, input_ids, attention_mask, n)
    sequences = jnp.full((N, s.max_length), s.pad, jnp.int32).at[:, :S].set(jnp.repeat(input_ids, n, axis=0))
    key = jax.random.PRNGKey(0) if prng_key is None else prng_key
    state = dict(cur_len=jnp.array(S, jnp.int32), sequences=sequences, finished=jnp.zeros((N,), bool), key=key,
                 token=jnp.zeros((N,), jnp.int32), cache=cache)
    for name, on in (("scores", s.output_scores), ("logits", s.output_logits)):
        if on:
            state[name] = jnp.full((N, s.max_length - S, logits.shape[-1]), -jnp.inf, jnp.float32)
    state = lax.while_loop(cond, body, choose(state, logits))
    return GenerationOutput(sequences=state["sequences"], scores=state.get("scores"), logits=state.get("logits"),
                            steps=state["cur_len"] - S)


def _beam_search(model, params, input_ids, attention_mask, s: LoopSettings, process) -> GenerationOutput:
    """Beam search as transformers' Flax loop: per row K running beams and K finished hypotheses; each step takes
    the 2K best extensions of the running beams, keeps the K best that did not end as the new running beams
    (their caches gathered from the parent beams) and merges those that ended, length-penalised, into the
    finished ones. Arrays (B, K, ...) per row and beam; the model sees B * K rows."""
    B, S = input_ids.shape
    K, L = s.num_beams, s.max_length
    batch = jnp.arange(B)[:, None]

    def choose(state, logits, cache):  # logits (B * K, V) of each running beam's last token
        cur_len, running = state["cur_len"], state["running"]
        log_probs = process(running.reshape(B * K, L), jax.nn.log_softmax(logits), cur_len)
        V = log_probs.shape[-1]
        log_probs = log_probs.reshape(B, K, V) + state["running_scores"][:, :, None]
        top_scores, top_idx = lax.top_k(log_probs.reshape(B, K * V), 2 * K)  # (B, 2K)
        parent, tokens = top_idx // V, top_idx % V
        top_seqs = lax.dynamic_update_slice(running[batch, parent], tokens[:, :, None], (0, 0, cur_len))
        ended = _is_eos(tokens, s.eos)
        # the K best candidates that did not end keep running
        alive_scores = top_scores + ended * _LOW
        keep = lax.top_k(alive_scores, K)[1]
        rows = (jnp.arange(B)[:, None] * K + parent[batch, keep]).reshape(-1)
        # the ones that ended compete with the finished hypotheses, length-penalised
        done_scores = top_scores / ((cur_len + 1 - S) ** s.length_penalty)
        all_done = jnp.all(state["finished"], axis=-1, keepdims=True) & (s.early_stopping is True)
        done_scores = done_scores + (~ended | all_done) * _LOW
        merged_scores = jnp.concatenate([state["scores"], done_scores], axis=1)
        best = lax.top_k(merged_scores, K)[1]
        return dict(
            cur_len=cur_len + 1, running=top_seqs[batch, keep], running_scores=alive_scores[batch, keep],
            sequences=jnp.concatenate([state["sequences"], top_seqs], axis=1)[batch, best],
            scores=merged_scores[batch, best],
            finished=jnp.concatenate([state["finished"], ended], axis=1)[batch, best],
            cache=constrained(jax.tree_util.tree_map(lambda x: x[rows], cache)))

    def cond(state):
        if s.early_stopping == "never" and s.length_penalty > 0.0:
            best_running = state["running_scores"][:, :1] / ((L - S) ** s.length_penalty)
        else:
            best_running = state["running_scores"][:, :1] / ((state["cur_len"] - S) ** s.length_penalty)
        worst_done = jnp.where(state["finished"], jnp.min(state["scores"], axis=1, keepdims=True), _LOW)
        can_improve = jnp.any(best_running > worst_done)
        open_beams = ~(jnp.all(state["finished"]) & (s.early_stopping is True))
        return (state["cur_len"] < L) & open_beams & can_improve

    def body(state):
        logits, cache = _step(model, params, state["running"][:, :, state["cur_len"] - 1].reshape(B * K),
                              state["cache"])
        return choose(state, logits, cache)

    logits, cache = _prefill(model, params, input_ids, attention_mask, K)
    pad = jnp.full((B, K, L), s.pad, jnp.int32)
    state = dict(cur_len=jnp.array(S, jnp.int32), running=pad.at[:, :, :S].set(input_ids[:, None]),
                 running_scores=jnp.tile(jnp.array([0.0] + [_LOW] * (K - 1), jnp.float32), (B, 1)),
                 sequences=pad, scores=jnp.full((B, K), _LOW, jnp.float32), finished=jnp.zeros((B, K), bool),
                 cache=cache)
    state = lax.while_loop(cond, body, choose(state, logits, cache))
    # a row with no finished hypothesis returns its running beams
    any_done = jnp.any(state["finished"], axis=1)
    sequences = jnp.where(any_done[:, None, None], state["sequences"], state["running"])
    scores = jnp.where(any_done[:, None], state["scores"], state["running_scores"])
    n = s.num_return_sequences
    return GenerationOutput(sequences=sequences[:, :n].reshape(B * n, L), scores=scores[:, :n].reshape(B * n),
                            steps=state["cur_len"] - S)


# ---------------------------------------------------------------------------------------------- generate
def _is_plain(value) -> bool:
    """A generation argument that can key a compiled program: None, bool, int, float, str, or lists/tuples of them."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _config_key(config) -> Optional[str]:
    return None if config is None else json.dumps(config.to_dict(), sort_keys=True, default=str)


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
    """The decode loop itself (traceable): `generate_loop` with the resolved config."""
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
