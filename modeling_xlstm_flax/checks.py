"""Every host-side check, run before any compute; each raises `ValueError` naming what is wrong.

The config (`XLSTMFlaxConfig`): `validate_config` checks a whole config (types, ranges, finite numbers, token ids
inside the vocabulary, the cross-field sizes); `canonical_fields` resolves the alias names (`hidden_size` ->
`embedding_dim`, ...) and refuses two names of one field given different values; `read_config_json` reads a config
file refusing duplicate keys. Each error names the field, its value and what is allowed.

Model inputs (ids, masks, borders, generation options, batch sizes, donated buffers): JAX would otherwise clamp an
out-of-range embedding gather, broadcast a mis-shaped mask or fail deep inside XLA. Checks of arrays run on concrete
inputs only: inside `jax.jit` (traced inputs) they are skipped, and out-of-range ids there are clamped into
[0, vocab_size) by the embedding (see the README, "Errors and limits"). Checks of plain Python arguments (generation
options, batch sizes) run in traces too. jax is imported by the input checks only when they run, so reading a
config needs no jax.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .config_translation import slstm_block_config, slstm_block_indices

NORM_TYPES = ("layernorm", "rmsnorm")
LAYER_TYPES = ("mlstm", "mlstm_v1")
GATE_INPUTS = ("qkv", "x_mlstm", "x_mlstm_conv", "x_mlstm_conv_act")
FF_TYPES = ("ffn_gated", "ffn")
ACT_FNS = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")
INIT_DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")
OUTPUT_INIT_FNS = ("wang", "small")
DTYPES = ("float32", "bfloat16", "float16")
SEQUENCE_KERNELS = ("parallel_stabilized", "chunkwise", "recurrent")
STEP_KERNELS = ("recurrent",)


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"XLSTMFlaxConfig.{field}={value!r} is invalid: {allowed}")


def _check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        _fail(field, value, f"allowed values are {list(choices)}")


def _check_positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(field, value, "must be a positive integer")


def _check_positive_float(field: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        _fail(field, value, "must be a positive finite number" + (" or None" if allow_none else ""))


def _check_bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(field, value, "must be true or false")


def _check_bias_init(field: str, value: Any) -> None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        return
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        return
    _fail(field, value, "must be a number, a [low, high] pair or None")


def validate_config(config) -> None:
    """Raise `ValueError` naming the first invalid field, its value and what is allowed."""
    missing = [name for name in REQUIRED_FIELDS if not hasattr(config, name)]
    if missing:
        raise ValueError(f"XLSTMFlaxConfig has no {', '.join(missing)} (deleted?): every field needs a value; set "
                         "it again or build a new config")
    for field in ("vocab_size", "embedding_dim", "num_blocks", "num_heads", "conv1d_kernel_size",
                  "qkv_proj_blocksize", "round_proj_up_to_multiple_of", "ff_round_proj_up_to_multiple_of",
                  "chunk_size"):
        _check_positive_int(field, getattr(config, field))
    if isinstance(config.context_length, bool) or not isinstance(config.context_length, int) or (
        config.context_length <= 0 and config.context_length != -1
    ):
        _fail("context_length", config.context_length, "must be a positive integer or -1 (unknown)")
    for field in ("norm_eps", "block_norm_eps", "cell_norm_eps", "cell_eps", "proj_factor", "qk_dim_factor",
                  "v_dim_factor", "ff_proj_factor"):
        _check_positive_float(field, getattr(config, field))
    for field in ("logits_soft_cap", "gate_soft_cap"):
        _check_positive_float(field, getattr(config, field), allow_none=True)
    for field in ("tie_word_embeddings", "weight_decay_on_embedding", "add_embedding_dropout",
                  "add_post_blocks_norm", "bias", "scan_blocks", "add_post_norm", "ff_round_proj_up_dim_up",
                  "vmap_qk", "round_proj_up_dim_up", "debug_cell", "add_qk_norm", "gate_linear_headwise",
                  "reset_at_document_boundaries", "gradient_checkpointing"):
        _check_bool(field, getattr(config, field))
    if isinstance(config.dropout, bool) or not isinstance(config.dropout, (int, float)) or not 0 <= config.dropout < 1:
        _fail("dropout", config.dropout, "must be a number in [0, 1)")
    if not _is_number(config.reset_fgate_value) or not math.isfinite(config.reset_fgate_value):
        _fail("reset_fgate_value", config.reset_fgate_value, "must be a finite number")
    for field in ("norm_type", "block_norm_type", "mlstm_norm_type", "cell_norm_type_v1"):
        _check_choice(field, getattr(config, field), NORM_TYPES)
    for field in ("compute_dtype", "lm_head_dtype", "gate_dtype"):
        _check_choice(field, getattr(config, field), DTYPES)
    for field in ("init_distribution_embed", "init_distribution_out", "init_distribution", "ff_init_distribution"):
        _check_choice(field, getattr(config, field), INIT_DISTRIBUTIONS)
    for field in ("output_init_fn", "ff_output_init_fn"):
        _check_choice(field, getattr(config, field), OUTPUT_INIT_FNS)
    _check_choice("layer_type", config.layer_type, LAYER_TYPES)
    _check_choice("gate_input", config.gate_input, GATE_INPUTS)
    _check_choice("ff_type", config.ff_type, FF_TYPES + (None,))
    _check_choice("ff_act_fn", config.ff_act_fn, ACT_FNS)
    _check_choice("sequence_kernel", config.sequence_kernel, SEQUENCE_KERNELS)
    _check_choice("step_kernel", config.step_kernel, STEP_KERNELS)
    if config.prefill_segment_size is not None:
        _check_positive_int("prefill_segment_size", config.prefill_segment_size)
    _check_bias_init("igate_bias_init_range", config.igate_bias_init_range)
    _check_bias_init("fgate_bias_init_range", config.fgate_bias_init_range)
    if config.slstm_at != "all" and (not isinstance(config.slstm_at, list)
                                     or not all(_is_int(i) for i in config.slstm_at)):
        _fail("slstm_at", config.slstm_at, 'must be a list of block indices ([] for mLSTM blocks only) or "all"')
    check_slstm_fields(config, _fail)  # indices in range, slstm_block, scan_blocks only for a homogeneous stack
    _check_finite(vars(config))
    _check_transformers_fields(config)
    _validate_dims(config)



def _validate_dims(config) -> None:
    nh = config.num_heads
    if config.layer_type == "mlstm" and config.inner_dim <= 0:
        _fail("proj_factor", config.proj_factor, f"gives an inner width of {config.inner_dim}; must be > 0")
    for name in ("qk_dim", "v_dim"):
        dim = getattr(config, name)
        if dim <= 0 or dim % nh:
            factor = "qk_dim_factor" if name == "qk_dim" else "v_dim_factor"
            _fail(factor, getattr(config, factor),
                  f"gives {name}={dim}, which must be a positive multiple of num_heads={nh}")
    if config.ff_type is not None and config.ff_dim <= 0:
        _fail("ff_proj_factor", config.ff_proj_factor, f"gives a feedforward width of {config.ff_dim}; must be > 0")
    if config.layer_type == "mlstm_v1":
        for field, default in (("gate_linear_headwise", False), ("debug_cell", False)):
            if getattr(config, field) != default:
                _fail(field, getattr(config, field), f"only layer_type='mlstm' supports it; use {default}")
        return
    inner = config.inner_dim
    if inner % nh:
        _fail("num_heads", nh, f"must divide the mlstm inner width {inner}")
    if inner % config.qkv_proj_blocksize:
        _fail("qkv_proj_blocksize", config.qkv_proj_blocksize, f"must divide the mlstm inner width {inner}")
    nph = config.num_proj_heads
    for name in ("qk_dim", "v_dim"):
        if getattr(config, name) % nph:
            factor = "qk_dim_factor" if name == "qk_dim" else "v_dim_factor"
            _fail(factor, getattr(config, factor),
                  f"gives {name}={getattr(config, name)}, not a multiple of the {nph} headwise projection blocks")
    if config.gate_linear_headwise and config.gate_input_dim % nh:
        _fail("gate_linear_headwise", True, f"gate input width {config.gate_input_dim} is not divisible by num_heads")
    if config.v_dim != inner and config.v_dim % nph:
        _fail("v_dim_factor", config.v_dim_factor, "the skip projection needs v_dim divisible by the projection blocks")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_finite(fields: dict, where: str = "") -> None:
    """No NaN or infinite float anywhere in the config's values (nested lists and dicts included)."""
    for name, value in fields.items():
        label = f"{where}[{name!r}]" if where else str(name)
        if isinstance(value, float) and not math.isfinite(value):
            _fail(label, value, "must be a finite number")
        if isinstance(value, dict):
            _check_finite(value, label)
        elif isinstance(value, (list, tuple)):
            _check_finite(dict(enumerate(value)), label)


