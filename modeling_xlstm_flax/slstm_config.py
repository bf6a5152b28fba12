"""The configuration of one sLSTM block (`SLSTMConfig`) and the names it checks, without importing jax or flax: the
model config (`configuration_xlstm_flax`, through `slstm_model_config` and `slstm_params`) validates sLSTM fields
with it. The module computing with it is `slstm`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

FUNCTIONS = ("slstm", "lstm")  # the library's sLSTM cell functions (`slstm`)
# the library's feedforward activations (`slstm.LIBRARY_ACTIVATIONS` implements them; "gelu" is exact erf)
ACTIVATION_NAMES = ("gelu", "relu", "relu^2", "sigmoid", "swish", "selu")


def check_function(function: str) -> None:
    if function not in FUNCTIONS:
        raise ValueError(f"sLSTM function {function!r} is not supported; expected one of {FUNCTIONS}")


@dataclasses.dataclass(frozen=True)
class SLSTMConfig:
    """Everything an sLSTM block computes with (nothing about init or training kernels).

    `ff_proj_factor=None` means a block without feedforward. `ff_dim` is always recomputed from the factor and the
    rounding (the library's stored `_proj_up_dim` may be 0). A fresh init follows the library's defaults
    (`powerlaw_blockdependent` bias, zero recurrent kernel, small-init gates, Wang-init FFN output).
    """

    embedding_dim: int
    num_heads: int = 4
    conv1d_kernel_size: int = 4
    function: str = "slstm"
    group_norm_weight: bool = True
    ff_proj_factor: Optional[float] = 1.3
    ff_round_up: bool = True
    ff_multiple_of: int = 64
    ff_act_fn: str = "gelu"
    ff_bias: bool = False
    norm_eps: float = 1e-5
    dropout: float = 0.0  # the library's layer/feedforward dropout: identity at inference, not implemented in training
    block_idx: int = 0  # init only: the forget-gate bias of a fresh block depends on its depth
    num_blocks: int = 1

    def __post_init__(self):
        check_function(self.function)
        if self.embedding_dim <= 0 or self.num_heads <= 0 or self.embedding_dim % self.num_heads:
            raise ValueError(f"sLSTM embedding_dim {self.embedding_dim} must be a positive multiple of num_heads "
                             f"{self.num_heads}")
        if self.conv1d_kernel_size < 0:
            raise ValueError(f"sLSTM conv1d_kernel_size must be >= 0 (0 = no conv), got {self.conv1d_kernel_size}")
        if self.ff_proj_factor is not None and self.ff_act_fn not in ACTIVATION_NAMES:
            raise ValueError(f"feedforward act_fn {self.ff_act_fn!r} is not supported; expected one of "
                             f"{sorted(ACTIVATION_NAMES)}")

    @property
    def head_dim(self) -> int:
        return self.embedding_dim // self.num_heads

    @property
    def ff_dim(self) -> int:
        """The library's `UpProjConfigMixin` rule: proj_factor * D rounded (up or down) to a multiple."""
        if self.ff_proj_factor is None:
            return 0
        multiples = self.ff_proj_factor * self.embedding_dim / self.ff_multiple_of
        return int((math.ceil if self.ff_round_up else math.floor)(multiples) * self.ff_multiple_of)
