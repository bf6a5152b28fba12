"""Where a model's files are, and which names and links inside its folder may be followed.

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


def resolve_model_dir(name_or_path, subfolder: str = "", **hub_kwargs) -> Path:
    """A local model folder (symlinks resolved), or a Hub repo id downloaded with huggingface_hub (config, weights,
    tokenizer and generation files; a snapshot of its cache, whose files link into the repo's blobs). ValueError
    naming the path when it is a file, a broken link or a link loop, or neither an existing folder nor a valid repo
    id (`cli.resolve_model_source` decides which), and when `subfolder` is not a plain relative name
    (`file_name_problem`) or no folder of the model."""
    from .cli import resolve_model_source

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
