"""Text corpora, tokenizer training and token windows for the training script.

The default corpus is the text of CPython's `pydoc_data.topics` (English technical prose shipped with every Python,
about 0.5 MB): one document per help topic, read through `datasets`. Train/validation split by document: the last
`val_fraction` of the topics (sorted by name) is validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

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
    from .cli import UsageError

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
    from .cli import UsageError

    for what, tokens, need in (("training", train_tokens, seq_len + 1), ("validation", val_tokens, seq_len)):
        if tokens < need:
            raise UsageError(f"{option} {seq_len} is longer than the corpus allows: its {what} text has {tokens} "
                             f"tokens, a window needs {need}; use a smaller {option} or more text")
