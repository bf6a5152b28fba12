"""The command line: `xlstm-flax COMMAND ...` and what every command shares (the one place for command code).

* `main(argv)`: the console command `xlstm-flax` with the subcommands `generate` (here), `train` (`training`),
  `convert {from-orbax, from-pytorch, to-pytorch, from-library, to-library}` (`convert_common`, one skeleton for
  all) and
  `export-hub` (`hub`), plus `--version`, `--debug`, `--help`. A subcommand's module is imported only when it runs
  (so `--help` needs neither jax nor transformers);
* `run_command(prog, body, argv, exit_codes)` runs `body(argv)`: a failure is one line `prog: error: ...` on stderr
  and exit status 1 (or its `exit_codes` entry); usage errors exit 2 (argparse); `--debug` (or `XLSTM_FLAX_DEBUG=1`)
  shows the traceback instead;
* `add_set_option(parser)`: the one `--set FIELD=VALUE` option (config fields, repeatable), `TOKENIZER_FILES`: the
  tokenizer files a model folder may hold (copied, or looked for, by every command);
* a `--model` argument is checked by the model core's `checkpoint_io.resolve_model_source` (this module imports the
  core, never the reverse);
* `check_output_location(path, option)` checks that an output folder can be created or written (the nearest existing
  parent is a folder we can write into) before any work;
* `quiet_transformers()` drops transformers' log lines that are not about the user's input (the TensorFlow/JAX
  deprecation banner, "Device set to use ...").
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = ["UsageError", "run_command", "check_output_location", "quiet_transformers", "TRANSFORMERS_NOISE",
           "TOKENIZER_FILES", "add_set_option", "generate_main", "main", "PROG", "DEBUG_ENV"]

PROG = "xlstm-flax"
DEBUG_ENV = "XLSTM_FLAX_DEBUG"  # set by `xlstm-flax --debug`: tracebacks instead of one-line errors
EXIT_FAILURE = 1  # argparse's usage errors exit 2

from . import bundled_model_path  # noqa: E402  (the package's own; standard library only)
from .safe_output import TOKENIZER_FILES  # noqa: E402  (the one list; standard library only)

# Starts of transformers log messages that never concern a user of these commands (the `trust_remote_code` note is
# the model's own filter, `checks`, active wherever the model loads).
TRANSFORMERS_NOISE = (
    "TensorFlow and JAX classes are deprecated",
    "Device set to use",
)
# The transformers modules that emit them (logger filters apply to records created on that logger).
_NOISY_LOGGERS = (
    "transformers.modeling_flax_utils", "transformers.pipelines.base", "transformers.tokenization_utils_base",
    "transformers.feature_extraction_utils", "transformers.configuration_utils", "transformers.modeling_tf_utils",
)


class UsageError(ValueError):
    """Bad command-line input found after parsing (a missing model folder, an option value out of range): printed as
    one line, exit status 1."""


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not message.lstrip().startswith(TRANSFORMERS_NOISE)


_FILTER = _DropNoise()


def quiet_transformers() -> None:
    """Drop `TRANSFORMERS_NOISE` messages from transformers' loggers (idempotent); everything else still shows."""
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else " ".join(lines)


# Failures whose message says it all (bad input, files, a stopped run): one line, no exception name.
_EXPECTED = (UsageError, ValueError, OSError, RuntimeError)


