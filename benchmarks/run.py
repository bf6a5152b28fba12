"""Speed benchmark: this Flax xLSTM against transformers' PyTorch xLSTMForCausalLM and the machine's limits.

    .venv/bin/python benchmarks/run.py --out benchmarks/results/results.json

Measures, for ours and for the PyTorch reference with the same (random) weights in the same process, alternating
ours/reference run by run, median of --repeats runs after --warmup runs (min/max kept):

* prefill tokens/s and peak memory at each --seq-lens (batch 1) and each --prefill-batch (default 4x512);
* greedy `generate` of --new-tokens tokens after a --prompt-len prompt at each --decode-batches (new tokens/s,
  all sequences counted);
* per-token decode time after contexts of --decode-contexts tokens (is it flat in the context length?);
* compile time (first call) of `generate` and of the forward pass; the reference's first-call times;
* the machine's limits in the same run: float32 matmul GFLOP/s (a large jnp.dot) and memory read bandwidth, and
  our prefill / decode as fractions of them.

Writes a JSON file (--out) and PNG plots (next to it unless --plots-dir / --no-plots). Run by hand, not in CI
(tests/test_benchmark_smoke.py only checks that a tiny run produces every field). The full default run takes
tens of minutes on 2 cores, most of it in the reference's long prefills: --ref-max-seq, --ref-kernels,
--seq-lens and --repeats shrink it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _measure as M  # noqa: E402

SCHEMA_VERSION = 1


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        if item.strip():
            b, s = item.lower().split("x")
            out.append((int(b), int(s)))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results" / "results.json"), help="JSON result file")
    p.add_argument("--plots-dir", default=None, help="where the PNGs go (default: beside --out)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--config", default="xlstm-160m",
                   help="preset name or JSON config file (ours, or transformers' xLSTM config.json)")
    p.add_argument("--seq-lens", type=_ints, default=_ints("512,1024,2048,4096,8192,16384"),
                   help="prefill sequence lengths at batch 1")
    p.add_argument("--prefill-batch", type=_shapes, default=_shapes("4x512"), help="extra prefill shapes BxS")
    p.add_argument("--decode-batches", type=_ints, default=_ints("1,8"), help="generate batch sizes")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt length for generate")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens to generate / decode")
    p.add_argument("--decode-contexts", type=_ints, default=_ints("32,4096,16384"),
                   help="context lengths before the timed decode steps (batch 1)")
    p.add_argument("--compile-seq", type=int, default=2048, help="sequence length of the forward-pass compile")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median, min, max)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before (ours: includes compiling)")
    p.add_argument("--pause", type=float, default=0.2, help="seconds between alternated runs (thread pools idle)")
    p.add_argument("--no-ref", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--ref-kernels", default="chunkwise_fixed,native_sequence",
                   help="reference prefill settings to measure (see _models.py)")
    p.add_argument("--ref-max-seq", type=int, default=None,
                   help="skip reference prefills longer than this (its native loop needs ~1 min per 16k tokens)")
    p.add_argument("--native-max-seq", type=int, default=2048,
                   help="skip the native_sequence reference above this length and at batch > 1 (a Python loop over "
                        "tokens: minutes per run, and slowed badly by other load)")
    p.add_argument("--ref-prefill", choices=["last", "forward"], default="last",
                   help="reference prefill: backbone + LM head on the last position (same work as ours), or its "
                        "full forward (logits for every position, as its generate's prefill computes them)")
    p.add_argument("--no-recompile-check", action="store_true",
                   help="skip compiling generate for a second prompt length")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="merge result files (sections run separately) into --out, re-plot; runs nothing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: our core count)")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n x n float32 matmul peak test")
    p.add_argument("--bandwidth-mb", type=int, default=1024, help="array size of the read-bandwidth test")
    p.add_argument("--limit-repeats", type=int, default=5, help="runs of each machine-limit test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sections", default="limits,prefill,decode,generate,compile",
                   help="comma list of sections to run")
    p.add_argument("--workdir", default=None, help="where the temporary PyTorch checkpoint goes")
    p.add_argument("--quiet", action="store_true")
    return p


class Runner:
    def __init__(self, args):
        self.args = args
        t0 = time.perf_counter()
        self.log = (lambda *a: None) if args.quiet else (
            lambda *a: print(f"[bench {time.perf_counter() - t0:6.1f}s]", *a, file=sys.stderr, flush=True))
        self.cores = M.cpu_count()
        self.threads = args.threads or self.cores
        self.sections = {s.strip() for s in args.sections.split(",") if s.strip()}
        self.ref_kernels = [k.strip() for k in args.ref_kernels.split(",") if k.strip()]
        self.results: dict = {}
        self._states: dict = {}  # context length -> (ours cache, ours next token, ref cache, ref next token)

    # ------------------------------------------------------------------------------------------ helpers
    def pause(self):
        if self.args.pause > 0:
            time.sleep(self.args.pause)

    def alternate(self, ours_fn, ref_fns=None, work=None, unit="tokens_per_s", warmup=None):
        """Warm all, then alternate ours / each reference timed runs, run by run. ref_fns: None, a callable or a
        dict name -> callable. Returns (ours summary, reference summaries, ours' last result, references' last
        results); the reference parts are None / dicts keyed like ref_fns."""
        warmup = self.args.warmup if warmup is None else warmup
        single = callable(ref_fns)
        refs = {"_": ref_fns} if single else dict(ref_fns or {})
        last_ours, last_ref = None, {}
        mem = {}  # peak RSS rise of one call after returning freed heap memory to the OS (malloc_trim)
        for i in range(warmup):
            mem["_ours"], last_ours = M.memory_probe(ours_fn) if i == 0 else (mem["_ours"], ours_fn())
            self.pause()
            for name, fn in refs.items():
                mem[name], last_ref[name] = M.memory_probe(fn) if i == 0 else (mem[name], fn())
                self.pause()
        ours_recs, ref_recs = [], {name: [] for name in refs}
        for r in range(self.args.repeats):
            if r == 0 and not warmup:  # no warm-up: the first timed run also measures memory
                mem["_ours"], last_ours = M.memory_probe(ours_fn)
                ours_recs.append(mem["_ours"])
                self.pause()
                for name, fn in refs.items():
                    mem[name], last_ref[name] = M.memory_probe(fn)
                    ref_recs[name].append(mem[name])
                    self.pause()
                continue
            rec, last_ours = M.probe(ours_fn)
            ours_recs.append(rec)
            self.pause()
            for name, fn in refs.items():
                rec, last_ref[name] = M.probe(fn)
                ref_recs[name].append(rec)
                self.pause()
        ours = M.summarise(ours_recs, work, unit)
        ref = {name: M.summarise(recs, work, unit) for name, recs in ref_recs.items()}
        for name, s in [("_ours", ours), *ref.items()]:
            s["memory_run_peak_rss_delta_mb"] = mem[name]["peak_rss_delta_mb"] if name in mem else None
        if single:
            return ours, ref["_"], last_ours, last_ref["_"]
        return ours, (ref or None), last_ours, last_ref

    def compile(self, fn, *args):
        """jit + lower + compile; returns (compiled, seconds, XLA memory analysis dict)."""
        import jax

        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        seconds = time.perf_counter() - t0
        mem = None
        try:
            ma = compiled.memory_analysis()
            if ma is not None:
                mem = {"argument_mb": ma.argument_size_in_bytes / 2**20, "output_mb": ma.output_size_in_bytes / 2**20,
                       "temp_mb": ma.temp_size_in_bytes / 2**20, "alias_mb": ma.alias_size_in_bytes / 2**20}
                mem["peak_mb"] = mem["argument_mb"] + mem["output_mb"] + mem["temp_mb"] - mem["alias_mb"]
        except Exception:  # noqa: BLE001  (not every backend reports it)
            pass
        return compiled, seconds, mem

    def ids(self, batch, seq, salt=0):
        rng = np.random.RandomState(self.args.seed * 1000 + seq * 7 + batch + salt)
        return rng.randint(3, self.config.vocab_size, (batch, seq)).astype(np.int32)

    # ------------------------------------------------------------------------------------------ sections
    def machine(self) -> dict:
        info = {"platform": platform.platform(), "python": platform.python_version(), "cores": self.cores,
                "cpu": None, "memory_gb": None, "loadavg_start": M.loadavg()}
        text = M._read("/proc/cpuinfo") or ""
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags]
        mem = M._read("/proc/meminfo") or ""
        for line in mem.splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = int(line.split()[1]) / 2**20
        return info

    def limits(self) -> dict:
        """Float32 matmul GFLOP/s and memory read bandwidth, measured now (median, min, max)."""
        import jax
        import jax.numpy as jnp
        import torch

        a = self.args
        out = {}
        n = a.matmul_size
        x = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        y = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
        mm = jax.jit(lambda p, q: jnp.dot(p, q, precision=jax.lax.Precision.HIGHEST))
        jax.block_until_ready(mm(x, y))
        recs = [M.probe(lambda: jax.block_until_ready(mm(x, y)))[0] for _ in range(a.limit_repeats)]
        out["matmul_gflops"] = M.summarise(recs, 2 * n**3 / 1e9, "gflops")
        out["matmul_size"] = n
        # the model's own GEMM shape (tokens x embedding @ embedding x ffn) for comparison
        cfg = self.config
        s = min(2048, max(a.seq_lens or [512]))
        xm = jax.random.normal(jax.random.PRNGKey(2), (s, cfg.embedding_dim), jnp.float32)
        wm = jax.random.normal(jax.random.PRNGKey(3), (cfg.embedding_dim, cfg.ff_dim), jnp.float32)
        jax.block_until_ready(mm(xm, wm))
        recs = [M.probe(lambda: jax.block_until_ready(mm(xm, wm)))[0] for _ in range(a.limit_repeats)]
        out["model_shape_matmul_gflops"] = M.summarise(recs, 2 * s * cfg.embedding_dim * cfg.ff_dim / 1e9, "gflops")
        out["model_shape_matmul"] = [s, cfg.embedding_dim, cfg.ff_dim]
        if not a.no_ref:
            torch.set_num_threads(self.threads)
            tx, ty = torch.randn(n, n), torch.randn(n, n)
            torch.mm(tx, ty)
            recs = [M.probe(lambda: torch.mm(tx, ty))[0] for _ in range(a.limit_repeats)]
            out["torch_matmul_gflops"] = M.summarise(recs, 2 * n**3 / 1e9, "gflops")
            del tx, ty
        del x, y
        # read bandwidth: reductions over an array much larger than the caches
        count = a.bandwidth_mb * 2**20 // 4
        big = jnp.ones((count,), jnp.float32) * 1.5
        red = jax.jit(lambda v: jnp.sum(v))
        jax.block_until_ready(red(big))
        recs = [M.probe(lambda: jax.block_until_ready(red(big)))[0] for _ in range(a.limit_repeats)]
        bw = {"jax_sum": M.summarise(recs, count * 4 / 1e9, "gbytes_per_s")}
        del big
        if not a.no_ref:
            tb = torch.full((count,), 1.5)
            tb.sum()
            recs = [M.probe(lambda: tb.sum())[0] for _ in range(a.limit_repeats)]
            bw["torch_sum"] = M.summarise(recs, count * 4 / 1e9, "gbytes_per_s")
            del tb
        nb = np.full((count,), 1.5, np.float32)
        nb.sum()
        recs = [M.probe(lambda: nb.sum())[0] for _ in range(a.limit_repeats)]
        bw["numpy_sum"] = M.summarise(recs, count * 4 / 1e9, "gbytes_per_s")
        del nb
        # a limit is the best the machine did: the fastest run (other load only ever slows a run down)
        best = max(bw, key=lambda k: bw[k]["gbytes_per_s_max"])
        out["read_bandwidth"] = bw
        out["read_bandwidth_gbs"] = bw[best]["gbytes_per_s_max"]
        out["read_bandwidth_source"] = best
        out["bandwidth_mb"] = a.bandwidth_mb
        peak = max(out["matmul_gflops"]["gflops_max"], out["model_shape_matmul_gflops"]["gflops_max"])
        if "torch_matmul_gflops" in out:
            peak = max(peak, out["torch_matmul_gflops"]["gflops_max"])
        out["peak_matmul_gflops"] = peak
        out["disturbed"] = any(v.get("disturbed", False) for v in
                               [out["matmul_gflops"], out["model_shape_matmul_gflops"],
                                out.get("torch_matmul_gflops", {}), *bw.values()])
        return out

    def model_costs(self) -> dict:
        """FLOPs per prefill token, bytes per decode step, memory bound of the target."""
        cfg = self.config
        D, NH, V = cfg.embedding_dim, cfg.num_heads, cfg.vocab_size
        qk, v, ff, L = cfg.qk_dim, cfg.v_dim, cfg.ff_dim, cfg.chunk_size
        dhqk, dhv = cfg.qk_head_dim, cfg.v_head_dim
        dense = 2 * (D * (2 * qk + 2 * v) + 2 * D * NH + v * D + 3 * D * ff)  # q k v o, gates, out_proj, ffn
        cell = NH * (2 * L * dhqk + 2 * L * dhv + 4 * dhqk * dhv)  # chunkwise: qk^T, (qk)v, q C0, k^T v
        head = 2 * D * V
        counts = self.models.param_counts()
        cache1 = self.models.cache_bytes(1)
        # bytes read per decode step: all weights but the embedding table (one row), state read + written
        step_bytes = (counts["weights_bytes"] - counts["embedding"] * 4 + D * 4) + 2 * cache1
        chunk_act = 4 * L * (6 * D + 2 * qk + 4 * v + 3 * ff + NH * L)  # one chunk's activations in one block
        return {
            "params": counts,
            "flops_per_token_blocks": cfg.num_blocks * (dense + cell),
            "flops_per_token_cell": cfg.num_blocks * cell,
            "flops_lm_head_per_position": head,
            "flops_note": "prefill needs the blocks for every token and the LM head for the last position only",
            "decode_bytes_per_step_batch1": int(step_bytes),
            "cache_bytes_batch1": cache1,
            "weights_mb": counts["weights_bytes"] / 2**20,
            "one_chunk_activations_mb": chunk_act / 2**20,
            "memory_bound_16k_mb": 1.5 * (counts["weights_bytes"] + chunk_act) / 2**20,
        }

    def prefill(self) -> list:
        import jax

        a = self.args
        shapes = [(1, s) for s in a.seq_lens] + list(a.prefill_batch)
        fn = self.models.ours_prefill_fn()
        out = []
        keep = set(a.decode_contexts)
        for batch, seq in shapes:
            ids = self.ids(batch, seq)
            self.log(f"prefill {batch}x{seq}: compiling ours")
            compiled, compile_s, mem = self.compile(fn, self.models.params, ids)
            run_ours = lambda: jax.block_until_ready(compiled(self.models.params, ids))  # noqa: E731
            entry = {"batch": batch, "seq_len": seq, "tokens": batch * seq,
                     "ours": None, "reference": {}, "speedup": {}}
            ref_kernels = [] if self.models.pt is None else [
                k for k in self.ref_kernels if (a.ref_max_seq is None or seq <= a.ref_max_seq)
                and not (k == "native_sequence" and ((a.native_max_seq is not None and seq > a.native_max_seq)
                                                     or batch > 1))]
            ref_fns = {k: self._ref_prefill_call(k, ids) for k in ref_kernels}
            self.log(f"prefill {batch}x{seq}: ours vs reference {ref_kernels}")
            ours, refs, last_ours, last_ref = self.alternate(run_ours, ref_fns, batch * seq)
            for kernel, ref in (refs or {}).items():
                entry["reference"][kernel] = ref
                logits, cache = last_ref[kernel]
                ref["max_abs_logit_diff_vs_ours"] = float(np.max(np.abs(np.asarray(last_ours[0]) - logits.numpy())))
                if batch == 1 and seq in keep:
                    self._states.setdefault(seq, {})["ref"] = (cache, logits.argmax(-1).numpy())
            ours["compile_s"] = compile_s
            ours["xla_memory"] = mem
            ours["logits"] = "last position only" if self.models.logits_to_keep else "every position (sliced after)"
            entry["ours"] = ours
            for kernel, ref in entry["reference"].items():
                entry["speedup"][kernel] = ours["tokens_per_s"] / ref["tokens_per_s"]
            flops = self.costs["flops_per_token_blocks"] + self.costs["flops_lm_head_per_position"] / seq
            entry["model_gflops_per_token"] = flops / 1e9
            entry["ours_achieved_gflops"] = flops * ours["tokens_per_s"] / 1e9
            entry["ours_fraction_of_matmul_peak"] = entry["ours_achieved_gflops"] / self.peak_gflops()
            if batch == 1 and seq in keep:
                self._states.setdefault(seq, {})["ours"] = (last_ours[1], np.asarray(last_ours[0]).argmax(-1))
            out.append(entry)
            self.log(f"prefill {batch}x{seq}: ours {ours['tokens_per_s']:.0f} tok/s; " + ", ".join(
                f"{k} {r['tokens_per_s']:.0f} tok/s" for k, r in entry["reference"].items()))
            del compiled
        return out

    def _ref_prefill_call(self, kernel, ids):
        from _models import set_reference_kernel

        def call():
            set_reference_kernel(self.models.pt, kernel, self.config.chunk_size)
            return self.models.ref_prefill(ids, full_forward=self.args.ref_prefill == "forward")

        return call

    def peak_gflops(self):
        lim = self.results.get("machine", {}).get("limits")
        return lim["peak_matmul_gflops"] if lim else float("nan")

    def bandwidth(self):
        lim = self.results.get("machine", {}).get("limits")
        return lim["read_bandwidth_gbs"] if lim else float("nan")

    def _context_state(self, context: int):
        """(ours cache, ours token, ref cache, ref token) after `context` tokens at batch 1."""
        st = self._states.get(context, {})
        if "ours" not in st:
            import jax

            ids = self.ids(1, context)
            self.log(f"decode: prefill of {context} tokens (untimed)")
            logits, cache = jax.jit(self.models.ours_prefill_fn())(self.models.params, ids)
            st["ours"] = (cache, np.asarray(logits).argmax(-1))
            if self.models.pt is not None and (self.args.ref_max_seq is None or context <= self.args.ref_max_seq):
                from _models import set_reference_kernel

                kernel = self.ref_kernels[0] if self.ref_kernels else "native_sequence"
                set_reference_kernel(self.models.pt, kernel, self.config.chunk_size)
                rl, rc = self.models.ref_prefill(ids)
                st["ref"] = (rc, rl.argmax(-1).numpy())
            self._states[context] = st
        return st

    def decode(self) -> dict:
        import jax

        a = self.args
        n = a.new_tokens
        fn = self.models.ours_decode_fn(n)
        contexts = sorted(set(a.decode_contexts))
        st0 = self._context_state(contexts[0])
        token0 = np.asarray(st0["ours"][1], np.int32)
        compiled, compile_s, mem = self.compile(fn, self.models.params, st0["ours"][0], token0)
        entries = []
        for ctx in contexts:
            st = self._context_state(ctx)
            cache, token = st["ours"][0], np.asarray(st["ours"][1], np.int32)
            run_ours = lambda: jax.block_until_ready(compiled(self.models.params, cache, token))  # noqa: E731
            run_ref = None
            if "ref" in st:
                rcache, rtoken = st["ref"]
                run_ref = lambda: self.models.ref_decode(rcache, rtoken, n)  # noqa: E731
            self.log(f"decode after {ctx} tokens")
            ours, ref, last_ours, last_ref = self.alternate(run_ours, run_ref, n, "tokens_per_s")
            for s in (ours, ref):
                if s is not None:
                    s["ms_per_token"] = 1e3 * s["seconds_median"] / n
            entry = {"context": ctx, "batch": 1, "new_tokens": n, "ours": ours, "reference": ref}
            if ref is not None:
                entry["speedup"] = ours["tokens_per_s"] / ref["tokens_per_s"]
                entry["greedy_tokens_equal_fraction"] = float(np.mean(np.asarray(last_ours) == last_ref))
            bytes_step = self.costs["decode_bytes_per_step_batch1"]
            entry["ours_fraction_of_bandwidth"] = bytes_step * ours["tokens_per_s"] / (self.bandwidth() * 1e9)
            entries.append(entry)
            self.log(f"decode after {ctx}: ours {ours['ms_per_token']:.1f} ms/token"
                     + (f", reference {ref['ms_per_token']:.1f} ms/token" if ref else ""))
        base = entries[0]
        for e in entries:
            e["ours_time_ratio_vs_shortest"] = e["ours"]["seconds_median"] / base["ours"]["seconds_median"]
            if e["reference"] is not None and base["reference"] is not None:
                e["reference_time_ratio_vs_shortest"] = (e["reference"]["seconds_median"]
                                                         / base["reference"]["seconds_median"])
        return {"compile_s": compile_s, "xla_memory": mem, "bandwidth_bound_tokens_per_s":
                self.bandwidth() * 1e9 / self.costs["decode_bytes_per_step_batch1"], "contexts": entries}

    def generate(self) -> list:
        import jax

        a = self.args
        n = a.new_tokens
        fn = self.models.ours_generate_fn(n)
        out = []
        for batch in a.decode_batches:
            ids = self.ids(batch, a.prompt_len, salt=1)
            self.log(f"generate batch {batch}: compiling ours")
            t0 = time.perf_counter()
            compiled, compile_s, mem = self.compile(fn, self.models.params, ids)
            jax.block_until_ready(compiled(self.models.params, ids))
            first_call_s = time.perf_counter() - t0
            run_ours = lambda: jax.block_until_ready(compiled(self.models.params, ids))  # noqa: E731
            run_ref = None
            ref_first = None
            if self.models.pt is not None:
                run_ref = lambda: self.models.ref_generate(ids, n)  # noqa: E731
                t0 = time.perf_counter()
                run_ref()
                ref_first = time.perf_counter() - t0
            self.log(f"generate batch {batch}: timing")
            ours, ref, last_ours, last_ref = self.alternate(run_ours, run_ref, batch * n, warmup=0)
            ours.update(compile_s=compile_s, first_call_s=first_call_s, xla_memory=mem)
            entry = {"batch": batch, "prompt_len": a.prompt_len, "new_tokens": n, "ours": ours, "reference": ref}
            if ref is not None:
                ref["first_call_s"] = ref_first
                entry["speedup"] = ours["tokens_per_s"] / ref["tokens_per_s"]
                got = np.asarray(last_ours)[:, a.prompt_len:]
                want = np.asarray(last_ref)[:, a.prompt_len:]
                entry["greedy_tokens_equal_fraction"] = float(np.mean(got == want)) if got.shape == want.shape \
                    else 0.0
            if batch == 1:
                entry["ours_fraction_of_bandwidth"] = (self.costs["decode_bytes_per_step_batch1"]
                                                       * ours["tokens_per_s"] / (self.bandwidth() * 1e9))
            out.append(entry)
            self.log(f"generate batch {batch}: ours {ours['tokens_per_s']:.1f} new tok/s"
                     + (f", reference {ref['tokens_per_s']:.1f}" if ref else ""))
            del compiled
        return out

    def compile_times(self) -> dict:
        """First call of the forward pass (no cache) and of generate: compile seconds and first-call seconds."""
        import jax

        a = self.args
        out = {}
        ids = self.ids(1, a.compile_seq, salt=2)
        t0 = time.perf_counter()
        compiled, compile_s, mem = self.compile(self.models.ours_forward_fn(), self.models.params, ids)
        jax.block_until_ready(compiled(self.models.params, ids))
        out["forward"] = {"seq_len": a.compile_seq, "compile_s": compile_s,
                          "first_call_s": time.perf_counter() - t0, "xla_memory": mem}
        del compiled
        gen1 = next((e for e in self.results.get("generate", []) if e["batch"] == 1), None)
        if gen1 is not None:  # the generate section's first compile (batch 1)
            out["generate"] = {"batch": 1, "prompt_len": gen1["prompt_len"], "new_tokens": gen1["new_tokens"],
                               "compile_s": gen1["ours"]["compile_s"], "first_call_s": gen1["ours"]["first_call_s"]}
        gen_ids = self.ids(1, a.prompt_len + 1, salt=3)
        if gen1 is None or not a.no_recompile_check:
            # a prompt length not compiled before: what every new prompt length costs (no bucketing yet)
            t0 = time.perf_counter()
            compiled, compile_s, _ = self.compile(self.models.ours_generate_fn(a.new_tokens), self.models.params,
                                                  gen_ids)
            jax.block_until_ready(compiled(self.models.params, gen_ids))
            entry = {"batch": 1, "prompt_len": a.prompt_len + 1, "new_tokens": a.new_tokens,
                     "compile_s": compile_s, "first_call_s": time.perf_counter() - t0}
            out["generate_new_prompt_length"] = entry
            out.setdefault("generate", entry)
        if self.models.pt is not None:
            t0 = time.perf_counter()
            self.models.ref_forward(ids[:, : min(a.compile_seq, 256)])
            out["reference_forward_first_call_s"] = time.perf_counter() - t0
            out["reference_note"] = "PyTorch eager: no compile step; first-call times of forward on up to 256 " \
                                    "tokens, generate's in generate[].reference.first_call_s"
        return out

    # ------------------------------------------------------------------------------------------ targets
    # ------------------------------------------------------------------------------------------ main
    def run(self) -> dict:
        import jax

        a = self.args
        from _models import Models, load_config

        self.config = load_config(a.config)
        self.results["schema_version"] = SCHEMA_VERSION
        self.results["meta"] = {
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name] + sys.argv),
            "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()},
            "versions": _versions(),
            "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()],
            "torch_threads": self.threads,
        }
        self.results["machine"] = self.machine()
        if "limits" in self.sections:
            self.log("machine limits")
            self.results["machine"]["limits"] = self.limits()
        self.log(f"building models from {a.config}")
        self.models = Models(self.config, seed=a.seed, threads=self.threads, workdir=a.workdir,
                             with_reference=not a.no_ref, log=self.log)
        self.costs = self.model_costs()
        self.results["model"] = {"config": a.config, "config_fields": self.config.to_dict(), **self.costs,
                                 "loader": self.models.loader, "dtype": "float32",
                                 "chunk_size": self.config.chunk_size,
                                 "sequence_kernel": self.config.sequence_kernel,
                                 "prefill_logits_last_only": self.models.logits_to_keep,
                                 "prefill_segment_size": getattr(self.models.model.config, "prefill_segment_size",
                                                                 None)}
        self.results["reference"] = self.reference_info()
        try:
            for name, fn in (("prefill", self.prefill), ("decode", self.decode), ("generate", self.generate),
                             ("compile", self.compile_times)):
                if name in self.sections:
                    self.results[name] = fn()
                    self.save_partial()
            if "limits" in self.sections:  # again at the end: the peak is the better of the two
                self.log("machine limits (again)")
                again = self.limits()
                lim = self.results["machine"]["limits"]
                lim["at_end"] = again
                lim["peak_matmul_gflops"] = max(lim["peak_matmul_gflops"], again["peak_matmul_gflops"])
                lim["read_bandwidth_gbs"] = max(lim["read_bandwidth_gbs"], again["read_bandwidth_gbs"])
                self._refresh_fractions()
        finally:
            self.models.close()
        self.results["machine"]["loadavg_end"] = M.loadavg()
        self.results["targets"] = targets(self.results)
        self.results["disturbed"] = _any_disturbed(self.results)
        self.results["meta"]["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        return self.results

    def save_partial(self):
        """What has been measured so far, to --out + '.partial' (a long run that is stopped keeps its sections)."""
        path = Path(self.args.out + ".partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_jsonable(self.results), indent=1))

    def _refresh_fractions(self):
        peak, bw = self.peak_gflops(), self.bandwidth()
        for e in self.results.get("prefill", []):
            e["ours_fraction_of_matmul_peak"] = e["ours_achieved_gflops"] / peak
        for e in self.results.get("decode", {}).get("contexts", []):
            e["ours_fraction_of_bandwidth"] = (self.costs["decode_bytes_per_step_batch1"]
                                               * e["ours"]["tokens_per_s"] / (bw * 1e9))
        if "decode" in self.results:
            self.results["decode"]["bandwidth_bound_tokens_per_s"] = (
                bw * 1e9 / self.costs["decode_bytes_per_step_batch1"])
        for e in self.results.get("generate", []):
            if "ours_fraction_of_bandwidth" in e:
                e["ours_fraction_of_bandwidth"] = (self.costs["decode_bytes_per_step_batch1"]
                                                   * e["ours"]["tokens_per_s"] / (bw * 1e9))

    def reference_info(self) -> dict:
        if self.models.pt is None:
            return {"skipped": True}
        import torch
        import transformers

        return {
            "skipped": False,
            "library": f"transformers {transformers.__version__} xLSTMForCausalLM, torch {torch.__version__}",
            "dtype": "float32", "torch_threads": torch.get_num_threads(), "inference_mode": True,
            "mode": self.models.pt_config.mode, "chunk_size": self.config.chunk_size,
            "prefill_kernels": {
                "chunkwise_fixed": "its chunkwise--native_autograd kernel at chunk_size, two shape bugs of 4.57.6 "
                                   "fixed by the benchmark (see benchmarks/_models.py)",
                "native_sequence": "unmodified: chunk_size > sequence, so its native recurrent sequence kernel "
                                   "(Python loop over time) runs",
            },
            "prefill_kernels_measured": self.ref_kernels,
            "prefill_logits": ("backbone + LM head on the last position" if self.args.ref_prefill == "last" else
                               "full forward: LM head on every position (as its generate's prefill)"),
            "decode_kernel": "native step kernel (one token with xLSTMCache)",
            "generate": "model.generate(do_sample=False), end-of-sequence id set to vocab_size (never emitted)",
            "fix_installed": getattr(self.models, "reference_fix_installed", None),
            "notes": self.models.notes,
        }


def targets(r: dict) -> list:
    """The issue's targets, evaluated on a results dict (value None where the run did not measure it)."""
    out = []

    def add(name, value, target, op, note=""):
        met = None if value is None else bool(value >= target if op == ">=" else value <= target)
        out.append({"name": name, "value": value, "target": target, "op": op, "met": met, "note": note})

    kernels = r.get("reference", {}).get("prefill_kernels_measured") or []
    pre = {(e["batch"], e["seq_len"]): e for e in r.get("prefill", [])}
    p2k = pre.get((1, 2048))
    for kernel in kernels:
        add(f"prefill 2k speedup vs reference[{kernel}]", p2k["speedup"].get(kernel) if p2k else None, 2.0, ">=")
    add("prefill 2k fraction of matmul peak", p2k["ours_fraction_of_matmul_peak"] if p2k else None, 0.6, ">=")
    gen = {e["batch"]: e for e in r.get("generate", [])}
    add("decode batch 1 speedup", gen[1].get("speedup") if 1 in gen else None, 1.5, ">=",
        "greedy generate, new tokens/s")
    add("decode batch 1 fraction of bandwidth bound", gen[1].get("ours_fraction_of_bandwidth") if 1 in gen else None,
        0.8, ">=", "generate incl. its prompt prefill")
    add("decode batch 8 speedup", gen[8].get("speedup") if 8 in gen else None, 3.0, ">=")
    dec = r.get("decode", {}).get("contexts", [])
    last = dec[-1] if dec else None
    add(f"decode time after {last['context'] if last else 16384} tokens / after {dec[0]['context'] if dec else 32}",
        last["ours_time_ratio_vs_shortest"] if last and len(dec) > 1 else None, 1.10, "<=")
    longest = max((s for b, s in pre if b == 1), default=None)
    p_long = pre.get((1, longest)) if longest and longest > 2048 else None
    add(f"prefill tokens/s at {p_long['seq_len'] if p_long else 16384} / at 2048",
        p_long["ours"]["tokens_per_s"] / p2k["ours"]["tokens_per_s"] if (p2k and p_long) else None, 0.75, ">=")
    mem = (p_long or {}).get("ours", {}).get("xla_memory")
    bound = r.get("model", {}).get("memory_bound_16k_mb")
    add(f"prefill {p_long['seq_len'] if p_long else 16384} peak memory (XLA) / bound",
        (mem["peak_mb"] / bound) if (mem and bound) else None, 1.0, "<=",
        "bound = 1.5 x (float32 weights + one chunk's activations)")
    gc = r.get("compile", {}).get("generate")
    add("generate compile seconds", gc["compile_s"] if gc else None, 20.0, "<=")
    return out


