"""Recipe loading: every problem reported at once with file, line and YAML path; precedence; shipped recipes valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hftoolkit.errors import RecipeError
from hftoolkit.recipe.schema import Recipe, load_recipe, recipe_json_schema

REPO = Path(__file__).resolve().parent.parent
BASE = """\
task: text-classification
model:
  name: google-bert/bert-base-uncased
dataset:
  name: stanfordnlp/sst2
  columns: {text: sentence, label: label}
output_dir: runs/x
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def problems(path: Path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.problems


def test_minimal_recipe_gets_defaults(tmp_path):
    r = load_recipe(write(tmp_path, BASE))
    assert r.lora.enabled and r.lora.r == 8
    assert r.training.precision == "auto" and r.training.seed == 42
    assert r.dataset.splits.train == "train"


def test_unknown_key_names_file_line_path_and_suggestion(tmp_path):
    p = write(tmp_path, BASE + "training:\n  epochs: 2\n  learnig_rate: 0.001\n")
    (msg,) = problems(p)
    assert msg == f"{p}:10: training.learnig_rate: unknown key (did you mean learning_rate?)"


def test_all_errors_reported_at_once(tmp_path):
    p = write(tmp_path, BASE + "training:\n  epochs: three\n  batch_size: -1\nlora:\n  rank: 4\n")
    msgs = problems(p)
    assert len(msgs) == 3
    text = "\n".join(msgs)
    assert f"{p}:9: training.epochs: Input should be a valid number" in text and "'three'" in text
    assert f"{p}:10: training.batch_size: Input should be greater than or equal to 1" in text
    assert f"{p}:12: lora.rank: unknown key (did you mean r?)" in text


def test_wrong_type_in_nested_section(tmp_path):
    p = write(tmp_path, BASE.replace("columns: {text: sentence, label: label}", "columns: [sentence]"))
    (msg,) = problems(p)
    assert "dataset.columns" in msg and f"{p}:6" in msg


def test_missing_required_key(tmp_path):
    p = write(tmp_path, BASE.replace("output_dir: runs/x\n", ""))
    (msg,) = problems(p)
    assert msg == f"{p}: output_dir: required key is missing"


def test_python_tag_is_refused_and_nothing_runs(tmp_path):
    canary = tmp_path / "canary"
    p = write(tmp_path, BASE + f"x: !!python/object/apply:os.system ['touch {canary}']\n")
    (msg,) = problems(p)
    assert "python/object/apply" in msg and "refused" in msg and f"{p}:8" in msg
    assert not canary.exists()


def test_duplicate_keys_are_an_error(tmp_path):
    p = write(tmp_path, BASE + "training:\n  epochs: 1\n  epochs: 2\n")
    (msg,) = problems(p)
    assert "duplicate key 'epochs'" in msg and "line 9" in msg


def test_precedence_defaults_yaml_set(tmp_path):
    p = write(tmp_path, BASE + "training:\n  learning_rate: 0.001\n  epochs: 2\n")
    r = load_recipe(p, ["training.learning_rate=1e-4", "lora.enabled=false", "dataset.max_samples.train=10"])
    assert r.training.learning_rate == pytest.approx(1e-4)  # --set beats YAML
    assert r.training.epochs == 2  # YAML beats default
    assert r.training.batch_size == 16  # default
    assert r.lora.enabled is False
    assert r.dataset.max_samples == {"train": 10}


def test_set_errors_say_they_come_from_set(tmp_path):
    p = write(tmp_path, BASE)
    msgs = problems(p, ["training.epoch=3", "training.batch_size=abc"])
    assert "--set training.epoch=3: unknown key (did you mean epochs?)" in msgs
    assert any(m.startswith("--set training.batch_size=abc:") for m in msgs)
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(p, ["training.epochs"])


def test_cross_field_rules(tmp_path):
    p = write(tmp_path, BASE + "training:\n  eval_strategy: steps\n")
    (msg,) = problems(p)
    assert "training" in msg and "eval_steps" in msg
    p = write(tmp_path, BASE.replace("label: label}", "label: label, image: img}"))
    (msg,) = problems(p)
    assert "dataset.columns.image is not used by task text-classification" in msg and f"{p}:6" in msg


def test_remote_code_requires_pinned_commit(tmp_path):
    p = write(tmp_path, BASE.replace("  name: google-bert/bert-base-uncased", "  name: x/y\n  trust_remote_code: true"))
    (msg,) = problems(p)
    assert "pin model.revision" in msg


def test_validators_do_not_rewrite_input(tmp_path):
    p = write(tmp_path, BASE + "evaluation:\n  metrics: [Accuracy]\n")
    assert load_recipe(p).evaluation.metrics == ["Accuracy"]


def test_missing_and_unreadable_files(tmp_path):
    assert problems(tmp_path / "nope.yaml") == ["file not found"]
    p = write(tmp_path, "- just\n- a list\n")
    (msg,) = problems(p)
    assert "must be a mapping" in msg


def test_json_schema_forbids_unknown_keys():
    schema = recipe_json_schema()
    assert schema["additionalProperties"] is False
    assert "learning_rate" in schema["$defs"]["TrainingSection"]["properties"]


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid_and_says_how_to_run_it(recipe):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# Run") and f"hft finetune recipes/{recipe.name}" in first, first
    r = load_recipe(recipe)
    assert isinstance(r, Recipe)
    # The saved form round-trips: what a run directory stores is a valid recipe again.
    assert Recipe.model_validate(yaml.safe_load(yaml.safe_dump(r.model_dump(mode="json")))) == r


def test_no_is_a_string_not_false(tmp_path):
    """YAML 1.1's yes/no booleans would turn `eval_strategy: no` into False; recipes keep the word."""
    p = write(tmp_path, BASE + "training:\n  eval_strategy: no\n  save_strategy: no\n  group_by_length: false\n")
    r = load_recipe(p, ["lora.enabled=false"])
    assert r.training.eval_strategy == "no" and r.training.save_strategy == "no"
    assert r.training.group_by_length is False and r.lora.enabled is False
    assert load_recipe(p, ["training.eval_strategy=no"]).training.eval_strategy == "no"


# ----------------------------------------------------------------------------------------------------------------------
# The tasks' part of the schema: task names, column roles and task-only keys come from the registered tasks


def test_task_names_columns_and_task_keys_come_from_the_registry():
    from hftoolkit.recipe.schema import TASK_KEYS
    from hftoolkit.tasks.registry import TASKS, get_task

    schema = recipe_json_schema()
    assert schema["properties"]["task"]["enum"] == list(TASKS)
    roles = {role for name in TASKS for role in get_task(name).column_roles}
    assert set(schema["$defs"]["Columns"]["properties"]) == roles
    assert TASK_KEYS == {
        "dataset.regression": ["text-classification"], "evaluation.threshold": ["text-classification"],
        "dataset.batching": ["causal-lm"], "dataset.end_of_turn_token": ["causal-lm"], "generation": ["causal-lm"],
        # issue 14: preference tuning is causal-lm's (training.objective and its settings, bad-pair handling)
        "training.objective": ["causal-lm"], "training.beta": ["causal-lm"], "training.loss_type": ["causal-lm"],
        "dataset.skip_bad_pairs": ["causal-lm"],
        "dataset.skip_bad_images": ["image-classification"], "dataset.augment": ["image-classification"],
        "dataset.skip_bad_rows": ["token-classification"], "dataset.label_all_subwords": ["token-classification"],
        "evaluation.scheme": ["token-classification"],
    }


def test_another_tasks_key_is_refused_naming_key_line_and_task(tmp_path):
    p = write(tmp_path, BASE.replace("  columns:", "  skip_bad_images: true\n  columns:"))
    (msg,) = problems(p)
    assert msg == (
        f"{p}:6: dataset.skip_bad_images true is for task image-classification; task text-classification does not use it"
    )
    (msg,) = problems(write(tmp_path, BASE), ["dataset.end_of_turn_token=<|im_end|>"])
    assert msg.startswith("--set dataset.end_of_turn_token=<|im_end|>: dataset.end_of_turn_token <|im_end|> is for task causal-lm")


def test_a_tasks_own_rules_are_all_reported(tmp_path):
    clm = BASE.replace("text-classification", "causal-lm")
    (msg,) = problems(write(tmp_path, clm.replace("{text: sentence, label: label}", "{prompt: p}\n  end_of_turn_token: x")))
    assert msg.endswith("dataset.columns needs both prompt and response (a prompt/response pair per row)")
    (msg,) = problems(write(tmp_path, clm.replace("{text: sentence, label: label}", "{messages: m, prompt: p}\n  batching: blocks")))
    # Every problem of the task's own rules, in one message.
    assert "exactly one kind of causal-lm data" in msg and "(given: messages, prompt/response)" in msg
    assert "; dataset.columns needs both prompt and response" in msg and "; dataset.batching blocks cuts plain text" in msg


# A task added the way token classification was (issue 15): one task file and one registry line, nothing else. Its key
# is one no shipped task declares, so the refusal names this task alone.
NEW_TASK = '''
from pydantic import Field
from hftoolkit.tasks.base import TaskBase

class TokenTagging(TaskBase):
    name = "token-tagging"
    column_roles = {"tokens": "words of a row", "tags": "one tag per word"}
    recipe_fields = {"dataset.tag_every_subword": (bool, Field(False, description="tag every subword"))}

    def check_recipe(self, recipe):
        return [] if recipe.dataset.columns.tags else ["dataset.columns.tags is needed"]

TASK = TokenTagging()
'''
PROBE_NEW_TASK = '''
import json, sys
from hftoolkit.tasks import registry
registry.TASKS["token-tagging"] = "token_tagging_task"  # the registry line
from hftoolkit.errors import RecipeError
from hftoolkit.recipe.schema import load_recipe
ok = load_recipe(sys.argv[1], ["task=token-tagging", "dataset.columns={tokens: w, tags: t}", "dataset.tag_every_subword=true"])
out = {"roles": sorted(k for k, v in ok.dataset.columns.model_dump().items() if v), "flag": ok.dataset.tag_every_subword}
for overrides in (["dataset.tag_every_subword=true"], ["task=token-tagging", "dataset.columns={tokens: w}"]):
    try:
        load_recipe(sys.argv[1], overrides)
    except RecipeError as e:
        out.setdefault("refused", []).append(e.problems[0])
print(json.dumps(out))
'''


def test_a_new_task_needs_only_its_file_and_a_registry_line(tmp_path):
    (tmp_path / "token_tagging_task.py").write_text(NEW_TASK)
    (tmp_path / "probe.py").write_text(PROBE_NEW_TASK)
    recipe = write(tmp_path, BASE)
    # The tree under test stays importable (a PYTHONPATH checkout), after the new task's folder.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py"), str(recipe)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["roles"] == ["tags", "tokens"] and out["flag"] is True
    assert out["refused"][0].endswith(
        "dataset.tag_every_subword true is for task token-tagging; task text-classification does not use it"
    )
    assert out["refused"][1].endswith("dataset.columns.tags is needed")


def test_format_recipe_changes_lists_at_most_eight_keys():
    from hftoolkit.recipe.diff import SHOWN_CHANGES, format_recipe_changes

    old = {"training": {f"k{i}": i for i in range(SHOWN_CHANGES + 1)}, "task": "causal-lm"}
    new = {"training": {f"k{i}": i + 1 for i in range(SHOWN_CHANGES + 1)}, "task": "causal-lm"}
    shown = format_recipe_changes(old, new)
    assert shown.startswith("training.k0: 0 -> 1; training.k1: 1 -> 2") and shown.endswith(" …")
    assert shown.count(" -> ") == SHOWN_CHANGES
    assert format_recipe_changes(old, old) == "recipe"
