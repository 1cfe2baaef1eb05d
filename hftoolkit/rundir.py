"""The run directory: the contract between commands. `finetune` writes it; `evaluate`, `predict` and `push` read it.

    runs/<name>/
      recipe.resolved.yaml   the recipe with every default filled in (what actually ran)
      manifest.json          status, versions, seed, model/dataset ids and commits, data fingerprint, command line
      data_report.json       split sizes, label counts, token lengths, truncation, dropped rows
      model/                 adapter (adapter_config.json + adapter_model.safetensors, head included) or full
                             weights (model.safetensors), config.json with id2label, tokenizer/processor files
      checkpoints/           Trainer checkpoints (for --resume); each complete one holds hft_checkpoint.json
                             (step, run id, recipe and data fingerprints), written after all its files
      tensorboard/           TensorBoard event files
      metrics.jsonl          one JSON object per logging step (train loss, lr, eval metrics)
      train_results.json     final training metrics and the validation scores
      eval_results.json      written by `hft evaluate`
      loss_curve.png, confusion_matrix.png
      samples.jsonl          causal LM: the recipe's generation prompts answered by the fine-tuned model

Writes are atomic (temp file + rename), so a crash never leaves a truncated JSON behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hftoolkit.errors import RunDirError

if TYPE_CHECKING:
    from hftoolkit.recipe import Recipe

MANIFEST = "manifest.json"
RECIPE = "recipe.resolved.yaml"


def write_atomic(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are meant to be shared like any output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON ({e})") from None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # Paths of the contract ---------------------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def data_report(self) -> Path:
        return self.path / "data_report.json"

    @property
    def train_results(self) -> Path:
        return self.path / "train_results.json"

    @property
    def eval_results(self) -> Path:
        return self.path / "eval_results.json"

    @property
    def loss_curve(self) -> Path:
        return self.path / "loss_curve.png"

    # Writing -------------------------------------------------------------------------------------------------------
    def check_writable(self, recipe: Recipe, *, overwrite: bool, resume: bool, allow_recipe_change: bool = False) -> None:
        """Refuse to mix two runs in one directory. Called before any heavy work, so nothing is half-written.

        `--resume` with a changed recipe is refused with the changed keys unless `allow_recipe_change`.
        """
        from hftoolkit.recipe import diff_recipes

        if not self.path.exists() or overwrite:
            if self.path.exists() and not self.path.is_dir():
                raise RunDirError(f"output_dir {self.path} exists and is not a directory")
            if resume and not overwrite:
                raise RunDirError(f"--resume: {self.path} does not exist, so there is no run to resume")
            return
        if not self.path.is_dir():
            raise RunDirError(f"output_dir {self.path} exists and is not a directory")
        if not any(self.path.iterdir()):
            if resume:
                raise RunDirError(f"--resume: {self.path} is empty, so there is no run to resume")
            return
        if not self.manifest.is_file():
            raise RunDirError(
                f"output_dir {self.path} is not empty and holds no hft run (no {MANIFEST}); choose another output_dir "
                "or pass --overwrite to replace its contents"
            )
        manifest = read_json(self.manifest)
        status = manifest.get("status")
        if manifest.get("recipe_fingerprint") != recipe.fingerprint():
            old = yaml.safe_load(self.recipe.read_text()) if self.recipe.is_file() else {}
            changed = diff_recipes(old or {}, recipe.model_dump(mode="json"))
            shown = "; ".join(changed[:8]) + (" …" if len(changed) > 8 else "")
            if resume and allow_recipe_change:
                return
            if resume:
                raise RunDirError(
                    f"--resume: the recipe changed since the run in {self.path} started (changed: {shown or 'recipe'}); "
                    "pass --allow-recipe-change to continue it with the new values, or --overwrite to start over"
                )
            raise RunDirError(
                f"output_dir {self.path} holds a different run (changed: {shown or 'recipe'}); choose another "
                "output_dir or pass --overwrite to replace it"
            )
        if resume and status == "completed":
            raise RunDirError(f"--resume: the run in {self.path} already finished; there is nothing to resume")
        if resume:
            return
        if status == "completed":
            raise RunDirError(
                f"output_dir {self.path} already holds a finished run of this recipe; pass --overwrite to train again"
            )
        raise RunDirError(
            f"output_dir {self.path} holds an unfinished run of this recipe (status: {status}); pass --resume to "
            "continue it or --overwrite to start over"
        )

    def start(self, *, overwrite: bool, resume: bool) -> None:
        if overwrite and self.path.exists() and not resume:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def load_manifest(self) -> dict:
        """The manifest, or {} when the run has none yet."""
        return read_json(self.manifest) if self.manifest.is_file() else {}

    def update_manifest(self, **fields: Any) -> dict:
        data = read_json(self.manifest) if self.manifest.is_file() else {}
        data.update(fields)
        write_json(self.manifest, data)
        return data

    # Reading -------------------------------------------------------------------------------------------------------
    def load_recipe(self) -> Recipe:
        from pydantic import ValidationError

        from hftoolkit.recipe import Recipe

        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist (run `hft finetune RECIPE` first)")
        if not self.recipe.is_file():
            raise RunDirError(f"{self.path} is not an hft run directory: {RECIPE} is missing")
        try:
            return Recipe.model_validate(yaml.safe_load(self.recipe.read_text()))
        except (ValidationError, yaml.YAMLError) as e:
            raise RunDirError(f"{self.recipe} is not a valid resolved recipe ({e})") from None

    def require_trained(self) -> dict:
        """The manifest of a finished run, or a clear error saying what is missing."""
        self.load_recipe()
        manifest = read_json(self.manifest)
        if manifest.get("status") != "completed" or not self.model.is_dir():
            raise RunDirError(
                f"run {self.path} has not finished training (status: {manifest.get('status')}); "
                "finish it with `hft finetune RECIPE --resume`"
            )
        return manifest


def open_run(ref: str | Path, revision: str | None = None) -> RunDir:
    """The run `evaluate` and `predict` read: a local run directory, or a Hub repo id (`org/name`) pushed by `hft push`.

    An existing local path always wins, so `runs/quickstart` is never mistaken for a Hub repo.
    """
    from hftoolkit.hub import is_hub_id, open_hub_run

    text = str(ref)
    if Path(text).expanduser().exists() or not is_hub_id(text):
        if revision is not None:
            raise RunDirError(f"--revision is for Hub repos; {text} is a local run directory")
        return RunDir(Path(text).expanduser())
    return open_hub_run(text, revision)
