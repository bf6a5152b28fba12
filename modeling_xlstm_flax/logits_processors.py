"""What the generation loop (`generation.generate_loop`) makes of a transformers `GenerationConfig`: the check that turns it
into plain settings (`check_generation_config`), and the logits processors and sampling warpers those settings
select, in pure JAX (traceable). Imports nothing from transformers; reads the config by attribute.

The rule: every GenerationConfig field is either implemented here (`HANDLED_FIELDS`), cannot change the result of
this loop (`NO_EFFECT_FIELDS`), or refused by name when set (`REFUSED_FIELDS`: its "off" value, transformers 4.57's
default); a field none of these tables knows (a newer transformers) is refused when it differs from its default.
Never silently ignored.

Processors follow transformers' PyTorch ones (`RepetitionPenaltyLogitsProcessor`, `NoRepeatNGramLogitsProcessor`,
`NoBadWordsLogitsProcessor`, `MinLengthLogitsProcessor`, `MinNewTokensLengthLogitsProcessor`, forced BOS/EOS,
suppress tokens; warpers temperature, top-k, top-p, min-p, typical-p, in PyTorch's order) on the same inputs:
sequences (N, L) int32 (the prompt, padding included, then the tokens so far), scores (N, V) float32, cur_len ()
the position the next token goes to. `min_length` keeps transformers' Flax loop's count (eos masked while
cur_len <= min_length), one more than PyTorch's.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Fields this loop implements (see `check_generation_config`).
HANDLED_FIELDS = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "num_beams",
    "num_return_sequences", "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
    "length_penalty", "early_stopping", "no_repeat_ngram_size", "bad_words_ids", "eos_token_id", "pad_token_id",
    "bos_token_id", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens",
    "output_scores", "output_logits",
})
# Fields that cannot change what this loop returns (decoder-only model, recurrent cache, no assistant model, no
# compilation choices, the output is always a dict-like object).
NO_EFFECT_FIELDS = frozenset({
    "decoder_start_token_id", "use_cache", "return_dict_in_generate", "transformers_version",
    "cache_implementation", "cache_config", "return_legacy_cache", "compile_config", "disable_compile",
    "prefill_chunk_size", "low_memory", "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "assistant_lookbehind", "target_lookbehind", "max_matching_ngram_size",
    "assistant_ensemble_weight", "max_cache_len", "_from_model_config", "_commit_hash", "_original_object_hash",
})
# Fields refused by name when set, with their "off" values (transformers 4.57's defaults; None and False are off too).
REFUSED_FIELDS = {
    "exponential_decay_length_penalty": None, "penalty_alpha": None,  # (penalty_alpha + top_k: contrastive search)
    "num_beam_groups": 1, "diversity_penalty": 0.0,  # group beam search
    "stop_strings": None, "max_time": None, "constraints": None, "force_words_ids": None,
    "encoder_no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0, "sequence_bias": None,
    "guidance_scale": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None, "renormalize_logits": False,
    "remove_invalid_values": False, "watermarking_config": None, "token_healing": False, "dola_layers": None,
    "prompt_lookup_num_tokens": None, "assistant_early_exit": None, "output_attentions": False,
    "output_hidden_states": False, "forced_decoder_ids": None, "use_mtp": False, "speculation_type": None,
    "continuous_batching_config": None,
}
_WHY = {"penalty_alpha": "contrastive search is not implemented",
        "num_beam_groups": "group (diverse) beam search is not implemented",
        "diversity_penalty": "group (diverse) beam search is not implemented",
        "stop_strings": "stop strings are not implemented; use eos_token_id (one or several token ids)",
        "output_attentions": "xLSTM has no attention weights",
        "output_hidden_states": "generate does not collect hidden states; call the model on the sequences"}

# GenerationConfig fields transformers 5 keeps as None until its `generate` fills in global defaults (the values
# transformers 4's GenerationConfig holds from the start): read with those defaults under both majors.
UNSET_DEFAULTS = {"max_length": 20, "min_length": 0, "do_sample": False, "early_stopping": False, "num_beams": 1,
                  "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0, "repetition_penalty": 1.0,
                  "length_penalty": 1.0, "no_repeat_ngram_size": 0, "num_return_sequences": 1}


def with_unset_defaults(config):
    """`config`, or a copy of it with the UNSET_DEFAULTS fields that are None set to those defaults."""
    unset = {name: value for name, value in UNSET_DEFAULTS.items() if getattr(config, name, None) is None}
    if not unset:
        return config
    config = copy.copy(config)
    for name, value in unset.items():
        setattr(config, name, value)
    return config


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
    min_p: float  # 0.0: off
    typical_p: float  # 1.0: off
    repetition_penalty: float
    no_repeat_ngram_size: int
    bad_words: tuple  # tuples of token ids
    length_penalty: float
    early_stopping: Any
    forced_bos: Optional[int]
    forced_eos: tuple
    suppress: tuple
    begin_suppress: tuple
    output_scores: bool
    output_logits: bool


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


def _float(config, name: str, ok: Callable[[float], bool], allowed: str, default: float = 1.0) -> float:
    """A finite number passing `ok`; None means `default`."""
    value = getattr(config, name, None)
    value = default if value is None else value
    if not _is_number(value) or not ok(value):
        raise _bad(name, value, allowed)
    return float(value)


def _flag(config, name: str) -> bool:
    value = getattr(config, name, None)
    if value is None:
        return False
    if not isinstance(value, (bool, np.bool_)):
        raise _bad(name, value, "True or False")
    return bool(value)


def _ids(config, name: str, vocab_size: Optional[int]) -> tuple:
    """None, an id or a list of ids -> a tuple of ints in [0, vocab_size)."""
    return _id_tuple(name, getattr(config, name, None), vocab_size)


def _id_tuple(name: str, value: Any, vocab_size: Optional[int]) -> tuple:
    if value is None:
        return ()
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    top = "" if vocab_size is None else f" and < vocab_size={vocab_size}"
    if not values or not all(_is_int(v) and v >= 0 and (vocab_size is None or v < vocab_size) for v in values):
        raise _bad(name, value, f"None, a token id >= 0{top}, or a non-empty list of them")
    return tuple(int(v) for v in values)


def _bad_words(config, eos: tuple, vocab_size: Optional[int]) -> tuple:
    """bad_words_ids: a non-empty list of non-empty lists of ids -> tuples; [eos] entries dropped (as transformers)."""
    value = getattr(config, "bad_words_ids", None)
    if value is None:
        return ()
    ok = (isinstance(value, (list, tuple)) and value
          and all(isinstance(word, (list, tuple)) and word for word in value))
    if not ok:
        raise _bad("bad_words_ids", value, "None or a non-empty list of non-empty lists of token ids")
    words = [_id_tuple(f"bad_words_ids[{i}]", list(word), vocab_size) for i, word in enumerate(value)]
    return tuple(w for w in words if not (len(w) == 1 and w[0] in eos))


def check_refused_fields(config) -> None:
    """ValueError naming the first field set that this loop neither implements nor can ignore (see the module
    docstring). Off: None, False, the field's REFUSED_FIELDS value or its default in the running transformers."""
    defaults = type(config)().to_dict()
    names = set(config.to_dict()) | ({"forced_decoder_ids"} if hasattr(config, "forced_decoder_ids") else set())
    for name in sorted(names):
        if name in HANDLED_FIELDS or name in NO_EFFECT_FIELDS or name.startswith("_"):
            continue
        value = getattr(config, name, None)
        if value is None or value is False or any(
                name in table and value == table[name] for table in (REFUSED_FIELDS, defaults)):
            continue
        why = _WHY.get(name, "this loop has no such feature")
        raise ValueError(f"generation_config.{name}={value!r} is not supported by the xLSTM generation loop "
                         f"({why}); leave it unset")


