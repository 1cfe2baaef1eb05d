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

The JSON files are typed records (run/records.py), read and written only through them; writes are atomic. This module
owns the paths and the rules for starting, replacing and reading a run: `--overwrite` deletes only what this layout
names (`RUN_CONTENTS`), and only in a folder that holds an hft run and nothing else; symlinks are removed as links,
never followed.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import RunDirError, UnsafePathError
from hftoolkit.paths import covers, require_inside

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport, EvalResults, Manifest, TrainResults

MANIFEST = "manifest.json"
RECIPE = "recipe.resolved.yaml"
# Everything hft writes into a run directory (folders end in "/"): what `--overwrite` may delete, and nothing else.
RUN_CONTENTS = (
    MANIFEST, RECIPE, "data_report.json", "metrics.jsonl", "train_results.json", "eval_results.json",
    "loss_curve.png", "confusion_matrix.png", "samples.jsonl", "model/", "checkpoints/", "tensorboard/",
)
_OWN_NAMES = frozenset(name.rstrip("/") for name in RUN_CONTENTS)
# write_atomic's temp files (`.manifest.json.k2j4x9.tmp`), left behind only when a process is killed mid-write.
_OWN_TEMP = re.compile(
    r"^\.(?:%s)\.(?:[A-Za-z0-9_]+\.)?tmp$" % "|".join(re.escape(n) for n in sorted(_OWN_NAMES) if "." in n)
)
_LISTED = 8  # entries named in a refusal; the rest are counted


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # Paths of the contract ---------------------------------------------------------------------------------------
    manifest = property(lambda self: self.path / MANIFEST)
    recipe = property(lambda self: self.path / RECIPE)
    model = property(lambda self: self.path / "model")
    checkpoints = property(lambda self: self.path / "checkpoints")
    tensorboard = property(lambda self: self.path / "tensorboard")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    data_report = property(lambda self: self.path / "data_report.json")
    train_results = property(lambda self: self.path / "train_results.json")
    eval_results = property(lambda self: self.path / "eval_results.json")
    loss_curve = property(lambda self: self.path / "loss_curve.png")

    # Records -------------------------------------------------------------------------------------------------------
    def read_manifest(self) -> Manifest:
        """The manifest, or an empty one when the run has none yet."""
        from hftoolkit.run.records import Manifest

        return Manifest.read_if_present(self.manifest)

    def update_manifest(self, **fields: Any) -> Manifest:
        manifest = self.read_manifest()
        for name, value in fields.items():
            setattr(manifest, name, value)  # validated on assignment: a wrong field name or type fails here
        manifest.write(self.manifest)
        return manifest

    def read_eval_results(self) -> EvalResults:
        from hftoolkit.run.records import EvalResults

        return EvalResults.read(self.eval_results)

    def read_train_results(self) -> TrainResults:
        from hftoolkit.run.records import TrainResults

        return TrainResults.read(self.train_results)

    def read_data_report(self) -> DataReport:
        """The data report, or an empty one (a Hub repo pushed without it)."""
        from hftoolkit.run.records import DataReport

        return DataReport.read(self.data_report) if self.data_report.is_file() else DataReport()

    # Writing -------------------------------------------------------------------------------------------------------
    def check_writable(
        self,
        recipe: Recipe,
        *,
        overwrite: bool,
        resume: bool,
        allow_recipe_change: bool = False,
        recipe_file: str | Path | None = None,
    ) -> None:
        """Refuse to mix two runs in one directory. Called before any heavy work, so nothing is half-written.

        `--resume` with a changed recipe is refused with the changed keys unless `allow_recipe_change`;
        `--overwrite` only where `check_replaceable` allows it (see `check_output_dir` for what is refused first).
        """
        check_output_dir(recipe, recipe_file)
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"output_dir {self.path} exists and is not a directory")
        if not self.path.exists() or overwrite:
            if resume and not overwrite:
                raise RunDirError(f"--resume: {self.path} does not exist, so there is no run to resume")
            if self.path.exists() and resume:
                self.check_links()  # --resume wins over --overwrite: the run is continued in place
            elif self.path.exists():
                self.check_replaceable()
            return
        if not any(self.path.iterdir()):
            if resume:
                raise RunDirError(f"--resume: {self.path} is empty, so there is no run to resume")
            return
        if not self.manifest.is_file():
            raise RunDirError(
                f"output_dir {self.path} is not empty and holds no hft run (no {MANIFEST}); choose another output_dir "
                "(--overwrite only replaces a run directory hft wrote)"
            )
        self._check_same_run(recipe, resume=resume, allow_recipe_change=allow_recipe_change)
        if resume:
            self.check_links()

    def _check_same_run(self, recipe: Recipe, *, resume: bool, allow_recipe_change: bool) -> None:
        """The run already here is this recipe's and in a state the command can continue from."""
        import yaml

        from hftoolkit.recipe.diff import format_recipe_changes

        manifest = self.read_manifest()
        if manifest.recipe_fingerprint != recipe.fingerprint():
            if resume and allow_recipe_change:
                return
            old = yaml.safe_load(self.recipe.read_text()) if self.recipe.is_file() else {}
            shown = format_recipe_changes(old or {}, recipe.model_dump(mode="json"))
            if resume:
                raise RunDirError(
                    f"--resume: the recipe changed since the run in {self.path} started (changed: {shown}); "
                    "pass --allow-recipe-change to continue it with the new values, or --overwrite to start over"
                )
            raise RunDirError(
                f"output_dir {self.path} holds a different run (changed: {shown}); choose another "
                "output_dir or pass --overwrite to replace it"
            )
        if resume and manifest.completed:
            raise RunDirError(f"--resume: the run in {self.path} already finished; there is nothing to resume")
        if resume:
            return
        if manifest.completed:
            raise RunDirError(
                f"output_dir {self.path} already holds a finished run of this recipe; pass --overwrite to train again"
            )
        raise RunDirError(
            f"output_dir {self.path} holds an unfinished run of this recipe (status: {manifest.status}); pass --resume "
            "to continue it or --overwrite to start over"
        )

    def check_replaceable(self) -> None:
        """What `--overwrite` may replace: an empty folder, or an hft run that holds nothing but hft's own files."""
        entries = sorted(self.path.iterdir())
        if not entries:
            return
        if not self.manifest.is_file():
            raise UnsafePathError(
                f"--overwrite: output_dir {self.path} holds no hft run (no {MANIFEST}) but {_listing(entries)}; "
                "--overwrite only replaces a run directory hft wrote, so nothing was deleted: choose another output_dir"
            )
        foreign = [e for e in entries if not _is_own(e)]
        if foreign:
            raise UnsafePathError(
                f"--overwrite: output_dir {self.path} holds an hft run plus files hft did not write: "
                f"{_listing(foreign)}; nothing was deleted: move them out of the run directory (or choose another "
                "output_dir) and run again"
            )

    def check_links(self) -> None:
        """Refuse a run whose own entries are symlinks leading out of it: hft would read and write there instead."""
        for name in sorted(_OWN_NAMES):
            entry = self.path / name
            if entry.is_symlink():
                require_inside(entry, self.path, "run directory entry")

    def start(self, *, overwrite: bool, resume: bool) -> None:
        if overwrite and self.path.exists() and not resume:
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Delete hft's own files from the run directory, after checking again that nothing else is there.

        A symlink is removed as a link (its target is never touched); shutil.rmtree does not follow links inside
        the folders it removes, and is never called on a link itself.
        """
        self.check_replaceable()
        for entry in sorted(self.path.iterdir()):
            if entry.is_symlink() or not entry.is_dir():
                entry.unlink()
            else:
                shutil.rmtree(entry)

    # Reading -------------------------------------------------------------------------------------------------------
    def load_recipe(self) -> Recipe:
        import yaml
        from pydantic import ValidationError

        from hftoolkit.recipe.schema import Recipe

        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist (run `hft finetune RECIPE` first)")
        if not self.recipe.is_file():
            raise RunDirError(f"{self.path} is not an hft run directory: {RECIPE} is missing")
        try:
            return Recipe.model_validate(yaml.safe_load(self.recipe.read_text()))
        except (ValidationError, yaml.YAMLError) as e:
            raise RunDirError(f"{self.recipe} is not a valid resolved recipe ({e})") from None

    def require_trained(self) -> Manifest:
        """The manifest of a finished run, or a clear error saying what is missing."""
        from hftoolkit.run.records import Manifest

        self.load_recipe()
        self.check_links()
        manifest = Manifest.read(self.manifest)
        if not manifest.completed or not self.model.is_dir():
            raise RunDirError(
                f"run {self.path} has not finished training (status: {manifest.status}); "
                "finish it with `hft finetune RECIPE --resume`"
            )
        return manifest


def _is_own(entry: Path) -> bool:
    return entry.name in _OWN_NAMES or bool(_OWN_TEMP.match(entry.name))


def _listing(entries: list[Path]) -> str:
    """`notes.txt, data/, latest -> /elsewhere/run` (at most _LISTED names, then how many more)."""

    def shown(e: Path) -> str:
        if e.is_symlink():
            return f"{e.name} -> {os.readlink(e)}"
        return f"{e.name}/" if e.is_dir() else e.name

    names = [shown(e) for e in entries[:_LISTED]]
    more = f" and {len(entries) - _LISTED} more" if len(entries) > _LISTED else ""
    return ", ".join(names) + more


def check_output_dir(recipe: Recipe, recipe_file: str | Path | None = None) -> None:
    """Refuse an output_dir whose replacement would take the user's files with it, before anything is read.

    Refused: an empty value, the filesystem root, the current or the home directory or a folder above them, and a
    folder that is or holds one of the run's inputs (the recipe file, the data files or folder, a local model).
    """
    text = recipe.output_dir
    if not text.strip():
        raise UnsafePathError(
            "output_dir is empty (an unset shell variable in `--set output_dir=$X`?); set it to the folder the run "
            "should be written to, e.g. runs/my-run"
        )
    out = Path(text)
    real = Path(os.path.realpath(out))
    if real == Path(real.anchor):
        raise UnsafePathError(
            f"output_dir {text!r} is the filesystem root; set it to a folder of its own, e.g. runs/my-run"
        )
    for what, place in [*_special_folders(), *_inputs(recipe, recipe_file)]:
        if covers(out, place):
            how = "is" if real == Path(os.path.realpath(place)) else "contains"
            raise UnsafePathError(
                f"output_dir {text!r} {how} {what} ({place}); a run directory is replaced as a whole by --overwrite, "
                "so it must be a folder of its own, outside the run's inputs (e.g. runs/my-run)"
            )


def _special_folders() -> list[tuple[str, Path]]:
    found = [("the current directory", Path.cwd())]
    try:
        found.append(("your home directory", Path.home()))
    except (KeyError, RuntimeError):  # no HOME and no passwd entry: nothing to protect under that name
        pass
    return found


def _inputs(recipe: Recipe, recipe_file: str | Path | None) -> list[tuple[str, Path]]:
    """The run's local inputs, named as the recipe names them."""
    from hftoolkit.refs import local_path, resolve_model_ref

    ds = recipe.dataset
    found = [("the recipe file", Path(recipe_file))] if recipe_file is not None else []
    found += [(f"dataset.files.{role}", Path(f).expanduser()) for role, f in (ds.files or {}).items()]
    dataset = local_path(ds.name) if ds.name is not None else None
    if dataset is not None:
        found.append(("the dataset (dataset.name)", dataset))
    model = local_path(resolve_model_ref(recipe.model))
    if model is not None:
        found.append(("the model folder (model.name)", model))
    return found
