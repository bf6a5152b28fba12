"""Self-contained Hugging Face Hub repos for xlstm-flax models, and uploads through huggingface_hub.

`export_hub_folder(model, folder, tokenizer)` writes a folder that anyone with transformers (>=4.57), jax and flax
loads without this package:

    FlaxAutoModelForCausalLM.from_pretrained(folder_or_repo_id, trust_remote_code=True)     # transformers 4.x
    cls = get_class_from_dynamic_module(AutoConfig.from_pretrained(repo, trust_remote_code=True)
                                        .auto_map["FlaxAutoModelForCausalLM"], repo)       # transformers 5.x
    model = cls.from_pretrained(repo)

It holds `config.json` (with `auto_map` for `AutoConfig`, `FlaxAutoModel` and `FlaxAutoModelForCausalLM`),
`model.safetensors`, `generation_config.json`, the tokenizer files, a `README.md` model card (`build_model_card`,
from the template in `model_cards/`, with what the model folder knows: `card_facts_from_folder`) and the model code.

The model code is the IMPORT CLOSURE of the auto classes' modules (`ROOT_MODULES`): every package module they import
with a relative import, followed module by module (`code_files`). Lazy imports (inside functions) count like
top-level ones: they are paths the model may take (a library folder, an sLSTM config), and the folder must run them
without this package. The package is flat and its imports relative, so the modules are copied as they are, except
that each root module gets a generated block naming the rest of the closure (`from .module import *` under
`if False:`, never run): transformers 4's remote-code loader copies, for a local folder, only the modules a root file
names itself. A closure that reaches command code (`COMMAND_MODULES`) or needs a package outside what every
transformers/jax/flax user has is refused at export time: a packaging bug.

`push_to_hub(model_or_folder, repo_id)` exports (for a model) and uploads with `HfApi.create_repo` and
`HfApi.upload_folder`. Command line: `xlstm-flax export-hub --model DIR --output DIR [--push-to-hub REPO_ID]`.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from .safe_output import TOKENIZER_FILES

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

PACKAGE_DIR = Path(__file__).resolve().parent
# The modules the auto classes point at; every module they import from the package is found from there.
ROOT_MODULES = ("configuration_xlstm_flax", "modeling_flax_xlstm")
AUTO_MAP = {
    "AutoConfig": "configuration_xlstm_flax.XLSTMFlaxConfig",
    "FlaxAutoModel": "modeling_flax_xlstm.FlaxXLSTMModel",
    "FlaxAutoModelForCausalLM": "modeling_flax_xlstm.FlaxXLSTMForCausalLM",
}
# The commands and what only they use: never part of the exported model code.
COMMAND_MODULES = ("cli", "convert_common", "convert_library", "convert_orbax_to_hf", "hub", "training",
                   "training_io")
LOADER_BLOCK_HEAD = ("# ---- written by the xlstm-flax Hub export: transformers 4's remote-code loader copies, for a local",
                     "# folder, only the modules a file names itself; these lines name the rest of the import closure.",
                     "if False:  # never runs")
DEFAULT_TAGS = ("xlstm", "mlstm", "recurrent", "flax", "jax", "text-generation")
DEFAULT_LIMITATIONS = (
    "A language model continues text; it can produce false, biased or offensive text and must not be relied on "
    "for facts. Small models trained on small corpora mostly produce fluent-looking noise. "
    "transformers' PyTorch xLSTM ignores `attention_mask`; this Flax port honours it (left padding)."
)
logger = logging.getLogger(__name__)

__all__ = ["AUTO_MAP", "code_files", "import_closure", "write_code_files", "export_hub_folder", "push_to_hub",
           "build_model_card", "save_model_card", "check_model_card", "model_card_data", "perplexity_eval_result",
           "card_facts_from_folder", "main"]


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


def import_closure(roots: Iterable[str] = ROOT_MODULES) -> list[str]:
    """The package modules `roots` need: the roots and every module reached through relative imports at any depth
    (module level or inside functions), sorted."""
    seen, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(_package_imports(module))
    return sorted(seen)


def code_files() -> dict[str, Path]:
    """{file name: package source file} of the exported model code: `import_closure()`. ValueError when it reaches
    command code (`COMMAND_MODULES`) or imports a package remote-code users need not have: packaging bugs."""
    closure = import_closure()
    commands = sorted(set(closure) & set(COMMAND_MODULES))
    if commands:
        raise ValueError(f"the model's import closure reaches command code {commands}: the model core must not "
                         "import it (the export ships exactly the modules the model needs)")
    files = {f"{m}.py": PACKAGE_DIR / f"{m}.py" for m in closure}
    _check_requirements(files)
    return files


def loader_block(module: str, closure: Iterable[str]) -> str:
    """The lines appended to root `module`'s exported copy: `from .other import *` for every other module of its
    `closure`, under `if False:` (transformers 4's loader reads them with a regular expression; Python never runs
    them)."""
    others = sorted(set(closure) - {module})
    return "\n\n" + "\n".join(LOADER_BLOCK_HEAD) + "\n" + "".join(
        f"    from .{m} import *  # noqa: F401,F403\n" for m in others)


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
    """Copy the model's code files (`code_files`) into `directory`, each root module with its `loader_block`;
    returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, source in code_files().items():
        text = source.read_text(encoding="utf-8")
        module = name[: -len(".py")]
        if module in ROOT_MODULES:
            text = text.rstrip("\n") + "\n" + loader_block(module, import_closure([module]))
        (directory / name).write_text(text, encoding="utf-8")
        paths.append(directory / name)
    return paths


