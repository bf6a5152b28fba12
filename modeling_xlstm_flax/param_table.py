"""The one param table: for every param module of this port, its name in our tree, in transformers' PyTorch
`xLSTMForCausalLM` state dict, in upstream xlstm-jax's tree (with the reshape between them) and its logical
sharding axes. The layout mappings (`pytorch_*`, `upstream_*`; whole upstream trees: `loading.upstream_to_flax`,
`loading.flax_to_upstream`) and the partition rules (`sharding.param_partition_spec`) all read this table; a param module is
spelled here once (and in the Flax module that defines it). Names and shapes of a given config come from the model
itself (`loading.model_plan`), never from here.

Our names (`/`-joined, the causal-LM tree; `FlaxXLSTMModel` has the same names without `backbone/`):

    backbone/embeddings/embedding (V, D)            backbone/out_norm/scale (D,)        lm_head/kernel (D, V)
    backbone/blocks/<i>/<module>/<leaf>             (unrolled), or
    backbone/blocks/scanned/block/<module>/<leaf>   (`scan_blocks`: a leading block axis (NB, ...))

transformers' PyTorch names are ours with `/` -> `.` and the leaf renamed (`kernel`, `scale`, `embedding` ->
`weight`, `bias` stays); dense kernels (in, out) are stored transposed as weights (out, in). transformers has the
`mlstm_v1` layer only. With `tie_word_embeddings` there is no `lm_head/kernel`; a PyTorch file may still carry
`lm_head.weight` (`TIED_PYTORCH_KEY`), which transformers ties to the embeddings on load.

Upstream names are `params/`-rooted, blocks under `xlstm_block_stack/blocks/<i>/` (or `blocks/block/` with a
leading axis for upstream's `scan_blocks`); the reshape kinds: "plain" same array, "squeeze" upstream has a
leading size-1 tensor-parallel shard axis, "heads" upstream (1, NH, DH) <-> ours (NH*DH,), "conv" upstream
(1, K, 1, F) <-> ours (K, F). Rows marked `verified=False` are not covered by the upstream fixtures and follow
upstream's module names.

Sharding symbols (resolved by `sharding.param_partition_spec`): "F" fsdp when the param is large enough, "T" tensor
where the layer is head-parallel, "M" tensor on a dim that is not head-aligned, None replicated. A leaf's entry is
a list of candidate specs (the one losing the least sharding wins), or {ndim: candidates}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

BACKBONE = "backbone"
LM_HEAD = "lm_head"
BLOCKS = f"{BACKBONE}/blocks"
SCANNED_PREFIX = f"{BLOCKS}/scanned/block/"
TIED_PYTORCH_KEY = "lm_head.weight"
UPSTREAM_BLOCKS = "xlstm_block_stack/blocks"
UPSTREAM_SCANNED_BLOCKS = f"{UPSTREAM_BLOCKS}/block/"
_BLOCK_RE = re.compile(rf"^{BLOCKS}/(\d+)/(.*)$")
_UP_BLOCK_RE = re.compile(rf"^{UPSTREAM_BLOCKS}/(\d+)/(.*)$")
_LEAF_TO_PT = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}

REPLICATED = [()]
COLUMN = {"kernel": [("F", "T")], "bias": [("T",)]}          # (in, NH*DH): split by head
ROW = {"kernel": [("T", "F")], "bias": REPLICATED}           # (NH*DH, out): split by head, one all-reduce
HEADWISE = {"kernel": [("T",)], "bias": [("T",)]}            # (NPH, o, i): by projection block, never F
NORM = {"scale": REPLICATED}
FFN_UP = {"kernel": [("F", "M")], "bias": [("M",)]}          # Megatron column/row pair
FFN_DOWN = {"kernel": [("M", "F")], "bias": REPLICATED}
GATE = {"kernel": {2: [("F", "T")], 3: [("T",)]}, "bias": [("T",)]}  # dense (in, NH) | headwise (NH, 1, in/NH)


@dataclass(frozen=True)
class ParamRow:
    """One param module: `ours` under the block (`scope` "block") or the whole tree ("top"); `layer` limits it to
    one mLSTM layer type; `upstream` its upstream module path (block-relative for block rows) and `kind` the
    reshape; `axes` the sharding of each leaf ("" for a row that is a single param)."""

    ours: str
    scope: str
    upstream: str
    kind: str
    axes: dict = field(default_factory=dict)
    layer: Optional[str] = None
    verified: bool = True


_INNER = "xlstm_res_block/xlstm/inner_layer/sharded"
_V1 = "xlstm_res_block/xlstm"
_NO_UPSTREAM = "<no upstream counterpart: sLSTM>"
PARAM_TABLE: tuple[ParamRow, ...] = (
    # top level
    ParamRow("backbone/embeddings", "top", "token_embedding/sharded", "squeeze",
             {"embedding": [("M", "F"), ("F", "M"), (None, ("F", "M"))]}),
    ParamRow("backbone/out_norm", "top", "lm_head/out_norm", "plain", NORM),
    ParamRow("lm_head", "top", "lm_head/out_dense", "plain", {"kernel": [("F", "M"), ("M", "F"), (("F", "M"), None)]}),
    # every block
    ParamRow("norm_mlstm", "block", "xlstm_res_block/xlstm_norm/sharded", "squeeze", NORM),
    ParamRow("post_norm_mlstm", "block", "xlstm_res_block/xlstm_post_norm/sharded", "squeeze", NORM, verified=False),
    ParamRow("norm_ffn", "block", "ffn_res_block/ffn_norm/sharded", "squeeze", NORM),
    ParamRow("post_norm_ffn", "block", "ffn_res_block/ffn_post_norm/sharded", "squeeze", NORM, verified=False),
    ParamRow("ffn/proj_up", "block", "ffn_res_block/ffn/proj_up/Dense_0", "plain", FFN_UP),
    ParamRow("ffn/proj_up_gate", "block", "ffn_res_block/ffn/proj_up_gate/Dense_0", "plain", FFN_UP),
    ParamRow("ffn/proj_down", "block", "ffn_res_block/ffn/proj_down/Dense_0", "plain", FFN_DOWN),
    # mlstm_v1 layer (xLSTM-7B)
    ParamRow("mlstm_layer/q", "block", f"{_V1}/dense_q/Dense_0", "plain", COLUMN, "mlstm_v1"),
    ParamRow("mlstm_layer/k", "block", f"{_V1}/dense_k/Dense_0", "plain", COLUMN, "mlstm_v1"),
    ParamRow("mlstm_layer/v", "block", f"{_V1}/dense_v/Dense_0", "plain", COLUMN, "mlstm_v1"),
    ParamRow("mlstm_layer/ogate_preact", "block", f"{_V1}/dense_o/Dense_0", "plain", COLUMN, "mlstm_v1"),
    ParamRow("mlstm_layer/igate_preact", "block", f"{_V1}/igate/Dense_0", "plain", GATE, "mlstm_v1"),
    ParamRow("mlstm_layer/fgate_preact", "block", f"{_V1}/fgate/Dense_0", "plain", GATE, "mlstm_v1"),
    ParamRow("mlstm_layer/multihead_norm", "block", f"{_V1}/outnorm/sharded", "heads", {"scale": [("T",)]},
             "mlstm_v1"),
    ParamRow("mlstm_layer/out_proj", "block", f"{_V1}/proj_down/Dense_0", "plain", ROW, "mlstm_v1"),
    ParamRow("mlstm_layer/qk_norm/q_norm", "block", f"{_V1}/q_norm", "plain", NORM, "mlstm_v1", verified=False),
    ParamRow("mlstm_layer/qk_norm/k_norm", "block", f"{_V1}/k_norm", "plain", NORM, "mlstm_v1", verified=False),
    # mlstm layer (Mamba-style)
    ParamRow("mlstm_layer/proj_up_mlstm", "block", f"{_V1}/proj_up_mlstm/Dense_0", "plain", COLUMN, "mlstm"),
    ParamRow("mlstm_layer/proj_up_z", "block", f"{_V1}/proj_up_z/Dense_0", "plain", COLUMN, "mlstm"),
    ParamRow("mlstm_layer/out_proj", "block", f"{_V1}/proj_down/Dense_0", "plain", ROW, "mlstm"),
    ParamRow("mlstm_layer/conv1d", "block", f"{_INNER}/conv1d/conv", "conv",
             {"kernel": [(None, "T")], "bias": [("T",)]}, "mlstm"),
    ParamRow("mlstm_layer/q_proj", "block", f"{_INNER}/q_proj", "squeeze", HEADWISE, "mlstm"),
    ParamRow("mlstm_layer/k_proj", "block", f"{_INNER}/k_proj", "squeeze", HEADWISE, "mlstm"),
    ParamRow("mlstm_layer/qk_proj", "block", f"{_INNER}/qk_proj", "squeeze",
             {"kernel": [(None, "T")], "bias": [(None, "T")]}, "mlstm", verified=False),
    ParamRow("mlstm_layer/v_proj", "block", f"{_INNER}/v_proj", "squeeze", HEADWISE, "mlstm"),
    ParamRow("mlstm_layer/x_mlstm_conv_scaling", "block", f"{_INNER}/x_mlstm_conv_scaling", "squeeze", HEADWISE,
             "mlstm", verified=False),
    ParamRow("mlstm_layer/igate_preact", "block", f"{_INNER}/mlstm_cell/igate", "squeeze", GATE, "mlstm"),
    ParamRow("mlstm_layer/fgate_preact", "block", f"{_INNER}/mlstm_cell/fgate", "squeeze", GATE, "mlstm"),
    ParamRow("mlstm_layer/multihead_norm", "block", f"{_INNER}/mlstm_cell/outnorm", "heads", {"scale": [("T",)]},
             "mlstm"),
    ParamRow("mlstm_layer/qk_norm/q_norm", "block", f"{_INNER}/mlstm_cell/q_norm", "squeeze", NORM, "mlstm",
             verified=False),
    ParamRow("mlstm_layer/qk_norm/k_norm", "block", f"{_INNER}/mlstm_cell/k_norm", "squeeze", NORM, "mlstm",
             verified=False),
    ParamRow("mlstm_layer/learnable_skip", "block", f"{_INNER}/learnable_skip", "squeeze", {"": [("T",)]}, "mlstm"),
    # sLSTM blocks (`slstm`; any layer type, `slstm_at`): upstream xlstm-jax has none (`_NO_UPSTREAM` never
    # matches an upstream key, and `to_upstream_config` refuses sLSTM models); the sLSTM heads lead the gate kernels
    # (NH, DH, DH), the recurrent kernel (NH, DH, 4DH) and the bias (NH, 4, DH): tensor-sharded where it divides NH
    ParamRow("norm_slstm", "block", _NO_UPSTREAM, "plain", NORM),
    ParamRow("slstm_layer/conv1d", "block", _NO_UPSTREAM, "plain", {"kernel": [(None, "M")], "bias": [("M",)]}),
    *(ParamRow(f"slstm_layer/{g}gate", "block", _NO_UPSTREAM, "plain", {"kernel": [("M",)]}) for g in "ifzo"),
    ParamRow("slstm_layer/recurrent_kernel", "block", _NO_UPSTREAM, "plain", {"": [("M",)]}),
    ParamRow("slstm_layer/bias", "block", _NO_UPSTREAM, "plain", {"": [("M",)]}),
    ParamRow("slstm_layer/group_norm", "block", _NO_UPSTREAM, "plain", {"scale": [("M",)]}),
)


def _rest(path: str, module: str) -> Optional[str]:
    """The leaf part of `path` below `module` ("" for the module path itself), or None if it is not below it."""
    if path == module:
        return ""
    if path.startswith(module + "/"):
        return path[len(module) + 1:]
    return None


def rows(layer_type: Optional[str] = None) -> list[ParamRow]:
    """The rows that apply to a layer type (all rows for None)."""
    return [r for r in PARAM_TABLE if r.layer is None or layer_type is None or r.layer == layer_type]


def split_block(name: str) -> tuple[Optional[str], str]:
    """Our unrolled or scanned name -> (block index or "scanned" or None, the rest): `backbone/blocks/3/ffn/...`
    -> ("3", "ffn/..."), top-level names -> (None, name)."""
    if name.startswith(SCANNED_PREFIX):
        return "scanned", name[len(SCANNED_PREFIX):]
    match = _BLOCK_RE.match(name)
    return (match.group(1), match.group(2)) if match else (None, name)


def find_row(name: str, layer_type: Optional[str] = None) -> tuple[ParamRow, str]:
    """(row, leaf) of one of our param names (LM or backbone names, unrolled or scanned); ValueError if none."""
    lm_name = name if name.startswith((BACKBONE + "/", LM_HEAD + "/")) or name == LM_HEAD else with_backbone_prefix(name)
    block, rest = split_block(lm_name)
    scope = "top" if block is None else "block"
    for row in rows(layer_type):
        if row.scope == scope:
            leaf = _rest(rest, row.ours)
            if leaf is not None:
                return row, leaf
    raise ValueError(f"param {name} is not in the param table (modeling_xlstm_flax/param_table.py)")


# ---------------------------------------------------------------------------------------------- our layouts
def with_backbone_prefix(name: str) -> str:
    """A `FlaxXLSTMModel` name -> the causal-LM name (`embeddings/...` -> `backbone/embeddings/...`)."""
    return f"{BACKBONE}/{name}"


def is_scanned(name: str) -> bool:
    return name.startswith(SCANNED_PREFIX)


def scanned_name(name: str) -> tuple[str, Optional[int]]:
    """Unrolled name -> (name in the scanned layout, block index); non-block names map to (name, None)."""
    match = _BLOCK_RE.match(name)
    if not match:
        return name, None
    return SCANNED_PREFIX + match.group(2), int(match.group(1))


def unrolled_names(name: str, num_blocks: int) -> list[str]:
    """A scanned name -> the unrolled names of its blocks (itself when it is not a block param)."""
    if not is_scanned(name):
        return [name]
    rest = name[len(SCANNED_PREFIX):]
    return [f"{BLOCKS}/{i}/{rest}" for i in range(num_blocks)]


def is_backbone_plan(names) -> bool:
    """Names of the bare backbone (`FlaxXLSTMModel`): none carries the `backbone/` prefix."""
    return not any(k.startswith(BACKBONE + "/") for k in names)


def unrolled_plan(plan: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """A plan (names -> shapes) in the unrolled causal-LM naming, whatever the plan's layout."""
    out = {}
    backbone_only = is_backbone_plan(plan)
    for name, shape in plan.items():
        name = with_backbone_prefix(name) if backbone_only else name
        if is_scanned(name):
            for unrolled in unrolled_names(name, shape[0]):
                out[unrolled] = tuple(shape[1:])
        else:
            out[name] = tuple(shape)
    return out


