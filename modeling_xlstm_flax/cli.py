"""The command line: `xlstm-flax COMMAND ...` and what every command shares (the one place for command code).

* `main(argv)`: the console command `xlstm-flax` with the subcommands `generate`, `train`, `convert {from-orbax,
  from-pytorch, to-pytorch, from-library}` and `export-hub`, plus `--version`, `--debug`, `--help`. Each subcommand is its module's
  `build_parser()` / `main(argv)`, imported only when it runs (so `--help` needs neither jax nor transformers);
* `run_command(prog, body, argv, exit_codes)` runs `body(argv)`: a failure is one line `prog: error: ...` on stderr
  and exit status 1 (or its `exit_codes` entry); usage errors exit 2 (argparse); `--debug` (or `XLSTM_FLAX_DEBUG=1`)
  shows the traceback instead;
* `add_set_option(parser)`: the one `--set FIELD=VALUE` option (config fields, repeatable), `TOKENIZER_FILES`: the
  tokenizer files a model folder may hold (copied, or looked for, by every command);
* `resolve_model_source(value, option)` checks a `--model` argument: an existing local model folder (with
  config.json) or something shaped like a Hub id; a missing path, a file, a broken link or a symlink loop is a
  `UsageError` naming the option and the value;
* `check_output_location(path, option)` checks that an output folder can be created or written (the nearest existing
  parent is a folder we can write into) before any work;
* `quiet_transformers()` drops transformers' log lines that are not about the user's input (the TensorFlow/JAX
  deprecation banner, "Device set to use ...", the `trust_remote_code` note on a correct remote-code load).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = ["UsageError", "run_command", "resolve_model_source", "check_output_location", "quiet_transformers",
           "TRANSFORMERS_NOISE", "TOKENIZER_FILES", "add_set_option", "main", "PROG", "DEBUG_ENV"]

PROG = "xlstm-flax"
DEBUG_ENV = "XLSTM_FLAX_DEBUG"  # set by `xlstm-flax --debug`: tracebacks instead of one-line errors
EXIT_FAILURE = 1  # argparse's usage errors exit 2

from .safe_output import TOKENIZER_FILES  # noqa: E402  (the one list; standard library only)

# Starts of transformers log messages that never concern a user of these commands.
TRANSFORMERS_NOISE = (
    "TensorFlow and JAX classes are deprecated",
    "Device set to use",
    "The argument `trust_remote_code` is to be used with Auto classes",
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


def _looks_like_hub_id(value: str) -> bool:
    if value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(value)
    except Exception:  # HFValidationError, or huggingface_hub missing
        return False
    return True


def resolve_model_source(value, option: str = "--model", need_config: bool = True) -> str:
    """`value` as given when it is a usable local model folder (holding config.json when `need_config`) or looks
    like a Hub id (`name` or `owner/name`, and no such local path); otherwise `UsageError` naming `option`."""
    text = str(value)
    path = Path(text).expanduser()
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop on older Pythons
            raise UsageError(f"{option} {text}: a broken symbolic link or a symlink loop") from None
    try:
        exists = path.exists()
    except OSError as exc:  # ELOOP through a looping parent, a name too long, ...
        raise UsageError(f"{option} {text}: cannot be read ({exc.strerror or exc})") from None
    if exists:
        if not path.is_dir():
            wanted = "a model folder (config.json, model.safetensors)" if need_config else "a folder"
            raise UsageError(f"{option} {text}: is a file; expected {wanted}")
        if need_config and not (path / "config.json").is_file():
            raise UsageError(f"{option} {text}: the folder has no config.json, so it is not a model folder")
        return str(path)
    if _looks_like_hub_id(text):
        return text
    raise UsageError(f"{option} {text}: no such folder (and not a Hub model id such as 'owner/name')")


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


# ---------------------------------------------------------------------------------------------- xlstm-flax
# subcommand -> (module, one-line summary); "convert" has its own subcommands
COMMANDS = {
    "generate": ("generate", "generate text with the bundled model or any saved model"),
    "train": ("training", "train a model from scratch or fine-tune one (the 'train' extra)"),
    "convert": (None, "convert checkpoints: from-orbax, from-pytorch, to-pytorch, from-library"),
    "export-hub": ("hub", "write a self-contained Hugging Face Hub folder (and push it)"),
}
CONVERSIONS = {
    "from-orbax": ("convert_orbax_to_hf", "an xlstm-jax orbax run -> this port's Flax model folder"),
    "from-pytorch": ("convert_pytorch_to_flax", "transformers' PyTorch xLSTM folder -> Flax model folder"),
    "to-pytorch": ("convert_flax_to_pytorch", "Flax model folder -> transformers' PyTorch xLSTM folder"),
    "from-library": ("convert_library_to_flax", "NX-AI xlstm library folder (mLSTM + sLSTM) -> Flax model folder"),
}


def _chooser(prog: str, choices: dict, description: str, top: bool) -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<14}{summary}" for name, (_, summary) in choices.items())
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


def _split(argv: list) -> tuple[list, list]:
    """(this level's options and the command name, the rest)."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            return argv[: i + 1], argv[i + 1:]
    return argv, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`xlstm-flax [--version] [--debug] COMMAND [SUBCOMMAND] ARGS...`: exit status 0 done, 1 failure, 2 usage (3: a
    conversion's --verify failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _chooser(PROG, COMMANDS, "xLSTM language models in Flax/JAX, with transformers' model API.", top=True)
    head, rest = _split(argv)
    args = top.parse_args(head)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    module, _ = COMMANDS[args.command]
    if module is None:  # convert
        prog = f"{PROG} convert"
        sub = _chooser(prog, CONVERSIONS, "Convert checkpoints; every conversion writes into a temporary folder "
                       "beside OUTPUT and renames it when complete.", top=False)
        head, rest = _split(rest)
        module, _ = CONVERSIONS[sub.parse_args(head).command]
    return importlib.import_module(f".{module}", __package__).main(rest)


if __name__ == "__main__":
    sys.exit(main())
