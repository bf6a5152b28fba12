"""The sharded entry points on a device mesh (rules and mesh in `sharding`): jitted forward, loss and gradient,
training step and generation, each with in/out shardings from the partition rules, and the batch over (data, fsdp).

One compiled program per call signature (input shapes, which optional inputs are given): the shardings depend on
the batch size (an axis that does not divide it is dropped). The sharded generate runs the same generation path
as `model.generate` (`generation`), with the cache pinned to `cache_shardings` at every step.
"""

from __future__ import annotations

import weakref
from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax.core.frozen_dict import unfreeze
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .flax_base import jitted, model_key
from .generation import cache_constraint
from .checks import check_input_ids, check_inputs, check_left_padding, check_not_donated
from .sharding import (
    BATCH_AXES, DEFAULT_FSDP_MIN_WEIGHT_SIZE, TENSOR, activation_sharding, batch_sharding, cache_shardings,
    constrain_cache, fit_spec, param_shardings,
)

def _check_call(model, params, input_ids, attention_mask=None, document_borders=None, opt_state=None):
    """The model's host-side checks, before anything is placed or compiled (inside the jitted step the inputs are
    traced and the model's own checks cannot run): ids inside the vocabulary and integer, masks 0/1 of the ids'
    shape, params and optimizer state not donated to an earlier step."""
    check_inputs(input_ids, attention_mask, document_borders, model.config.vocab_size)
    check_not_donated(params, "params")
    check_not_donated(opt_state, "opt_state")


def _batch_arg(x):
    """ids / masks / document borders as int32: jax arrays keep their placement, host data stays on the host
    until `_place` puts each shard on its device."""
    if x is None:
        return None
    return x.astype(jnp.int32) if isinstance(x, jax.Array) else np.asarray(x, np.int32)


def _place(args, shardings):
    """device_put each argument (None stays None) with its sharding (a no-op where it already has it)."""
    return tuple(a if a is None else jax.device_put(a, s) for a, s in zip(args, shardings))


def _logits_spec(shape, mesh) -> P:
    return fit_spec((BATCH_AXES, None, TENSOR), shape, mesh)


def _compiled(model, kind: str, key: tuple, build: Callable[[], tuple[Callable, tuple]]):
    """(jitted fn, in_shardings) for one call signature, kept in the one per-model cache of compiled programs
    (`generation.jitted`); `key` holds the signature (input shapes, which optional inputs are given) and whatever
    else the program depends on (mesh, fsdp threshold, optimizer), `model_key` the module and config."""
    return jitted(model, kind, (model_key(model),) + key, build)