def check_generation_config(config, prompt_length: int, vocab_size: Optional[int] = None) -> LoopSettings:
    """Check a resolved GenerationConfig for a prompt of `prompt_length` tokens; ValueError naming the first field
    the loop cannot honour. `vocab_size` (if given) bounds every token id."""
    config = with_unset_defaults(config)
    check_refused_fields(config)
    do_sample = getattr(config, "do_sample", None)
    do_sample = False if do_sample is None else do_sample  # (None: transformers' "not set", greedy)
    if not isinstance(do_sample, bool):
        raise _bad("do_sample", do_sample, "True or False")
    num_beams = _int(config, "num_beams", 1, 1)
    if do_sample and num_beams > 1:
        raise _bad("num_beams", num_beams, "1 when do_sample=True (beam sampling is not implemented; use "
                   "do_sample=False for beam search or num_beams=1 for sampling)")
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
    min_new_tokens = _int(config, "min_new_tokens", 0, 0)
    if min_new_tokens > max_length - prompt_length:
        raise _bad("min_new_tokens", min_new_tokens, f"at most the {max_length - prompt_length} new tokens "
                   "max_new_tokens / max_length allow")
    eos = _ids(config, "eos_token_id", vocab_size)
    pad = _ids(config, "pad_token_id", vocab_size)
    if len(pad) > 1:
        raise _bad("pad_token_id", config.pad_token_id, "None or one token id")
    _ids(config, "bos_token_id", vocab_size)
    pad = pad[0] if pad else (eos[0] if eos else 0)
    forced_bos, forced_eos = _ids(config, "forced_bos_token_id", vocab_size), _ids(config, "forced_eos_token_id",
                                                                                     vocab_size)
    if len(forced_bos) > 1:
        raise _bad("forced_bos_token_id", config.forced_bos_token_id, "None or one token id")
    if forced_eos and min_new_tokens > max_length - 1 - prompt_length:
        raise _bad("min_new_tokens", min_new_tokens, f"at most {max_length - 1 - prompt_length}: "
                   f"forced_eos_token_id puts eos at position max_length - 1 = {max_length - 1}")
    if forced_eos and min_length >= max_length - 1 and set(forced_eos) & set(eos):
        raise _bad("min_length", min_length, f"less than max_length - 1 = {max_length - 1}: forced_eos_token_id "
                   "puts eos at that position")
    sampling = lambda name, ok, allowed, default: _float(config, name, ok, allowed, default) \
        if do_sample else default  # noqa: E731
    temperature = sampling("temperature", lambda v: v > 0, "a number > 0 when sampling", 1.0)
    top_p = sampling("top_p", lambda v: 0 <= v <= 1, "a number in [0, 1] when sampling", 1.0)
    min_p = sampling("min_p", lambda v: 0 <= v <= 1, "None or a number in [0, 1] when sampling", 0.0)
    typical_p = sampling("typical_p", lambda v: 0 < v <= 1, "a number in (0, 1] when sampling", 1.0)
    penalty = _float(config, "repetition_penalty", lambda v: v > 0, "a number > 0 (1.0: off)")
    length_penalty = _float(config, "length_penalty", lambda v: True, "a finite number")
    early_stopping = getattr(config, "early_stopping", None)
    early_stopping = False if early_stopping is None else early_stopping
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise _bad("early_stopping", early_stopping, "True, False or 'never'")
    output_scores, output_logits = _flag(config, "output_scores"), _flag(config, "output_logits")
    if num_beams > 1 and (output_scores or output_logits):
        name = "output_scores" if output_scores else "output_logits"
        raise _bad(name, True, "False with beam search (per-step scores are implemented for greedy search and "
                   "sampling; beam search returns each sequence's score in `scores`)")
    return LoopSettings(
        max_length=int(max_length), prompt_length=prompt_length, min_length=min_length,
        min_new_tokens=min_new_tokens, eos=eos, pad=pad, do_sample=do_sample,
        num_beams=num_beams, num_return_sequences=num_return, temperature=temperature,
        top_k=_int(config, "top_k", 0, 0) if do_sample else 0, top_p=top_p, min_p=min_p, typical_p=typical_p,
        repetition_penalty=penalty, no_repeat_ngram_size=_int(config, "no_repeat_ngram_size", 0, 0),
        bad_words=_bad_words(config, eos, vocab_size), length_penalty=length_penalty, early_stopping=early_stopping,
        forced_bos=forced_bos[0] if forced_bos else None, forced_eos=forced_eos,
        suppress=_ids(config, "suppress_tokens", vocab_size),
        begin_suppress=_ids(config, "begin_suppress_tokens", vocab_size),
        output_scores=output_scores, output_logits=output_logits)


