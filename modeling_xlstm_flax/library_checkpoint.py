"""Checkpoint folders of NX-AI's PyTorch `xlstm` library (`xLSTMLMModel`, mLSTM and sLSTM blocks by `slstm_at`) ->
our config and params. `FlaxXLSTMForCausalLM.from_pretrained(folder)` comes here when the folder holds one.

Config, first found wins:
* `config.json` with the library's `xLSTMLMModelConfig` dict under `xlstm_cfg` or `xlstm_config` (Distil-xLSTM),
  or a bare `xLSTMLMModelConfig` dict (no `model_type`, has `embedding_dim` and `mlstm_block` / `slstm_block`);
* `config.yaml` (Helibrunna): the `model:` section, or the whole file when it is the model config. Read with PyYAML
  (a dependency of transformers).
The sLSTM storage layout comes from `slstm_block.slstm.backend` (absent: the library's default "cuda").

Weights: `model.safetensors` (single file or index + shards) with `xLSTMLMModel` state-dict keys, a `_orig_mod.`
prefix stripped, any float dtype (read as float32). Tied embeddings (`tie_weights`): the file may hold
`token_embedding.weight`, `lm_head.weight` or both (then equal). Every tensor is used exactly once: missing,
unexpected or mis-shaped tensors are refused by name. The per-block translations are `slstm_params` (the i/f name
swap and the storage layouts live there only) and `library_mlstm_params`.

Back to the library: `library_config(config, backend)` and `library_state_dict(params, config, backend)` (either
storage layout), `save_library_folder` writes both (config.json with the config under `xlstm_cfg`, as Distil-xLSTM,
and `model.safetensors` in float32). A config the library cannot express is refused: the written config must
translate back to the same model config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .checkpoint_io import SafetensorsCheckpoint
from .configuration_xlstm_flax import XLSTMFlaxConfig
from .library_mlstm_params import (
    mlstm_block_config_from_library, mlstm_block_params_from_library, mlstm_block_params_to_library,
)
from .safe_output import atomic_output_dir
from .slstm_params import (
    BACKENDS, block_params_from_library, block_params_to_library, slstm_config_from_library, strip_compiled_prefix,
)

LIBRARY_CONFIG_KEYS = ("xlstm_cfg", "xlstm_config")
BLOCK_PREFIX = "xlstm_block_stack.blocks.{}."
POST_NORM = "xlstm_block_stack.post_blocks_norm.weight"
EMBEDDING, HEAD = "token_embedding.weight", "lm_head.weight"
# the sLSTM fields of the library config that change the forward pass (kept in our `slstm_block`)
_SLSTM_KEYS = ("num_heads", "conv1d_kernel_size", "function", "group_norm_weight", "dropout")
_FFN_KEYS = ("proj_factor", "round_proj_up_dim_up", "round_proj_up_to_multiple_of", "act_fn", "bias", "ff_type",
             "dropout")


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


def _slstm_at(lm: Mapping) -> list[int]:
    num_blocks = int(lm.get("num_blocks", 1))
    at = "all" if lm.get("mlstm_block") is None else lm.get("slstm_at", [])
    return list(range(num_blocks)) if at == "all" else sorted(int(i) for i in at)


def config_from_library(lm: Mapping, **overrides) -> tuple[XLSTMFlaxConfig, str]:
    """A library `xLSTMLMModelConfig` dict -> (our config, the sLSTM storage backend of its checkpoint).
    mLSTM blocks map onto our `mlstm` layer (`library_mlstm_params`), sLSTM blocks keep the forward-relevant part
    of `slstm_block`; unsupported settings are refused by name (`slstm_params.slstm_config_from_library`)."""
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
    fields = dict(slstm_at=slstm_at, slstm_block=slstm_block, add_embedding_dropout=bool(lm.get(
        "add_embedding_dropout", False)), dropout=float(lm.get("dropout", 0.0) or 0.0),
        weight_decay_on_embedding=bool(lm.get("weight_decay_on_embedding", False)))
    fields.update(overrides)
    return mlstm_block_config_from_library(mlstm_lm, **fields), backend


def params_from_library(state_dict: Mapping[str, np.ndarray], config: XLSTMFlaxConfig, backend: str) -> dict:
    """The library state dict (numpy, any float dtype) -> our unrolled causal-LM params (float32 numpy)."""
    sd = strip_compiled_prefix(state_dict)
    f32 = lambda name: np.asarray(sd[name], np.float32)  # noqa: E731
    used = set()
    if config.tie_word_embeddings:
        present = [n for n in (EMBEDDING, HEAD) if n in sd]
        if not present:
            raise ValueError(f"library checkpoint has neither {EMBEDDING} nor {HEAD} (tied embeddings)")
        if len(present) == 2 and not np.array_equal(f32(EMBEDDING), f32(HEAD)):
            raise ValueError(f"library checkpoint has tie_weights=true but {EMBEDDING} and {HEAD} differ")
        embedding = f32(present[0])
        used.update(present)
    else:
        missing = [n for n in (EMBEDDING, HEAD) if n not in sd]
        if missing:
            raise ValueError(f"library checkpoint lacks {missing} (tie_weights=false)")
        embedding = f32(EMBEDDING)
        used.update((EMBEDDING, HEAD))
    expected = (config.vocab_size, config.embedding_dim)
    if embedding.shape != expected:
        raise ValueError(f"library embedding has shape {embedding.shape}, the config says {expected}")
    params = {"backbone": {"embeddings": {"embedding": embedding}, "blocks": {}}}
    if not config.tie_word_embeddings:
        if f32(HEAD).shape != expected:
            raise ValueError(f"library {HEAD} has shape {f32(HEAD).shape}, the config says {expected}")
        params["lm_head"] = {"kernel": np.ascontiguousarray(f32(HEAD).T)}
    slstm_at = set(config.slstm_block_indices)
    for i in range(config.num_blocks):
        prefix = BLOCK_PREFIX.format(i)
        block_sd = {k: v for k, v in sd.items() if k.startswith(prefix)}
        used.update(block_sd)
        if i in slstm_at:
            block = block_params_from_library(block_sd, config.slstm_block_config(i), backend, prefix)
        else:
            block = mlstm_block_params_from_library(block_sd, config, prefix)
        params["backbone"]["blocks"][str(i)] = block
    if config.add_post_blocks_norm:
        if POST_NORM not in sd:
            raise ValueError(f"library checkpoint lacks {POST_NORM} (add_post_blocks_norm=true)")
        params["backbone"]["out_norm"] = {"scale": 1.0 + f32(POST_NORM)}
        used.add(POST_NORM)
    extra = sorted(set(sd) - used)
    if extra:
        raise ValueError(f"library checkpoint has tensors the config does not use: {extra[:20]}")
    return params


def read_library_state_dict(directory) -> dict[str, np.ndarray]:
    """All tensors of the folder's `model.safetensors` (or shards) as numpy arrays, as stored."""
    checkpoint = SafetensorsCheckpoint(directory)
    return {name: checkpoint.read(name) for name in checkpoint.stored()}


