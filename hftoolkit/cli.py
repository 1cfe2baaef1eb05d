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
    # Plain click help instead of rich panels: importing and rendering rich took `hft --help` from a median 0.33 s to
    # 0.61 s on the 2-core benchmark machine (bench/RESULTS.md, startup), over the 0.5 s budget.
    rich_markup_mode=None,
)
_state = {"debug": False}

SetOption = typer.Option(
    None, "--set", help="Override a recipe value: key.path=value (repeatable; values are YAML scalars).", metavar="KEY=VALUE"
)

RevisionOption = typer.Option(
    None, "--revision", help="With a Hub repo id: branch, tag, commit or refs/pr/N to read (default: main)."
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
    from hftoolkit.errors import TrainingInterrupted
    from hftoolkit.launch import rank_label

    try:
        return fn()
    except TrainingInterrupted as e:
        # Not an error: the run stopped on purpose and lost nothing. One message per job, from the main process.
        if os.environ.get("RANK", "0") == "0":
            again = _command_line(sys.argv)
            again = again if "--resume" in again.split() else f"{again} --resume"
            typer.echo(f"stopped: {e}\nto continue: {again}", err=True)
        raise typer.Exit(e.exit_code) from None
    except HftError as e:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"{rank_label()}error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _command_line(argv: list[str]) -> str:
    # Workers started by `--num-processes` get the user's own command line from the process that launched them.
    if os.environ.get("HFT_COMMAND_LINE"):
        return os.environ["HFT_COMMAND_LINE"]
    return "hft " + shlex.join(argv[1:]) if argv else "hft"


@app.command()
def finetune(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run directory that holds another run."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest complete checkpoint of this run."),
    allow_recipe_change: bool = typer.Option(
        False, "--allow-recipe-change", help="With --resume: continue even though the recipe or data changed."
    ),
    num_processes: Optional[int] = typer.Option(
        None, "--num-processes", min=1, help="Train on N processes of this machine (one per GPU; gloo on CPU) "
        "through accelerate's launcher, which also reads your `accelerate config`."
    ),
) -> None:
    """Train the model a recipe describes; writes the run directory (output_dir)."""

    def body():
        from hftoolkit.pipeline import finetune as do_finetune
        from hftoolkit.recipe import load_recipe

        r = load_recipe(recipe, set_ or [])
        if num_processes is not None and num_processes > 1:
            from hftoolkit.launch import relaunch

            hft_args = ["finetune", str(recipe), *[a for s in set_ or [] for a in ("--set", s)]]
            hft_args += [flag for flag, on in (("--overwrite", overwrite), ("--resume", resume),
                                               ("--allow-recipe-change", allow_recipe_change)) if on]
            relaunch(num_processes, hft_args, command=_command_line(sys.argv), debug=_state["debug"])
        return do_finetune(
            r, command=_command_line(sys.argv), overwrite=overwrite, resume=resume, allow_recipe_change=allow_recipe_change
        )

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
    run_dir: str = typer.Argument(..., help="Run directory written by `hft finetune`, or a Hub repo id pushed by `hft push`."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to score (default: test, else validation)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per-device eval batch size."),
    revision: Optional[str] = RevisionOption,
) -> None:
    """Score a trained run on a split with the `evaluate` library; writes eval_results.json."""

    def body():
        from hftoolkit.pipeline import evaluate_run

        results = evaluate_run(run_dir, split=split, batch_size=batch_size, revision=revision)
        if os.environ.get("RANK", "0") != "0":
            return  # under accelerate launch every process has the same gathered scores; the main one prints them
        typer.echo(f"{results['split']} split, {results['num_examples']} examples")
        width = max(len(k) for k in results["metrics"]) if results["metrics"] else 6
        for k, v in results["metrics"].items():
            typer.echo(f"  {k:<{width}}  {v:.4f}")

    _run(body)


@app.command()
def predict(
    run_dir: str = typer.Argument(..., help="Run directory written by `hft finetune`, or a Hub repo id pushed by `hft push`."),
    inputs: List[str] = typer.Argument(
        ..., help="Texts, image paths or prompts, as the run's task takes them; `-` reads one per line from stdin."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per input (JSON lines)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Generation: tokens to generate."),
    do_sample: bool = typer.Option(False, "--do-sample", help="Generation: sample instead of greedy decoding."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="Generation: sampling temperature."),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0, help="Generation: nucleus sampling mass."),
    revision: Optional[str] = RevisionOption,
) -> None:
    """Run a trained model on a few inputs: text or image path -> label and score; prompt -> generated text."""

    def body():
        import json

        from hftoolkit.pipeline import predict_run

        items = [line.rstrip("\n") for line in sys.stdin if line.strip()] if list(inputs) == ["-"] else list(inputs)
        options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "do_sample": do_sample or None}
        results = predict_run(run_dir, items, {k: v for k, v in options.items() if v is not None}, revision=revision)
        for r in results:
            typer.echo(json.dumps(r, ensure_ascii=False) if as_json else _predict_line(r))

    _run(body)