# ---------------------------------------------------------------------------------------------- processors
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


def _banned_bad_words(sequences: jax.Array, cur_len: jax.Array, words: tuple, vocab_size: int) -> jax.Array:
    """(N, V) bool: the last token of each bad word whose other tokens end sequences[:, :cur_len] (a one-token word:
    always). A word longer than the sequence so far matches nothing (as transformers)."""
    N, L = sequences.shape
    banned = jnp.zeros((N, vocab_size), bool)
    for word in words:
        *prefix, last = word
        match = jnp.ones((N,), bool)
        if prefix:
            if len(prefix) > L:
                continue
            tail = lax.dynamic_slice(sequences, (0, jnp.maximum(cur_len - len(prefix), 0)), (N, len(prefix)))
            match = jnp.all(tail == jnp.asarray(prefix, jnp.int32), axis=1) & (cur_len >= len(prefix))
        banned = banned | (match[:, None] & _id_mask((last,), vocab_size)[None])
    return banned


def logits_processor(s: LoopSettings) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """(sequences (N, L) int32, scores (N, V) float32, cur_len () int32) -> scores, where cur_len is the position
    the next token goes to. Repetition penalty first (transformers' PyTorch order), then min length / min new
    tokens, forced BOS, forced EOS, suppressed tokens, begin-suppressed tokens, no-repeat n-grams, bad words (each
    of these only sets scores to -inf or forces one token, so their order does not change the result). Used on
    logits (greedy, sampling) and on log-probabilities (beam search), as transformers does."""

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
        if s.bad_words:
            scores = jnp.where(_banned_bad_words(sequences, cur_len, s.bad_words, V), -jnp.inf, scores)
        return scores

    return process


