"""`hft predict RUN INPUT…`: a quick look at a trained run, the task's `predict` on raw inputs (texts, image paths
or prompts). Inputs and flags are checked before any model loads, so a typo fails in a second."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from hftoolkit.errors import CommandLineError, HftError

if TYPE_CHECKING:
    from hftoolkit.tasks.base import Task

STDIN = "-"  # the one input that means "read the inputs from stdin, one per line"


def predict_command(
    run_path: str,
    inputs: list[str],
    *,
    stdin: Iterable[str],
    as_json: bool = False,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    revision: str | None = None,
) -> list[str]:
    """`hft predict`: inputs and flags checked before any run or model is opened, then one printable line per input."""
    from_stdin = list(inputs) == [STDIN]
    items = [line.rstrip("\n") for line in stdin if line.strip()] if from_stdin else list(inputs)
    check_inputs(items, from_stdin)
    check_generation_flags(max_new_tokens, do_sample, temperature, top_p)
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "do_sample": do_sample or None}
    task, results = run_task_predict(run_path, items, {k: v for k, v in options.items() if v is not None}, revision)
    return [json.dumps(r, ensure_ascii=False) if as_json else task.result_line(r) for r in results]


def check_inputs(items: list[str], from_stdin: bool) -> None:
    """An empty input has nothing to classify or continue."""
    if from_stdin and not items:
        raise CommandLineError("stdin gave no input: every line was empty (`-` reads one input per non-empty line)")
    for i, item in enumerate(items, 1):
        if not item.strip():
            which = f"input {i} of {len(items)}" if len(items) > 1 else "the input"
            raise CommandLineError(f"{which} is {'empty' if not item else 'only whitespace'}: give a text, image path or prompt")


def check_generation_flags(
    max_new_tokens: int | None, do_sample: bool, temperature: float | None, top_p: float | None
) -> None:
    """The generation flags' ranges (the recipe's own values are checked by its schema)."""
    from hftoolkit.tasks.causal_lm import MAX_NEW_TOKENS

    if max_new_tokens is not None and not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise CommandLineError(f"--max-new-tokens {max_new_tokens}: give a number of tokens from 1 to {MAX_NEW_TOKENS:,}")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        why = (
            "sampling divides the scores by the temperature, so it must be greater than 0; for greedy decoding leave "
            "out --do-sample" if do_sample else "the temperature must be a number greater than 0 (it only matters "
            "with --do-sample; greedy decoding needs none)"
        )
        raise CommandLineError(f"--temperature {temperature:g}: {why}")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise CommandLineError(
            f"--top-p {top_p:g}: the share of probability mass sampled from must be greater than 0 and at most 1 "
            "(1 keeps every token)"
        )


def predict_run(
    run_path: str | Path, inputs: list[str], options: dict[str, Any] | None = None, revision: str | None = None
) -> list[dict[str, Any]]:
    """One result per input: {"input", "label", "score"} for classifiers, {"input", "generated_text"} for generators
    (the task's `predict` says)."""
    return run_task_predict(run_path, inputs, options, revision)[1]


def run_task_predict(
    run_path: str | Path, inputs: list[str], options: dict[str, Any] | None = None, revision: str | None = None
) -> tuple[Task, list[dict[str, Any]]]:
    """The run's task (which formats the results) and its predictions on `inputs`."""
    from hftoolkit.modeling import load_trained
    from hftoolkit.run.hub_run import open_run
    from hftoolkit.tasks.registry import get_task

    run = open_run(run_path, revision)
    run.require_trained()
    recipe = run.load_recipe()
    if not inputs:
        raise HftError("give at least one input to predict on")
    task = get_task(recipe.task)
    task.check_predict_inputs(list(inputs))  # e.g. image paths exist
    model, processor = load_trained(task, recipe, run.model)
    import torch  # after the checks above: a wrong path or run fails without waiting for torch

    if torch.cuda.is_available():
        model.to("cuda")
    # The run's own generation settings are the defaults; what the user gave wins.
    options = {**task.predict_options(recipe), **(options or {})}
    return task, task.predict(model, processor, list(inputs), options)
