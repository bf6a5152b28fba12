"""What the training command (`modeling_xlstm_flax.training`) reads and writes: its text, its output folder, its orbax
checkpoints and `--resume`.

Text: corpora, tokenizer training and token windows. The default corpus is the text of CPython's `pydoc_data.topics`
(English technical prose shipped with every Python, about 0.5 MB): one document per help topic, read through
`datasets`. Train/validation split by document: the last `val_fraction` of the topics (sorted by name) is validation.

The folder holds the final model (config.json, weights, tokenizer, training_log.json, loss_curve.png: replaced
together at the end, `safe_output.atomic_output_dir`), `checkpoints/step_N` (orbax) and `run/` (the run's
arguments, model config and tokenizer, written when it starts). A non-empty folder needs `--resume` or
`--overwrite`; `--resume` takes the run's saved arguments for every option not given, refuses a changed training
option, and compares the model the command builds with the run's, naming the first differing config field.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .cli import UsageError
from .safe_output import MODEL_FILES, TOKENIZER_FILES, atomic_output_dir, matches_any


# ----------------------------------------------------------------------------------------------- text
SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "unk_token": None}


def pydoc_topics() -> list[str]:
    """The help topics of this Python's `pydoc_data.topics`, sorted by topic name."""
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics)]


def load_documents(corpus: str = "pydoc-topics", text_files: Optional[Sequence[str]] = None):
    """A `datasets.Dataset` with a `text` column: the pydoc corpus or the given text files (one paragraph each)."""
    import datasets

    if text_files:
        return datasets.load_dataset("text", data_files=list(text_files), sample_by="paragraph", split="train")
    if corpus != "pydoc-topics":
        raise ValueError(f"unknown corpus {corpus!r}; use 'pydoc-topics' or pass text files")
    return datasets.Dataset.from_dict({"text": pydoc_topics()})


def split_documents(dataset, val_fraction: float):
    """(train, validation) datasets: the last `val_fraction` of the documents is validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    n_val = max(1, int(round(len(dataset) * val_fraction)))
    if n_val >= len(dataset):
        raise ValueError(f"corpus has only {len(dataset)} documents; cannot hold out {n_val} for validation")
    return dataset.select(range(len(dataset) - n_val)), dataset.select(range(len(dataset) - n_val, len(dataset)))


def check_text_files(paths: Sequence[str], option: str = "--text-file") -> None:
    """Each path a readable, non-empty UTF-8 text file, else a `UsageError` naming `option` and the path."""
    for path in paths:
        file = Path(path)
        if not file.is_file():
            what = "is a folder; give text files" if file.is_dir() else (
                "not a regular file" if file.exists() else "no such file")
            raise UsageError(f"{option} {path}: {what}")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{option} {path}: cannot be read as UTF-8 text ({exc})") from None
        if not text.strip():
            raise UsageError(f"{option} {path}: the file is empty (no text to train on)")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, as a `PreTrainedTokenizerFast` with bos/eos/pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS["bos_token"], SPECIAL_TOKENS["pad_token"], SPECIAL_TOKENS["eos_token"]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=specials[0], pad_token=specials[1],
                                   eos_token=specials[2], model_max_length=1_000_000)


def token_stream(dataset, tokenizer) -> np.ndarray:
    """All documents tokenized and joined, each followed by the eos token: int32 (N,)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(list(dataset["text"]), add_special_tokens=False)["input_ids"]
    return np.asarray([t for doc in ids for t in (*doc, eos)], dtype=np.int32)


def random_windows(stream: np.ndarray, seq_len: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Batch `step` of training windows (batch_size, seq_len + 1), a pure function of (seed, step) for resuming."""
    if len(stream) <= seq_len + 1:
        raise ValueError(f"training stream has {len(stream)} tokens; need more than seq_len + 1 = {seq_len + 1}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch_size)
    return np.stack([stream[s : s + seq_len + 1] for s in starts])


def eval_windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Consecutive non-overlapping validation windows (n, seq_len + 1) covering the stream."""
    n = (len(stream) - 1) // seq_len
    if n == 0:
        raise ValueError(f"validation stream has {len(stream)} tokens; need at least seq_len + 1 = {seq_len + 1}")
    return np.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])


def check_window_length(seq_len: int, train_tokens: int, val_tokens: int, option: str = "--seq-len") -> None:
    """Windows of `seq_len` tokens fit the corpus: the training text needs more than seq_len tokens (a window and
    a start to draw), the validation text at least seq_len; else a `UsageError` naming `option` and the sizes."""
    for what, tokens, need in (("training", train_tokens, seq_len + 1), ("validation", val_tokens, seq_len)):
        if tokens < need:
            raise UsageError(f"{option} {seq_len} is longer than the corpus allows: its {what} text has {tokens} "
                             f"tokens, a window needs {need}; use a smaller {option} or more text")


