"""Property-based proof for issue 11: whatever the recipe, the `--set` / `--unset` items or the data files, `hft
validate` exits 0 or 2 with no traceback and writes nothing outside its temp dir.

Deterministic and bounded: hypothesis runs a fixed number of derandomized examples (no example database on disk).
Most run in-process (typer's CliRunner on the app); a few go through the real `hft` entry point in a subprocess.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from hftoolkit.cli import app
from hftoolkit.recipe.schema import Recipe

# Assembled here so no token-shaped string is tracked in the repo; it must never be echoed back.
TOKEN = "hf_" + "Zq" * 17
RECIPE_EXAMPLES = 100
TYPED_EXAMPLES = 60
DATA_EXAMPLES = 40
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
DELETE = object()
# Strings that have broken YAML tools, path handling or number parsing somewhere.
TRICKY = ["", "  ", ".inf", "-.inf", ".nan", "1e400", "null", "~", "/", "..", ".", "../x", "ünïcødé ✓", "\x00", TOKEN,
          "package:", "train", "validation", "test", "text", "label", "[1, 2", "{a: 1}", "!!python/object:os.system"]


def schema_paths(model: type[BaseModel], prefix: tuple = ()) -> list[tuple]:
    """Every key path of the recipe schema, sections included."""
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + (name,))
        options = [field.annotation, *getattr(field.annotation, "__args__", ())]
        sub = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
        if sub is not None:
            out += schema_paths(sub, prefix + (name,))
    return out


def field_at(path: tuple) -> Any:
    model: Any = Recipe
    for part in path[:-1]:
        annotation = model.model_fields[part].annotation
        model = next(o for o in [annotation, *get_args(annotation)] if isinstance(o, type) and issubclass(o, BaseModel))
    return model.model_fields[path[-1]].annotation


def of_type(annotation: Any) -> st.SearchStrategy:
    """Values the annotation's type accepts (bounds aside): they pass the type checks and reach the deeper ones."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return st.one_of([of_type(a) for a in args])
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.one_of(st.integers(-3, 10**6), st.integers(2**31, 10**30))
    if annotation is float:
        return st.floats(-1.0, 1e12, allow_nan=False)
    if annotation is str:
        return st.one_of(st.text(max_size=10), st.sampled_from(TRICKY))
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(of_type(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(of_type(args[0]), of_type(args[1]), max_size=3)
    return st.just({})  # a section: its defaults


PATHS = schema_paths(Recipe)
LEAVES = [p for p in PATHS if not (isinstance(field_at(p), type) and issubclass(field_at(p), BaseModel))]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=10**40), st.integers(max_value=-1),
    st.floats(), st.text(max_size=12), st.sampled_from(TRICKY),
)
junk = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
# Values of a plausible type, so that examples get past the schema into the data and model checks.
plausible = st.one_of(
    st.integers(-3, 10**12), st.integers(2**31, 10**30), st.floats(allow_nan=False, allow_infinity=False, max_value=1e20),
    st.text(max_size=8), st.lists(st.text(max_size=6), max_size=3), st.booleans(), st.none(),
)
key_paths = st.one_of(st.sampled_from(PATHS), st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3).map(tuple))
mutations = st.lists(st.tuples(key_paths, st.one_of(junk, plausible, st.just(DELETE))), min_size=1, max_size=3)
dotted = st.one_of(st.sampled_from([".".join(p) for p in PATHS]), st.text(max_size=15))
set_values = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12), st.integers().map(str), st.floats().map(repr))
override_args = st.lists(
    st.one_of(
        st.tuples(st.just("--set"), st.tuples(dotted, set_values).map(lambda kv: f"{kv[0]}={kv[1]}")),
        st.tuples(st.just("--set"), st.text(max_size=10)),
        st.tuples(st.just("--unset"), dotted),
    ),
    max_size=3,
).map(lambda pairs: [a for pair in pairs for a in pair])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_bert, reviews):
    """root/sandbox is the cwd and holds every file an example writes; root/outside must stay as it was."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "outside").mkdir()
    (root / "outside" / "keep.txt").write_text("not hft's")
    box = root / "sandbox"
    box.mkdir()
    base = {
        "task": "text-classification",
        "model": {"name": str(tiny_bert)},
        "dataset": {"files": {k: str(v) for k, v in reviews.items()}, "columns": {"text": "text", "label": "label"},
                    "max_length": 32},
        "training": {"epochs": 1, "batch_size": 16, "report_to": ["none"]},
        "output_dir": "run",
    }
    return root, box, base


def snapshot(root: Path, box: Path) -> dict[str, tuple]:
    """Everything under root (and root's siblings) except the sandbox and the HF cache: names, sizes, modification times."""
    out = {}
    cache = Path(os.environ["HF_HOME"])  # hft's own cache (tokenized datasets): writing there is by design
    for top in (root.parent, root):
        for p in top.iterdir():
            if p not in (box, cache):
                out[str(p)] = (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
    for p in (root / "outside").rglob("*"):
        out[str(p)] = (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
    return out


@contextmanager
def inside(box: Path):
    """cwd = the sandbox. In-process only: a library's log handler still holds the stderr of an earlier CliRunner
    call (closed since), and logging would print its own 'Logging error' traceback; a real `hft` run has one stderr."""
    before, raise_exceptions = os.getcwd(), logging.raiseExceptions
    os.chdir(box)
    logging.raiseExceptions = False
    try:
        yield
    finally:
        os.chdir(before)
        logging.raiseExceptions = raise_exceptions


def validate_in(sandbox, recipe_text: str | bytes, args: list[str]) -> None:
    root, box, _ = sandbox
    path = box / "recipe.yaml"
    path.write_bytes(recipe_text if isinstance(recipe_text, bytes) else recipe_text.encode("utf-8", "surrogatepass"))
    before = snapshot(root, box)
    with inside(box):
        result = CliRunner().invoke(app, ["validate", str(path), *args])
    assert snapshot(root, box) == before, "validate wrote outside its temp dir"
    shown = f"exit {result.exit_code}, args {args!r}\n{result.output[-3000:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{result.exception!r}; {shown}"
    assert result.exit_code in (0, 2), shown
    assert "Traceback" not in result.output, shown
    assert TOKEN not in result.output, "a token was echoed"
    event(f"exit {result.exit_code}")  # `pytest --hypothesis-show-statistics`: how many got past every check


def mutated(base: dict, changes: list) -> dict:
    recipe = copy.deepcopy(base)
    for path, value in changes:
        node = recipe
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if value is DELETE:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return recipe


@settings(max_examples=RECIPE_EXAMPLES, **SETTINGS)
@given(changes=mutations, args=override_args, raw=st.one_of(st.none(), st.text(max_size=40), st.binary(max_size=40)))
def test_random_recipes_and_overrides(sandbox, changes, args, raw):
    _, _, base = sandbox
    text = raw if raw is not None else yaml.safe_dump(mutated(base, changes), allow_unicode=True, sort_keys=False)
    validate_in(sandbox, text, args)


@settings(max_examples=TYPED_EXAMPLES, **SETTINGS)
@given(changes=st.lists(st.sampled_from(LEAVES).flatmap(lambda p: st.tuples(st.just(p), of_type(field_at(p)))),
                        min_size=1, max_size=2))
def test_recipes_with_values_of_the_right_type(sandbox, changes):
    _, _, base = sandbox
    validate_in(sandbox, yaml.safe_dump(mutated(base, changes), allow_unicode=True, sort_keys=False), [])


labels = st.one_of(st.sampled_from(["positive", "negative"]), st.integers(-2, 3), st.none(), st.floats(), st.booleans(),
                   st.text(max_size=5))
texts = st.one_of(st.text(max_size=30), st.none(), st.sampled_from(["", "   ", "the kettle works."]), st.integers())
table = st.lists(st.tuples(labels, texts), min_size=0, max_size=12).map(lambda rows: [{"text": t, "label": lb} for lb, t in rows])


@st.composite
def data_file(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["truncated_jsonl", "binary", "empty", "header_only_csv", "mixed_jsonl", "csv", "json"]))
    rows = draw(table)
    if kind == "truncated_jsonl":
        full = "".join(json.dumps(r) + "\n" for r in rows or [{"text": "a", "label": "b"}]).encode()
        return ".jsonl", full[: draw(st.integers(0, len(full)))]
    if kind == "binary":
        return draw(st.sampled_from([".jsonl", ".csv", ".parquet", ".txt"])), draw(st.binary(max_size=200))
    if kind == "empty":
        return draw(st.sampled_from([".jsonl", ".csv", ".json"])), b""
    if kind == "header_only_csv":
        return ".csv", b"text,label\n"
    if kind == "csv":
        body = "text,label\n" + "".join(f"{json.dumps(r['text'])},{r['label']}\n" for r in rows)
        return ".csv", body.encode("utf-8", "surrogatepass")
    if kind == "json":
        return ".json", json.dumps(rows).encode("utf-8", "surrogatepass")
    return ".jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8", "surrogatepass")


@settings(max_examples=DATA_EXAMPLES, **SETTINGS)
@given(train=data_file(), validation=st.one_of(st.none(), data_file()))
def test_malformed_data_files(sandbox, train, validation):
    _, box, base = sandbox
    recipe = copy.deepcopy(base)
    recipe["dataset"]["files"] = {}
    for role, spec in (("train", train), ("validation", validation)):
        if spec is not None:
            suffix, content = spec
            # The validation file takes train's format: mixing formats is a recipe-level refusal, tested elsewhere.
            suffix = train[0] if role == "validation" else suffix
            path = box / f"{role}{suffix}"
            path.write_bytes(content)
            recipe["dataset"]["files"][role] = str(path)
    validate_in(sandbox, yaml.safe_dump(recipe, allow_unicode=True), [])


# --------------------------------------------------------------------------------------------------------------------
# The real entry point: `hft` as installed next to this Python.


def run_hft(box: Path, *args: str) -> subprocess.CompletedProcess:
    hft = Path(sys.executable).with_name("hft")
    return subprocess.run([str(hft), *args], cwd=box, capture_output=True, text=True, timeout=300, env=dict(os.environ))


def test_subprocess_non_finite_number_and_unset(sandbox):
    _, box, base = sandbox
    recipe = copy.deepcopy(base)
    recipe["training"]["epochs"] = float("inf")
    path = box / "inf.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = run_hft(box, "validate", str(path), "--unset", "training.epoch", "--set", "training.seed=1e400")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "training.epochs: Input should be a finite number (got inf)" in proc.stderr
    assert "--unset training.epoch: unknown key (did you mean epochs?)" in proc.stderr
    assert "--set training.seed=1e400: Input should be a finite number (got inf)" in proc.stderr


def test_subprocess_truncated_data_file(sandbox):
    _, box, base = sandbox
    train = box / "cut.jsonl"
    train.write_text('{"text": "fine", "label": "positive"}\n{"text": "cut', encoding="utf-8")
    recipe = copy.deepcopy(base)
    recipe["dataset"]["files"] = {"train": str(train)}
    path = box / "cut.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = run_hft(box, "validate", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "cut.jsonl" in proc.stderr
