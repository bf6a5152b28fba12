"""The one place that maps upstream xlstm-jax param trees to this port's Flax params and back.

Upstream keys are `/`-joined, e.g. `params/xlstm_block_stack/blocks/0/xlstm_res_block/xlstm/dense_q/Dense_0/kernel`
(`../shared/fixtures/README.md` documents the layout). Our keys are transformers' PyTorch names (see
`modeling_flax_xlstm`). Per block (upstream `Bk = params/xlstm_block_stack/blocks/<i>/`, ours `blocks/<i>/`):

| upstream (under Bk)                                        | ours (under backbone/blocks/<i>/)      | reshape |
|------------------------------------------------------------|----------------------------------------|---------|
| xlstm_res_block/xlstm_norm/sharded/scale (1,D)             | norm_mlstm/scale (D,)                  | squeeze |
| ffn_res_block/ffn_norm/sharded/scale (1,D)                 | norm_ffn/scale                         | squeeze |
| ffn_res_block/ffn/<proj_up,proj_up_gate,proj_down>/Dense_0 | ffn/<same>                             |         |
| mlstm_v1: xlstm/dense_<q,k,v,o>/Dense_0                    | mlstm_layer/<q,k,v,ogate_preact>       |         |
| mlstm_v1: xlstm/<igate,fgate>/Dense_0                      | mlstm_layer/<igate,fgate>_preact       |         |
| mlstm_v1: xlstm/outnorm/sharded/scale (1,NH,DH)            | mlstm_layer/multihead_norm/scale (NH*DH,) | flatten |
| mlstm_v1: xlstm/proj_down/Dense_0                          | mlstm_layer/out_proj                   |         |
| mlstm: xlstm/<proj_up_mlstm,proj_up_z>/Dense_0             | mlstm_layer/<same>                     |         |
| mlstm: xlstm/proj_down/Dense_0                             | mlstm_layer/out_proj                   |         |
| mlstm: xlstm/inner_layer/sharded/conv1d/conv/kernel (1,K,1,I) | mlstm_layer/conv1d/kernel (K,I)     | squeeze |
| mlstm: .../inner_layer/sharded/<q,k,v>_proj/kernel (1,NPH,o,i) | mlstm_layer/<q,k,v>_proj/kernel    | squeeze |
| mlstm: .../inner_layer/sharded/mlstm_cell/<igate,fgate>    | mlstm_layer/<igate,fgate>_preact       | squeeze |
| mlstm: .../inner_layer/sharded/mlstm_cell/outnorm/scale    | mlstm_layer/multihead_norm/scale       | flatten |
| mlstm: .../inner_layer/sharded/learnable_skip (1,I)        | mlstm_layer/learnable_skip             | squeeze |

Top level: `token_embedding/sharded/embedding (1,V,D)` -> `backbone/embeddings/embedding`; `lm_head/out_norm/scale`
-> `backbone/out_norm/scale`; `lm_head/out_dense/kernel` -> `lm_head/kernel`. With upstream `scan_blocks=True`,
`blocks/block/...` carries a leading block axis. Names not covered by the fixtures (qk-norm, post-norms, qk_proj,
x_mlstm_conv_scaling) follow upstream's module names and are marked `unverified` below.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

# (upstream path, our path, kind). kind: "plain" same array; "squeeze" upstream has a leading size-1 shard axis;
# "heads" upstream (1, NH, DH) <-> ours (NH * DH,); "conv" upstream (1, K, 1, F) <-> ours (K, F).
_V1_LAYER = [
    ("xlstm/dense_q/Dense_0", "mlstm_layer/q", "plain"),
    ("xlstm/dense_k/Dense_0", "mlstm_layer/k", "plain"),
    ("xlstm/dense_v/Dense_0", "mlstm_layer/v", "plain"),
    ("xlstm/dense_o/Dense_0", "mlstm_layer/ogate_preact", "plain"),
    ("xlstm/igate/Dense_0", "mlstm_layer/igate_preact", "plain"),
    ("xlstm/fgate/Dense_0", "mlstm_layer/fgate_preact", "plain"),
    ("xlstm/outnorm/sharded", "mlstm_layer/multihead_norm", "heads"),
    ("xlstm/proj_down/Dense_0", "mlstm_layer/out_proj", "plain"),
    ("xlstm/q_norm", "mlstm_layer/qk_norm/q_norm", "plain"),  # unverified
    ("xlstm/k_norm", "mlstm_layer/qk_norm/k_norm", "plain"),  # unverified
]
_INNER = "xlstm/inner_layer/sharded"
_CONV_LAYER = [
    ("xlstm/proj_up_mlstm/Dense_0", "mlstm_layer/proj_up_mlstm", "plain"),
    ("xlstm/proj_up_z/Dense_0", "mlstm_layer/proj_up_z", "plain"),
    ("xlstm/proj_down/Dense_0", "mlstm_layer/out_proj", "plain"),
    (f"{_INNER}/conv1d/conv", "mlstm_layer/conv1d", "conv"),
    (f"{_INNER}/q_proj", "mlstm_layer/q_proj", "squeeze"),
    (f"{_INNER}/k_proj", "mlstm_layer/k_proj", "squeeze"),
    (f"{_INNER}/qk_proj", "mlstm_layer/qk_proj", "squeeze"),  # unverified
    (f"{_INNER}/v_proj", "mlstm_layer/v_proj", "squeeze"),
    (f"{_INNER}/x_mlstm_conv_scaling", "mlstm_layer/x_mlstm_conv_scaling", "squeeze"),  # unverified
    (f"{_INNER}/mlstm_cell/igate", "mlstm_layer/igate_preact", "squeeze"),
    (f"{_INNER}/mlstm_cell/fgate", "mlstm_layer/fgate_preact", "squeeze"),
    (f"{_INNER}/mlstm_cell/outnorm", "mlstm_layer/multihead_norm", "heads"),
    (f"{_INNER}/mlstm_cell/q_norm", "mlstm_layer/qk_norm/q_norm", "squeeze"),  # unverified
    (f"{_INNER}/mlstm_cell/k_norm", "mlstm_layer/qk_norm/k_norm", "squeeze"),  # unverified
    (f"{_INNER}/learnable_skip", "mlstm_layer/learnable_skip", "squeeze"),
]
_BLOCK = [
    ("xlstm_res_block/xlstm_norm/sharded", "norm_mlstm", "squeeze"),
    ("xlstm_res_block/xlstm_post_norm/sharded", "post_norm_mlstm", "squeeze"),  # unverified
    ("ffn_res_block/ffn_norm/sharded", "norm_ffn", "squeeze"),
    ("ffn_res_block/ffn_post_norm/sharded", "post_norm_ffn", "squeeze"),  # unverified
    ("ffn_res_block/ffn/proj_up/Dense_0", "ffn/proj_up", "plain"),
    ("ffn_res_block/ffn/proj_up_gate/Dense_0", "ffn/proj_up_gate", "plain"),
    ("ffn_res_block/ffn/proj_down/Dense_0", "ffn/proj_down", "plain"),
]
_TOP = [
    ("token_embedding/sharded", "backbone/embeddings", "squeeze"),
    ("lm_head/out_norm", "backbone/out_norm", "plain"),
    ("lm_head/out_dense", "lm_head", "plain"),
]
_UP_BLOCKS = "xlstm_block_stack/blocks"


def _block_rules(config) -> list[tuple[str, str, str]]:
    layer_rules = _V1_LAYER if config.layer_type == "mlstm_v1" else _CONV_LAYER
    return _BLOCK + [(f"xlstm_res_block/{u}", o, k) for u, o, k in layer_rules]


def _to_ours(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "plain":
        return array
    if kind == "squeeze":
        return array[0] if array.ndim >= 1 and array.shape[0] == 1 else array
    if kind == "heads":
        return array.reshape(-1)
    if kind == "conv":  # kernel (1, K, 1, F) -> (K, F); bias (1, F) -> (F,)
        return array.reshape(array.shape[1], array.shape[-1]) if array.ndim == 4 else array[0]
    raise AssertionError(kind)


def _to_upstream(array: np.ndarray, kind: str, config) -> np.ndarray:
    if kind == "plain":
        return array
    if kind == "squeeze":
        return array[None]
    if kind == "heads":
        return array.reshape(1, config.num_heads, -1)
    if kind == "conv":
        return array.reshape(1, array.shape[0], 1, array.shape[1]) if array.ndim == 2 else array[None]
    raise AssertionError(kind)


def _match(key: str, module_path: str):
    """The part of `key` after `module_path` ("" for the path itself, "/leaf" below it), or None."""
    if key == module_path:
        return ""
    if key.startswith(module_path + "/"):
        return key[len(module_path):]
    return None


def _strip_prefix(key: str) -> str:
    key = key[len("params/"):] if key.startswith("params/") else key
    return key[: -len("/value")] if key.endswith("/value") else key  # orbax boxes partitioned leaves


def _unstack_upstream_blocks(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Upstream scan layout `blocks/block/...` (leading block axis) -> `blocks/<i>/...`."""
    out = {}
    prefix = f"{_UP_BLOCKS}/block/"
    for key, value in flat.items():
        if key.startswith(prefix):
            for i in range(value.shape[0]):
                out[f"{_UP_BLOCKS}/{i}/{key[len(prefix):]}"] = value[i]
        else:
            out[key] = value
    return out


