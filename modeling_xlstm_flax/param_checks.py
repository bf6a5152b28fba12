"""Checks of a param tree handed to a model: `model(ids, params=...)`, `generate(params=...)` and
`save_pretrained(params=...)` take only this model's tree: its names and shapes (`params_shape_tree`, so another
model's params or a tree wrapped in {"params": ...} is named, not run or written), floating-point leaves, and for
saving finite values (a NaN/inf would be written into a model that then refuses to load). Each problem is a
`ValueError` naming the params; nothing is read from a device but for the finite check of `save_pretrained`.
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import numpy as np

from .checkpoint_io import _fmt_list, compare_to_plan, is_float_dtype


_PLANS: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()  # model -> (shape tree, plan)
_ACCEPTED: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()  # model -> signatures checked


def param_plan(model) -> dict[str, tuple[int, ...]]:
    """{`/`-joined name: shape} of `model`'s own param tree (its `params_shape_tree`), computed once per tree."""
    tree = model.params_shape_tree
    cached = _PLANS.get(model)
    if cached is None or cached[0] is not tree:
        cached = (tree, {name: tuple(leaf.shape) for name, leaf in _leaves(tree)})
        _PLANS[model] = cached
    return cached[1]


def check_model_params(model, params, what: str) -> None:
    """`check_param_tree` against `model`'s plan, for every call of the model: a tree of the same structure,
    shapes and dtypes as one already accepted for this model passes after one flatten (about 1 ms for 24
    blocks); the full check with its messages runs once per new signature."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    signature = (treedef, tuple((getattr(leaf, "shape", None), getattr(leaf, "dtype", None)) for leaf in leaves))
    accepted = _ACCEPTED.setdefault(model, set())
    if signature in accepted:
        return
    check_param_tree(params, param_plan(model), what)
    if len(accepted) >= 16:
        accepted.clear()
    accepted.add(signature)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaves(params) -> list[tuple[str, Any]]:
    """[(name, leaf)] of a nested param tree, names `/`-joined."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in flat]


def check_param_tree(params, plan: dict[str, tuple[int, ...]], what: str) -> None:
    """`params` must have exactly the names and shapes of `plan` and floating-point leaves (arrays or tracers);
    `ValueError` naming `what` and each unexpected, missing, mis-shaped or non-float param otherwise."""
    if not hasattr(params, "keys"):
        raise ValueError(f"{what}: expected the model's param tree (a dict), got {type(params).__name__}")
    if not params:
        raise ValueError(f"{what}: an empty param tree; pass the model's params (or None for model.params)")
    leaves = _leaves(params)
    compare_to_plan(what, {name: tuple(np.shape(leaf)) for name, leaf in leaves}, plan)
    bad = []
    for name, leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not is_float_dtype(dtype):
            bad.append(f"{name} ({dtype if dtype is not None else type(leaf).__name__})")
    if bad:
        raise ValueError(f"{what}: {len(bad)} params are not floating point (the model's params are float):"
                         + _fmt_list(bad))


def check_params_to_save(params, plan: dict[str, tuple[int, ...]], what: str) -> None:
    """`check_param_tree`, then every value finite: what `save_pretrained` checks before it writes anything."""
    check_param_tree(params, plan, what)
    bad = []
    for name, leaf in _leaves(params):
        if isinstance(leaf, jax.core.Tracer):
            raise ValueError(f"{what}: {name} is a traced value (inside jax.jit/grad); save concrete params")
        finite = np.isfinite(np.asarray(leaf))
        if not finite.all():
            bad.append(f"{name}: {int(finite.size - np.count_nonzero(finite))} of {finite.size} values")
    if bad:
        raise ValueError(f"{what}: {len(bad)} params hold NaN or inf values, which would be saved into a model "
                         "that does not load; nothing was written:" + _fmt_list(bad))