# ---------------------------------------------------------------------------------------------- model cards
DEFAULT_TAGS = ("xlstm", "mlstm", "recurrent", "flax", "jax", "text-generation")
DEFAULT_LIMITATIONS = (
    "A language model continues text; it can produce false, biased or offensive text and must not be relied on "
    "for facts. Small models trained on small corpora mostly produce fluent-looking noise. "
    "transformers' PyTorch xLSTM ignores `attention_mask`; this Flax port honours it (left padding)."
)

def perplexity_eval_result(perplexity: float, dataset: str, dataset_name: Optional[str] = None,
                           split: Optional[str] = "validation", **extra):
    """An `EvalResult` for a causal LM's perplexity on `dataset` (a Hub dataset id or a custom name)."""
    from huggingface_hub import EvalResult

    if not (isinstance(perplexity, (int, float)) and math.isfinite(perplexity) and perplexity >= 1.0):
        raise ValueError(f"perplexity must be a finite number >= 1, got {perplexity!r}")
    return EvalResult(task_type="text-generation", task_name="Causal language modeling", dataset_type=dataset,
                      dataset_name=dataset_name or dataset, dataset_split=split, metric_type="perplexity",
                      metric_name="Perplexity", metric_value=round(float(perplexity), 4), **extra)


def model_card_data(*, model_name: str, license: str = "apache-2.0", base_model: Optional[Union[str, list]] = None,
                    datasets: Optional[Union[str, list]] = None, tags: Iterable[str] = (),
                    language: Optional[Union[str, list]] = "en", perplexity: Optional[float] = None,
                    eval_dataset: Optional[str] = None, eval_dataset_name: Optional[str] = None,
                    eval_split: Optional[str] = "validation", eval_results: Optional[list] = None,
                    pipeline_tag: str = "text-generation", library_name: str = "transformers"):
    """The card's YAML metadata. `perplexity` (with `eval_dataset`) becomes an `EvalResult`; more can be given as
    `eval_results`."""
    from huggingface_hub import ModelCardData

    results = list(eval_results or [])
    if perplexity is not None:
        if not eval_dataset:
            raise ValueError("perplexity needs eval_dataset (the data it was measured on)")
        results.insert(0, perplexity_eval_result(perplexity, eval_dataset, eval_dataset_name, eval_split))
    all_tags = list(dict.fromkeys([*DEFAULT_TAGS, *tags]))
    return ModelCardData(
        model_name=model_name, license=license, library_name=library_name, pipeline_tag=pipeline_tag,
        tags=all_tags, language=language, base_model=base_model, datasets=datasets,
        metrics=["perplexity"] if any(r.metric_type == "perplexity" for r in results) else None,
        eval_results=results or None,
    )


def _config_fields(config) -> dict[str, Any]:
    if config is None:
        return {}
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    keys = ("layer_type", "num_blocks", "embedding_dim", "num_heads", "vocab_size", "context_length",
            "compute_dtype", "sequence_kernel", "step_kernel", "chunk_size", "ff_type")
    return {k: d.get(k) for k in keys}


