"""The port's base model class and output classes, the only ones under transformers 4.x and 5.x alike (5.x removed
transformers' `FlaxPreTrainedModel` and Flax outputs; under 4.x ours are used too, so there is one runtime stack).

The base class has the part of transformers 4.x's `FlaxPreTrainedModel` API the port uses: construction (random
init or a shape-only model with `_do_init=False`), `params` / `params_shape_tree` / `required_params`,
`generation_config`, `can_generate`, `to_bf16` / `to_fp16` / `to_fp32`, `register_for_auto_class` (which
transformers 4.x's auto classes call on a remote-code model), and the Hub upload helpers (transformers'
`PushToHubMixin`, in both majors). Its name is transformers' (`FlaxPreTrainedModel`), which is how transformers'
pipelines tell a Flax model (`infer_framework`). Loading and saving are the port's own (`checkpoint_io`,
`checkpoint_writer`).

Also here, beside the model they serve: the one cache of compiled programs per model (`jitted`), used by the
forward, `generate` and the sharded steps, and `is_traced`.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax.core.frozen_dict import FrozenDict, unfreeze
from flax.traverse_util import flatten_dict
from transformers import GenerationConfig
from transformers.utils import PushToHubMixin


# ---------------------------------------------------------------------------------------------- compiled programs
# Compiled functions per model: {model: {kind: {key: jitted fn}}}; bounded, never keeps a model alive.
_COMPILED: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_MAX_COMPILED_PER_MODEL = 32


def jitted(model, kind: str, key, build: Callable[[], Any]) -> Any:
    """The compiled function stored for `model` under (`kind`, `key`), built by `build()` on first use. The one
    cache of compiled programs per model: kinds "forward" (`model(...)`), "generate" (`model.generate`) and the
    sharded steps' "sharded_forward", "sharded_loss_and_grad", "sharded_train_step", "sharded_generate"; at most
    `_MAX_COMPILED_PER_MODEL` per kind (the oldest is dropped). What `build` returns must not hold `model` strongly
    (use a weakref), or the model is never freed."""
    compiled = _COMPILED.setdefault(model, {}).setdefault(kind, {})
    fn = compiled.get(key)
    if fn is None:
        fn = build()
        if len(compiled) >= _MAX_COMPILED_PER_MODEL:
            compiled.pop(next(iter(compiled)))
        compiled[key] = fn
    return fn


def forget_compiled(model) -> None:
    """Drop every compiled program kept for `model` (after its module was rebuilt)."""
    _COMPILED.pop(model, None)


def model_key(model) -> tuple:
    """What a compiled program of `model` depends on besides its arguments: the module object and the config's
    current values (a config field changed after a call gives a new program, never a stale one)."""
    return id(model.module), repr(sorted(vars(model.config).items()))


def is_traced(*arrays) -> bool:
    """Whether any leaf of `arrays` is a JAX tracer (we are inside someone's jit/grad/vmap)."""
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(arrays))


# ---------------------------------------------------------------------------------------------- outputs
class FlaxModelOutput(dict):
    """transformers' ModelOutput behaviour for JAX arrays: the fields that are not None, in field order, read as
    attributes (a field that is None reads as None), keys or positions; `to_tuple()`; more keys may be set (the
    model adds `past_key_values`). A JAX pytree (its leaves are the values), so it passes through `jax.jit`."""

    _fields: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, lambda out: (list(out.values()), tuple(out.keys())),
                                           lambda keys, values: cls._from_items(zip(keys, values)))

    def __init__(self, *args, **kwargs):
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} positional fields")
        values = {**dict(zip(self._fields, args)), **kwargs}
        super().__init__((k, v) for k, v in values.items() if v is not None)

    @classmethod
    def _from_items(cls, items):
        out = cls()
        dict.update(out, items)
        return out

    def __getattr__(self, name):
        if name in self:
            return self[name]
        if name in self._fields:
            return None
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __getitem__(self, key):
        return self.to_tuple()[key] if isinstance(key, (int, slice)) else super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


class FlaxBaseModelOutput(FlaxModelOutput):
    """last_hidden_state (B, S, D); hidden_states: NB + 1 arrays (B, S, D) when asked for."""

    _fields = ("last_hidden_state", "hidden_states", "attentions")


class FlaxCausalLMOutput(FlaxModelOutput):
    """logits (B, S, V) float32; hidden_states as in `FlaxBaseModelOutput`."""

    _fields = ("logits", "hidden_states", "attentions")


