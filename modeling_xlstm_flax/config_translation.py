"""Translations of `XLSTMFlaxConfig` to and from the two config layouts users arrive with.

This module does not import the config class: `upstream_config_fields` / `transformers_config_fields` return the
constructor fields (`configuration_xlstm_flax.from_upstream_config` / `from_transformers_config` build the config),
and `to_upstream_config` / `to_transformers_config` read any object with the config's attributes.

* upstream xlstm-jax: the nested `xLSTMLMModelConfig` dict its checkpoints record (`dataclasses.asdict`, see
  `tests/fixtures/xlstm_jax/*/config.json`, or `metadata["model"]["model_config"]` of an orbax run);
* transformers' `xLSTMConfig` (model_type `xlstm`, the `NX-AI/xLSTM-7b` config.json layout);
* the sLSTM blocks (`slstm_at`, `slstm_block`: NX-AI's `xlstm` library's `sLSTMBlockConfig` as a dict): `SLSTMConfig`,
  what one sLSTM block computes with (`slstm`), and `slstm_block_config(config, i)`. Whole
  library LM configs: `library_params`.

A setting the target side cannot express raises `ValueError` naming it; nothing is silently dropped. Fields that
are runtime choices rather than model definition (device mesh, kernel backends, chunked inference) are mapped where
a counterpart exists and otherwise logged. A key the translation does not know at all is a `ValueError` naming it
(upstream dicts: every level; transformers' `xLSTMConfig`: every key except transformers' bookkeeping ones).
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import math
from typing import Any, Mapping, Optional


logger = logging.getLogger(__name__)


def round_to_multiple(value: float, multiple_of: int, round_up: bool) -> int:
    """Upstream's `UpProjConfigMixin` rounding: ceil/floor(value / multiple_of) * multiple_of."""
    ratio = value / multiple_of
    return int((math.ceil(ratio) if round_up else math.floor(ratio)) * multiple_of)

# upstream mLSTM backend name -> our sequence kernel (all compute the same function)
UPSTREAM_BACKENDS = {
    "parallel_stabilized": "parallel_stabilized",
    "recurrent": "recurrent",
    "recurrent_triton": "recurrent",
    "fwbw_stabilized": "chunkwise",
    "triton_kernels": "chunkwise",
}

_LM_KEYS = {
    "vocab_size", "embedding_dim", "num_blocks", "context_length", "tie_weights", "weight_decay_on_embedding",
    "add_embedding_dropout", "norm_eps", "norm_type", "logits_soft_cap", "lm_head_dtype", "add_post_blocks_norm",
    "bias", "dropout", "scan_blocks", "dtype", "init_distribution_embed", "init_distribution_out", "slstm_at",
    "mlstm_block", "slstm_block", "parallel",
}
_BLOCK_KEYS = {"mlstm", "feedforward", "add_post_norm", "parallel", "norm_eps", "norm_type", "dtype"}
_LAYER_KEYS = {
    "conv1d_kernel_size", "qkv_proj_blocksize", "num_heads", "proj_factor", "vmap_qk", "init_distribution",
    "output_init_fn", "layer_type", "norm_type", "qk_dim_factor", "v_dim_factor", "embedding_dim", "bias",
    "dropout", "context_length", "dtype", "parallel", "debug_cell", "gate_input", "mlstm_cell",
    "round_proj_up_dim_up", "round_proj_up_to_multiple_of",
}
_CELL_KEYS = {
    "context_length", "embedding_dim", "num_heads", "backend", "norm_eps", "norm_type", "norm_type_v1", "dtype",
    "gate_dtype", "gate_soft_cap", "gate_linear_headwise", "igate_bias_init_range", "fgate_bias_init_range",
    "add_qk_norm", "reset_at_document_boundaries", "reset_fgate_value", "parallel",
}
_FF_KEYS = {
    "proj_factor", "act_fn", "embedding_dim", "dropout", "bias", "init_distribution", "output_init_fn", "ff_type",
    "dtype", "parallel", "round_proj_up_dim_up", "round_proj_up_to_multiple_of",
}


def _check_keys(where: str, d: dict, known: set) -> None:
    unknown = sorted(k for k in d if not k.startswith("_") and k not in known)
    if unknown:
        raise ValueError(f"upstream config {where} has fields this port cannot express: {unknown}")


