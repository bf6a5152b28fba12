"""Model cards for xlstm-flax models (installed as `modeling_xlstm_flax.model_card`).

A Jinja template (`model_card_template.md`, huggingface_hub's `ModelCard.from_template` format) filled from a
model's config and what the caller knows (license, base model, datasets, perplexity):

    from modeling_xlstm_flax.model_card import build_model_card, check_model_card
    card = build_model_card(model.config, model_name="xlstm-tiny", repo_id="me/xlstm-tiny",
                            perplexity=12.3, eval_dataset="pydoc_data.topics", num_parameters=1_234_567)
    card.save("out/README.md")          # or save_model_card("out", config=..., ...)
    check_model_card("out/README.md")   # offline checks (the Hub's own validation needs the network)

`hub.export_hub_folder` writes one with every export; the conversion commands can call `save_model_card` with
`base_model=` the converted checkpoint.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from .configuration_xlstm_flax import package_data_dir

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

TEMPLATE_PATH = package_data_dir("model_cards") / "model_card_template.md"
DEFAULT_TAGS = ("xlstm", "mlstm", "recurrent", "flax", "jax", "text-generation")
DEFAULT_LIMITATIONS = (
    "A language model continues text; it can produce false, biased or offensive text and must not be relied on "
    "for facts. Small models trained on small corpora mostly produce fluent-looking noise. "
    "transformers' PyTorch xLSTM ignores `attention_mask`; this Flax port honours it (left padding)."
)

__all__ = ["TEMPLATE_PATH", "model_card_data", "build_model_card", "save_model_card", "check_model_card",
           "perplexity_eval_result", "card_facts_from_folder"]


def perplexity_eval_result(perplexity: float, dataset: str, dataset_name: Optional[str] = None,
                           split: Optional[str] = "validation", **extra) -> EvalResult:
    """An `EvalResult` for a causal LM's perplexity on `dataset` (a Hub dataset id or a custom name)."""
    if not (isinstance(perplexity, (int, float)) and math.isfinite(perplexity) and perplexity >= 1.0):
        raise ValueError(f"perplexity must be a finite number >= 1, got {perplexity!r}")
    return EvalResult(task_type="text-generation", task_name="Causal language modeling", dataset_type=dataset,
                      dataset_name=dataset_name or dataset, dataset_split=split, metric_type="perplexity",
                      metric_name="Perplexity", metric_value=round(float(perplexity), 4), **extra)


def model_card_data(*, model_name: str, license: str = "apache-2.0", base_model: Optional[Union[str, list]] = None,
                    datasets: Optional[Union[str, list]] = None, tags: Iterable[str] = (),
                    language: Optional[Union[str, list]] = "en", perplexity: Optional[float] = None,
                    eval_dataset: Optional[str] = None, eval_dataset_name: Optional[str] = None,
                    eval_split: Optional[str] = "validation", eval_results: Optional[list[EvalResult]] = None,
                    pipeline_tag: str = "text-generation", library_name: str = "transformers") -> ModelCardData:
    """The card's YAML metadata. `perplexity` (with `eval_dataset`) becomes an `EvalResult`; more can be given as
    `eval_results`."""
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
    import json

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
                     **data_kwargs) -> ModelCard:
    """A filled `ModelCard`. `config`: the model's `XLSTMFlaxConfig` (architecture table); `params` or
    `num_parameters`: the size; `data_kwargs`: `model_card_data` arguments (license, base_model, datasets, tags,
    perplexity, eval_dataset, ...). `remote_code`: the repo carries the model code (the `hub` export).
    `model_ref`: the Python expression the usage snippets load from (default: the quoted `repo_id`, else the
    quoted `model_name`), with `model_ref_import` the import line it needs, if any: a card whose folder is not on
    the Hub must name where it is, or its snippet fails."""
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
        template_path=str(template_path or TEMPLATE_PATH),
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


def check_model_card(card: Union[ModelCard, str, Path]) -> ModelCard:
    """Offline checks of a card (the Hub's own `ModelCard.validate` posts it to the Hub): it parses with
    huggingface_hub (strict metadata: model-index and eval results must be well formed), has license,
    library_name, pipeline_tag and tags, well-formed repo ids in base_model/datasets, and no unrendered template.
    Returns the parsed card; raises ValueError naming the problem."""
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
