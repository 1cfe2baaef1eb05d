"""Measured defaults (recipe/defaults.py): per task and method, per preference objective, and their precedence.

The values come from the sweep in bench/RESULTS.md (`python -m bench task-defaults`); these tests pin the mechanism:
a key a recipe leaves out takes its task's measured default for the recipe's method, a written key or `--set`
always wins, `--unset` falls back to the measured default, `hft validate` names what applied, and the resolved
recipe says what ran (it re-validates to the same recipe, with nothing left to fill).
"""

from __future__ import annotations

import pytest
import yaml

from hftoolkit.recipe.defaults import METHODS
from hftoolkit.recipe.schema import TASK_OBJECTS, Recipe, load_recipe, recipe_to_yaml
from hftoolkit.recipe_tuning import OBJECTIVE_DEFAULTS
from tests.cli_helpers import hft_cli

# The columns a minimal recipe of each task names (schema validation only: nothing is read).
COLUMNS = {
    "text-classification": {"text": "sentence", "label": "label"},
    "causal-lm": {"text": "text"},
    "image-classification": {"image": "image", "label": "label"},
    "token-classification": {"tokens": "tokens", "tags": "ner_tags"},
}


def minimal(task: str, **sections) -> dict:
    """What a new user writes: task, model, dataset and columns, nothing else."""
    return {"task": task, "model": {"name": "org/model"}, "dataset": {"name": "org/data", "columns": COLUMNS[task]},
            "output_dir": "runs/x", **sections}


def resolved(recipe: Recipe, key: str):
    section, name = key.split(".")
    return getattr(getattr(recipe, section), name)


def test_every_task_is_covered_and_declares_only_real_keys_for_known_methods():
    assert set(COLUMNS) == set(TASK_OBJECTS)
    for name, task in TASK_OBJECTS.items():
        assert set(task.training_defaults) <= set(METHODS), name
        for method, defaults in task.training_defaults.items():
            lora = {} if method == "lora" else {"lora": {"enabled": False}}
            recipe = Recipe.model_validate(minimal(name, **lora))
            for key, value in defaults.items():
                assert key.split(".")[0] in ("training", "lora"), (name, key)
                assert resolved(recipe, key) == value, (name, method, key)
            assert recipe.filled_defaults == defaults, (name, method)


@pytest.mark.parametrize("task", [t for t in TASK_OBJECTS if TASK_OBJECTS[t].training_defaults])
def test_written_values_win_and_nothing_of_theirs_is_reported_as_a_default(task):
    defaults = TASK_OBJECTS[task].training_defaults["lora"]
    written = {"learning_rate": 0.0123, "epochs": 7.0, "warmup_ratio": 0.2}
    recipe = Recipe.model_validate(minimal(task, training=written))
    assert (recipe.training.learning_rate, recipe.training.epochs, recipe.training.warmup_ratio) == (0.0123, 7.0, 0.2)
    assert not {"training.learning_rate", "training.epochs", "training.warmup_ratio"} & set(recipe.filled_defaults)
    assert set(recipe.filled_defaults) == {k for k in defaults if k.split(".")[1] not in written}


def test_full_fine_tuning_gets_its_own_defaults_not_the_lora_ones():
    task = TASK_OBJECTS["text-classification"]
    lora = Recipe.model_validate(minimal("text-classification"))
    full = Recipe.model_validate(minimal("text-classification", lora={"enabled": False}))
    assert lora.training.learning_rate == task.training_defaults["lora"]["training.learning_rate"]
    assert full.training.learning_rate == task.training_defaults["full"]["training.learning_rate"]
    assert full.training.learning_rate < lora.training.learning_rate  # full fine-tuning moves every weight


def test_precedence_defaults_then_yaml_then_set_and_unset_falls_back_to_the_measured_default(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(minimal("token-classification", training={"learning_rate": 0.5})))
    measured = TASK_OBJECTS["token-classification"].training_defaults["lora"]["training.learning_rate"]
    assert load_recipe(path).training.learning_rate == 0.5
    assert load_recipe(path, ["training.learning_rate=0.25"]).training.learning_rate == 0.25
    from hftoolkit.recipe.loading import Unset

    unset = load_recipe(path, [Unset("training.learning_rate")])
    assert unset.training.learning_rate == measured and "training.learning_rate" in unset.filled_defaults


def test_preference_objectives_take_their_own_defaults_not_the_tasks():
    columns = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    for objective, defaults in OBJECTIVE_DEFAULTS.items():
        raw = minimal("causal-lm", training={"objective": objective})
        raw["dataset"]["columns"] = columns
        recipe = Recipe.model_validate(raw)
        for key, value in defaults.items():
            assert getattr(recipe.training, key) == value, (objective, key)
            assert recipe.filled_defaults[f"training.{key}"] == value


def test_the_resolved_recipe_says_what_ran_and_fills_nothing_more(tmp_path):
    recipe = Recipe.model_validate(minimal("text-classification"))
    assert recipe.filled_defaults
    again = tmp_path / "recipe.resolved.yaml"
    again.write_text(recipe_to_yaml(recipe))
    reloaded = load_recipe(again)
    assert reloaded == recipe and reloaded.filled_defaults == {}


def test_validate_prints_which_measured_defaults_applied(make_recipe):
    # The fixture recipe writes learning_rate and epochs; with them unset the task's measured ones apply.
    from hftoolkit.recipe.defaults import describe

    path = make_recipe()
    written = hft_cli("validate", path)
    assert written.exit_code == 0, written.output
    expected = describe(load_recipe(path, [_unset("training.learning_rate"), _unset("training.epochs")]))
    assert "measured defaults applied" not in written.output or "training.learning_rate" not in written.output
    result = hft_cli("validate", path, "--unset", "training.learning_rate", "--unset", "training.epochs")
    assert result.exit_code == 0, result.output
    assert expected and expected in result.output, result.output
    assert "text-classification, LoRA" in expected and "training.learning_rate" in expected


def _unset(key: str):
    from hftoolkit.recipe.loading import Unset

    return Unset(key)
