"""Train or fine-tune an xLSTM language model: `xlstm-flax-train` / `python -m modeling_xlstm_flax.training`.

Starts from any checkpoint this port loads (`--model DIR`), or from scratch (`--preset NAME` / `--config FILE`,
with `--set key=value` overrides). Causal LM loss, AdamW (optax) with global-norm gradient clipping, warmup +
cosine/linear/constant schedule, optional bfloat16 compute, validation perplexity, a tqdm bar, a loss curve PNG
(matplotlib, the `plot` extra) and resumable checkpoints (`--resume`). The data: CPython's `pydoc_data.topics`
by default, or text files (`--text-file`), read with `datasets`; a byte-level BPE tokenizer is trained when the
model brings none (`--tokenizer-vocab-size`).

Output dir: config.json + model.safetensors (loadable with `FlaxAutoModelForCausalLM.from_pretrained`), tokenizer
files, training_log.json (loss history, validation perplexity, arguments), loss_curve.png, checkpoints/step_N/.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from . import data as data_lib
from .cli import UsageError


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients stopped being finite: the run stops before anything of that step is saved."""


def raise_non_finite(step: int, loss: float, grad_norm: float, last_checkpoint: Optional[Path], args) -> None:
    """Stop the run: the loss or gradient norm of `step` is not finite (the step's update is discarded)."""
    raise NonFiniteLossError(
        f"step {step}: the training loss is {loss} (gradient norm {grad_norm}); stopping. Nothing from this step "
        "was saved" + (f"; the last checkpoint is {last_checkpoint}" if last_checkpoint else "")
        + f". Try a lower --lr (now {args.lr}) or --grad-clip (now {args.grad_clip}).")


# ----------------------------------------------------------------------------------------------- model and loss
def lm_loss(model, params, batch: jax.Array, dropout_rng=None, train: bool = False) -> jax.Array:
    """Mean next-token cross entropy of windows (B, S + 1); logits are float32."""
    logits = model(batch[:, :-1], params=params, dropout_rng=dropout_rng, train=train).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def decay_mask(params, include_embedding: bool):
    """Weight decay on matrices only (kernels), and on the embedding if asked."""
    flat = flatten_dict(params)
    return unflatten_dict({k: (k[-1] == "kernel" or (include_embedding and k[-1] == "embedding")) for k in flat})


def make_schedule(name: str, lr: float, warmup: int, steps: int, min_lr_ratio: float):
    warm = optax.linear_schedule(0.0, lr, max(1, warmup))
    rest = max(1, steps - warmup)
    if name == "cosine":
        main = optax.cosine_decay_schedule(lr, rest, alpha=min_lr_ratio)
    elif name == "linear":
        main = optax.linear_schedule(lr, lr * min_lr_ratio, rest)
    elif name == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"unknown schedule {name!r}; use cosine, linear or constant")
    return optax.join_schedules([warm, main], [warmup])


def make_optimizer(args, params, config):
    schedule = make_schedule(args.schedule, args.lr, args.warmup_steps, args.steps, args.min_lr_ratio)
    return optax.chain(
        optax.clip_by_global_norm(args.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=args.weight_decay,
                    mask=decay_mask(params, config.weight_decay_on_embedding)),
    ), schedule