def _count(params) -> Optional[str]:
    if params is None:
        return None
    import jax

    n = sum(int(getattr(x, "size", 0)) for x in jax.tree_util.tree_leaves(params))
    return _format_count(n)


def _format_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit} ({n:,})"
    return f"{n:,}"


def _training_details(log: dict) -> str:
    """A "Training" paragraph from a training_log.json written by `xlstm-flax train` (or the bundled model's)."""
    args = log.get("args") or {}
    parts = []
    corpus = log.get("corpus") or args.get("corpus")
    if corpus:
        parts.append(f"Trained on {corpus if isinstance(corpus, str) else ', '.join(map(str, corpus))}")
    steps = log.get("selected_step") or log.get("steps")
    if steps:
        parts.append(f"{steps} optimizer steps" + (" (the checkpoint with the best validation perplexity)"
                                                   if log.get("selected_step") else ""))
    if args:
        parts.append(f"AdamW, lr {args.get('lr')} {args.get('schedule', '')} schedule, warmup "
                     f"{args.get('warmup_steps')}, batch {args.get('batch_size')} x {args.get('seq_len')} tokens")
    text = "; ".join(str(p).strip() for p in parts) + "." if parts else ""
    command = log.get("train_command")
    if command:
        text += f" Command: `{command}`"
        if log.get("selected_step") and "--stop-at-step" not in command:
            text += f" (with `--stop-at-step {log['selected_step']}`: the shipped step)"
        text += "."
    return (text + " Full history: `training_log.json`.").strip()


def card_facts_from_folder(folder: Union[str, Path]) -> dict[str, Any]:
    """What a model folder already says about itself, as `build_model_card` arguments: `model_name` (its card's
    model name or model-index name, else the folder's name), and from a `training_log.json` (`xlstm-flax train`
    writes one) the validation perplexity (`perplexity`, `eval_dataset`, `eval_dataset_name`, `eval_split`) and
    `training_details`. Missing files give fewer keys; nothing is invented."""
    from huggingface_hub import ModelCard

    folder = Path(folder)
    facts: dict[str, Any] = {"model_name": folder.resolve().name}
    card_path = folder / "README.md"
    if card_path.is_file():
        try:
            data = ModelCard.load(card_path).data
            facts["model_name"] = data.model_name or facts["model_name"]
        except Exception:  # a card that does not parse: the folder's name stands
            pass
    log_path = folder / "training_log.json"
    if log_path.is_file():
        log = json.loads(log_path.read_text(encoding="utf-8"))
        perplexity = log.get("val_perplexity")
        if isinstance(perplexity, (int, float)) and math.isfinite(perplexity) and perplexity >= 1:
            args = log.get("args") or {}
            text_files = args.get("text_file")
            where = f" of {', '.join(map(str, text_files))}" if text_files else " of CPython's pydoc_data.topics"
            facts.update(perplexity=float(perplexity), eval_split="validation",
                         eval_dataset="text files" if text_files else "pydoc_data.topics",
                         eval_dataset_name=log.get("val_split")
                         or f"held-out {args.get('val_fraction', '?')} of the documents{where}")
        facts["training_details"] = _training_details(log)
    return facts


