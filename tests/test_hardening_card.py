"""Hostile strings in the model card (issue 11): labels, dataset and split names, metric names, revisions.

The run is the fixed one of tests/test_card.py with hostile values patched into its files; the card comes from the real
CLI (`hft push --dry-run`, in-process). The body is rendered with markdown-it (CommonMark + GFM tables, raw HTML on, as
a permissive renderer would) to check what a reader of the Hub page would get: every label in its own cell, shown
as written, no tag; the YAML metadata parses back to the exact strings.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hftoolkit.cli import app
from tests.test_card import GOLDEN, write_fixed_run

HOSTILE_LABELS = ["a|b", "x\ny", "<script>alert(1)</script>", '"quoted": yes', "---", "{{ jinja }}"]
HOSTILE_CONFIG = 'cfg|<img src=x onerror=alert(1)>\n---\n"k": v'
HOSTILE_SPLIT = "te|st\n# heading"
HOSTILE_METRIC = "f1 | `<b>bold</b>`"
HOSTILE_COMMIT = 'abc"); import os; os.system("echo pwned'  # the base model commit lands in the usage code


def _hostile_run(root: Path) -> Path:
    run = write_fixed_run(root, dataset={"config": HOSTILE_CONFIG})
    labels = HOSTILE_LABELS

    def patch(name: str, change) -> None:
        path = run / name
        path.write_text(json.dumps(change(json.loads(path.read_text())), indent=2))

    def manifest(m: dict) -> dict:
        m["dataset"]["split_names"]["test"] = HOSTILE_SPLIT
        return {**m, "labels": labels, "model": {**m["model"], "commit": HOSTILE_COMMIT}}

    def eval_results(e: dict) -> dict:
        e["dataset"]["split_names"]["test"] = HOSTILE_SPLIT
        return {**e, "labels": labels, "metrics": {"accuracy": 0.5, HOSTILE_METRIC: 0.25}}

    patch("manifest.json", manifest)
    patch("eval_results.json", eval_results)
    patch("data_report.json", lambda r: {**r, "label_counts": {s: {lab: i for i, lab in enumerate(labels)} for s in ("train", "test")}})
    patch("model/config.json", lambda c: {
        **c, "id2label": {str(i): lab for i, lab in enumerate(labels)}, "label2id": {lab: i for i, lab in enumerate(labels)},
    })
    return run


def _card(run: Path) -> str:
    result = CliRunner().invoke(app, ["push", str(run), "--repo-id", "org/hostile", "--dry-run"])
    assert result.exit_code == 0, result.output
    return re.split(r"\n--- \d+ files for ", result.stdout)[0]


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> str:
    return _card(_hostile_run(tmp_path_factory.mktemp("hostile")))


def _markdown():
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table")


def _tables(body: str) -> list[list[list[str]]]:
    """Every table of the rendered body as rows of cell texts (entities decoded, as a reader sees them)."""
    tables, rows, cells = [], None, None
    for token in _markdown().parse(body):
        if token.type == "table_open":
            rows = []
        elif token.type == "tr_open":
            cells = []
        elif token.type == "inline" and cells is not None:
            cells.append("".join(child.content for child in token.children or []))
        elif token.type == "tr_close":
            rows.append(cells)
            cells = None
        elif token.type == "table_close":
            tables.append(rows)
    return tables


def test_front_matter_parses_back_to_the_exact_strings(card):
    from huggingface_hub import ModelCard

    front = re.match(r"^---\n(.*?)\n---\n", card, flags=re.S)
    meta = yaml.safe_load(front.group(1))
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["config"] == HOSTILE_CONFIG
    assert result["dataset"]["split"] == HOSTILE_SPLIT
    assert [m["type"] for m in result["metrics"]] == ["accuracy", HOSTILE_METRIC]
    assert meta["metrics"] == ["accuracy", HOSTILE_METRIC]
    parsed = ModelCard(card).data  # what the Hub's own client reads
    assert {r.dataset_config for r in parsed.eval_results} == {HOSTILE_CONFIG}
    assert parsed.base_model == "org/tiny-bert" and parsed.license == "apache-2.0"


def test_label_table_has_one_cell_per_column_and_shows_each_label(card):
    body = card.split("\n---\n", 1)[1]
    labels_table, split_table, _, eval_table = _tables(body)
    assert labels_table[0] == ["id", "label", "train rows", "test rows"]
    assert all(len(row) == 4 for row in labels_table), labels_table
    shown = [row[1] for row in labels_table[1:]]
    assert shown == [label.replace("\n", " ") for label in HOSTILE_LABELS]
    assert [row[0] for row in labels_table[1:]] == [str(i) for i in range(len(HOSTILE_LABELS))]
    assert all(len(row) == 3 for row in split_table) and ["test", HOSTILE_SPLIT.replace("\n", " "), "60"] in split_table
    assert [row[0] for row in eval_table[1:]] == ["accuracy", HOSTILE_METRIC]


def test_no_markup_escapes_from_a_value(card):
    body = card.split("\n---\n", 1)[1]
    html = _markdown().render(body)
    tags = re.findall(r"<([a-z0-9]+)([^>]*)>", html)
    assert {name for name, _ in tags} <= {
        "h1", "h2", "h3", "p", "strong", "a", "code", "pre", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "img",
    }
    assert [attrs for name, attrs in tags if name == "img"] == [' src="loss_curve.png" alt="Training and evaluation loss by optimizer step" /']
    assert not any("onerror" in attrs for _, attrs in tags)
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in html
    # The section headings are exactly the normal card's: no value started a heading, a rule or a new block.
    headings = re.findall(r"<h[1-6]>(.*?)</h[1-6]>", html)
    golden = re.findall(r"^#+ (.*)$", GOLDEN.read_text().split("\n---\n", 1)[1], flags=re.M)
    assert headings[1:] == golden[1:] and "<hr" not in html
    # Jinja syntax in a value is shown, never evaluated.
    assert "| 5 | {{ jinja }} | 5 | 5 |" in body


def test_usage_code_quotes_values_as_python_literals(card):
    code = card.split("```python\n", 1)[1].split("\n```", 1)[0]
    tree = ast.parse(code)  # a value that broke out of its string literal would not parse (or would add a call)
    revisions = [kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords if kw.arg == "revision"]
    assert revisions == [HOSTILE_COMMIT]
    assert not any(isinstance(node, ast.Import) and node.names[0].name == "os" for node in ast.walk(tree))


def test_normal_values_render_as_before():
    from hftoolkit.publish.escape import code_fence, code_span, md_inline, md_text

    for plain in ("negative", "org/tiny-bert", "huggingface_hub 2.4.0", "0.5% of the train examples (n=3); ok."):
        assert md_text(plain) == plain
    assert code_span("main") == "`main`" and code_fence("a: b\n") == "```"
    assert md_inline("output_dir: shortened to `run`") == "output_dir: shortened to `run`"
    # A backtick in a value gets a longer delimiter instead of ending the span or the recipe's code block early.
    assert code_span("a`b") == "``a`b``" and code_span("`x") == "`` `x ``"
    assert code_fence("a: '\n  ```\n  '\n") == "````"
    assert md_inline("published as <x> and `<y>`") == "published as &lt;x&gt; and `<y>`"
