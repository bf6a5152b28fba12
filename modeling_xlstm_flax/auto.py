"""`FlaxAutoModel` and `FlaxAutoModelForCausalLM` under every supported transformers major, and the registration
with transformers' Auto classes (`register_auto_classes`, idempotent: `AutoConfig` always; `FlaxAutoModel` /
`FlaxAutoModelForCausalLM` where transformers has them, 4.x; the text-generation pipeline task).

Importing this module registers (it is what `from modeling_xlstm_flax import <any public name>` imports first);
`import modeling_xlstm_flax` alone registers nothing, so that the command line starts without transformers.

`from modeling_xlstm_flax import FlaxAutoModelForCausalLM` works under both:

* transformers 4.x: transformers' own classes, with this port registered in them for our config (`xlstm_flax`) and
  transformers' PyTorch `xLSTMConfig` (`xlstm`);
* transformers 5.x (which removed every Flax auto class): `_FlaxAutoClass` subclasses of the same names and calls,
  `from_pretrained(folder_or_hub_id, *args, **kwargs)` / `from_config(config, **kwargs)` / `register(config_class,
  model_class)`, resolving the config the way `AutoConfig` does (model_type `xlstm_flax` or `xlstm`; another
  model_type is a `ValueError` naming it and the supported ones).

The text-generation pipeline lives here too (what transformers' `pipeline("text-generation", model=<ours>)` gives):

Text generation with the Flax xLSTM, with the call arguments and outputs of transformers' text-generation pipeline.

`FlaxTextGenerationPipeline` is our own class, not a subclass of transformers' `Pipeline` (written for PyTorch
tensors; under transformers 5 it needs torch), so it behaves the same under transformers 4.x and 5.x: prompts are
tokenized to numpy, batched with **left padding** and an `attention_mask` (padded tokens never touch the xLSTM state,
so a padded prompt generates what it generates alone), generated with `model.generate()` (compiled once per config
and input shape; `pad_to_multiple_of` buckets prompt lengths), decoded and formatted as transformers does.

Entry points, transformers 4.x and 5.x alike:

* `text_generation_pipeline(model_or_dir_or_hub_id, tokenizer=None, **call_defaults)`, with or without torch;
* `transformers.pipeline(TASK or "text-generation", model=<our model>, tokenizer=...)`: using `modeling_xlstm_flax`
  registers `TASK` and points the stock task at a dispatcher (this class for this package's models only,
  transformers' own for every other model). Under transformers 5 without torch it works as written
  (`_let_pipeline_run_without_torch`); under 4.x without torch `pipeline()` needs `dtype=None, framework="flax"`.
"""

from __future__ import annotations

import collections.abc
import copy
import os
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
from transformers import AutoConfig, GenerationConfig, xLSTMConfig
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.text_generation import TextGenerationPipeline

from .configuration_xlstm_flax import XLSTMFlaxConfig
from .modeling_flax_xlstm import FlaxXLSTMForCausalLM, FlaxXLSTMModel

try:  # transformers 4.x
    from transformers import FlaxAutoModel as _TransformersFlaxAutoModel
    from transformers import FlaxAutoModelForCausalLM as _TransformersFlaxAutoModelForCausalLM
except ImportError:  # transformers >= 5 removed every Flax auto class
    _TransformersFlaxAutoModel = _TransformersFlaxAutoModelForCausalLM = None

__all__ = ["FlaxAutoModel", "FlaxAutoModelForCausalLM", "register_auto_classes", "TASK", "FlaxTextGenerationPipeline",
           "register_pipeline", "text_generation_pipeline"]

# The keyword arguments of `from_pretrained` that also locate the config (a Hub id's download options).
_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder", "proxies")


# ---------------------------------------------------------------------------------------------- the pipeline
TASK = "xlstm-flax-text-generation"

# transformers' text-generation defaults, for what neither the call nor the model's generation config sets
# (`max_new_tokens` not when `max_length` is set; the sampling ones only when sampling).
PIPELINE_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
_SAMPLING_FIELDS = {"temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"}
# Arguments of transformers' pipeline constructors that mean nothing here (JAX places arrays on its default device).
_IGNORED_INIT_ARGS = ("framework", "device", "dtype", "torch_dtype", "binary_output", "modelcard", "args_parser",
                      "feature_extractor", "image_processor", "processor", "num_workers")
