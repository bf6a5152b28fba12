"""The one translation between NX-AI `xlstm` library sLSTM blocks and `slstm.SLSTMBlock`: config and params.

Library state-dict names of one block (prefix e.g. `xlstm_block_stack.blocks.<i>.`) -> our block params:

| library                                  | ours                                   | conversion                         |
|------------------------------------------|----------------------------------------|------------------------------------|
| `xlstm_norm.weight` (D)                  | `norm_slstm/scale`                     | 1 + w                              |
| `xlstm.conv1d.conv.weight` (D, 1, K)     | `slstm_layer/conv1d/kernel` (K, D)     | `w[:, 0, :].T`                     |
| `xlstm.conv1d.conv.bias` (D)             | `slstm_layer/conv1d/bias`              | as is                              |
| `xlstm.fgate.weight` (NH, DH, DH)        | `slstm_layer/igate/kernel`             | **swapped**: the library feeds its |
| `xlstm.igate.weight` (NH, DH, DH)        | `slstm_layer/fgate/kernel`             | "fgate" into the input gate (#98)  |
| `xlstm.{z,o}gate.weight`                 | `slstm_layer/{z,o}gate/kernel`         | as is                              |
| `xlstm.slstm_cell._recurrent_kernel_`    | `slstm_layer/recurrent_kernel` (NH, DH, 4DH) | per storage layout, below    |
| `xlstm.slstm_cell._bias_` (4D)           | `slstm_layer/bias` (NH, 4, DH)         | per storage layout, below          |
| `xlstm.group_norm.weight` (D)            | `slstm_layer/group_norm/scale`         | 1 + w (absent: no weight)          |
| `ffn_norm.weight` (D)                    | `norm_ffn/scale`                       | 1 + w                              |
| `ffn.proj_up.weight` (2FF, D) / `.bias`  | `ffn/proj_up_gate/kernel` = `W[:FF].T`, `ffn/proj_up/kernel` = `W[FF:].T` (bias split alike) |
| `ffn.proj_down.weight` (D, FF) / `.bias` | `ffn/proj_down/kernel` (FF, D)         | transpose                          |

Storage layouts of the recurrent kernel R and bias b (chosen by the config's `slstm.backend`, default "cuda" as in
the library; the bias has the same flat shape in both, so only the config can tell them apart, and R's shape is
checked against the config: a mismatch is refused):
- vanilla: R (NH, 4 DH_out, DH_in), b flat in (gate, head, dh) order;
- cuda:    R (NH, DH_in, 4 DH_out) (= ours), b flat in (head, gate, dh) order.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

from .slstm_config import ACTIVATION_NAMES, SLSTMConfig

BACKENDS = ("vanilla", "cuda")
DEFAULT_BACKEND = "cuda"  # the library's `sLSTMCellConfig.backend` default (Helibrunna configs omit the key)
COMPILED_PREFIX = "_orig_mod."  # torch.compile wraps module names


# ---------------------------------------------------------------------------------------------- config
def slstm_config_from_library(block: Mapping, embedding_dim: Optional[int] = None) -> tuple[SLSTMConfig, str]:
    """A library `sLSTMBlockConfig` as a dict (`{"slstm": {...}, "feedforward": {...} | None}`) -> (our config,
    storage backend). `embedding_dim`: the LM's (a block inside `xLSTMLMModelConfig` may still carry -1).

    Refuses by name what would change the forward and is not implemented: a non-null `gradient_recurrent_clipval`
    (the cuda kernel also clips y in the forward with it), a `function` other than slstm/lstm, a feedforward type
    other than `ffn_gated`, an unknown activation.
    """
    slstm = dict(block.get("slstm") or {})
    dim = embedding_dim if embedding_dim is not None else slstm.get("embedding_dim", -1)
    if dim is None or dim <= 0:
        dim = slstm.get("hidden_size", -1)
    if dim is None or dim <= 0:
        raise ValueError("sLSTM block config has no embedding_dim; pass the model's embedding_dim")
    clip = slstm.get("gradient_recurrent_clipval")
    if clip is not None:
        raise ValueError(f"sLSTM gradient_recurrent_clipval={clip!r} is not supported (the library's cuda kernel "
                         "also clips y to it in the forward pass); only null is accepted")
    backend = slstm.get("backend", DEFAULT_BACKEND)
    if backend not in BACKENDS:
        raise ValueError(f"sLSTM backend {backend!r} is unknown; expected one of {BACKENDS}")
    # a missing key is the library's default `FeedForwardConfig()` (dacite fills it in); only null means none
    ffn = block.get("feedforward", {})
    ff: dict = {"ff_proj_factor": None}
    if ffn is not None:
        ff_type = ffn.get("ff_type", "ffn_gated")
        if ff_type != "ffn_gated":
            raise ValueError(f"feedforward ff_type {ff_type!r} is not supported; only 'ffn_gated'")
        act = ffn.get("act_fn", "gelu")
        if act not in ACTIVATION_NAMES:
            raise ValueError(f"feedforward act_fn {act!r} is not supported; expected one of "
                             f"{sorted(ACTIVATION_NAMES)}")
        ff = {"ff_proj_factor": float(ffn.get("proj_factor", 1.3)), "ff_round_up": bool(ffn.get("round_proj_up_dim_up",
              True)), "ff_multiple_of": int(ffn.get("round_proj_up_to_multiple_of", 64)), "ff_act_fn": act,
              "ff_bias": bool(ffn.get("bias", False))}
    config = SLSTMConfig(
        embedding_dim=int(dim), num_heads=int(slstm.get("num_heads", 4)),
        conv1d_kernel_size=int(slstm.get("conv1d_kernel_size", 4)), function=slstm.get("function", "slstm"),
        group_norm_weight=bool(slstm.get("group_norm_weight", True)),
        dropout=float(max(slstm.get("dropout", 0.0) or 0.0, (ffn or {}).get("dropout", 0.0) or 0.0)), **ff)
    return config, backend


# ---------------------------------------------------------------------------------------------- cell layouts
def _expected_kernel_shape(backend: str, num_heads: int, head_dim: int) -> tuple[int, int, int]:
    if backend == "vanilla":
        return (num_heads, 4 * head_dim, head_dim)
    return (num_heads, head_dim, 4 * head_dim)


def recurrent_kernel_from_library(kernel: np.ndarray, backend: str, num_heads: int) -> np.ndarray:
    """Stored `_recurrent_kernel_` -> ours (NH, DH_in, 4 DH_out). Its shape must match `backend`'s layout."""
    kernel = np.asarray(kernel, np.float32)
    head_dim = kernel.size // (4 * num_heads) if kernel.ndim == 3 else -1
    head_dim = int(math.isqrt(max(head_dim, 0)))
    expected = _expected_kernel_shape(backend, num_heads, head_dim)
    if kernel.shape != expected:
        other = [b for b in BACKENDS if b != backend][0]
        hint = (f"; it is the {other!r} layout, so the config's backend does not describe this checkpoint and the "
                "bias order is unknown") if kernel.shape == _expected_kernel_shape(other, num_heads, head_dim) else ""
        raise ValueError(f"sLSTM _recurrent_kernel_ has shape {kernel.shape}, but backend {backend!r} stores "
                         f"{expected}{hint}")
    if backend == "vanilla":  # (NH, 4*DH_out, DH_in) -> (NH, DH_in, 4, DH_out)
        kernel = kernel.reshape(num_heads, 4, head_dim, head_dim).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(kernel.reshape(num_heads, head_dim, 4 * head_dim))


