"""The one place that maps this port's Flax param names to transformers' PyTorch `xLSTMForCausalLM` state dict.

Our Flax names already are transformers' module paths (see `modeling_flax_xlstm`), so the mapping is per leaf:

| Flax (unrolled, `/`-joined)                   | PyTorch (`.`-joined)                        | array                  |
|-----------------------------------------------|---------------------------------------------|------------------------|
| backbone/embeddings/embedding (V, D)          | backbone.embeddings.weight (V, D)           | same                   |
| .../<dense>/kernel (in, out)                  | .../<dense>.weight (out, in)                | transposed             |
| .../<dense>/bias (out,)                       | .../<dense>.bias (out,)                     | same                   |
| .../<norm>/scale (F,)                         | .../<norm>.weight (F,)                      | same                   |
| lm_head/kernel (D, V)                         | lm_head.weight (V, D)                       | transposed             |

With `tie_word_embeddings` there is no `lm_head/kernel`; transformers' model ties `lm_head.weight` to the
embeddings itself, so a PyTorch file may carry `lm_head.weight` or not (`TIED_PYTORCH_KEY`, ignored on input and
not written on output). Only 2-D kernels have a PyTorch counterpart (transformers' xLSTM has the `mlstm_v1` layer
only; its config translation refuses the `mlstm` layer before names matter).

Plans (name -> shape, computed from the config with `jax.eval_shape`, no weights):
* `flax_plan(config)`: unrolled names, `backbone/blocks/<i>/...`;
* `scanned_plan(config)`: with `scan_blocks`, `backbone/blocks/scanned/block/...` with a leading block axis (NB, ...);
* `pytorch_plan(config)`: PyTorch names and shapes.

The converters read any input into unrolled Flax names (`pytorch_to_flax_name` inverts the table over the plan,
since `weight` alone does not say kernel, scale or embedding) and write the requested layout from there.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

from .upstream_params import expected_shapes

TIED_PYTORCH_KEY = "lm_head.weight"
_BLOCK_RE = re.compile(r"^backbone/blocks/(\d+)/(.*)$")
SCANNED_PREFIX = "backbone/blocks/scanned/block/"
_LEAF_TO_PT = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def flax_plan(config) -> dict[str, tuple[int, ...]]:
    """Unrolled Flax names -> shapes for `config` (whatever its `scan_blocks`)."""
    return expected_shapes(config)


def flax_to_pytorch_name(name: str) -> str:
    """`backbone/blocks/0/mlstm_layer/q/kernel` -> `backbone.blocks.0.mlstm_layer.q.weight`."""
    parts = name.split("/")
    if parts[-1] not in _LEAF_TO_PT:
        raise ValueError(f"Flax param {name} has no counterpart in transformers' PyTorch xLSTM")
    return ".".join(parts[:-1] + [_LEAF_TO_PT[parts[-1]]])


def flax_to_pytorch_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Dense kernels (in, out) become weights (out, in); everything else keeps its shape."""
    if name.endswith("/kernel"):
        if len(shape) != 2:
            raise ValueError(f"Flax param {name} {tuple(shape)} is not a 2-D dense kernel; transformers' PyTorch "
                             "xLSTM has no counterpart")
        return (shape[1], shape[0])
    return tuple(shape)


def flax_to_pytorch_array(name: str, array: np.ndarray) -> np.ndarray:
    """Our array for Flax param `name` -> the PyTorch tensor's array (kernel (in, out) -> weight (out, in))."""
    if name.endswith("/kernel"):
        flax_to_pytorch_shape(name, array.shape)  # raises on non-2-D kernels
        return array.T
    return array


def pytorch_to_flax_array(flax_name: str, array: np.ndarray) -> np.ndarray:
    """A PyTorch tensor's array -> ours for Flax param `flax_name` (the inverse of `flax_to_pytorch_array`)."""
    return array.T if flax_name.endswith("/kernel") else array


def pytorch_to_flax_shape(flax_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of a PyTorch tensor -> shape of Flax param `flax_name` (weight (out, in) -> kernel (in, out))."""
    return tuple(shape[::-1]) if flax_name.endswith("/kernel") else tuple(shape)


def pytorch_plan(config) -> dict[str, tuple[int, ...]]:
    """PyTorch state-dict names -> shapes that transformers' `xLSTMForCausalLM` has for `config`."""
    return {flax_to_pytorch_name(k): flax_to_pytorch_shape(k, s) for k, s in flax_plan(config).items()}


def pytorch_to_flax_names(config) -> dict[str, str]:
    """PyTorch name -> unrolled Flax name for every param of `config` (the table above, inverted over the plan)."""
    return {flax_to_pytorch_name(k): k for k in flax_plan(config)}


def scanned_name(name: str) -> tuple[str, Optional[int]]:
    """Unrolled Flax name -> (name in the scanned layout, block index); non-block names map to (name, None)."""
    match = _BLOCK_RE.match(name)
    if not match:
        return name, None
    return SCANNED_PREFIX + match.group(2), int(match.group(1))


def scanned_plan(config) -> dict[str, tuple[int, ...]]:
    """Flax names -> shapes in the scanned layout (`scan_blocks=True`): block params stacked on a leading axis."""
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in flax_plan(config).items():
        target, block = scanned_name(name)
        out[target] = tuple(shape) if block is None else (config.num_blocks,) + tuple(shape)
    return out


def unrolled_from_scanned(name: str, num_blocks: int) -> list[str]:
    """A scanned-layout Flax name -> the unrolled names of its blocks (itself when it is not a block param)."""
    if not name.startswith(SCANNED_PREFIX):
        return [name]
    rest = name[len(SCANNED_PREFIX):]
    return [f"backbone/blocks/{i}/{rest}" for i in range(num_blocks)]