def build_model_card(config=None, *, model_name: str, repo_id: Optional[str] = None,
                     description: Optional[str] = None, training_details: Optional[str] = None,
                     limitations: Optional[str] = None, params=None, num_parameters: Optional[int] = None,
                     tokenizer_description: Optional[str] = None, example_prompt: str = "The xLSTM",
                     remote_code: bool = True, template_path: Union[str, Path, None] = None,
                     model_ref: Optional[str] = None, model_ref_import: Optional[str] = None,
                     **data_kwargs) -> "ModelCard":
    """A filled `ModelCard`. `config`: the model's `XLSTMFlaxConfig` (architecture table); `params` or
    `num_parameters`: the size; `data_kwargs`: `model_card_data` arguments (license, base_model, datasets, tags,
    perplexity, eval_dataset, ...). `remote_code`: the repo carries the model code (the `hub` export).
    `model_ref`: the Python expression the usage snippets load from (default: the quoted `repo_id`, else the
    quoted `model_name`), with `model_ref_import` the import line it needs, if any: a card whose folder is not on
    the Hub must name where it is, or its snippet fails."""
    from huggingface_hub import ModelCard

    from .configuration_xlstm_flax import package_data_dir

    data = model_card_data(model_name=model_name, **data_kwargs)
    fields = {k: ("?" if v is None else v) for k, v in _config_fields(config).items()}
    if num_parameters is not None:
        size = _format_count(int(num_parameters))
    else:
        size = _count(params) or "?"
    evaluation = [
        {"dataset": r.dataset_name, "split": r.dataset_split or "-", "metric": r.metric_name or r.metric_type,
         "value": r.metric_value}
        for r in (data.eval_results or [])
    ]
    datasets = data.datasets
    card = ModelCard.from_template(
        data,
        template_path=str(template_path or package_data_dir("model_cards") / "model_card_template.md"),
        model_title=model_name,
        model_description=description or f"`{model_name}`: an xLSTM causal language model in Flax/JAX.",
        repo_id=repo_id or model_name,
        model_ref=model_ref or '"' + (repo_id or model_name) + '"',
        model_ref_import=model_ref_import,
        num_parameters=size,
        tokenizer_description=tokenizer_description,
        transformers_requirement=">=4.57",
        example_prompt=example_prompt.replace('"', '\\"'),
        evaluation=evaluation,
        datasets=[datasets] if isinstance(datasets, str) else datasets,
        base_model=data.base_model if isinstance(data.base_model, str) else None,
        training_details=training_details or "Not documented.",
        limitations=limitations or DEFAULT_LIMITATIONS,
        remote_code=remote_code,
        **fields,
    )
    return card


def save_model_card(save_directory: Union[str, Path], config=None, **kwargs) -> Path:
    """Write `README.md` (a `build_model_card` card, checked with `check_model_card`) into `save_directory`."""
    card = build_model_card(config, **kwargs)
    check_model_card(card)
    path = Path(save_directory) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(str(path))
    return path


_UNRENDERED = re.compile(r"{{|}}|{%|%}")


def check_model_card(card: Union[ModelCard, str, Path]) -> "ModelCard":
    """Offline checks of a card (the Hub's own `ModelCard.validate` posts it to the Hub): it parses with
    huggingface_hub (strict metadata: model-index and eval results must be well formed), has license,
    library_name, pipeline_tag and tags, well-formed repo ids in base_model/datasets, and no unrendered template.
    Returns the parsed card; raises ValueError naming the problem."""
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if isinstance(card, ModelCard):
        text = str(card)
    elif isinstance(card, Path) or (isinstance(card, str) and "\n" not in card and Path(card).is_file()):
        text = Path(card).read_text(encoding="utf-8")
    else:
        text = str(card)
    if not text.startswith("---\n"):
        raise ValueError("model card has no YAML metadata block at the top")
    parsed = ModelCard(text, ignore_metadata_errors=False)  # raises on malformed metadata / model-index
    data = parsed.data
    for field in ("license", "library_name", "pipeline_tag", "tags"):
        if not getattr(data, field, None):
            raise ValueError(f"model card metadata lacks {field!r}")
    for field in ("base_model", "datasets"):
        values = getattr(data, field, None)
        for value in [values] if isinstance(values, str) else (values or []):
            try:
                validate_repo_id(value)
            except HFValidationError as e:
                raise ValueError(f"model card {field} {value!r} is not a valid Hub repo id: {e}") from e
    if data.eval_results:
        for r in data.eval_results:
            if not isinstance(r.metric_value, (int, float)):
                raise ValueError(f"eval result {r.metric_type} has a non-numeric value {r.metric_value!r}")
    if _UNRENDERED.search(parsed.text):
        raise ValueError("model card text has unrendered template markers")
    return parsed


# ---------------------------------------------------------------------------------------------- export
def export_hub_folder(model, save_directory: Union[str, Path], tokenizer=None, *, params=None,
                      model_name: Optional[str] = None, repo_id: Optional[str] = None, card=None,
                      overwrite: bool = False, **card_kwargs) -> Path:
    """Write a self-contained Hub repo folder for `model` (a `FlaxXLSTMForCausalLM`, or the path of a model
    directory). `tokenizer`: a tokenizer or a path (default: the model directory's, when `model` is a path).
    `card`: a ready `ModelCard`; otherwise one is built with `build_model_card(model.config,
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
    from .cli import UsageError, check_output_location
    from .checkpoint_io import resolve_model_source

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
