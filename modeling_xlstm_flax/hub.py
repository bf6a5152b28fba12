"""Self-contained Hugging Face Hub repos for xlstm-flax models, and uploads through huggingface_hub.

`export_hub_folder(model, folder, tokenizer)` writes a folder that anyone with transformers (>=4.57), jax and flax
loads without this package:

    FlaxAutoModelForCausalLM.from_pretrained(folder_or_repo_id, trust_remote_code=True)     # transformers 4.x
    cls = get_class_from_dynamic_module(AutoConfig.from_pretrained(repo, trust_remote_code=True)
                                        .auto_map["FlaxAutoModelForCausalLM"], repo)       # transformers 5.x
    model = cls.from_pretrained(repo)

It holds `config.json` (with `auto_map` for `AutoConfig`, `FlaxAutoModel` and `FlaxAutoModelForCausalLM`),
`model.safetensors`, `generation_config.json`, the tokenizer files, a `README.md` model card
(`modeling_xlstm_flax.model_card`) and the model code. transformers' remote-code loader imports the code files as
flat modules of one folder, following `from .module import ...` lines, so the export copies the package modules the
model needs (`modeling_flax_xlstm`, `configuration_xlstm_flax`, `translation`, `mlstm_kernels`, `input_checks`, ...,
found by following the imports) and rewrites their package-relative imports (`from .configuration_xlstm_flax import
XLSTMFlaxConfig`, `from . import mlstm_kernels`) to those flat modules. The package sources are never modified.

`push_to_hub(model_or_folder, repo_id)` exports (for a model) and uploads with `HfApi.create_repo` and
`HfApi.upload_folder`. Command line: `xlstm-flax export-hub --model DIR --output DIR [--push-to-hub REPO_ID]`.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from .safe_output import TOKENIZER_FILES

PACKAGE_DIR = Path(__file__).resolve().parent
# The modules the auto classes point at; every module they import from the package is found from there.
ROOT_MODULES = ("configuration_xlstm_flax", "modeling_flax_xlstm")
AUTO_MAP = {
    "AutoConfig": "configuration_xlstm_flax.XLSTMFlaxConfig",
    "FlaxAutoModel": "modeling_flax_xlstm.FlaxXLSTMModel",
    "FlaxAutoModelForCausalLM": "modeling_flax_xlstm.FlaxXLSTMForCausalLM",
}
logger = logging.getLogger(__name__)

__all__ = ["AUTO_MAP", "code_files", "write_code_files", "export_hub_folder", "push_to_hub", "main"]


# ---------------------------------------------------------------------------------------------- code files
def _package_imports(module: str) -> set[str]:
    """The package modules `module` imports (`from .x import ...` and `from . import x`, at any depth)."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1:
                raise ValueError(f"{module}.py: `from {'.' * node.level}{node.module or ''} import ...` leaves the "
                                 "package; the exported repo is one flat folder")
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return {name.split(".")[0] for name in found}


def _loader_imports(module: str) -> set[str]:
    """The modules transformers' remote-code loader copies next to `module`: for a local folder only those named
    in the file's own `from .x import` lines (it does not follow their imports)."""
    text = (PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8")
    return set(re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE))


def code_files() -> dict[str, Path]:
    """{file name: package source file} of every module the exported repo needs: the closure of `ROOT_MODULES`'
    package imports. Copied as they are (the package is flat, its imports relative). Raises ValueError when a
    root module does not itself name every module it needs (the loader would miss it): a packaging bug."""
    closure: dict[str, set[str]] = {}
    for root in ROOT_MODULES:
        seen, todo = set(), [root]
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += sorted(_package_imports(module))
        missing = seen - {root} - _loader_imports(root)
        if missing:
            raise ValueError(f"{root}.py needs {sorted(missing)} through other modules but does not import them "
                             "itself with `from .module import ...`; transformers' remote-code loader would not "
                             "copy them")
        closure[root] = seen
    files = {f"{m}.py": PACKAGE_DIR / f"{m}.py" for m in sorted(set().union(*closure.values()))}
    _check_requirements(files)
    return files


# What a remote-code user has: these distributions and their requirements (and the standard library).
REMOTE_DISTRIBUTIONS = ("transformers", "jax", "jaxlib", "flax")


def _remote_modules() -> set[str]:
    """Top-level import names of REMOTE_DISTRIBUTIONS and their (non-extra) requirements, as installed here."""
    from importlib import metadata

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    dists, todo = set(), list(REMOTE_DISTRIBUTIONS)
    while todo:
        dist = norm(todo.pop())
        if dist in dists:
            continue
        dists.add(dist)
        try:
            requirements = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in requirements if "extra ==" not in r]
    return {module for module, owners in metadata.packages_distributions().items()
            if any(norm(owner) in dists for owner in owners)} | set(sys.stdlib_module_names) | {"__future__"}


