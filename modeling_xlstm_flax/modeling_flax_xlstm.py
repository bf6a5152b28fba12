"""Flax xLSTM language model (xlstm-jax `xlstm_parallel` family) as Hugging Face `FlaxPreTrainedModel`s.

`FlaxXLSTMModel` (the backbone, last hidden state) and `FlaxXLSTMForCausalLM` wrap the linen modules of
`xlstm_layers` with transformers' Flax model API (on the port's own base class, `flax_base`): `from_pretrained` /
`save_pretrained` (through `loading`), `init_cache` (the recurrent state is the generation cache: `cache`),
`__call__` and `generate` (`generation`).

Shapes: B batch, S sequence, D embedding_dim, NH heads, DHQK / DHV head dims, V vocabulary.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from functools import partial
from pathlib import Path
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.frozen_dict import freeze, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

from .checkpoint_io import param_dtype_of, resolve_model_dir
from .checkpoint_writer import params_tensors, parse_size, write_checkpoint
from .safe_output import MODEL_FILES, atomic_output_dir, check_output_path
from .configuration_xlstm_flax import XLSTMFlaxConfig, from_transformers_config, init_defining_fields
from .cache import check_cache, init_cache
from .flax_base import FlaxCausalLMOutput, FlaxPreTrainedModel, forget_compiled, is_traced, jitted, model_key
from .checks import check_dropout_rng, check_inputs, check_not_donated
from .library_params import read_library_config
from .loading import check_model_params, check_params_to_save, check_weight_files, load_checkpoint, param_plan, plan_tree
from .slstm import powerlaw_bias_init
from .xlstm_layers import (  # noqa: F401  (the module classes are part of this module's API, as in transformers)
    FlaxXLSTMForCausalLMModule, FlaxXLSTMModule, stack_block_params, unstack_block_params,
)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- HF wrappers
# Options transformers' Auto classes and `from_pretrained` pass along that change nothing for this loader (it reads
# the files themselves: `from_pt` is detected from the safetensors metadata).
_IGNORED_LOADING_KWARGS = (
    "from_pt", "from_tf", "from_flax", "trust_remote_code", "_from_auto", "_from_pipeline", "adapter_kwargs",
    "_commit_hash", "user_agent", "code_revision", "resume_download", "use_auth_token", "mirror", "_fast_init",
    "low_cpu_mem_usage", "ignore_mismatched_sizes", "use_safetensors", "variant", "output_loading_info",
)


def _load_generation_config(directory: Path):
    """The GenerationConfig of `directory/generation_config.json` (None without one), as transformers reads it;
    a file that is not valid JSON, not an object or not a valid generation config is a ValueError naming it."""
    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return None
    from transformers import GenerationConfig

    try:
        if not isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
            raise TypeError("not a JSON object")
        return GenerationConfig.from_pretrained(str(directory))
    except Exception as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{path}: not a valid generation config ({type(e).__name__}: {reason[:300]}); fix or "
                         "delete it") from None


def _as_flax_config(config) -> XLSTMFlaxConfig:
    if isinstance(config, XLSTMFlaxConfig):
        config.validate()  # a model is only ever built from a valid config (assignments are checked too)
        return config
    if type(config).__name__ == "xLSTMConfig":  # transformers' PyTorch config (e.g. NX-AI/xLSTM-7b)
        return from_transformers_config(config)
    raise ValueError(f"expected an XLSTMFlaxConfig or transformers' xLSTMConfig, got {type(config).__name__}")


_INIT_FNS: dict = {}  # (module, config values, input shape) -> jitted init; bounded


def _compiled_init(module, input_shape: tuple):
    """`module.init` under `jax.jit`, kept per module type, the config's init-defining fields (not the kernel
    choice, chunk size, token ids, ...: `configuration_xlstm_flax.INIT_FREE_FIELDS`), dtype and input shape, so that
    models of configs differing only in how they compute share one program: initialising op by op (eagerly)
    compiles hundreds of tiny programs, and compiling the init program costs more than a forward pass of a small
    model. The program kept is the first module's of its key; the others' give the same params."""
    key = (type(module).__name__, init_defining_fields(module.config), str(module.dtype),
           module.gradient_checkpointing, input_shape)
    fn = _INIT_FNS.get(key)
    if fn is None:
        fn = jax.jit(lambda rngs: module.init(rngs, jnp.zeros(input_shape, dtype="i4"))["params"])
        if len(_INIT_FNS) >= 16:
            _INIT_FNS.pop(next(iter(_INIT_FNS)))
        _INIT_FNS[key] = fn
    return fn


class FlaxXLSTMPreTrainedModel(FlaxPreTrainedModel):
    """Common loading, init and call logic. `dtype` None means the config's `compute_dtype`."""

    config_class = XLSTMFlaxConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    module_class: nn.Module = None
    # `model(...)` runs compiled by default (see `__call__`'s `jit`); set False on a model (or the class) for eager
    jit_forward: bool = True

    def __init__(self, config, input_shape=(1, 1), seed: int = 0, dtype=None, _do_init: bool = True,
                 gradient_checkpointing: Optional[bool] = None, **kwargs):
        """gradient_checkpointing: None takes the config's `gradient_checkpointing` field."""
        config = _as_flax_config(config)
        if isinstance(seed, bool) or not hasattr(seed, "__index__"):
            raise ValueError(f"seed={seed!r} is invalid: must be an int (the random init's seed)")
        dtype = jnp.dtype(config.compute_dtype) if dtype is None else param_dtype_of(dtype, "dtype")
        if gradient_checkpointing is None:
            gradient_checkpointing = getattr(config, "gradient_checkpointing", False)
        module = self.module_class(config=config, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                                   **kwargs)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)
        config.mark_built(type(self).__name__)  # its shape-defining fields are fixed from now on

    def enable_gradient_checkpointing(self):
        """Rematerialise each block in the backward pass (`nn.remat` over the blocks, inside `nn.scan` with
        `scan_blocks`): a training step keeps only the blocks' inputs (B, S, D) and recomputes the rest, trading
        about one more forward pass for memory (XLA:CPU lowers the peak only with `scan_blocks=True`:
        `benchmarks/README.md`). Same outputs, gradients and params. Rebuilds the module; the config is left as
        it is (its `gradient_checkpointing` field is the default for newly built models)."""
        self._module = self.module_class(config=self.config, dtype=self.dtype, gradient_checkpointing=True)
        forget_compiled(self)

    def disable_gradient_checkpointing(self):
        """Undo `enable_gradient_checkpointing`: keep every activation for the backward pass."""
        self._module = self.module_class(config=self.config, dtype=self.dtype, gradient_checkpointing=False)
        forget_compiled(self)

    @property
    def has_lm_head(self) -> bool:
        """Whether the model returns logits (`FlaxXLSTMForCausalLM`) rather than hidden states."""
        return isinstance(self.module, FlaxXLSTMForCausalLMModule)

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the blocks run under `nn.remat` (see `enable_gradient_checkpointing`)."""
        return self.module.gradient_checkpointing

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, dtype=None, *model_args, param_dtype=None,
                        allow_missing_keys: bool = False, check_finite: bool = True, **kwargs):
        """A model folder or Hub id -> model (or `(model, params)` with `_do_init=False`), streamed tensor by tensor.

        Reads every layout this port accepts (`loading`): Flax safetensors (single or sharded), transformers'
        PyTorch xLSTM safetensors (single or sharded, `from_pt` or not: the files say which), Flax msgpack, and
        checkpoint folders of NX-AI's `xlstm` library (`library_checkpoint`). Each tensor is read, checked (names,
        shapes, dtype class, finite values), cast if asked and put on the device at once: no random init, no
        float32 copy of the whole model on the host.

        * `dtype=None` (default) uses the config's `compute_dtype`;
        * the params keep each tensor's stored float dtype (a float16 or bfloat16 checkpoint stays so, as in
          transformers; float64 becomes float32 unless JAX runs 64-bit) unless `param_dtype` (float32, bfloat16,
          float16, or float64 with `jax_enable_x64`) asks for another: a stored value beyond its range is then an
          error naming the tensor (never an inf). `dtype` is the compute dtype only, as in transformers' Flax
          models (bfloat16 compute keeps float32 params float32); a library checkpoint is translated in float32;
        * a backbone checkpoint (`FlaxXLSTMModel`) loads into `FlaxXLSTMForCausalLM` with the LM head initialised
          and a warning naming it, as transformers does; any other missing param is an error naming it unless
          `allow_missing_keys=True` (then initialised with a warning). With `_do_init=False` missing params are
          never an error: a warning names them, `model._missing_keys` holds them and
          `model.init_weights(rng, input_shape, params)` completes the params (transformers' behaviour). With
          `_do_init=True` transformers would also initialise them silently but for a warning; this port refuses,
          because a model that runs on random weights is a silently wrong result;
        * `check_finite=False` skips the NaN/inf check (one pass over each tensor, about 0.3 s per GB);
        * `generation_config.json`, when present, becomes `model.generation_config` (a corrupt one is an error);
        * a PyTorch pickle (`pytorch_model.bin`) is refused with how to convert it (to safetensors) first.
        """
        do_init = kwargs.pop("_do_init", True)
        config = kwargs.pop("config", None)
        if param_dtype is not None:
            param_dtype_of(param_dtype)  # an invalid dtype is named before any file is read
        if dtype is not None:
            param_dtype_of(dtype, "dtype")
        for name in _IGNORED_LOADING_KWARGS:  # transformers' loading options with no meaning here
            kwargs.pop(name, None)
        hub_kwargs = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "local_files_only",
                                                 "force_download", "subfolder", "proxies") if k in kwargs}
        directory = resolve_model_dir(pretrained_model_name_or_path, **hub_kwargs)
        if config is None:
            if not (directory / "config.json").is_file() and read_library_config(directory) is None:
                raise ValueError(f"{directory} has no config.json; pass config=... or use a model directory written "
                                 "by save_pretrained or the conversion commands")
            config = XLSTMFlaxConfig.from_pretrained(directory)  # ours, transformers' xLSTMConfig or the library's
        config = _as_flax_config(config)
        for key, value in kwargs.items():  # the rest are config fields, as transformers' from_pretrained allows
            if key not in config.to_dict() and not hasattr(config, key):
                raise ValueError(f"from_pretrained got an unknown argument {key}={value!r}: neither a loading option "
                                 "nor a field of XLSTMFlaxConfig")
            setattr(config, key, value)
        config.validate()
        check_weight_files(directory)
        generation_config = _load_generation_config(directory)
        model = cls(config, dtype=dtype, _do_init=False)
        if generation_config is not None:
            model.generation_config = generation_config
        may_be_missing = "all" if allow_missing_keys or not do_init else "head"
        params, missing = load_checkpoint(directory, config, lm_head=model.has_lm_head,
                                          dtype=param_dtype,
                                          check_finite=check_finite, may_be_missing=may_be_missing)
        model._missing_keys = {tuple(name.split("/")) for name in missing}
        if missing and not do_init:
            logger.warning("Some weights of %s were not in the checkpoint at %s: %s. They are in "
                           "model._missing_keys; model.init_weights(rng, input_shape, params) completes the params "
                           "with newly initialized ones.", cls.__name__, directory, missing)
        elif missing:
            logger.warning("Some weights of %s were not in the checkpoint at %s and are newly initialized: %s. "
                           "Train the model before using it for predictions.", cls.__name__, directory, missing)
        if not do_init:
            return model, params
        if missing:
            params = model.init_weights(jax.random.PRNGKey(0), model.input_shape, params)
        model._is_initialized = True
        model.params = params
        return model

    def save_pretrained(self, save_directory, params=None, push_to_hub: bool = False, max_shard_size="10GB",
                        token=None, safe_serialization: bool = True, **kwargs):
        """config.json, generation_config.json and the weights, written by `checkpoint_writer`: safetensors by default
        (`model.safetensors`, or shards of at most `max_shard_size` with `model.safetensors.index.json`), every
        tensor C-contiguous whatever the params' memory layout; the new weight files replace the old ones only once
        all are complete (and stale shards are removed). `safe_serialization=False` writes Flax msgpack. Before
        anything is written (or a Hub repo created) the params are checked: this model's names, shapes, float
        dtypes and finite values (`loading.check_params_to_save`), so a folder that would not load is never written.
        `push_to_hub=True` uploads the folder afterwards (`repo_id`, `commit_message` as in transformers)."""
        check_output_path(save_directory, option="save_pretrained: save_directory")  # empty path refused first
        save_directory = str(save_directory)
        if os.path.isfile(save_directory):
            raise ValueError(f"save_pretrained: {save_directory} is a file, expected a folder")
        parse_size(max_shard_size)  # the arguments and params are checked before anything is written
        what = f"save_pretrained({'' if params is None else 'params=...'}) of {type(self).__name__}"
        params = self.params if params is None else params
        check_params_to_save(params, param_plan(self), what)
        if push_to_hub:
            commit_message = kwargs.pop("commit_message", None)
            repo_id = kwargs.pop("repo_id", save_directory.split(os.path.sep)[-1])
            repo_id = self._create_repo(repo_id, token=token, **kwargs)
            files_timestamps = self._get_files_timestamps(save_directory)
        tensors = params_tensors(params)
        # all-or-nothing: written beside the folder, which it replaces in one rename (other files carried over)
        with atomic_output_dir(save_directory, True, owned=MODEL_FILES, keep_others=True,
                               option="save_pretrained: save_directory") as tmp:
            self.config.architectures = [type(self).__name__[4:]]
            self.config.save_pretrained(tmp)
            if self.can_generate() and self.generation_config is not None:
                self.generation_config.save_pretrained(tmp)
            write_checkpoint(tmp, tensors, file_format="safetensors" if safe_serialization else "msgpack",
                             metadata_format="flax", max_shard_size=max_shard_size)
        if push_to_hub:
            self._upload_modified_files(save_directory, repo_id, files_timestamps, commit_message=commit_message,
                                        token=token)

    def plan_shape_tree(self, input_shape=None):
        """`params_shape_tree`: the model's plan (`loading.plan_tree`, computed once per config), not a trace of
        `init_weights` per model."""
        return plan_tree(self.config, lm_head=self.has_lm_head)

    def init_weights(self, rng, input_shape, params=None):
        """Random params (compiled: one program per config and input shape, shared by models of one config); with
        `params`, those params completed by random values for the keys `from_pretrained` recorded as missing."""
        params_rng, dropout_rng = jax.random.split(rng)
        random_params = _compiled_init(self.module, tuple(input_shape))({"params": params_rng, "dropout": dropout_rng})
        cfg = self.config
        if cfg.scan_blocks and cfg.slstm_block_indices:  # nn.scan inits every block alike: the depth-dependent bias
            random_params = unfreeze(random_params)
            blocks = random_params["backbone"]["blocks"] if self.has_lm_head else random_params["blocks"]
            layer = blocks["scanned"]["block"]["slstm_layer"]
            layer["bias"] = jnp.stack([powerlaw_bias_init(cfg.slstm_block_config(i))(None, layer["bias"].shape[1:])
                                       for i in range(cfg.num_blocks)])
        if params is None:
            return random_params
        random_params = flatten_dict(unfreeze(random_params))
        params = flatten_dict(unfreeze(params))
        for missing_key in self._missing_keys:
            params[missing_key] = random_params[missing_key]
        self._missing_keys = set()
        return freeze(unflatten_dict(params))

    def init_cache(self, batch_size: int, max_length: Optional[int] = None):
        """The recurrent state of every block at the start of a sequence: the generation cache (`cache.init_cache`).

        Its size does not depend on `max_length` (accepted for the HF generation API only). Per block a typed cache
        of the block's kind, all float32: `MLSTMCache` c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH) and, for
        the `mlstm` layer type, the conv window conv (B, K-1, inner_dim); `SLSTMCache` (an `slstm_at` block) y, c,
        n, m (B, NH, DH) and, with a conv, conv (B, K-1, D). A list over blocks, or with `scan_blocks` one cache
        whose fields carry the block axis second: (B, NB, ...). Fields read as `cache[i].c` or `cache[i]["c"]`.
        """
        return init_cache(self.config, batch_size)

    def generate(self, input_ids, generation_config=None, prng_key=None, trace: bool = True, params=None,
                 logits_processor=None, *, attention_mask=None, pad_to_multiple_of: Optional[int] = None, **kwargs):
        """transformers' Flax `generate` API run by our own loop (`generation.generate_loop`, the same under
        transformers 4 and 5), after checking the prompt ids, mask, key and options on the host, and compiled
        (`generation.generate`). Greedy search, sampling (temperature, top_k, top_p, min_p, typical_p), beam search;
        repetition_penalty, no_repeat_ngram_size, bad_words_ids, min/max length, forced/suppressed tokens,
        num_return_sequences, output_scores / output_logits (greedy, sampling: a tuple of (B * n, V) per step).
        A GenerationConfig field it does not implement is a ValueError naming it, never ignored.

        Called outside a trace, the loop runs through a `jax.jit` kept per model and per generation arguments: a
        repeated call with the same shapes reuses the program. Inside a trace (your own `jax.jit`,
        `sharded_generate`), with `trace=False`, a `logits_processor` or arguments that are not plain values, it is
        the loop as is. Same outputs either way. logits_processor: a callable or list of callables
        `fn(input_ids (N, L), scores (N, V), cur_len) -> scores` (transformers' Flax processors), run after the
        built-in ones.

        input_ids (B, S); attention_mask (B, S), left padding only. pad_to_multiple_of: left-pad the prompt to a
        multiple of this many tokens, masked, so prompts of different lengths share one compiled program; padded
        tokens never touch the state, and the padding is cut from the returned sequences, so they are what the
        unpadded call returns (an explicit `max_length` / `min_length` still counts the unpadded prompt).
        Returns a `GenerationOutput` with `sequences` (B * num_return_sequences, max_length) and `scores`.
        """
        from .generation import generate as generate_tokens  # only here: a plain forward never needs it

        return generate_tokens(self, input_ids, generation_config, prng_key, trace, params, logits_processor,
                               attention_mask=attention_mask, pad_to_multiple_of=pad_to_multiple_of, **kwargs)

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        params: Optional[dict] = None,
        past_key_values=None,
        dropout_rng: Optional[jax.Array] = None,
        train: bool = False,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        *,
        document_borders=None,
        logits_to_keep: int = 0,
        use_cache: Optional[bool] = None,
        jit: Optional[bool] = None,
    ):
        """Forward pass; positional order as transformers' Flax causal LMs (FlaxLlama, FlaxGPT2).

        input_ids (B, S) int; attention_mask (B, S) 0/1 (0: padding, which never touches the state);
        position_ids (B, S): accepted for transformers compatibility and ignored - a recurrent model has no
        positions, the state carries the order; params: the param tree (default `self.params`);
        past_key_values: the recurrent cache from `init_cache` or a previous call (see `init_cache`); dropout_rng / train: dropout;
        output_attentions: xLSTM has no attention, so True is a `ValueError` (None/False are accepted);
        output_hidden_states: also return NB + 1 arrays (B, S, D), each block's output and the final normalised
        state (== `last_hidden_state`), as transformers' PyTorch xLSTM does; return_dict: a ModelOutput (default)
        or a tuple.

        Keyword-only: document_borders (B, S) bool (True where a new document starts; with
        `reset_at_document_boundaries` the memory is reset there); logits_to_keep (causal LM only): 0 for logits
        (B, S, V) at every position, k > 0 for the last k positions only (B, k, V); use_cache: True returns the
        new recurrent state as `past_key_values` (starting from a zero state when none is given), False does not
        return it (a given `past_key_values` is still the starting state), None returns it when
        `past_key_values` is given.

        jit: run compiled (`jax.jit`, one program per input signature and option set, kept per model) or eagerly;
        None takes `model.jit_forward` (default True; transformers' Flax models run eagerly). Inside your own trace
        (`jax.jit`, `jax.grad`, ...) the call is always inlined into it.

        With a cache, no hidden states asked for and more than `config.prefill_segment_size` tokens (a prefill),
        the tokens run through the state segment by segment (`lax.scan`): only one segment's activations are
        alive at a time, so memory does not grow with the prompt beyond its hidden states (B, S, D).
        """
        check_inputs(input_ids, attention_mask, document_borders, self.config.vocab_size)
        if past_key_values is not None and not is_traced(input_ids, past_key_values):
            check_cache(past_key_values, self.config, int(np.shape(input_ids)[0]))
        check_dropout_rng(train, self.config.dropout, dropout_rng)
        if output_attentions:
            raise ValueError("output_attentions=True is not supported: xLSTM is a recurrent model and has no "
                             "attention weights to return")
        del position_ids  # a recurrent model has no positions
        is_causal_lm = self.has_lm_head
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep={logits_to_keep!r} is invalid: must be an int >= 0 (0: every position)")
        if logits_to_keep and not is_causal_lm:
            raise ValueError(f"logits_to_keep={logits_to_keep} needs a model with an LM head "
                             f"(FlaxXLSTMForCausalLM); {type(self).__name__} returns hidden states")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        input_ids = jnp.asarray(input_ids, dtype="i4")
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask, dtype="i4")
        if document_borders is not None:
            document_borders = jnp.asarray(document_borders, dtype=bool)
        if use_cache and past_key_values is None:
            past_key_values = self.init_cache(input_ids.shape[0])
        what = f"params passed to {type(self).__name__}" if params is not None else f"{type(self).__name__}.params"
        params = self.params if params is None else params
        check_not_donated(params, "params")
        check_model_params(self, params, what)  # another model's tree, {}, integers: named, never run
        args = (params, input_ids, attention_mask, document_borders, past_key_values, dropout_rng)
        static = dict(train=bool(train), output_hidden_states=bool(output_hidden_states),
                      logits_to_keep=logits_to_keep)
        if (self.jit_forward if jit is None else jit) and not is_traced(*args):
            key = (model_key(self), tuple(sorted(static.items())))
            model_ref = weakref.ref(self)  # the compiled function must not keep the model alive
            run = jitted(self, "forward", key, lambda: jax.jit(lambda *a: model_ref()._apply(*a, **static)))
            outputs, new_cache = run(*args)
        else:
            outputs, new_cache = self._apply(*args, **static)
        if past_key_values is not None and use_cache is not False:
            outputs["past_key_values"] = new_cache
        if not return_dict:
            return outputs.to_tuple()
        return outputs

    def _apply(self, params, input_ids, attention_mask, document_borders, cache, dropout_rng, *, train: bool,
               output_hidden_states: bool, logits_to_keep: int):
        """The forward pass after the host-side checks (traceable): (outputs without the cache, new cache)."""
        is_causal_lm = self.has_lm_head
        variables = {"params": params}
        segment = self.config.prefill_segment_size
        if (is_causal_lm and cache is not None and not train and not output_hidden_states
                and segment is not None and input_ids.shape[1] > segment):
            logits, new_cache = self._segmented_prefill(variables, input_ids, attention_mask, document_borders,
                                                        cache, logits_to_keep)
            return FlaxCausalLMOutput(logits=logits, hidden_states=None), new_cache
        extra = {"logits_to_keep": logits_to_keep} if is_causal_lm else {}
        return self.module.apply(variables, input_ids, attention_mask=attention_mask,
                                 document_borders=document_borders, cache=cache, deterministic=not train,
                                 output_hidden_states=output_hidden_states, return_dict=True,
                                 rngs={"dropout": dropout_rng} if dropout_rng is not None else {}, **extra)

    def _segmented_prefill(self, variables, input_ids, attention_mask, document_borders, cache, logits_to_keep):
        """Run S tokens through the state in segments of L = `prefill_segment_size`: first the S mod L leading
        tokens, then `lax.scan` over the (S div L) full segments, so the compiled program holds the model twice at
        most whatever S is; with 0 < logits_to_keep <= L only the last positions' hidden states are kept, so memory
        does not grow with S. Returns (logits (B, S or logits_to_keep, V), new cache); same numbers as one pass."""
        B, S = input_ids.shape
        L = self.config.prefill_segment_size
        n, r = divmod(S, L)
        run = partial(self.module.apply, variables, method=FlaxXLSTMForCausalLMModule.last_hidden_state)

        def split(a):  # (B, S, ...) -> leading (B, r, ...), segments (n, B, L, ...)
            if a is None:
                return None, None
            return a[:, :r], jnp.moveaxis(a[:, r:].reshape(B, n, L, *a.shape[2:]), 1, 0)

        (ids0, ids), (mask0, mask), (borders0, borders) = map(split, (input_ids, attention_mask, document_borders))
        hidden = []
        if r:
            x0, cache = run(ids0, mask0, borders0, cache)
            hidden.append(x0)
        if 0 < logits_to_keep <= L:  # only the last positions are read: carry them instead of every segment's (B, S, D)
            def last_step(carry, segment):
                x, state = run(*segment, carry[0])
                return (state, x[:, -logits_to_keep:]), None

            last = jnp.zeros((B, logits_to_keep, self.config.embedding_dim), self.dtype)
            (cache, x), _ = jax.lax.scan(last_step, (cache, last), (ids, mask, borders))
        else:
            def segment_step(state, segment):
                x, state = run(*segment, state)
                return state, x

            cache, xs = jax.lax.scan(segment_step, cache, (ids, mask, borders))
            hidden.append(jnp.moveaxis(xs, 0, 1).reshape(B, n * L, xs.shape[-1]))
            x = jnp.concatenate(hidden, axis=1) if len(hidden) > 1 else hidden[0]
        logits = self.module.apply(variables, x, logits_to_keep, method=FlaxXLSTMForCausalLMModule.logits)
        return logits, cache


class FlaxXLSTMModel(FlaxXLSTMPreTrainedModel):
    """The bare xLSTM backbone returning the last hidden state (B, S, D)."""

    module_class = FlaxXLSTMModule


class FlaxXLSTMForCausalLM(FlaxXLSTMPreTrainedModel):
    """The xLSTM language model: logits (B, S, V) in float32."""

    module_class = FlaxXLSTMForCausalLMModule


