"""The README's recipe reference (the ```yaml block under "## Recipes") states the schema's defaults, key by key."""

from __future__ import annotations

import re

import yaml
from pydantic import BaseModel

from hftoolkit.recipe.schema import Recipe
from tests.fixtures import REPO

# What a recipe has to choose: the block shows an example value for these, and the schema's default for every other key.
CHOICES = {"task", "model.name", "dataset.name", "dataset.columns.text", "dataset.columns.label", "output_dir"}


def readme_reference() -> dict:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Recipes\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "no ```yaml block in the README's Recipes section"
    return yaml.safe_load(block.group(1))


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = model.model_fields[key].annotation
    options = [annotation, *getattr(annotation, "__args__", ())]
    return next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)


def compare(model: type[BaseModel], values: dict, prefix: str = "") -> tuple[list[str], list[str]]:
    """(keys compared against their default, mismatches or unknown keys)."""
    compared, wrong = [], []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in model.model_fields:
            wrong.append(f"{path}: not a recipe key")
            continue
        field = model.model_fields[key]
        sub = _submodel(model, key)
        if sub is not None and isinstance(value, dict):
            more, bad = compare(sub, value, path + ".")
            compared += more
            wrong += bad
            continue
        if path in CHOICES:
            continue
        default = field.get_default(call_default_factory=True)
        default = default.model_dump() if isinstance(default, BaseModel) else default
        compared.append(path)
        # True == 1 in Python; a boolean must be documented as a boolean.
        if field.is_required() or value != default or isinstance(value, bool) != isinstance(default, bool):
            wrong.append(f"{path}: README says {value!r}, the schema's default is {default!r}")
    return compared, wrong


def test_readme_recipe_reference_states_the_schema_defaults():
    reference = readme_reference()
    compared, wrong = compare(Recipe, reference)
    assert not wrong, "\n".join(wrong)
    # The block is a real reference, not a stub: most keys of every section are in it.
    assert len(compared) >= 40, compared
    assert {"dataset.validation_size", "training.learning_rate", "lora.r", "dataset.splits.validation"} <= set(compared)


def test_readme_recipe_reference_is_a_valid_recipe():
    reference = readme_reference()
    recipe = Recipe.model_validate(reference)  # raises on any key or value the schema refuses
    assert recipe.model_dump(include={"task", "output_dir"}) == {k: reference[k] for k in ("task", "output_dir")}