# ----------------------------------------------------------------------------------------------- output folder
def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


RUN_DIR = "run"  # the run's arguments (args.json), model config (config.json) and tokenizer, written at its start
FINAL_FILES = MODEL_FILES + TOKENIZER_FILES + ("training_log.json", "loss_curve.png")
OUTPUT_FILES = FINAL_FILES + ("checkpoints", "corrupt_checkpoints", RUN_DIR)
# options a --resume may change (how this part of the run is carried out); all others come from the run
RESUME_MAY_CHANGE = {"output_dir", "resume", "overwrite", "stop_at_step", "no_progress", "eval_every", "save_every",
                     "log_every", "keep_checkpoints", "mesh_data", "mesh_fsdp", "mesh_tensor", "steps"}
# options that shape the model: given with --resume, the model they build is compared with the run's, field by field
RESUME_MODEL_OPTIONS = {"model", "preset", "config", "set", "tokenizer", "bf16"}


def save_run_files(out: Path, args, config, tokenizer) -> None:
    """out/run/: args.json, config.json, tokenizer files: what --resume reads (written all at once)."""
    with atomic_output_dir(out / RUN_DIR, True, option="--output-dir") as tmp:
        (tmp / "args.json").write_text(json.dumps(vars(args), indent=1, sort_keys=True))
        (tmp / "config.json").write_text(config.to_json_string())
        tokenizer.save_pretrained(tmp / "tokenizer")


def check_output_dir(args) -> None:
    """A non-empty --output-dir needs --resume (continue the run there) or --overwrite (replace a previous run or
    model: only what this command writes, anything else is refused by name)."""
    out = Path(args.output_dir)
    entries = sorted(os.listdir(out)) if out.is_dir() else []
    if not entries or args.resume:
        return
    shown = ", ".join(n + ("/" if (out / n).is_dir() else "") for n in entries[:4]) + (", ..." if len(entries) > 4
                                                                                       else "")
    if not args.overwrite:
        what = ("a previous training run" if {"checkpoints", "training_log.json", RUN_DIR} & set(entries) else
                "a model" if "config.json" in entries else "files")
        raise UsageError(f"--output-dir {out}: is not empty (holds {what}: {shown}); pass --resume to continue the "
                         "run there, --overwrite to replace it, or choose an empty folder")
    foreign = [n for n in entries if not matches_any(n, OUTPUT_FILES)]
    if foreign:
        raise UsageError(f"--output-dir {out}: holds files xlstm-flax train does not write ({', '.join(foreign[:5])})"
                         "; --overwrite replaces only its own files: choose another folder or move those away")


def saved_run_args(out: Path) -> tuple[dict, Path]:
    """The arguments of the run in `out` (run/args.json; for older runs the newest checkpoint's state)."""
    path = out / RUN_DIR / "args.json"
    if path.is_file():
        try:
            return json.loads(path.read_text()), path
        except (OSError, ValueError) as exc:
            raise UsageError(f"--resume: {path} cannot be read ({_one_line(exc)})") from None
    ocp = import_orbax()
    with checkpoint_manager(out / "checkpoints") as manager:
        step = manager.latest_step()
        try:
            state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.JsonRestore())).state
        except Exception:  # older runs: without their arguments, the command line's are used as given
            return {}, path
    return dict(state.get("args") or {}), manager.directory / f"step_{step}"


def merge_resumed_args(args, explicit: set, out: Path) -> None:
    """--resume: every option not given takes the run's value; one given with another value than the run's is
    refused unless it is in RESUME_MAY_CHANGE (or shapes the model: then `check_same_architecture` decides)."""
    saved, where = saved_run_args(out)
    for key, value in saved.items():
        if not hasattr(args, key) or key in ("output_dir", "resume", "overwrite"):
            continue
        if key not in explicit:
            setattr(args, key, value)
        elif getattr(args, key) != value and key not in RESUME_MAY_CHANGE | RESUME_MODEL_OPTIONS:
            option = "--" + key.replace("_", "-")
            raise UsageError(f"--resume: {option} {getattr(args, key)} differs from the run's {value} (saved in "
                             f"{where}); a resumed run keeps its training options: drop {option}, or start a new run "
                             "in another folder")
        elif key == "steps" and getattr(args, key) != value:
            print(f"note: --steps {args.steps} instead of the run's {value}: the learning-rate schedule now spans "
                  f"{args.steps} steps", file=sys.stderr)


