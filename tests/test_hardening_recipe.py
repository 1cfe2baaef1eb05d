"""Issue 11, recipes and flags: `--set key=null`, `--unset`, splits with files, blame on `--set`, non-finite numbers,
generation flags, plan sanity bounds. Each case through the CLI (typer's CliRunner on the app), with its message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hftoolkit.cli import app


def hft(*args: object, input: str | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def problems(result) -> list[str]:
    """The problems of a recipe error (exit 2): `error: FILE: N problems in the recipe` then one `  - ` line each."""
    assert result.exit_code == 2, result.output
    head, *rest = result.stderr.strip().splitlines()
    assert head.startswith("error: ") and "in the recipe" in head, result.stderr
    return [line.removeprefix("  - ") for line in rest]


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


def line_of(path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(text))


def sizes(result) -> dict[str, int]:
    assert result.exit_code == 0, result.output
    out = {}
    for line in result.stdout.splitlines():
        if line.startswith("data: split ") and line.endswith(" rows"):
            role, n = line.removeprefix("data: split ").removesuffix(" rows").split(": ")
            out[role] = int(n)
    return out


@pytest.fixture
def recipe(make_recipe):
    return make_recipe(dataset={"max_samples": {"train": 50, "validation": 7}})


def test_set_null_where_the_schema_allows_null(recipe):
    assert sizes(hft("validate", recipe, "--set", "dataset.max_samples=null")) == {"train": 200, "validation": 60, "test": 60}
    (msg,) = problems(hft("validate", recipe, "--set", "training.epochs=null"))
    assert msg == "--set training.epochs=null: Input should be a valid number (got null); --unset training.epochs goes back to the default"


def test_unset_resets_a_key_and_removes_a_mapping_entry(recipe):
    result = hft("validate", recipe, "--unset", "dataset.max_samples.validation", "--unset", "training.epochs")
    assert sizes(result) == {"train": 50, "validation": 60, "test": 60}
    assert ", 3 epochs)" in result.stdout  # the schema default, not the YAML's 2


def test_set_and_unset_apply_in_command_line_order(recipe):
    first_unset = hft("validate", recipe, "--unset", "dataset.max_samples", "--set", "dataset.max_samples.train=30")
    assert sizes(first_unset) == {"train": 30, "validation": 60, "test": 60}
    last_unset = hft("validate", recipe, "--set", "dataset.max_samples.train=30", "--unset", "dataset.max_samples")
    assert sizes(last_unset) == {"train": 200, "validation": 60, "test": 60}


def test_unknown_key_in_unset_or_set_says_did_you_mean(recipe):
    msgs = problems(hft("validate", recipe, "--unset", "training.epoch", "--unset", "dataset.max_samples.valid",
                        "--set", "lora.rank=4"))
    assert msgs == [
        "--unset training.epoch: unknown key (did you mean epochs?)",
        "--unset dataset.max_samples.valid: unknown key (did you mean validation?)",
        "--set lora.rank=4: unknown key (did you mean r?)",
    ]


def test_splits_are_refused_with_files_naming_the_key(make_recipe):
    path = make_recipe(dataset={"splits": {"train": "train", "validation": None, "test": "test"}})
    (msg,) = problems(hft("validate", path))
    assert msg.startswith(f"{path}:{line_of(path, 'validation: null')}: dataset.splits.validation is not used with dataset.files: ")
    assert "the split names are the keys of dataset.files (train, validation, test)" in msg
    # The defaults, written out, change nothing and pass.
    defaults = make_recipe("defaults.yaml", dataset={"splits": {"train": "train", "validation": "validation", "test": "test"}})
    assert hft("validate", defaults).exit_code == 0


def test_errors_in_set_values_are_blamed_on_set_never_on_the_file(recipe):
    msgs = problems(hft("validate", recipe, "--set", "training.epochs=abc", "--set", "dataset.max_samples.validation=x"))
    assert len(msgs) == 2, msgs  # one line per mistake: the union's other branch (an int) is not reported too
    assert "--set training.epochs=abc: Input should be a valid number, unable to parse string as a number (got 'abc')" in msgs
    assert any(m.startswith("--set dataset.max_samples.validation=x: Input should be a valid integer") for m in msgs)
    # A check across keys that only the override broke is blamed on it, not on the `training:` line of the file.
    msgs += problems(hft("validate", recipe, "--set", "training.eval_strategy=steps"))
    assert msgs[-1] == "--set training.eval_strategy=steps: training: eval_strategy: steps needs training.eval_steps"
    assert not any(str(recipe) in m for m in msgs)


def test_yaml_and_set_problems_are_reported_at_once(recipe):
    broken = recipe.parent / "broken.yaml"
    broken.write_text(recipe.read_text().replace("  epochs: 2\n", "  epochs: 2\n  learnig_rate: 0.1\n"))
    msgs = problems(hft("validate", broken, "--set", "training.seed=-1", "--set", "nonsense"))
    assert f"{broken}:{line_of(broken, 'learnig_rate')}: training.learnig_rate: unknown key (did you mean learning_rate?)" in msgs
    assert "--set training.seed=-1: Input should be greater than or equal to 0 (got -1)" in msgs
    assert "--set nonsense: expected key.path=value" in msgs


@pytest.mark.parametrize("literal", [".inf", "-.inf", ".nan", "1e400"])
def test_non_finite_numbers_are_recipe_errors_naming_the_path(recipe, literal):
    path = recipe.parent / "inf.yaml"
    path.write_text(recipe.read_text().replace("  epochs: 2\n", f"  epochs: {literal}\n"))
    (msg,) = problems(hft("validate", path))
    assert msg.startswith(f"{path}:{line_of(path, 'epochs:')}: training.epochs: Input should be a finite number"), msg


def test_non_finite_number_in_set(recipe):
    (msg,) = problems(hft("validate", recipe, "--set", "training.learning_rate=1e400"))
    assert msg == "--set training.learning_rate=1e400: Input should be a finite number (got inf)"


def test_blank_generation_prompt_in_a_recipe(tmp_path, make_recipe):
    path = make_recipe(task="causal-lm", dataset={"columns": {"text": "text"}}, generation={"prompts": ["ok", "  "]})
    (msg,) = problems(hft("validate", path))
    assert msg.startswith(f"{path}:") and "generation.prompts: prompt 1 is empty or only whitespace" in msg


@pytest.mark.parametrize(
    "args, expected",
    [
        (["", ], "the input is empty: give a text, image path or prompt"),
        (["fine", "  "], "input 2 of 2 is only whitespace"),
        (["hi", "--do-sample", "--temperature", "0"], "--temperature 0: sampling divides the scores by the temperature, so it must be greater than 0"),
        (["hi", "--do-sample", "--top-p", "0"], "--top-p 0: the share of probability mass sampled from must be greater than 0 and at most 1"),
        (["hi", "--max-new-tokens", "0"], "--max-new-tokens 0: give a number of tokens from 1 to 131,072"),
        (["hi", "--max-new-tokens", "10000000"], "--max-new-tokens 10000000: give a number of tokens from 1 to 131,072"),
    ],
)
def test_generation_flags_are_checked_before_anything_loads(tmp_path, monkeypatch, args, expected):
    def not_reached(*a, **k):
        raise AssertionError("predict_run was called: the flags were not checked first")

    monkeypatch.setattr("hftoolkit.commands.predict.run_task_predict", not_reached)
    assert expected in one_line_error(hft("predict", tmp_path / "some-run", *args))


def test_predict_from_stdin_with_only_blank_lines(tmp_path):
    msg = one_line_error(hft("predict", tmp_path / "some-run", "-", input="\n   \n"))
    assert msg == "stdin gave no input: every line was empty (`-` reads one input per non-empty line)"


def test_plan_sanity_bounds_in_validate(make_recipe):
    path = make_recipe()  # 200 training rows in batches of 16: 13 batches an epoch
    msg = one_line_error(hft("validate", path, "--set", "training.gradient_accumulation_steps=50"))
    assert msg.startswith("training.gradient_accumulation_steps is 50 but the training set makes only 13 batches of 16 (200 rows)")
    msg = one_line_error(hft("validate", path, "--set", "training.epochs=1e6"))
    assert msg.startswith("the plan has 13,000,000 optimizer steps (training.epochs 1e+06 x 13 steps per epoch), more than the limit of 10,000,000")
    msg = one_line_error(hft("validate", path, "--set", "training.max_steps=20000000"))
    assert msg.startswith("the plan has 20,000,000 optimizer steps (training.max_steps), more than the limit of 10,000,000")


def test_plan_sanity_bounds_in_finetune_before_anything_is_written(make_recipe, tmp_path):
    path = make_recipe()
    result = hft("finetune", path, "--set", "training.gradient_accumulation_steps=50")
    assert result.exit_code == 2, result.output
    # finetune shows the tokenization progress first; the error is the last line, and the only one.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    msg = errors[0].removeprefix("error: ")
    assert msg.startswith("training.gradient_accumulation_steps is 50 but the training set makes only 13 batches")
    assert not (tmp_path / "run").exists()


def test_unset_is_offered_wherever_set_is():
    for command in ("validate", "finetune"):
        assert "--unset KEY" in hft(command, "--help").stdout


@pytest.mark.parametrize(
    "override, expected",
    [
        # Each of these crashed `hft validate` with a traceback (found by tests/test_hardening_fuzz.py).
        ("dataset.columns.text=label", "dataset.columns.label and dataset.columns.text both name column 'label'"),
        ("lora.target_modules=['']", "module 0 is empty or only whitespace"),
        ("lora.r=100000000000000000000", "Input should be less than or equal to 65536"),
        ("model.name='package:'", "'package:' names no model"),
        ("evaluation.metrics=[accuracy, ' ']", "metric 1 is empty or only whitespace"),
        ("training.seed=-1", "Input should be greater than or equal to 0"),
        ("dataset.num_proc=100000", "Input should be less than or equal to 1024"),
    ],
)
def test_values_that_crashed_validate_are_recipe_errors(recipe, override, expected):
    (msg,) = problems(hft("validate", recipe, "--set", override))
    # Blamed on the override (a conflict with a key of the file names that line too: `recipe.yaml:11 with --set ...`).
    assert f"--set {override}: " in msg and expected in msg, msg


def test_empty_names_are_not_the_current_directory(recipe):
    (msg,) = problems(hft("validate", recipe, "--set", "model.name="))
    assert msg.startswith("--set model.name=: '' names no model")
    msgs = problems(hft("validate", recipe, "--unset", "dataset.files", "--set", "dataset.name=' '"))
    assert msgs == ["--set dataset.name=' ': an empty name is the current directory to the loaders; give a Hub id or a local folder"]
