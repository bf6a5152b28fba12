"""Train or fine-tune an xLSTM language model: `xlstm-flax train` / `python -m modeling_xlstm_flax.training`.

Starts from any checkpoint this port loads (`--model DIR`), or from scratch (`--preset NAME` / `--config FILE`,
with `--set key=value` overrides). AdamW (optax) with global-norm gradient clipping, warmup + cosine/linear/constant
schedule, optional bfloat16 compute, validation perplexity, a tqdm bar, a loss curve PNG (matplotlib, the `plot`
extra). Data: CPython's `pydoc_data.topics` by default, or text files (`--text-file`), read with `datasets`; a
byte-level BPE tokenizer is trained when the model brings none. Each step trains on windows of `--seq-len` tokens
(seq_len - 1 next-token predictions each, as transformers' causal-LM loss with labels = input_ids).

The step is `sharded_steps.sharded_train_step` (loss `causal_lm_loss`) on a device mesh (`sharding.make_mesh`):
one device by default; `--mesh-data/--mesh-fsdp/--mesh-tensor N` for data / fully sharded data / tensor parallelism
on the first data*fsdp*tensor devices. Validation: `sharded_forward` + `causal_lm_loss` on the same mesh.

Output dir: config.json + model.safetensors (`FlaxXLSTMForCausalLM.from_pretrained`), tokenizer files,
training_log.json (history, validation perplexity, arguments), loss_curve.png (these replace the previous ones
together at the end: `safe_output.atomic_output_dir`), run/ (the run's arguments, config and tokenizer, written at
its start) and checkpoints/step_N/{params,opt_state,state} by orbax-checkpoint's `CheckpointManager` (atomic: a
temporary folder renamed when complete; the newest `--keep-checkpoints` kept). A non-empty output dir needs
`--resume` or `--overwrite` (`training_io`). `--resume` restores the newest readable checkpoint onto the current
mesh (any mesh) with the run's saved options. The JSON state holds step, seed (data order and dropout rng are
functions of seed and step), history and arguments.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .cli import UsageError, add_set_option
from .safe_output import TOKENIZER_FILES, atomic_output_dir
from . import training_io
from .training_io import (
    FINAL_FILES, RUN_DIR, NonFiniteLossError, _last_checkpoint, _one_line, check_output_dir, check_same_architecture,
    checkpoint_manager, import_orbax, merge_resumed_args, restore_newest_readable, save_checkpoint, save_run_files,
)

# jax, optax, flax and the sharded steps are imported inside the functions that use them, so that building the
# parser (`xlstm-flax train --help`) imports none of them.


# ----------------------------------------------------------------------------------------------- optimizer
def decay_mask(params, include_embedding: bool):
    """Weight decay on matrices only (kernels), and on the embedding if asked."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    flat = flatten_dict(params)
    return unflatten_dict({k: (k[-1] == "kernel" or (include_embedding and k[-1] == "embedding")) for k in flat})


def make_schedule(name: str, lr: float, warmup: int, steps: int, min_lr_ratio: float):
    import optax

    rest = max(1, steps - warmup)
    decay = {"cosine": lambda: optax.cosine_decay_schedule(lr, rest, alpha=min_lr_ratio),
             "linear": lambda: optax.linear_schedule(lr, lr * min_lr_ratio, rest),
             "constant": lambda: optax.constant_schedule(lr)}
    if name not in decay:
        raise ValueError(f"unknown schedule {name!r}; use cosine, linear or constant")
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(1, warmup)), decay[name]()], [warmup])


def make_optimizer(args, params, config):
    import optax

    schedule = make_schedule(args.schedule, args.lr, args.warmup_steps, args.steps, args.min_lr_ratio)
    return optax.chain(
        optax.clip_by_global_norm(args.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=args.weight_decay,
                    mask=decay_mask(params, config.weight_decay_on_embedding)),
    ), schedule


@functools.lru_cache(maxsize=None)
def _first_rows_loss():
    """The compiled mean loss of the first n rows of (logits, ids) (made on first use, when jax is imported)."""
    import jax

    from .sharded_steps import causal_lm_loss

    return jax.jit(lambda logits, ids, n: causal_lm_loss(logits[:n], ids[:n]), static_argnums=2)


def evaluate(forward, params, windows: np.ndarray, batch_size: int) -> float:
    """Validation perplexity: exp of the mean `causal_lm_loss` over all windows (each has seq_len - 1 targets);
    `forward` is a `sharded_forward`."""
    total = 0.0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]  # the last one padded with copies: one forward program for all
        n = len(chunk)
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - n, axis=0)])
        total += float(_first_rows_loss()(forward(params, chunk), chunk, n)) * n
    return math.exp(total / len(windows))


