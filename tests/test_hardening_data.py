"""Data errors name the file, split, row and value, in one line with exit code 2, found by `hft validate` (issue 11).

Each case writes a small data file into tmp_path and runs the real CLI in-process (typer's CliRunner on the app).
"""

from __future__ import annotations

import json
import os

import datasets  # noqa: F401  (imported before any CliRunner run: its log handler must not bind to a runner's stream)
import pytest
from typer.testing import CliRunner

from hftoolkit.cli import app
from tests.cli_helpers import refused_line as refused
from tests.fixtures import build_tiny_gpt2, causal_lm_recipe, text_cls_recipe, write_jsonl

runner = CliRunner()


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"text": f"review number {i} works perfectly.", "label": "positive" if i % 2 else "negative"}
            for i in range(start, start + n)]


def hft(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def recipe(tmp_path, tiny_bert):
    def make(files: dict, **dataset) -> str:
        section = {"files": {k: str(v) for k, v in files.items()}, **dataset}
        return str(text_cls_recipe(tmp_path / "recipe.yaml", tiny_bert, {}, tmp_path / "run", dataset=section))

    return make


def test_malformed_json_line_names_file_and_line(tmp_path, recipe):
    train = write_jsonl(tmp_path / "train.jsonl", rows(6))
    lines = train.read_text().splitlines()
    lines[3] = '{"text": "broken row", "label": '
    train.write_text("\n".join(lines) + "\n")
    refused(hft("validate", recipe({"train": train})), f"file {train}", "line 4 is not valid JSON", "broken row")


def test_malformed_json_document_names_line_and_column(tmp_path, recipe):
    train = tmp_path / "train.json"
    train.write_text('[{"text": "a", "label": "x"},\n {"text": "b" "label": "y"}]\n')
    refused(hft("validate", recipe({"train": train})), f"file {train}", "invalid JSON at line 2 column")


def test_non_utf8_csv_names_offset_and_encoding(tmp_path, recipe):
    train = tmp_path / "train.csv"
    train.write_bytes("text,label\nfine review,positive\ncaf\u00e9 review,negative\n".encode("cp1252"))
    offset = len("text,label\nfine review,positive\ncaf".encode())
    refused(
        hft("validate", recipe({"train": train})),
        f"file {train}", f"not UTF-8 at byte offset {offset} (line 3)", "byte 0xe9", "cp1252",
        "re-save it as UTF-8 (iconv -f cp1252 -t utf-8",
    )


def test_non_utf8_jsonl_too(tmp_path, recipe):
    train = tmp_path / "train.jsonl"
    train.write_bytes(('{"text": "na\u00efve", "label": "positive"}\n' * 4).encode("latin-1"))
    refused(hft("validate", recipe({"train": train})), f"file {train}", "not UTF-8 at byte offset 12 (line 1)")


@pytest.mark.parametrize("name, content", [("train.jsonl", ""), ("train.csv", "text,label\n"), ("train.jsonl", "\n\n")])
def test_empty_or_header_only_file(tmp_path, recipe, name, content):
    train = tmp_path / name
    train.write_text(content)
    refused(hft("validate", recipe({"train": train})), f"split train is empty (file {train})")


def test_empty_validation_file_names_its_split(tmp_path, recipe):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows(8)))
    val = tmp_path / "validation.csv"
    val.write_text("text,label\n")
    refused(hft("validate", recipe({"train": train, "validation": val})), f"split validation is empty (file {val})")


def test_mixed_int_and_string_labels_name_first_row_and_both_types(tmp_path, recipe):
    data = rows(8)
    for i, r in enumerate(data):
        r["label"] = i % 2
    data[5]["label"] = "positive"
    train = write_jsonl(tmp_path / "train.jsonl", data)
    refused(
        hft("validate", recipe({"train": train})),
        "split 'train' row 5: label 'positive' in column 'label' is a string", "row 0 holds an integer (0)",
    )


def test_string_and_float_labels(tmp_path, recipe):
    data = rows(8)
    data[6]["label"] = 1.5
    train = write_jsonl(tmp_path / "train.jsonl", data)
    refused(hft("validate", recipe({"train": train})), "split 'train' row 6: label 1.5", "is a float", "holds a string")


def test_label_types_differing_across_splits(tmp_path, recipe):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": f"t {i}", "label": i % 2} for i in range(8)])
    test = write_jsonl(tmp_path / "test.jsonl", rows(3))
    refused(hft("validate", recipe({"train": train, "test": test})),
            "split 'test' row 0: label 'negative'", "is a string", "split 'train' row 0 holds an integer")


def test_null_text_names_split_and_absolute_row(tmp_path, recipe):
    # Past the first tokenization batch (1,000 rows), so a batch-relative row number would be wrong.
    data = rows(1300)
    data[1234]["text"] = None
    train = write_jsonl(tmp_path / "train.jsonl", data)
    refused(hft("validate", recipe({"train": train})), "split 'train' row 1234: column 'text' is missing (null)")


