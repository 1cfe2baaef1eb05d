"""`hft finetune --resume`: find the checkpoint to continue from, check its files, and drop what came after it.

- Only checkpoints with a complete marker (run/records.py `CheckpointInfo`, written by training/callbacks.py
  `CheckpointMarker`) are resumed from, and only when they belong to this run, recipe and training data.
- `verify_checkpoint_files`: loads every pickle-based file of a checkpoint with `weights_only=True` (what Trainer
  uses too) and checks every JSON and safetensors file before resuming, so a tampered or truncated file is refused
  up front with its name instead of deep in the loop. hft never deletes such a checkpoint itself.
- Deleting: only real `checkpoint-N` folders inside the run's checkpoints folder, never through a symlink.

Imports torch inside functions; load this module only inside commands.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftoolkit.errors import RunDirError
from hftoolkit.paths import require_no_escaping_links
from hftoolkit.run.layout import RunDir
from hftoolkit.run.records import CheckpointInfo, write_atomic
from hftoolkit.safety import PICKLE_SUFFIXES

log = logging.getLogger("hftoolkit")

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# The pickle-based files Trainer's resume reads with torch.load (optimizer, scheduler, RNG and scaler state): a subset
# of safety.PICKLE_SUFFIXES, each checked with the same restricted loader. training_args.bin is written but never
# loaded back by Trainer, so it is not checked.
TRAINER_LOADED_SUFFIXES = tuple(s for s in PICKLE_SUFFIXES if s in {".pt", ".pth", ".bin"})
NOT_LOADED = {"training_args.bin"}


@dataclass
class Checkpoint:
    path: Path
    step: int
    info: CheckpointInfo = field(default_factory=CheckpointInfo)  # the marker; empty when incomplete

    def __post_init__(self) -> None:
        if isinstance(self.info, dict):  # a marker's content as read from JSON
            self.info = CheckpointInfo.model_validate(self.info)

    @property
    def complete(self) -> bool:
        return self.info.complete


def scan(folder: Path) -> list[Checkpoint]:
    """Every checkpoint-N folder, oldest first, with its marker when it has a readable one."""
    found: list[Checkpoint] = []
    if not folder.is_dir():
        return found
    for child in folder.iterdir():
        m = CHECKPOINT_DIR.match(child.name)
        if not m or not child.is_dir():
            continue
        if child.is_symlink():
            # Not a folder Trainer wrote: resuming from it would read, and removing it would delete, elsewhere.
            log.warning("ignoring %s: a symlink to %s, not a checkpoint this run wrote", child, os.path.realpath(child))
            continue
        found.append(Checkpoint(child, int(m.group(1)), CheckpointInfo.read_or_empty(child)))
    return sorted(found, key=lambda c: c.step)


def find_resume_checkpoint(
    run: RunDir, recipe: Any, *, data_fingerprint: str | None, allow_recipe_change: bool
) -> tuple[Checkpoint, list[Checkpoint]]:
    """The latest complete checkpoint of this run, and the incomplete ones written after it (to be removed).

    Refuses, with what to do: no complete checkpoint, a checkpoint of another run, a checkpoint written with another
    recipe or other training data (unless allow_recipe_change).
    """
    found = scan(run.checkpoints)
    complete = [c for c in found if c.complete]
    if not complete:
        partial = ", ".join(c.path.name for c in found)
        detail = f" (only incomplete ones: {partial}; they were being written when the run stopped)" if partial else ""
        raise RunDirError(f"--resume: no complete checkpoint in {run.checkpoints}{detail}; start over with --overwrite")
    ckpt = complete[-1]
    _check_same_run(ckpt, run.read_manifest().run_id)
    if not allow_recipe_change:
        _check_same_training(ckpt, recipe, data_fingerprint)
    return ckpt, [c for c in found if c.step > ckpt.step]


def _check_same_run(ckpt: Checkpoint, run_id: str | None) -> None:
    if run_id and ckpt.info.run_id != run_id:
        raise RunDirError(
            f"--resume: {ckpt.path} belongs to another run (run id {ckpt.info.run_id}, this run is {run_id}); "
            "it was copied or left over from an earlier run in this directory. Remove it or start over with --overwrite"
        )


def _check_same_training(ckpt: Checkpoint, recipe: Any, data_fingerprint: str | None) -> None:
    from hftoolkit.recipe.diff import format_recipe_changes

    if ckpt.info.recipe_fingerprint != recipe.fingerprint():
        shown = format_recipe_changes(ckpt.info.recipe, recipe.model_dump(mode="json"))
        raise RunDirError(
            f"--resume: {ckpt.path.name} was written with another recipe (changed: {shown}); the resumed "
            "run would not continue the same training. Pass --allow-recipe-change to resume with the new values"
        )
    saved = ckpt.info.data_fingerprint
    if saved and data_fingerprint and saved != data_fingerprint:
        raise RunDirError(
            f"--resume: the training data changed since {ckpt.path.name} was written (dataset fingerprint "
            f"{saved} -> {data_fingerprint}). Pass --allow-recipe-change to resume on the new data anyway"
        )


def verify_checkpoint_files(ckpt: Path) -> None:
    """Check every file Trainer will read from `ckpt` before resuming: no symlink out of it, every JSON and safetensors
    file whole, and each pickle-based file loadable with `weights_only=True`.

    Same loader and allowlist as Trainer (its numpy globals for RNG state), so nothing is refused that Trainer would
    accept. `mmap=True` keeps this cheap for big optimizer states: only the pickle structure is read.
    """
    from hftoolkit.run.integrity import unreadable_file

    require_no_escaping_links(ckpt, ckpt, "--resume: checkpoint file")
    bad = unreadable_file(ckpt)
    if bad is not None:
        raise _unreadable(ckpt, *bad)
    for path in sorted(ckpt.iterdir()):
        if path.is_file() and path.name.endswith(TRAINER_LOADED_SUFFIXES) and path.name not in NOT_LOADED:
            _load_restricted(ckpt, path)


def _load_restricted(ckpt: Path, path: Path) -> None:
    import pickle

    import torch
    from transformers.trainer_pt_utils import safe_globals

    from hftoolkit.modeling import unpickling_reason

    try:
        with safe_globals():
            # Legacy (non-zip) serialization cannot be memory-mapped; the restricted unpickler applies either way.
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise RunDirError(
            f"--resume: refusing to load {path}: it is not plain tensor data and loading it could run code "
            f"({unpickling_reason(e)}). Delete this checkpoint folder to resume from an earlier one, or start over "
            "with --overwrite"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # what torch raises for a cut or damaged file
        detail = str(e).splitlines()[0] if str(e) else "no data"
        raise _unreadable(ckpt, path, f"{type(e).__name__}: {detail}") from None


def _unreadable(ckpt: Path, path: Path, reason: str) -> RunDirError:
    """A damaged checkpoint file: named, with the way out (hft leaves the folder as it is)."""
    earlier = [c for c in scan(ckpt.parent) if c.complete and c.step < _step_of(ckpt)]
    way_out = (
        f"delete {ckpt} and run --resume again to continue from {earlier[-1].path.name}" if earlier
        else f"delete {ckpt} and start over with --overwrite (there is no earlier complete checkpoint)"
    )
    return RunDirError(f"--resume: cannot read {path}: {reason}; hft leaves the checkpoint as it is: {way_out}")


def _step_of(ckpt: Path) -> int:
    m = CHECKPOINT_DIR.match(ckpt.name)
    return int(m.group(1)) if m else 0


def remove_checkpoints(checkpoints: list[Checkpoint], folder: Path) -> None:
    """Delete incomplete checkpoints: only real `checkpoint-N` folders directly inside the run's `folder`."""
    root = Path(os.path.realpath(folder))
    for c in checkpoints:
        ours = CHECKPOINT_DIR.match(c.path.name) and Path(os.path.realpath(c.path.parent)) == root
        if not ours or c.path.is_symlink() or not c.path.is_dir():
            log.warning("not removing %s: it is not a checkpoint folder of this run", c.path)
            continue
        log.warning("removing incomplete checkpoint %s (it was being written when the run stopped)", c.path)
        shutil.rmtree(c.path, ignore_errors=True)


def truncate_metrics(path: Path, ckpt: Checkpoint) -> None:
    """Drop metrics.jsonl entries the resumed run will log again, so no step appears twice in the loss curve.

    Kept: everything logged before the checkpoint was saved (the marker counts those lines), and evaluations of the
    checkpoint's own step logged after it (the epoch-end evaluation follows a save_steps save; the resumed run
    starts after it and would not redo it). Dropped: later steps, and the summary a stopped run logs at its last step.
    """
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    counted = ckpt.info.metrics_lines
    kept = []
    for i, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by the crash
        step = entry.get("step", 0)
        before_save = i < counted if isinstance(counted, int) else step <= ckpt.step
        if before_save or (step == ckpt.step and any(k.startswith("eval_") for k in entry)):
            kept.append(line)
    if len(kept) < len(lines):
        log.info("metrics.jsonl: dropping %d entries logged after step %d", len(lines) - len(kept), ckpt.step)
        write_atomic(path, "".join(kept))  # a fresh temp file: never writes through a link someone left there
