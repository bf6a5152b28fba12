"""Text generation with Flax causal LMs (the xLSTM port) through transformers' pipeline machinery.

transformers 4.57's `TextGenerationPipeline` only runs PyTorch and TensorFlow models: its tokenizer calls ask for
`return_tensors=<framework>`, its forward step, batching and output decoding are written for torch/tf tensors, and
`pipeline("text-generation", model=<Flax model>)` ends in "Framework flax is not supported". This module keeps that
pipeline's whole front end (argument handling, `return_full_text` / `return_text` / `return_tensors`, `prefix`,
chat inputs, `handle_long_generation`, the output format) and swaps in a Flax back end:

* prompts are tokenized to numpy, batched with **left padding** and an `attention_mask` (the xLSTM never lets padded
  tokens touch its recurrent state, so a padded prompt generates what it generates alone);
* generation is `model.generate()`, compiled once per model, generation config and input shape (one cache for every
  pipeline over a model; `pad_to_multiple_of` buckets prompt lengths to bound recompilation);
* sampling is driven by an explicit PRNG key: `seed=` makes a call reproducible, without it every call draws a fresh
  key from the pipeline's own key stream (seeded by `seed=` at construction, default 0).

The class is registered with transformers' `PIPELINE_REGISTRY` under the task name `TASK`
("xlstm-flax-text-generation") when `modeling_xlstm_flax` is imported, so the standard entry point works:

    import modeling_xlstm_flax
    from transformers import pipeline
    generator = pipeline("xlstm-flax-text-generation", model=flax_model, tokenizer=tokenizer)
    generator("The xLSTM", max_new_tokens=32, do_sample=False)   # [{"generated_text": "The xLSTM ..."}]

as does the stock task, with or without an explicit class: `pipeline("text-generation", model=<Flax model>,
tokenizer=...)` (registration points the stock task at a dispatcher that builds this class for Flax models and
transformers' `TextGenerationPipeline` for every other model). transformers' `pipeline()` itself needs PyTorch (or TensorFlow)
installed to infer the framework and to parse its `dtype` argument; without torch pass `framework="flax", dtype=None`,
or use `text_generation_pipeline(...)` below, which does that and also accepts a model directory or Hub id.

This module deliberately imports nothing from the package (only transformers, jax, numpy), so it can also be shipped
on its own next to a model on the Hub.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Optional

import jax
import numpy as np
from transformers import GenerationConfig
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline
from transformers.pipelines.text_generation import TextGenerationPipeline

TASK = "xlstm-flax-text-generation"

__all__ = ["TASK", "FlaxTextGenerationPipeline", "register_pipeline", "text_generation_pipeline"]


class _HostArray(np.ndarray):
    """A numpy array with the `.numpy()` method that `TextGenerationPipeline.postprocess` calls on torch/tf tensors."""

    def numpy(self) -> np.ndarray:
        return np.asarray(self)


class _NumpyFramework:
    """Context in which the pipeline reports framework "np", so the inherited tokenizer calls return numpy arrays."""

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe

    def __enter__(self):
        self.saved = self.pipe.framework
        self.pipe.framework = "np"

    def __exit__(self, *exc):
        self.pipe.framework = self.saved
        return False


class FlaxTextGenerationPipeline(TextGenerationPipeline):
    """`TextGenerationPipeline` for Flax causal LMs (`FlaxPreTrainedModel`s that can `generate`; tested with the
    xLSTM port, whose `attention_mask` makes left-padded batches exact).

    Call arguments, besides those of `TextGenerationPipeline` (`return_full_text`, `return_text`, `return_tensors`,
    `prefix`, `handle_long_generation`, `clean_up_tokenization_spaces`, `skip_special_tokens`, `max_length`, and any
    `GenerationConfig` field such as `max_new_tokens`, `do_sample`, `temperature`, `top_k`, `top_p`, `num_beams`,
    `num_return_sequences`, `repetition_penalty`, `min_new_tokens`):

    * `batch_size`: prompts of a list input generated together (left padded); default 1, as in transformers.
    * `seed` (int) or `prng_key` (a `jax.random` key): the sampling key of this call. Batches of one call use
      `fold_in(key, batch_index)`.
    * `pad_to_multiple_of`: pad prompt lengths up to a multiple of this (left padding, masked), so prompts of
      similar length share one compiled program.

    Unset generation fields follow transformers' text-generation defaults (`max_new_tokens=256`, `do_sample=True`,
    `temperature=0.7`) unless the model's `generation_config` sets them, exactly as the PyTorch pipeline does.
    Runs on JAX's default device; the `device` argument is not used.
    """

    def __init__(self, model, tokenizer=None, *args, framework: Optional[str] = None, seed: int = 0, **kwargs):
        if isinstance(model, (str, os.PathLike)):
            model, tokenizer = _load_model_and_tokenizer(model, tokenizer)
        if not _is_flax_generator(model):
            raise ValueError(f"{type(model).__name__} is not a Flax model that can generate; use transformers' "
                             "TextGenerationPipeline for PyTorch/TensorFlow models")
        if tokenizer is None:
            raise ValueError("FlaxTextGenerationPipeline needs a tokenizer")
        _checked_batch_size(kwargs.get("batch_size"))
        self._rng = jax.random.PRNGKey(seed)
        self._call_batch_size: Optional[int] = None
        # Pipeline.__init__ (not TextGenerationPipeline.__init__, whose model check needs torch's model mappings).
        # framework="flax" up front: inferring it needs torch or TensorFlow installed.
        device_note = logging.getLogger("transformers.pipelines.base")
        device_note.addFilter(_drop_device_note)  # "Device set to use 0": JAX places arrays, `device` is unused
        try:
            Pipeline.__init__(self, model, tokenizer, *args, framework=framework or "flax", **kwargs)
        finally:
            device_note.removeFilter(_drop_device_note)
        self.generation_config = self._pipeline_generation_config()
        # TextGenerationPipeline.__init__'s `prefix` handling (from the model config), without its model check.
        if "prefix" not in self._preprocess_params and self.prefix is not None:
            preprocess_params, forward_params, _ = self._sanitize_parameters(prefix=self.prefix,
                                                                             **self._forward_params)
            self._preprocess_params = {**self._preprocess_params, **preprocess_params}
            self._forward_params = {**self._forward_params, **forward_params}

    # ------------------------------------------------------------------------------------------ configuration
    def _pipeline_generation_config(self) -> GenerationConfig:
        """What `_prepare_generation_config(use_model_defaults=True)` gives PyTorch pipelines: the pipeline's
        defaults, overridden by every field the model's generation config sets to a non-default value."""
        config = copy.deepcopy(self._default_generation_config)
        model_fields = {k: v for k, v in self.model.generation_config.to_diff_dict().items()
                        if not k.startswith("_") and k != "transformers_version"}
        config.update(**model_fields)
        if config.pad_token_id is None and self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            config.pad_token_id = self.tokenizer.pad_token_id
        return config

    def _sanitize_parameters(self, seed=None, prng_key=None, pad_to_multiple_of=None, **kwargs):
        with _NumpyFramework(self):  # a `prefix` is tokenized here
            preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if seed is not None:
            forward_params["seed"] = int(seed)
        if prng_key is not None:
            forward_params["prng_key"] = prng_key
        if pad_to_multiple_of is not None:
            if int(pad_to_multiple_of) < 1:
                raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of}")
            forward_params["pad_to_multiple_of"] = int(pad_to_multiple_of)
        return preprocess_params, forward_params, postprocess_params

    def save_pretrained(self, save_directory, safe_serialization: bool = True, **kwargs):
        """Save the model and tokenizer into `save_directory` (loadable with `text_generation_pipeline(dir)`).

        Unlike `Pipeline.save_pretrained`, no `custom_pipelines` config entry and no pipeline code are written:
        transformers' `pipeline()` cannot load a Flax model from a path, so it could not use them, and the strict
        `XLSTMFlaxConfig` would refuse the unknown field when loading."""
        os.makedirs(save_directory, exist_ok=True)
        self.model.save_pretrained(save_directory, safe_serialization=safe_serialization, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory, **kwargs)

    # ------------------------------------------------------------------------------------------ call plumbing
    def __call__(self, text_inputs, **kwargs):
        """As `TextGenerationPipeline.__call__`: a prompt gives `[{"generated_text": ...}]` (one dict per returned
        sequence), a list of prompts a list of those. `batch_size` batches list inputs (left padding)."""
        if isinstance(text_inputs, (list, tuple)) and len(text_inputs) == 0:
            raise ValueError("no prompts given (an empty list): pass a prompt string or a non-empty list of prompts")
        self._call_batch_size = _checked_batch_size(kwargs.pop("batch_size", None))
        try:
            return super().__call__(text_inputs, **kwargs)
        finally:
            self._call_batch_size = None

    def run_single(self, inputs, preprocess_params, forward_params, postprocess_params):
        return self._run_batch([inputs], 0, preprocess_params, forward_params, postprocess_params)[0]

    def run_multi(self, inputs, preprocess_params, forward_params, postprocess_params):
        batch_size = self._call_batch_size or self._batch_size or 1
        outputs = []
        for index, start in enumerate(range(0, len(inputs), batch_size)):
            outputs += self._run_batch(inputs[start : start + batch_size], index, preprocess_params,
                                       forward_params, postprocess_params)
        return outputs

    def preprocess(self, prompt_text, **kwargs):
        with _NumpyFramework(self):
            inputs = super().preprocess(prompt_text, **kwargs)
        if inputs["input_ids"].shape[1] == 0:  # empty prompt: start from the BOS token, as PyTorch generate does
            bos = self.generation_config.bos_token_id
            if bos is None:
                raise ValueError("an empty prompt needs a bos_token_id in the generation config")
            inputs["input_ids"] = np.full((1, 1), bos, dtype=np.int64)
            inputs["attention_mask"] = np.ones((1, 1), dtype=np.int64)
        return inputs

    def forward(self, model_inputs, **forward_params):
        # Pipeline.forward only knows torch and tf device placement; JAX places arrays on its default device.
        return self._forward(model_inputs, **forward_params)

    def _run_batch(self, prompts, batch_index, preprocess_params, forward_params, postprocess_params):
        encoded = [self.preprocess(prompt, **preprocess_params) for prompt in prompts]
        lengths = [int(e["input_ids"].shape[1]) for e in encoded]
        width = max(lengths)  # left-padded to the longest prompt; model.generate buckets to pad_to_multiple_of
        pad_id = self._pad_token_id()
        input_ids = np.full((len(encoded), width), pad_id, dtype=np.int32)
        attention_mask = np.zeros((len(encoded), width), dtype=np.int32)
        for row, (e, n) in enumerate(zip(encoded, lengths)):
            mask = e.get("attention_mask")
            input_ids[row, width - n :] = e["input_ids"][0]
            attention_mask[row, width - n :] = 1 if mask is None else mask[0]
        output = self.forward({"input_ids": input_ids, "attention_mask": attention_mask,
                               "batch_index": batch_index}, **forward_params)
        results = []
        for row, (e, n) in enumerate(zip(encoded, lengths)):
            sequences = output["generated_sequence"][row][:, width - n :]  # (num_return_sequences, n + new)
            results.append(self.postprocess({"generated_sequence": sequences[None].view(_HostArray),
                                             "input_ids": e["input_ids"], "prompt_text": e["prompt_text"]},
                                            **postprocess_params))
        return results

    def _pad_token_id(self) -> int:
        for candidate in (self.generation_config.pad_token_id, self.tokenizer.pad_token_id,
                          self.generation_config.eos_token_id):
            if isinstance(candidate, (list, tuple)):
                candidate = candidate[0] if candidate else None
            if candidate is not None:
                return int(candidate)
        raise ValueError("batching prompts needs a pad token: set tokenizer.pad_token or generation pad_token_id")

    # ------------------------------------------------------------------------------------------ generation
    def _forward(self, model_inputs, seed=None, prng_key=None, prefix_length=0, generation_config=None,
                 pad_to_multiple_of=None, **generate_kwargs):
        """Generate for one left-padded batch: `{"generated_sequence": (B, num_return_sequences, L)}` (numpy)."""
        input_ids = np.asarray(model_inputs["input_ids"])
        attention_mask = model_inputs.get("attention_mask")
        batch_index = int(model_inputs.get("batch_index", 0))
        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        if not generate_kwargs.get("do_sample", config.do_sample):
            # greedy/beam search: drop the pipeline's sampling defaults (unused, they would only warn)
            defaults = GenerationConfig()
            for name in ("temperature", "top_k", "top_p"):
                if name not in generate_kwargs:
                    setattr(config, name, getattr(defaults, name))
        unused = config.update(**generate_kwargs)
        if unused:
            raise TypeError(f"unknown generation arguments for a Flax model: {sorted(unused)}")
        if prefix_length > 0:  # as TextGenerationPipeline._forward: a prefix does not eat the length budget
            if config.max_new_tokens is None:
                config.max_length = (config.max_length or 20) + prefix_length
            if "min_length" in generate_kwargs and "min_new_tokens" not in generate_kwargs:
                config.min_length += prefix_length
        if config.eos_token_id is None:  # transformers' Flax loops need an int eos id
            config.eos_token_id = self.tokenizer.eos_token_id
        if isinstance(config.eos_token_id, (list, tuple)):
            if len(config.eos_token_id) != 1:
                raise ValueError("the Flax generation loop supports one eos token id (so `stop_sequence` must be a "
                                 f"single token), got {config.eos_token_id}")
            config.eos_token_id = int(config.eos_token_id[0])
        if config.pad_token_id is None:
            config.pad_token_id = self._pad_token_id()

        batch = input_ids.shape[0]
        copies = int(config.num_return_sequences or 1)
        if copies > 1:
            if config.num_beams > 1:
                if copies > config.num_beams:
                    raise ValueError(f"num_return_sequences ({copies}) must be <= num_beams ({config.num_beams})")
            elif config.do_sample:  # independent samples: repeat each prompt (Flax sampling returns one per row)
                input_ids = np.repeat(input_ids, copies, axis=0)
                attention_mask = None if attention_mask is None else np.repeat(attention_mask, copies, axis=0)
                config.num_return_sequences = 1
            else:
                raise ValueError("greedy search returns one sequence per prompt: num_return_sequences must be 1 "
                                 "(use do_sample=True or num_beams>=num_return_sequences)")
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        if config.num_beams == 1 and np.all(np.asarray(attention_mask) == 1):
            # No padding: run exactly what `model.generate(input_ids)` runs. (Beam search always gets the mask:
            # FlaxXLSTMPreTrainedModel.generate forwards attention_mask=None, which transformers' Flax beam search
            # cannot expand.)
            attention_mask = None

        key = self._prng_key(seed, prng_key, batch_index)
        mask = {} if attention_mask is None else {"attention_mask": attention_mask}
        # model.generate compiles once per model, generation config and input shape (`generation.generate`)
        sequences = np.asarray(self.model.generate(input_ids, generation_config=config, prng_key=key,
                                                   pad_to_multiple_of=pad_to_multiple_of, **mask).sequences)
        return {"generated_sequence": sequences.reshape(batch, copies, sequences.shape[-1])}

    def _prng_key(self, seed, prng_key, batch_index):
        if prng_key is not None:
            key = prng_key
        elif seed is not None:
            key = jax.random.PRNGKey(seed)
        else:
            self._rng, key = jax.random.split(self._rng)
            return key
        return jax.random.fold_in(key, batch_index) if batch_index else key


