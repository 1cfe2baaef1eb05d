"""What the run directory says about this machine, rewritten for publication: absolute paths shortened to their last
component, Hub revisions pinned to the commits the run used.

Each rewrite is told to the user as a note (shown in the card), so nothing changes silently.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from hftoolkit.publish.escape import code_span

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DatasetInfo, Manifest, ModelInfo

WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
UNPARSABLE_COMMAND = "hft …"  # a command line shlex cannot split is not published at all


def public_path(value: str) -> str:
    """Local absolute paths become their last component (the rest names this machine); relative paths stay."""
    if value.startswith(("/", "~")) or WINDOWS_DRIVE.match(value):
        return Path(value.replace("\\", "/")).name
    return value


def public_command(command: str) -> str:
    """The command line of the run with every path argument (and NAME=path value) shortened."""
    try:
        parts = shlex.split(command)
    except ValueError:
        return UNPARSABLE_COMMAND
    out = []
    for part in parts:
        key, sep, value = part.partition("=")
        out.append(f"{key}={public_path(value)}" if sep and not part.startswith("/") else public_path(part))
    return shlex.join(out)


def _shortened(what: str, name: str, notes: list[str]) -> str:
    short = public_path(name)
    if short != name:
        notes.append(f"{what}: the local folder is published as {code_span(short)}")
    return short


def _pinned(what: str, revision: str | None, source: ModelInfo | DatasetInfo | None, notes: list[str]) -> str | None:
    commit = source.commit if source else None
    if commit and revision != commit:
        notes.append(f"{what}: pinned to the commit the run used ({commit}; the recipe said {revision or 'main'})")
        return commit
    return revision


def public_recipe(recipe: Recipe, manifest: Manifest, notes: list[str]) -> Recipe:
    """The resolved recipe as published: local paths shortened, Hub revisions pinned to the commits the run used."""
    from hftoolkit.refs import is_local_dataset, is_local_model

    model, ds = recipe.model, recipe.dataset
    if is_local_model(model.name):
        model = model.model_copy(update={"name": _shortened("model.name", model.name, notes)})
    else:
        model = model.model_copy(update={"revision": _pinned("model.revision", model.revision, manifest.model, notes)})
    if ds.name is not None and is_local_dataset(ds.name):
        ds = ds.model_copy(update={"name": _shortened("dataset.name", ds.name, notes)})
    elif ds.name is not None:
        ds = ds.model_copy(update={"revision": _pinned("dataset.revision", ds.revision, manifest.dataset, notes)})
    if ds.files:
        short = {role: public_path(path) for role, path in ds.files.items()}
        if short != ds.files:
            notes.append("dataset.files: local absolute paths shortened to file names")
            ds = ds.model_copy(update={"files": short})
    output_dir = public_path(recipe.output_dir)
    if output_dir != recipe.output_dir:
        notes.append(f"output_dir: shortened to {code_span(output_dir)}")
    return recipe.model_copy(update={"model": model, "dataset": ds, "output_dir": output_dir})
