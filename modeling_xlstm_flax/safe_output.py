"""Output folders that lose nothing: the one mechanism behind every writer (`save_pretrained`, the export, the
converters, the training command's output folder). Standard library only (the exported remote code imports it).

* `check_output_path(output, inputs, option)`: refuses an empty path (`""` would mean the current folder), an output
  that is, contains or lies inside an input (compared after resolving symlinks), and the current folder or one
  holding it; returns the resolved path (a symlinked output is written where the link points).
* `atomic_output_dir(target, overwrite=..., owned=..., keep_others=..., inputs=...)` yields a fresh sibling folder
  `.NAME.partial-<pid>-<host>-<random>` to write into; when the body is done the sibling takes the target's place
  by one rename (`renameat2(RENAME_EXCHANGE)` where the OS has it, else two renames undone on failure, with SIGINT/
  SIGTERM held back for those few system calls): the old folder loads until the new one is complete, a failure
  at any step leaves either the old folder or the complete new one. Existing content: an empty or missing target
  is simply created; otherwise `overwrite` is needed, and entries the writer does not own (`owned`: names and
  glob patterns) are either refused by name or, with `keep_others`, carried into the new folder (hard links, or
  copies across file systems).
* `remove_stale_partials(target)`: partial folders of dead runs (same host, process gone) beside `target` are
  removed, and an old folder a killed run had moved aside (`.NAME.old-*`) is put back when the target is missing.
* `signals_as_interrupts()` (the commands): SIGTERM is handled like Ctrl-C, and a received signal is remembered, so
  an interrupt that Python dropped (raised inside a finalizer or garbage-collection callback, where it is only
  printed as "Exception ignored") still stops the swap: `raise_if_interrupted()` runs just before it.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

__all__ = ["OutputPathError", "OutputExistsError", "check_output_path", "atomic_output_dir", "remove_stale_partials",
           "signals_as_interrupts", "raise_if_interrupted", "record_dropped_interrupts", "matches_any", "MODEL_FILES",
           "TOKENIZER_FILES"]

# What the model writers own: config, generation config, weights (single, sharded, index; Flax and safetensors).
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "model-*-of-*.safetensors", "flax_model.msgpack", "flax_model.msgpack.index.json",
               "flax_model-*-of-*.msgpack")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja",
                   "chat_template.json")


class OutputPathError(ValueError):
    """An output path that would lose data (empty, overlapping an input, holding files the writer does not own)."""


class OutputExistsError(OutputPathError, FileExistsError):
    """The output folder exists and may not be replaced (not empty without overwrite, or holding other files)."""


# ---------------------------------------------------------------------------------------------- path checks
def _resolved(path) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_path(output, inputs: Iterable = (), option: str = "output") -> Path:
    """The resolved output path, or `OutputPathError` naming `option`: empty, the current folder or one holding it,
    or the same as / inside / holding one of `inputs` (paths that do not exist locally, e.g. Hub ids, are skipped)."""
    if output is None or not str(output).strip():
        raise OutputPathError(f"{option} is empty: give the folder to write (an empty path would mean the current "
                              "folder)")
    target = _resolved(output)
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the current folder was removed
        cwd = None
    if cwd is not None and _inside(cwd, target):
        raise OutputPathError(f"{option} {output}: is the current folder or holds it; name a folder of its own")
    for item in inputs:
        if item is None or not str(item).strip() or not os.path.exists(os.path.expanduser(str(item))):
            continue
        source = _resolved(item)
        if _inside(target, source) or _inside(source, target):
            how = ("is the input" if target == source else "lies inside the input" if _inside(target, source)
                   else "holds the input")
            raise OutputPathError(f"{option} {output}: {how} {item}; write somewhere else (the input would be "
                                  "replaced)")
    return target


# ---------------------------------------------------------------------------------------------- signals
_received: Optional[int] = None
_dropped = False  # a KeyboardInterrupt Python reported as "Exception ignored" (sys.unraisablehook)


def record_dropped_interrupts() -> None:
    """Wrap `sys.unraisablehook` (idempotent) so that a KeyboardInterrupt raised where Python cannot propagate it
    (a garbage-collection callback such as jax's `_xla_gc_callback`, a finalizer, `__del__`) is remembered; it is
    still reported as before. `modeling_xlstm_flax` calls this on import, before jax is loaded, so a Ctrl-C during
    a command's start-up counts too."""
    previous = sys.unraisablehook
    if getattr(previous, "_records_dropped_interrupts", False):
        return

    def hook(unraisable):
        global _dropped
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            _dropped = True
        previous(unraisable)

    hook._records_dropped_interrupts = True
    sys.unraisablehook = hook


def _on_signal(signum, frame):
    global _received
    _received = signum
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt and are remembered (see `raise_if_interrupted`) while the body
    runs; the previous handlers come back afterwards. Outside the main thread: no change."""
    global _received, _dropped
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None  # (a Ctrl-C dropped before, while the command started, still counts)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received, _dropped = None, False


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if SIGINT/SIGTERM arrived under `signals_as_interrupts`, even when the KeyboardInterrupt
    it raised was swallowed (a finalizer, a garbage-collection callback, a broad `except`)."""
    signum = interrupted_signal()
    if signum is not None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name} received")