def _drop_device_note(record) -> bool:
    return not str(record.msg).startswith("Device set to use")


def _checked_batch_size(batch_size):
    """None or a positive int; anything else is a ValueError naming it."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} is invalid: must be a positive int (prompts per batch)")
    return batch_size


class _TextGenerationDispatch(TextGenerationPipeline):
    """What the stock "text-generation" task builds once `register_pipeline` ran: for a Flax model that can generate
    a `FlaxTextGenerationPipeline` (transformers' own class would fail on it with a list of PyTorch model names and
    "flax is not a valid TensorType"), for any other model transformers' `TextGenerationPipeline`, unchanged."""

    def __new__(cls, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if _is_flax_generator(model):
            return FlaxTextGenerationPipeline(*args, **kwargs)
        pipe = TextGenerationPipeline.__new__(TextGenerationPipeline)
        pipe.__init__(*args, **kwargs)  # not an instance of cls, so Python does not call __init__ itself
        return pipe


def _is_flax_generator(model) -> bool:
    """A Flax model (transformers 4.x's FlaxPreTrainedModel or, with transformers 5, this port's own base) that
    can generate."""
    from .hf_compat import FlaxPreTrainedModel

    return isinstance(model, FlaxPreTrainedModel) and model.can_generate()


def _load_model_and_tokenizer(name_or_path, tokenizer=None, **model_kwargs):
    from transformers import AutoTokenizer

    from .modeling_flax_xlstm import FlaxXLSTMForCausalLM  # reads our config and transformers' xLSTMConfig

    model = FlaxXLSTMForCausalLM.from_pretrained(name_or_path, **model_kwargs)
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer if tokenizer is not None else name_or_path)
    return model, tokenizer