def evaluate(loss_fn, params, windows: np.ndarray, batch_size: int) -> float:
    """Validation perplexity: exp of the token-weighted mean loss over all windows."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        total += float(loss_fn(params, chunk)) * len(chunk)
        count += len(chunk)
    return math.exp(total / count)


# ----------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(directory: Path, params, opt_state, state: dict) -> None:
    """Write step_N/{params,opt_state}.msgpack + state.json atomically (temp dir, then rename)."""
    target = directory / f"step_{state['step']:07d}"
    tmp = directory / f".tmp_{state['step']:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "params.msgpack").write_bytes(serialization.to_bytes(params))
    (tmp / "opt_state.msgpack").write_bytes(serialization.to_bytes(opt_state))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def latest_checkpoint(directory: Path) -> Optional[Path]:
    steps = sorted(directory.glob("step_*"))
    return steps[-1] if steps else None


def restore_checkpoint(path: Path, params, opt_state):
    params = serialization.from_bytes(params, (path / "params.msgpack").read_bytes())
    opt_state = serialization.from_bytes(opt_state, (path / "opt_state.msgpack").read_bytes())
    return params, opt_state, json.loads((path / "state.json").read_text())


# ----------------------------------------------------------------------------------------------- setup
def build_model_and_tokenizer(args, train_texts):
    """The model (initialised or loaded) and its tokenizer, following the command line."""
    from transformers import AutoTokenizer, FlaxAutoModelForCausalLM

    import modeling_xlstm_flax as xf
    from .configuration_xlstm_flax import parse_field_overrides

    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    tokenizer = None
    tokenizer_source = args.tokenizer or args.model
    if args.resume and (Path(args.output_dir) / "tokenizer.json").is_file():
        tokenizer_source = args.output_dir  # the tokenizer this run started with
    if tokenizer_source:
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        except (OSError, ValueError) as exc:
            if args.tokenizer:
                raise UsageError(f"cannot load tokenizer {args.tokenizer}: {exc}") from exc
    if tokenizer is None:
        tokenizer = data_lib.train_bpe_tokenizer(train_texts, args.tokenizer_vocab_size)
    if tokenizer.eos_token_id is None:
        raise UsageError("the tokenizer has no eos token; documents are joined with it")
    if args.model:
        model = FlaxAutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        if len(tokenizer) > model.config.vocab_size:
            raise UsageError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                             f"{model.config.vocab_size}")
        return model, tokenizer
    if args.config:
        config = xf.XLSTMFlaxConfig.from_json_file(args.config)
    else:
        config = xf.load_preset(args.preset)
    overrides = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     context_length=args.seq_len, compute_dtype="bfloat16" if args.bf16 else "float32")
    overrides.update(parse_field_overrides(args.set, "--set"))
    config = xf.XLSTMFlaxConfig(**{**config.to_dict(), **overrides})
    return xf.FlaxXLSTMForCausalLM(config, seed=args.seed, dtype=dtype), tokenizer


def save_loss_curve(history: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'xlstm-flax[plot]'): no loss curve", file=sys.stderr)
        return False
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], math.log(h["val_perplexity"])) for h in history if "val_perplexity" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------- main loop
def train(args) -> dict:
    from tqdm.auto import tqdm

    out = Path(args.output_dir)
    ckpt_dir = out / "checkpoints"
    documents = data_lib.load_documents(args.corpus, args.text_file)
    train_docs, val_docs = data_lib.split_documents(documents, args.val_fraction)
    model, tokenizer = build_model_and_tokenizer(args, train_docs["text"])
    config = model.config
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    train_stream = data_lib.token_stream(train_docs, tokenizer)
    val_windows = data_lib.eval_windows(data_lib.token_stream(val_docs, tokenizer), args.seq_len)

    params = model.params
    optimizer, schedule = make_optimizer(args, params, config)
    opt_state = optimizer.init(params)
    state = {"step": 0, "history": [], "args": vars(args)}
    if args.resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            raise UsageError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start afresh")
        params, opt_state, state = restore_checkpoint(path, params, opt_state)
        print(f"resumed from {path} at step {state['step']}", file=sys.stderr)

    @jax.jit
    def train_step(params, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(lambda p: lm_loss(model, p, batch, rng, train=True))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    eval_loss = jax.jit(lambda p, b: lm_loss(model, p, b))
    start_step = state["step"]
    end_step = min(args.steps, args.stop_at_step or args.steps)
    bar = tqdm(range(start_step, end_step), initial=start_step, total=args.steps, desc="train",
               disable=args.no_progress)
    t0 = time.perf_counter()
    for step in bar:
        batch = data_lib.random_windows(train_stream, args.seq_len, args.batch_size, step, args.seed)
        rng = jax.random.fold_in(jax.random.PRNGKey(args.seed), step)
        new_params, new_opt_state, loss, grad_norm = train_step(params, opt_state, batch, rng)
        if not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm))):
            bar.close()
            raise_non_finite(step + 1, float(loss), float(grad_norm), latest_checkpoint(ckpt_dir), args)
        params, opt_state = new_params, new_opt_state  # only finite updates are kept (and so ever saved)
        state["step"] = step + 1
        if (step + 1) % args.log_every == 0 or step == start_step:
            record = {"step": step + 1, "loss": float(loss), "grad_norm": float(grad_norm),
                      "lr": float(schedule(step))}
            state["history"].append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            ppl = evaluate(eval_loss, params, val_windows, args.batch_size)
            state["history"].append({"step": step + 1, "val_perplexity": ppl})
            bar.write(f"step {step + 1}: validation perplexity {ppl:.2f}")
        if args.save_every and (step + 1) % args.save_every == 0:
            save_checkpoint(ckpt_dir, params, opt_state, state)
    elapsed = time.perf_counter() - t0

    val_ppl = evaluate(eval_loss, params, val_windows, args.batch_size)
    state["history"].append({"step": state["step"], "val_perplexity": val_ppl})
    save_checkpoint(ckpt_dir, params, opt_state, state)
    model.params = params
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {
        "val_perplexity": val_ppl,
        "val_tokens": int(val_windows.shape[0] * args.seq_len),
        "train_tokens_available": int(len(train_stream)),
        "steps": state["step"],
        "seconds_this_run": elapsed,
        "num_params": int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params))),
        "corpus": "pydoc_data.topics of Python " + sys.version.split()[0] if not args.text_file else args.text_file,
        "args": vars(args),
        "history": state["history"],
    }
    (out / "training_log.json").write_text(json.dumps(summary, indent=1))
    save_loss_curve(state["history"], out / "loss_curve.png")
    print(f"validation perplexity {val_ppl:.3f} after {state['step']} steps; saved to {out}", file=sys.stderr)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlstm-flax-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model dir or Hub id to fine-tune (FlaxAutoModelForCausalLM)")
    src.add_argument("--preset", default="tiny-mlstm-v1", help="bundled config to train from scratch")
    src.add_argument("--config", help="config.json (XLSTMFlaxConfig) to train from scratch")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field for from-scratch training (JSON values), repeatable")
    p.add_argument("--tokenizer", help="tokenizer dir or Hub id (default: the model's, else train one)")
    p.add_argument("--tokenizer-vocab-size", type=int, default=4096, help="vocab size of a newly trained BPE")
    p.add_argument("--corpus", default="pydoc-topics", help="built-in corpus (pydoc-topics)")
    p.add_argument("--text-file", action="append", default=None, help="train on these text files instead")
    p.add_argument("--val-fraction", type=float, default=0.05, help="fraction of documents held out")
    p.add_argument("--output-dir", required=True, help="where the model, tokenizer, logs and checkpoints go")
    p.add_argument("--seq-len", type=int, default=128, help="training window length in tokens")
    p.add_argument("--batch-size", type=int, default=16, help="windows per step")
    p.add_argument("--steps", type=int, default=1000, help="total optimizer steps")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate / peak")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warmup steps, at most --steps (default: 100, or a tenth of --steps below 100 steps)")
    p.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine", help="decay after warmup")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices")
    p.add_argument("--grad-clip", type=float, default=1.0, help="global gradient norm clip")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute (params and optimizer stay float32)")
    p.add_argument("--eval-every", type=int, default=200, help="validation every N steps (0: only at the end)")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--log-every", type=int, default=10, help="record the train loss every N steps")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output-dir")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="end this run (with a checkpoint) at this step; the schedule still spans --steps, so a "
                        "later --resume continues the same run")
    p.add_argument("--seed", type=int, default=0, help="init and data order seed")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def check_args(args) -> None:
    """Every numeric option in range, the data and --resume usable: `UsageError` naming the option and value."""
    from .cli import UsageError

    for name in ("seq_len", "batch_size", "steps", "tokenizer_vocab_size", "log_every"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.warmup_steps is None:  # the default: never longer than the run
        args.warmup_steps = 100 if args.steps >= 100 else args.steps // 10
    for name in ("warmup_steps", "eval_every", "save_every"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.stop_at_step is not None and args.stop_at_step <= 0:
        raise UsageError(f"--stop-at-step must be positive, got {args.stop_at_step}")
    if args.steps < args.warmup_steps:
        raise UsageError(f"--steps {args.steps} is below --warmup-steps {args.warmup_steps}: the learning rate would "
                         "never reach its peak --lr; use fewer warmup steps or more steps")
    if args.set:
        if args.model:
            raise UsageError("--set changes the config of a model trained from scratch; with --model the saved "
                             "config is used (drop --set, or use --config/--preset)")
        from .configuration_xlstm_flax import parse_field_overrides

        parse_field_overrides(args.set, "--set")
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise UsageError(f"--lr must be a positive finite number, got {args.lr}")
    if not math.isfinite(args.min_lr_ratio) or not 0 <= args.min_lr_ratio <= 1:
        raise UsageError(f"--min-lr-ratio must be in [0, 1], got {args.min_lr_ratio}")
    if not math.isfinite(args.weight_decay) or args.weight_decay < 0:
        raise UsageError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    if not math.isfinite(args.grad_clip) or args.grad_clip <= 0:
        raise UsageError(f"--grad-clip must be a positive finite number, got {args.grad_clip}")
    if not (math.isfinite(args.val_fraction) and 0 < args.val_fraction < 1):
        raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    for path in args.text_file or []:
        file = Path(path)
        if not file.is_file():
            what = "is a folder; give text files" if file.is_dir() else (
                "not a regular file" if file.exists() else "no such file")
            raise UsageError(f"--text-file {path}: {what}")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--text-file {path}: cannot be read as UTF-8 text ({exc})") from None
        if not text.strip():
            raise UsageError(f"--text-file {path}: the file is empty (no text to train on)")
    if args.resume and latest_checkpoint(Path(args.output_dir) / "checkpoints") is None:
        raise UsageError(f"--resume: no checkpoint in {Path(args.output_dir) / 'checkpoints'}; run without --resume "
                         "to start afresh")


def main(argv=None) -> int:
    """The command: bad input is one line on stderr and exit status 1, before any data is read."""
    from .cli import run_command

    return run_command("xlstm-flax-train", _main, argv)


def _main(argv=None) -> int:
    from .cli import check_output_location, resolve_model_source

    args = build_parser().parse_args(argv)
    check_args(args)
    if args.model:
        args.model = resolve_model_source(args.model)
    if args.tokenizer:
        args.tokenizer = resolve_model_source(args.tokenizer, "--tokenizer", need_config=False)
    if args.config and not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    check_output_location(args.output_dir, "--output-dir")
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" bars; the training bar is the one that matters
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
