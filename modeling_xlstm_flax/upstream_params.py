"""Upstream xlstm-jax param trees <-> this port's params, whole trees at a time (the streaming converters use the
same per-key functions). The names and reshapes live in the one param table, `modeling_xlstm_flax.param_table`;
`tests/fixtures/README.md` documents upstream's layout, e.g.
`params/xlstm_block_stack/blocks/0/xlstm_res_block/xlstm/dense_q/Dense_0/kernel` <->
`backbone/blocks/0/mlstm_layer/q/kernel`, `params/token_embedding/sharded/embedding (1, V, D)` <->
`backbone/embeddings/embedding (V, D)`.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import param_table
from .param_table import UPSTREAM_SCANNED_BLOCKS, strip_upstream_key, upstream_array_to_flax  # noqa: F401


def _unstack_upstream_blocks(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Upstream scan layout `blocks/block/...` (leading block axis) -> `blocks/<i>/...`."""
    out = {}
    for key, value in flat.items():
        if key.startswith(UPSTREAM_SCANNED_BLOCKS):
            rest = key[len(UPSTREAM_SCANNED_BLOCKS):]
            for i in range(value.shape[0]):
                out[f"{param_table.UPSTREAM_BLOCKS}/{i}/{rest}"] = value[i]
        else:
            out[key] = value
    return out


def upstream_key_to_flax(key: str, config) -> Optional[tuple[str, str]]:
    """One upstream key of an unrolled block layout (`params/` root and orbax's trailing `/value` optional) ->
    (our unrolled key, reshape kind), or None when the table has no row for it."""
    return param_table.upstream_key_to_flax(key, config.layer_type)


def upstream_to_flax(upstream: dict[str, Any], config) -> dict:
    """Upstream params (flat `/`-joined dict or nested dict, with or without the `params/` root) -> our nested
    params for `config` (scanned layout when `config.scan_blocks`). Raises ValueError listing unexpected or missing
    keys and shape mismatches."""
    from flax.traverse_util import flatten_dict, unflatten_dict  # here: importing this module needs no jax

    flat = upstream if all(isinstance(v, np.ndarray) or hasattr(v, "shape") for v in upstream.values()) else None
    if flat is None:
        flat = {"/".join(k): v for k, v in flatten_dict(upstream).items()}
    flat = {strip_upstream_key(k): np.asarray(v) for k, v in flat.items()}
    flat = _unstack_upstream_blocks(flat)

    ours: dict[str, np.ndarray] = {}
    unexpected = []
    for key, value in flat.items():
        mapped = upstream_key_to_flax(key, config)
        if mapped is None:
            unexpected.append(f"{key} {tuple(value.shape)}")
        else:
            ours[mapped[0]] = upstream_array_to_flax(value, mapped[1])
    if unexpected:
        raise ValueError(f"upstream params have {len(unexpected)} keys with no counterpart: {unexpected[:10]}")
    params = unflatten_dict({tuple(k.split("/")): v for k, v in ours.items()})
    check_params_against_config(params_unrolled=params, config=config)
    if config.scan_blocks:
        from .xlstm_layers import stack_block_params

        params = stack_block_params(params, config.num_blocks)
    return params


def flax_to_upstream(params: dict, config) -> dict[str, np.ndarray]:
    """Our params -> upstream flat dict (`params/...` keys, unrolled blocks; stack them for upstream scan)."""
    from flax.traverse_util import flatten_dict
    from .xlstm_layers import unstack_block_params

    if config.scan_blocks:
        params = unstack_block_params(params, config.num_blocks)
    out = {}
    for key, value in flatten_dict(params, sep="/").items():
        up_key, kind = param_table.flax_to_upstream_key(key, config.layer_type)
        out[up_key] = param_table.flax_array_to_upstream(np.asarray(value), kind, config.num_heads)
    return out


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Our unrolled causal-LM param names -> shapes for `config` (from the model, no weights)."""
    from .xlstm_layers import param_shapes

    return param_shapes(config, scanned=False)


def check_params_against_config(params_unrolled: dict, config) -> None:
    """Raise ValueError naming missing keys, unexpected keys and shape mismatches (first ten of each)."""
    from flax.traverse_util import flatten_dict

    expected = expected_shapes(config)
    got = {k: tuple(np.shape(v)) for k, v in flatten_dict(params_unrolled, sep="/").items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [f"{k}: got {got[k]}, config needs {expected[k]}" for k in sorted(set(got) & set(expected))
                  if got[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {missing[:10]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {unexpected[:10]}")
    if mismatched:
        problems.append(f"shape mismatches {len(mismatched)}: {mismatched[:10]}")
    if problems:
        raise ValueError("params do not fit the config: " + "; ".join(problems))
