"""Shared test helpers. The golden fixtures from upstream xlstm-jax live in tests/fixtures (copied unchanged from
the project's shared fixtures; tests/fixtures/README.md says how they were made); never edited."""

import json
from pathlib import Path


import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "xlstm_jax"
FIXTURE_MODELS = ["v1", "v1_scan", "v2", "v2_ffn"]


def load_fixture(name: str, **overrides):
    """(config, params, inputs, logits) of an upstream fixture, params mapped to our layout."""
    from safetensors.numpy import load_file

    from modeling_xlstm_flax.configuration_xlstm_flax import from_upstream_config
    from modeling_xlstm_flax.upstream_params import upstream_to_flax

    folder = FIXTURES / name
    if not folder.is_dir():
        pytest.fail(f"upstream fixtures missing at {folder} (tests/fixtures is part of the repository)")
    config = from_upstream_config(json.loads((folder / "config.json").read_text()), **overrides)
    params = upstream_to_flax(load_file(str(folder / "params.safetensors")), config)
    return config, params, np.load(folder / "inputs.npy"), np.load(folder / "logits.npy")


def tiny_config(layer_type: str = "mlstm_v1", **overrides):
    """A small float32 config of either layer type."""
    from modeling_xlstm_flax import load_preset

    name = "tiny-mlstm-v1" if layer_type == "mlstm_v1" else "tiny-mlstm"
    return load_preset(name, **overrides)


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def config_fields(config) -> dict:
    """The config's fields, without bookkeeping entries that name where it was loaded from."""
    d = config.to_dict()
    for key in ("_name_or_path", "transformers_version"):
        d.pop(key, None)
    return d