def interrupted_signal() -> Optional[int]:
    """The signal number received under `signals_as_interrupts` (SIGINT for a KeyboardInterrupt Python dropped,
    see `record_dropped_interrupts`), or None."""
    return _received if _received is not None else (signal.SIGINT if _dropped else None)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM held back (delivered when the body ends) in the main thread, where handlers run."""
    hold = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    if hold:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        if hold:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------------------------------------- partial folders
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_ACTIVE: set[str] = set()  # partial folders this process is writing now


def _partial_pattern(name: str, kind: str) -> re.Pattern:
    """`.NAME.KIND-<pid>-<host>-<random>`, and the same for a writer nested in one of our partial folders
    (`..NAME.partial-....KIND-<pid>-<host>-<random>`: e.g. save_pretrained inside the export's)."""
    name = re.escape(name)
    return re.compile(rf"^\.(?:{name}|\.{name}\.partial-.*)\.{kind}-(\d+)-([A-Za-z0-9]+)-[A-Za-z0-9_]+$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owned_and_stale(entry: Path, pattern: re.Pattern) -> bool:
    match = pattern.match(entry.name)
    if not match or match.group(2) != _HOST or not entry.is_dir() or entry.is_symlink():
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return str(entry) not in _ACTIVE
    return not _pid_alive(pid)


def remove_stale_partials(target) -> list[Path]:
    """Remove `.NAME.partial-*` folders beside `target` left by dead processes of this host (or by this process,
    finished); when `target` is missing, put back the newest `.NAME.old-*` folder a killed swap had moved aside.
    Folders of live runs, other hosts or other naming are never touched. Returns the folders removed."""
    target = Path(target)
    parent, name = target.parent, target.name
    if not parent.is_dir():
        return []
    removed = []
    partial, old = _partial_pattern(name, "partial"), _partial_pattern(name, "old")
    entries = sorted(parent.iterdir(), key=lambda p: p.name)
    for entry in entries:
        if _owned_and_stale(entry, old) and not os.path.lexists(target):
            os.rename(entry, target)  # a swap killed between its two renames: the old folder comes back
    if target.is_dir() and not target.is_symlink():  # partial folders of in-place writes (see `_in_place`)
        entries += sorted(target.iterdir(), key=lambda p: p.name)
    for entry in entries:
        if (_owned_and_stale(entry, partial) or _owned_and_stale(entry, old)) and entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _in_place(target: Path) -> bool:
    """An existing folder that cannot be replaced as a whole: a mount point, or in a folder we may not write."""
    return target.is_dir() and (os.path.ismount(target) or not os.access(target.parent, os.W_OK | os.X_OK))


def _move_in(tmp: Path, target: Path, owned: Optional[Sequence[str]]) -> None:
    """The fallback of `_in_place` folders: each finished file of `tmp` (inside `target`) moved into `target` by
    one rename, then the writer's old entries it did not rewrite removed. Not one step, but the old files stay
    until every new one is complete."""
    written = sorted(os.listdir(tmp))
    with _signals_held():
        for name in written:
            if (target / name).is_dir() and not (target / name).is_symlink():
                shutil.rmtree(target / name)
            os.replace(tmp / name, target / name)
    for name in sorted(os.listdir(target)):
        path = target / name
        if name not in written and path != tmp and owned is not None and matches_any(name, owned):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else os.remove(path)


def _make_sibling(target: Path, kind: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-{os.getpid()}-{_HOST}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


# ---------------------------------------------------------------------------------------------- the swap
_PAUSED: set = set()


def _test_pause(step: str) -> None:
    """For tests: `XLSTM_FLAX_TEST_PAUSE=STEP` ("start": the partial folder exists; "swap": the new folder is
    complete, not yet in place) stops the writer there for up to 60 s, announced on stderr, so a test can signal it
    at that moment; `STEP:swallow` drops the KeyboardInterrupt there, as a finalizer or gc callback would."""
    spec = os.environ.get("XLSTM_FLAX_TEST_PAUSE", "")
    if spec.split(":")[0] != step or step in _PAUSED:
        return
    _PAUSED.add(step)  # once per process: a nested writer (save_pretrained inside the export) does not pause again
    try:  # the announcement inside: a signal that lands right after it is handled like one during the sleep
        print(f"xlstm-flax: test pause at {step}", file=sys.stderr, flush=True)
        # short sleeps: the kernel may hand the signal to another thread (jax's), which does not wake the main
        # thread's sleep; Python runs the handler when the main thread next returns to the interpreter
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        if not spec.endswith(":swallow"):
            raise


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the two paths (Linux renameat2 RENAME_EXCHANGE); False where the OS or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _swap_into_place(new: Path, target: Path) -> None:
    """`new` becomes `target`; the previous `target` folder (if any) is removed afterwards. A failure leaves the
    previous folder in place; SIGINT/SIGTERM wait until the renames are done."""
    with _signals_held():
        if not os.path.lexists(target):
            os.rename(new, target)
            return
        if _exchange(new, target):
            old = new  # the old folder now sits at the sibling's name
        else:
            old = _make_sibling(target, "old")
            os.rmdir(old)
            os.rename(target, old)
            try:
                os.rename(new, target)
            except BaseException:
                os.rename(old, target)
                raise
    try:
        shutil.rmtree(old)
    except OSError as exc:  # the new folder is in place; a later run removes the leftover
        print(f"warning: could not remove the previous folder {old}: {exc}", file=sys.stderr)


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p.rstrip("/")) for p in patterns)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(source: Path, dest: Path, names: Iterable[str]) -> None:
    """Entries `names` of `source` into `dest` as hard links (copies where links fail); nothing of `source` moves."""
    for name in names:
        src, dst = source / name, dest / name
        if os.path.lexists(dst):
            continue  # written by this run
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        elif src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            _link_or_copy(src, dst)


@contextmanager
def atomic_output_dir(target, overwrite: bool = False, *, owned: Optional[Sequence[str]] = None,
                      keep_others: bool = False, inputs: Iterable = (), option: str = "output",
                      writer: str = "this command") -> Iterator[Path]:
    """Yield an empty sibling folder of `target` to write the complete output into; on success it replaces
    `target` in one rename (see the module doc), on any error or interrupt it is removed and `target` is as before.

    `target` empty or missing: created. Non-empty: needs `overwrite`; its entries not matching `owned` (names or
    glob patterns; None: all are owned) are refused by name, or carried into the new folder with `keep_others`
    (the writer's own entries are replaced by what it writes). Paths are checked by `check_output_path`."""
    target = check_output_path(target, inputs, option)
    if target.parent.is_dir():
        try:
            remove_stale_partials(target)
        except OSError:
            pass
    if os.path.lexists(target) and not target.is_dir():
        raise OutputPathError(f"{option} {target}: exists and is not a folder")
    existing = sorted(os.listdir(target)) if target.is_dir() else []
    if existing and not overwrite:
        raise OutputExistsError(f"{option} {target}: already exists; pass --overwrite to replace it (it is not empty)")
    foreign = [n for n in existing if owned is not None and not matches_any(n, owned)]
    if foreign and not keep_others:
        shown = ", ".join(n + ("/" if (target / n).is_dir() else "") for n in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise OutputExistsError(f"{option} {target}: holds files {writer} does not write ({shown}{more}); "
                                "--overwrite replaces only its own files: choose another folder or move those away")
    created = []
    parent = target.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    in_place = _in_place(target)
    if in_place:
        print(f"note: {target} is a mount point or its parent is not writable: its files are replaced one by one",
              file=sys.stderr)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _make_sibling(target / target.name if in_place else target, "partial")
    except OSError as exc:
        raise OutputPathError(f"{option} {target}: cannot be created ({exc.strerror or exc})") from None
    _ACTIVE.add(str(tmp))
    try:
        _test_pause("start")
        yield tmp
        if keep_others and foreign and not in_place:
            _carry_over(target, tmp, foreign)
        _test_pause("swap")
        raise_if_interrupted()
        if in_place:
            _move_in(tmp, target, owned)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break
        raise
    finally:
        _ACTIVE.discard(str(tmp))
