"""Path containment: the one place that decides whether a file really lies inside a folder hft reads or owns.

Every containment check resolves real paths first (symlinks followed, `..` folded), so a link inside a model
folder that points at `~/.ssh/id_rsa` is outside that folder, whatever its name says. Callers pass the boundary
they trust: a local model folder, a run directory, or, for a Hub snapshot, its repo cache folder (`models--…/`),
because the Hub cache links snapshot files to `../../blobs/` on purpose.
"""

from __future__ import annotations

import os
from pathlib import Path

from hftoolkit.errors import UnsafePathError


def is_inside(path: str | Path, root: str | Path) -> bool:
    """True if `path`, with every symlink resolved, is `root` or lies below it (also resolved)."""
    real = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root))
    return real == base or base in real.parents


def require_inside(path: str | Path, root: str | Path, what: str) -> Path:
    """Return the real path of `path`, or raise naming the link and where it points when it leaves `root`."""
    path = Path(path)
    if is_inside(path, root):
        return Path(os.path.realpath(path))
    target = os.path.realpath(path)
    if _has_link(path, root):
        raise UnsafePathError(
            f"{what} {path} is a symlink to {target}, outside {root}; hft does not read or publish files outside "
            "the folder they belong to (replace the link with a copy of the file)"
        )
    raise UnsafePathError(f"{what} {path} resolves to {target}, outside {root}")


def covers(folder: str | Path, path: str | Path) -> bool:
    """Whether `path` is `folder` or lies below it, by its written path or its real one: what deleting `folder` or
    its contents would take with it (a link to a data file inside a run directory is the user's, too)."""
    outer = {Path(os.path.abspath(folder)), Path(os.path.realpath(folder))}
    inner = {Path(os.path.abspath(path)), Path(os.path.realpath(path))}
    return any(i == o or o in i.parents for o in outer for i in inner)


def require_no_escaping_links(folder: str | Path, boundary: str | Path, what: str) -> None:
    """Refuse `folder` if any entry below it is a symlink whose target leaves `boundary` (links are not descended)."""
    for top, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            entry = Path(top) / name
            if entry.is_symlink():
                require_inside(entry, boundary, what)


def _has_link(path: Path, root: str | Path) -> bool:
    """Whether `path` or any of its parents below `root` is a symlink (for the message only)."""
    root = Path(root)
    for p in (path, *path.parents):
        if p == root or p == p.parent:
            break
        if p.is_symlink():
            return True
    return False


def hub_cache_boundary(snapshot: str | Path) -> Path | None:
    """For a file in a Hub cache snapshot (`…/models--org--name/snapshots/<sha>/…`) the repo cache folder, else None."""
    for parent in Path(snapshot).absolute().parents:
        if parent.name.startswith(("models--", "datasets--", "spaces--")) and (parent / "snapshots").is_dir():
            return parent
    return None


def read_boundary(folder: str | Path) -> Path:
    """The folder within which files referenced from `folder` may resolve: its Hub repo cache folder, or itself."""
    return hub_cache_boundary(folder) or Path(folder)
