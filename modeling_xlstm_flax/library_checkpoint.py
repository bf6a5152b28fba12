"""Checkpoint folders of NX-AI's PyTorch `xlstm` library (`xLSTMLMModel`, mLSTM and sLSTM blocks by `slstm_at`) <->
our config and params, whole models. `FlaxXLSTMForCausalLM.from_pretrained(folder)` (`loading`) and
`XLSTMFlaxConfig.from_pretrained(folder)` come here when the folder holds one; the config formats and the per-block
translations (the i/f name swap and the storage layouts live there only) are `library_params`.

Weights: `model.safetensors` (single file or index + shards) with `xLSTMLMModel` state-dict keys, a `_orig_mod.`
prefix stripped, any float dtype (read as float32). Tied embeddings (`tie_weights`): the file may hold
`token_embedding.weight`, `lm_head.weight` or both (then equal). Every tensor is used exactly once: missing,
unexpected or mis-shaped tensors are refused by name.

Back to the library: `library_config(config, backend)` and `library_state_dict(params, config, backend)` (either
storage layout), `save_library_folder` writes both (`write_library_files`: config.json with the config under
`xlstm_cfg`, as Distil-xLSTM, and `model.safetensors` in float32; the command: `xlstm-flax convert to-library`).
A config the library cannot express is refused: the written config must translate back to the same model config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .checkpoint_io import SafetensorsCheckpoint
from .configuration_xlstm_flax import XLSTMFlaxConfig
from .library_params import (
    BACKENDS, block_params_from_library, block_params_to_library, library_config_fields,
    mlstm_block_params_from_library, mlstm_block_params_to_library, read_library_config, strip_compiled_prefix,
)
from .safe_output import atomic_output_dir

BLOCK_PREFIX = "xlstm_block_stack.blocks.{}."
POST_NORM = "xlstm_block_stack.post_blocks_norm.weight"
EMBEDDING, HEAD = "token_embedding.weight", "lm_head.weight"


def config_from_library(lm: Mapping, **overrides) -> tuple[XLSTMFlaxConfig, str]:
    """A library `xLSTMLMModelConfig` dict -> (our config, the sLSTM storage backend of its checkpoint)
    (`library_params.library_config_fields`)."""
    fields, backend = library_config_fields(lm, **overrides)
    return XLSTMFlaxConfig(**fields), backend


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
    differ.sort(key=lambda k: k != "layer_type")  # the decisive one first: an mlstm_v1 model has no library block
    if differ:
        raise ValueError("the xlstm library cannot express this config: "
                         + ", ".join(f"{k}={ours.get(k)!r} (library: {theirs.get(k)!r})" for k in differ))
    return lm


def library_state_dict(params: Mapping, config: XLSTMFlaxConfig, backend: str = "vanilla") -> dict[str, np.ndarray]:
    """Our causal-LM params -> the library's `xLSTMLMModel` state dict (float32 numpy, `backend`'s sLSTM
    storage layout). With tied embeddings both `token_embedding.weight` and `lm_head.weight` are written (equal), as
    the library's `state_dict()` holds them: `load_state_dict` (strict) of a tied `xLSTMLMModel` needs both.
    Scanned params (`scan_blocks`) are unstacked first: the library has one module per block."""
    library_config(config, backend)  # refuses what the library cannot express
    backbone = params["backbone"]
    if "scanned" in backbone["blocks"]:
        from .xlstm_layers import unstack_block_params

        backbone = unstack_block_params({"backbone": backbone}, config.num_blocks)["backbone"]
    sd = {EMBEDDING: np.asarray(backbone["embeddings"]["embedding"], np.float32)}
    if config.tie_word_embeddings:  # both names, as the library's own state_dict(): its strict load needs both
        sd[HEAD] = np.array(sd[EMBEDDING])
    else:
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
    lm = library_config(config, backend)
    sd = library_state_dict(params, config, backend)
    folder = Path(folder)
    with atomic_output_dir(folder, True, owned=("config.json", "model.safetensors"), keep_others=True,
                           option="save_library_folder: folder") as tmp:
        write_library_files(tmp, lm, sd)
    return folder


def write_library_files(directory, lm: Mapping, state_dict: Mapping[str, np.ndarray]) -> None:
    """config.json (`{"xlstm_cfg": lm}`, as Distil-xLSTM) and model.safetensors (`state_dict`, float32) into the
    existing `directory` (a temporary folder of `safe_output`; `library_config` and `library_state_dict` make the
    two, refusing what the library cannot express, before any folder is made)."""
    from safetensors.numpy import save_file

    (Path(directory) / "config.json").write_text(json.dumps({"xlstm_cfg": lm}, indent=1))
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state_dict.items()},
              str(Path(directory) / "model.safetensors"))
