"""sLSTM speed: our `FlaxXLSTMForCausalLM` vs NX-AI `xlstm`'s `xLSTMLMModel` (vanilla backend) on the same weights,
side by side in one process (run by hand; the library is not a dependency).

    python benchmarks/slstm_speed.py [--models mixed slstm] [--dim 256] [--heads 4] [--blocks 4] [--vocab 512]
        [--prefill-len 256] [--prompt-len 16] [--new-tokens 64] [--batches 1 4] [--repeats 3] [--out FILE]

Needs torch, `xlstm==2.0.6` and `dacite` besides jax/flax/transformers (e.g. a venv with `pip install xlstm==2.0.6
torch` and this package). Models: `mixed` = mLSTM and sLSTM blocks alternating (slstm_at = odd blocks), `slstm` =
sLSTM blocks only (`mlstm_block: null`); FFN 1.3 with GELU on the sLSTM blocks, conv 4, float32. The library model
is built with its own init, perturbed (R != 0, biases, norms) and saved as a library folder (config.json with
`xlstm_cfg`, model.safetensors); ours loads that folder with `from_pretrained`, so both run the same weights.

Measured, each side alternately `--repeats` times after one warm-up call (compile), median kept:
* `prefill`: B x `--prefill-len` tokens -> logits (ours: the recurrent state too, from `init_cache`; the library's
  `forward` returns logits only and has no stateful prefill), tokens/s; the largest logits difference is recorded
  (the two sides must agree, else the timing means nothing).
* `decode`: greedy decoding of `--new-tokens` after a `--prompt-len` prompt, new tokens/s (all rows). Ours:
  `generate` (prefill + compiled steps); the library: `step` from token 0 over the prompt, then argmax steps (its
  only stateful API). Whether the greedy tokens are identical is recorded.
One CPU thread per side: torch.set_num_threads(1), XLA's CPU thread pools limited by the flags set below before jax
is imported; the figures use the process's CPU time by default (`--clock cpu`: on a machine shared with other work
wall time mostly measures the others), every run's wall and CPU seconds are kept. Prints (and with `--out` writes)
JSON with the ratios ours / library (tokens/s; > 1: ours faster).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from dacite import Config, from_dict  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from modeling_xlstm_flax import FlaxXLSTMForCausalLM  # noqa: E402


def library_model(kind: str, args):
    """(xLSTMLMModel in eval mode, its config as a dict) with perturbed random weights."""
    from xlstm import xLSTMLMModel, xLSTMLMModelConfig

    slstm = {"slstm": {"backend": "vanilla", "num_heads": args.heads, "conv1d_kernel_size": 4, "dtype": "float32"},
             "feedforward": {"proj_factor": 1.3, "act_fn": "gelu"}}
    cfg = {"vocab_size": args.vocab, "embedding_dim": args.dim, "num_blocks": args.blocks,
           "context_length": max(args.prefill_len, args.prompt_len + args.new_tokens), "slstm_block": slstm}
    if kind == "mixed":
        cfg.update(slstm_at=list(range(1, args.blocks, 2)), mlstm_block={"mlstm": {
            "num_heads": args.heads, "conv1d_kernel_size": 4, "qkv_proj_blocksize": 4}})
    else:
        cfg.update(slstm_at="all", mlstm_block=None)
    torch.manual_seed(0)
    config = from_dict(xLSTMLMModelConfig, cfg, config=Config(strict=True))
    model = xLSTMLMModel(config)
    model.reset_parameters()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the default init (R = 0, zero norm weights) is not what a trained model looks like
        for name, p in model.named_parameters():
            if name.endswith("_recurrent_kernel_"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
            elif name.endswith("_bias_") or "norm" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model.eval()
    return model, dataclasses.asdict(config)


def save_library_folder(model, cfg: dict, folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"xlstm_cfg": cfg}))
    save_file({k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(fns: dict, repeats: int, clock: str) -> tuple[dict, dict]:
    """({name: median seconds by `clock`}, {name: {"wall_s": [...], "cpu_s": [...]}}): one warm-up call each, then
    the functions called in turn `repeats` times."""
    for fn in fns.values():
        fn()
    runs = {name: {"wall_s": [], "cpu_s": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = timed(fn)
            runs[name]["wall_s"].append(round(wall, 5))
            runs[name]["cpu_s"].append(round(cpu, 5))
    return {name: statistics.median(r[f"{clock}_s"]) for name, r in runs.items()}, runs


def figures(t: dict, runs: dict, tokens: int) -> dict:
    out = {f"{k}_tok_per_s": round(tokens / v, 1) for k, v in t.items()}
    out["ratio_ours_over_library"] = round(t["library"] / t["ours"], 2)
    out["runs"] = runs
    return out


def bench_model(kind: str, args, tmp: Path) -> dict:
    library, cfg = library_model(kind, args)
    ours = FlaxXLSTMForCausalLM.from_pretrained(save_library_folder(library, cfg, tmp / kind))
    n_params = sum(p.numel() for p in library.parameters())
    result = {"model": kind, "slstm_at": ours.config.slstm_block_indices, "params": n_params, "batches": []}
    prefill = jax.jit(lambda p, ids: ours(ids, params=p, past_key_values=ours.init_cache(ids.shape[0])))

    for batch in args.batches:
        rng = np.random.RandomState(batch)
        ids = rng.randint(0, args.vocab, (batch, args.prefill_len)).astype(np.int32)
        ids_t = torch.from_numpy(ids.astype(np.int64))
        with torch.no_grad():
            lib_logits = library(ids_t).numpy()
        our_logits = np.asarray(prefill(ours.params, ids).logits)
        row = {"batch": batch, "prefill_max_abs_logits_diff": float(np.max(np.abs(our_logits - lib_logits)))}
        with torch.no_grad():
            row["prefill"] = figures(*alternate({"ours": lambda: jax.block_until_ready(prefill(ours.params, ids)),
                                                 "library": lambda: library(ids_t)}, args.repeats, args.clock),
                                     batch * args.prefill_len)

        prompt = rng.randint(0, args.vocab, (batch, args.prompt_len)).astype(np.int32)
        prompt_t = torch.from_numpy(prompt.astype(np.int64))

        def ours_decode():
            return np.asarray(ours.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False,
                                            pad_token_id=0, eos_token_id=None).sequences)[:, args.prompt_len:]

        @torch.no_grad()
        def library_decode():
            state, new = None, []
            for i in range(args.prompt_len):  # the library has no stateful prefill: step from token 0
                logits, state = library.step(prompt_t[:, i:i + 1], state=state)
            for i in range(args.new_tokens):
                token = logits[:, -1].argmax(-1, keepdim=True)
                new.append(token)
                if i + 1 < args.new_tokens:
                    logits, state = library.step(token, state=state)
            return torch.cat(new, dim=1).numpy()

        row["greedy_tokens_equal"] = bool(np.array_equal(ours_decode(), library_decode()))
        row["decode"] = figures(*alternate({"ours": ours_decode, "library": library_decode}, args.repeats,
                                           args.clock), batch * args.new_tokens)
        result["batches"].append(row)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["mixed", "slstm"], default=["mixed", "slstm"])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--prefill-len", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="what the figures use (default cpu: the process's CPU time, robust on a shared machine "
                             "since each side runs on one thread; every run's wall and CPU seconds are kept)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"settings": vars(args), "torch_threads": 1, "xla_flags": os.environ["XLA_FLAGS"],
              "jax": jax.__version__, "torch": torch.__version__, "library_backend": "vanilla", "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            report["results"].append(bench_model(kind, args, Path(tmp)))
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
