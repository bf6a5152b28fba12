"""Our own generation loop in pure JAX: greedy search, sampling and beam search over the recurrent xLSTM cache,
with transformers' `GenerationConfig` meaning. It does not need transformers' Flax generation code (gone in
transformers 5); it imports nothing from transformers and reads the GenerationConfig it is given by attribute.

Tokens and scores are those of transformers 4.57's Flax loop (`FlaxGenerationMixin.generate`), which
tests/test_generation_loop.py holds it against, except where that loop ignores or mishandles a setting:

* `min_new_tokens`, `repetition_penalty` and `num_return_sequences` for sampling are ignored by the Flax loop;
  here they mean what transformers' PyTorch `generate` makes of them (eos masked while fewer than
  `min_new_tokens` tokens were generated; the penalty on every token of the sequence so far, prompt padding
  included; each prompt sampled `num_return_sequences` times, rows `b * n ... b * n + n - 1`).
* `min_length` keeps the Flax loop's count, one more than PyTorch's: eos is masked while the sequence so far
  (prompt included) has at most `min_length` tokens.
* `eos_token_id` may be a list of several ids (any of them ends a row); `None` means no row ever ends.
* A prompt of S >= max_length tokens is a ValueError (the Flax loop writes over the prompt or fails); so is
  any setting the Flax loop silently ignores and this loop does not implement (bad_words_ids, typical_p,
  output_scores, num_return_sequences > 1 for greedy search, ...), naming the field.
* `no_repeat_ngram_size` follows transformers' processors (its Flax one fails under jax 0.10).
* The beam-search prefill runs the prompt once per batch row, not once per beam (the beams of a row start from
  the same state, so the tokens are the same; the cache and logits are copied to the beams afterwards).

How `generate` should call it
-----------------------------
The caller (a model's `generate`) resolves the settings and the inputs first; this module checks them again and
refuses what it cannot honour (ValueError naming the field), but does not pick defaults beyond transformers' own:

* `generation_config`: one `transformers.GenerationConfig` with the call's keyword arguments already merged in
  (`config = copy.deepcopy(model.generation_config); config.update(**kwargs)`), model kwargs taken out.
* Length: `max_new_tokens` wins and counts after the prompt; otherwise `max_length` counts the prompt. The Flax
  loop's special case ("an explicitly passed `max_length` equal to 20 means 20 new tokens") is the caller's to
  apply if wanted (set `max_new_tokens` instead).
* eos / pad: `pad_token_id=None` falls back to the first eos id, as transformers does; with neither, finished
  rows cannot exist and pad 0 fills nothing visible. Checkpoints without an eos id can pass `eos_token_id=None`.
* Padding: prompts must be left-padded (B, S) with `attention_mask` (B, S) 0 on the padding (the model's prefill
  keeps padding out of the state); the mask is only used for the prefill. Right padding is not detected here.
* Compile: the function is traceable; wrap it in one `jax.jit` per model and settings, e.g.
  `jax.jit(lambda p, ids, mask, key: generate_loop(model, p, ids, mask, config, key))`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_LOW = -1.0e7  # transformers' score for "not a candidate" in beam search

# Fields this loop implements (see `check_generation_config`), and fields that cannot change its result.
HANDLED_FIELDS = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "num_beams",
    "num_return_sequences", "temperature", "top_k", "top_p", "repetition_penalty", "length_penalty",
    "early_stopping", "no_repeat_ngram_size", "eos_token_id", "pad_token_id", "forced_bos_token_id",
    "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens",
})
NO_EFFECT_FIELDS = frozenset({
    "bos_token_id", "decoder_start_token_id", "use_cache", "return_dict_in_generate", "transformers_version",
    "cache_implementation", "cache_config", "return_legacy_cache", "compile_config", "disable_compile",
    "prefill_chunk_size", "low_memory", "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "assistant_lookbehind", "target_lookbehind", "max_matching_ngram_size",
})


# GenerationConfig fields transformers 5 keeps as None until its `generate` fills in global defaults (the values
# transformers 4's GenerationConfig holds from the start): read with those defaults under both majors.
UNSET_DEFAULTS = {"max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
                  "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0,
                  "no_repeat_ngram_size": 0, "num_return_sequences": 1}


def with_unset_defaults(config):
    """`config`, or a copy of it with the UNSET_DEFAULTS fields that are None set to those defaults."""
    unset = {name: value for name, value in UNSET_DEFAULTS.items() if getattr(config, name, None) is None}
    if not unset:
        return config
    config = copy.copy(config)
    for name, value in unset.items():
        setattr(config, name, value)
    return config


@flax.struct.dataclass
class GenerationOutput:
    """sequences (B * n, max_length) int32: the prompt, then the new tokens, pad after a row's eos (n: the
    returned sequences per prompt); scores (B * n,) float32: beam search's length-penalised log-probability of
    each returned sequence, else None."""

    sequences: jax.Array
    scores: Optional[jax.Array] = None


class LoopSettings(NamedTuple):
    """A checked GenerationConfig as Python constants (closed over by the traced loop)."""

    max_length: int
    prompt_length: int
    min_length: int  # eos masked while cur_len <= min_length (the Flax loop's count); -1: off
    min_new_tokens: int  # eos masked while cur_len - prompt_length < min_new_tokens; 0: off
    eos: tuple
    pad: int
    do_sample: bool
    num_beams: int
    num_return_sequences: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    length_penalty: float
    early_stopping: Any
    forced_bos: Optional[int]
    forced_eos: tuple
    suppress: tuple
    begin_suppress: tuple


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"generation_config.{name}={value!r} is not supported by the xLSTM generation loop: "
                      f"allowed {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and math.isfinite(v)


def _int(config, name: str, low: int, default: int) -> int:
    value = getattr(config, name, None)
    if value is None:
        return default
    if not _is_int(value) or value < low:
        raise _bad(name, value, f"None or an int >= {low}")
    return int(value)


def _float(config, name: str, ok: Callable[[float], bool], allowed: str) -> float:
    """A number passing `ok`; None means 1.0 (the default of every such field here)."""
    value = getattr(config, name, None)
    value = 1.0 if value is None else value
    if not _is_number(value) or not ok(value):
        raise _bad(name, value, allowed)
    return float(value)


def _ids(config, name: str) -> tuple:
    """None, an id or a list of ids -> a tuple of ints >= 0."""
    value = getattr(config, name, None)
    if value is None:
        return ()
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(_is_int(v) and v >= 0 for v in values):
        raise _bad(name, value, "None, a token id >= 0 or a non-empty list of them")
    return tuple(int(v) for v in values)


def check_generation_config(config, prompt_length: int) -> LoopSettings:
    """Check a resolved GenerationConfig for a prompt of `prompt_length` tokens; ValueError naming the first field
    the loop cannot honour. Fields outside HANDLED_FIELDS and NO_EFFECT_FIELDS must keep transformers' default
    (None and False count as off); fields a GenerationConfig() does not have are not read by transformers either
    and are ignored."""
    config = with_unset_defaults(config)
    defaults = type(config)().to_dict()
    for name, value in config.to_dict().items():
        if name.startswith("_") or name in HANDLED_FIELDS or name in NO_EFFECT_FIELDS or name not in defaults:
            continue
        if value is not None and value is not False and value != defaults[name]:
            raise _bad(name, value, f"only its default {defaults[name]!r} (this loop has no such feature)")
    if getattr(config, "forced_decoder_ids", None):  # not a GenerationConfig() field, but the Flax loop reads it
        raise _bad("forced_decoder_ids", config.forced_decoder_ids, "None (this loop has no such feature)")
    do_sample = getattr(config, "do_sample", None)
    do_sample = False if do_sample is None else do_sample  # (None: transformers' "not set", greedy)
    if not isinstance(do_sample, bool):
        raise _bad("do_sample", do_sample, "True or False")
    num_beams = _int(config, "num_beams", 1, 1)
    if do_sample and num_beams > 1:
        raise _bad("num_beams", num_beams, "1 when do_sample=True (beam sampling is not implemented)")
    num_return = _int(config, "num_return_sequences", 1, 1)
    if num_beams > 1 and num_return > num_beams:
        raise _bad("num_return_sequences", num_return, f"1 ... num_beams={num_beams}")
    if num_beams == 1 and not do_sample and num_return != 1:
        raise _bad("num_return_sequences", num_return, "1 for greedy search (use num_beams or do_sample=True)")
    max_new = _int(config, "max_new_tokens", 1, 0)
    max_length = prompt_length + max_new if max_new else getattr(config, "max_length", None)
    if not _is_int(max_length) or max_length <= prompt_length:
        raise _bad("max_length", max_length, f"an int > the prompt length {prompt_length} (it counts the prompt), "
                   "or set max_new_tokens")
    min_length = _int(config, "min_length", -1, -1)
    if min_length > max_length:
        raise _bad("min_length", min_length, f"at most max_length={max_length}")
    eos = _ids(config, "eos_token_id")
    pad = getattr(config, "pad_token_id", None)
    if pad is not None and not (_is_int(pad) and pad >= 0):
        raise _bad("pad_token_id", pad, "None or a token id >= 0")
    pad = int(pad) if pad is not None else (eos[0] if eos else 0)
    temperature = _float(config, "temperature", lambda v: v > 0, "a number > 0 when sampling") if do_sample else 1.0
    top_p = _float(config, "top_p", lambda v: 0 <= v <= 1, "a number in [0, 1] when sampling") if do_sample else 1.0
    penalty = _float(config, "repetition_penalty", lambda v: v > 0, "a number > 0 (1.0: off)")
    length_penalty = _float(config, "length_penalty", lambda v: True, "a finite number")
    early_stopping = getattr(config, "early_stopping", None)
    early_stopping = False if early_stopping is None else early_stopping
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise _bad("early_stopping", early_stopping, "True, False or 'never'")
    forced_bos = _ids(config, "forced_bos_token_id")
    if len(forced_bos) > 1:
        raise _bad("forced_bos_token_id", config.forced_bos_token_id, "None or one token id")
    return LoopSettings(
        max_length=int(max_length), prompt_length=prompt_length, min_length=min_length,
        min_new_tokens=_int(config, "min_new_tokens", 0, 0), eos=eos, pad=pad, do_sample=do_sample,
        num_beams=num_beams, num_return_sequences=num_return, temperature=temperature,
        top_k=_int(config, "top_k", 0, 0) if do_sample else 0, top_p=top_p, repetition_penalty=penalty,
        no_repeat_ngram_size=_int(config, "no_repeat_ngram_size", 0, 0), length_penalty=length_penalty,
        early_stopping=early_stopping,
        forced_bos=forced_bos[0] if forced_bos else None, forced_eos=_ids(config, "forced_eos_token_id"),
        suppress=_ids(config, "suppress_tokens"), begin_suppress=_ids(config, "begin_suppress_tokens"))


# ---------------------------------------------------------------------------------------------- logits processing
def _id_mask(ids: tuple, vocab_size: int) -> np.ndarray:
    """(V,) bool, True at the given ids (ids outside the vocabulary match nothing)."""
    return np.isin(np.arange(vocab_size), np.asarray(ids, dtype=np.int64))


def _seen_tokens(sequences: jax.Array, valid: jax.Array, vocab_size: int) -> jax.Array:
    """(N, V) bool: token v occurs in sequences (N, L) at a position where valid (N, L) is True."""
    rows = jnp.arange(sequences.shape[0])[:, None]
    counts = jnp.zeros((sequences.shape[0], vocab_size), jnp.int32).at[rows, sequences].add(valid.astype(jnp.int32))
    return counts > 0


def _banned_ngram_tokens(sequences: jax.Array, cur_len: jax.Array, n: int, vocab_size: int) -> jax.Array:
    """(N, V) bool: tokens that would repeat an n-gram of sequences[:, :cur_len] after its last n - 1 tokens."""
    N, L = sequences.shape
    starts = L - n + 1  # n-grams that fit in the buffer: start positions 0 .. L - n
    if starts <= 0:
        return jnp.zeros((N, vocab_size), bool)
    prefix = lax.dynamic_slice(sequences, (0, jnp.maximum(cur_len - (n - 1), 0)), (N, n - 1))
    match = jnp.broadcast_to(jnp.arange(starts)[None] <= cur_len - n, (N, starts))  # the n-gram is complete
    for j in range(n - 1):
        match = match & (sequences[:, j:j + starts] == prefix[:, j:j + 1])
    return _seen_tokens(sequences[:, n - 1:n - 1 + starts], match, vocab_size) & (cur_len >= n - 1)


def logits_processor(s: LoopSettings) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """(sequences (N, L) int32, scores (N, V) float32, cur_len () int32) -> scores, where cur_len is the position
    the next token goes to. Repetition penalty first (transformers' PyTorch order), then in the Flax loop's order:
    min length / min new tokens, forced BOS, forced EOS, suppressed tokens, begin-suppressed tokens, no-repeat
    n-grams. Used on logits (greedy, sampling) and on log-probabilities (beam search), as transformers does."""

    def process(sequences, scores, cur_len):
        V = scores.shape[-1]
        inf = jnp.full_like(scores, -jnp.inf)
        if s.repetition_penalty != 1.0:
            seen = _seen_tokens(sequences, jnp.arange(sequences.shape[1])[None] < cur_len, V)
            p = s.repetition_penalty
            scores = jnp.where(seen, jnp.where(scores < 0, scores * p, scores / p), scores)
        if s.eos:
            eos = _id_mask(s.eos, V)
            no_eos = jnp.where(eos, -jnp.inf, scores)
            if s.min_length >= 0:
                scores = jnp.where(cur_len <= s.min_length, no_eos, scores)
            if s.min_new_tokens:
                scores = jnp.where(cur_len - s.prompt_length < s.min_new_tokens, no_eos, scores)
        if s.forced_bos is not None:
            scores = jnp.where(cur_len == 1, jnp.where(_id_mask((s.forced_bos,), V), 0.0, inf), scores)
        if s.forced_eos:
            scores = jnp.where(cur_len == s.max_length - 1, jnp.where(_id_mask(s.forced_eos, V), 0.0, inf), scores)
        if s.suppress:
            scores = jnp.where(_id_mask(s.suppress, V), -jnp.inf, scores)
        if s.begin_suppress:
            begin = s.prompt_length + (1 if s.prompt_length == 1 and s.forced_bos is not None else 0)
            scores = jnp.where((cur_len == begin) & _id_mask(s.begin_suppress, V), -jnp.inf, scores)
        if s.no_repeat_ngram_size:
            banned = _banned_ngram_tokens(sequences, cur_len, s.no_repeat_ngram_size, V)
            scores = jnp.where(banned, -jnp.inf, scores)
        return scores

    return process


def logits_warper(s: LoopSettings) -> Callable[[jax.Array], jax.Array]:
    """scores (N, V) -> scores for sampling: temperature, then top-k, then top-p (filtered tokens get -inf)."""

    def warp(scores):
        rows = jnp.arange(scores.shape[0])[:, None]
        if s.temperature != 1.0:
            scores = scores / s.temperature
        if s.top_k:
            values, idx = lax.top_k(scores, min(s.top_k, scores.shape[-1]))
            scores = jnp.full_like(scores, -jnp.inf).at[rows, idx].set(values)
        if s.top_p < 1.0:
            values, idx = lax.top_k(scores, scores.shape[-1])  # descending
            below = jax.nn.softmax(values, axis=-1).cumsum(axis=-1) < s.top_p
            keep = jnp.concatenate([jnp.ones_like(below[:, :1]), below[:, :-1]], axis=1)  # mass before each < top_p
            scores = jnp.full_like(scores, -jnp.inf).at[rows, idx].set(jnp.where(keep, values, -jnp.inf))
        return scores

    return warp


# ---------------------------------------------------------------------------------------------- the loop
def _is_eos(tokens: jax.Array, eos: tuple) -> jax.Array:
    if not eos:
        return jnp.zeros(tokens.shape, bool)
    return jnp.any(tokens[..., None] == jnp.asarray(eos, jnp.int32), axis=-1)


def _prefill(model, params, input_ids, attention_mask, copies: int):
    """The prompt (B, S) through the model once: (last logits (B * copies, V), cache with B * copies rows), each
    row repeated `copies` times in place (rows b * copies ... b * copies + copies - 1)."""
    out = model(input_ids, attention_mask=attention_mask, params=params,
                past_key_values=model.init_cache(input_ids.shape[0]), logits_to_keep=1)
    repeat = lambda x: jnp.repeat(x, copies, axis=0) if copies > 1 else x  # noqa: E731
    return repeat(out.logits[:, -1]), jax.tree_util.tree_map(repeat, out.past_key_values)


def _step(model, params, tokens, cache):
    """tokens (N,) -> (logits (N, V), new cache): one token per row through the recurrent state."""
    out = model(tokens[:, None], params=params, past_key_values=cache)
    return out.logits[:, -1], out.past_key_values


def generate_loop(model, params, input_ids, attention_mask, generation_config, prng_key) -> GenerationOutput:
    """Generate with the model's recurrent cache; traceable, one `lax.while_loop` (see the module docstring).

    model: `FlaxXLSTMForCausalLM` or anything with `init_cache(batch_size)` and
        `model(ids, attention_mask=..., params=..., past_key_values=cache, logits_to_keep=1)` returning `.logits`
        (B, s, V) float32 and `.past_key_values` (batch on axis 0 of every leaf);
    params: the model's param tree; input_ids (B, S) int; attention_mask (B, S) 0/1 (left padding) or None;
    generation_config: a resolved transformers.GenerationConfig; prng_key: a jax PRNG key (sampling only).
    Returns GenerationOutput: sequences (B * n, max_length) int32 (n: num_return_sequences), scores (B * n,)
    for beam search.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    s = check_generation_config(generation_config, int(input_ids.shape[1]))
    if s.num_beams > 1:
        return _beam_search(model, params, input_ids, attention_mask, s)
    return _greedy_or_sample(model, params, input_ids, attention_mask, s, prng_key)


def _greedy_or_sample(model, params, input_ids, attention_mask, s: LoopSettings, prng_key) -> GenerationOutput:
    """Greedy search or sampling; rows (N,) = B * num_return_sequences, sequences (N, max_length)."""
    n = s.num_return_sequences
    N, S = input_ids.shape[0] * n, input_ids.shape[1]
    process, warp = logits_processor(s), logits_warper(s)

    def choose(state, logits):  # the token at state["cur_len"] from logits (N, V) of the token before it
        key, next_key = jax.random.split(state["key"]) if s.do_sample else (state["key"], state["key"])
        scores = process(state["sequences"], logits, state["cur_len"])
        token = jax.random.categorical(key, warp(scores), axis=-1) if s.do_sample else jnp.argmax(scores, -1)
        token = jnp.where(state["finished"], s.pad, token).astype(jnp.int32)
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
    state = lax.while_loop(cond, body, choose(state, logits))
    return GenerationOutput(sequences=state["sequences"])


def _beam_search(model, params, input_ids, attention_mask, s: LoopSettings) -> GenerationOutput:
    """Beam search as transformers' Flax loop: per row K running beams and K finished hypotheses; each step takes
    the 2K best extensions of the running beams, keeps the K best that did not end as the new running beams
    (their caches gathered from the parent beams) and merges those that ended, length-penalised, into the
    finished ones. Arrays (B, K, ...) per row and beam; the model sees B * K rows."""
    B, S = input_ids.shape
    K, L = s.num_beams, s.max_length
    process = logits_processor(s)
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
            cache=jax.tree_util.tree_map(lambda x: x[rows], cache))

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
    return GenerationOutput(sequences=sequences[:, :n].reshape(B * n, L), scores=scores[:, :n].reshape(B * n))