def _check_requirements(files: dict[str, Path]) -> None:
    """transformers' remote-code loader demands every package a file imports outside `try` blocks: the exported
    code may only need what transformers/jax/flax users have."""
    from transformers.dynamic_module_utils import get_imports

    allowed = _remote_modules()
    for name, path in files.items():
        extra = sorted(set(get_imports(path)) - allowed)
        if extra:
            raise ValueError(f"exported {name} imports {extra} outside a try block; transformers' remote-code "
                             "loader would require them of every user (import them inside try/except "
                             "ImportError)")


def write_code_files(directory: Union[str, Path]) -> list[Path]:
    """Copy the model's code files (`code_files`) into `directory`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, source in code_files().items():
        shutil.copyfile(source, directory / name)
        paths.append(directory / name)
    return paths


# ---------------------------------------------------------------------------------------------- export
def export_hub_folder(model, save_directory: Union[str, Path], tokenizer=None, *, params=None,
                      model_name: Optional[str] = None, repo_id: Optional[str] = None, card=None,
                      overwrite: bool = False, **card_kwargs) -> Path:
    """Write a self-contained Hub repo folder for `model` (a `FlaxXLSTMForCausalLM`, or the path of a model
    directory). `tokenizer`: a tokenizer or a path (default: the model directory's, when `model` is a path).
    `card`: a ready `ModelCard`; otherwise one is built with `model_cards.build_model_card(model.config,
    model_name=..., repo_id=..., **card_kwargs)` (license, base_model, datasets, perplexity, eval_dataset, ...).
    Returns the folder."""
    from .safe_output import MODEL_FILES, TOKENIZER_FILES as WRITTEN_TOKENIZER_FILES, atomic_output_dir, \
        check_output_path

    inputs = [m for m in (model, tokenizer) if isinstance(m, (str, Path))]
    folder = check_output_path(save_directory, inputs, "output")  # empty / overlapping an input: refused up front
    owned = MODEL_FILES + WRITTEN_TOKENIZER_FILES + ("README.md",) + tuple(code_files())
    with atomic_output_dir(folder, overwrite, owned=owned, inputs=inputs, option="output",
                           writer="the export") as tmp:  # checks the folder before the model is loaded
        _export_into(tmp, folder, model, tokenizer, params, model_name, repo_id, card, card_kwargs)
    return folder


def _export_into(tmp: Path, folder: Path, model, tokenizer, params, model_name, repo_id, card, card_kwargs) -> None:
    """The export's files, written into the empty folder `tmp` (which becomes `folder`)."""
    from .model_card import build_model_card, card_facts_from_folder, check_model_card

    source_dir = None
    if isinstance(model, (str, Path)):
        source_dir = str(model)
        from .modeling_flax_xlstm import FlaxXLSTMForCausalLM  # our config or transformers' xLSTMConfig

        model = FlaxXLSTMForCausalLM.from_pretrained(source_dir)
        if tokenizer is None:
            tokenizer = _model_tokenizer(source_dir)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = _load_tokenizer(str(tokenizer))

    params = model.params if params is None else params
    model.save_pretrained(tmp, params=params)  # config.json, model.safetensors, generation_config.json
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = dict(AUTO_MAP)
    config["architectures"] = ["FlaxXLSTMForCausalLM"]
    config.pop("_name_or_path", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_code_files(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)

    # what the source folder says about itself (its card's model name, training_log.json's perplexity and run)
    facts = card_facts_from_folder(source_dir) if source_dir else {}
    name = model_name or (repo_id.split("/")[-1] if repo_id else None) or facts.get("model_name") or "xlstm-flax"
    facts.pop("model_name", None)
    if "perplexity" in card_kwargs:  # the caller's evaluation replaces the log's
        for key in ("perplexity", "eval_dataset", "eval_dataset_name", "eval_split"):
            facts.pop(key, None)
    if card is None:
        where = {} if repo_id else {"model_ref": '"' + str(folder) + '"'}  # not on the Hub: the folder
        card = build_model_card(model.config, model_name=name, repo_id=repo_id or name, params=params,
                                **{**facts, **where, **card_kwargs})
    check_model_card(card)
    card.save(str(tmp / "README.md"))


def _load_tokenizer(source: str):
    """`AutoTokenizer.from_pretrained(source)`, with a clear error when `source` holds no usable tokenizer."""
    from transformers import AutoTokenizer

    path = Path(source)
    if path.exists() and not path.is_dir():
        raise ValueError(f"tokenizer {source}: is a file; give the folder holding tokenizer.json / "
                         "tokenizer_config.json")
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"tokenizer {source}: the folder has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})")
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # transformers raises KeyError/TypeError/AttributeError for folders it cannot map
        raise ValueError(f"cannot load a tokenizer from {source}: {type(exc).__name__}: {exc}") from exc


def _model_tokenizer(source_dir: str):
    """The tokenizer saved with a model, or None (with a warning) when the model folder has none."""
    path = Path(source_dir)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        logger.warning("%s has no tokenizer files: exporting without a tokenizer (add one with tokenizer=... / "
                       "--tokenizer DIR)", source_dir)
        return None
    try:
        return _load_tokenizer(source_dir)
    except ValueError as exc:
        logger.warning("%s; exporting without a tokenizer (add one with tokenizer=... / --tokenizer DIR)", exc)
        return None


def push_to_hub(model_or_folder, repo_id: str, tokenizer=None, *, token: Optional[str] = None,
                private: Optional[bool] = None, revision: Optional[str] = None,
                commit_message: Optional[str] = None, create_pr: bool = False, api=None, **export_kwargs):
    """Upload a model (exported first, into a temporary folder) or an exported folder to the Hub repo `repo_id`
    with huggingface_hub: `HfApi.create_repo(exist_ok=True)` then `HfApi.upload_folder`. Returns the
    `CommitInfo` (`upload_folder`'s result). A folder must hold an export (config.json with `auto_map`)."""
    from huggingface_hub import HfApi

    api = api if api is not None else HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="xlstm-flax-hub-") as tmp:
        if isinstance(model_or_folder, (str, Path)) and _is_export(Path(model_or_folder)):
            folder = Path(model_or_folder)
        else:
            folder = export_hub_folder(model_or_folder, Path(tmp) / "repo", tokenizer, repo_id=repo_id,
                                       **export_kwargs)
        api.create_repo(repo_id=repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, repo_type="model",
                                 revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or "Upload xLSTM Flax model (xlstm-flax export)")