def test_non_text_value_names_type_and_value(tmp_path, recipe):
    data = rows(8)
    data[2]["text"] = 42
    train = write_jsonl(tmp_path / "train.jsonl", data)
    refused(hft("validate", recipe({"train": train})), "split 'train' row 2: column 'text' is int 42, not text")


def test_empty_texts_are_refused_then_counted_when_allowed(tmp_path, recipe):
    data = rows(10)
    data[3]["text"], data[7]["text"] = "", "   "
    train = write_jsonl(tmp_path / "train.jsonl", data)
    refused(hft("validate", recipe({"train": train})), "split 'train' row 3: column 'text' is empty or whitespace only",
            "2 such row(s)", "dataset.allow_empty_text: true")
    ok = hft("validate", recipe({"train": train}, allow_empty_text=True))
    assert ok.exit_code == 0, ok.output
    assert "empty or whitespace-only texts (train): text=2" in ok.output


def test_causal_lm_empty_response_is_refused_and_empty_documents_counted(tmp_path):
    model = build_tiny_gpt2(tmp_path / "gpt2")
    pairs = [{"prompt": f"question {i}?", "response": f"answer {i}."} for i in range(8)]
    pairs[5]["response"] = " \n"
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    columns = {"text": None, "prompt": "prompt", "response": "response"}
    recipe = causal_lm_recipe(tmp_path / "sft.yaml", model, {"train": train}, tmp_path / "run", dataset={"columns": columns})
    refused(hft("validate", recipe), "split 'train' row 5: column 'response' is empty or whitespace only")

    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": "" if i == 2 else f"Some text {i}."} for i in range(12)])
    recipe = causal_lm_recipe(tmp_path / "clm.yaml", model, {"train": docs}, tmp_path / "run")
    result = hft("validate", recipe)
    assert result.exit_code == 0, result.output
    assert "empty or whitespace-only texts (train): text=1" in result.output


def test_symlinked_data_file_is_read_with_a_notice(tmp_path, recipe):
    store = tmp_path / "annex" / "objects"
    real = write_jsonl(store / "SHA256E-s123.jsonl", rows(20))
    link = tmp_path / "data" / "train.jsonl"
    link.parent.mkdir()
    os.symlink(os.path.relpath(real, link.parent), link)
    result = hft("validate", recipe({"train": link}))
    assert result.exit_code == 0, result.output
    assert f"{link} is a symlink to {real}" in result.output


def test_dangling_symlink_says_to_fetch_the_content(tmp_path, recipe):
    link = tmp_path / "train.jsonl"
    os.symlink(tmp_path / ".dvc" / "cache" / "ab" / "cdef", link)
    refused(hft("validate", recipe({"train": link})), f"{link} is a symlink to", "which does not exist", "dvc pull")


def test_carve_keeps_every_class_in_train(tmp_path, recipe):
    # 20 positives and one negative: a plain 10% carve can put the only negative into validation.
    data = [{"text": f"great thing {i}", "label": "positive"} for i in range(20)]
    data.append({"text": "awful thing", "label": "negative"})
    train = write_jsonl(tmp_path / "train.jsonl", data)
    for seed in range(6):
        result = hft("validate", recipe({"train": train}), "--set", f"training.seed={seed}")
        assert result.exit_code == 0, result.output
        assert "labels (train): negative=1, positive=" in result.output
        assert "every class kept in train" in result.output


def test_carve_that_cannot_keep_every_class_is_refused_with_counts(tmp_path, recipe):
    train = write_jsonl(tmp_path / "train.jsonl", rows(2))
    refused(hft("validate", recipe({"train": train})), "cannot carve a validation split from train (2 rows)",
            "rows per class: negative=1, positive=1")


def test_max_samples_that_drops_a_class_is_refused(tmp_path, recipe):
    data = [{"text": f"great thing {i}", "label": "positive"} for i in range(30)]
    data.append({"text": "awful thing", "label": "negative"})
    train = write_jsonl(tmp_path / "train.jsonl", data)
    val = write_jsonl(tmp_path / "validation.jsonl", rows(4))
    result = hft("validate", recipe({"train": train, "validation": val}, max_samples={"train": 2}))
    refused(result, "split 'train' has no rows of label(s) negative", "negative=0, positive=2", "dataset.max_samples")


def test_data_report_counts_empty_texts(tmp_path, recipe):
    from hftoolkit.run.records import DataReport

    report = DataReport(empty_texts={"train": {"text": 3, "text_pair": 0}})
    assert "empty or whitespace-only texts (train): text=3" in report.lines()
    assert json.loads(json.dumps(report.as_dict()))["empty_texts"] == {"train": {"text": 3, "text_pair": 0}}
