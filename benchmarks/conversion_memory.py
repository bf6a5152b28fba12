"""Peak memory of the checkpoint converters on a synthetic checkpoint of real size (run by hand, not in CI).

    .venv/bin/python benchmarks/conversion_memory.py            # 2.44 GB float32 model, temp dir removed after
    .venv/bin/python benchmarks/conversion_memory.py --blocks 12 --keep --workdir /scratch/bench

Generates (in a child process) a random xLSTM (`mlstm_v1`, PyTorch-expressible: hidden 2048, 4 heads, vocab
50304, `--blocks` blocks, float32) as an xlstm-jax orbax checkpoint (upstream keys through
`loading.flax_to_upstream`, `metadata/metadata` with the upstream config), then runs each
converter in its own child process and reads that child's peak RSS (`os.wait4`, ru_maxrss):

1. orbax -> HF Flax (`xlstm-flax convert from-orbax`, one model.safetensors);
2. Flax -> PyTorch (`xlstm-flax-to-pytorch --max-shard-size 500MB`, sharded with an index);
3. PyTorch -> Flax, scanned (`xlstm-flax convert from-pytorch --set scan_blocks=true`: blocks stacked (NB, ...)).

A baseline child that only imports the converter (jax, flax, transformers, orbax) gives the fixed cost; the
report prints peak RSS, peak RSS minus baseline, both divided by the checkpoint size, and the largest tensor.
Streaming means peak - baseline stays near the largest tensor (x2 where a cast or transpose copies it), not near
the checkpoint size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1e9

GENERATE = r"""
import json, sys
from pathlib import Path
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import unflatten_dict
from modeling_xlstm_flax import load_preset
from modeling_xlstm_flax.configuration_xlstm_flax import to_upstream_config
from modeling_xlstm_flax.loading import flax_to_upstream
from modeling_xlstm_flax.loading import model_plan as flax_plan

out, blocks = Path(sys.argv[1]), int(sys.argv[2])
config = load_preset("tiny-mlstm-v1", embedding_dim=2048, num_heads=4, num_blocks=blocks, vocab_size=50304,
                     context_length=4096, cell_norm_type_v1="layernorm", chunk_size=128)
rng = np.random.default_rng(0)
params = unflatten_dict({tuple(k.split("/")): (rng.standard_normal(s, dtype=np.float32) * 0.02)
                         for k, s in flax_plan(config, scanned=False).items()})
upstream = flax_to_upstream(params, config)
del params
tree = {}
for key, value in upstream.items():
    parts = key.split("/")[1:]                      # no `params` root in the orbax item
    if "sharded" in parts:                          # upstream boxes partitioned leaves: trailing `value`
        parts.append("value")
    tree[tuple(parts)] = value
ckpt = out / "checkpoints" / "checkpoint_100"
(ckpt / "metadata").mkdir(parents=True)
ocp.PyTreeCheckpointer().save(str(ckpt / "params"), unflatten_dict(tree))
(ckpt / "metadata" / "metadata").write_text(json.dumps({"model": {"model_config": to_upstream_config(config)},
                                                         "trainer": {}, "optimizer": {}}))