def recurrent_kernel_to_library(kernel: np.ndarray, backend: str) -> np.ndarray:
    """Ours (NH, DH, 4 DH) -> the stored `_recurrent_kernel_` of `backend`."""
    kernel = np.asarray(kernel, np.float32)
    num_heads, head_dim, _ = kernel.shape
    if backend == "vanilla":
        kernel = kernel.reshape(num_heads, head_dim, 4, head_dim).transpose(0, 2, 3, 1).reshape(
            num_heads, 4 * head_dim, head_dim)
    return np.ascontiguousarray(kernel)


def bias_from_library(bias: np.ndarray, backend: str, num_heads: int) -> np.ndarray:
    """Stored flat `_bias_` (4 D) -> ours (NH, 4, DH)."""
    bias = np.asarray(bias, np.float32).reshape(-1)
    head_dim = bias.size // (4 * num_heads)
    if backend == "vanilla":
        return np.ascontiguousarray(bias.reshape(4, num_heads, head_dim).transpose(1, 0, 2))
    return bias.reshape(num_heads, 4, head_dim)


def bias_to_library(bias: np.ndarray, backend: str) -> np.ndarray:
    """Ours (NH, 4, DH) -> the stored flat `_bias_` of `backend`."""
    bias = np.asarray(bias, np.float32)
    if backend == "vanilla":
        bias = bias.transpose(1, 0, 2)
    return np.ascontiguousarray(bias.reshape(-1))


