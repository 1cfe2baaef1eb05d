"""Text classification beyond one label per row, on the tiny BERT: multi-label (a list of labels per row: sigmoid + BCE,
threshold, micro/macro F1, exact match) and regression (numbers with dataset.regression: MSE, Pearson, Spearman),
through the real CLI in-process; plus the shipped evaluate modules against scipy / scikit-learn / seqeval.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets  # noqa: F401  (imported before any CliRunner run: its log handler must not bind to a runner's stream)
import pytest
from typer.testing import CliRunner

from hftoolkit import metrics
from hftoolkit.cli import app
from tests.fixtures import text_cls_recipe, write_jsonl

runner = CliRunner()
TEXTS = ["the kettle works perfectly.", "after a month of use, the tent broke after two days. never again."]
TIME_WORDS = ("month", "days", "weeks", "after", "year")
FAST = {"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "report_to": ["none"], "seed": 7, "eval_strategy": "no", "save_strategy": "no"}
# Measured on these 200 training rows (4 epochs of the tiny random BERT, LoRA r=4): validation Pearson 0.48.
MIN_PEARSON = 0.3


def hft(*args):
    return runner.invoke(app, [str(a) for a in args])


def derived(reviews: dict[str, Path], out: Path, make) -> dict[str, Path]:
    files = {}
    for split, path in reviews.items():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        files[split] = write_jsonl(out / f"{split}.jsonl", [{"text": r["text"], "label": make(r)} for r in rows])
    return files


def multi_labels(row: dict) -> list[str]:
    return [row["label"]] + (["time"] if any(w in row["text"].lower() for w in TIME_WORDS) else [])


def rating(row: dict) -> float:
    # Centred on 0, where a new regression head starts, so a few steps of the tiny model learn the sentiment in it.
    return (1.0 if row["label"] == "positive" else -1.0) + (len(row["text"]) % 7 - 3) / 10


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, tiny_bert, reviews):
    tmp = tmp_path_factory.mktemp("multilabel")
    files = derived(reviews, tmp / "data", multi_labels)
    recipe = text_cls_recipe(tmp / "r.yaml", tiny_bert, files, tmp / "run", training=FAST)
    result = hft("finetune", recipe)
    assert result.exit_code == 0, result.output
    return tmp / "run"


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory, tiny_bert, reviews):
    tmp = tmp_path_factory.mktemp("regression")
    files = derived(reviews, tmp / "data", rating)
    recipe = text_cls_recipe(tmp / "r.yaml", tiny_bert, files, tmp / "run", training={**FAST, "epochs": 4, "learning_rate": 1e-2}, dataset={
        "files": {k: str(v) for k, v in files.items()}, "columns": {"text": "text", "label": "label"}, "max_length": 32,
        "regression": True,
    })
    result = hft("finetune", recipe)
    assert result.exit_code == 0, result.output
    return tmp / "run"


def evaluated(run: Path) -> tuple[dict, dict]:
    """(validation scores at the end of training, the reloaded run's scores on the same split)."""
    result = hft("evaluate", run, "--split", "validation")
    assert result.exit_code == 0, result.output
    validation = json.loads((run / "train_results.json").read_text())["validation"]
    return validation, json.loads((run / "eval_results.json").read_text())


def test_multi_label_trains_with_sigmoid_and_scores_micro_macro_f1(multi_run):
    config = json.loads((multi_run / "model/config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "negative", "1": "positive", "2": "time"}
    counts = json.loads((multi_run / "data_report.json").read_text())["label_counts"]["train"]
    assert counts["time"] > 0 and counts["negative"] + counts["positive"] == 200  # rows carrying each label
    validation, results = evaluated(multi_run)
    assert set(results["metrics"]) >= {"f1_micro", "f1_macro", "exact_match_accuracy", "loss"}
    for key in ("f1_micro", "f1_macro", "exact_match_accuracy"):
        assert results["metrics"][key] == pytest.approx(validation[f"eval_{key}"], abs=1e-6), key
    assert results["artifacts"] == []  # no confusion matrix: an example may have several labels


def test_multi_label_predict_returns_every_label_over_the_threshold(multi_run):
    from hftoolkit.commands.predict import predict_run

    result = hft("predict", multi_run, *TEXTS, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in rows] == TEXTS
    for row in rows:
        scores = [x["score"] for x in row["labels"]]
        assert all(s >= 0.5 for s in scores) and scores == sorted(scores, reverse=True)
    # The threshold decides: near 0 every label is returned, near 1 none.
    low = predict_run(multi_run, TEXTS, {"threshold": 1e-6})
    assert all({x["label"] for x in r["labels"]} == {"negative", "positive", "time"} for r in low)
    assert all(r["labels"] == [] for r in predict_run(multi_run, TEXTS, {"threshold": 1 - 1e-9}))
    plain = hft("predict", multi_run, TEXTS[0]).stdout.splitlines()
    assert len(plain) == 1 and plain[0].split("\t")[-1] == TEXTS[0]


def test_regression_predicts_one_number_scored_by_mse_pearson_spearman(regression_run):
    config = json.loads((regression_run / "model/config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    validation, results = evaluated(regression_run)
    assert set(results["metrics"]) >= {"mse", "pearsonr", "spearmanr"}
    for key in ("mse", "pearsonr", "spearmanr"):
        assert results["metrics"][key] == pytest.approx(validation[f"eval_{key}"], abs=1e-6), key
    assert results["metrics"]["pearsonr"] >= MIN_PEARSON, results["metrics"]
    result = hft("predict", regression_run, *TEXTS, "--json")
    values = [json.loads(line)["value"] for line in result.stdout.splitlines()]
    assert len(values) == 2 and all(isinstance(v, float) for v in values)
    assert hft("predict", regression_run, TEXTS[0]).stdout.startswith(f"{values[0]:.4f}\t")


# ----------------------------------------------------------------------------------------------------------------------
# What is refused


def refused(result, *fragments: str) -> None:
    """Exit code 2 and an `error:` message (one line; a recipe error lists its problems below) with every fragment."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    message = result.output[result.output.index("error: "):]
    assert all(f in message for f in fragments), message


def test_float_labels_still_need_the_opt_in(tmp_path, tiny_bert, reviews):
    files = derived(reviews, tmp_path / "data", rating)
    recipe = text_cls_recipe(tmp_path / "r.yaml", tiny_bert, files, tmp_path / "run")
    refused(hft("validate", recipe), "split 'train' row 0: label", "is a float", "set dataset.regression: true")
    plain = text_cls_recipe(tmp_path / "p.yaml", tiny_bert, reviews, tmp_path / "run")
    refused(hft("validate", plain, "--set", "evaluation.threshold=0.3"), "evaluation.threshold is for multi-label data")
    refused(hft("validate", plain, "--set", "dataset.regression=true"), "column 'label'", "regression needs numbers")
    for setting, fragment in (
        ("dataset.label_names=[a, b]", "dataset.label_names names classes"),
        ("training.metric_for_best_model=mse", "set training.greater_is_better: false"),
    ):
        refused(hft("validate", recipe, "--set", "dataset.regression=true", "--set", setting), fragment)


def test_multi_label_lists_are_checked_row_by_row(tmp_path, tiny_bert):
    rows = [{"text": "a", "label": ["x"]}, {"text": "b", "label": ["x", "y"]}, {"text": "c", "label": []}]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows * 3),
             "test": write_jsonl(tmp_path / "test.jsonl", [{"text": "d", "label": ["x"]}, {"text": "e", "label": ["z"]}])}
    recipe = text_cls_recipe(tmp_path / "r.yaml", tiny_bert, files, tmp_path / "run")
    refused(hft("validate", recipe), "split 'test' row 1: label 'z' in column 'label' does not occur in train")


def test_integer_label_lists_take_label_names():
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.tasks import _targets

    recipe = Recipe.model_validate({
        "task": "text-classification", "model": {"name": "m"}, "output_dir": "o",
        "dataset": {"name": "d", "columns": {"text": "text", "label": "label"}, "label_names": ["sports", "politics", "art"]},
    })
    splits = {"train": Dataset.from_dict({"text": ["a", "b"], "label": [[0, 2], [1]]}),
              "test": Dataset.from_dict({"text": ["c"], "label": [[3]]})}
    with pytest.raises(Exception, match=r"split 'test' row 0: label 3 in column 'label' is outside the known labels 0..2"):
        _targets.encode_multi_labels(dict(splits), recipe)
    splits["test"] = Dataset.from_dict({"text": ["c"], "label": [[2]]})
    assert _targets.encode_multi_labels(splits, recipe) == ["sports", "politics", "art"]
    assert splits["train"].features["label"].feature.names == ["sports", "politics", "art"]


# ----------------------------------------------------------------------------------------------------------------------
# Shipped evaluate modules


def test_multi_label_and_regression_modules_match_scipy_and_scikit_learn():
    from scipy import stats
    from sklearn.metrics import accuracy_score, f1_score

    p = [[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]]
    r = [[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]]
    out = metrics.compute(["multilabel_f1", "exact_match_accuracy"], p, r)
    assert out["f1_micro"] == pytest.approx(f1_score(r, p, average="micro"))
    assert out["f1_macro"] == pytest.approx(f1_score(r, p, average="macro", zero_division=0))
    assert out["exact_match_accuracy"] == pytest.approx(accuracy_score(r, p))  # subset accuracy
    pred, ref = [1.0, 2.5, 2.0, 4.0, 3.0], [1.2, 2.0, 2.9, 3.5, 3.1]
    out = metrics.compute(["mse", "pearsonr", "spearmanr"], pred, ref)
    assert out["mse"] == pytest.approx(sum((a - b) ** 2 for a, b in zip(pred, ref)) / len(pred))
    assert out["pearsonr"] == pytest.approx(stats.pearsonr(ref, pred).statistic)
    assert out["spearmanr"] == pytest.approx(stats.spearmanr(ref, pred).statistic)
    # A constant prediction has no correlation to report: 0, not a NaN that JSON run files cannot hold.
    assert metrics.compute(["pearsonr", "spearmanr"], [2.0] * 5, ref) == {"pearsonr": 0.0, "spearmanr": 0.0}


def test_seqeval_module_matches_seqeval_strict_iob2():
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"]]
    preds = [["B-PER", "I-PER", "O", "O"], ["I-ORG", "I-ORG", "I-ORG", "B-LOC"]]  # the second ORG is not a valid span
    out = metrics.load_metric("seqeval").compute(predictions=preds, references=refs, scheme="IOB2", zero_division=0)
    expected = classification_report(refs, preds, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    assert out["overall_f1"] == pytest.approx(expected["micro avg"]["f1-score"])
    assert out["PER"]["f1"] == 1.0 and out["ORG"]["recall"] == 0.0 and out["LOC"]["number"] == 1
    assert out["overall_accuracy"] == pytest.approx(4 / 8)  # token accuracy: 3 of 4 and 1 of 4 tags right