def _is_export(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    return "auto_map" in json.loads(config.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlstm-flax export-hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="model directory (or Hub id) loadable by FlaxAutoModelForCausalLM, or an exported folder "
                             "with --push-to-hub")
    parser.add_argument("--output", help="folder to write the Hub repo into (default: a temporary folder, with "
                                         "--push-to-hub)")
    parser.add_argument("--tokenizer", help="tokenizer directory or Hub id (default: the model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--commit-message", help="commit message of the upload")
    card = parser.add_argument_group("model card")
    card.add_argument("--model-name", help="the card's model name (default: the repo or folder name)")
    card.add_argument("--license", default="apache-2.0")
    card.add_argument("--base-model", help="Hub id of the model this one was converted or fine-tuned from")
    card.add_argument("--dataset", action="append", default=None, help="Hub id of a training dataset (repeatable)")
    card.add_argument("--perplexity", type=float, help="evaluation perplexity to record")
    card.add_argument("--eval-dataset", help="what the perplexity was measured on (Hub id or name)")
    card.add_argument("--eval-split", default="validation")
    card.add_argument("--description", help="one paragraph describing the model")
    card.add_argument("--training-details", help="how it was trained (markdown)")
    return parser


def main(argv=None) -> int:
    """The command: bad input (a missing model folder, an unwritable output) is one line on stderr, exit 1."""
    from .cli import run_command

    return run_command("xlstm-flax export-hub", _main, argv)


def _main(argv=None) -> int:
    from .cli import UsageError, check_output_location, resolve_model_source

    args = build_parser().parse_args(argv)
    card_kwargs = dict(license=args.license, base_model=args.base_model, datasets=args.dataset,
                       perplexity=args.perplexity, eval_dataset=args.eval_dataset, eval_split=args.eval_split,
                       description=args.description, training_details=args.training_details,
                       model_name=args.model_name)
    card_kwargs = {k: v for k, v in card_kwargs.items() if v is not None}
    if args.output is None and args.push_to_hub is None:
        raise UsageError("give --output, --push-to-hub, or both")
    model = resolve_model_source(args.model)
    tokenizer = resolve_model_source(args.tokenizer, "--tokenizer", need_config=False) if args.tokenizer else None
    source: Any = model
    if args.output is not None:
        check_output_location(args.output, inputs=[model] + ([tokenizer] if tokenizer else []))
        folder = export_hub_folder(model, args.output, tokenizer, repo_id=args.push_to_hub,
                                   overwrite=args.overwrite, **card_kwargs)
        print(f"wrote {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir())))
        source = folder
    if args.push_to_hub:
        kwargs = {} if args.output is not None else card_kwargs
        info = push_to_hub(source, args.push_to_hub, tokenizer, token=args.token, private=args.private or None,
                           commit_message=args.commit_message, **kwargs)
        print(f"uploaded to {args.push_to_hub}: {getattr(info, 'commit_url', info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