# ---------------------------------------------------------------------------------------------- transformers PyTorch
def flax_to_pytorch_name(name: str) -> str:
    """`backbone/blocks/0/mlstm_layer/q/kernel` -> `backbone.blocks.0.mlstm_layer.q.weight`."""
    parts = name.split("/")
    if parts[-1] not in _LEAF_TO_PT:
        raise ValueError(f"param {name} has no counterpart in transformers' PyTorch xLSTM")
    return ".".join(parts[:-1] + [_LEAF_TO_PT[parts[-1]]])


def pytorch_is_transposed(name: str) -> bool:
    """Dense kernels (in, out) are PyTorch weights (out, in)."""
    return name.endswith("/kernel")


def flax_to_pytorch_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if pytorch_is_transposed(name):
        if len(shape) != 2:
            raise ValueError(f"param {name} {tuple(shape)} is not a 2-D dense kernel; transformers' PyTorch xLSTM "
                             "has no counterpart")
        return (shape[1], shape[0])
    return tuple(shape)


def pytorch_to_flax_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[::-1]) if pytorch_is_transposed(name) else tuple(shape)


def pytorch_plan(plan: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """PyTorch state-dict names -> shapes for a plan of ours (any layout)."""
    return {flax_to_pytorch_name(k): flax_to_pytorch_shape(k, s) for k, s in unrolled_plan(plan).items()}


def pytorch_to_flax_names(plan: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """PyTorch name -> our unrolled causal-LM name for every param of a plan (the table, inverted over the plan,
    since `weight` alone does not say kernel, scale or embedding)."""
    return {flax_to_pytorch_name(k): k for k in unrolled_plan(plan)}


# ---------------------------------------------------------------------------------------------- upstream xlstm-jax
def strip_upstream_key(key: str) -> str:
    """Drop upstream's `params/` root and orbax's trailing `/value` (boxed partitioned leaves)."""
    key = key[len("params/"):] if key.startswith("params/") else key
    return key[: -len("/value")] if key.endswith("/value") else key


def upstream_key_to_flax(key: str, layer_type: str) -> Optional[tuple[str, str]]:
    """One upstream key of an unrolled block layout -> (our unrolled LM name, reshape kind), or None."""
    key = strip_upstream_key(key)
    match = _UP_BLOCK_RE.match(key)
    scope, rest, prefix = ("top", key, "")
    if match:
        scope, rest, prefix = "block", match.group(2), f"{BLOCKS}/{match.group(1)}/"
    for row in rows(layer_type):
        if row.scope == scope:
            leaf = _rest(rest, row.upstream)
            if leaf is not None:
                return prefix + row.ours + ("/" + leaf if leaf else ""), row.kind
    return None


def flax_to_upstream_key(name: str, layer_type: str) -> tuple[str, str]:
    """Our unrolled LM name -> (upstream key with `params/` root, reshape kind); ValueError if none."""
    row, leaf = find_row(name, layer_type)
    block, _ = split_block(name)
    prefix = "" if block is None else f"{UPSTREAM_BLOCKS}/{block}/"
    return "params/" + prefix + row.upstream + ("/" + leaf if leaf else ""), row.kind


def upstream_array_to_flax(array, kind: str):
    """Reshape one upstream array to our layout: squeeze the shard axis, flatten the multi-head norm
    (1, NH, DH) -> (NH*DH,), conv kernel (1, K, 1, F) -> (K, F), conv bias (1, F) -> (F,)."""
    if kind == "plain":
        return array
    if kind == "squeeze":
        return array[0] if array.ndim >= 1 and array.shape[0] == 1 else array
    if kind == "heads":
        return array.reshape(-1)
    if kind == "conv":
        return array.reshape(array.shape[1], array.shape[-1]) if array.ndim == 4 else array[0]
    raise AssertionError(kind)


def flax_array_to_upstream(array, kind: str, num_heads: int):
    """The inverse of `upstream_array_to_flax`."""
    if kind == "plain":
        return array
    if kind == "squeeze":
        return array[None]
    if kind == "heads":
        return array.reshape(1, num_heads, -1)
    if kind == "conv":
        return array.reshape(1, array.shape[0], 1, array.shape[1]) if array.ndim == 2 else array[None]
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------- sharding
def sharding_candidates(name: str, ndim: int, layer_type: Optional[str] = None) -> list[tuple]:
    """The candidate logical specs (symbols F/T/M/None, see the module doc) for one param of ours, without the
    scanned block axis; `ndim` the param's rank without it."""
    row, leaf = find_row(name, layer_type)
    leaf = leaf.split("/")[-1] if leaf else ""
    if leaf not in row.axes:
        raise ValueError(f"param {name}: the param table has no sharding for leaf {leaf!r} of {row.ours}")
    entry = row.axes[leaf]
    if isinstance(entry, dict):
        if ndim not in entry:
            raise ValueError(f"param {name}: the param table has no sharding for a {ndim}-D {leaf}")
        entry = entry[ndim]
    return list(entry)
