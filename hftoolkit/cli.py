"""The `hft` command line: options only. Each command body calls one function in hftoolkit/commands/; errors
become one line and exit code 2.

Start-up must stay fast (`hft --help` under 0.5 s): torch, transformers, datasets, peft and evaluate are
imported only inside the commands that use them. tests/test_cli.py checks this.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer
from typer.core import TyperCommand

from hftoolkit import __version__
from hftoolkit.commands.export import DEFAULT_MAX_DIFF, DEFAULT_MAX_DROP, QUANTIZE_CHOICES
from hftoolkit.deploy.limits import (
    DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INPUTS, DEFAULT_MAX_WAIT_MS, ServeSettings,
)
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

# Shared option types: one definition per option, whichever commands take it.
RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.")]
SetOpt = Annotated[Optional[List[str]], typer.Option(
    "--set", metavar="KEY=VALUE",
    help="Override a recipe value: key.path=value (repeatable; values are YAML scalars, null included).",
)]
UnsetOpt = Annotated[Optional[List[str]], typer.Option(
    "--unset", metavar="KEY",
    help="Reset a recipe key to its default, or remove a mapping entry such as dataset.max_samples.validation "
    "(repeatable; --set and --unset apply in command-line order).",
)]
RunArg = Annotated[str, typer.Argument(
    help="Run directory written by `hft finetune`, or a Hub repo id pushed by `hft push`."
)]
RevisionOpt = Annotated[Optional[str], typer.Option(
    "--revision", help="With a Hub repo id: branch, tag, commit or refs/pr/N to read (default: main)."
)]
_OVERRIDE_ORDER = "hft.override_order"

Quantize = Enum("Quantize", {name: name for name in QUANTIZE_CHOICES}, type=str)  # --quantize choices

class _OrderedOverrides(TyperCommand):
    """Records the command-line order of --set and --unset: click hands each option's values over separately."""

    def make_parser(self, ctx):  # type: ignore[no-untyped-def]
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_and_record(args):  # type: ignore[no-untyped-def]
            opts, rest, order = parse(args=args)
            ctx.meta[_OVERRIDE_ORDER] = [param.name for param in order]
            return opts, rest, order

        parser.parse_args = parse_and_record  # type: ignore[method-assign]
        return parser


def _overrides(ctx: typer.Context, sets: Optional[List[str]], unsets: Optional[List[str]]) -> list:
    """--set items (strings) and --unset items (recipe.Unset), in the order they were given."""
    from hftoolkit.recipe.loading import Unset

    pending = {"set_": list(sets or []), "unset": [Unset(key) for key in unsets or []]}
    ordered = [pending[name].pop(0) for name in ctx.meta.get(_OVERRIDE_ORDER, []) if pending.get(name)]
    return ordered + pending["set_"] + pending["unset"]


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
    from hftoolkit.launch import is_main_process, rank_label

    try:
        return fn()
    except TrainingInterrupted as e:
        # Not an error: the run stopped on purpose and lost nothing. One message per job, from the main process.
        if is_main_process():
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


@app.command(cls=_OrderedOverrides)
def finetune(
    ctx: typer.Context,
    recipe: RecipeArg,
    set_: SetOpt = None,
    unset: UnsetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run directory that holds another run.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest complete checkpoint of this run.")] = False,
    allow_recipe_change: Annotated[bool, typer.Option(
        "--allow-recipe-change", help="With --resume: continue even though the recipe or data changed."
    )] = False,
    num_processes: Annotated[Optional[int], typer.Option(
        "--num-processes", min=1, help="Train on N processes of this machine (one per GPU; gloo on CPU) "
        "through accelerate's launcher, which also reads your `accelerate config`."
    )] = None,
) -> None:
    """Train the model a recipe describes; writes the run directory (output_dir)."""

    def body():
        from hftoolkit.commands.finetune import finetune_command

        finetune_command(
            recipe, _overrides(ctx, set_, unset), argv=sys.argv[1:], command=_command_line(sys.argv),
            num_processes=num_processes, overwrite=overwrite, resume=resume, allow_recipe_change=allow_recipe_change,
        )

    _run(body)


@app.command(cls=_OrderedOverrides)
def validate(ctx: typer.Context, recipe: RecipeArg, set_: SetOpt = None, unset: UnsetOpt = None) -> None:
    """Check a recipe, its data and its model config without training, and print the plan."""

    def body():
        from hftoolkit.commands.validate import validate_command

        for line in validate_command(recipe, _overrides(ctx, set_, unset)):
            typer.echo(line)

    _run(body)


@app.command()
def evaluate(
    run_dir: RunArg,
    split: Annotated[Optional[str], typer.Option("--split", help="Split to score (default: test, else validation).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Per-device eval batch size.")] = None,
    revision: RevisionOpt = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse to score a split whose data changed since training (default: warn)."
    )] = False,
) -> None:
    """Score a trained run on a split with the `evaluate` library; writes eval_results.json."""

    def body():
        from hftoolkit.commands.evaluate import evaluate_command

        for line in evaluate_command(run_dir, split=split, batch_size=batch_size, revision=revision, strict=strict):
            typer.echo(line)

    _run(body)


