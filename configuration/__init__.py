"""Config of the Flax xLSTM port, its translations and JSON presets (installed as `modeling_xlstm_flax.configuration`)."""

from pathlib import Path

from .configuration_xlstm_flax import (
    FIELD_DOCS, XLSTMFlaxConfig, check_field_names, known_field_names, parse_field_overrides,
)
from .translation import from_transformers_config, from_upstream_config, to_transformers_config, to_upstream_config

PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    """Names of the bundled presets (`configuration/presets/<name>.json`)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str, **overrides) -> XLSTMFlaxConfig:
    """An `XLSTMFlaxConfig` from a bundled preset, e.g. `load_preset("xlstm-7b")`; `overrides` replace preset fields
    (unknown names are an error naming the closest field) and the result is validated once."""
    path = PRESETS_DIR / f"{name}.json"
    if not isinstance(name, str) or not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available: {preset_names()}")
    check_field_names(overrides, f"load_preset({name!r}) overrides")
    fields = XLSTMFlaxConfig._dict_from_json_file(str(path))
    return XLSTMFlaxConfig(**{**fields, **overrides})


__all__ = [
    "FIELD_DOCS", "XLSTMFlaxConfig", "check_field_names", "known_field_names", "parse_field_overrides",
    "from_transformers_config", "from_upstream_config", "to_transformers_config",
    "to_upstream_config", "preset_names", "load_preset", "PRESETS_DIR",
]
