"""The mLSTM half of NX-AI `xlstm` library checkpoints (`xLSTMLMModel` with `mlstm_block`) on our existing `mlstm`
conv layer (`xlstm_layers.XLSTMLayerConv` inside `FlaxXLSTMBlock`): the block config and the param translation.
No second mLSTM implementation: the library's `mLSTMBlock` is our `mlstm` layer with `gate_input="qkv"`, full-width
q/k/v, layer norms with eps 1e-5, no soft caps and no feedforward.

Library names of one mLSTM block (prefix e.g. `xlstm_block_stack.blocks.<i>.`) -> ours (`FlaxXLSTMBlock` params):

| library                                   | ours                                            | conversion          |
|-------------------------------------------|-------------------------------------------------|---------------------|
| `xlstm_norm.weight` (D)                   | `norm_mlstm/scale`                              | 1 + w               |
| `xlstm.proj_up.weight` (2I, D)            | `mlstm_layer/proj_up_mlstm/kernel`, `.../proj_up_z/kernel` | `W[:I].T`, `W[I:].T` |
| `xlstm.{q,k,v}_proj.weight` (NPH, bs, bs) | `mlstm_layer/{q,k,v}_proj/kernel`               | as is               |
| `xlstm.conv1d.conv.weight` (I, 1, K) / `.bias` | `mlstm_layer/conv1d/kernel` (K, I) / `bias` | `w[:, 0, :].T`      |
| `xlstm.mlstm_cell.{i,f}gate.weight` (NH, 3I) / `.bias` | `mlstm_layer/{i,f}gate_preact/kernel` (3I, NH) / `bias` | transpose |
| `xlstm.mlstm_cell.outnorm.weight` (I)     | `mlstm_layer/multihead_norm/scale`              | 1 + w               |
| `xlstm.learnable_skip` (I)                | `mlstm_layer/learnable_skip`                    | as is               |
| `xlstm.proj_down.weight` (D, I)           | `mlstm_layer/out_proj/kernel`                   | transpose           |
A library model with `bias: true` is refused (not checked against the library yet).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .configuration_xlstm_flax import XLSTMFlaxConfig
from .slstm_params import strip_compiled_prefix


def mlstm_block_config_from_library(lm: Mapping, **overrides) -> XLSTMFlaxConfig:
    """Our config for the mLSTM blocks of a library `xLSTMLMModelConfig` dict (`mlstm_block` must be present)."""
    mlstm = dict((lm.get("mlstm_block") or {}).get("mlstm") or {})
    if not lm.get("mlstm_block"):
        raise ValueError("library config has no mlstm_block")
    if lm.get("bias"):
        raise ValueError("library config bias=true is not supported for mLSTM blocks yet (only bias=false is "
                         "checked against the library)")
    fields = dict(
        vocab_size=lm["vocab_size"], embedding_dim=lm["embedding_dim"], num_blocks=lm["num_blocks"],
        context_length=lm.get("context_length", -1), tie_word_embeddings=bool(lm.get("tie_weights", False)),
        add_post_blocks_norm=bool(lm.get("add_post_blocks_norm", True)), bias=False,
        layer_type="mlstm", gate_input="qkv", qk_dim_factor=1.0, v_dim_factor=1.0, ff_type=None,
        num_heads=int(mlstm.get("num_heads", 4)), conv1d_kernel_size=int(mlstm.get("conv1d_kernel_size", 4)),
        qkv_proj_blocksize=int(mlstm.get("qkv_proj_blocksize", 4)), proj_factor=float(mlstm.get("proj_factor", 2.0)),
        round_proj_up_dim_up=bool(mlstm.get("round_proj_up_dim_up", True)),
        round_proj_up_to_multiple_of=int(mlstm.get("round_proj_up_to_multiple_of", 64)),
        block_norm_type="layernorm", block_norm_eps=1e-5, norm_type="layernorm", norm_eps=1e-5,
        mlstm_norm_type="layernorm", cell_norm_eps=1e-5, gate_soft_cap=None, logits_soft_cap=None, cell_eps=1e-6,
        add_qk_norm=False, compute_dtype="float32",
    )
    fields.update(overrides)
    return XLSTMFlaxConfig(**fields)


def mlstm_block_params_from_library(state_dict: Mapping[str, np.ndarray], config: XLSTMFlaxConfig,
                                    prefix: str = "") -> dict:
    """The library params of one mLSTM block (keys `prefix + name`) -> our `FlaxXLSTMBlock` params (float32)."""
    sd = {k[len(prefix):]: np.asarray(v, np.float32) for k, v in strip_compiled_prefix(state_dict).items()
          if k.startswith(prefix)}
    inner = config.inner_dim
    used = set()

    def take(name):
        if name not in sd:
            raise ValueError(f"mLSTM block params at {prefix!r}: missing {name!r}")
        used.add(name)
        return sd[name]

    up = take("xlstm.proj_up.weight")
    layer = {
        "proj_up_mlstm": {"kernel": np.ascontiguousarray(up[:inner].T)},
        "proj_up_z": {"kernel": np.ascontiguousarray(up[inner:].T)},
        "conv1d": {"kernel": np.ascontiguousarray(take("xlstm.conv1d.conv.weight")[:, 0, :].T),
                   "bias": take("xlstm.conv1d.conv.bias")},
        "multihead_norm": {"scale": 1.0 + take("xlstm.mlstm_cell.outnorm.weight")},
        "learnable_skip": take("xlstm.learnable_skip"),
        "out_proj": {"kernel": np.ascontiguousarray(take("xlstm.proj_down.weight").T)},
    }
    for name in ("q", "k", "v"):
        layer[f"{name}_proj"] = {"kernel": take(f"xlstm.{name}_proj.weight")}
    for gate in ("i", "f"):
        layer[f"{gate}gate_preact"] = {"kernel": np.ascontiguousarray(take(f"xlstm.mlstm_cell.{gate}gate.weight").T),
                                       "bias": take(f"xlstm.mlstm_cell.{gate}gate.bias")}
    params = {"norm_mlstm": {"scale": 1.0 + take("xlstm_norm.weight")}, "mlstm_layer": layer}
    extra = sorted(set(sd) - used)
    if extra:
        raise ValueError(f"mLSTM block params at {prefix!r}: unexpected {extra}")
    return params


def mlstm_block_params_to_library(params: Mapping, prefix: str = "") -> dict:
    """The inverse of `mlstm_block_params_from_library`: our `FlaxXLSTMBlock` params -> the library's state dict of
    one mLSTM block (float32 numpy)."""
    a = lambda x: np.asarray(x, np.float32)  # noqa: E731
    layer = params["mlstm_layer"]
    sd = {
        "xlstm_norm.weight": a(params["norm_mlstm"]["scale"]) - 1.0,
        "xlstm.proj_up.weight": np.concatenate([a(layer["proj_up_mlstm"]["kernel"]).T, a(layer["proj_up_z"]["kernel"]).T]),
        "xlstm.conv1d.conv.weight": np.ascontiguousarray(a(layer["conv1d"]["kernel"]).T[:, None, :]),
        "xlstm.conv1d.conv.bias": a(layer["conv1d"]["bias"]),
        "xlstm.mlstm_cell.outnorm.weight": a(layer["multihead_norm"]["scale"]) - 1.0,
        "xlstm.learnable_skip": a(layer["learnable_skip"]),
        "xlstm.proj_down.weight": np.ascontiguousarray(a(layer["out_proj"]["kernel"]).T),
    }
    for name in ("q", "k", "v"):
        sd[f"xlstm.{name}_proj.weight"] = a(layer[f"{name}_proj"]["kernel"])
    for gate in ("i", "f"):
        sd[f"xlstm.mlstm_cell.{gate}gate.weight"] = np.ascontiguousarray(a(layer[f"{gate}gate_preact"]["kernel"]).T)
        sd[f"xlstm.mlstm_cell.{gate}gate.bias"] = a(layer[f"{gate}gate_preact"]["bias"])
    return {prefix + k: v for k, v in sd.items()}
