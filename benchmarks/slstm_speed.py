"""sLSTM speed: our `lax.scan` recurrence and block vs NX-AI `xlstm`'s vanilla backend on the same weights (run by hand).

    python benchmarks/slstm_speed.py [--dim 512] [--heads 4] [--length 512] [--batches 1 8] [--repeats 5]

Needs torch and `xlstm==2.0.6` besides jax (a separate environment: the library is not a dependency). One process,
one CPU thread for each side (torch.set_num_threads(1); XLA with its CPU thread pools limited by the flags set below
before jax is imported), weights random and perturbed (R != 0). Prints JSON: best-of-repeats seconds per call for
the recurrence alone (cell on given gate inputs) and the whole block, tokens/s, the ratio library / ours, and the
max abs difference of the outputs (both sides must agree, else the timing means nothing).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from dacite import Config, from_dict  # noqa: E402

from modeling_xlstm_flax import slstm  # noqa: E402
from modeling_xlstm_flax.slstm import SLSTMBlock  # noqa: E402
from modeling_xlstm_flax.config_translation import slstm_config_from_library  # noqa: E402
from modeling_xlstm_flax.library_params import block_params_from_library  # noqa: E402


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from xlstm.blocks.slstm.block import sLSTMBlock, sLSTMBlockConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = {"slstm": {"backend": "vanilla", "num_heads": args.heads, "embedding_dim": args.dim, "dtype": "float32"},
           "feedforward": {"proj_factor": 1.3, "act_fn": "gelu"}, "_num_blocks": 1, "_block_idx": 0}
    block = sLSTMBlock(from_dict(sLSTMBlockConfig, cfg, config=Config(strict=True)))
    block.reset_parameters()
    with torch.no_grad():
        block.xlstm.slstm_cell._recurrent_kernel_.add_(torch.randn_like(block.xlstm.slstm_cell._recurrent_kernel_)
                                                       * 0.05)
    block.eval()
    config, backend = slstm_config_from_library(cfg)
    sd = {k: v.detach().numpy() for k, v in block.state_dict().items()}
    params = block_params_from_library(sd, config, backend)
    cell = block.xlstm.slstm_cell
    layer = params["slstm_layer"]
    D, NH, DH, S = args.dim, args.heads, args.dim // args.heads, args.length

    recurrence = jax.jit(lambda wx: slstm.slstm_sequence(wx, layer["recurrent_kernel"], layer["bias"])[0])
    block_fn = jax.jit(lambda x: SLSTMBlock(config).apply({"params": params}, x)[0])
    report = {"dim": D, "heads": NH, "length": S, "torch_threads": 1, "xla_flags": os.environ["XLA_FLAGS"],
              "jax": jax.__version__, "torch": torch.__version__, "library_backend": "vanilla",
              "results": []}
    for batch in args.batches:
        gen = torch.Generator().manual_seed(batch)
        wx_t = torch.randn(batch, S, 4 * D, generator=gen)
        x_t = torch.randn(batch, S, D, generator=gen)
        wx_j = jnp.asarray(wx_t.numpy().reshape(batch, S, 4, NH, DH))
        x_j = jnp.asarray(x_t.numpy())
        with torch.no_grad():
            lib_cell = lambda: cell(wx_t)[0]
            lib_block = lambda: block(x_t)
            ours_cell = lambda: recurrence(wx_j).block_until_ready()
            ours_block = lambda: block_fn(x_j).block_until_ready()
            y_lib = lib_cell().permute(0, 2, 1, 3).numpy()  # (B, NH, S, DH) -> (B, S, NH, DH)
            cell_diff = float(np.abs(np.asarray(ours_cell()) - y_lib).max())
            block_diff = float(np.abs(np.asarray(ours_block()) - lib_block().numpy()).max())
            t = {name: best_time(fn, args.repeats) for name, fn in
                 (("library_cell", lib_cell), ("ours_cell", ours_cell), ("library_block", lib_block),
                  ("ours_block", ours_block))}
        tokens = batch * S
        report["results"].append({
            "batch": batch, **{f"{k}_s": round(v, 5) for k, v in t.items()},
            **{f"{k}_tok_per_s": round(tokens / v) for k, v in t.items()},
            "cell_ratio_library_over_ours": round(t["library_cell"] / t["ours_cell"], 2),
            "block_ratio_library_over_ours": round(t["library_block"] / t["ours_block"], 2),
            "cell_max_abs_diff": cell_diff, "block_max_abs_diff": block_diff})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