def load_library_folder(directory, lm: Optional[dict] = None, **overrides) -> tuple[XLSTMFlaxConfig, dict]:
    """(our config, our params) of a library checkpoint folder (see the module docstring)."""
    lm = read_library_config(directory) if lm is None else lm
    if lm is None:
        raise ValueError(f"{directory} holds no xlstm library config (config.yaml, or config.json with xlstm_cfg)")
    config, backend = config_from_library(lm, **overrides)
    return config, params_from_library(read_library_state_dict(directory), config, backend)


# ---------------------------------------------------------------------------------------------- back to the library
_NOT_COMPARED = {"compute_dtype", "scan_blocks", "prefill_segment_size", "gradient_checkpointing", "sequence_kernel",
                 "step_kernel", "chunk_size", "bos_token_id", "eos_token_id", "pad_token_id", "architectures",
                 "transformers_version", "_name_or_path", "name_or_path", "use_cache"}


def library_config(config: XLSTMFlaxConfig, backend: str = "vanilla") -> dict:
    """Our config -> the library's `xLSTMLMModelConfig` dict (sLSTM storage `backend`). ValueError when the library
    cannot express the config (it must translate back to the same model)."""
    if backend not in BACKENDS:
        raise ValueError(f"sLSTM backend {backend!r} is unknown; expected one of {BACKENDS}")
    slstm_at = config.slstm_block_indices
    all_slstm = len(slstm_at) == config.num_blocks
    lm = dict(vocab_size=config.vocab_size, embedding_dim=config.embedding_dim, num_blocks=config.num_blocks,
              context_length=config.context_length, tie_weights=bool(config.tie_word_embeddings),
              add_post_blocks_norm=bool(config.add_post_blocks_norm), bias=False, dropout=config.dropout,
              add_embedding_dropout=bool(config.add_embedding_dropout), weight_decay_on_embedding=bool(
                  config.weight_decay_on_embedding), slstm_at=slstm_at)
    lm["mlstm_block"] = None if all_slstm else {"mlstm": dict(
        num_heads=config.num_heads, conv1d_kernel_size=config.conv1d_kernel_size,
        qkv_proj_blocksize=config.qkv_proj_blocksize, proj_factor=config.proj_factor,
        round_proj_up_dim_up=config.round_proj_up_dim_up,
        round_proj_up_to_multiple_of=config.round_proj_up_to_multiple_of)}
    if slstm_at:
        block = json.loads(json.dumps(config.slstm_block or {}))
        block.setdefault("slstm", {})["backend"] = backend
        lm["slstm_block"] = block
    else:
        lm["slstm_block"] = None
    back, _ = config_from_library(lm)
    ours, theirs = config.to_dict(), back.to_dict()
    differ = sorted(k for k in set(ours) | set(theirs) if k not in _NOT_COMPARED and not k.startswith("_")
                    and ours.get(k) != theirs.get(k) and not (k == "slstm_block" and not slstm_at))
    if all_slstm:  # the mLSTM fields of an sLSTM-only model are unused
        differ = [k for k in differ if k in ("vocab_size", "embedding_dim", "num_blocks", "context_length",
                                             "tie_word_embeddings", "add_post_blocks_norm", "slstm_at", "slstm_block",
                                             "dropout", "add_embedding_dropout", "norm_eps", "norm_type",
                                             "logits_soft_cap", "lm_head_dtype", "block_norm_eps")]
    if differ:
        raise ValueError("the xlstm library cannot express this config: "
                         + ", ".join(f"{k}={ours.get(k)!r} (library: {theirs.get(k)!r})" for k in differ))
    return lm


