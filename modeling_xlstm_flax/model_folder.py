"""Where a model's files are, and which names and links inside its folder may be followed.

* `resolve_model_source(value, option)`: a model given by name (a command's `--model`, `from_pretrained`'s first
  argument) checked before any work: an existing local model folder, or something shaped like a Hub id;
* `resolve_model_dir(name_or_path, subfolder)`: a local model folder, or a Hub id downloaded (or found in the cache,
  offline) by huggingface_hub; its cache keeps a repo as `models--ORG--NAME/{blobs/<hash>, refs/main,
  snapshots/<rev>/<file> -> ../../blobs/<hash>}`, and a snapshot is the model folder;
* `file_name_problem(name)`: a file or folder name that an index (or a caller, `subfolder`) gives, judged as written:
  a plain relative name inside the folder, or the reason it is not;
* `link_roots(folder)`: where the files listed in `folder` may really lie once their symlinks are followed: the
  folder, and in the Hub cache its repo's blobs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def file_name_problem(name) -> Optional[str]:
    """Why `name` (a file or folder name a checkpoint index or a caller gives, relative to a model folder) is not
    a plain relative name inside that folder, or None. Judged as written, before any file system access: a name
    is `/`-separated parts, none empty, `.` or `..`; not absolute; no backslash, drive colon or NUL."""
    if not isinstance(name, str) or not name:
        return "an empty name"
    if name.startswith("/") or os.path.isabs(name):
        return "an absolute path, outside the model folder"
    if any(c in name for c in "\\:\0"):
        return "not a plain relative name (a backslash, drive colon or NUL character)"
    parts = name.split("/")
    if ".." in parts:
        return "a path outside the model folder (a '..' part)"
    if any(part in ("", ".") for part in parts):
        return "not a plain relative name (an empty or '.' part)"
    return None


def link_roots(folder: Path) -> list[Path]:
    """Where a file listed in `folder` may really lie (its symlinks resolved): the folder itself and, when the
    folder is (inside) a snapshot of the Hugging Face Hub cache (`<repo>/snapshots/<rev>/...`, files linking to
    `<repo>/blobs/<hash>`), that repo's blobs: never another repo's, nor anywhere else."""
    folder = folder.resolve()
    roots = [folder]
    for snapshot in (folder, *folder.parents):
        if snapshot.parent.name == "snapshots" and (snapshot.parent.parent / "blobs").is_dir():
            roots += [snapshot, (snapshot.parent.parent / "blobs").resolve()]
            break
    return roots


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
    like a Hub id (`name` or `owner/name`, and no such local path); otherwise a ValueError naming `option` and the
    value: a missing path, a file, a broken link or a symlink loop."""
    text = str(value)
    path = Path(text).expanduser()
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop on older Pythons
            raise ValueError(f"{option} {text}: a broken symbolic link or a symlink loop") from None
    try:
        exists = path.exists()
    except OSError as exc:  # ELOOP through a looping parent, a name too long, ...
        raise ValueError(f"{option} {text}: cannot be read ({exc.strerror or exc})") from None
    if exists:
        if not path.is_dir():
            wanted = "a model folder (config.json, model.safetensors)" if need_config else "a folder"
            raise ValueError(f"{option} {text}: is a file; expected {wanted}")
        if need_config and not (path / "config.json").is_file():
            raise ValueError(f"{option} {text}: the folder has no config.json, so it is not a model folder")
        return str(path)
    if _looks_like_hub_id(text):
        return text
    raise ValueError(f"{option} {text}: no such folder (and not a Hub model id such as 'owner/name')")


def resolve_model_dir(name_or_path, subfolder: str = "", **hub_kwargs) -> Path:
    """A local model folder (symlinks resolved), or a Hub repo id downloaded with huggingface_hub (config, weights,
    tokenizer and generation files; a snapshot of its cache, whose files link into the repo's blobs). ValueError
    naming the path when it is a file, a broken link or a link loop, or neither an existing folder nor a valid repo
    id (`resolve_model_source` decides which), and when `subfolder` is not a plain relative name
    (`file_name_problem`) or no folder of the model."""
    if subfolder:
        problem = file_name_problem(subfolder)
        if problem:
            raise ValueError(f"subfolder={subfolder!r}: {problem}; expected a folder name inside the model")
    source = resolve_model_source(name_or_path, option="model", need_config=False)
    path = Path(source).expanduser()
    if path.is_dir():
        local = path.resolve()
    else:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.yaml", "*.safetensors", "*.msgpack", "*.txt", "*.model", "*.jinja", "*.md"]
        try:
            local = Path(snapshot_download(
                source, allow_patterns=[f"{subfolder}/{p}" if subfolder else p for p in patterns], **hub_kwargs))
        except Exception as e:
            raise OSError(f"cannot get model {source!r} from the Hub ({type(e).__name__}: {e})") from None
    if subfolder and not (local / subfolder).is_dir():
        raise ValueError(f"subfolder={subfolder!r}: no such folder in the model {source} ({local})")
    return local / subfolder if subfolder else local