# ----------------------------------------------------------------------------------------------- setup
def build_model_and_tokenizer(args, train_texts):
    """(model without params, its loaded params or None for a new model, tokenizer), following the command line."""
    import jax.numpy as jnp

    from transformers import AutoTokenizer

    import modeling_xlstm_flax as xf
    from .configuration_xlstm_flax import parse_field_overrides

    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    tokenizer = None
    tokenizer_source = args.tokenizer or args.model
    run_tokenizer = Path(args.output_dir) / RUN_DIR / "tokenizer"
    if args.resume and run_tokenizer.is_dir():
        tokenizer_source = str(run_tokenizer)  # the tokenizer this run started with
    elif args.resume and (Path(args.output_dir) / "tokenizer.json").is_file():
        tokenizer_source = args.output_dir  # (runs written before run/ existed)
    if tokenizer_source:
        local = Path(tokenizer_source)
        if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
            option = "--tokenizer" if args.tokenizer else "--model"
            raise UsageError(f"{option} {tokenizer_source}: the folder has no tokenizer files (tokenizer.json, "
                             "tokenizer_config.json)" + ("; give the model's tokenizer with --tokenizer DIR_OR_ID"
                                                         if option == "--model" else ""))
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            option = "--tokenizer" if args.tokenizer else "--model"
            raise UsageError(f"{option} {tokenizer_source}: cannot load its tokenizer ({_one_line(exc)})") from None
    if tokenizer is None:
        tokenizer = training_io.train_bpe_tokenizer(train_texts, args.tokenizer_vocab_size)
    if tokenizer.eos_token_id is None:
        raise UsageError("the tokenizer has no eos token; documents are joined with it")
    if args.model:
        # our class reads our config and transformers' xLSTMConfig folders alike, under both transformers majors
        model, params = xf.FlaxXLSTMForCausalLM.from_pretrained(args.model, dtype=dtype, param_dtype=jnp.float32,
                                                                _do_init=False)
        if len(tokenizer) > model.config.vocab_size:
            raise UsageError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                             f"{model.config.vocab_size}")
        return model, params, tokenizer
    if args.config:
        config = xf.XLSTMFlaxConfig.from_json_file(args.config)
    else:
        config = xf.load_preset(args.preset)
    overrides = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     context_length=args.seq_len, compute_dtype="bfloat16" if args.bf16 else "float32")
    overrides.update(parse_field_overrides(args.set, "--set"))
    config = xf.XLSTMFlaxConfig(**{**config.to_dict(), **overrides})
    return xf.FlaxXLSTMForCausalLM(config, dtype=dtype, _do_init=False), None, tokenizer


