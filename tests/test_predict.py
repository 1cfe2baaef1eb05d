"""`hft predict` on text-classification runs (tiny BERT): adapter and full-weight run directories, plain and JSON
output with the dataset's label names, stdin input, and the errors a user can cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import run_hft
from tests.fixtures import REPO, text_cls_recipe

TEXTS = ["the kettle works perfectly.", "the tent broke after two days. never again."]
FAST = {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "report_to": ["none"], "seed": 7, "save_strategy": "no"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, reviews):
    tmp = tmp_path_factory.mktemp("predict")
    out = {}
    for kind, lora in (("adapter", {"r": 4, "alpha": 8, "dropout": 0.0}), ("full", {"enabled": False})):
        recipe = text_cls_recipe(tmp / f"{kind}.yaml", tiny_bert, reviews, tmp / kind, lora=lora, training=FAST)
        run_hft("finetune", recipe)
        out[kind] = tmp / kind
    assert (out["adapter"] / "model/adapter_config.json").is_file()
    assert (out["full"] / "model/model.safetensors").is_file() and not (out["full"] / "model/adapter_config.json").exists()
    return out


def test_predict_prints_label_names_and_scores(runs):
    plain = run_hft("predict", runs["adapter"], *TEXTS).stdout.splitlines()
    assert len(plain) == 2
    rows = [line.split("\t") for line in plain]
    assert [text for _, _, text in rows] == TEXTS
    for label, score, _ in rows:
        assert label in {"negative", "positive"}  # the dataset's names, never LABEL_0
        assert 0.5 <= float(score) <= 1.0  # the winning class of two

    as_json = [json.loads(line) for line in run_hft("predict", runs["adapter"], *TEXTS, "--json").stdout.splitlines()]
    assert [r["input"] for r in as_json] == TEXTS
    assert [r["label"] for r in as_json] == [label for label, _, _ in rows]
    assert [round(r["score"], 4) for r in as_json] == [float(score) for _, score, _ in rows]


def test_predict_on_a_full_weight_run_reading_stdin(runs):
    proc = subprocess.run(
        [sys.executable, "-m", "hftoolkit", "predict", str(runs["full"]), "-", "--json"],
        input="\n".join(TEXTS) + "\n\n", cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in results] == TEXTS  # one per non-empty line
    assert all(r["label"] in {"negative", "positive"} and 0.5 <= r["score"] <= 1.0 for r in results)


def test_predict_on_a_missing_or_unfinished_run_is_one_line_exit_2(runs, tmp_path):
    proc = run_hft("predict", tmp_path / "nope", "text", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.resolved.yaml").write_text((runs["full"] / "recipe.resolved.yaml").read_text())
    (unfinished / "manifest.json").write_text(json.dumps({"status": "running"}))
    proc = run_hft("predict", unfinished, "text", check=False)
    assert proc.returncode == 2 and "has not finished training" in proc.stderr


def test_predict_help_lists_generation_options():
    proc = run_hft("predict", "--help")
    for option in ("--json", "--max-new-tokens", "--do-sample", "--temperature", "--top-p"):
        assert option in proc.stdout