def debugging() -> bool:
    """Whether tracebacks are wanted (`xlstm-flax --debug`, or XLSTM_FLAX_DEBUG=1)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(prog: str, body: Callable[[Optional[Sequence[str]]], Optional[int]], argv=None,
                exit_codes: Optional[dict] = None) -> int:
    """`body(argv)`'s exit status (None counts as 0). A failure ends as one line `prog: error: ...` on stderr and
    status 1, or `exit_codes[type]` for the exception types it names (which also count as expected: no type name
    in the message); an unexpected exception type is named in the line. Usage errors exit 2 (argparse). SIGTERM is
    handled as Ctrl-C (exit 130, SIGTERM 143), and an interrupt Python dropped (e.g. in jax's gc callback) still
    stops the command (`safe_output`)."""
    from .safe_output import interrupted_signal, signals_as_interrupts

    quiet_transformers()
    exit_codes = exit_codes or {}
    with signals_as_interrupts():
        try:
            status = body(argv) or 0
            if interrupted_signal() is not None:  # dropped where it landed, still honoured
                raise KeyboardInterrupt
            return status
        except KeyboardInterrupt:
            signum = interrupted_signal()
            print(f"{prog}: interrupted" + (f" ({signal.Signals(signum).name})" if signum else ""), file=sys.stderr)
            return 128 + signum if signum else 130
        except Exception as exc:
            if debugging():
                raise
            known = tuple(exit_codes)
            if isinstance(exc, _EXPECTED + known):
                message = _first_line(exc)
            else:
                message = f"{type(exc).__name__}: {_first_line(exc)} (--debug shows the traceback)"
            print(f"{prog}: error: {message}", file=sys.stderr)
            return next((code for kind, code in exit_codes.items() if isinstance(exc, kind)), EXIT_FAILURE)


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """The `--set FIELD=VALUE` option (repeatable; `configuration_xlstm_flax.parse_field_overrides` reads it)."""
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=help)


def check_output_location(path, option: str = "--output", inputs=()) -> Path:
    """`path` (absolute) if it is a folder or can become one: empty, overlapping one of `inputs`
    (`safe_output.check_output_path`), an existing file, or a nearest existing parent that is not a writable folder,
    is an error naming `option` (checked by creating and removing a temporary folder, so read-only file systems
    count too)."""
    from .safe_output import check_output_path

    check_output_path(path, inputs, option)
    target = Path(str(path)).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a folder")
    parent = target if target.exists() else target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is a file, so the folder cannot be created")
    try:
        tempfile.TemporaryDirectory(dir=parent, prefix=".xlstm-flax-write-check-").cleanup()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write into {parent} ({exc.strerror or exc})") from None
    return target


# ---------------------------------------------------------------------------------------------- xlstm-flax generate
GENERATE_HELP = """Generate text: `xlstm-flax generate --prompt "..."`.

By default loads the bundled model (a small xLSTM trained on CPython's pydoc topics, shipped in the package) with
`FlaxAutoModelForCausalLM.from_pretrained`; `--model` takes any other model directory or Hub id (its tokenizer is
loaded with `AutoTokenizer`). `--preset NAME` instead builds a randomly initialised model from a bundled config and
uses raw UTF-8 bytes as token ids (a smoke run of the generation path; the output is noise). Generation runs
through the text-generation pipeline (a `--model`) or `model.generate` (a `--preset`); reports tokens/s.
"""


def build_generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} generate", description=GENERATE_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model directory or Hub id loadable by FlaxAutoModelForCausalLM "
                        "(default: the bundled pydoc model)")
    source.add_argument("--preset", default=None,
                        help="bundled config name for a random-init smoke model (see configuration/presets)")
    parser.add_argument("--prompt", default="The xLSTM", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="number of tokens to generate")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling probability mass")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search width (1: no beam search)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling and random init")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="compute dtype (default: the config's compute_dtype)")
    return parser


def generate_main(argv=None) -> int:
    """`xlstm-flax generate`: bad input (a missing model folder, an invalid option value) is one line, exit 1."""
    return run_command(f"{PROG} generate", _generate, argv)


def _check_generate_options(args) -> None:
    if args.max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.preset and not args.prompt:  # (a model's tokenizer starts an empty prompt from its bos token)
        raise UsageError("--prompt is empty: the random-init --preset model has no bos token to start from; give "
                         "some text to continue")
    if args.num_beams < 1:
        raise UsageError(f"--num-beams must be >= 1 (1: no beam search), got {args.num_beams}")
    if args.do_sample:
        if not math.isfinite(args.temperature) or args.temperature <= 0:
            raise UsageError(f"--temperature must be a positive finite number, got {args.temperature}")
        if args.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0: no top-k filter), got {args.top_k}")
        if not 0 < args.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")


def _text_and_count(tokenizer, prompt: str, sequence: list, config) -> tuple[str, int]:
    """(the prompt and its continuation, the number of generated tokens) from the generated ids (the prompt's ids
    first): the count is of the ids the model produced, up to and including an end-of-sequence token (what follows
    it is padding), not of the decoded text re-tokenized (which merges and splits tokens differently)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    new = list(sequence[len(prompt_ids):])
    eos = config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    count = next((i + 1 for i, token in enumerate(new) if token in eos), len(new))
    start = len(tokenizer.decode(prompt_ids, skip_special_tokens=True))
    return prompt + tokenizer.decode(list(sequence), skip_special_tokens=True)[start:], count


def _generate(argv=None) -> int:
    args = build_generate_parser().parse_args(argv)
    _check_generate_options(args)
    import jax  # here, not at the top: `xlstm-flax generate --help` needs no jax
    import numpy as np

    dtype = None if args.dtype is None else getattr(jax.numpy, args.dtype)
    sample = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) if args.do_sample else {}
    if not args.preset:
        from .checkpoint_io import resolve_model_source
        from .auto import text_generation_pipeline

        source = resolve_model_source(args.model) if args.model else str(bundled_model_path())
        generator = text_generation_pipeline(source, model_kwargs={"dtype": dtype})
        call = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams,
                    seed=args.seed, return_tensors=True, **sample)
        start = time.perf_counter()
        generator(args.prompt, **call)
        first = time.perf_counter() - start
        start = time.perf_counter()
        sequence = generator(args.prompt, **call)[0]["generated_token_ids"]  # prompt ids + new ids
        elapsed = time.perf_counter() - start
        text, new_tokens = _text_and_count(generator.tokenizer, args.prompt, sequence, generator.model.config)
    else:
        from .configuration_xlstm_flax import load_preset
        from .modeling_flax_xlstm import FlaxXLSTMForCausalLM

        config = load_preset(args.preset, vocab_size=256 + 3, compute_dtype="float32")
        print(f"[random-init smoke model from preset {args.preset!r}: byte-level ids, the text is noise]",
              file=sys.stderr)
        model = FlaxXLSTMForCausalLM(config, seed=args.seed, dtype=dtype)
        input_ids = (np.frombuffer(args.prompt.encode("utf-8"), np.uint8).astype("i4") + 3)[None]
        kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams,
                      pad_token_id=config.pad_token_id, **sample)
        generate = jax.jit(lambda p, ids, key: model.generate(ids, params=p, prng_key=key, **kwargs).sequences)
        key = jax.random.PRNGKey(args.seed)
        start = time.perf_counter()
        np.asarray(generate(model.params, input_ids, key))
        first = time.perf_counter() - start
        start = time.perf_counter()
        sequences = np.asarray(generate(model.params, input_ids, key))
        elapsed = time.perf_counter() - start
        new = sequences[0, input_ids.shape[1]:]
        text = args.prompt + bytes(int(i) - 3 for i in new if int(i) >= 3).decode("utf-8", errors="replace")
        new_tokens = len(new)
    print(text, flush=True)
    print(f"[{new_tokens} new tokens: {new_tokens / elapsed:.1f} tokens/s after compilation; first call incl. "
          f"compile {first:.1f} s]", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- xlstm-flax
# subcommand -> (module, its `main(argv)`, one-line summary); `convert_common.convert_command` chooses a conversion
COMMANDS = {
    "generate": ("cli", "generate_main", "generate text with the bundled model or any saved model"),
    "train": ("training", "main", "train a model from scratch or fine-tune one (the 'train' extra)"),
    "convert": ("convert_common", "convert_command",
                "convert checkpoints: from-orbax, from-pytorch, to-pytorch, from-library, to-library"),
    "export-hub": ("hub", "main", "write a self-contained Hugging Face Hub folder (and push it)"),
}


def command_chooser(prog: str, choices: dict, description: str, top: bool) -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<14}{entry[-1]}" for name, entry in choices.items())
    parser = argparse.ArgumentParser(prog=prog, description=description, usage=f"{prog} [-h] "
                                     + ("[--version] [--debug] " if top else "") + "COMMAND ...",
                                     epilog=f"commands:\n{listing}\n\n`{prog} COMMAND --help` shows a command's "
                                     "options.", formatter_class=argparse.RawDescriptionHelpFormatter)
    if top:
        version = sys.modules[__package__].__version__  # the package, imported before this module
        parser.add_argument("--version", action="version", version=f"{PROG} {version}")
        parser.add_argument("--debug", action="store_true",
                            help="show the full traceback of an error instead of one line")
    parser.add_argument("command", metavar="COMMAND", choices=list(choices), help=argparse.SUPPRESS)
    return parser


def split_command(argv: list) -> tuple[list, list]:
    """(this level's options and the command name, the rest)."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return argv[: i + 1], argv[i + 1:]
    return argv, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`xlstm-flax [--version] [--debug] COMMAND [SUBCOMMAND] ARGS...`: exit status 0 done, 1 failure, 2 usage (3: a
    conversion's --verify failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = command_chooser(PROG, COMMANDS, "xLSTM language models in Flax/JAX, with transformers' model API.",
                          top=True)
    head, rest = split_command(argv)
    args = top.parse_args(head)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    module, function, _ = COMMANDS[args.command]
    return getattr(importlib.import_module(f".{module}", __package__), function)(rest)


if __name__ == "__main__":
    sys.exit(main())