def merge(paths: list) -> dict:
    """Several result files of the same model and machine (e.g. sections run separately) as one: sections are
    taken from the first file that has them (prefill entries from all, by shape); machine limits from the first
    file that measured them. Every file keeps its own measurements' min/max/median and disturbed flags."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    out = dict(parts[0])
    out["meta"] = dict(parts[0]["meta"])
    out["meta"]["merged_from"] = [{"file": str(p), "command": d["meta"]["command"], "started": d["meta"]["started"],
                                   "finished": d["meta"].get("finished")} for p, d in zip(paths, parts)]
    seen, prefill = set(), []
    for d in parts:  # prefill entries of all files, the first file's where two measured the same shape
        for e in d.get("prefill") or []:
            if (e["batch"], e["seq_len"]) not in seen:
                seen.add((e["batch"], e["seq_len"]))
                prefill.append(e)
    out["prefill"] = sorted(prefill, key=lambda e: (e["batch"], e["seq_len"]))
    for key in ("decode", "generate", "compile"):
        for d in parts:
            if d.get(key):
                out[key] = d[key]
                break
        else:
            out.pop(key, None)
    for d in parts:
        if d.get("machine", {}).get("limits"):
            out["machine"] = d["machine"]
            break
    kernels = []
    for d in parts:
        for k in d.get("reference", {}).get("prefill_kernels_measured") or []:
            if k not in kernels:
                kernels.append(k)
    if "reference" in out and kernels:
        out["reference"] = dict(out["reference"], prefill_kernels_measured=kernels)
    out["targets"] = targets(out)
    out["disturbed"] = _any_disturbed(out)
    return out


def _versions() -> dict:
    out = {}
    for name in ("jax", "jaxlib", "flax", "transformers", "torch", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


def _any_disturbed(obj) -> bool:
    if isinstance(obj, dict):
        if obj.get("disturbed") is True and "seconds_median" in obj:
            return True
        return any(_any_disturbed(v) for k, v in obj.items() if k != "disturbed")
    if isinstance(obj, list):
        return any(_any_disturbed(v) for v in obj)
    return False


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    runner = Runner(args)
    results = merge(args.merge) if args.merge else runner.run()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        import _plots

        plots_dir = Path(args.plots_dir) if args.plots_dir else out.parent
        results["plots"] = _plots.make_all(results, plots_dir, prefix=out.stem)
    else:
        results["plots"] = []
    out.write_text(json.dumps(_jsonable(results), indent=1))
    Path(args.out + ".partial").unlink(missing_ok=True)
    runner.log(f"wrote {out}")
    if not args.quiet:
        import _report

        print(_report.table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
