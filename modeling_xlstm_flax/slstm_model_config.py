"""The sLSTM fields of `XLSTMFlaxConfig`: which blocks are sLSTM blocks and the `SLSTMConfig` each one runs with.

* `slstm_at`: a list of block indices, or "all" (the library's `xLSTMLMModelConfig.slstm_at`);
* `slstm_block`: the library's `sLSTMBlockConfig` as a dict, `{"slstm": {...}, "feedforward": {...} | None}`
  (None: the library's defaults). Only the fields that change the forward pass are read (`slstm_params.
  slstm_config_from_library`: num_heads, conv1d_kernel_size, function, group_norm_weight, dropout; feedforward
  proj_factor, round_proj_up_*, act_fn, bias, ff_type); the storage `backend` matters only when reading a library
  checkpoint, never for our own params.

Feedforward per block kind: an sLSTM block has the feedforward of `slstm_block` (the library's gated FFN with exact
GELU by default), an mLSTM block the config's own `ff_type` (None for the library's mLSTM blocks).
"""

from __future__ import annotations

from typing import Callable

from .slstm_config import SLSTMConfig
from .slstm_params import slstm_config_from_library  # numpy only: the config module imports this one


def slstm_block_indices(config) -> list[int]:
    """Sorted sLSTM block indices of `config` ("all" -> every block)."""
    if config.slstm_at == "all":
        return list(range(config.num_blocks))
    return sorted(config.slstm_at)


def slstm_block_config(config, block_idx: int) -> SLSTMConfig:
    """The `SLSTMConfig` of block `block_idx` (its depth enters the fresh forget-gate bias init only)."""
    sconfig, _ = slstm_config_from_library(config.slstm_block or {}, config.embedding_dim)
    return sconfig.__class__(**{**vars(sconfig), "block_idx": block_idx, "num_blocks": config.num_blocks})


def check_slstm_fields(config, fail: Callable[[str, object, str], None]) -> None:
    """Validate `slstm_at` / `slstm_block` and the stack layout; `fail(field, value, allowed)` raises."""
    at = config.slstm_at
    if isinstance(at, str):
        if at != "all":
            fail("slstm_at", at, 'must be a list of block indices or "all"')
    else:
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < config.num_blocks for i in at):
            fail("slstm_at", at, f"block indices must be ints in [0, num_blocks={config.num_blocks})")
        if len(set(at)) != len(at):
            fail("slstm_at", at, "block indices must not repeat")
    block = config.slstm_block
    if block is not None and not isinstance(block, dict):
        fail("slstm_block", block, 'must be None or a dict {"slstm": {...}, "feedforward": {...} | None}')
    indices = slstm_block_indices(config)
    if not indices and block is None:
        return
    try:
        slstm_block_config(config, 0)
    except (ValueError, TypeError) as exc:
        fail("slstm_block", block, str(exc))
    if config.scan_blocks and indices and len(indices) != config.num_blocks:
        fail("scan_blocks", True, f"needs a homogeneous stack (all mLSTM or all sLSTM blocks); slstm_at={at!r} "
             "makes a mixed mLSTM/sLSTM stack, which runs unrolled: use scan_blocks=False")
