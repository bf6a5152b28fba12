"""What every command-line entry point shares: one-line errors, model sources and output folders checked before any
work, and transformers' messages that do not concern our users kept out of the output.

* `run_command(prog, body, argv)` runs `body(argv)` and turns bad input (`UsageError`, `ValueError`, `OSError`) into
  one line `prog: error: ...` on stderr and exit status 1 (`XLSTM_FLAX_DEBUG=1` shows the traceback instead);
* `resolve_model_source(value, option)` checks a `--model` argument: an existing local model folder (with
  config.json) or something shaped like a Hub id; a missing path, a file, a broken link or a symlink loop is a
  `UsageError` naming the option and the value;
* `check_output_location(path, option)` checks that an output folder can be created or written (the nearest existing
  parent is a folder we can write into) before any work;
* `quiet_transformers()` drops transformers' log lines that are not about the user's input (the TensorFlow/JAX
  deprecation banner, "Device set to use ...", the `trust_remote_code` note on a correct remote-code load).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = ["UsageError", "run_command", "resolve_model_source", "check_output_location", "quiet_transformers",
           "TRANSFORMERS_NOISE"]

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
    """Bad command-line input: printed as one line, exit status 1."""


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


def run_command(prog: str, body: Callable[[Optional[Sequence[str]]], int], argv=None) -> int:
    """`body(argv)`'s exit status; bad input ends as one line on stderr and status 1."""
    from .safe_output import interrupted_signal, signals_as_interrupts

    quiet_transformers()
    with signals_as_interrupts():  # SIGTERM as Ctrl-C; an interrupt that Python dropped still stops any swap
        try:
            status = body(argv)
            if interrupted_signal() is not None:  # dropped where it landed (e.g. jax's gc callback), still honoured
                raise KeyboardInterrupt
            return status
        except (UsageError, ValueError, OSError, RuntimeError) as exc:
            if os.environ.get("XLSTM_FLAX_DEBUG"):
                raise
            print(f"{prog}: error: {_first_line(exc)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            signum = interrupted_signal()
            print(f"{prog}: interrupted" + (f" ({signal.Signals(signum).name})" if signum else ""), file=sys.stderr)
            return 128 + signum if signum else 130


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