def save_loss_curve(history: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no loss curve", file=sys.stderr)
        return False
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], math.log(h["val_perplexity"])) for h in history if "val_perplexity" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    for points, style, label in ((train, "-", "train loss"), (val, "o-", "validation loss")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set(xlabel="step", ylabel="cross entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------- main loop
def _train_loop(args, model, mesh, optimizer, schedule, forward, params, opt_state, state, train_stream,
                val_windows, manager):
    """Steps state["step"] .. end: validation and checkpoints on the way; stops at a non-finite loss or gradient."""
    import jax
    from tqdm.auto import tqdm

    from .sharded_steps import sharded_train_step

    train_step = sharded_train_step(model, mesh, optimizer, with_grad_norm=True, skip_non_finite=True)
    start_step, seed = state["step"], state.get("seed", args.seed)
    end_step = min(args.steps, args.stop_at_step or args.steps)
    bar = tqdm(range(start_step, end_step), initial=start_step, total=args.steps, desc="train",
               disable=args.no_progress)
    t0 = time.perf_counter()
    for step in bar:
        batch = training_io.random_windows(train_stream, args.seq_len - 1, args.batch_size, step, seed)
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        params, opt_state, loss, grad_norm = train_step(params, opt_state, batch, dropout_rng=rng)
        loss, grad_norm = float(loss), float(grad_norm)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):  # the step kept the previous params and state
            bar.close()
            raise NonFiniteLossError(
                f"step {step + 1}: the training loss is {loss} (gradient norm {grad_norm}); stopping. Nothing from "
                f"this step was saved{_last_checkpoint(manager)}. Try a lower --lr (now {args.lr}) or --grad-clip "
                f"(now {args.grad_clip}).")
        state["step"] = step + 1
        if (step + 1) % args.log_every == 0 or step == start_step:
            state["history"].append({"step": step + 1, "loss": loss, "grad_norm": grad_norm,
                                     "lr": float(schedule(step))})
            bar.set_postfix(loss=f"{loss:.3f}")
            if args.no_progress:  # no bar to show the loss on: one line per --log-every steps
                bar.write(f"step {step + 1}: loss {loss:.3f}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            ppl = evaluate(forward, params, val_windows, args.batch_size)
            state["history"].append({"step": step + 1, "val_perplexity": ppl})
            bar.write(f"step {step + 1}: validation perplexity {ppl:.2f}")
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < end_step:
            save_checkpoint(manager, params, opt_state, state)  # (the last step's after the final validation)
    return params, opt_state, state, time.perf_counter() - t0


def train(args) -> dict:
    import jax

    from .sharded_steps import init_sharded_optimizer_state, sharded_forward
    from .sharding import init_sharded_params, make_mesh, shard_params

    out = Path(args.output_dir)
    documents = training_io.load_documents(args.corpus, args.text_file)
    train_docs, val_docs = training_io.split_documents(documents, args.val_fraction)
    model, params, tokenizer = build_model_and_tokenizer(args, train_docs["text"])
    config = model.config
    if args.resume:
        check_same_architecture(out, config)
    # windows of seq_len tokens; validation windows overlap by one token, so every token but the first is a target
    train_stream = training_io.token_stream(train_docs, tokenizer)
    val_stream = training_io.token_stream(val_docs, tokenizer)
    training_io.check_window_length(args.seq_len, len(train_stream), len(val_stream), "--seq-len")
    val_windows = training_io.eval_windows(val_stream, args.seq_len - 1)
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:  # a new run (--overwrite: the previous run's checkpoints go; its model stays until the end)
        for name in ("checkpoints", "corrupt_checkpoints"):
            shutil.rmtree(out / name, ignore_errors=True)
        save_run_files(out, args, config, tokenizer)

    mesh = make_mesh(args.mesh_data, args.mesh_fsdp, args.mesh_tensor)
    if mesh.size < jax.device_count():
        print(f"training on {mesh.size} of {jax.device_count()} devices (--mesh-data/--mesh-fsdp/--mesh-tensor)",
              file=sys.stderr)
    if params is None:  # a new model: initialised straight onto the mesh, as FlaxXLSTMForCausalLM(seed=...) would
        params = init_sharded_params(model, mesh, jax.random.PRNGKey(args.seed))
    else:
        params = shard_params(params, config, mesh)
    optimizer, schedule = make_optimizer(args, params, config)
    opt_state = init_sharded_optimizer_state(optimizer, params, config, mesh)
    forward = sharded_forward(model, mesh)
    state = {"step": 0, "seed": args.seed, "history": [], "args": vars(args)}
    if args.resume:
        params, opt_state, state = restore_newest_readable(out / "checkpoints", params, opt_state)
        state["args"] = vars(args)
        print(f"resumed from {out / 'checkpoints'} at step {state['step']}", file=sys.stderr)
    manager = checkpoint_manager(out / "checkpoints", args.keep_checkpoints, create=True)
    try:
        params, opt_state, state, elapsed = _train_loop(args, model, mesh, optimizer, schedule, forward, params,
                                                        opt_state, state, train_stream, val_windows, manager)
        last = state["history"][-1] if state["history"] else {}
        if last.get("step") == state["step"] and "val_perplexity" in last:  # validated at this step already
            val_ppl = last["val_perplexity"]
        else:
            val_ppl = evaluate(forward, params, val_windows, args.batch_size)
            state["history"].append({"step": state["step"], "val_perplexity": val_ppl})
        if manager.latest_step() != state["step"]:  # (equal: resumed at the end, nothing new)
            save_checkpoint(manager, params, opt_state, state)
    finally:
        manager.close()  # waits for the checkpoint being written
    summary = {
        "val_perplexity": val_ppl,
        "val_tokens": int(val_windows.shape[0] * (args.seq_len - 1)),
        "train_tokens_available": int(len(train_stream)),
        "steps": state["step"],
        "seconds_this_run": elapsed,
        "num_params": int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params))),
        "corpus": "pydoc_data.topics of Python " + sys.version.split()[0] if not args.text_file else args.text_file,
        "args": vars(args),
        "history": state["history"],
    }
    # the model, tokenizer, log and curve replace the previous ones together (checkpoints/ and run/ carried over)
    with atomic_output_dir(out, True, owned=FINAL_FILES, keep_others=True, option="--output-dir") as tmp:
        model.save_pretrained(tmp, params=params)
        tokenizer.save_pretrained(tmp)
        (tmp / "training_log.json").write_text(json.dumps(summary, indent=1))
        save_loss_curve(state["history"], tmp / "loss_curve.png")
    print(f"validation perplexity {val_ppl:.3f} after {state['step']} steps; saved to {out}", file=sys.stderr)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlstm-flax train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model dir or Hub id to fine-tune (an xlstm_flax or transformers xlstm checkpoint)")
    src.add_argument("--preset", default="tiny-mlstm-v1", help="bundled config to train from scratch")
    src.add_argument("--config", help="config.json (XLSTMFlaxConfig) to train from scratch")
    add_set_option(p, "set a config field for from-scratch training (repeatable; VALUE is JSON where it parses, "
                      "e.g. --set embedding_dim=128)")
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
    p.add_argument("--resume", action="store_true",
                   help="continue the run in output-dir from its newest readable checkpoint, with its saved options "
                        "(give only what changes: --steps, --stop-at-step, --save-every, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run or model in a non-empty output-dir (its checkpoints go when the new "
                        "run starts, its model when the new one is complete); other files there are refused")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="end this run (with a checkpoint) at this step; the schedule still spans --steps, so a "
                        "later --resume continues the same run")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="how many of the newest checkpoints to keep")
    p.add_argument("--seed", type=int, default=0, help="init and data order seed")
    for axis, what in (("data", "data parallel (batch split)"), ("fsdp", "fully sharded data parallel (batch and "
                       "large params split)"), ("tensor", "tensor parallel (heads, feedforward, vocabulary split)")):
        p.add_argument(f"--mesh-{axis}", type=int, default=1, help=f"mesh axis {axis!r}: {what}")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar; the training loss is printed as a line every --log-every steps instead")
    return p


