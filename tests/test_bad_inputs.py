"""Bad input gets one clear message naming the file, field or row — found by `hft validate`, before training."""

from __future__ import annotations

import json

import pytest

from hftoolkit.errors import DataError, HftError, HubOfflineError, MetricError, ModelError
from hftoolkit.commands.validate import validate
from hftoolkit.recipe.schema import load_recipe
from tests.conftest import run_hft
from tests.fixtures import write_jsonl


def rows(n: int, **override) -> list[dict]:
    out = [{"text": f"review number {i} works perfectly.", "label": "positive" if i % 2 else "negative"} for i in range(n)]
    for i, row in override.items():
        out[int(i.removeprefix("r"))] = row
    return out


@pytest.fixture
def files(tmp_path):
    def make(train=None, validation=None, test=None):
        out = {}
        for name, data in (("train", train), ("validation", validation), ("test", test)):
            if data is not None:
                out[name] = write_jsonl(tmp_path / f"{name}.jsonl", data)
        return out

    return make


def check(make_recipe, files, match: str, exc=DataError, **sections):
    recipe = load_recipe(make_recipe(**sections))
    with pytest.raises(exc) as info:
        validate(recipe)
    assert match in str(info.value), str(info.value)
    return str(info.value)


def test_missing_column_lists_available_columns(make_recipe):
    msg = check(make_recipe, None, "dataset.columns.text: column 'sentence' not found in split 'train'",
                dataset={"columns": {"text": "sentence", "label": "label"}})
    assert "available columns: text, label" in msg


def test_float_labels_name_the_row(make_recipe, files):
    data = rows(10)
    for i, r in enumerate(data):
        r["label"] = 0.5 + i
    f = files(train=data)
    check(make_recipe, files, "split 'train' row 0: label 0.5 in column 'label' is a float", dataset={"files": {k: str(v) for k, v in f.items()}})


def test_label_outside_known_set_names_split_row_and_value(make_recipe, files):
    f = files(train=rows(10), validation=rows(6, r4={"text": "meh", "label": "neutral"}))
    check(make_recipe, files, "split 'validation' row 4: label 'neutral' does not occur in train",
          dataset={"files": {k: str(v) for k, v in f.items()}})


def test_integer_label_out_of_range_with_label_names(make_recipe, files):
    train = [{"text": f"t {i}", "label": i % 2} for i in range(10)]
    test = [{"text": "t", "label": 0}, {"text": "t", "label": 1}, {"text": "t", "label": -1}]
    f = files(train=train, test=test)
    msg = check(make_recipe, files, "split 'test' row 2: label -1 is outside the known labels 0..1",
                dataset={"files": {k: str(v) for k, v in f.items()}, "label_names": ["neg", "pos"]})
    assert "unlabelled test split" in msg


def test_num_labels_mismatch(make_recipe):
    check(make_recipe, None, "dataset.num_labels is 3 but the data has 2 labels: negative, positive", dataset={"num_labels": 3})


def test_null_label_names_the_row(make_recipe, files):
    f = files(train=rows(8, r3={"text": "x", "label": None}))
    check(make_recipe, files, "split 'train' row 3: label is missing (null)", dataset={"files": {k: str(v) for k, v in f.items()}})


def test_empty_split(make_recipe, files, tmp_path):
    f = files(train=rows(10))
    (tmp_path / "validation.jsonl").write_text("")
    f["validation"] = tmp_path / "validation.jsonl"
    with pytest.raises(HftError, match="validation"):
        validate(load_recipe(make_recipe(dataset={"files": {k: str(v) for k, v in f.items()}})))


def test_nonexistent_local_paths(make_recipe, tmp_path):
    check(make_recipe, None, "dataset.files.train: file", dataset={"files": {"train": str(tmp_path / "missing.jsonl")}})
    check(make_recipe, None, "local path does not exist", exc=ModelError, model={"name": str(tmp_path / "no-model")})


def test_hub_dataset_while_offline_is_a_clear_error(make_recipe):
    msg = check(make_recipe, None, "HF_HUB_OFFLINE=1", exc=HubOfflineError,
                dataset={"files": None, "name": "someone/not-cached-dataset"})
    assert "someone/not-cached-dataset" in msg


def test_hub_only_metric_while_offline_names_metric(make_recipe):
    msg = check(make_recipe, None, "metric 'bleu'", exc=MetricError, evaluation={"metrics": ["accuracy", "bleu"]})
    assert "HF_HUB_OFFLINE" in msg


def test_cli_turns_errors_into_one_line_and_exit_2(make_recipe, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(make_recipe().read_text() + "x: !!python/object/apply:os.system ['echo pwned']\n")
    proc = run_hft("validate", bad, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "refused" in proc.stderr
    assert "Traceback" not in proc.stderr and "pwned" not in proc.stdout

    recipe = make_recipe(dataset={"columns": {"text": "body", "label": "label"}})
    proc = run_hft("finetune", recipe, check=False)
    assert proc.returncode == 2 and "column 'body' not found" in proc.stderr and "Traceback" not in proc.stderr
    # Nothing half-written: the run directory was never created.
    assert not (tmp_path / "run").exists()

    proc = run_hft("--debug", "validate", recipe, check=False)
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_evaluate_on_missing_or_unfinished_run(tmp_path):
    proc = run_hft("evaluate", tmp_path / "nope", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "running"}))
    proc = run_hft("evaluate", run, check=False)
    assert proc.returncode == 2 and "recipe.resolved.yaml is missing" in proc.stderr