# upstream's scan layout: `<UPSTREAM_SCANNED_BLOCKS><rest>` with a leading block axis (see `_unstack_upstream_blocks`)
UPSTREAM_SCANNED_BLOCKS = f"{_UP_BLOCKS}/block/"
_UP_BLOCK_RE = re.compile(rf"^{_UP_BLOCKS}/(\d+)/(.*)$")


def upstream_key_to_flax(key: str, config) -> Optional[tuple[str, str]]:
    """One upstream key of an unrolled block layout (`params/` root and orbax's trailing `/value` optional) ->
    (our unrolled key, kind), or None when no rule covers it. `upstream_array_to_flax(array, kind)` reshapes the
    array; used tensor by tensor by the streaming converters in this package."""
    key = _strip_prefix(key)
    match = _UP_BLOCK_RE.match(key)
    rules, rest, our_prefix = (_TOP, key, "")
    if match:
        rules, rest, our_prefix = _block_rules(config), match.group(2), f"backbone/blocks/{match.group(1)}/"
    for up, our, kind in rules:
        leaf = _match(rest, up)
        if leaf is not None:
            return our_prefix + our + leaf, kind
    return None


def upstream_array_to_flax(array: np.ndarray, kind: str) -> np.ndarray:
    """Reshape one upstream array to our layout (`kind` from `upstream_key_to_flax`): squeeze the size-1 shard
    axis, flatten the multi-head norm (1, NH, DH) -> (NH*DH,), conv kernel (1, K, 1, F) -> (K, F)."""
    return _to_ours(array, kind)