def check_same_architecture(out: Path, config) -> None:
    """--resume: the model this command builds has the run's config (run/config.json), else a one-line error naming
    the first differing field."""
    path = out / RUN_DIR / "config.json"
    if not path.is_file():
        return  # older runs: the restore checks the shapes
    saved = json.loads(path.read_text())
    now = json.loads(config.to_json_string())
    ignore = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"}
    fields = [k for k in sorted(set(saved) | set(now)) if k not in ignore and saved.get(k) != now.get(k)]
    if fields:
        more = f" (and {', '.join(fields[1:4])}{', ...' if len(fields) > 4 else ''})" if len(fields) > 1 else ""
        raise UsageError(f"--resume: the run's model has {fields[0]}={saved.get(fields[0])!r}, this command builds "
                         f"{fields[0]}={now.get(fields[0])!r}{more}; a resumed run keeps its architecture: drop the "
                         "options that change it (--set, --preset, --config, --model, --tokenizer, --bf16)")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients stopped being finite: the run stops before anything of that step is saved."""


# ----------------------------------------------------------------------------------------------- checkpoints
def import_orbax():
    """`orbax.checkpoint`, or a `UsageError` saying how to install it."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as exc:
        raise UsageError(f"the training checkpoints need orbax-checkpoint ({exc}): pip install orbax-checkpoint, "
                         "or, in this repository, pip install '.[train]'") from None
    return ocp


def checkpoint_manager(directory: Path, keep: int | None = None, create: bool = False):
    """orbax `CheckpointManager` of directory/step_N (keeps the newest `keep`; removes unfinished temp folders
    when `create`)."""
    ocp = import_orbax()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, step_prefix="step", create=create,
                                           cleanup_tmp_directories=create)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


# (not a norm: the squares of huge but finite params overflow)
@functools.lru_cache(maxsize=None)
def _all_finite():
    """The compiled "every leaf of the tree is finite" (made on first use, when jax is imported)."""
    import jax
    import jax.numpy as jnp

    return jax.jit(lambda tree: jnp.all(jnp.asarray([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])))


def _last_checkpoint(manager) -> str:
    last = manager.latest_step()
    return f"; the last checkpoint is {manager.directory}/step_{last}" if last else ""


def save_checkpoint(manager, params, opt_state, state: dict) -> None:
    """Params, optimizer state (with their shardings) and the JSON state as checkpoint step_N (written in the
    background after the device-to-host copy; `manager.close()` waits for it). Non-finite params (a step with finite
    loss and gradients can still overflow them) are never saved: `NonFiniteLossError` instead."""
    ocp = import_orbax()
    if not bool(_all_finite()(params)):
        raise NonFiniteLossError(f"step {state['step']}: the parameters are no longer finite; stopping without "
                                 f"saving{_last_checkpoint(manager)}. Try a lower --lr or --grad-clip.")
    manager.save(state["step"], force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        state=ocp.args.JsonSave(json.loads(json.dumps(state)))))  # a copy: written in the background


def restore_checkpoint(manager, params, opt_state, step=None):
    """(params, opt_state, state) of checkpoint `step` (default: the newest), placed with the shardings of the given
    live trees."""
    import jax

    ocp = import_orbax()
    like = partial(jax.tree_util.tree_map, lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding))
    got = manager.restore(manager.latest_step() if step is None else step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(like(params)), opt_state=ocp.args.StandardRestore(like(opt_state)),
        state=ocp.args.JsonRestore()))
    return got.params, got.opt_state, got.state


def restore_newest_readable(directory: Path, params, opt_state):
    """(params, opt_state, state) of the newest checkpoint under `directory` that restores; a truncated or corrupt
    newer one is reported, moved to ../corrupt_checkpoints/ (so the run can write that step again) and the one
    before it is used. `UsageError` when none restores."""
    errors, result = [], None
    with checkpoint_manager(directory) as manager:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                result = restore_checkpoint(manager, params, opt_state, step)
                break
            except Exception as exc:  # orbax/tensorstore raise many kinds for a damaged checkpoint
                errors.append((step, _one_line(exc)))
                print(f"warning: checkpoint {directory}/step_{step} cannot be read ({_one_line(exc)}); trying the "
                      "previous one", file=sys.stderr)
    if result is None:
        listed = "; ".join(f"step_{s}: {e}" for s, e in errors) or "none found"
        raise UsageError(f"--resume: no readable checkpoint in {directory} ({listed})")
    aside = directory.parent / "corrupt_checkpoints"
    for step, _ in errors:
        aside.mkdir(exist_ok=True)
        os.rename(directory / f"step_{step}", aside / f"step_{step}-{int(time.time())}")
    return result