# transformers' token-id attributes: None or an id in [0, vocab_size) (eos / forced eos: also a list of ids)
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
                   "forced_bos_token_id", "forced_eos_token_id")
# transformers' boolean attributes (set by users, read by transformers' code): True or False, not "false" or 1
TRANSFORMERS_BOOL_FIELDS = ("use_cache", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
                            "use_bfloat16", "tf_legacy_loss", "is_decoder", "is_encoder_decoder",
                            "add_cross_attention", "tie_encoder_decoder", "do_sample", "output_scores",
                            "return_dict_in_generate", "remove_invalid_values")
# Every field a config must hold (a `del config.field` is refused; a config missing one is invalid)
REQUIRED_FIELDS = ("vocab_size", "embedding_dim", "num_blocks", "slstm_at", "bos_token_id", "eos_token_id",
                   "pad_token_id")


TORCH_DTYPES = ("float32", "bfloat16", "float16", "float64")


def check_torch_dtype(value: Any) -> None:
    """transformers' `dtype` / `torch_dtype`: None, a float dtype name or a torch float dtype."""
    if value is not None and str(value).removeprefix("torch.") not in TORCH_DTYPES:
        _fail("dtype", value, f"transformers' dtype (torch_dtype) must be None or one of {list(TORCH_DTYPES)} (the "
              "PyTorch weights' dtype; this model computes in compute_dtype)")


