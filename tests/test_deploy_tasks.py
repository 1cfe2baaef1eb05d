"""`hft export` and `hft serve` for the tasks beyond single-label text: token classification (entities), multi-label
(sigmoid + the run's threshold) and regression (the number), on tiny BERT runs through the real CLI in-process.

Each: the ONNX export's parity, the served predictions over real HTTP on 127.0.0.1 from the run directory (PyTorch)
and from the export (ONNX Runtime) against `hft predict --json`, and the export README's snippet run with
onnxruntime + tokenizers alone.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import datasets  # noqa: F401  (imported before any CliRunner run: its log handler must not bind to a runner's stream)
import httpx
import pytest

from hftoolkit.deploy.backends import open_backend
from hftoolkit.deploy.limits import ServeSettings
from hftoolkit.deploy.report import read_report
from hftoolkit.deploy.server import create_app
from hftoolkit.tasks._token_onnx import USAGE_TEXTS as NER_USAGE_TEXTS
from hftoolkit.tasks.text_classification import USAGE_TEXTS
from tests.deploy_fixtures import FAST, ThreadServer, hft, predict_json
from tests.fixtures import text_cls_recipe
from tests.test_text_multilabel_regression import derived, multi_labels, rating
from tests.test_token_classification import ner_files, ner_recipe

NER_TEXTS = ["alice smith visited new york.", "bob left paris.", "the kettle works.", "erin jones loves rome ."]
TEXTS = ["the kettle works perfectly.", "after a month of use, the tent broke after two days. never again.", "fine."]
THRESHOLD = 0.4  # not the default 0.5: the export and the server must carry the run's own threshold
ONNX_ABS = 1e-5  # ONNX Runtime vs PyTorch scores (float32 rounding)


def served(target, texts):
    """POST /v1/predict to `hft serve TARGET`'s app under uvicorn on 127.0.0.1."""
    server = ThreadServer(create_app(open_backend(str(target)), ServeSettings()))
    try:
        response = httpx.post(server.url + "/v1/predict", json={"inputs": texts}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["predictions"]
    finally:
        server.stop()


def snippet_lines(export) -> list[str]:
    """The export README's python block, run in the export folder without torch or transformers."""
    code = re.search(r"```python\n(.*?)```", (export / "README.md").read_text(), re.S).group(1)
    code += "\nimport sys\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=export, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def approx_entities(got, expected):
    """Same spans and types; scores within ONNX_ABS."""
    for g, e in zip(got, expected):
        assert g["input"] == e["input"]
        assert [{k: v for k, v in x.items() if k != "score"} for x in g["entities"]] == [
            {k: v for k, v in x.items() if k != "score"} for x in e["entities"]
        ]
        assert [x["score"] for x in g["entities"]] == pytest.approx([x["score"] for x in e["entities"]], abs=ONNX_ABS)
    assert len(got) == len(expected)


# ----------------------------------------------------------------------------------------------------------------------
# Token classification


@pytest.fixture(scope="module")
def ner(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("deploy-ner")
    run = tmp / "run"
    files = ner_files(tmp / "data", {"train": 120, "validation": 8, "test": 24})
    recipe = ner_recipe(tmp / "r.yaml", tiny_bert, files, run, training={"epochs": 3})
    assert hft("finetune", recipe).exit_code == 0
    hft("export", run, "--onnx", tmp / "export", "--quantize", "int8")
    return run, tmp / "export"


def test_ner_export_parity_per_token_and_int8_checked_on_entity_f1(ner):
    run, export = ner
    report = read_report(export)
    assert report.task == "token-classification" and report.parity.compared == "tokens"
    assert report.parity.max_abs_diff <= 1e-4 and report.parity.argmax_agreement == 1.0
    table = {row.runtime: row.metrics for row in report.metrics}
    assert {"f1", "precision", "recall", "accuracy", "PER/f1", "LOC/f1"} <= set(table["pytorch-fp32"])
    assert table["onnx-fp32"]["f1"] == pytest.approx(table["pytorch-fp32"]["f1"])
    drop = (table["pytorch-fp32"]["f1"] - table["onnx-int8"]["f1"]) * 100
    assert report.checked_metric == "f1" and report.metric_drop_points == pytest.approx(drop)
    assert report.predict_options == {"scheme": "IOB2", "max_length": 32}
    assert json.loads((export / "config.json").read_text())["id2label"]["1"] == "B-PER"


def test_ner_served_from_run_and_export_equals_hft_predict(ner):
    run, export = ner
    expected = predict_json(run, *NER_TEXTS)
    assert any(r["entities"] for r in expected)  # the tiny model found entities: the comparison means something
    assert served(run, NER_TEXTS) == expected
    approx_entities(served(export, NER_TEXTS), expected)


def test_ner_readme_snippet_prints_the_entities_of_hft_predict(ner):
    run, export = ner
    got = [json.loads(line) for line in snippet_lines(export)]
    approx_entities(got, predict_json(run, *NER_USAGE_TEXTS))


# ----------------------------------------------------------------------------------------------------------------------
# Multi-label and regression text classification


@pytest.fixture(scope="module")
def multi(tmp_path_factory, tiny_bert, reviews):
    tmp = tmp_path_factory.mktemp("deploy-multi")
    files = derived(reviews, tmp / "data", multi_labels)
    training = {**FAST, "epochs": 2, "learning_rate": 5e-3}
    recipe = text_cls_recipe(tmp / "r.yaml", tiny_bert, files, tmp / "run", training=training, evaluation={"threshold": THRESHOLD})
    assert hft("finetune", recipe).exit_code == 0
    hft("export", tmp / "run", "--onnx", tmp / "export", "--quantize", "int8")
    return tmp / "run", tmp / "export"


@pytest.fixture(scope="module")
def regression(tmp_path_factory, tiny_bert, reviews):
    tmp = tmp_path_factory.mktemp("deploy-regression")
    files = derived(reviews, tmp / "data", rating)
    recipe = text_cls_recipe(tmp / "r.yaml", tiny_bert, files, tmp / "run", training={**FAST, "learning_rate": 1e-2},
                             dataset={"regression": True})
    assert hft("finetune", recipe).exit_code == 0
    hft("export", tmp / "run", "--onnx", tmp / "export")
    return tmp / "run", tmp / "export"


def labels_only(results):
    return [[x["label"] for x in r["labels"]] for r in results]


def test_multilabel_export_and_serve_use_sigmoid_and_the_runs_threshold(multi):
    run, export = multi
    report = read_report(export)
    assert report.predict_options == {"threshold": THRESHOLD} and report.checked_metric == "f1_micro"
    expected = predict_json(run, *TEXTS)
    assert all(x["score"] >= THRESHOLD for r in expected for x in r["labels"])
    assert served(run, TEXTS) == [{"labels": r["labels"]} for r in expected]
    from_onnx = served(export, TEXTS)
    assert labels_only(from_onnx) == labels_only(expected)
    assert [x["score"] for r in from_onnx for x in r["labels"]] == pytest.approx(
        [x["score"] for r in expected for x in r["labels"]], abs=ONNX_ABS
    )
    # The README snippet: the same labels over the same threshold, most probable first.
    rows = [line.split("\t") for line in snippet_lines(export)]
    wanted = predict_json(run, *USAGE_TEXTS)
    assert [names.split(",") if names != "(none)" else [] for names, _, _ in rows] == labels_only(wanted)
    assert [text for _, _, text in rows] == USAGE_TEXTS


def test_regression_export_and_serve_return_the_number(regression):
    run, export = regression
    expected = predict_json(run, *TEXTS)
    assert served(run, TEXTS) == [{"value": r["value"]} for r in expected]
    assert [p["value"] for p in served(export, TEXTS)] == pytest.approx([r["value"] for r in expected], abs=ONNX_ABS)
    rows = [line.split("\t") for line in snippet_lines(export)]
    assert [float(v) for v, _ in rows] == pytest.approx([r["value"] for r in predict_json(run, *USAGE_TEXTS)], abs=1e-4)
    assert len({r["value"] for r in expected}) > 1  # a constant output would make the comparison empty
