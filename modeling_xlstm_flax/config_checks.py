"""Checks of `XLSTMFlaxConfig` values: each raises `ValueError` naming the field, its value and what is allowed.

`validate_config` checks a whole config (types, ranges, finite numbers, token ids inside the vocabulary, the
cross-field sizes); `canonical_fields` resolves the alias names (`hidden_size` -> `embedding_dim`, ...) and refuses
two names of one field given different values; `read_config_json` reads a config file refusing duplicate keys.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Sequence

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