def register_pipeline() -> None:
    """Register `FlaxTextGenerationPipeline` under `TASK` with transformers' `PIPELINE_REGISTRY` (idempotent)."""
    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    stock = PIPELINE_REGISTRY.supported_tasks.get("text-generation") or {}
    if (current is not None and current.get("impl") is FlaxTextGenerationPipeline
            and stock.get("impl") is not TextGenerationPipeline):
        return
    # No PyTorch/TensorFlow classes: pipeline() gets a Flax model instance (or use text_generation_pipeline).
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=FlaxTextGenerationPipeline, pt_model=(), type="text")
    # The stock task: Flax models get this module's class, every other model transformers' own (see the class).
    stock = PIPELINE_REGISTRY.supported_tasks.get("text-generation")
    if stock is not None and stock.get("impl") is TextGenerationPipeline:
        stock["impl"] = _TextGenerationDispatch


def text_generation_pipeline(model, tokenizer=None, task: str = TASK, model_kwargs: Optional[dict] = None,
                             **kwargs) -> FlaxTextGenerationPipeline:
    """`transformers.pipeline(task, model=..., tokenizer=..., pipeline_class=FlaxTextGenerationPipeline)` that also
    works without PyTorch installed and accepts a model directory or Hub id (loaded with
    `FlaxAutoModelForCausalLM.from_pretrained(model, **model_kwargs)` and `AutoTokenizer`)."""
    from transformers import pipeline

    register_pipeline()
    if isinstance(model, (str, os.PathLike)):
        model, tokenizer = _load_model_and_tokenizer(str(model), tokenizer, **(model_kwargs or {}))
    elif isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    kwargs.setdefault("framework", "flax")
    kwargs.setdefault("dtype", None)  # pipeline()'s default "auto" is looked up on torch
    return pipeline(task, model=model, tokenizer=tokenizer, pipeline_class=FlaxTextGenerationPipeline, **kwargs)