# ---------------------------------------------------------------------------------------------- the base class
def _cast_floats(params, dtype, mask=None):
    """Floating leaves of `params` cast to `dtype` (where `mask` is True, if given)."""

    def cast(param, keep):
        return param.astype(dtype) if keep and jnp.issubdtype(param.dtype, jnp.floating) else param

    if mask is None:
        return jax.tree_util.tree_map(lambda p: cast(p, True), params)
    return jax.tree_util.tree_map(cast, params, mask)


class FlaxPreTrainedModel(PushToHubMixin):
    """A Flax linen `module` with its params and config, as transformers 4.x's `FlaxPreTrainedModel` defines it.

    Subclasses set `config_class`, `base_model_prefix`, `module_class` and implement `init_weights(rng,
    input_shape, params=None)`."""

    config_class = None
    base_model_prefix = ""
    main_input_name = "input_ids"
    framework = "flax"
    _auto_class = None

    def __init__(self, config, module, input_shape=(1, 1), seed: int = 0, dtype: Any = jnp.float32,
                 _do_init: bool = True):
        self._config = config
        self._module = module
        self.key = jax.random.PRNGKey(seed)
        self.dtype = dtype
        self.input_shape = input_shape
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None
        self._is_initialized = _do_init
        self._missing_keys: set = set()
        if _do_init:
            params = self.init_weights(self.key, input_shape)
        shape_tree = self.plan_shape_tree(input_shape)
        self._params_shape_tree = shape_tree
        self._required_params = set(flatten_dict(unfreeze(shape_tree)).keys())
        if _do_init:
            self.params = params

    def plan_shape_tree(self, input_shape):
        """The params' shapes and dtypes (`jax.ShapeDtypeStruct`s, nothing allocated): `params_shape_tree`."""
        return jax.eval_shape(partial(self.init_weights, input_shape=input_shape), self.key)

    def init_weights(self, rng, input_shape, params=None):
        raise NotImplementedError(f"init_weights is not implemented for {type(self).__name__}")

    @classmethod
    def register_for_auto_class(cls, auto_class="FlaxAutoModel") -> None:
        """Record the auto class (a name or a class) a remote-code model is loaded with, as transformers does:
        its Auto classes call this on a `trust_remote_code` load (the class keeps the name in `_auto_class`)."""
        name = auto_class if isinstance(auto_class, str) else getattr(auto_class, "__name__", None)
        if not name:
            raise ValueError(f"register_for_auto_class: {auto_class!r} is not an auto class or its name")
        cls._auto_class = name

    @classmethod
    def can_generate(cls) -> bool:
        """True: both wrapper classes define the generation hooks (as under transformers 4.x)."""
        return True

    @property
    def config(self):
        return self._config

    @property
    def module(self):
        return self._module

    @property
    def params(self):
        if not self._is_initialized:
            raise ValueError("`params` cannot be accessed from a model built with `_do_init=False`: keep the params "
                             "from_pretrained returned and pass them to each call (`params=...`)")
        return self._params

    @params.setter
    def params(self, params):
        if not self._is_initialized:
            raise ValueError("`params` cannot be set on a model built with `_do_init=False`")
        if isinstance(params, FrozenDict):
            params = unfreeze(params)
        missing = self._required_params - set(flatten_dict(params).keys())
        if missing:
            raise ValueError(f"params are missing {sorted('/'.join(k) for k in missing)[:10]}; call "
                             "init_weights(rng, input_shape, params) to complete them")
        self._params = params

    @property
    def params_shape_tree(self):
        return self._params_shape_tree

    @property
    def required_params(self) -> set:
        return self._required_params

    def to_bf16(self, params, mask=None):
        """`params` with floating leaves cast to bfloat16 (where `mask` is True); returns a new tree."""
        return _cast_floats(params, jnp.bfloat16, mask)

    def to_fp16(self, params, mask=None):
        return _cast_floats(params, jnp.float16, mask)

    def to_fp32(self, params, mask=None):
        return _cast_floats(params, jnp.float32, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.to_json_string(use_diff=True).strip()})"


__all__ = ["FlaxBaseModelOutput", "FlaxCausalLMOutput", "FlaxModelOutput", "FlaxPreTrainedModel", "forget_compiled",
           "is_traced", "jitted", "model_key"]
