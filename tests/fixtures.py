"""Builders for tiny models and datasets used across the tests (no downloads: everything is made locally).

Kept as plain functions so conftest fixtures, benchmark smoke tests and helper scripts can all call them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REVIEWS = REPO / "recipes" / "data" / "reviews"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def review_vocab() -> list[str]:
    """Word-level vocabulary of the shipped review dataset plus single characters, so nothing maps to [UNK]."""
    words: set[str] = set()
    for f in REVIEWS.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            text = json.loads(line)["text"].lower()
            for w in text.replace(".", " . ").replace(",", " , ").replace("-", " - ").split():
                words.add(w)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    return SPECIALS + sorted(words) + sorted(set(chars) - words) + [f"##{c}" for c in chars]


def build_tiny_bert(out: Path, *, num_labels: int | None = None, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer, saved as safetensors to `out`."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = review_vocab()
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    if num_labels is None:
        model = BertModel(config)
        model.config.architectures = ["BertModel"]
    else:
        from transformers import BertForSequenceClassification

        config.num_labels = num_labels
        model = BertForSequenceClassification(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def small_reviews(out: Path, n_train: int = 200, n_val: int = 60, n_test: int = 60, seed: int = 0) -> dict[str, Path]:
    """Subsets of the shipped review dataset as jsonl files (text, label strings)."""
    rows = {s: [json.loads(x) for x in (REVIEWS / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "validation", "test")}
    rng = random.Random(seed)
    sizes = {"train": n_train, "validation": n_val, "test": n_test}
    return {s: write_jsonl(out / f"{s}.jsonl", rng.sample(rows[s], min(sizes[s], len(rows[s])))) for s in sizes}


def text_cls_recipe(path: Path, model: Path, files: dict[str, Path], output_dir: Path, **sections) -> Path:
    """A fast text-classification recipe for the tiny BERT; `sections` are merged over the defaults."""
    import yaml

    recipe = {
        "task": "text-classification",
        "model": {"name": str(model)},
        "dataset": {
            "files": {k: str(v) for k, v in files.items()},
            "columns": {"text": "text", "label": "label"},
            "max_length": 32,
        },
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "logging_steps": 2, "report_to": ["none"], "seed": 7,
        },
        "output_dir": str(output_dir),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