# ---------------------------------------------------------------------------------------------- block params
def strip_compiled_prefix(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Drop `torch.compile`'s `_orig_mod.` from every key (it may sit at the start or after a module name)."""
    return {key.replace(COMPILED_PREFIX, ""): value for key, value in state_dict.items()}


def _library_names(config: SLSTMConfig) -> list[str]:
    names = ["xlstm_norm.weight", "xlstm.fgate.weight", "xlstm.igate.weight", "xlstm.zgate.weight",
             "xlstm.ogate.weight", "xlstm.slstm_cell._recurrent_kernel_", "xlstm.slstm_cell._bias_"]
    if config.conv1d_kernel_size > 0:
        names += ["xlstm.conv1d.conv.weight", "xlstm.conv1d.conv.bias"]
    if config.group_norm_weight:
        names.append("xlstm.group_norm.weight")
    if config.ff_proj_factor is not None:
        names += ["ffn_norm.weight", "ffn.proj_up.weight", "ffn.proj_down.weight"]
        if config.ff_bias:
            names += ["ffn.proj_up.bias", "ffn.proj_down.bias"]
    return names


def _expected_library_shapes(config: SLSTMConfig, backend: str) -> dict[str, tuple]:
    D, NH, DH, K, FF = (config.embedding_dim, config.num_heads, config.head_dim, config.conv1d_kernel_size,
                        config.ff_dim)
    shapes = {"xlstm_norm.weight": (D,), "xlstm.conv1d.conv.weight": (D, 1, K), "xlstm.conv1d.conv.bias": (D,),
              "xlstm.slstm_cell._recurrent_kernel_": _expected_kernel_shape(backend, NH, DH),
              "xlstm.slstm_cell._bias_": (4 * D,), "xlstm.group_norm.weight": (D,), "ffn_norm.weight": (D,),
              "ffn.proj_up.weight": (2 * FF, D), "ffn.proj_down.weight": (D, FF), "ffn.proj_up.bias": (2 * FF,),
              "ffn.proj_down.bias": (D,)}
    for gate in "ifzo":
        shapes[f"xlstm.{gate}gate.weight"] = (NH, DH, DH)
    return shapes


def block_params_from_library(state_dict: Mapping[str, np.ndarray], config: SLSTMConfig, backend: str,
                              prefix: str = "") -> dict:
    """The library params of one sLSTM block (keys `prefix + name`, numpy or torch-converted arrays, any float
    dtype) -> our nested `SLSTMBlock` params (float32 numpy). Missing, extra (under `prefix`) or mis-shaped params
    and a recurrent kernel in the other backend's layout are refused."""
    if backend not in BACKENDS:
        raise ValueError(f"sLSTM backend {backend!r} is unknown; expected one of {BACKENDS}")
    sd = {k[len(prefix):]: v for k, v in strip_compiled_prefix(state_dict).items() if k.startswith(prefix)}
    names = _library_names(config)
    missing = [n for n in names if n not in sd]
    extra = sorted(set(sd) - set(names))
    if missing or extra:
        raise ValueError(f"sLSTM block params at {prefix!r} do not match the config: missing {missing}, "
                         f"unexpected {extra}")
    w = {n: np.asarray(sd[n], np.float32) for n in names}
    NH, FF = config.num_heads, config.ff_dim
    kernel = recurrent_kernel_from_library(w.pop("xlstm.slstm_cell._recurrent_kernel_"), backend, NH)
    shapes = _expected_library_shapes(config, backend)
    bad = [f"{n} {w[n].shape} (expected {shapes[n]})" for n in w if w[n].shape != shapes[n]]
    if bad:
        raise ValueError(f"sLSTM block params at {prefix!r} have wrong shapes: {', '.join(bad)}")
    layer = {
        "igate": {"kernel": w["xlstm.fgate.weight"]},  # the library's i/f name swap (NX-AI/xlstm#98): here only
        "fgate": {"kernel": w["xlstm.igate.weight"]},
        "zgate": {"kernel": w["xlstm.zgate.weight"]},
        "ogate": {"kernel": w["xlstm.ogate.weight"]},
        "recurrent_kernel": kernel,
        "bias": bias_from_library(w["xlstm.slstm_cell._bias_"], backend, NH),
    }
    if config.conv1d_kernel_size > 0:
        layer["conv1d"] = {"kernel": np.ascontiguousarray(w["xlstm.conv1d.conv.weight"][:, 0, :].T),
                           "bias": w["xlstm.conv1d.conv.bias"]}
    if config.group_norm_weight:
        layer["group_norm"] = {"scale": 1.0 + w["xlstm.group_norm.weight"]}
    params = {"norm_slstm": {"scale": 1.0 + w["xlstm_norm.weight"]}, "slstm_layer": layer}
    if config.ff_proj_factor is not None:
        up = w["ffn.proj_up.weight"]
        ffn = {"proj_up_gate": {"kernel": np.ascontiguousarray(up[:FF].T)},
               "proj_up": {"kernel": np.ascontiguousarray(up[FF:].T)},
               "proj_down": {"kernel": np.ascontiguousarray(w["ffn.proj_down.weight"].T)}}
        if config.ff_bias:
            ffn["proj_up_gate"]["bias"] = w["ffn.proj_up.bias"][:FF]
            ffn["proj_up"]["bias"] = w["ffn.proj_up.bias"][FF:]
            ffn["proj_down"]["bias"] = w["ffn.proj_down.bias"]
        params["norm_ffn"] = {"scale": 1.0 + w["ffn_norm.weight"]}
        params["ffn"] = ffn
    return params


def block_params_to_library(params: Mapping, config: SLSTMConfig, backend: str, prefix: str = "") -> dict:
    """Our `SLSTMBlock` params -> the library's state dict of one block (float32 numpy, `backend`'s layout)."""
    if backend not in BACKENDS:
        raise ValueError(f"sLSTM backend {backend!r} is unknown; expected one of {BACKENDS}")
    a = lambda x: np.asarray(x, np.float32)
    layer = params["slstm_layer"]
    sd = {
        "xlstm_norm.weight": a(params["norm_slstm"]["scale"]) - 1.0,
        "xlstm.fgate.weight": a(layer["igate"]["kernel"]),  # the same swap, reversed
        "xlstm.igate.weight": a(layer["fgate"]["kernel"]),
        "xlstm.zgate.weight": a(layer["zgate"]["kernel"]),
        "xlstm.ogate.weight": a(layer["ogate"]["kernel"]),
        "xlstm.slstm_cell._recurrent_kernel_": recurrent_kernel_to_library(layer["recurrent_kernel"], backend),
        "xlstm.slstm_cell._bias_": bias_to_library(layer["bias"], backend),
    }
    if config.conv1d_kernel_size > 0:
        sd["xlstm.conv1d.conv.weight"] = np.ascontiguousarray(a(layer["conv1d"]["kernel"]).T[:, None, :])
        sd["xlstm.conv1d.conv.bias"] = a(layer["conv1d"]["bias"])
    if config.group_norm_weight:
        sd["xlstm.group_norm.weight"] = a(layer["group_norm"]["scale"]) - 1.0
    if config.ff_proj_factor is not None:
        ffn = params["ffn"]
        sd["ffn_norm.weight"] = a(params["norm_ffn"]["scale"]) - 1.0
        sd["ffn.proj_up.weight"] = np.concatenate([a(ffn["proj_up_gate"]["kernel"]).T, a(ffn["proj_up"]["kernel"]).T])
        sd["ffn.proj_down.weight"] = np.ascontiguousarray(a(ffn["proj_down"]["kernel"]).T)
        if config.ff_bias:
            sd["ffn.proj_up.bias"] = np.concatenate([a(ffn["proj_up_gate"]["bias"]), a(ffn["proj_up"]["bias"])])
            sd["ffn.proj_down.bias"] = a(ffn["proj_down"]["bias"])
    return {prefix + k: v for k, v in sd.items()}
