"""Host-side checks of model inputs and checkpoint files, run before any compute.

JAX would otherwise clamp an out-of-range embedding gather, broadcast a mis-shaped mask or fail deep inside XLA.
Checks run on concrete inputs only: inside `jax.jit` (traced inputs) they are skipped, and out-of-range ids there
are clamped by XLA's gather as usual (see the README, "Errors and guarantees").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_input_ids(input_ids: Any, vocab_size: int, name: str = "input_ids") -> None:
    """(batch, sequence) integer ids in [0, vocab_size); raises ValueError naming the first offending entry."""
    if input_ids is None:
        raise ValueError(f"{name} is required: an integer array of shape (batch, sequence)")
    if _is_traced(input_ids):
        return
    ids = np.asarray(input_ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, sequence), got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError(f"{name} is empty (shape {ids.shape}); batch and sequence must both be >= 1")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = _first_bad(bad)
        raise ValueError(
            f"{name}{list(where)} = {int(ids[where])} is outside the vocabulary range [0, {vocab_size}) "
            f"({int(bad.sum())} ids out of range)"
        )


def check_mask(mask: Any, input_ids: Any, name: str, binary_ints: bool = True) -> None:
    """A (batch, sequence) mask matching input_ids, with values 0/1 (or booleans)."""
    if mask is None or _is_traced(mask) or _is_traced(input_ids):
        return
    values = np.asarray(mask)
    shape = np.shape(input_ids)
    if values.shape != tuple(shape):
        raise ValueError(f"{name} has shape {values.shape}, but input_ids has shape {tuple(shape)}; they must match")
    if values.dtype.kind == "b":
        return
    if values.dtype.kind not in "iuf" or not binary_ints:
        raise ValueError(f"{name} must be booleans or 0/1 integers, got dtype {values.dtype}")
    bad = (values != 0) & (values != 1)
    if bad.any():
        where = _first_bad(bad)
        raise ValueError(f"{name}{list(where)} = {values[where].item()!r}; allowed values are 0 and 1")


def check_inputs(input_ids, attention_mask: Optional[Any], document_borders: Optional[Any], vocab_size: int):
    check_input_ids(input_ids, vocab_size)
    check_mask(attention_mask, input_ids, "attention_mask")
    check_mask(document_borders, input_ids, "document_borders")