def _predict_line(result: dict) -> str:
    """One line per input: `label<TAB>score<TAB>input` for classifiers, the generated text for generators."""

    def flat(v: object) -> str:
        return str(v).replace("\r", "\\r").replace("\n", "\\n")

    if "label" in result:
        return f"{flat(result['label'])}\t{result['score']:.4f}\t{flat(result['input'])}"
    if "entities" in result:  # token classification: TYPE "text" [start:end] score; ...
        spans = [f"{e['type']} \"{flat(e['text'])}\" [{e['start']}:{e['end']}] {e['score']:.4f}" for e in result["entities"]]
        return f"{'; '.join(spans) or '(no entities)'}\t{flat(result['input'])}"
    if "labels" in result:  # multi-label: every label over the threshold, most probable first
        names, scores = ",".join(flat(x["label"]) for x in result["labels"]), ",".join(f"{x['score']:.4f}" for x in result["labels"])
        return f"{names or '(none)'}\t{scores or '-'}\t{flat(result['input'])}"
    if "value" in result:  # regression
        return f"{result['value']:.4f}\t{flat(result['input'])}"
    if "generated_text" in result:
        return flat(result["generated_text"])
    return "\t".join(flat(v) for v in result.values())


def _refuse_token_option(value: Optional[str]) -> None:
    if value is not None:
        # Never echo the value: it is a secret that already landed in shell history.
        raise typer.BadParameter(
            "tokens are not taken on the command line (shell history, process lists); set HF_TOKEN or run "
            "`hf auth login`",
            param_hint="--token",
        )


@app.command()
def push(
    run_dir: Path = typer.Argument(..., help="Run directory written by `hft finetune` and scored by `hft evaluate`."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repo to publish to: NAMESPACE/NAME (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private (existing repos keep their visibility)."),
    merge: bool = typer.Option(False, "--merge", help="Merge the LoRA adapter into the base and publish full weights."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (created from main if missing)."),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead of committing to the branch."),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", help="Commit title (default: hft push: KIND of run NAME)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the model card and the exact file list; no network."),
    verify: bool = typer.Option(False, "--verify", help="Download the pushed revision, load it as the card says, compare predictions."),
    token: Optional[str] = typer.Option(None, "--token", hidden=True, callback=_refuse_token_option, expose_value=False),
) -> None:
    """Publish a run to the Hugging Face Hub: adapter (or merged model), model card, results, recipe; one commit."""

    def body():
        from hftoolkit.push import push as do_push

        result = do_push(
            run_dir, repo_id, private=private, merge=merge, revision=revision, create_pr=create_pr,
            commit_message=commit_message, dry_run=dry_run, verify=verify,
        )
        if result.dry_run:
            typer.echo(result.card)
            total = sum(u.size for u in result.uploads)
            typer.echo(f"--- {len(result.uploads)} files for {result.repo_id}@{result.revision} ({result.kind}, {total / 1e6:.2f} MB):")
            width = max(len(u.path_in_repo) for u in result.uploads)
            for u in result.uploads:
                size = f"{'(merged)' if u.data == b'' else f'{u.size:,} B':>12}"
                typer.echo(f"  {u.path_in_repo:<{width}}  {size}  {u.origin}")
            if result.not_published:
                typer.echo(f"not published: {', '.join(result.not_published)}")
            typer.echo("dry run: nothing was uploaded")
            return
        target = f"{result.repo_id}@{result.revision}"
        if result.noop:
            typer.echo(f"nothing to push: {target} (commit {(result.commit or '')[:12]}) already holds exactly these {len(result.uploads)} files")
        else:
            typer.echo(
                f"pushed {result.kind} to {target}: commit {(result.commit or '')[:12]} "
                f"({len(result.changed)} of {len(result.uploads)} files changed, {len(result.removed)} removed)"
            )
            typer.echo(f"  {result.pr_url or result.commit_url}")
        if result.merge_check:
            typer.echo(result.merge_check)
        for line in result.verify_lines:
            typer.echo(line)

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