def _range(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _call_repr_fields(text: str) -> Optional[tuple[str, dict]]:
    """`"Name(a=1, b='x')"` (a dataclass repr, as upstream's trainer metadata stores some configs) -> ("Name",
    {"a": 1, "b": "x"}); None when the text is not such a repr or a value is not a literal."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not isinstance(node, ast.Call) or node.args or not isinstance(node.func, (ast.Name, ast.Attribute)):
            return None
        name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        return name, {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
    except (SyntaxError, ValueError):
        return None


def _upstream_backend(backend) -> tuple[str, dict]:
    """(backend name, backend kwargs) from upstream's `mlstm_cell.backend` in any form its checkpoints store:
    a dict {"name", "kwargs"} (kwargs a dict, a dataclass repr string such as
    "mLSTMBackendParallelConfig(context_length=64)", or None), a repr string of the whole
    `mLSTMBackendNameAndKwargs(...)`, or missing (upstream's default, parallel_stabilized). Unusable kwargs are
    logged and ignored; an unknown backend name is a ValueError."""
    if backend is None or backend == "None":
        return "parallel_stabilized", {}
    if isinstance(backend, str):
        parsed = _call_repr_fields(backend)
        if parsed is None or "name" not in parsed[1]:
            raise ValueError(f"upstream config mlstm_cell.backend={backend!r}: expected a dict with 'name' and "
                             "'kwargs' or a mLSTMBackendNameAndKwargs(...) repr")
        backend = parsed[1]
    if not isinstance(backend, dict):
        raise ValueError(f"upstream config mlstm_cell.backend={backend!r}: expected a dict with 'name' and 'kwargs'")
    name = backend.get("name") or "parallel_stabilized"
    if name not in UPSTREAM_BACKENDS:
        raise ValueError(f"upstream mLSTM backend {name!r} has no counterpart; known: {sorted(UPSTREAM_BACKENDS)}")
    kwargs = backend.get("kwargs")
    if isinstance(kwargs, str):
        parsed = _call_repr_fields(kwargs) if kwargs not in ("", "None", "{}") else ("", {})
        if parsed is None:
            logger.info("upstream backend kwargs %r are not readable; ignoring them (kernel settings only)", kwargs)
            kwargs = {}
        else:
            kwargs = parsed[1]
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        logger.info("upstream backend kwargs %r are not a mapping; ignoring them", kwargs)
        kwargs = {}
    ignored = sorted(set(kwargs) - {"chunk_size"})
    if ignored:
        logger.info("upstream backend kwargs %s are runtime settings of its kernels; ignored", ignored)
    return name, kwargs


def upstream_config_fields(upstream: dict[str, Any], **overrides) -> dict[str, Any]:
    """Translate upstream's nested `xLSTMLMModelConfig` dict into `XLSTMFlaxConfig` constructor fields.

    Upstream ignores `tie_weights` and `add_post_blocks_norm` (its LM head always has the out-norm and is never
    tied); the result records what upstream computed and logs the difference.
    """
    _check_keys("(xLSTMLMModelConfig)", upstream, _LM_KEYS)
    if upstream.get("slstm_block") is not None or upstream.get("slstm_at"):
        raise ValueError("upstream config has sLSTM blocks (slstm_block / slstm_at); this port supports mLSTM only")
    block = upstream.get("mlstm_block")
    if not block or not block.get("mlstm"):
        raise ValueError("upstream config has no mlstm_block.mlstm; cannot translate")
    _check_keys("mlstm_block", block, _BLOCK_KEYS)
    layer = block["mlstm"]
    _check_keys("mlstm_block.mlstm", layer, _LAYER_KEYS)
    cell = layer.get("mlstm_cell") or {}
    _check_keys("mlstm_block.mlstm.mlstm_cell", cell, _CELL_KEYS)
    ff = block.get("feedforward")
    if ff is not None:
        _check_keys("mlstm_block.feedforward", ff, _FF_KEYS)
    backend_name, kwargs = _upstream_backend(cell.get("backend"))

    if upstream.get("tie_weights", False):
        logger.info("upstream config says tie_weights=True, but upstream never ties the LM head: recording False")
    if not upstream.get("add_post_blocks_norm", True):
        logger.info("upstream config says add_post_blocks_norm=False, but upstream always applies the LM head "
                    "out-norm: recording True")
    logger.info("upstream parallel config (device mesh) is runtime state; pass a mesh at run time instead")

    fields = dict(
        vocab_size=upstream["vocab_size"],
        embedding_dim=upstream["embedding_dim"],
        num_blocks=upstream["num_blocks"],
        context_length=upstream.get("context_length", -1),
        tie_word_embeddings=False,
        weight_decay_on_embedding=upstream.get("weight_decay_on_embedding", False),
        add_embedding_dropout=upstream.get("add_embedding_dropout", False),
        norm_eps=upstream.get("norm_eps", 1e-6),
        norm_type=upstream.get("norm_type", "layernorm"),
        logits_soft_cap=upstream.get("logits_soft_cap"),
        lm_head_dtype=upstream.get("lm_head_dtype", "float32"),
        add_post_blocks_norm=True,
        bias=upstream.get("bias", False),
        dropout=upstream.get("dropout", 0.0),
        scan_blocks=upstream.get("scan_blocks", False),
        compute_dtype=upstream.get("dtype", "bfloat16"),
        init_distribution_embed=upstream.get("init_distribution_embed", "normal"),
        init_distribution_out=upstream.get("init_distribution_out", "normal"),
        slstm_at=[],
        # upstream's mLSTM block builds its norms from the layer's norm type and the cell's eps
        block_norm_type=layer.get("norm_type", "layernorm"),
        block_norm_eps=cell.get("norm_eps", 1e-6),
        add_post_norm=block.get("add_post_norm", False),
        ff_type=None if ff is None else ff.get("ff_type", "ffn_gated"),
        layer_type=layer.get("layer_type", "mlstm"),
        num_heads=layer.get("num_heads", 4),
        conv1d_kernel_size=layer.get("conv1d_kernel_size", 4),
        qkv_proj_blocksize=layer.get("qkv_proj_blocksize", 4),
        proj_factor=layer.get("proj_factor", 2.0),
        vmap_qk=layer.get("vmap_qk", False),
        init_distribution=layer.get("init_distribution", "normal"),
        output_init_fn=layer.get("output_init_fn", "wang"),
        mlstm_norm_type=layer.get("norm_type", "layernorm"),
        qk_dim_factor=layer.get("qk_dim_factor", 1.0),
        v_dim_factor=layer.get("v_dim_factor", 1.0),
        gate_input=layer.get("gate_input", "qkv"),
        round_proj_up_dim_up=layer.get("round_proj_up_dim_up", True),
        round_proj_up_to_multiple_of=layer.get("round_proj_up_to_multiple_of", 64),
        debug_cell=layer.get("debug_cell", False),
        gate_soft_cap=cell.get("gate_soft_cap"),
        gate_dtype=cell.get("gate_dtype", "float32"),
        igate_bias_init_range=_range(cell.get("igate_bias_init_range")),
        fgate_bias_init_range=_range(cell.get("fgate_bias_init_range", [3.0, 6.0])),
        add_qk_norm=cell.get("add_qk_norm", False),
        gate_linear_headwise=cell.get("gate_linear_headwise", False),
        reset_at_document_boundaries=cell.get("reset_at_document_boundaries", False),
        reset_fgate_value=cell.get("reset_fgate_value", -25.0),
        cell_norm_type_v1=cell.get("norm_type_v1", "layernorm"),
        cell_norm_eps=cell.get("norm_eps", 1e-6),
        sequence_kernel=UPSTREAM_BACKENDS[backend_name],
        chunk_size=kwargs.get("chunk_size", 64),
    )
    if ff is not None:
        fields.update(
            ff_proj_factor=ff.get("proj_factor", 1.3),
            ff_act_fn=ff.get("act_fn", "gelu"),
            ff_round_proj_up_dim_up=ff.get("round_proj_up_dim_up", True),
            ff_round_proj_up_to_multiple_of=ff.get("round_proj_up_to_multiple_of", 64),
            ff_init_distribution=ff.get("init_distribution", "normal"),
            ff_output_init_fn=ff.get("output_init_fn", "wang"),
        )
    if fields["layer_type"] == "mlstm_v1" and fields["gate_linear_headwise"]:
        logger.info("upstream mlstm_v1 ignores gate_linear_headwise: recording False")
        fields["gate_linear_headwise"] = False
    fields.update(overrides)
    return fields


def to_upstream_config(config) -> dict[str, Any]:
    """The nested upstream dict (constructor fields of xLSTMLMModelConfig and its sub-configs) for `config`."""
    if config.slstm_block_indices:
        raise ValueError(f"slstm_at={config.slstm_at!r} cannot be expressed upstream (xlstm-jax has no sLSTM blocks)")
    if config.tie_word_embeddings:
        raise ValueError("tie_word_embeddings=True cannot be expressed upstream (xlstm-jax never ties the LM head)")
    if not config.add_post_blocks_norm:
        raise ValueError("add_post_blocks_norm=False cannot be expressed upstream (its LM head always normalises)")
    if config.block_norm_type != config.mlstm_norm_type:
        raise ValueError(f"block_norm_type={config.block_norm_type!r} differs from mlstm_norm_type="
                         f"{config.mlstm_norm_type!r}; upstream derives both from the layer's norm_type")
    if config.block_norm_eps != config.cell_norm_eps:
        raise ValueError(f"block_norm_eps={config.block_norm_eps} differs from cell_norm_eps={config.cell_norm_eps};"
                         " upstream derives both from the cell's norm_eps")
    if config.cell_eps != 1e-6:
        raise ValueError(f"cell_eps={config.cell_eps} cannot be expressed upstream (fixed at 1e-6)")
    backend = {"parallel_stabilized": "parallel_stabilized", "recurrent": "recurrent",
               "chunkwise": "parallel_stabilized"}[config.sequence_kernel]
    if config.sequence_kernel == "chunkwise":
        logger.info("upstream has no plain-JAX chunkwise backend; writing parallel_stabilized (same function)")
    ff = None
    if config.ff_type is not None:
        ff = dict(
            proj_factor=config.ff_proj_factor, act_fn=config.ff_act_fn, ff_type=config.ff_type, bias=config.bias,
            dropout=config.dropout, dtype=config.compute_dtype, init_distribution=config.ff_init_distribution,
            output_init_fn=config.ff_output_init_fn, round_proj_up_dim_up=config.ff_round_proj_up_dim_up,
            round_proj_up_to_multiple_of=config.ff_round_proj_up_to_multiple_of,
        )
    cell = dict(
        backend={"name": backend, "kwargs": {}}, norm_eps=config.cell_norm_eps, norm_type=config.mlstm_norm_type,
        norm_type_v1=config.cell_norm_type_v1, dtype=config.compute_dtype, gate_dtype=config.gate_dtype,
        gate_soft_cap=config.gate_soft_cap, gate_linear_headwise=config.gate_linear_headwise,
        igate_bias_init_range=config.igate_bias_init_range, fgate_bias_init_range=config.fgate_bias_init_range,
        add_qk_norm=config.add_qk_norm, reset_at_document_boundaries=config.reset_at_document_boundaries,
        reset_fgate_value=config.reset_fgate_value,
    )
    layer = dict(
        conv1d_kernel_size=config.conv1d_kernel_size, qkv_proj_blocksize=config.qkv_proj_blocksize,
        num_heads=config.num_heads, proj_factor=config.proj_factor, vmap_qk=config.vmap_qk,
        init_distribution=config.init_distribution, output_init_fn=config.output_init_fn,
        layer_type=config.layer_type, norm_type=config.mlstm_norm_type, qk_dim_factor=config.qk_dim_factor,
        v_dim_factor=config.v_dim_factor, embedding_dim=config.embedding_dim, bias=config.bias,
        dropout=config.dropout, context_length=config.context_length, dtype=config.compute_dtype,
        debug_cell=config.debug_cell, gate_input=config.gate_input, mlstm_cell=cell,
        round_proj_up_dim_up=config.round_proj_up_dim_up,
        round_proj_up_to_multiple_of=config.round_proj_up_to_multiple_of,
    )
    return dict(
        vocab_size=config.vocab_size, embedding_dim=config.embedding_dim, num_blocks=config.num_blocks,
        context_length=config.context_length, tie_weights=False,
        weight_decay_on_embedding=config.weight_decay_on_embedding,
        add_embedding_dropout=config.add_embedding_dropout, norm_eps=config.norm_eps, norm_type=config.norm_type,
        logits_soft_cap=config.logits_soft_cap, lm_head_dtype=config.lm_head_dtype, add_post_blocks_norm=True,
        bias=config.bias, dropout=config.dropout, scan_blocks=config.scan_blocks, dtype=config.compute_dtype,
        init_distribution_embed=config.init_distribution_embed, init_distribution_out=config.init_distribution_out,
        slstm_at=[], slstm_block=None, _block_map=",".join(str(b) for b in config.block_map),
        mlstm_block=dict(mlstm=layer, feedforward=ff, add_post_norm=config.add_post_norm),
    )


# ---------------------------------------------------------------------------------------------- transformers
_PT_KERNELS = {"parallel--native_autograd": "parallel_stabilized", "chunkwise--native_autograd": "chunkwise"}
_PT_FIXED = dict(
    layer_type="mlstm_v1", norm_type="rmsnorm", block_norm_type="rmsnorm", cell_norm_type_v1="layernorm",
    ff_type="ffn_gated", ff_act_fn="swish", ff_round_proj_up_dim_up=True, add_qk_norm=False, add_post_norm=False,
    reset_at_document_boundaries=False, dropout=0.0, add_embedding_dropout=False, bias=False,
    lm_head_dtype="float32", gate_dtype="float32",
)


def transformers_ffn_width(hidden_size: int, ffn_proj_factor: float, multiple_of: int) -> int:
    """The feedforward width transformers' xLSTM builds: `(x + m - 1) // m * m` on the float x = hidden * factor.

    For a fractional x this can land one multiple below upstream's (and our) ceil rounding: 768 x 2.667 = 2048.3
    gives 2048 there and 2112 here. The translations below convert the factor so both build the same width.
    """
    return int(((hidden_size * ffn_proj_factor + multiple_of - 1) // multiple_of) * multiple_of)


def _ffn_factor_building(width: int, hidden_size: int, factor: float, multiple_of: int, builds) -> float:
    """`factor` if `builds(factor)` is `width`, else width / hidden (checked): the factor to write so the other side
    builds `width`."""
    for candidate in (factor, width / hidden_size):
        if builds(candidate) == width:
            return candidate
    raise ValueError(f"no ffn_proj_factor gives a feedforward width of {width} for hidden size {hidden_size} and "
                     f"multiple {multiple_of}")


# xLSTMConfig fields read by `from_transformers_config` (translated, or checked and refused when not expressible)
_PT_READ = {
    "vocab_size", "hidden_size", "embedding_dim", "num_hidden_layers", "num_blocks", "num_heads", "use_bias",
    "norm_reduction_force_float32", "tie_word_embeddings", "add_out_norm", "norm_eps", "qk_dim_factor",
    "v_dim_factor", "chunkwise_kernel", "chunk_size", "eps", "inference_state_dtype", "ffn_proj_factor",
    "ffn_round_up_to_multiple_of", "gate_soft_cap", "output_logit_soft_cap", "weight_mode", "pad_token_id",
    "bos_token_id", "eos_token_id", "dtype", "torch_dtype",
}
# xLSTMConfig fields that choose PyTorch kernels or inference behaviour, not the model: logged when not the default
_PT_RUNTIME = {
    "sequence_kernel": "native_sequence__native", "step_kernel": "native", "mode": "inference",
    "return_last_states": True, "autocast_kernel_dtype": "bfloat16", "max_inference_chunksize": 16384,
    "use_cache": True, "force_bos_token_insert": None,  # the last one: NX-AI/xLSTM-7b's config.json, tokenizing
}
# Bookkeeping keys transformers writes into every config.json (besides PretrainedConfig()'s own attributes)
_PT_BOOKKEEPING = {"model_type", "transformers_version", "architectures", "auto_map", "_name_or_path", "name_or_path",
                   "output_attentions", "custom_pipelines", "attn_implementation"}


def _check_transformers_keys(keys) -> None:
    """Every key of a transformers xLSTM config is read, runtime (logged) or bookkeeping; others are refused."""
    from transformers import PretrainedConfig

    known = _PT_READ | set(_PT_RUNTIME) | _PT_BOOKKEEPING | set(PretrainedConfig().to_dict())
    unknown = sorted(k for k in keys if not str(k).startswith("_") and k not in known)
    if unknown:
        raise ValueError(f"transformers xLSTMConfig has fields this translation does not know: {unknown}; they "
                         "would be dropped, so the config is refused (remove them or extend "
                         "configuration.translation)")


def transformers_config_fields(pt_config, **overrides) -> dict[str, Any]:
    """Translate transformers' `xLSTMConfig` (or its dict) into `XLSTMFlaxConfig` constructor fields.

    Every key is accounted for: model fields are translated (or refused when this port cannot express the value),
    PyTorch kernel/inference choices (`sequence_kernel`, `step_kernel`, `mode`, `autocast_kernel_dtype`, ...) are
    logged when not the default, transformers' bookkeeping keys pass, and any other key is a `ValueError` naming it.
    """
    if not isinstance(pt_config, dict):
        if not hasattr(pt_config, "to_dict"):
            raise ValueError(f"expected transformers' xLSTMConfig or its dict, got {type(pt_config).__name__}")
        pt_config = pt_config.to_dict()
    _check_transformers_keys(pt_config)
    from transformers import xLSTMConfig

    # a dict is read as transformers reads it: fields it leaves out take xLSTMConfig's defaults
    pt_config = {**xLSTMConfig().to_dict(), **pt_config}
    runtime = {k: pt_config[k] for k, default in _PT_RUNTIME.items() if k in pt_config and pt_config[k] != default}
    if runtime:
        logger.info("transformers xLSTMConfig fields %s choose PyTorch kernels or inference behaviour; this port "
                    "has its own (sequence_kernel, chunk_size, compute_dtype): not translated", runtime)
    get = lambda k, d=None: pt_config.get(k, d)  # noqa: E731
    if get("use_bias", False):
        raise ValueError("xLSTMConfig.use_bias=True adds biases to the norms too, which this port does not model")
    if get("weight_mode", "single") != "single":
        raise ValueError(f"xLSTMConfig.weight_mode={get('weight_mode')!r}: only 'single' (separate q/k/v/gate "
                         "weights) maps onto this port's params")
    if not get("norm_reduction_force_float32", True):
        raise ValueError("xLSTMConfig.norm_reduction_force_float32=False: this port always reduces in float32")
    if get("inference_state_dtype", "float32") != "float32":
        raise ValueError("xLSTMConfig.inference_state_dtype must be float32: this port keeps states in float32")
    kernel = get("chunkwise_kernel", "chunkwise--native_autograd")
    if kernel not in _PT_KERNELS:
        raise ValueError(f"xLSTMConfig.chunkwise_kernel={kernel!r} has no counterpart; known: {sorted(_PT_KERNELS)}")
    dtype = get("dtype") or get("torch_dtype")
    dtype = str(dtype).split(".")[-1] if dtype is not None else "float32"
    hidden = get("hidden_size") or get("embedding_dim")
    ff_factor, ff_multiple = get("ffn_proj_factor", 2.667), get("ffn_round_up_to_multiple_of", 64)
    ff_factor = _ffn_factor_building(transformers_ffn_width(hidden, ff_factor, ff_multiple), hidden, ff_factor,
                                     ff_multiple, lambda f: round_to_multiple(hidden * f, ff_multiple, True))
    fields = dict(
        _PT_FIXED,
        vocab_size=get("vocab_size"),
        embedding_dim=hidden,
        num_blocks=get("num_blocks") or get("num_hidden_layers"),
        num_heads=get("num_heads"),
        tie_word_embeddings=get("tie_word_embeddings", False),
        add_post_blocks_norm=get("add_out_norm", True),
        norm_eps=get("norm_eps", 1e-6),
        block_norm_eps=get("norm_eps", 1e-6),
        cell_norm_eps=get("norm_eps", 1e-6),
        qk_dim_factor=get("qk_dim_factor", 0.5),
        v_dim_factor=get("v_dim_factor", 1.0),
        sequence_kernel=_PT_KERNELS[kernel],
        chunk_size=get("chunk_size", 64),
        cell_eps=get("eps", 1e-6),
        ff_proj_factor=ff_factor,
        ff_round_proj_up_to_multiple_of=ff_multiple,
        gate_soft_cap=get("gate_soft_cap", 15.0),
        logits_soft_cap=get("output_logit_soft_cap", 30.0),
        compute_dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "float32",
        pad_token_id=get("pad_token_id"),
        bos_token_id=get("bos_token_id"),
        eos_token_id=get("eos_token_id"),
    )
    fields.update(overrides)
    return fields


def to_transformers_config(config):
    """The transformers `xLSTMConfig` for `config`; raises if transformers' xLSTM cannot express it."""
    from transformers import xLSTMConfig

    if config.slstm_block_indices:
        raise ValueError(f"slstm_at={config.slstm_at!r} cannot be expressed by transformers' xLSTMConfig (it has no "
                         "sLSTM blocks)")
    for field, value in _PT_FIXED.items():
        if getattr(config, field) != value:
            raise ValueError(f"{field}={getattr(config, field)!r} cannot be expressed by transformers' xLSTMConfig "
                             f"(it fixes {field}={value!r})")
    for field in ("block_norm_eps", "cell_norm_eps"):
        if getattr(config, field) != config.norm_eps:
            raise ValueError(f"{field}={getattr(config, field)} differs from norm_eps={config.norm_eps}; "
                             "transformers' xLSTMConfig has one norm_eps")
    hidden, ff_multiple = config.embedding_dim, config.ff_round_proj_up_to_multiple_of
    ff_factor = _ffn_factor_building(config.ff_dim, hidden, config.ff_proj_factor, ff_multiple,
                                     lambda f: transformers_ffn_width(hidden, f, ff_multiple))
    kernel = {"parallel_stabilized": "parallel--native_autograd", "chunkwise": "chunkwise--native_autograd",
              "recurrent": "chunkwise--native_autograd"}[config.sequence_kernel]
    return xLSTMConfig(
        vocab_size=config.vocab_size, hidden_size=config.embedding_dim, num_hidden_layers=config.num_blocks,
        num_heads=config.num_heads, use_bias=False, tie_word_embeddings=config.tie_word_embeddings,
        add_out_norm=config.add_post_blocks_norm, norm_eps=config.norm_eps, qk_dim_factor=config.qk_dim_factor,
        v_dim_factor=config.v_dim_factor, chunkwise_kernel=kernel, chunk_size=config.chunk_size,
        eps=config.cell_eps, ffn_proj_factor=ff_factor,
        ffn_round_up_to_multiple_of=config.ff_round_proj_up_to_multiple_of, gate_soft_cap=config.gate_soft_cap,
        output_logit_soft_cap=config.logits_soft_cap, weight_mode="single", pad_token_id=config.pad_token_id,
        autocast_kernel_dtype="float32" if config.compute_dtype == "float32" else config.compute_dtype,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )


# ---------------------------------------------------------------------------------------------- sLSTM blocks
FUNCTIONS = ("slstm", "lstm")  # the library's sLSTM cell functions (`slstm`)
# the library's feedforward activations (`slstm.LIBRARY_ACTIVATIONS` implements them; "gelu" is exact erf)
ACTIVATION_NAMES = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")
BACKENDS = ("vanilla", "cuda")  # the library's sLSTM storage layouts (`library_params`)
DEFAULT_BACKEND = "cuda"  # the library's `sLSTMCellConfig.backend` default (Helibrunna configs omit the key)


def check_function(function: str) -> None:
    if function not in FUNCTIONS:
        raise ValueError(f"sLSTM function {function!r} is not supported; expected one of {FUNCTIONS}")


@dataclasses.dataclass(frozen=True)
class SLSTMConfig:
    """Everything an sLSTM block computes with (nothing about init or training kernels).

    `ff_proj_factor=None` means a block without feedforward. `ff_dim` is always recomputed from the factor and the
    rounding (the library's stored `_proj_up_dim` may be 0). A fresh init follows the library's defaults
    (`powerlaw_blockdependent` bias, zero recurrent kernel, small-init gates, Wang-init FFN output).
    """

    embedding_dim: int
    num_heads: int = 4
    conv1d_kernel_size: int = 4
    function: str = "slstm"
    group_norm_weight: bool = True
    ff_proj_factor: Optional[float] = 1.3
    ff_round_up: bool = True
    ff_multiple_of: int = 64
    ff_act_fn: str = "gelu"
    ff_bias: bool = False
    norm_eps: float = 1e-5
    dropout: float = 0.0  # the library's layer/feedforward dropout: identity at inference, not implemented in training
    block_idx: int = 0  # init only: the forget-gate bias of a fresh block depends on its depth
    num_blocks: int = 1

    def __post_init__(self):
        check_function(self.function)
        if self.embedding_dim <= 0 or self.num_heads <= 0 or self.embedding_dim % self.num_heads:
            raise ValueError(f"sLSTM embedding_dim {self.embedding_dim} must be a positive multiple of num_heads "
                             f"{self.num_heads}")
        if self.conv1d_kernel_size < 0:
            raise ValueError(f"sLSTM conv1d_kernel_size must be >= 0 (0 = no conv), got {self.conv1d_kernel_size}")
        if self.ff_proj_factor is not None and self.ff_act_fn not in ACTIVATION_NAMES:
            raise ValueError(f"feedforward act_fn {self.ff_act_fn!r} is not supported; expected one of "
                             f"{sorted(ACTIVATION_NAMES)}")

    @property
    def head_dim(self) -> int:
        return self.embedding_dim // self.num_heads

    @property
    def ff_dim(self) -> int:
        """The library's `UpProjConfigMixin` rule: proj_factor * D rounded (up or down) to a multiple."""
        if self.ff_proj_factor is None:
            return 0
        return round_to_multiple(self.ff_proj_factor * self.embedding_dim, self.ff_multiple_of, self.ff_round_up)


def slstm_config_from_library(block: Mapping, embedding_dim: Optional[int] = None) -> tuple[SLSTMConfig, str]:
    """A library `sLSTMBlockConfig` as a dict (`{"slstm": {...}, "feedforward": {...} | None}`) -> (our config,
    storage backend). `embedding_dim`: the LM's (a block inside `xLSTMLMModelConfig` may still carry -1). Only the
    fields that change the forward pass are read (num_heads, conv1d_kernel_size, function, group_norm_weight,
    dropout; feedforward proj_factor, round_proj_up_*, act_fn, bias, ff_type); the storage `backend` matters only
    when reading a library checkpoint, never for our own params.

    Refuses by name what would change the forward and is not implemented: a non-null `gradient_recurrent_clipval`
    (the cuda kernel also clips y in the forward with it), a `function` other than slstm/lstm, a feedforward type
    other than `ffn_gated`, an unknown activation.
    """
    slstm = dict(block.get("slstm") or {})
    dim = embedding_dim if embedding_dim is not None else slstm.get("embedding_dim", -1)
    if dim is None or dim <= 0:
        dim = slstm.get("hidden_size", -1)
    if dim is None or dim <= 0:
        raise ValueError("sLSTM block config has no embedding_dim; pass the model's embedding_dim")
    clip = slstm.get("gradient_recurrent_clipval")
    if clip is not None:
        raise ValueError(f"sLSTM gradient_recurrent_clipval={clip!r} is not supported (the library's cuda kernel "
                         "also clips y to it in the forward pass); only null is accepted")
    backend = slstm.get("backend", DEFAULT_BACKEND)
    if backend not in BACKENDS:
        raise ValueError(f"sLSTM backend {backend!r} is unknown; expected one of {BACKENDS}")
    # a missing key is the library's default `FeedForwardConfig()` (dacite fills it in); only null means none
    ffn = block.get("feedforward", {})
    ff: dict = {"ff_proj_factor": None}
    if ffn is not None:
        ff_type = ffn.get("ff_type", "ffn_gated")
        if ff_type != "ffn_gated":
            raise ValueError(f"feedforward ff_type {ff_type!r} is not supported; only 'ffn_gated'")
        act = ffn.get("act_fn", "gelu")
        if act not in ACTIVATION_NAMES:
            raise ValueError(f"feedforward act_fn {act!r} is not supported; expected one of "
                             f"{sorted(ACTIVATION_NAMES)}")
        ff = {"ff_proj_factor": float(ffn.get("proj_factor", 1.3)), "ff_round_up": bool(ffn.get("round_proj_up_dim_up",
              True)), "ff_multiple_of": int(ffn.get("round_proj_up_to_multiple_of", 64)), "ff_act_fn": act,
              "ff_bias": bool(ffn.get("bias", False))}
    config = SLSTMConfig(
        embedding_dim=int(dim), num_heads=int(slstm.get("num_heads", 4)),
        conv1d_kernel_size=int(slstm.get("conv1d_kernel_size", 4)), function=slstm.get("function", "slstm"),
        group_norm_weight=bool(slstm.get("group_norm_weight", True)),
        dropout=float(max(slstm.get("dropout", 0.0) or 0.0, (ffn or {}).get("dropout", 0.0) or 0.0)), **ff)
    return config, backend


def slstm_block_indices(config) -> list[int]:
    """Sorted sLSTM block indices of `config` ("all" -> every block). An sLSTM block has the feedforward of
    `slstm_block` (the library's gated FFN with exact GELU by default), an mLSTM block the config's `ff_type`."""
    if config.slstm_at == "all":
        return list(range(config.num_blocks))
    return sorted(config.slstm_at)


def slstm_block_config(config, block_idx: int) -> SLSTMConfig:
    """The `SLSTMConfig` of block `block_idx` (its depth enters the fresh forget-gate bias init only)."""
    sconfig, _ = slstm_config_from_library(config.slstm_block or {}, config.embedding_dim)
    return dataclasses.replace(sconfig, block_idx=block_idx, num_blocks=config.num_blocks)
