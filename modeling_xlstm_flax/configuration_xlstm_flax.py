"""`XLSTMFlaxConfig`: the Hugging Face config of the Flax xLSTM language model.

Every field of xlstm-jax's `xlstm_parallel` configs (`xLSTMLMModelConfig`, `xLSTMBlockConfig`, `mLSTMLayerConfig`,
`mLSTMCellConfig`, `FeedForwardConfig`, the mLSTM backend) has a flat counterpart here; `config_translation` maps
the upstream nested dict and transformers' `xLSTMConfig` to and from this class, `library_params` the configs of
NX-AI's `xlstm` library. The field table is `FIELD_DOCS` below (the README, the translations and the validation
messages share it). Upstream's `parallel` (device mesh) is runtime state, passed at run time through `jax.sharding`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import weakref
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from transformers import AutoConfig, PretrainedConfig

from .config_translation import (  # noqa: F401  (to_* re-exported: one import for every translation)
    round_to_multiple, slstm_block_config as _slstm_block_config, slstm_block_indices as _slstm_block_indices,
    to_transformers_config, to_upstream_config, transformers_config_fields, upstream_config_fields,
)
from .checks import (  # noqa: F401  (the field choices, re-exported)
    ACT_FNS, ALIASES, DTYPES, FF_TYPES, GATE_INPUTS, INIT_DISTRIBUTIONS, LAYER_TYPES, NORM_TYPES, OUTPUT_INIT_FNS,
    SEQUENCE_KERNELS, STEP_KERNELS, TOKEN_ID_FIELDS, TRANSFORMERS_BOOL_FIELDS, canonical_fields, check_torch_dtype,
    read_config_json, validate_config,
)
from .library_params import embedded_library_config, library_config_fields, library_folder_fields

FIELD_DOCS = {
    # language model (xLSTMLMModelConfig)
    "vocab_size": "Number of tokens in the vocabulary.",
    "embedding_dim": "Model width D (alias `hidden_size`).",
    "num_blocks": "Number of residual xLSTM blocks (alias `num_hidden_layers`).",
    "context_length": "Training context length; the recurrent model has no limit at inference (-1: unknown).",
    "tie_word_embeddings": "Use the token embedding as LM head (upstream name `tie_weights`).",
    "weight_decay_on_embedding": "Whether the training script applies weight decay to the embedding.",
    "add_embedding_dropout": "Apply `dropout` to the token embeddings.",
    "norm_eps": "Epsilon of the post-blocks norm (`out_norm`).",
    "norm_type": "Type of the post-blocks norm: layernorm | rmsnorm.",
    "logits_soft_cap": "Soft cap c of the logits, c * tanh(x / c); None: no cap.",
    "lm_head_dtype": "Dtype of the LM head matmul; logits are always float32.",
    "add_post_blocks_norm": "Normalise the last hidden state before the LM head.",
    "bias": "Biases in the dense layers.",
    "dropout": "Dropout rate on the outputs of the mLSTM layer and the feedforward (and embeddings if enabled).",
    "scan_blocks": "Stack the block params on a leading axis and run the blocks with `nn.scan`.",
    "compute_dtype": "Dtype of activations and matmuls (upstream name `dtype`); params stay float32.",
    "init_distribution_embed": "Distribution of the embedding init: normal | truncated_normal | uniform.",
    "init_distribution_out": "Distribution of the LM head init.",
    "slstm_at": "Block indices that are sLSTM blocks (a list, or \"all\"); the others are mLSTM blocks.",
    "slstm_block": "The sLSTM blocks' config as NX-AI xlstm's `sLSTMBlockConfig` dict: {\"slstm\": {num_heads, "
                   "conv1d_kernel_size, function, group_norm_weight, ...}, \"feedforward\": {proj_factor, act_fn, bias, "
                   "...} or null (no feedforward)}; None: the library's defaults. Read by `config_translation.slstm_block_config`.",
    # block (xLSTMBlockConfig)
    "block_norm_type": "Type of the pre-norms (and post-norms) inside each block.",
    "block_norm_eps": "Epsilon of the block norms.",
    "add_post_norm": "Normalise the mLSTM and feedforward outputs before the residual add (Gemma-2 style).",
    # feedforward (FeedForwardConfig)
    "ff_type": "Feedforward after each mLSTM layer: ffn_gated | ffn | None (no feedforward).",
    "ff_proj_factor": "Feedforward up-projection factor.",
    "ff_act_fn": "Feedforward activation: gelu (tanh approx.) | relu | relu^2 | sigmoid | swish | selu.",
    "ff_round_proj_up_dim_up": "Round the feedforward width up (True) or down to a multiple.",
    "ff_round_proj_up_to_multiple_of": "Feedforward width multiple.",
    "ff_init_distribution": "Distribution of the feedforward init.",
    "ff_output_init_fn": "Init of the feedforward down-projection: wang | small.",
    # mLSTM layer (mLSTMLayerConfig)
    "layer_type": "mlstm (Mamba-style: up-projection, conv1d, headwise qkv) | mlstm_v1 (xLSTM-7B: dense qkvo).",
    "num_heads": "Number of mLSTM heads.",
    "conv1d_kernel_size": "Causal depthwise conv kernel size (mlstm).",
    "qkv_proj_blocksize": "Block size of the headwise q/k/v projections (mlstm).",
    "proj_factor": "Up-projection factor of the inner width (mlstm).",
    "vmap_qk": "Store q and k headwise kernels stacked as one `qk_proj` param (mlstm).",
    "init_distribution": "Distribution of the mLSTM layer init.",
    "output_init_fn": "Init of the mLSTM down-projection: wang | small.",
    "mlstm_norm_type": "Norm type of the mlstm out-norm and of the qk-norm (upstream layer `norm_type`).",
    "qk_dim_factor": "q/k width as a factor of D (mlstm_v1) or of the inner width (mlstm).",
    "v_dim_factor": "v width as a factor of D (mlstm_v1) or of the inner width (mlstm).",
    "gate_input": "Input of the gates (mlstm): qkv | x_mlstm | x_mlstm_conv | x_mlstm_conv_act.",
    "round_proj_up_dim_up": "Round the inner width up (True) or down (mlstm).",
    "round_proj_up_to_multiple_of": "Inner width multiple (mlstm).",
    "debug_cell": "Skip the mLSTM cell (the layer returns its z branch) - a debugging aid (mlstm only).",
    # mLSTM cell (mLSTMCellConfig)
    "gate_soft_cap": "Soft cap of the gate pre-activations; None: no cap.",
    "gate_dtype": "Dtype of the gate projections (float32 recommended).",
    "igate_bias_init_range": "Input gate bias init: a value, [low, high] linspace over heads, or None (normal 0.1).",
    "fgate_bias_init_range": "Forget gate bias init: a value, [low, high] linspace over heads, or None.",
    "add_qk_norm": "Normalise q and k per head before the cell.",
    "gate_linear_headwise": "Gates see only their head's features (headwise projection, mlstm).",
    "reset_at_document_boundaries": "Reset the memory and the conv window exactly where `document_borders` is True "
                                    "(borders given to a model without it are an error).",
    "reset_fgate_value": "Upstream's approximate reset (forget gate pre-activation at borders); kept for config "
                         "translation, only its default -25 is accepted (the reset here is exact).",
    "cell_norm_type_v1": "Norm type of the multi-head out-norm of mlstm_v1 (upstream `norm_type_v1`).",
    "cell_norm_eps": "Epsilon of the multi-head out-norm and of the qk-norm.",
    # backend (mLSTMBackendNameAndKwargs)
    "sequence_kernel": "mLSTM form for whole sequences: parallel_stabilized | chunkwise | recurrent.",
    "step_kernel": "mLSTM form for single-token decoding: recurrent.",
    "chunk_size": "Chunk length of the chunkwise form.",
    "cell_eps": "Epsilon of the mLSTM normaliser max(|q.n|, exp(-m)) + eps.",
    # this port's own (no upstream counterpart)
    "prefill_segment_size": "Tokens per segment when a long prompt is run with a cache (generate's prefill): the "
                            "prompt goes through the recurrent state segment by segment, so only one segment's "
                            "activations are alive; None: one pass. Results are the same either way.",
    "gradient_checkpointing": "Rematerialise each block in the backward pass (`nn.remat`): less training memory, "
                              "about one more forward pass of compute; same results. Default of new models; "
                              "`model.enable_gradient_checkpointing()` switches an existing one.",
}


def _resolve_aliases(init):
    """Wraps `XLSTMFlaxConfig.__init__`: alias names given (`hidden_size`, `tie_weights`, ...) become their fields,
    and an alias given beside its field with another value is a ValueError naming both (`checks`)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        given = signature.bind_partial(self, *args, **kwargs).arguments
        given.pop("self")
        given.update(given.pop("kwargs", {}))
        return init(self, **canonical_fields(given, "XLSTMFlaxConfig()"))

    return wrapper


