"""What a model, dataset or run reference names: a local path, a `package:` ref, or a Hub repo id. Decided here only.

Rules, in order: `package:<module>` is a folder shipped in a Python package; an existing local path always wins (so
`runs/quickstart` is never mistaken for a Hub repo); a reference that can only be a path (`/`, `./`, `../`, `~`, or
more than one `/`) and does not exist is an error naming it; anything else shaped like `name` or `org/name` is a Hub
repo id. Whether the Hub may be used at all is `hub_offline()`, huggingface_hub's own flag (HF_HUB_OFFLINE).

Standard library only at import time: the CLI start-up path reaches this module.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from hftoolkit.errors import DataError, ModelError

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import ModelSection

PACKAGE_PREFIX = "package:"
PATH_PREFIXES = ("/", "./", "../", "~")
# namespace/name as the Hub spells repo ids (no leading dot or dash, no `..`, no `--` runs at the edges).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# How the offline flag is named in messages: the variable users set.
OFFLINE_FLAG = "HF_HUB_OFFLINE=1"


def is_hub_id(ref: str) -> bool:
    """`org/name` as the Hub accepts it (repo_ids.require_repo_id names the broken rule when it is not)."""
    return bool(HUB_ID.match(ref)) and ".." not in ref and not ref.endswith((".", "-"))


def is_commit(revision: str | None) -> bool:
    return bool(revision) and bool(COMMIT_SHA.match(revision))


def looks_like_path(ref: str) -> bool:
    """A reference that can only be a local path (a Hub id is `name` or `org/name`)."""
    return ref.startswith(PATH_PREFIXES) or ref.count("/") > 1


def local_path(ref: str) -> Path | None:
    """The existing local file or folder `ref` names (`~` expanded), else None."""
    path = Path(ref).expanduser()
    return path if path.exists() else None


def is_local(ref: str | None) -> bool:
    """Whether `ref` is anything but a Hub repo id: a package ref, an existing path, or not shaped like a repo id.
    None (a recipe naming files instead of a dataset) is local too."""
    if ref is None:
        return True
    return ref.startswith(PACKAGE_PREFIX) or local_path(ref) is not None or not is_hub_id(ref)


def is_local_model(name: str) -> bool:
    return is_local(name)


def is_local_dataset(name: str | None) -> bool:
    return is_local(name)


def resolve_model_ref(model: ModelSection) -> str:
    """Where to load the model from: a local folder, a Hub id, or a folder shipped in a Python package."""
    name = model.name
    if name.startswith(PACKAGE_PREFIX):
        return str(_package_folder(name))
    path = local_path(name)
    if path is not None:
        return str(path)
    if looks_like_path(name):
        raise ModelError(f"model.name {name!r}: local path does not exist (resolved to {Path(name).expanduser().resolve()})")
    return name


def _package_folder(name: str) -> Path:
    module_name = name.removeprefix(PACKAGE_PREFIX)
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelError(f"model.name {name!r}: Python package {module_name!r} is not installed") from None
    if not hasattr(module, "get_model_path"):
        raise ModelError(f"model.name {name!r}: package {module_name!r} has no get_model_path()")
    return Path(module.get_model_path())


def dataset_path(ref: str) -> Path | None:
    """The local file or folder a dataset reference names, or None for a Hub id; a missing path is an error."""
    path = local_path(ref)
    if path is None and looks_like_path(ref):
        raise DataError(f"dataset path {ref!r} does not exist (resolved to {Path(ref).expanduser().resolve()})")
    return path


def hub_offline() -> bool:
    """huggingface_hub's offline flag (HF_HUB_OFFLINE, read once when huggingface_hub is imported)."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


def offline_hint() -> str:
    """Why the Hub could not be used, for messages: the flag when it is set, else the network."""
    return OFFLINE_FLAG if hub_offline() else "the Hub did not answer"