def check_args(args) -> None:
    """orbax installed, every numeric option in range, the mesh fits the devices and the batch, the data and
    --resume usable: `UsageError` naming the option and value."""
    import jax

    import_orbax()
    for name in ("seq_len", "batch_size", "steps", "tokenizer_vocab_size", "log_every", "keep_checkpoints",
                 "mesh_data", "mesh_fsdp", "mesh_tensor"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2 (a window predicts its tokens 2..seq_len), got {args.seq_len}")
    if args.batch_size % (args.mesh_data * args.mesh_fsdp):
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by --mesh-data {args.mesh_data} x "
                         f"--mesh-fsdp {args.mesh_fsdp}, which split the batch")
    mesh = f"--mesh-data {args.mesh_data} x --mesh-fsdp {args.mesh_fsdp} x --mesh-tensor {args.mesh_tensor}"
    devices = math.prod((args.mesh_data, args.mesh_fsdp, args.mesh_tensor))
    if devices > jax.device_count():
        raise UsageError(f"{mesh} = {devices} devices, but jax.device_count() is {jax.device_count()}; make the "
                         "product of the mesh options at most that")
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
    training_io.check_text_files(args.text_file or [], "--text-file")
    if args.resume:
        with checkpoint_manager(Path(args.output_dir) / "checkpoints") as manager:
            if manager.latest_step() is None:
                raise UsageError(f"--resume: no checkpoint in {manager.directory}; run without --resume to start "
                                 "afresh")


def explicit_options(argv) -> set:
    """The destinations of the options given on the command line (not defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def check_config_file(path) -> None:
    """--config: an existing JSON file that makes an XLSTMFlaxConfig, else a `UsageError` naming the problem."""
    from .configuration_xlstm_flax import XLSTMFlaxConfig

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config {path}: " + ("is a folder; give a config.json file" if file.is_dir() else
                                                 "no such file"))
    try:
        json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"--config {path}: not valid JSON ({_one_line(exc)})") from None
    try:
        XLSTMFlaxConfig.from_json_file(str(file))
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"--config {path}: not a usable XLSTMFlaxConfig ({_one_line(exc)})") from None


def main(argv=None) -> int:
    """The command: bad input is one line on stderr and exit status 1, before any data is read."""
    from .cli import run_command

    return run_command("xlstm-flax train", _main, argv)


def _main(argv=None) -> int:
    from .cli import check_output_location
    from .checkpoint_io import resolve_model_source
    from .safe_output import check_output_path

    args = build_parser().parse_args(argv)
    check_output_path(args.output_dir, option="--output-dir")  # an empty path first: it would mean this folder
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --output-dir and --overwrite replaces it: give one of them")
    if args.resume and (Path(args.output_dir) / "checkpoints").is_dir():
        merge_resumed_args(args, explicit_options(argv), Path(args.output_dir))
    check_args(args)
    if args.model:
        args.model = resolve_model_source(args.model)
    if args.tokenizer:
        args.tokenizer = resolve_model_source(args.tokenizer, "--tokenizer", need_config=False)
    if args.config:
        check_config_file(args.config)
    inputs = [args.model, args.tokenizer, args.config] + list(args.text_file or [])
    check_output_location(args.output_dir, "--output-dir", inputs=inputs)
    check_output_dir(args)
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" bars; the training bar is the one that matters
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
