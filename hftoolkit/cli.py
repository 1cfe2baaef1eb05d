"""The `hft` command line: parses arguments, calls the pipeline, turns errors into one line and exit code 2.

Start-up must stay fast (`hft --help` under 0.5 s): torch, transformers, datasets, peft and evaluate are
imported only inside the commands that use them. tests/test_cli.py checks this.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Optional

import typer

from hftoolkit import __version__
from hftoolkit.errors import HftError

app = typer.Typer(
    name="hft",
    help="Fine-tune, evaluate and publish Hugging Face models from YAML recipes.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}

SetOption = typer.Option(
    None, "--set", help="Override a recipe value: key.path=value (repeatable; values are YAML scalars).", metavar="KEY=VALUE"
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hftoolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and library logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug or os.environ.get("HFT_DEBUG") == "1"
    _setup_logging(_state["debug"])


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[hft] %(message)s"))
    logger = logging.getLogger("hftoolkit")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    if not debug:
        # Library chatter (e.g. "newly initialized weights", which is expected for a new head) drowns our messages.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _run(fn: Callable[[], object]) -> object:
    """Run a command body; user errors become one line on stderr and exit code 2."""
    try:
        return fn()
    except HftError as e:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _command_line(argv: list[str]) -> str:
    return "hft " + shlex.join(argv[1:]) if argv else "hft"


@app.command()
def finetune(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run directory that holds another run."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint of this run."),
) -> None:
    """Train the model a recipe describes; writes the run directory (output_dir)."""

    def body():
        from hftoolkit.pipeline import finetune as do_finetune
        from hftoolkit.recipe import load_recipe

        r = load_recipe(recipe, set_ or [])
        return do_finetune(r, command=_command_line(sys.argv), overwrite=overwrite, resume=resume)

    _run(body)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Check a recipe, its data and its model config without training, and print the plan."""

    def body():
        from hftoolkit.pipeline import validate as do_validate
        from hftoolkit.recipe import load_recipe

        r = load_recipe(recipe, set_ or [])
        for line in do_validate(r):
            typer.echo(line)

    _run(body)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="Run directory written by `hft finetune`."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to score (default: test, else validation)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per-device eval batch size."),
) -> None:
    """Score a trained run on a split with the `evaluate` library; writes eval_results.json."""

    def body():
        from hftoolkit.pipeline import evaluate_run

        results = evaluate_run(run_dir, split=split, batch_size=batch_size)
        typer.echo(f"{results['split']} split, {results['num_examples']} examples")
        width = max(len(k) for k in results["metrics"]) if results["metrics"] else 6
        for k, v in results["metrics"].items():
            typer.echo(f"  {k:<{width}}  {v:.4f}")

    _run(body)


@app.command()
def schema() -> None:
    """Print the JSON Schema of recipes (for editor autocompletion)."""
    import json

    from hftoolkit.recipe import recipe_json_schema

    typer.echo(json.dumps(recipe_json_schema(), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
