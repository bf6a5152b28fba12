"""Config of the Flax xLSTM port, its translations and JSON presets (installed as `modeling_xlstm_flax.configuration`)."""

from pathlib import Path

from .configuration_xlstm_flax import FIELD_DOCS, XLSTMFlaxConfig
from .translation import from_transformers_config, from_upstream_config, to_transformers_config, to_upstream_config

PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    """Names of the bundled presets (`configuration/presets/<name>.json`)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str, **overrides) -> XLSTMFlaxConfig:
    """An `XLSTMFlaxConfig` from a bundled preset, e.g. `load_preset("xlstm-7b")`."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available: {preset_names()}")
    config = XLSTMFlaxConfig.from_json_file(str(path))
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate()
    return config


__all__ = [
    "FIELD_DOCS", "XLSTMFlaxConfig", "from_transformers_config", "from_upstream_config", "to_transformers_config",
    "to_upstream_config", "preset_names", "load_preset", "PRESETS_DIR",
]