def library_state_dict(params: Mapping, config: XLSTMFlaxConfig, backend: str = "vanilla") -> dict[str, np.ndarray]:
    """Our causal-LM params -> the library's `xLSTMLMModel` state dict (float32 numpy, `backend`'s sLSTM
    storage layout). With tied embeddings only `token_embedding.weight` is written. Scanned params (`scan_blocks`)
    are unstacked first: the library has one module per block."""
    library_config(config, backend)  # refuses what the library cannot express
    backbone = params["backbone"]
    if "scanned" in backbone["blocks"]:
        from .xlstm_layers import unstack_block_params

        backbone = unstack_block_params({"backbone": backbone}, config.num_blocks)["backbone"]
    sd = {EMBEDDING: np.asarray(backbone["embeddings"]["embedding"], np.float32)}
    if not config.tie_word_embeddings:
        sd[HEAD] = np.ascontiguousarray(np.asarray(params["lm_head"]["kernel"], np.float32).T)
    slstm_at = set(config.slstm_block_indices)
    for i in range(config.num_blocks):
        block, prefix = backbone["blocks"][str(i)], BLOCK_PREFIX.format(i)
        if i in slstm_at:
            sd.update(block_params_to_library(block, config.slstm_block_config(i), backend, prefix))
        else:
            sd.update(mlstm_block_params_to_library(block, prefix))
    if config.add_post_blocks_norm:
        sd[POST_NORM] = np.asarray(backbone["out_norm"]["scale"], np.float32) - 1.0
    return sd


def save_library_folder(params: Mapping, config: XLSTMFlaxConfig, folder, backend: str = "vanilla") -> Path:
    """Write a library checkpoint folder: config.json (`{"xlstm_cfg": library_config}`) and model.safetensors.
    All-or-nothing (`safe_output`): the folder's other files are kept, the old two replaced only once both new ones
    are complete."""
    from safetensors.numpy import save_file

    lm = library_config(config, backend)
    sd = {k: np.ascontiguousarray(v) for k, v in library_state_dict(params, config, backend).items()}
    folder = Path(folder)
    with atomic_output_dir(folder, True, owned=("config.json", "model.safetensors"), keep_others=True,
                           option="save_library_folder: folder") as tmp:
        (tmp / "config.json").write_text(json.dumps({"xlstm_cfg": lm}, indent=1))
        save_file(sd, str(tmp / "model.safetensors"))
    return folder