def upstream_to_flax(upstream: dict[str, Any], config) -> dict:
    """Upstream params (flat `/`-joined dict or nested dict, with or without the `params/` root) -> our nested
    params for `config` (scanned layout when `config.scan_blocks`). Raises ValueError listing unexpected or missing
    keys and shape mismatches."""
    flat = upstream if all(isinstance(v, np.ndarray) or hasattr(v, "shape") for v in upstream.values()) else None
    if flat is None:
        flat = {"/".join(k): v for k, v in flatten_dict(upstream).items()}
    flat = {_strip_prefix(k): np.asarray(v) for k, v in flat.items()}
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
        from ..modeling_flax_xlstm import stack_block_params

        params = stack_block_params(params, config.num_blocks)
    return params


def flax_to_upstream(params: dict, config) -> dict[str, np.ndarray]:
    """Our params -> upstream flat dict (`params/...` keys, unrolled blocks; stack them for upstream scan)."""
    from ..modeling_flax_xlstm import unstack_block_params

    if config.scan_blocks:
        params = unstack_block_params(params, config.num_blocks)
    out = {}
    for key, value in flatten_dict(params, sep="/").items():
        value = np.asarray(value)
        match = re.match(r"^backbone/blocks/(\d+)/(.*)$", key)
        rules, rest, up_prefix = (_TOP, key, "")
        if match:
            rules, rest, up_prefix = _block_rules(config), match.group(2), f"{_UP_BLOCKS}/{match.group(1)}/"
        for up, our, kind in rules:
            leaf = _match(rest, our)
            if leaf is not None:
                out["params/" + up_prefix + up + leaf] = _to_upstream(value, kind, config)
                break
        else:
            raise ValueError(f"param {key} {value.shape} has no upstream counterpart")
    return out


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Our unrolled param paths -> shapes for `config`, computed with `jax.eval_shape` (no weights)."""
    import jax
    import jax.numpy as jnp

    from ..modeling_flax_xlstm import XLSTMForCausalLMModule

    cfg = config.__class__(**{**config.to_dict(), "scan_blocks": False})
    module = XLSTMForCausalLMModule(cfg, dtype=jnp.float32)
    shapes = jax.eval_shape(lambda key: module.init(key, jnp.zeros((1, 1), "i4")), jax.random.PRNGKey(0))
    return {k: tuple(v.shape) for k, v in flatten_dict(shapes["params"], sep="/").items()}


def check_params_against_config(params_unrolled: dict, config) -> None:
    """Raise ValueError naming missing keys, unexpected keys and shape mismatches (first ten of each)."""
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


def iter_names(params: dict) -> Iterable[str]:
    return flatten_dict(params, sep="/").keys()