def _scatter_sorted(scores, idx, values):
    """scores (N, V) with the sorted positions idx (N, V) set to values (N, V)."""
    rows = jnp.arange(scores.shape[0])[:, None]
    return jnp.full_like(scores, -jnp.inf).at[rows, idx].set(values)


def logits_warper(s: LoopSettings) -> Callable[[jax.Array], jax.Array]:
    """scores (N, V) -> scores for sampling: temperature, top-k, top-p, min-p, typical-p (transformers' PyTorch
    order; filtered tokens get -inf; each filter keeps at least the best token)."""

    def warp(scores):
        if s.temperature != 1.0:
            scores = scores / s.temperature
        if s.top_k:
            values, idx = lax.top_k(scores, min(s.top_k, scores.shape[-1]))
            scores = _scatter_sorted(scores, idx, values)
        if s.top_p < 1.0:
            values, idx = lax.top_k(scores, scores.shape[-1])  # descending
            below = jax.nn.softmax(values, axis=-1).cumsum(axis=-1) < s.top_p
            keep = jnp.concatenate([jnp.ones_like(below[:, :1]), below[:, :-1]], axis=1)  # mass before each < top_p
            scores = _scatter_sorted(scores, idx, jnp.where(keep, values, -jnp.inf))
        if s.min_p > 0.0:  # probability below min_p times the best one's; the best token always stays
            probs = jax.nn.softmax(scores, axis=-1)
            remove = probs < s.min_p * jnp.max(probs, axis=-1, keepdims=True)
            best = jnp.argmax(scores, axis=-1)[:, None] == jnp.arange(scores.shape[-1])[None]
            scores = jnp.where(remove & ~best, -jnp.inf, scores)
        if s.typical_p < 1.0:  # the tokens closest to the entropy, up to typical_p of the mass
            log_probs = jax.nn.log_softmax(scores, axis=-1)
            probs = jnp.exp(log_probs)
            entropy = -jnp.sum(jnp.where(probs > 0, log_probs * probs, 0.0), axis=-1, keepdims=True)
            shifted = jnp.abs(-log_probs - entropy)
            order = jnp.argsort(shifted, axis=-1)
            sorted_shifted = jnp.take_along_axis(shifted, order, axis=-1)
            cumulative = jax.nn.softmax(jnp.take_along_axis(scores, order, axis=-1), axis=-1).cumsum(axis=-1)
            last = jnp.minimum(jnp.sum(cumulative < s.typical_p, axis=-1), scores.shape[-1] - 1)
            threshold = jnp.take_along_axis(sorted_shifted, last[:, None], axis=-1)
            scores = jnp.where(shifted > threshold, -jnp.inf, scores)
        return scores

    return warp