@app.command()
def predict(
    run_dir: RunArg,
    inputs: Annotated[List[str], typer.Argument(
        help="Texts, image paths or prompts, as the run's task takes them; `-` reads one per line from stdin."
    )],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per input (JSON lines).")] = False,
    # Ranges are checked in commands/predict.py, not by click: one `error:` line like every other error.
    max_new_tokens: Annotated[Optional[int], typer.Option(
        "--max-new-tokens", help="Generation: tokens to generate (at least 1)."
    )] = None,
    do_sample: Annotated[bool, typer.Option("--do-sample", help="Generation: sample instead of greedy decoding.")] = False,
    temperature: Annotated[Optional[float], typer.Option(
        "--temperature", help="Generation: sampling temperature (> 0)."
    )] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Generation: nucleus sampling mass (> 0 and <= 1).")] = None,
    revision: RevisionOpt = None,
) -> None:
    """Run a trained model on a few inputs: text or image path -> label and score; prompt -> generated text."""

    def body():
        from hftoolkit.commands.predict import predict_command

        lines = predict_command(
            run_dir, list(inputs), stdin=sys.stdin, as_json=as_json, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_p=top_p, revision=revision,
        )
        for line in lines:
            typer.echo(line)

    _run(body)


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
    with_onnx: Optional[Path] = typer.Option(
        None, "--with-onnx", metavar="EXPORT_DIR",
        help="Also publish this run's `hft export` folder under onnx/ (same commit); the card gets an ONNX section.",
    ),
    token: Optional[str] = typer.Option(None, "--token", hidden=True, callback=_refuse_token_option, expose_value=False),
) -> None:
    """Publish a run to the Hugging Face Hub: adapter (or merged model), model card, results, recipe; one commit."""

    def body():
        from hftoolkit.commands.push import print_result, push as do_push

        result = do_push(
            run_dir, repo_id, private=private, merge=merge, revision=revision, create_pr=create_pr,
            commit_message=commit_message, dry_run=dry_run, verify=verify, with_onnx=with_onnx,
        )
        print_result(result, typer.echo)

    _run(body)


@app.command()
def export(
    run_dir: RunArg,
    onnx: Path = typer.Option(..., "--onnx", help="Folder to write the ONNX export to (new, empty, or an earlier export)."),
    quantize: Optional[Quantize] = typer.Option(
        None, "--quantize", help="Also write model.int8.onnx (ONNX Runtime dynamic "
        "quantization) after scoring it on the whole evaluation split."
    ),
    opset: Optional[int] = typer.Option(None, "--opset", min=1, help="ONNX opset to ask for (the exporter may raise it; 18 at least)."),
    max_diff: float = typer.Option(DEFAULT_MAX_DIFF, "--max-diff", min=0.0, help="Largest |logit difference| ONNX Runtime vs PyTorch allowed."),
    max_drop: float = typer.Option(DEFAULT_MAX_DROP, "--max-drop", min=0.0, help="Largest int8 metric drop allowed, in points."),
    force: bool = typer.Option(False, "--force", help="Write the int8 model even when its metric drop is over --max-drop."),
) -> None:
    """Export a trained run to ONNX (LoRA merged), parity-checked against PyTorch; optionally int8."""

    def body():
        from hftoolkit.commands.export import ExportOptions, summary_lines
        from hftoolkit.commands.export import export as do_export

        options = ExportOptions(quantize=quantize.value if quantize else None, opset=opset, max_diff=max_diff, max_drop=max_drop, force=force)
        for line in summary_lines(*do_export(run_dir, onnx, options)):
            typer.echo(line)

    _run(body)


@app.command()
def serve(
    target: str = typer.Argument(..., help="Run directory, `hft export` folder (served with ONNX Runtime) or Hub repo id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    max_batch: int = typer.Option(DEFAULT_MAX_BATCH, "--max-batch", min=1, help="Most inputs per model call (1 = no micro-batching)."),
    max_wait_ms: float = typer.Option(DEFAULT_MAX_WAIT_MS, "--max-wait-ms", min=0.0, help="Longest a request waits for others to batch with."),
    max_inputs: int = typer.Option(DEFAULT_MAX_INPUTS, "--max-inputs", min=1, help="Most inputs in one request (more: 422)."),
    max_body_kb: int = typer.Option(DEFAULT_MAX_BODY_BYTES // 1024, "--max-body-kb", min=1, help="Largest request body in KiB (more: 413)."),
    int8: bool = typer.Option(False, "--int8", help="With an export folder: serve model.int8.onnx instead of model.onnx."),
) -> None:
    """Serve a trained model over HTTP: /v1/predict, /v1/chat/completions (causal LM), /healthz, /metrics, /docs."""

    def body():
        from hftoolkit.commands.serve import serve as do_serve

        settings = ServeSettings(host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                 max_inputs=max_inputs, max_body_bytes=max_body_kb * 1024)
        do_serve(target, settings, int8=int8)

    _run(body)


@app.command()
def schema() -> None:
    """Print the JSON Schema of recipes (for editor autocompletion)."""
    import json

    from hftoolkit.recipe.schema import recipe_json_schema

    typer.echo(json.dumps(recipe_json_schema(), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
