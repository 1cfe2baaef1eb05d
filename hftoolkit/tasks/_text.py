"""What the text tasks (text and token classification, causal LM) share: the tokenizer's identity for cache
fingerprints, token-length statistics, a pad token, text-column checks, predict-input hints.

Decoder tokenizers (GPT-2, many Llama-family ones) come without a pad token; both text tasks pad with EOS then,
and say so. Text columns are checked on the raw splits, so a bad value is reported with its split and the row of
the source (not "row 200 of a batch" from inside a `datasets.map`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from hftoolkit.data import column_values
from hftoolkit.errors import DataError, ModelError

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.run.records import DataReport

log = logging.getLogger("hftoolkit")

# File types `hft predict` on an image run takes: a text run given one of these was probably pointed at the wrong run.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
LENGTH_SAMPLE = 10_000  # rows of train whose token lengths the data report summarizes


def tokenizer_identity(tokenizer: Any) -> str:
    """Content hash of a tokenizer (vocab, normalizer, special tokens), stable across processes.

    Used as part of the cache fingerprint instead of datasets' pickling-based hash, which changes when the
    fast tokenizer's truncation state changes and then silently re-tokenizes (or worse, keys on the wrong thing).
    """
    state: Any
    try:
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    except AttributeError:
        state = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([type(tokenizer).__name__, state, tokenizer.all_special_tokens, tokenizer.padding_side], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def token_length_stats(features: Dataset, sample: int = LENGTH_SAMPLE) -> dict[str, float]:
    """Token length statistics of the first `sample` rows of tokenized features (their `length` column)."""
    s = sorted(features["length"][:sample])
    if not s:
        return {}
    p95 = s[min(len(s) - 1, int(len(s) * 0.95))]
    return {"sample": len(s), "mean": sum(s) / len(s), "p50": s[len(s) // 2], "p95": p95, "max": s[-1]}


def ensure_pad_token(tokenizer: Any, ref: str, why: str) -> Any:
    """Give a tokenizer without a pad token its EOS token as pad (logged with `why` it is harmless for this task)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of {ref!r} has neither a pad nor an EOS token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("the tokenizer has no pad token: padding with its EOS token %r (%s)", tokenizer.eos_token, why)
    return tokenizer


def check_text_column(split: Dataset, role: str, col: str) -> tuple[int, int | None]:
    """Every value of `col` must be text: a null or non-text value is an error naming the split and row.

    Returns how many values are empty or whitespace only, and the row of the first of them.
    """
    empty, first = 0, None
    for i, v in enumerate(column_values(split, col)):
        if not isinstance(v, str):
            what = "missing (null)" if v is None else f"{type(v).__name__} {v!r}, not text"
            raise DataError(f"split {role!r} row {i}: column {col!r} is {what}")
        if not v.strip():
            empty += 1
            first = i if first is None else first
    return empty, first


def check_texts(
    splits: dict[str, Dataset], columns: list[str | None], report: DataReport, *, allow_empty: bool, refuse: bool = True
) -> None:
    """Check the text columns of every split, count empty texts in the report, and refuse them unless allowed."""
    for role, split in splits.items():
        for col in columns:
            if col is None:
                continue
            empty, first = check_text_column(split, role, col)
            report.empty_texts.setdefault(role, {})[col] = empty
            if empty and refuse and not allow_empty:
                raise DataError(
                    f"split {role!r} row {first}: column {col!r} is empty or whitespace only ({empty} such row(s) in "
                    "this split); fix or drop those rows, or set dataset.allow_empty_text: true to train on them"
                )


def length_stats(lengths: list[int]) -> dict[str, float]:
    """Token-length statistics of a sample of training examples, as the data report shows them."""
    s = sorted(lengths)
    p95 = s[min(len(s) - 1, int(len(s) * 0.95))]
    return {"sample": len(s), "mean": sum(s) / len(s), "p50": s[len(s) // 2], "p95": p95, "max": s[-1]}


def warn_image_paths(inputs: list[str]) -> None:
    """`hft predict` on a text run: an input that looks like an image file name was probably meant for an image run."""
    for n, item in enumerate(inputs, 1):
        text = item.strip()
        if text and not any(c.isspace() for c in text) and PurePath(text).suffix.lower() in IMAGE_SUFFIXES:
            log.warning("input %d looks like an image path; this run takes text (%r is classified as text)", n, text)