print(json.dumps({"largest_tensor_bytes": max(v.nbytes for v in upstream.values())}))
"""

BASELINE = "import modeling_xlstm_flax.convert_orbax_to_hf, orbax.checkpoint, jax.numpy as jnp; jnp.zeros(1)"


def run_measured(argv: list[str], env: dict, cwd: Path) -> tuple[int, float, float, str]:
    """Run `argv` as a child in `cwd` (outside the repo, so the installed package is imported); return
    (exit status, peak RSS bytes of that child, seconds, captured output)."""
    start = time.time()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    return proc.returncode, usage.ru_maxrss * 1024.0, time.time() - start, output  # ru_maxrss is KiB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=8,
                        help="number of blocks (each ~0.2 GB float32; the embeddings and LM head add 0.82 GB); "
                             "default 8 -> 2.44 GB of float32 weights (2.3 GB as zstd-compressed orbax)")
    parser.add_argument("--workdir", default=None, help="where to generate (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated checkpoints (a later run with the same --workdir and --blocks "
                             "reuses the synthetic orbax checkpoint)")
    parser.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="xlstm-conv-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    py = sys.executable
    results = {}
    try:
        info = work / "orbax" / "generated.json"
        if info.is_file() and json.loads(info.read_text())["blocks"] == args.blocks:
            print(f"reusing the synthetic orbax checkpoint in {work / 'orbax'}", flush=True)
            secs = 0.0
        else:
            print(f"generating a synthetic orbax checkpoint in {work} ...", flush=True)
            shutil.rmtree(work / "orbax", ignore_errors=True)
            rc, rss, secs, out = run_measured([py, "-c", GENERATE, str(work / "orbax"), str(args.blocks)], env, work)
            if rc:
                print(out)
                return rc
            info.write_text(json.dumps(dict(json.loads(out.strip().splitlines()[-1]), blocks=args.blocks)))
        largest = json.loads(info.read_text())["largest_tensor_bytes"]
        for name in ("flax", "pt", "flax_scan"):  # outputs of an earlier --keep run
            shutil.rmtree(work / name, ignore_errors=True)
        from modeling_xlstm_flax.checkpoint_writer import directory_size

        size = directory_size(work / "orbax" / "checkpoints" / "checkpoint_100" / "params")
        print(f"  orbax params: {size / GB:.2f} GB, largest tensor {largest / GB:.3f} GB ({secs:.0f} s)")
        rc, baseline, _, out = run_measured([py, "-c", BASELINE], env, work)
        print(f"baseline (imports only): peak RSS {baseline / GB:.2f} GB")
        results.update(checkpoint_bytes=size, largest_tensor_bytes=largest, baseline_rss_bytes=baseline)

        mod = "modeling_xlstm_flax.convert_"
        runs = [
            ("orbax -> Flax", [py, "-m", mod + "orbax_to_hf", str(work / "orbax"), str(work / "flax"), "-q"]),
            ("Flax -> PyTorch (500MB shards)", [py, "-m", mod + "flax_to_pytorch", str(work / "flax"),
                                                str(work / "pt"), "--max-shard-size", "500MB", "-q"]),
            ("PyTorch -> Flax (scanned)", [py, "-m", mod + "pytorch_to_flax", str(work / "pt"),
                                           str(work / "flax_scan"), "--set", "scan_blocks=true", "-q"]),
        ]
        print(f"{'conversion':31s} {'input GB':>8s} {'output GB':>9s} {'peak RSS GB':>11s} {'RSS/input':>9s} "
              f"{'(RSS-base)/input':>16s} {'(RSS-base)/largest':>18s} {'seconds':>7s}")
        for name, cmd in runs:
            source = Path(cmd[3])
            in_size = directory_size(source / "checkpoints" if name.startswith("orbax") else source)
            rc, rss, secs, out = run_measured(cmd, env, work)
            if rc:
                print(f"{name} failed (exit {rc}):\n{out}")
                return rc
            out_size = directory_size(Path(cmd[4]))
            results[name] = dict(input_bytes=in_size, output_bytes=out_size, peak_rss_bytes=rss, seconds=secs,
                                 rss_over_input=rss / in_size,
                                 rss_minus_baseline_over_input=(rss - baseline) / in_size,
                                 rss_minus_baseline_over_largest_tensor=(rss - baseline) / largest)
            print(f"{name:31s} {in_size / GB:8.2f} {out_size / GB:9.2f} {rss / GB:11.2f} {rss / in_size:9.2f} "
                  f"{(rss - baseline) / in_size:16.2f} {(rss - baseline) / largest:18.2f} {secs:7.0f}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