class XLSTMFlaxConfig(PretrainedConfig):
    """Configuration of the Flax xLSTM LM (see `FIELD_DOCS` for every field)."""

    model_type = "xlstm_flax"
    attribute_map = {"hidden_size": "embedding_dim", "num_hidden_layers": "num_blocks"}

    @_resolve_aliases
    def __init__(
        self,
        vocab_size: int = 50304,
        embedding_dim: int = 4096,
        num_blocks: int = 32,
        context_length: int = -1,
        tie_word_embeddings: bool = False,
        weight_decay_on_embedding: bool = False,
        add_embedding_dropout: bool = False,
        norm_eps: float = 1e-6,
        norm_type: str = "rmsnorm",
        logits_soft_cap: Optional[float] = 30.0,
        lm_head_dtype: str = "float32",
        add_post_blocks_norm: bool = True,
        bias: bool = False,
        dropout: float = 0.0,
        scan_blocks: bool = False,
        compute_dtype: str = "bfloat16",
        init_distribution_embed: str = "normal",
        init_distribution_out: str = "normal",
        slstm_at: Union[Sequence[int], str] = (),
        slstm_block: Optional[dict] = None,
        block_norm_type: str = "rmsnorm",
        block_norm_eps: float = 1e-6,
        add_post_norm: bool = False,
        ff_type: Optional[str] = "ffn_gated",
        ff_proj_factor: float = 2.667,
        ff_act_fn: str = "swish",
        ff_round_proj_up_dim_up: bool = True,
        ff_round_proj_up_to_multiple_of: int = 64,
        ff_init_distribution: str = "normal",
        ff_output_init_fn: str = "wang",
        layer_type: str = "mlstm_v1",
        num_heads: int = 8,
        conv1d_kernel_size: int = 4,
        qkv_proj_blocksize: int = 4,
        proj_factor: float = 2.0,
        vmap_qk: bool = False,
        init_distribution: str = "normal",
        output_init_fn: str = "wang",
        mlstm_norm_type: str = "rmsnorm",
        qk_dim_factor: float = 0.5,
        v_dim_factor: float = 1.0,
        gate_input: str = "qkv",
        round_proj_up_dim_up: bool = True,
        round_proj_up_to_multiple_of: int = 64,
        debug_cell: bool = False,
        gate_soft_cap: Optional[float] = 15.0,
        gate_dtype: str = "float32",
        igate_bias_init_range: Union[float, Sequence[float], None] = -10.0,
        fgate_bias_init_range: Union[float, Sequence[float], None] = (3.0, 6.0),
        add_qk_norm: bool = False,
        gate_linear_headwise: bool = False,
        reset_at_document_boundaries: bool = False,
        reset_fgate_value: float = -25.0,
        cell_norm_type_v1: str = "layernorm",
        cell_norm_eps: float = 1e-6,
        sequence_kernel: str = "chunkwise",
        step_kernel: str = "recurrent",
        chunk_size: int = 64,
        cell_eps: float = 1e-6,
        prefill_segment_size: Optional[int] = 1024,
        gradient_checkpointing: bool = False,
        bos_token_id: Optional[int] = None,
        eos_token_id: Optional[int] = None,
        pad_token_id: Optional[int] = None,
        **kwargs,
    ):
        check_field_names(kwargs, "XLSTMFlaxConfig()")
        # transformers' `dtype` (alias `torch_dtype`) records the PyTorch weights' dtype and is kept and saved as
        # transformers does; this model computes in `compute_dtype` (see the README)
        check_torch_dtype(kwargs.get("dtype"))
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.num_blocks = num_blocks
        self.context_length = context_length
        self.weight_decay_on_embedding = weight_decay_on_embedding
        self.add_embedding_dropout = add_embedding_dropout
        self.norm_eps = norm_eps
        self.norm_type = norm_type
        self.logits_soft_cap = logits_soft_cap
        self.lm_head_dtype = lm_head_dtype
        self.add_post_blocks_norm = add_post_blocks_norm
        self.bias = bias
        self.dropout = dropout
        self.scan_blocks = scan_blocks
        self.compute_dtype = compute_dtype
        self.init_distribution_embed = init_distribution_embed
        self.init_distribution_out = init_distribution_out
        self.slstm_at = list(slstm_at) if isinstance(slstm_at, tuple) else slstm_at  # None, an int: named by validate
        self.slstm_block = slstm_block
        self.block_norm_type = block_norm_type
        self.block_norm_eps = block_norm_eps
        self.add_post_norm = add_post_norm
        self.ff_type = ff_type
        self.ff_proj_factor = ff_proj_factor
        self.ff_act_fn = ff_act_fn
        self.ff_round_proj_up_dim_up = ff_round_proj_up_dim_up
        self.ff_round_proj_up_to_multiple_of = ff_round_proj_up_to_multiple_of
        self.ff_init_distribution = ff_init_distribution
        self.ff_output_init_fn = ff_output_init_fn
        self.layer_type = layer_type
        self.num_heads = num_heads
        self.conv1d_kernel_size = conv1d_kernel_size
        self.qkv_proj_blocksize = qkv_proj_blocksize
        self.proj_factor = proj_factor
        self.vmap_qk = vmap_qk
        self.init_distribution = init_distribution
        self.output_init_fn = output_init_fn
        self.mlstm_norm_type = mlstm_norm_type
        self.qk_dim_factor = qk_dim_factor
        self.v_dim_factor = v_dim_factor
        self.gate_input = gate_input
        self.round_proj_up_dim_up = round_proj_up_dim_up
        self.round_proj_up_to_multiple_of = round_proj_up_to_multiple_of
        self.debug_cell = debug_cell
        self.gate_soft_cap = gate_soft_cap
        self.gate_dtype = gate_dtype
        self.igate_bias_init_range = list(igate_bias_init_range) if isinstance(igate_bias_init_range, (list, tuple)) else igate_bias_init_range
        self.fgate_bias_init_range = list(fgate_bias_init_range) if isinstance(fgate_bias_init_range, (list, tuple)) else fgate_bias_init_range
        self.add_qk_norm = add_qk_norm
        self.gate_linear_headwise = gate_linear_headwise
        self.reset_at_document_boundaries = reset_at_document_boundaries
        self.reset_fgate_value = reset_fgate_value
        self.cell_norm_type_v1 = cell_norm_type_v1
        self.cell_norm_eps = cell_norm_eps
        self.sequence_kernel = sequence_kernel
        self.step_kernel = step_kernel
        self.chunk_size = chunk_size
        self.cell_eps = cell_eps
        self.prefill_segment_size = prefill_segment_size
        self.gradient_checkpointing = gradient_checkpointing
        # transformers 5 drops generation parameters given to a config; `use_cache` (in NX-AI/xLSTM-7b's) is kept
        use_cache = kwargs.pop("use_cache", None)
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
        if use_cache is not None:
            self.use_cache = use_cache
        self.validate()
        # from now on every assignment is checked (see __setattr__); set last, so construction itself is not
        self.__dict__[_CHECK_ASSIGNMENTS] = True

    # ------------------------------------------------------------------ assignment
    def __setattr__(self, key: str, value: Any) -> None:
        """After construction: an unknown public name is an error (a config.json that cannot be loaded again), and a
        change to a field is validated with the whole config; an invalid value is refused, the old one kept."""
        if not self.__dict__.get(_CHECK_ASSIGNMENTS):
            return super().__setattr__(key, value)
        key = ALIASES.get(key, key)
        if not key.startswith("_"):
            check_field_names([key], f"setting XLSTMFlaxConfig.{key}")
        self._check_not_built({key: value})
        if key not in _own_fields() and key not in TOKEN_ID_FIELDS + TRANSFORMERS_BOOL_FIELDS:
            return super().__setattr__(key, value)
        try:
            self.update({key: value})
        except ValueError as exc:
            raise ValueError(f"cannot set XLSTMFlaxConfig.{key}={value!r} (the config keeps {key}="
                             f"{getattr(self, key, None)!r}): {exc}") from None

    def update(self, config_dict: dict[str, Any]) -> None:
        """Set several fields at once (names checked first), then validate the result; on error nothing changes."""
        config_dict = canonical_fields(dict(config_dict), "XLSTMFlaxConfig.update()")
        check_field_names([k for k in config_dict if not k.startswith("_")], "XLSTMFlaxConfig.update()")
        self._check_not_built(config_dict)
        missing = object()
        old = {k: self.__dict__.get(k, missing) for k in config_dict}
        for key, value in config_dict.items():
            if key in _LIST_FIELDS and isinstance(value, tuple):  # as the constructor stores them
                value = list(value)
            if key in _own_fields():
                object.__setattr__(self, key, value)
            else:
                PretrainedConfig.__setattr__(self, key, value)
        try:
            self.validate()
        except ValueError:
            for key, value in old.items():
                if value is missing:
                    self.__dict__.pop(key, None)
                else:
                    self.__dict__[key] = value
            raise

    def __delattr__(self, key: str) -> None:
        if self.__dict__.get(_CHECK_ASSIGNMENTS) and key in _own_fields() | _TOKEN_FIELDS:
            raise AttributeError(f"cannot delete XLSTMFlaxConfig.{key}: every field needs a value; set it instead "
                                 f"(config.{key} = ...)")
        super().__delattr__(key)

    def mark_built(self, model_name: str) -> None:
        """Called by a model built on this config: from then on its model-defining fields (everything but
        `RUNTIME_FIELDS`) cannot change, since the model's params and checks follow them."""
        if id(self) not in _BUILT:
            weakref.finalize(self, _BUILT.pop, id(self), None)
        _BUILT[id(self)] = model_name

    def _check_not_built(self, changes: dict) -> None:
        model = _BUILT.get(id(self))
        for key, value in changes.items() if model else ():
            if key in _own_fields() and key not in RUNTIME_FIELDS and getattr(self, key, None) != value:
                raise ValueError(
                    f"cannot set XLSTMFlaxConfig.{key}={value!r}: this config belongs to a built {model}, whose "
                    f"params and input checks follow {key}={getattr(self, key)!r}; build a new config and model "
                    f"(XLSTMFlaxConfig.from_dict({{**config.to_dict(), {key!r}: ...}})). Fields that may change "
                    f"on a built model: {sorted(RUNTIME_FIELDS)}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def tie_weights(self) -> bool:
        """Upstream's name of `tie_word_embeddings`."""
        return self.tie_word_embeddings

    @property
    def block_map(self) -> list[int]:
        """Upstream's block map: 0 = mLSTM block, 1 = sLSTM block, one entry per block."""
        return [1 if i in self.slstm_block_indices else 0 for i in range(self.num_blocks)]

    # ------------------------------------------------------------------ sLSTM blocks (see `config_translation`)
    @property
    def slstm_block_indices(self) -> list[int]:
        """Sorted indices of the sLSTM blocks (`slstm_at`, "all" expanded)."""
        return _slstm_block_indices(self)

    def slstm_block_config(self, block_idx: int):
        """The `config_translation.SLSTMConfig` of sLSTM block `block_idx` (from `slstm_block`)."""
        return _slstm_block_config(self, block_idx)

    @property
    def inner_dim(self) -> int:
        """Width the mLSTM cell works in: D for mlstm_v1, the rounded up-projection for mlstm."""
        if self.layer_type == "mlstm_v1":
            return self.embedding_dim
        return round_to_multiple(
            self.proj_factor * self.embedding_dim, self.round_proj_up_to_multiple_of, self.round_proj_up_dim_up
        )

    @property
    def qk_dim(self) -> int:
        """Total q/k width over all heads."""
        if self.layer_type == "mlstm_v1":
            return int(self.embedding_dim * self.qk_dim_factor)
        return round(self.qk_dim_factor * self.inner_dim)

    @property
    def v_dim(self) -> int:
        """Total v width over all heads."""
        if self.layer_type == "mlstm_v1":
            return int(self.embedding_dim * self.v_dim_factor)
        return round(self.v_dim_factor * self.inner_dim)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_dim // self.num_heads

    @property
    def v_head_dim(self) -> int:
        return self.v_dim // self.num_heads

    @property
    def num_proj_heads(self) -> int:
        """Number of blocks of the headwise q/k/v projections (mlstm)."""
        return self.inner_dim // self.qkv_proj_blocksize

    @property
    def ff_dim(self) -> int:
        """Feedforward hidden width."""
        return round_to_multiple(
            self.ff_proj_factor * self.embedding_dim, self.ff_round_proj_up_to_multiple_of, self.ff_round_proj_up_dim_up
        )

    @property
    def gate_input_dim(self) -> int:
        """Features the gate projections read."""
        if self.layer_type == "mlstm_v1":
            return self.embedding_dim
        if self.gate_input == "qkv":
            return 2 * self.qk_dim + self.v_dim
        return self.inner_dim

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `ValueError` naming the first invalid field, its value and what is allowed (`checks`)."""
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        """As `PretrainedConfig.to_dict`; transformers' `dtype` only when set (ours is `compute_dtype`)."""
        output = super().to_dict()
        if output.get("dtype") is None:
            output.pop("dtype", None)
        output.pop(_CHECK_ASSIGNMENTS, None)
        return output

    @classmethod
    def _dict_from_json_file(cls, json_file):
        """The JSON object of `json_file`; anything else (a list, a number) is an error naming the file."""
        data = read_config_json(json_file)
        if not isinstance(data, dict):
            raise ValueError(f"config file {json_file} holds a JSON {type(data).__name__}, not an object of config "
                             "fields ({\"vocab_size\": ..., ...})")
        if data.get("model_type", cls.model_type) == cls.model_type:  # transformers' `xlstm` is translated instead
            check_field_names(data, f"config file {json_file}")
        return data

    @classmethod
    def _get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """As `PretrainedConfig._get_config_dict`, but a folder without the config file is an error (transformers
        hands back nothing, and `from_pretrained` then built the default 7B config)."""
        config_dict, unused = super()._get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict is None:
            raise ValueError(f"{pretrained_model_name_or_path} has no config.json (no XLSTMFlaxConfig to load); give "
                             "a model folder written by save_pretrained or the conversion commands")
        return config_dict, unused

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As `PretrainedConfig.from_pretrained` (a folder, a config file or a Hub id; the same keyword arguments),
        reading transformers' `xlstm` config through `from_dict`'s translation (so without transformers' "model of
        type xlstm" warning) and a checkpoint folder of NX-AI's `xlstm` library (`library_params`)."""
        config_dict = library_folder_fields(pretrained_model_name_or_path)
        if config_dict is None:
            config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        return cls.from_dict(config_dict, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """As `PretrainedConfig.from_dict`, but strict: a transformers `xlstm` config is translated, any other
        model_type and any field this config does not know are errors (never silently ignored)."""
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type == "xlstm":
            config = from_transformers_config(config_dict)
            return (config, {}) if kwargs.get("return_unused_kwargs") else config
        if model_type != cls.model_type:
            raise ValueError(f"config model_type {model_type!r} cannot be loaded as {cls.__name__}; expected "
                             f"{cls.model_type!r} (or transformers' 'xlstm')")
        check_field_names(config_dict, "config")
        canonical_fields(kwargs, "config keyword arguments")  # hidden_size=32, embedding_dim=64: refused
        return super().from_dict(config_dict, **kwargs)


# Set in an instance's __dict__ once construction has finished: from then on assignments are validated.
_CHECK_ASSIGNMENTS = "_xlstm_flax_check_assignments"
_LIST_FIELDS = ("slstm_at", "igate_bias_init_range", "fgate_bias_init_range")
_TOKEN_FIELDS = frozenset({"bos_token_id", "eos_token_id", "pad_token_id"})
# id(config) -> name of the model class built on it (see `XLSTMFlaxConfig.mark_built`)
_BUILT: dict = {}
# Fields a built model reads at call time without changing its params: they may change after the model is built
RUNTIME_FIELDS = frozenset({
    "sequence_kernel", "step_kernel", "chunk_size", "prefill_segment_size", "gradient_checkpointing", "dropout",
    "context_length", "weight_decay_on_embedding", "init_distribution_embed", "init_distribution_out",
    "init_distribution", "ff_init_distribution", "output_init_fn", "ff_output_init_fn", "reset_at_document_boundaries",
    "reset_fgate_value", "igate_bias_init_range", "fgate_bias_init_range", "bos_token_id", "eos_token_id",
    "pad_token_id",
})

# Fields that change what the model computes but neither the names, shapes nor random initial values of its params:
# models whose configs differ only in these (and in fields that are not ours) share one compiled init program
# (`modeling_flax_xlstm._compiled_init`). tests/test_model.py checks each of them leaves the init program as it is.
INIT_FREE_FIELDS = frozenset({
    "sequence_kernel", "chunk_size", "prefill_segment_size", "context_length", "dropout",
    "reset_at_document_boundaries", "reset_fgate_value", "weight_decay_on_embedding", "bos_token_id", "eos_token_id",
    "pad_token_id", "gate_soft_cap", "logits_soft_cap", "cell_eps", "norm_eps", "block_norm_eps", "cell_norm_eps",
    "compute_dtype", "gate_dtype", "lm_head_dtype",
})


def init_defining_fields(config) -> str:
    """The config's own fields that may change its random initial params (all but `INIT_FREE_FIELDS`), as one
    canonical string: equal strings, equal initial params for one seed."""
    own = _own_fields()
    return json.dumps({k: v for k, v in config.to_dict().items() if k in own and k not in INIT_FREE_FIELDS},
                      sort_keys=True, default=repr)


# Attributes transformers itself defines, sets or reads on model configs beyond what `PretrainedConfig()` holds:
# accepted in the constructor and by assignment, and written and read back by save_pretrained / from_pretrained.
TRANSFORMERS_FIELDS = frozenset({
    "tie_weights", "model_type", "transformers_version", "architectures", "auto_map", "name_or_path", "dtype",
    "torch_dtype", "attn_implementation", "custom_pipelines", "use_cache", "gradient_checkpointing",
    "output_attentions", "output_hidden_states", "return_dict", "use_bfloat16", "tf_legacy_loss", "num_labels",
    "pruned_heads", "torchscript", "task_specific_params", "hidden_size", "num_hidden_layers",
})


@functools.lru_cache(maxsize=None)
def _own_fields() -> frozenset:
    """This config's own constructor fields (besides **kwargs)."""
    return frozenset(set(inspect.signature(XLSTMFlaxConfig.__init__).parameters) - {"self", "kwargs"})


@functools.lru_cache(maxsize=None)
def _known_fields() -> frozenset:
    """Every name a config may hold: our fields, `PretrainedConfig`'s and transformers' common ones."""
    return _own_fields() | frozenset(PretrainedConfig().to_dict()) | TRANSFORMERS_FIELDS


def known_field_names() -> list[str]:  # sorted: our fields and transformers' standard config attributes
    return sorted(_known_fields())


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(_own_fields()), n=1, cutoff=0.6) or difflib.get_close_matches(
        name, sorted(_known_fields()), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_field_names(names, where: str) -> None:
    """Raise ValueError if any of `names` is not a field of XLSTMFlaxConfig (names starting with `_` are
    transformers' bookkeeping and pass), naming each unknown name with the closest known field."""
    unknown = sorted(str(k) for k in names if not str(k).startswith("_") and k not in _known_fields())
    if unknown:
        details = "; ".join(f"{name!r}{_suggestion(name)}" for name in unknown)
        raise ValueError(f"{where}: unknown XLSTMFlaxConfig field{'s' if len(unknown) > 1 else ''} {details}. "
                         "Fields are listed in modeling_xlstm_flax.configuration_xlstm_flax.FIELD_DOCS")


def parse_field_overrides(items: Optional[Sequence[str]], option: str = "--set") -> dict[str, Any]:
    """Command-line overrides ["field=value", ...] -> {field: value}. Values are parsed as JSON where they parse
    (true, 3, 1e-5, null, [1, 2]) and kept as strings otherwise; field names are checked (ValueError naming the
    option, the item and the closest field)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected FIELD=VALUE, e.g. {option} num_blocks=4")
        check_field_names([key], f"{option} {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# ------------------------------------------------------------------ translations and presets
def from_upstream_config(upstream: dict[str, Any], **overrides) -> XLSTMFlaxConfig:
    """An `XLSTMFlaxConfig` from upstream xlstm-jax's nested `xLSTMLMModelConfig` dict (`config_translation`)."""
    return XLSTMFlaxConfig(**upstream_config_fields(upstream, **overrides))


def from_transformers_config(pt_config, **overrides) -> XLSTMFlaxConfig:
    """An `XLSTMFlaxConfig` from transformers' `xLSTMConfig` or its dict (`config_translation`), or from the library
    config one holds (a Distil-xLSTM folder read by transformers' AutoConfig, `library_params`)."""
    library = embedded_library_config(pt_config)
    if library is not None:
        return XLSTMFlaxConfig(**library_config_fields(library, **overrides)[0])
    return XLSTMFlaxConfig(**transformers_config_fields(pt_config, **overrides))


def package_data_dir(name: str) -> Path:
    """A data folder of the project's top level (`configuration/presets`, `model_cards`): inside the installed
    package (setup.cfg installs it as `modeling_xlstm_flax/<last part>`) or, in a source checkout, at the repo root."""
    here = Path(__file__).resolve().parent
    installed = here / Path(name).name
    return installed if installed.is_dir() else here.parent / name


PRESETS_DIR = package_data_dir("configuration/presets")


def preset_names() -> list[str]:
    """Names of the bundled presets (`configuration/presets/<name>.json`)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str, **overrides) -> XLSTMFlaxConfig:
    """An `XLSTMFlaxConfig` from a bundled preset, e.g. `load_preset("xlstm-7b")`; `overrides` replace preset fields
    (unknown names are an error naming the closest field) and the result is validated once."""
    if not isinstance(name, str) or name not in preset_names():  # a bare name: no path leaves the presets folder
        raise ValueError(f"unknown preset {name!r}; available: {preset_names()} (a name, not a path)")
    overrides = canonical_fields(overrides, f"load_preset({name!r}) overrides")
    check_field_names(overrides, f"load_preset({name!r}) overrides")
    fields = XLSTMFlaxConfig._dict_from_json_file(str(PRESETS_DIR / f"{name}.json"))
    return XLSTMFlaxConfig(**{**fields, **overrides})


# `AutoConfig` knows model_type "xlstm_flax" wherever the package's config module is imported (the models:
# `registration`); not from a Hub folder's copy of this file (its auto_map names it), which must not replace ours.
if __package__ == "modeling_xlstm_flax":
    AutoConfig.register(XLSTMFlaxConfig.model_type, XLSTMFlaxConfig, exist_ok=True)
