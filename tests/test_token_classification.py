"""Token classification (NER) on a tiny BERT: word -> subword alignment, span merging, data errors naming split and row,
recipe keys owned by the task, and finetune -> evaluate -> predict --json -> reload through the real CLI.

The CLI runs in-process (typer's CliRunner on the app) except one subprocess `hft predict`, as a user would run it.
The synthetic data: person names (one or two words) and cities (one or two words) around a verb, plus rows without
entities; names are not in the tiny vocabulary, so they split into several subwords.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets  # noqa: F401  (imported before any CliRunner run: its log handler must not bind to a runner's stream)
import pytest
import yaml
from typer.testing import CliRunner

from hftoolkit.cli import app
from hftoolkit.tasks.token_classification import IGNORE, WORD, align_labels, entity_spans, inside_ids, row_problem
from tests.conftest import run_hft
from tests.fixtures import write_jsonl

runner = CliRunner()
FIRST = ["alice", "bob", "carol", "dave", "erin"]
LAST = ["smith", "jones", "brown"]
CITIES = [["paris"], ["london"], ["berlin"], ["new", "york"], ["rome"]]
VERBS = ["visited", "left", "loves", "likes"]
TAGS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]  # sorted distinct strings: the label order hft derives
# Measured on this data (160 train rows, 80 steps of the tiny BERT with LoRA r=4, fp32): validation entity F1 0.93;
# the margin covers bf16 autocast on CPUs that have it (precision: auto).
MIN_F1 = 0.75


def ner_row(rng: random.Random) -> dict:
    if rng.random() < 0.3:
        return {"tokens": ["the", "kettle", "works", "."], "tags": ["O"] * 4}
    person = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.5 else [])
    city = rng.choice(CITIES)
    tags = ["B-PER"] + ["I-PER"] * (len(person) - 1) + ["O"] + ["B-LOC"] + ["I-LOC"] * (len(city) - 1) + ["O"]
    return {"tokens": person + [rng.choice(VERBS)] + city + ["."], "tags": tags}


def ner_files(out: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, Path]:
    rng = random.Random(seed)
    sizes = sizes or {"train": 160, "validation": 40, "test": 40}
    return {split: write_jsonl(out / f"{split}.jsonl", [ner_row(rng) for _ in range(n)]) for split, n in sizes.items()}


def ner_recipe(path: Path, model: Path, files: dict[str, Path], output_dir: Path, **sections) -> Path:
    recipe = {
        "task": "token-classification",
        "model": {"name": str(model)},
        "dataset": {"files": {k: str(v) for k, v in files.items()}, "columns": {"tokens": "tokens", "tags": "tags"}, "max_length": 32},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "epochs": 4, "batch_size": 8, "learning_rate": 3e-2, "logging_steps": 5, "report_to": ["none"], "seed": 7,
            "eval_strategy": "no", "save_strategy": "no",
        },
        "output_dir": str(output_dir),
    }
    for key, value in sections.items():
        recipe[key] = {**recipe[key], **value} if isinstance(recipe.get(key), dict) else value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def hft(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("error: "))
    for fragment in fragments:
        assert fragment in line, line
    return line


# ----------------------------------------------------------------------------------------------------------------------
# Alignment and spans


def test_first_subword_carries_the_tag_and_the_others_are_ignored(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    words, tags = ["alice", "visited", "paris"], [TAGS.index("B-PER"), TAGS.index("O"), TAGS.index("B-LOC")]
    enc = tokenizer([words], is_split_into_words=True)
    word_ids = enc.word_ids(0)
    assert word_ids.count(0) > 1, "the name should split into several subwords"
    labels = align_labels(word_ids, tags)
    firsts = [i for i, w in enumerate(word_ids) if w is not None and word_ids[i - 1] != w]
    assert [labels[i] for i in firsts] == tags
    assert all(labels[i] == IGNORE for i in range(len(labels)) if i not in firsts)  # specials and later subwords

    # label_all_subwords: later subwords repeat the word's tag, B- becoming I- (O and I- stay as they are).
    every = align_labels([None, 0, 0, 0, 1, 2, 2, None], tags, inside_ids(TAGS))
    assert every == [IGNORE, 1, 3, 3, 4, 0, 2, IGNORE]


def test_entity_spans_merge_b_and_i_pieces_with_character_offsets():
    text = "Angela Merkel visited New York City."
    offsets = [m.span() for m in WORD.finditer(text)]
    assert [text[a:b] for a, b in offsets] == ["Angela", "Merkel", "visited", "New", "York", "City", "."]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O"]
    scores = [0.9, 0.7, 1.0, 0.6, 0.8, 1.0, 1.0]
    spans = entity_spans(text, offsets, tags, scores, "IOB2")
    assert spans == [
        {"type": "PER", "text": "Angela Merkel", "start": 0, "end": 13, "score": 0.8},
        {"type": "LOC", "text": "New York City", "start": 22, "end": 35, "score": 0.8},
    ]
    # Strict IOB2, as seqeval scores it: an I- that follows nothing opens no entity; a type change ends one.
    spans = entity_spans(text, offsets, ["I-PER", "I-PER", "O", "B-LOC", "I-PER", "O", "O"], scores, "IOB2")
    assert [(s["type"], s["text"]) for s in spans] == [("LOC", "New")]
    spans = entity_spans(text, offsets, ["B-PER", "E-PER", "O", "S-LOC", "O", "O", "O"], scores, "IOBES")
    assert [(s["type"], s["text"]) for s in spans] == [("PER", "Angela Merkel"), ("LOC", "New")]


def test_row_problems_are_named():
    index = {n: i for i, n in enumerate(TAGS)}
    assert row_problem(["a", "b"], [4, 4], TAGS, index, "I") is None
    assert row_problem(["a", "b"], [4], TAGS, index, "I")[1] == "2 tokens but 1 tags"
    assert row_problem(["a"], [7], TAGS, index, "I")[1] == "tag 7 is outside the known tags 0..4 (word 0)"
    assert row_problem(["a"], ["B-ORG"], TAGS, index, "I")[1] == "tag 'B-ORG' does not occur in train (word 0)"
    assert "follows 'B-LOC'" in row_problem(["a", "b"], ["B-LOC", "I-PER"], TAGS, index, "I")[1]
    assert row_problem(["a", "b"], ["O", "I-PER"], TAGS, index, "") is None  # IOB1: an I- may open an entity
    assert row_problem(None, [4], TAGS, index, "I")[1] == "tokens or tags are missing (null)"


# ----------------------------------------------------------------------------------------------------------------------
# Data errors and recipe keys (hft validate, in-process)


@pytest.fixture
def bad_data(tmp_path, tiny_bert):
    def make(edit, **dataset) -> Path:
        files = ner_files(tmp_path / "data", {"train": 12, "validation": 6, "test": 6})
        for split, row, value in edit:
            lines = files[split].read_text().splitlines()
            lines[row] = json.dumps(value)
            files[split].write_text("\n".join(lines) + "\n")
        return ner_recipe(tmp_path / "r.yaml", tiny_bert, files, tmp_path / "run", dataset=dataset)

    return make


def test_bad_rows_name_split_row_and_what_to_do(bad_data):
    length = {"tokens": ["bob", "left"], "tags": ["B-PER"]}
    refused(hft("validate", bad_data([("validation", 2, length)])), "split 'validation' row 2: 2 tokens but 1 tags", "skip_bad_rows")
    unknown = {"tokens": ["acme"], "tags": ["B-ORG"]}
    refused(hft("validate", bad_data([("test", 0, unknown)])), "split 'test' row 0: tag 'B-ORG' does not occur in train")
    orphan = {"tokens": ["smith", "left"], "tags": ["I-PER", "O"]}
    refused(hft("validate", bad_data([("train", 1, orphan)])), "split 'train' row 1: tag 'I-PER' at word 0 follows the start")


def test_skip_bad_rows_drops_and_counts_them(bad_data):
    edits = [("validation", 2, {"tokens": ["bob", "left"], "tags": ["B-PER"]}), ("train", 1, {"tokens": ["x"], "tags": ["I-LOC"]})]
    result = hft("validate", bad_data(edits, skip_bad_rows=True))
    assert result.exit_code == 0, result.output
    assert "data: dropped: 1 rows (tokens and tags differ in length, validation)" in result.output
    assert "data: dropped: 1 rows (I- tag following nothing, train)" in result.output
    assert "data: split validation: 5 rows" in result.output and "data: split train: 11 rows" in result.output


def test_tags_must_fit_the_scheme(bad_data):
    recipe = bad_data([("train", 0, {"tokens": ["x"], "tags": ["PER"]})])
    refused(hft("validate", recipe), "tag 'PER' in column 'tags' does not fit evaluation.scheme IOB2")


def test_integer_tags_without_names_are_refused(tmp_path, tiny_bert):
    files = {"train": write_jsonl(tmp_path / "train.jsonl", [{"tokens": ["bob", "left"], "tags": [1, 0]}] * 4)}
    recipe = ner_recipe(tmp_path / "r.yaml", tiny_bert, files, tmp_path / "run")
    refused(hft("validate", recipe), "integer tags without names", "dataset.label_names")
    ok = hft("validate", recipe, "--set", "dataset.label_names=[O, B-PER]")
    assert ok.exit_code == 0 and "label mapping: 0=O, 1=B-PER" in ok.output, ok.output


@pytest.mark.parametrize(
    ("task_changes", "expected"),
    [
        ({"task": "text-classification", "dataset": {"columns": {"text": "tokens", "label": "tags"}, "label_all_subwords": True}},
         "dataset.label_all_subwords true is for task token-classification; task text-classification does not use it"),
        ({"task": "text-classification", "dataset": {"columns": {"text": "tokens", "label": "tags"}}, "evaluation": {"scheme": "IOBES"}},
         "evaluation.scheme IOBES is for task token-classification; task text-classification does not use it"),
        ({"evaluation": {"threshold": 0.3}}, "evaluation.threshold 0.3 is for task text-classification; task token-classification does not use it"),
        ({"dataset": {"columns": {"tokens": "tokens"}}}, "dataset.columns.tags needed"),
        ({"dataset": {"columns": {"tokens": "tokens", "tags": "tags", "label": "x"}}}, "dataset.columns.label is not used by task token-classification"),
        ({"dataset": {"label_all_subwords": True}, "evaluation": {"scheme": "IOBES"}}, "dataset.label_all_subwords works with evaluation.scheme IOB1 or IOB2"),
    ],
)
def test_recipe_keys_belong_to_their_task(tmp_path, tiny_bert, task_changes, expected):
    from hftoolkit.errors import RecipeError
    from hftoolkit.recipe.schema import load_recipe

    raw = yaml.safe_load(ner_recipe(tmp_path / "r.yaml", tiny_bert, {"train": tmp_path / "t.jsonl"}, tmp_path / "run").read_text())
    for key, value in task_changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError) as err:
        load_recipe(tmp_path / "r.yaml")
    assert expected in str(err.value), str(err.value)


# ----------------------------------------------------------------------------------------------------------------------
# End to end: finetune -> evaluate -> predict --json -> reload


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("ner")
    recipe = ner_recipe(tmp / "ner.yaml", tiny_bert, ner_files(tmp / "data"), tmp / "run")
    result = hft("finetune", recipe)
    assert result.exit_code == 0, result.output
    return tmp / "run"


def test_finetune_saves_tags_counts_and_the_head_with_the_adapter(trained):
    from safetensors.torch import load_file

    config = json.loads((trained / "model/config.json").read_text())
    assert config["id2label"] == {str(i): t for i, t in enumerate(TAGS)}
    assert json.loads((trained / "manifest.json").read_text())["labels"] == TAGS
    adapter = json.loads((trained / "model/adapter_config.json").read_text())
    assert adapter["task_type"] == "TOKEN_CLS" and sorted(adapter["target_modules"]) == ["query", "value"]
    assert any("classifier" in k for k in load_file(str(trained / "model/adapter_model.safetensors")))
    report = json.loads((trained / "data_report.json").read_text())
    assert set(report["label_counts"]) == {"train", "validation", "test"}
    assert report["label_counts"]["train"]["B-PER"] > 0 and report["truncated_share"]["train"] == 0.0


def test_evaluate_scores_entities_and_the_reloaded_model_reproduces_training(trained):
    validation = json.loads((trained / "train_results.json").read_text())["validation"]
    result = hft("evaluate", trained, "--split", "validation")
    assert result.exit_code == 0, result.output
    scores = json.loads((trained / "eval_results.json").read_text())["metrics"]
    assert {"precision", "recall", "f1", "accuracy", "PER/f1", "LOC/f1", "PER/support"} <= set(scores)
    # The reloaded adapter + head predict exactly what the model at the end of training did.
    for key in ("precision", "recall", "f1", "accuracy", "PER/f1"):
        assert scores[key] == pytest.approx(validation[f"eval_{key}"], abs=1e-6), key
    assert scores["f1"] >= MIN_F1, scores
    assert (trained / "confusion_matrix.png").stat().st_size > 1000


def test_predict_json_gives_entity_spans(trained):
    texts = ["alice smith visited new york.", "bob left paris.", "the kettle works."]
    result = hft("predict", trained, *texts, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in rows] == texts
    found = set()
    for row in rows:
        for e in row["entities"]:
            assert set(e) == {"type", "text", "start", "end", "score"} and 0 < e["score"] <= 1
            assert row["input"][e["start"] : e["end"]] == e["text"]
            found.add(e["type"])
    assert found <= {"PER", "LOC"} and found, rows

    plain = run_hft("predict", trained, texts[1]).stdout.splitlines()  # the one subprocess run, as a user types it
    assert len(plain) == 1 and plain[0].endswith("\tbob left paris."), plain
    assert plain[0].startswith(("PER \"", "LOC \"", "(no entities)")), plain


def test_card_has_per_entity_scores_and_an_overall_model_index(trained):
    from hftoolkit.publish.card import CardInputs, render_card, validate_card
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport, EvalResults, Manifest
    from hftoolkit.tasks.registry import get_task

    recipe_yaml = (trained / "recipe.resolved.yaml").read_text()
    inputs = CardInputs(
        repo_id="org/tiny-ner", kind="merged", task="token-classification",
        fields=get_task("token-classification").card_fields(), recipe=Recipe.model_validate(yaml.safe_load(recipe_yaml)),
        recipe_yaml=recipe_yaml, manifest=Manifest.read(trained / "manifest.json"),
        data_report=DataReport.read(trained / "data_report.json"), eval_results=EvalResults.read(trained / "eval_results.json"),
        license="apache-2.0", license_source="the recipe", base_model=None, base_revision=None, dataset_id=None,
    )
    card = render_card(inputs)
    meta = validate_card(card, kind="merged").data.to_dict()
    metric_types = {m["type"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert "f1" in metric_types and not any("/" in t for t in metric_types)
    assert "### Scores per entity type" in card and "| entity type | precision | recall | f1 | support |" in card
    assert "| PER |" in card and "| id | label | train words | validation words | test words |" in card
    assert "is_split_into_words=True" in card and 'hft predict org/tiny-ner "Angela Merkel visited Seattle."' in card
    snippet = card.split("```python\n", 1)[1].split("\n```", 1)[0]
    compile(snippet, "model card snippet", "exec")  # the usage code is valid Python
