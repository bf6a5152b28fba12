"""Checkpoint conversion (installed as `modeling_xlstm_flax.conversion`).

`upstream_params` holds the documented mapping between upstream xlstm-jax param trees and this port's params.
"""

from .upstream_params import check_params_against_config, expected_shapes, flax_to_upstream, upstream_to_flax

__all__ = ["check_params_against_config", "expected_shapes", "flax_to_upstream", "upstream_to_flax"]