_ENCODE_ARGS = ("prefix", "handle_long_generation", "add_special_tokens", "truncation", "tokenizer_encode_kwargs")
_RETURN_FULL, _RETURN_NEW, _RETURN_TENSORS = "full_text", "new_text", "tensors"


class _Options(NamedTuple):
    """A call's arguments by the step that uses them (see `FlaxTextGenerationPipeline._split_args`)."""

    encode: dict  # prompt / tokenizer options
    generate: dict  # GenerationConfig fields, `generation_config`
    decode: dict  # output format
    run: dict  # batch_size, seed, prng_key, pad_to_multiple_of


class _Chat:
    """One conversation: a list of {"role": ..., "content": ...} messages."""

    def __init__(self, messages):
        for message in messages:
            if not (isinstance(message, dict) and "role" in message and "content" in message):
                raise ValueError("When passing chat dicts as input, each dict must have a 'role' and 'content' key.")
        self.messages = list(messages)


class FlaxTextGenerationPipeline:
    """Text generation with a Flax causal LM that can `generate` (tested with the xLSTM port).

    `pipe(prompt)` -> `[{"generated_text": str}]`, one dict per returned sequence; a list of prompts gives a list of
    those; a chat (list of {"role", "content"} dicts, rendered with the tokenizer's chat template) gives the chat
    with the assistant's reply appended as `generated_text` (or, when the chat ends with an assistant message or
    `continue_final_message=True`, that message continued). Call arguments (also accepted at construction, as
    defaults for every call):

    * output: `return_full_text` (default True; False: only the new text), `return_text`, `return_tensors` (True:
      `{"generated_token_ids": [int, ...]}`, prompt included), `clean_up_tokenization_spaces` (default: the tokenizer's own setting, as in transformers),
      `skip_special_tokens` (default True), `continue_final_message`;
    * input: `prefix` (text put before each prompt, cut from the output), `handle_long_generation="hole"`
      (keep only the last `model_max_length - new tokens` prompt tokens), `add_special_tokens`, `truncation`,
      `tokenizer_encode_kwargs`;
    * generation: `max_new_tokens`, `max_length` (prompt included), `stop_sequence` (one token), `generation_config`
      and every `GenerationConfig` field that `model.generate` accepts (`do_sample`, `temperature`, `top_k`, `top_p`,
      `num_beams`, `num_return_sequences`, `repetition_penalty`, `min_new_tokens`, ...). Unset ones follow the
      model's generation config, else transformers' text-generation defaults (`max_new_tokens=256`,
      `do_sample=True`, `temperature=0.7`): pass `do_sample=False` for greedy search;
    * running: `batch_size` (prompts of a list generated together, left padded; default 1), `seed` (int) or
      `prng_key` (a `jax.random` key) for sampling (batch i of a call uses `fold_in(key, i)`), `pad_to_multiple_of`
      (pad prompt lengths up to a multiple, masked, so prompts of similar length share one compiled program).

    Runs on JAX's default device; `device`, `framework` and `dtype` are accepted and ignored.
    """

    # Read by transformers' pipeline(): load a tokenizer only.
    _load_tokenizer = True
    _load_processor = _load_image_processor = _load_feature_extractor = _load_video_processor = False
    framework = "flax"

    def __init__(self, model, tokenizer=None, *, task: str = TASK, seed: int = 0,
                 model_kwargs: Optional[dict] = None, **call_defaults):
        model, tokenizer = _load_model_and_tokenizer(model, tokenizer, **(model_kwargs or {}))
        if not _is_flax_generator(model):
            raise ValueError(f"{type(model).__name__} is not a Flax model that can generate; use transformers' "
                             "TextGenerationPipeline for PyTorch models")
        if tokenizer is None:
            raise ValueError("FlaxTextGenerationPipeline needs a tokenizer")
        for name in _IGNORED_INIT_ARGS:
            call_defaults.pop(name, None)
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.prefix = getattr(model.config, "prefix", None)
        if self.prefix is not None:
            call_defaults.setdefault("prefix", self.prefix)
        self._split_args(call_defaults)  # refuse bad defaults now, as transformers does
        self._call_defaults = call_defaults
        self._rng = jax.random.PRNGKey(seed)

    @property
    def generation_config(self) -> GenerationConfig:
        """The generation config of a call without generation arguments (a copy: changing it changes nothing)."""
        return self._generation_config(self._split_args(self._call_defaults).generate)

    def save_pretrained(self, save_directory, safe_serialization: bool = True, **kwargs):
        """Save the model and tokenizer into `save_directory` (loadable with `text_generation_pipeline(dir)`)."""
        os.makedirs(save_directory, exist_ok=True)
        self.model.save_pretrained(save_directory, safe_serialization=safe_serialization, **kwargs)
        self.tokenizer.save_pretrained(save_directory, **kwargs)

    # ------------------------------------------------------------------------------------------ call
    def __call__(self, text_inputs, **kwargs):
        """Complete a prompt (str), a chat, or a list of them (see the class docstring); an iterator of prompts
        gives an iterator of results (one prompt at a time)."""
        options = self._split_args({**self._call_defaults, **kwargs})
        if isinstance(text_inputs, str) or _is_chat(text_inputs):
            return self._run_batch([_as_prompt(text_inputs)], 0, options)[0]
        if isinstance(text_inputs, (list, tuple)):
            if len(text_inputs) == 0:
                raise ValueError("no prompts given (an empty list): pass a prompt string or a non-empty list of "
                                 "prompts")
            prompts, batch_size = [_as_prompt(p) for p in text_inputs], options.run["batch_size"] or 1
            outputs = []
            for index, start in enumerate(range(0, len(prompts), batch_size)):
                outputs += self._run_batch(prompts[start:start + batch_size], index, options)
            return outputs
        if isinstance(text_inputs, collections.abc.Iterable) and not isinstance(text_inputs, (bytes, dict)):
            return (self._run_batch([_as_prompt(item)], index, options)[0] for index, item in enumerate(text_inputs))
        raise ValueError(f"text_inputs must be a str, a chat (list of {{'role', 'content'}} dicts) or a list of "
                         f"those, got {type(text_inputs).__name__}")

    def _split_args(self, args: dict) -> _Options:
        """Call arguments -> `_Options`, checked (ValueError naming the argument)."""
        args = dict(args)
        args.pop("num_workers", None)  # transformers' DataLoader workers: nothing here
        run = {name: args.pop(name, None) for name in ("batch_size", "seed", "prng_key", "pad_to_multiple_of")}
        _checked_batch_size(run["batch_size"])
        for name in ("seed", "pad_to_multiple_of"):
            value = run[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or (name == "pad_to_multiple_of" and value < 1)):
                kind = "an int" if name == "seed" else "a positive int"
                raise ValueError(f"{name}={value!r} is invalid: must be {kind}")
        encode = {name: args.pop(name) for name in _ENCODE_ARGS if name in args}
        if encode.get("handle_long_generation") not in (None, "hole"):
            raise ValueError(f"{encode['handle_long_generation']} is not a valid value for `handle_long_generation` "
                             "parameter expected [None, 'hole']")
        if encode.get("truncation") and "max_length" in args:  # as transformers: the tokenizer's limit too
            encode["max_length"] = args["max_length"]
        full, text, tensors = (args.pop(name, None) for name in ("return_full_text", "return_text", "return_tensors"))
        if full is not None and (text is not None or tensors is not None):
            raise ValueError("`return_full_text` is mutually exclusive with `return_text` and `return_tensors`")
        if tensors is not None and text is not None:
            raise ValueError("`return_text` is mutually exclusive with `return_tensors`")
        return_type = (_RETURN_TENSORS if tensors and full is None else
                       _RETURN_NEW if full is not None and not full else _RETURN_FULL)
        decode = {"return_type": return_type,
                  "continue_final_message": args.pop("continue_final_message", None),
                  "clean_up_tokenization_spaces": args.pop("clean_up_tokenization_spaces", None),
                  "skip_special_tokens": _default(args.pop("skip_special_tokens", None), True)}
        stop = args.pop("stop_sequence", None)
        if stop is not None:  # as transformers: the stop sequence's token becomes the eos id
            stop_ids = self.tokenizer.encode(stop, add_special_tokens=False)
            if len(stop_ids) != 1:
                raise ValueError(f"stop_sequence={stop!r} is {len(stop_ids)} tokens {stop_ids}: only a stop sequence "
                                 "of one token is supported (it becomes the eos id; transformers would silently "
                                 "stop at its first token)")
            args["eos_token_id"] = stop_ids[0]
        return _Options(encode, args, decode, run)

    def _generation_config(self, generate_kwargs: dict, prefix_length: int = 0) -> GenerationConfig:
        """The call's config: the model's generation config (or the call's `generation_config`) with
        `PIPELINE_DEFAULTS` and the tokenizer's pad id for what neither it nor the call sets (transformers 5's rule),
        then the call's fields. A prefix does not eat a total length (`max_length` / `min_length`)."""
        kwargs = dict(generate_kwargs)
        user_config = kwargs.pop("generation_config", None)
        config = copy.deepcopy(user_config if user_config is not None else self.model.generation_config)
        set_fields = {**self.model.generation_config.to_diff_dict(), **config.to_diff_dict(), **kwargs}
        defaults = dict(PIPELINE_DEFAULTS, pad_token_id=self.tokenizer.pad_token_id)
        sampling = set_fields.get("do_sample", defaults["do_sample"])
        for name, value in defaults.items():
            if name in set_fields or value is None or (name == "max_new_tokens" and "max_length" in set_fields):
                continue
            if name not in _SAMPLING_FIELDS or sampling:
                setattr(config, name, value)
        unused = config.update(**kwargs)  # last: GenerationConfig.update validates the result
        if unused:
            raise TypeError(f"unknown generation arguments for a Flax model: {sorted(unused)}")
        if prefix_length:  # (transformers 5 leaves unset fields None: 20 and 0 are transformers 4's values)
            if config.max_new_tokens is None:
                config.max_length = (config.max_length or 20) + prefix_length
            if "min_length" in set_fields and config.min_new_tokens is None:
                config.min_length = (config.min_length or 0) + prefix_length
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        return config

    # ------------------------------------------------------------------------------------------ steps
    def _encode(self, prompt, config, prefix="", handle_long_generation=None, tokenizer_encode_kwargs=None,
                continue_final_message=None, **tokenizer_kwargs) -> np.ndarray:
        """One prompt -> its token ids (n,), prefix included (an empty prompt: the BOS token)."""
        tokenizer_kwargs.update(tokenizer_encode_kwargs or {})
        if isinstance(prompt, _Chat):
            tokenizer_kwargs.pop("add_special_tokens", None)
            if continue_final_message is None:
                continue_final_message = prompt.messages[-1]["role"] == "assistant"
            encoded = self.tokenizer.apply_chat_template(
                prompt.messages, add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message, return_dict=True, return_tensors="np",
                **tokenizer_kwargs)
        else:
            encoded = self.tokenizer((prefix or "") + prompt, return_tensors="np", **tokenizer_kwargs)
        ids = np.asarray(encoded["input_ids"])[0]
        if handle_long_generation == "hole":
            new_tokens = config.max_new_tokens
            if new_tokens is None:
                new_tokens = (config.max_length or 20) - len(ids)
                if new_tokens < 0:
                    raise ValueError("We cannot infer how many new tokens are expected")
            if len(ids) + new_tokens > self.tokenizer.model_max_length:
                keep = self.tokenizer.model_max_length - new_tokens
                if keep <= 0:
                    raise ValueError("We cannot use `hole` to handle this generation the number of desired tokens "
                                     "exceeds the models max length")
                ids = ids[-keep:]
        if len(ids) == 0:  # empty prompt: start from the BOS token, as transformers' generate does
            if config.bos_token_id is None:
                raise ValueError("an empty prompt needs a bos_token_id in the generation config")
            ids = np.array([config.bos_token_id])
        return ids

    def _run_batch(self, prompts, batch_index: int, options: _Options) -> list:
        """Generate for up to `batch_size` prompts (str or _Chat) together; one list of output dicts per prompt."""
        encode, decode = options.encode, options.decode
        prefix_length = 0
        if encode.get("prefix"):
            prefix_length = len(self.tokenizer(encode["prefix"], add_special_tokens=encode.get(
                "add_special_tokens", False))["input_ids"])
        config = self._generation_config(options.generate, prefix_length)
        encoded = [self._encode(p, config, continue_final_message=decode["continue_final_message"], **encode)
                   for p in prompts]
        width = max(len(ids) for ids in encoded)
        input_ids = np.full((len(encoded), width), _pad_id(config), dtype=np.int32)
        attention_mask = np.zeros((len(encoded), width), dtype=np.int32)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = ids
            attention_mask[row, width - len(ids):] = 1
        sequences = self._generate(input_ids, attention_mask, config, options.run, batch_index)
        return [self._decode(prompt, ids, sequences[row, :, width - len(ids):], **decode)
                for row, (prompt, ids) in enumerate(zip(prompts, encoded))]

    def _generate(self, input_ids, attention_mask, config, run, batch_index) -> np.ndarray:
        """`model.generate` for a left-padded batch: input_ids, attention_mask (B, S) -> sequences (B, R, S + new),
        R = num_return_sequences."""
        batch, copies, beams = input_ids.shape[0], int(config.num_return_sequences or 1), config.num_beams or 1
        if copies > 1:
            if beams > 1:
                if copies > beams:
                    raise ValueError(f"num_return_sequences ({copies}) must be <= num_beams ({beams})")
            elif config.do_sample:  # independent samples: each prompt repeated (rows b * R ... b * R + R - 1)
                input_ids, attention_mask = np.repeat(input_ids, copies, 0), np.repeat(attention_mask, copies, 0)
                config.num_return_sequences = GenerationConfig().num_return_sequences  # "unset" (1 or None)
            else:
                raise ValueError("greedy search returns one sequence per prompt: num_return_sequences must be 1 "
                                 "(use do_sample=True or num_beams>=num_return_sequences)")
        # Without padding, run what `model.generate(input_ids)` runs. Beam search always gets the mask (transformers
        # 4's Flax beam search cannot expand attention_mask=None).
        mask = {} if beams == 1 and attention_mask.all() else {"attention_mask": attention_mask}
        if run["prng_key"] is not None or run["seed"] is not None:
            key = run["prng_key"] if run["prng_key"] is not None else jax.random.PRNGKey(int(run["seed"]))
            key = jax.random.fold_in(key, batch_index) if batch_index else key
        else:
            self._rng, key = jax.random.split(self._rng)
        out = self.model.generate(input_ids, generation_config=config, prng_key=key,
                                  pad_to_multiple_of=run["pad_to_multiple_of"], **mask)
        sequences = np.asarray(out.sequences)
        return sequences.reshape(batch, copies, sequences.shape[-1])

    def _decode(self, prompt, prompt_ids, sequences, return_type, continue_final_message, clean_up_tokenization_spaces,
                skip_special_tokens) -> list:
        """sequences (R, n + new) of one prompt (prompt_ids (n,)) -> R output dicts. The new text is the decoded
        sequence after the decoded prompt's length (transformers 4's rule: a prefix is cut from the output)."""
        if return_type == _RETURN_TENSORS:
            return [{"generated_token_ids": sequence} for sequence in sequences.tolist()]
        options = {"skip_special_tokens": skip_special_tokens}
        if clean_up_tokenization_spaces is not None:  # None: the tokenizer's saved setting, as transformers does
            options["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        start = len(self.tokenizer.decode(prompt_ids, **options))
        records = []
        for sequence in sequences.tolist():
            new_text = self.tokenizer.decode(sequence, **options)[start:]
            if return_type == _RETURN_NEW:
                records.append({"generated_text": new_text})
            elif isinstance(prompt, str):
                records.append({"generated_text": prompt + new_text})
            else:  # a chat: the reply appended, or the final message continued
                messages = list(prompt.messages)
                last = messages[-1]
                if continue_final_message or (continue_final_message is None and last["role"] == "assistant"):
                    messages[-1] = {"role": last["role"], "content": last["content"] + new_text}
                else:
                    messages.append({"role": "assistant", "content": new_text})
                records.append({"generated_text": messages})
        return records


def _default(value, default):
    return default if value is None else value


def _is_chat(value) -> bool:
    """A list (or tuple) of message dicts: one conversation."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], dict)


def _as_prompt(prompt):
    """A str stays, a chat becomes a _Chat; anything else is a ValueError."""
    if isinstance(prompt, (str, _Chat)):
        return prompt
    if _is_chat(prompt):
        return _Chat(prompt)
    raise ValueError(f"each prompt must be a str or a chat (a list of {{'role', 'content'}} dicts), got "
                     f"{type(prompt).__name__}")


def _pad_id(config) -> int:
    """The left-padding token: the config's pad id, else its (first) eos id, else 0 (padding is masked anyway)."""
    for candidate in (config.pad_token_id, config.eos_token_id):
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def _checked_batch_size(batch_size):
    """None or a positive int; anything else is a ValueError naming it."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} is invalid: must be a positive int (prompts per batch)")
    return batch_size


def _is_xlstm_flax_model(model) -> bool:
    """One of this package's Flax models that can generate: the only models the stock task's dispatcher sends to
    `FlaxTextGenerationPipeline` (every other model gets transformers' own pipeline, as without this package)."""
    from .modeling_flax_xlstm import FlaxXLSTMPreTrainedModel

    return isinstance(model, FlaxXLSTMPreTrainedModel) and model.can_generate()


def _let_pipeline_run_without_torch() -> None:
    """transformers 5's `pipeline()` reads its default `dtype="auto"` with `hasattr(torch, dtype)`, a `NameError`
    when torch is not installed (its module imports torch only when available), before it looks at the task or the
    model. Without torch, give that module a `torch` name that has no dtypes, so `pipeline()` goes on to the task's
    class (for our models `FlaxTextGenerationPipeline`, which ignores `dtype`); with torch nothing changes."""
    import sys
    import types

    from transformers import pipelines
    from transformers.utils import is_torch_available

    if is_torch_available() or "torch" in vars(pipelines):
        return
    pipelines.torch = sys.modules.get("torch") or types.ModuleType("torch", "placeholder: torch is not installed")


def _is_flax_generator(model) -> bool:
    """A Flax model of this port (its own base class, under transformers 4.x and 5.x) that can generate."""
    from .flax_base import FlaxPreTrainedModel

    return isinstance(model, FlaxPreTrainedModel) and model.can_generate()


def _load_model_and_tokenizer(model, tokenizer=None, **model_kwargs):
    """A model directory or Hub id -> (FlaxXLSTMForCausalLM, its AutoTokenizer); a tokenizer given as a path or id
    is loaded; anything else is passed through."""
    from transformers import AutoTokenizer

    if isinstance(model, (str, os.PathLike)):
        from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

        name = str(model)
        model = FlaxXLSTMForCausalLM.from_pretrained(name, **model_kwargs)
        tokenizer = name if tokenizer is None else tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        from .safe_output import TOKENIZER_FILES

        folder = str(tokenizer)
        if os.path.isdir(folder) and not any(os.path.isfile(os.path.join(folder, n)) for n in TOKENIZER_FILES):
            raise ValueError(f"{folder}: the folder has no tokenizer files (tokenizer.json, tokenizer_config.json); "
                             "save the model's tokenizer there, or pass tokenizer=...")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


class _TextGenerationDispatch(TextGenerationPipeline):
    """What the stock "text-generation" task builds once `register_pipeline` ran: for this package's models a
    `FlaxTextGenerationPipeline`, for any other model (other Flax models included) transformers'
    `TextGenerationPipeline`, unchanged. (A
    subclass, so `pipeline()` reads the stock class's attributes.)"""

    def __new__(cls, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if _is_xlstm_flax_model(model):
            return FlaxTextGenerationPipeline(*args, **kwargs)
        pipe = TextGenerationPipeline.__new__(TextGenerationPipeline)
        pipe.__init__(*args, **kwargs)  # not an instance of cls, so Python does not call __init__ itself
        return pipe


def register_pipeline() -> None:
    """Register `FlaxTextGenerationPipeline` under `TASK` with transformers' `PIPELINE_REGISTRY` and point the stock
    "text-generation" task at `_TextGenerationDispatch` (idempotent; transformers 4.x and 5.x)."""
    stock_names = (TextGenerationPipeline, f"{TextGenerationPipeline.__module__}.TextGenerationPipeline")
    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if current is None or current.get("impl") is not FlaxTextGenerationPipeline:
        # No PyTorch classes: pipeline() gets a Flax model instance (or use text_generation_pipeline).
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=FlaxTextGenerationPipeline, pt_model=(),
                                            type="text")
    stock = PIPELINE_REGISTRY.supported_tasks.get("text-generation")
    if stock is not None and stock.get("impl") in stock_names:
        stock["impl"] = _TextGenerationDispatch
    _let_pipeline_run_without_torch()


def text_generation_pipeline(model, tokenizer=None, task: str = TASK, model_kwargs: Optional[dict] = None,
                             **kwargs: Any) -> FlaxTextGenerationPipeline:
    """A `FlaxTextGenerationPipeline` for a Flax model instance, a model directory or a Hub id (loaded with
    `FlaxXLSTMForCausalLM.from_pretrained(model, **model_kwargs)`; the tokenizer, unless given, with
    `AutoTokenizer` from the same place). `kwargs` are call defaults (see the class). Works with every supported
    transformers version, without torch."""
    return FlaxTextGenerationPipeline(model, tokenizer, task=task, model_kwargs=model_kwargs, **kwargs)


register_pipeline()  # the task exists wherever this module is imported (idempotent)


# ---------------------------------------------------------------------------------------------- the auto classes


class _FlaxAutoClass:
    """transformers 4.x's Flax auto-class calls for the models this package registers (transformers 5.x)."""

    _model_mapping: dict[str, type]  # config model_type -> model class (both types load into our classes)

    def __init__(self, *args, **kwargs):
        raise EnvironmentError(f"{type(self).__name__} is designed to be instantiated with "
                               f"`{type(self).__name__}.from_pretrained(...)` or `.from_config(config)`")

    @classmethod
    def _model_class(cls, config) -> type:
        model_type = getattr(config, "model_type", None)
        if model_type not in cls._model_mapping:
            raise ValueError(f"Unrecognized configuration class {type(config).__name__} (model_type "
                             f"{model_type!r}) for {cls.__name__}; model types supported: "
                             f"{', '.join(sorted(cls._model_mapping))}")
        return cls._model_mapping[model_type]

    @classmethod
    def from_config(cls, config, **kwargs: Any):
        """A randomly initialised model for `config` (`XLSTMFlaxConfig` or transformers' `xLSTMConfig`)."""
        return cls._model_class(config)(config, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs: Any):
        """The model saved in a folder (or Hub id): its config.json says which class; the weights load as the
        class's `from_pretrained` loads them (every keyword argument passed on)."""
        config = kwargs.pop("config", None)
        if config is None:
            hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
            config = XLSTMFlaxConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        model_class = cls._model_class(config)
        return model_class.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    @classmethod
    def register(cls, config_class, model_class, exist_ok: bool = False) -> None:
        """Map `config_class.model_type` to `model_class` (as transformers' auto classes do)."""
        model_type = config_class.model_type
        if model_type in cls._model_mapping and not exist_ok and cls._model_mapping[model_type] is not model_class:
            raise ValueError(f"'{model_type}' is already used by {cls._model_mapping[model_type].__name__}")
        cls._model_mapping[model_type] = model_class


class FlaxXLSTMForCausalLMFromTorchConfig(FlaxXLSTMForCausalLM):
    """Entry for transformers' `xLSTMConfig` in transformers 4's `FlaxAutoModelForCausalLM`: translates the config on
    construction (the model then carries an `XLSTMFlaxConfig`, which is what `save_pretrained` writes)."""

    config_class = xLSTMConfig


class FlaxXLSTMModelFromTorchConfig(FlaxXLSTMModel):
    """Entry for transformers' `xLSTMConfig` in transformers 4's `FlaxAutoModel`."""

    config_class = xLSTMConfig


def register_auto_classes() -> None:
    """Register our config with `AutoConfig`, our models with transformers 4's Flax auto classes (for our config and
    transformers' `xLSTMConfig`), and the text-generation pipeline task (`register_pipeline`)."""
    AutoConfig.register(XLSTMFlaxConfig.model_type, XLSTMFlaxConfig, exist_ok=True)
    if _TransformersFlaxAutoModel is not None:
        _TransformersFlaxAutoModel.register(XLSTMFlaxConfig, FlaxXLSTMModel, exist_ok=True)
        _TransformersFlaxAutoModelForCausalLM.register(XLSTMFlaxConfig, FlaxXLSTMForCausalLM, exist_ok=True)
        _TransformersFlaxAutoModel.register(xLSTMConfig, FlaxXLSTMModelFromTorchConfig, exist_ok=True)
        _TransformersFlaxAutoModelForCausalLM.register(xLSTMConfig, FlaxXLSTMForCausalLMFromTorchConfig,
                                                       exist_ok=True)
    register_pipeline()


register_auto_classes()
if _TransformersFlaxAutoModel is not None:  # transformers 4.x: its own classes, registered
    FlaxAutoModel = _TransformersFlaxAutoModel
    FlaxAutoModelForCausalLM = _TransformersFlaxAutoModelForCausalLM
else:

    class FlaxAutoModel(_FlaxAutoClass):  # noqa: D101 (the module docstring)
        _model_mapping = {"xlstm_flax": FlaxXLSTMModel, "xlstm": FlaxXLSTMModel}

    class FlaxAutoModelForCausalLM(_FlaxAutoClass):  # noqa: D101
        _model_mapping = {"xlstm_flax": FlaxXLSTMForCausalLM, "xlstm": FlaxXLSTMForCausalLM}
