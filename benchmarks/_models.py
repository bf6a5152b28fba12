"""The two models under test with the same weights, and the calls the benchmark times.

* The reference: transformers' PyTorch `xLSTMForCausalLM` (float32, `inference_mode`), random weights, saved with
  `save_pretrained` (safetensors) to a temporary directory.
* Ours: `FlaxAutoModelForCausalLM.from_pretrained(dir, from_pt=True)` from that directory (falls back to
  transformers' PyTorch->Flax state-dict converter on an initialised model if that path fails; the results record
  which loader ran).

Reference kernel settings (transformers 4.57.6, `mode="inference"`, whose wrapper runs the chunkwise kernel on the
largest multiple of `chunk_size` and the native recurrent loop on the rest):

* `native_sequence`: unmodified transformers with `chunk_size` larger than any sequence, so every prefill runs
  its native recurrent sequence kernel (a Python loop over time). This is what runs out of the box once a sequence
  is longer than the default chunk size.
* `chunkwise_fixed`: its chunkwise kernel at the model's `chunk_size`, with the two bugs that make it fail in
  4.57.6 fixed by this benchmark (`mlstm_chunkwise_parallel_fw_H` reshapes q and the chunk states with the
  sequence-wide state height instead of the head dim, and calls a tensor instead of reshaping it). Same math,
  same ops otherwise: the stronger, "working chunkwise" reference.

Decoding (one token with a cache) runs its native step kernel under either setting.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

REF_KERNELS = ("chunkwise_fixed", "native_sequence")
_NATIVE_CHUNK = 1 << 30  # larger than any sequence: the wrapper never calls the chunkwise kernel


# ---------------------------------------------------------------------------------------------- configs
def load_config(spec: str):
    """An `XLSTMFlaxConfig` from a preset name (`xlstm-160m`) or a JSON file (ours, or transformers' xLSTM)."""
    import modeling_xlstm_flax as xf
    from modeling_xlstm_flax.configuration_xlstm_flax import XLSTMFlaxConfig, from_transformers_config

    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        if data.get("model_type") == "xlstm":
            return from_transformers_config(data)
        data.pop("_comment", None)
        config = XLSTMFlaxConfig(**data)
        config.validate()
        return config
    return xf.load_preset(spec)


def pt_config_for(config, chunk_size: Optional[int] = None):
    """transformers' xLSTMConfig with the same architecture, float32 everywhere, inference mode.

    transformers rounds the feedforward width as `(x + m - 1) // m * m` on a float x, which can land one multiple
    lower than our (upstream's) ceil rounding (768 * 2.667 -> 2048 vs 2112); `to_transformers_config` converts the
    factor so both sides build the same width, and this checks it again. Returns (pt_config, notes).
    """
    import torch
    from modeling_xlstm_flax.configuration_xlstm_flax import to_transformers_config

    pt = to_transformers_config(config)
    notes = {}
    pt.mode = "inference"
    pt.autocast_kernel_dtype = "float32"
    pt.inference_state_dtype = "float32"
    pt.dtype = torch.float32
    pt.chunk_size = chunk_size or config.chunk_size
    pt_ff = int(((pt.hidden_size * pt.ffn_proj_factor + pt.ffn_round_up_to_multiple_of - 1)
                 // pt.ffn_round_up_to_multiple_of) * pt.ffn_round_up_to_multiple_of)
    if pt_ff != config.ff_dim:
        notes["ffn_proj_factor"] = (f"transformers would build a feedforward width of {pt_ff} from "
                                    f"{pt.ffn_proj_factor}; set to {config.ff_dim}/{config.embedding_dim} so both "
                                    f"models have width {config.ff_dim}")
        pt.ffn_proj_factor = config.ff_dim / config.embedding_dim
    return pt, notes


# ---------------------------------------------------------------------------------------------- reference fix
def _parallel_fw_h_fixed(matQ, matK, matV, matC_states, vecN_states, scaMinter_states, vecI, vecB, qk_scale,
                         chunk_size=64, num_chunks=1, eps=1e-6):
    """transformers 4.57.6 `mlstm_chunkwise_parallel_fw_H` with its two shape bugs fixed; otherwise op for op."""
    import torch

    batch_size, nh, _, dqk = matQ.shape
    dhv = matV.shape[-1]
    nc = num_chunks
    matC_k_states = matC_states.view(batch_size, nh, nc, dqk, dhv)
    vecN_k_states = vecN_states.view(batch_size, nh, nc, dqk)
    scaMinter_k_states = scaMinter_states
    matQ = matQ.view(batch_size, nh, nc, chunk_size, dqk)
    matK = matK.view(batch_size, nh, nc, chunk_size, dqk)
    matV = matV.view(batch_size, nh, nc, chunk_size, dhv)
    ltr = torch.tril(torch.ones((chunk_size, chunk_size), dtype=torch.bool, device=matQ.device))
    matF_logsig_chunk = vecB[:, :, :, :, None] - vecB[:, :, :, None, :]
    matF_logsig_mask_chunk = torch.where(ltr, matF_logsig_chunk, -float("inf"))
    matLogD_chunk = matF_logsig_mask_chunk + vecI[:, :, :, None, :]
    vecMintra_k = torch.max(matLogD_chunk, dim=-1, keepdim=False).values
    vecM_b_inter = vecB + scaMinter_k_states[:, :, :, None]
    vecM_k_combine = torch.maximum(vecM_b_inter, vecMintra_k)
    vecM_k_combine = vecM_k_combine[:, :, :, :, None]
    vecM_b_inter = vecM_b_inter[:, :, :, :, None]
    matLogD_stabilized_chunk = matLogD_chunk - vecM_k_combine
    matD_chunk = torch.exp(matLogD_stabilized_chunk)
    matS_chunk = (matQ @ matK.transpose(-2, -1)) * qk_scale
    matM_chunk = matS_chunk * matD_chunk
    vecBbar = torch.exp(vecM_b_inter - vecM_k_combine)
    matQ_chunk_gated = matQ * vecBbar * qk_scale
    matNumerator_common = matQ_chunk_gated @ matC_k_states + matM_chunk @ matV
    vecDenom_l_common = matQ_chunk_gated @ vecN_k_states.unsqueeze(-1) + matM_chunk.sum(dim=-1, keepdim=True)
    vecDenom_max_common = torch.maximum(torch.abs(vecDenom_l_common), torch.exp(-vecM_k_combine))
    matH_k_chunk = matNumerator_common / (vecDenom_max_common + eps)
    matH_out = matH_k_chunk.view(batch_size, nh, nc * chunk_size, dhv)
    vecN_out = vecDenom_max_common.reshape(batch_size, nh, nc * chunk_size)
    vecM_out = vecM_k_combine.reshape(batch_size, nh, nc * chunk_size)
    return matH_out, vecN_out, vecM_out


def install_reference_fix() -> bool:
    """Patch transformers' module-level function (looked up at call time by its chunkwise kernel)."""
    from transformers.models.xlstm import modeling_xlstm

    if not hasattr(modeling_xlstm, "mlstm_chunkwise_parallel_fw_H"):
        return False  # external `xlstm` package in use: nothing to fix here
    modeling_xlstm.mlstm_chunkwise_parallel_fw_H = _parallel_fw_h_fixed
    return True


def set_reference_kernel(pt_model, kernel: str, chunk_size: int) -> None:
    """Switch every mLSTM backend of the PyTorch model between `native_sequence` and `chunkwise_fixed`."""
    if kernel not in REF_KERNELS:
        raise ValueError(f"unknown reference kernel {kernel!r}; choose from {REF_KERNELS}")
    size = _NATIVE_CHUNK if kernel == "native_sequence" else chunk_size
    for module in pt_model.modules():
        fn = getattr(module, "_inference_fn", None)
        if isinstance(fn, partial):
            module._inference_fn = partial(fn.func, *fn.args, **{**fn.keywords, "chunk_size": size})


# ---------------------------------------------------------------------------------------------- building
class Models:
    """Both models, their params and the callables to time."""

    def __init__(self, config, seed: int = 0, threads: Optional[int] = None, workdir: Optional[str] = None,
                 with_reference: bool = True, log=print):
        import jax
        import jax.numpy as jnp

        self.config = config
        self.notes: dict = {}
        self.pt = None
        self.loader = None
        self._tmp = None
        if with_reference:
            import torch
            from transformers import xLSTMForCausalLM

            if threads:
                torch.set_num_threads(threads)
            pt_config, notes = pt_config_for(config)
            self.notes.update(notes)
            torch.manual_seed(seed)
            self.pt = xLSTMForCausalLM(pt_config).eval()
            self.pt_config = pt_config
            self.reference_fix_installed = install_reference_fix()
            self._tmp = tempfile.TemporaryDirectory(dir=workdir, prefix="xlstm-bench-")
            log(f"saving the PyTorch model to {self._tmp.name}")
            self.pt.save_pretrained(self._tmp.name, safe_serialization=True)
            self.model, self.params = self._load_ours(self._tmp.name, log)
        else:
            from modeling_xlstm_flax import FlaxXLSTMForCausalLM

            self.model = FlaxXLSTMForCausalLM(config, seed=seed, dtype=jnp.float32)
            self.params = self.model.params
            self.loader = "random init (no reference)"
        # the translated config carries the reference's kernel settings; use the benchmarked config's
        self.model.config.chunk_size = config.chunk_size
        self.model.config.sequence_kernel = config.sequence_kernel
        self.params = jax.tree_util.tree_map(jnp.asarray, self.params)
        self.logits_to_keep = "logits_to_keep" in inspect.signature(self.model.__call__).parameters

    def _load_ours(self, path: str, log):
        import jax.numpy as jnp
        from transformers import FlaxAutoModelForCausalLM

        import modeling_xlstm_flax as xf

        xf.register_auto_classes()  # our classes in transformers' auto classes

        try:
            model = FlaxAutoModelForCausalLM.from_pretrained(path, from_pt=True, dtype=jnp.float32)
            self.loader = "FlaxAutoModelForCausalLM.from_pretrained(dir, from_pt=True)"
            return model, model.params
        except Exception as err:  # noqa: BLE001  (recorded, then the converter path)
            log(f"from_pretrained(from_pt=True) failed ({type(err).__name__}: {err}); using the state-dict converter")
            from safetensors.numpy import load_file
            from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

            from modeling_xlstm_flax.configuration_xlstm_flax import from_transformers_config

            config = from_transformers_config(self.pt_config)
            model = xf.FlaxXLSTMForCausalLM(config, dtype=jnp.float32)
            params = convert_pytorch_state_dict_to_flax(load_file(os.path.join(path, "model.safetensors")), model)
            model.params = params
            self.loader = (f"convert_pytorch_state_dict_to_flax (from_pretrained(from_pt=True) raised "
                           f"{type(err).__name__}: {str(err)[:200]})")
            return model, params

    def close(self):
        if self._tmp is not None:
            self._tmp.cleanup()

    # ------------------------------------------------------------------------------------------ sizes
    def param_counts(self) -> dict:
        import jax
        from flax.traverse_util import flatten_dict

        flat = flatten_dict(self.params)
        total = sum(int(np.prod(v.shape)) for v in flat.values())
        embed = sum(int(np.prod(v.shape)) for k, v in flat.items() if "embeddings" in k)
        head = sum(int(np.prod(v.shape)) for k, v in flat.items() if k[0] == "lm_head")
        nbytes = sum(v.size * v.dtype.itemsize for v in jax.tree_util.tree_leaves(self.params))
        out = {"total": total, "embedding": embed, "lm_head": head, "blocks_and_norms": total - embed - head,
               "weights_bytes": int(nbytes)}
        if self.pt is not None:
            out["reference_total"] = int(sum(p.numel() for p in self.pt.parameters()))
        return out

    def cache_bytes(self, batch: int) -> int:
        import jax

        return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(self.model.init_cache(batch))))

    # ------------------------------------------------------------------------------------------ ours
    def ours_prefill_fn(self):
        """jit-able (params, ids) -> (next-token logits (B, V), cache): the prompt into the recurrent state."""
        model = self.model
        extra = {"logits_to_keep": 1} if self.logits_to_keep else {}

        def prefill(params, ids):
            out = model(ids, params=params, past_key_values=model.init_cache(ids.shape[0]), **extra)
            return out.logits[:, -1], out.past_key_values

        return prefill

    def ours_forward_fn(self):
        """jit-able (params, ids) -> logits (B, S, V): the plain forward pass (no cache)."""
        model = self.model
        return lambda params, ids: model(ids, params=params).logits

    def ours_decode_fn(self, new_tokens: int):
        """jit-able (params, cache, token (B,)) -> greedy tokens (B, new_tokens): the step form in a fori_loop, as
        transformers' Flax greedy loop runs it after the prefill."""
        import jax
        import jax.numpy as jnp

        model = self.model

        def decode(params, cache, token):
            def body(i, carry):
                cache, token, out = carry
                step = model(token[:, None], params=params, past_key_values=cache)
                token = jnp.argmax(step.logits[:, -1], axis=-1).astype(jnp.int32)
                return step.past_key_values, token, out.at[:, i].set(token)

            out = jnp.zeros((token.shape[0], new_tokens), jnp.int32)
            return jax.lax.fori_loop(0, new_tokens, body, (cache, token.astype(jnp.int32), out))[2]

        return decode

    def ours_generate_fn(self, new_tokens: int):
        """jit-able (params, ids) -> sequences: our greedy `generate`, no early stop."""
        model = self.model

        def generate(params, ids):  # no eos id: every sequence gets new_tokens tokens
            return model.generate(ids, params=params, max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.config.pad_token_id, eos_token_id=None).sequences

        return generate

    # ------------------------------------------------------------------------------------------ reference
    def ref_prefill(self, ids: np.ndarray, full_forward: bool = False):
        """(next-token logits (B, V), cache): backbone over the prompt, LM head and soft cap on the last position
        only (the same work as ours); with full_forward its `forward` (logits for every position, as its
        generate's prefill computes them)."""
        import torch
        from transformers.models.xlstm.modeling_xlstm import soft_cap

        if full_forward:
            with torch.inference_mode():
                out = self.pt(input_ids=torch.from_numpy(np.asarray(ids, np.int64)), use_cache=True)
            return out.logits[:, -1], out.cache_params
        with torch.inference_mode():
            out = self.pt.backbone(input_ids=torch.from_numpy(np.asarray(ids, np.int64)), use_cache=True)
            h = out.last_hidden_state[:, -1:]
            logits = soft_cap(self.pt.lm_head(h.to(self.pt.lm_head.weight.dtype)).float(),
                              self.pt.config.output_logit_soft_cap)
        return logits[:, -1], out.cache_params

    def ref_forward(self, ids: np.ndarray):
        import torch

        with torch.inference_mode():
            return self.pt(input_ids=torch.from_numpy(np.asarray(ids, np.int64)), use_cache=False).logits

    def ref_decode(self, cache, token, new_tokens: int) -> np.ndarray:
        """Greedy steps from a copy of `cache` (PyTorch updates its cache in place), as its generate loop does."""
        import torch

        cache = copy.deepcopy(cache)
        token = torch.as_tensor(np.asarray(token, np.int64))
        out = []
        with torch.inference_mode():
            for _ in range(new_tokens):
                logits = self.pt(input_ids=token[:, None], cache_params=cache, use_cache=True).logits
                token = logits[:, -1].argmax(-1)
                out.append(token)
        return torch.stack(out, 1).numpy()

    def ref_generate(self, ids: np.ndarray, new_tokens: int) -> np.ndarray:
        import torch
        from transformers import GenerationConfig

        # an end-of-sequence id the model cannot emit (None would be replaced by the model's default): every
        # sequence gets new_tokens tokens, as in ours
        gen = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=self.pt.config.vocab_size,
                               pad_token_id=self.pt.config.pad_token_id, bos_token_id=self.pt.config.bos_token_id,
                               use_cache=True)
        ids_t = torch.from_numpy(np.asarray(ids, np.int64))
        with torch.inference_mode():
            return self.pt.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
                                    generation_config=gen).numpy()
