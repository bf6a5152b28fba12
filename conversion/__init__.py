"""Checkpoint conversion (installed as `modeling_xlstm_flax.conversion`).

`upstream_params` maps whole upstream xlstm-jax param trees to this port's params and back (names from the one
param table, `modeling_xlstm_flax.param_table`). The streaming command-line converters (`orbax_to_hf`,
`pytorch_to_flax`, `flax_to_pytorch`, built on `common` and `modeling_xlstm_flax.checkpoint_io`) are imported on
use, not here.
"""

from .upstream_params import check_params_against_config, expected_shapes, flax_to_upstream, upstream_to_flax

__all__ = ["check_params_against_config", "expected_shapes", "flax_to_upstream", "upstream_to_flax"]
