"""Host memory and time of loading an xLSTM-7B-shaped checkpoint (run by hand, never in CI; needs ~30 GB of disk).

    .venv/bin/python benchmarks/checkpoint_memory.py --workdir /scratch/ckpt           # the whole run
    .venv/bin/python benchmarks/checkpoint_memory.py --workdir /scratch/ckpt --keep --only load

Writes (in a child process, never committed) a random checkpoint in transformers' PyTorch xLSTM layout at
NX-AI/xLSTM-7b's shapes (preset `xlstm-7b`: 6.87B params, float32, 6 safetensors shards + index, 27.5 GB) with
this package's own writer, then runs each measurement in its own child process:

* `load`: the one-line load, `FlaxAutoModelForCausalLM.from_pretrained(dir, param_dtype=jnp.bfloat16)`;
* `convert`: `xlstm-flax convert from-pytorch dir out --dtype bfloat16` (streaming conversion to the Flax layout);
* `sharded`: `sharding.from_pretrained_sharded(dir, mesh, param_dtype=jnp.bfloat16)` on the one CPU device;
* `forward`: the loaded bfloat16 model's forward on 1 x 16 tokens (compute bfloat16), CPU.

For each: wall time, peak anonymous RSS (`RssAnon` of /proc/<pid>/status, sampled every 50 ms: the process's own
memory, without the page cache of the mapped checkpoint files) and peak RSS (`VmHWM`, file-backed pages
included), and the exit status (a child killed for memory reports it). Results as JSON on stdout and in
`--out`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GIB = 1024 ** 3

GENERATE = r"""
import sys
from pathlib import Path
import numpy as np
from modeling_xlstm_flax import load_preset
from modeling_xlstm_flax.checkpoint_writer import OutTensor, write_checkpoint
from modeling_xlstm_flax.configuration_xlstm_flax import to_transformers_config
from modeling_xlstm_flax.loading import model_plan
from modeling_xlstm_flax import param_table

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
config = load_preset("xlstm-7b", compute_dtype="bfloat16", reset_at_document_boundaries=False)  # PyTorch-expressible
to_transformers_config(config).to_json_file(str(out / "config.json"), use_diff=False)
rng = np.random.default_rng(0)
def tensor(name, shape):
    def parts():  # generated in row blocks, so the writer never holds more than one block
        rows = shape[0]
        step = max(1, (1 << 26) // max(1, int(np.prod(shape[1:], dtype=np.int64)) * 4))
        for start in range(0, rows, step):
            yield (rng.standard_normal((min(step, rows - start),) + tuple(shape[1:]), dtype=np.float32) * 0.02)
    pt = param_table.flax_to_pytorch_name(name)
    return OutTensor(tuple(pt.split(".")), param_table.flax_to_pytorch_shape(name, shape), np.dtype(np.float32), parts)
tensors = [tensor(n, s) for n, s in model_plan(config, scanned=False).items()]
total = sum(t.nbytes for t in tensors)
write_checkpoint(out, tensors, metadata_format="pt", max_shard_size=total // 6 + (1 << 20))
print(total)
"""

MEASURE = {
    "load": r"""
import sys, jax.numpy as jnp
import modeling_xlstm_flax
modeling_xlstm_flax.register_auto_classes()
from transformers import FlaxAutoModelForCausalLM
model = FlaxAutoModelForCausalLM.from_pretrained(sys.argv[1], param_dtype=jnp.bfloat16)
print(sum(x.size for x in __import__("jax").tree_util.tree_leaves(model.params)))
""",
    "convert": r"""
import sys
from modeling_xlstm_flax.convert_common import main
raise SystemExit(main("from-pytorch", [sys.argv[1], sys.argv[2], "--dtype", "bfloat16", "-q"]))
""",
    "sharded": r"""
import sys, jax.numpy as jnp
from modeling_xlstm_flax import sharding
model, params = sharding.from_pretrained_sharded(sys.argv[1], sharding.make_mesh(), param_dtype=jnp.bfloat16)
print(sum(x.size for x in __import__("jax").tree_util.tree_leaves(params)))
""",
    "forward": r"""
import sys, numpy as np, jax, jax.numpy as jnp
import modeling_xlstm_flax
modeling_xlstm_flax.register_auto_classes()
from transformers import FlaxAutoModelForCausalLM
model = FlaxAutoModelForCausalLM.from_pretrained(sys.argv[1], param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
logits = model(np.arange(16, dtype=np.int32)[None] % 1000).logits
print(float(jnp.abs(logits).max()))
""",
}


def _status(pid: int) -> dict[str, int]:
    """RssAnon (the process's own resident memory) and VmHWM (peak resident set, file pages included), bytes."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in ("RssAnon", "VmHWM"):
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def run_child(code: str, *argv: str) -> dict:
    """Run `code` in a fresh Python; wall time, sampled peak RssAnon, ru_maxrss, exit status, last output line."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peak = {"RssAnon": 0, "VmHWM": 0}

    def sample():
        while proc.poll() is None:
            for key, value in _status(proc.pid).items():
                peak[key] = max(peak[key], value)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    status = proc.returncode
    sampler.join()
    wall = time.perf_counter() - start
    return {"seconds": round(wall, 1), "peak_rss_anon_gib": round(peak["RssAnon"] / GIB, 2),
            "peak_rss_gib": round(peak["VmHWM"] / GIB, 2), "exit_status": status,
            "output": (out.strip().splitlines() or [""])[-1], "error": err.strip().splitlines()[-1:] if status else []}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="where the 27.5 GB checkpoint goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoint (reused next time)")
    parser.add_argument("--only", nargs="*", choices=sorted(MEASURE), default=None)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="xlstm-7b-ckpt-"))
    checkpoint = work / "pytorch-7b"
    results: dict = {}
    try:
        if not (checkpoint / "model.safetensors.index.json").is_file():
            results["generate"] = run_child(GENERATE, str(checkpoint))
            print("generate", json.dumps(results["generate"]), flush=True)
            if results["generate"]["exit_status"] != 0:
                return 1
        for name in args.only or list(MEASURE):
            extra = [str(work / "flax-7b-bf16")] if name == "convert" else []
            shutil.rmtree(work / "flax-7b-bf16", ignore_errors=True)
            results[name] = run_child(MEASURE[name], str(checkpoint), *extra)
            print(name, json.dumps(results[name]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
