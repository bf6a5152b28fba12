"""NX-AI `xlstm` library checkpoints <-> ours, block by block (numpy only): the library config dict read from a
folder and translated into our config fields, and the params of its mLSTM and sLSTM blocks. Whole models:
`library_checkpoint`.

Config, first found wins (`read_library_config`):
* `config.json` with the library's `xLSTMLMModelConfig` dict under `xlstm_cfg` or `xlstm_config` (Distil-xLSTM),
  or a bare `xLSTMLMModelConfig` dict (no `model_type`, has `embedding_dim` and `mlstm_block` / `slstm_block`);
* `config.yaml` (Helibrunna): the `model:` section, or the whole file when it is the model config (PyYAML).
The sLSTM storage layout comes from `slstm_block.slstm.backend` (absent: the library's default "cuda").

mLSTM blocks run on our existing `mlstm` conv layer (`xlstm_layers.XLSTMLayerConv` inside `FlaxXLSTMBlock`): no
second mLSTM implementation; the library's `mLSTMBlock` is our `mlstm` layer with `gate_input="qkv"`, full-width
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

import json
import math
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .config_translation import BACKENDS, SLSTMConfig, slstm_config_from_library

COMPILED_PREFIX = "_orig_mod."  # torch.compile wraps module names
LIBRARY_CONFIG_KEYS = ("xlstm_cfg", "xlstm_config")
# the sLSTM fields of the library config that change the forward pass (kept in our `slstm_block`)
_SLSTM_KEYS = ("num_heads", "conv1d_kernel_size", "function", "group_norm_weight", "dropout")
_FFN_KEYS = ("proj_factor", "round_proj_up_dim_up", "round_proj_up_to_multiple_of", "act_fn", "bias", "ff_type",
             "dropout")


# ---------------------------------------------------------------------------------------------- config
def _is_library_dict(data) -> bool:
    return (isinstance(data, dict) and "model_type" not in data and "embedding_dim" in data
            and ("mlstm_block" in data or "slstm_block" in data))


def read_library_config(directory) -> Optional[dict]:
    """The library `xLSTMLMModelConfig` dict of a checkpoint folder, or None when the folder is not a library
    checkpoint (our own or transformers' config.json)."""
    directory = Path(directory)
    json_path, yaml_path = directory / "config.json", directory / "config.yaml"
    if json_path.is_file():
        try:
            data = json.loads(json_path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{json_path}: not a readable JSON config ({e})") from None
        for key in LIBRARY_CONFIG_KEYS:
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                return dict(data[key])
        return dict(data) if _is_library_dict(data) else None
    if yaml_path.is_file():
        import yaml  # PyYAML: installed with transformers

        try:
            data = yaml.safe_load(yaml_path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{yaml_path}: not a readable YAML config ({e})") from None
        model = data.get("model") if isinstance(data, dict) and isinstance(data.get("model"), dict) else data
        if not _is_library_dict(model):
            raise ValueError(f"{yaml_path}: no xlstm library model config (a `model:` section with embedding_dim and "
                             "mlstm_block / slstm_block) found")
        return dict(model)
    return None


def embedded_library_config(config) -> Optional[dict]:
    """The library config a Distil-xLSTM `config.json` holds under `xlstm_cfg` / `xlstm_config` beside model_type
    "xlstm" (transformers' AutoConfig reads such a file as its own `xLSTMConfig`, with default sizes), or None."""
    data = config if isinstance(config, Mapping) else getattr(config, "__dict__", {})
    return next((dict(data[k]) for k in LIBRARY_CONFIG_KEYS if isinstance(data.get(k), Mapping)), None)


def library_folder_fields(path) -> Optional[dict]:
    """Our config fields of a local checkpoint folder of the `xlstm` library, or None for any other path."""
    directory = Path(str(path)).expanduser()
    lm = read_library_config(directory) if directory.is_dir() else None
    return None if lm is None else library_config_fields(lm)[0]


def _slstm_at(lm: Mapping) -> list[int]:
    num_blocks = int(lm.get("num_blocks", 1))
    at = "all" if lm.get("mlstm_block") is None else lm.get("slstm_at", [])
    return list(range(num_blocks)) if at == "all" else sorted(int(i) for i in at)


def library_config_fields(lm: Mapping, **overrides) -> tuple[dict, str]:
    """A library `xLSTMLMModelConfig` dict -> (our config fields, the sLSTM storage backend of its checkpoint).
    mLSTM blocks map onto our `mlstm` layer, sLSTM blocks keep the forward-relevant part of `slstm_block`;
    unsupported settings are refused by name (`config_translation.slstm_config_from_library`)."""
    lm = dict(lm)
    if not isinstance(lm.get("vocab_size"), int) or lm["vocab_size"] <= 0:
        raise ValueError(f"library config vocab_size={lm.get('vocab_size')!r} must be a positive int (Helibrunna "
                         "writes it into the model section)")
    slstm_at = _slstm_at(lm)
    backend = "cuda"
    slstm_block = None
    if slstm_at:
        block = lm.get("slstm_block")
        if not isinstance(block, dict):
            raise ValueError(f"library config has slstm_at={lm.get('slstm_at', 'all')!r} but no slstm_block")
        _, backend = slstm_config_from_library(block, lm["embedding_dim"])  # refuses unsupported settings
        slstm = {k: v for k, v in (block.get("slstm") or {}).items() if k in _SLSTM_KEYS}
        slstm["dropout"] = lm.get("dropout", 0.0) or 0.0  # the library overwrites it with the LM's dropout
        slstm_block = {"slstm": slstm}
        if "feedforward" not in block or block["feedforward"] is not None:  # missing key: the library's default FFN
            slstm_block["feedforward"] = {k: v for k, v in (block.get("feedforward") or {}).items() if k in _FFN_KEYS}
        else:
            slstm_block["feedforward"] = None
    mlstm_lm = lm if lm.get("mlstm_block") else {**lm, "mlstm_block": {"mlstm": {}}, "bias": False}
    fields = mlstm_fields_from_library(mlstm_lm)
    fields.update(slstm_at=slstm_at, slstm_block=slstm_block, add_embedding_dropout=bool(lm.get(
        "add_embedding_dropout", False)), dropout=float(lm.get("dropout", 0.0) or 0.0),
        weight_decay_on_embedding=bool(lm.get("weight_decay_on_embedding", False)))
    fields.update(overrides)
    return fields, backend


def mlstm_fields_from_library(lm: Mapping, **overrides) -> dict:
    """Our config fields for the mLSTM blocks of a library `xLSTMLMModelConfig` dict (`mlstm_block` present)."""
    mlstm = dict((lm.get("mlstm_block") or {}).get("mlstm") or {})
    if not lm.get("mlstm_block"):
        raise ValueError("library config has no mlstm_block")
    if lm.get("bias"):
        raise ValueError("library config bias=true is not supported for mLSTM blocks yet (only bias=false is "
                         "checked against the library)")
    return dict(
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
        add_qk_norm=False, compute_dtype="float32", **overrides,
    )


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


# ---------------------------------------------------------------------------------------------- sLSTM block params
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


# ---------------------------------------------------------------------------------------------- mLSTM block params
def mlstm_block_params_from_library(state_dict: Mapping[str, np.ndarray], config,
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