def _check_transformers_fields(config) -> None:
    """transformers' own attributes the config holds: token ids inside the vocabulary, booleans that are bools,
    a float `dtype`."""
    check_torch_dtype(getattr(config, "dtype", None))
    vocab = config.vocab_size
    for name in TOKEN_ID_FIELDS:
        value = getattr(config, name, None)
        if value is None:
            continue
        many = name in ("eos_token_id", "forced_eos_token_id") and isinstance(value, (list, tuple))
        ids = list(value) if many else [value]
        if (many and not ids) or not all(_is_int(i) and 0 <= i < vocab for i in ids):
            _fail(name, value, f"must be None or a token id (an int) in [0, vocab_size={vocab})"
                  + (" or a list of such ids" if name in ("eos_token_id", "forced_eos_token_id") else ""))
    for name in TRANSFORMERS_BOOL_FIELDS:
        value = getattr(config, name, None)
        if value is not None and not isinstance(value, bool):
            _fail(name, value, "must be true or false")


# other names of fields: alias -> field (transformers' common names, upstream's `tie_weights`)
ALIASES = {"hidden_size": "embedding_dim", "num_hidden_layers": "num_blocks", "tie_weights": "tie_word_embeddings",
           "torch_dtype": "dtype"}


def canonical_fields(fields: dict, where: str) -> dict:
    """`fields` with alias names replaced by the field they name; two names of one field with different values
    (`hidden_size=32, embedding_dim=64`) are a ValueError naming both."""
    out = {k: v for k, v in fields.items() if k not in ALIASES}
    for alias, value in fields.items():
        target = ALIASES.get(alias)
        if target is None:
            continue
        if target in out and not _same(out[target], value):
            raise ValueError(f"{where}: {alias}={value!r} and {target}={out[target]!r} name the same field "
                             f"({alias} is another name of {target}); give one of them")
        out[target] = value
    return out


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (_is_number(a) and _is_number(b) and a == b)


def refuse_duplicate_keys(pairs: list) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r} in the JSON (values {seen[key]!r} and {value!r}); each field "
                             "may appear once")
        seen[key] = value
    return seen


def read_config_json(path) -> Any:
    """The JSON value of a config file; a key given twice in one object is a ValueError naming the file and key
    (`json.load` would keep the last silently)."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle, object_pairs_hook=refuse_duplicate_keys)
        except ValueError as exc:
            raise ValueError(f"config file {path}: {exc}") from None


def check_slstm_fields(config, fail: Callable[[str, object, str], None]) -> None:
    """Validate `slstm_at` (a list of block indices or "all") / `slstm_block` (None: the library's defaults) and the
    stack layout; `fail(field, value, allowed)` raises."""
    at = config.slstm_at
    if isinstance(at, str):
        if at != "all":
            fail("slstm_at", at, 'must be a list of block indices or "all"')
    else:
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < config.num_blocks for i in at):
            fail("slstm_at", at, f"block indices must be ints in [0, num_blocks={config.num_blocks})")
        if len(set(at)) != len(at):
            fail("slstm_at", at, "block indices must not repeat")
    block = config.slstm_block
    if block is not None and not isinstance(block, dict):
        fail("slstm_block", block, 'must be None or a dict {"slstm": {...}, "feedforward": {...} | None}')
    indices = slstm_block_indices(config)
    if not indices and block is None:
        return
    try:
        slstm_block_config(config, 0)
    except (ValueError, TypeError) as exc:
        fail("slstm_block", block, str(exc))
    if config.scan_blocks and indices and len(indices) != config.num_blocks:
        fail("scan_blocks", True, f"needs a homogeneous stack (all mLSTM or all sLSTM blocks); slstm_at={at!r} "
             "makes a mixed mLSTM/sLSTM stack, which runs unrolled: use scan_blocks=False")


# ---------------------------------------------------------------------------------------------- model inputs
class _DropAutoClassNote(logging.Filter):
    """transformers' Auto classes pass `trust_remote_code=True` on to the model class they resolved, whose
    `from_pretrained` then says the argument "has no effect here": on a correct remote-code load of this model that
    note is wrong, so it is dropped (only that message, only from transformers' Flax loader)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The argument `trust_remote_code` is to be used with Auto classes")


if not any(isinstance(f, _DropAutoClassNote) for f in logging.getLogger("transformers.modeling_flax_utils").filters):
    logging.getLogger("transformers.modeling_flax_utils").addFilter(_DropAutoClassNote())


def _is_traced(x: Any) -> bool:
    import jax

    return isinstance(x, jax.core.Tracer)


def _unreadable(*xs: Any) -> bool:
    """Whether any of `xs` cannot be read on this host: traced, or a global array with shards on other processes
    (its checks run where the data is made)."""
    import jax

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
    import jax

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


def _is_int_or_numpy_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_int(name: str, value: Any, low: int, high: Optional[int] = None, hint: str = "") -> None:
    if not _is_int_or_numpy_int(value) or value < low or (high is not None and value > high):
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
    import jax

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