def sharded_forward(model, mesh: Mesh, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """A jitted forward `f(params, input_ids, attention_mask=None, document_borders=None, past_key_values=None)`
    with in/out shardings: params by the rules, ids/mask/borders/logits batch-sharded (logits' vocab on tensor
    where it divides), the cache by `cache_shardings`, block activations by `activation_sharding`. Returns logits
    (B, S, V) float32, or (logits, new cache) when a cache is given."""

    model_ref = weakref.ref(model)  # the compiled program is kept per model: it must not keep the model alive

    def build(params, shape, has_mask, has_borders, cache):
        p_sh = param_shardings(params, model.config, mesh, fsdp_min_weight_size)
        b_sh = batch_sharding(shape, mesh)
        c_sh = None if cache is None else cache_shardings(cache, model.config, mesh)
        l_sh = NamedSharding(mesh, _logits_spec(tuple(shape) + (model.config.vocab_size,), mesh))

        def forward(params, input_ids, attention_mask, document_borders, cache):
            with activation_sharding(mesh):
                out = model_ref()(input_ids, attention_mask=attention_mask, document_borders=document_borders,
                                  past_key_values=cache, params=params)
            return out.logits if cache is None else (out.logits, out.past_key_values)

        in_sh = (p_sh, b_sh, b_sh if has_mask else None, b_sh if has_borders else None, c_sh)
        out_sh = l_sh if cache is None else (l_sh, c_sh)
        return jax.jit(forward, in_shardings=in_sh, out_shardings=out_sh), in_sh

    def call(params, input_ids, attention_mask=None, document_borders=None, past_key_values=None):
        _check_call(model, params, input_ids, attention_mask, document_borders)
        params = unfreeze(params)
        shape = tuple(np.shape(input_ids))
        flags = (attention_mask is not None, document_borders is not None)
        cache_key = None if past_key_values is None else jax.tree_util.tree_structure(past_key_values)
        fn, in_sh = _compiled(model, "sharded_forward", (mesh, fsdp_min_weight_size, shape, flags, cache_key),
                              lambda: build(params, shape, *flags, past_key_values))
        args = (params, _batch_arg(input_ids), _batch_arg(attention_mask), _batch_arg(document_borders),
                past_key_values)
        return fn(*_place(args, in_sh))

    return call


def causal_lm_loss(logits: jax.Array, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean next-token cross entropy (position t predicts token t+1), over positions whose target is unmasked.

    logits (B, S, V), input_ids (B, S) int, attention_mask (B, S) 0/1. Concrete ids outside [0, V) are a
    ValueError; traced ones (inside your own jit) make the loss NaN (never a wrong finite number)."""
    import optax

    check_input_ids(input_ids, logits.shape[-1])
    targets = input_ids[:, 1:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), targets)
    ce = jnp.where((targets >= 0) & (targets < logits.shape[-1]), ce, jnp.nan)  # negative ids would wrap around
    mask = jnp.ones_like(ce) if attention_mask is None else attention_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _loss_fn(model, mesh, params, input_ids, attention_mask, document_borders, dropout_rng):
    with activation_sharding(mesh):
        logits = model(input_ids, attention_mask=attention_mask, document_borders=document_borders, params=params,
                       dropout_rng=dropout_rng, train=dropout_rng is not None).logits
    return causal_lm_loss(logits, input_ids, attention_mask)


def _batch_shardings(mesh, shape, has_mask, has_borders, has_rng):
    """in_shardings of (input_ids, attention_mask, document_borders, dropout_rng)."""
    b_sh = batch_sharding(shape, mesh)
    return (b_sh, b_sh if has_mask else None, b_sh if has_borders else None,
            NamedSharding(mesh, P()) if has_rng else None)


def sharded_loss_and_grad(model, mesh: Mesh, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """A jitted `f(params, input_ids, attention_mask=None, document_borders=None, dropout_rng=None)
    -> (loss, grads)`: the causal-LM loss (`causal_lm_loss`) and its gradient, grads sharded like the params
    (XLA reduces them over the batch axes and scatters them over fsdp). A dropout_rng turns on train mode."""

    model_ref = weakref.ref(model)  # the compiled program is kept per model: it must not keep the model alive

    def build(params, shape, *flags):
        p_sh = param_shardings(params, model.config, mesh, fsdp_min_weight_size)
        fn = jax.value_and_grad(lambda p, *batch: _loss_fn(model_ref(), mesh, p, *batch))
        in_sh = (p_sh,) + _batch_shardings(mesh, shape, *flags)
        return jax.jit(fn, in_shardings=in_sh, out_shardings=(NamedSharding(mesh, P()), p_sh)), in_sh

    def call(params, input_ids, attention_mask=None, document_borders=None, dropout_rng=None):
        _check_call(model, params, input_ids, attention_mask, document_borders)
        params = unfreeze(params)
        shape = tuple(np.shape(input_ids))
        flags = (attention_mask is not None, document_borders is not None, dropout_rng is not None)
        fn, in_sh = _compiled(model, "sharded_loss_and_grad", (mesh, fsdp_min_weight_size, shape, flags),
                              lambda: build(params, shape, *flags))
        args = (params, _batch_arg(input_ids), _batch_arg(attention_mask), _batch_arg(document_borders), dropout_rng)
        return fn(*_place(args, in_sh))

    return call


def _optimizer_state_shardings(optimizer, params, config, mesh, fsdp_min_weight_size):
    import optax

    p_sh = param_shardings(params, config, mesh, fsdp_min_weight_size)
    shapes = jax.eval_shape(optimizer.init, params)
    rep = NamedSharding(mesh, P())
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, shapes, p_sh,
                                 transform_non_params=lambda _: rep)


def init_sharded_optimizer_state(optimizer, params, config, mesh: Mesh,
                                 fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE):
    """`optimizer.init(params)` (an optax `GradientTransformation`) with every param-shaped leaf (momentum, Adam's
    mu/nu) sharded like its param and the rest (step counts) replicated."""
    params = unfreeze(params)
    o_sh = _optimizer_state_shardings(optimizer, params, config, mesh, fsdp_min_weight_size)
    p_sh = param_shardings(params, config, mesh, fsdp_min_weight_size)
    return jax.jit(optimizer.init, in_shardings=(p_sh,), out_shardings=o_sh)(params)


def sharded_train_step(model, mesh: Mesh, optimizer, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE,
                       donate: bool = True, with_grad_norm: bool = False, skip_non_finite: bool = False):
    """A jitted fine-tuning step `f(params, opt_state, input_ids, attention_mask=None, document_borders=None,
    dropout_rng=None) -> (params, opt_state, loss)` with an optax optimizer (state from
    `init_sharded_optimizer_state`); params and optimizer state stay sharded and are donated.

    `with_grad_norm`: also return the global norm of the gradients (before any clipping in `optimizer`), as a
    fourth output. `skip_non_finite`: a step whose loss or gradient norm is not finite returns params and
    optimizer state unchanged (so a caller that stops there still holds the last good state, donation or not)."""
    import optax

    model_ref = weakref.ref(model)  # the compiled program is kept per model: it must not keep the model alive

    def build(params, shape, *flags):
        p_sh = param_shardings(params, model.config, mesh, fsdp_min_weight_size)
        o_sh = _optimizer_state_shardings(optimizer, params, model.config, mesh, fsdp_min_weight_size)
        rep = NamedSharding(mesh, P())

        def step(params, opt_state, *batch):
            loss, grads = jax.value_and_grad(lambda p: _loss_fn(model_ref(), mesh, p, *batch))(params)
            updates, new_opt_state = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            grad_norm = optax.tree.norm(grads) if with_grad_norm or skip_non_finite else None
            if skip_non_finite:
                ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                keep = partial(jax.tree_util.tree_map, lambda new, old: jnp.where(ok, new, old))
                new_params, new_opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
            return (new_params, new_opt_state, loss) + ((grad_norm,) if with_grad_norm else ())

        in_sh = (p_sh, o_sh) + _batch_shardings(mesh, shape, *flags)
        out_sh = (p_sh, o_sh, rep) + ((rep,) if with_grad_norm else ())
        return jax.jit(step, in_shardings=in_sh, out_shardings=out_sh,
                       donate_argnums=(0, 1) if donate else ()), in_sh

    # the build closure holds `optimizer`, so its id stays unique while the program is kept
    variant = (mesh, fsdp_min_weight_size, id(optimizer), donate, with_grad_norm, skip_non_finite)

    def call(params, opt_state, input_ids, attention_mask=None, document_borders=None, dropout_rng=None):
        _check_call(model, params, input_ids, attention_mask, document_borders, opt_state)
        params = unfreeze(params)
        shape = tuple(np.shape(input_ids))
        flags = (attention_mask is not None, document_borders is not None, dropout_rng is not None)
        fn, in_sh = _compiled(model, "sharded_train_step", variant + (shape, flags),
                              lambda: build(params, shape, *flags))
        args = (params, opt_state, _batch_arg(input_ids), _batch_arg(attention_mask), _batch_arg(document_borders),
                dropout_rng)
        return fn(*_place(args, in_sh))

    return call


def sharded_generate(model, mesh: Mesh, fsdp_min_weight_size: int = DEFAULT_FSDP_MIN_WEIGHT_SIZE,
                     **generate_kwargs):
    """A jitted `f(params, input_ids, attention_mask=None, prng_key=None) -> sequences` running transformers' Flax
    `generate` (greedy, sampling or beams: `generate_kwargs` such as max_new_tokens, do_sample, num_beams) with
    params by the rules, the batch over (data, fsdp) and the recurrent cache by `cache_shardings` at every step."""
    constrain = partial(constrain_cache, config=model.config, mesh=mesh)
    model_ref = weakref.ref(model)

    def build(params, shape):
        p_sh = param_shardings(params, model.config, mesh, fsdp_min_weight_size)
        b_sh = batch_sharding(shape, mesh)
        rep = NamedSharding(mesh, P())

        def run(params, input_ids, attention_mask, prng_key):
            with activation_sharding(mesh), cache_constraint(constrain):
                return model_ref().generate(input_ids, attention_mask=attention_mask, params=params,
                                            prng_key=prng_key, **generate_kwargs).sequences

        in_sh = (p_sh, b_sh, b_sh, rep)
        return jax.jit(run, in_shardings=in_sh, out_shardings=b_sh), in_sh

    signature = (mesh, fsdp_min_weight_size, repr(sorted(generate_kwargs.items())))

    def call(params, input_ids, attention_mask=None, prng_key=None):
        _check_call(model, params, input_ids, attention_mask)
        check_left_padding(attention_mask)  # as model.generate: generation continues after the last position
        params = unfreeze(params)
        shape = tuple(np.shape(input_ids))
        fn, in_sh = _compiled(model, "sharded_generate", signature + (shape,), lambda: build(params, shape))
        if attention_mask is None:  # all tokens valid: the same numbers, one signature (and beams need a mask)
            attention_mask = np.ones(shape, np.int32)
        prng_key = jax.random.PRNGKey(0) if prng_key is None else prng_key
        return fn(*_place((params, _batch_arg(input_ids), _batch_arg(attention_mask), prng_key), in_sh))

    return call
