"""Checkpoint conversion (installed as `modeling_xlstm_flax.conversion`).

`upstream_params` holds the documented mapping between upstream xlstm-jax param trees and this port's params;
`layouts` the mapping between our Flax names and transformers' PyTorch `xLSTMForCausalLM` state dict. The
streaming command-line converters (`orbax_to_hf`, `pytorch_to_flax`, `flax_to_pytorch`, built on `common` and
`tensor_io`) are imported on use, not here.
"""

from .upstream_params import check_params_against_config, expected_shapes, flax_to_upstream, upstream_to_flax

__all__ = ["check_params_against_config", "expected_shapes", "flax_to_upstream", "upstream_to_flax"]
