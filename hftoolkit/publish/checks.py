"""What `hft push` refuses before the network is touched: pickles, secrets and links in the run, secrets in the
exact bytes and commit text to send, local paths in published text.

The lists of what counts as a pickle or a secret live in hftoolkit/safety.py; containment in hftoolkit/paths.py.
Messages name every offending file but never quote a secret.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from hftoolkit.errors import PushError
from hftoolkit.paths import is_inside
from hftoolkit.safety import SECRET_SCAN_LIMIT, is_binary, is_secret_file_name, looks_like_pickle, secret_kind

if TYPE_CHECKING:
    from hftoolkit.publish.uploads import Upload
    from hftoolkit.run.layout import RunDir

# Folders of the run directory that are never published and may legitimately hold pickles (Trainer checkpoints
# with optimizer states and training_args.bin) or machine-specific logs (TensorBoard events).
UNPUBLISHED_DIRS = ("checkpoints", "tensorboard")
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
SESSION_TOKEN = "the Hugging Face token of this session"


def _link_problem(link: Path, root: Path, shown: str) -> str:
    """A link is refused either way; one that leaves the run is the dangerous case, so the message says so."""
    target = os.path.realpath(link)
    if not is_inside(link, root):
        return f"{shown}: a symlink to {target}, outside the run directory (hft publishes no file from outside the run)"
    inside = Path(target).relative_to(os.path.realpath(root)).as_posix()
    return f"{shown}: a symlink to {inside} (publishing follows no links)"


def file_problem(path: Path, shown: str) -> str | None:
    if is_secret_file_name(path.name):
        return f"{shown}: a credentials file by its name"
    if looks_like_pickle(path):
        return f"{shown}: a pickle file (can run code when loaded); delete it, weights belong in safetensors"
    if path.stat().st_size <= SECRET_SCAN_LIMIT:
        kind = secret_kind(path.read_bytes())
        if kind:
            return f"{shown}: looks like {kind}"
    return None


def preflight(run: RunDir) -> None:
    """Refuse a run directory holding pickles or secrets outside checkpoints/ and tensorboard/, naming every one."""
    problems: list[str] = []
    for path in sorted(p for p in run.path.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(run.path)
        if rel.parts[0] in UNPUBLISHED_DIRS:
            continue
        shown = rel.as_posix()
        problem = _link_problem(path, run.path, shown) if path.is_symlink() else file_problem(path, shown)
        if problem:
            problems.append(problem)
    if problems:
        raise PushError(
            f"refusing to push {run.path}: " + "; ".join(problems) + ". Remove these files from the run directory "
            "(or move them elsewhere) and push again"
        )


def _session_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _upload_problem(upload: Upload, token: str | None, markers: list[str]) -> str | None:
    data = upload.read() if upload.size <= SECRET_SCAN_LIMIT else b""
    if token and data and token.encode() in data:
        return f"{upload.path_in_repo}: contains {SESSION_TOKEN}"
    kind = secret_kind(data)
    if kind:
        return f"{upload.path_in_repo}: looks like {kind}"
    if not is_binary(data):
        text = data.decode("utf-8", "replace")
        found = next((m for m in markers if m in text), None)
        if found:
            return f"{upload.path_in_repo}: contains the local path {found}"
    return None


def check_uploads(uploads: list[Upload], markers: list[str]) -> None:
    """Last line of defence on the exact bytes to send: no secret, no token of this session, no local path."""
    token = _session_token()
    problems = [p for p in (_upload_problem(u, token, markers) for u in uploads) if p]
    if problems:
        raise PushError("refusing to push: " + "; ".join(problems))


def check_commit_text(fields: dict[str, str | None]) -> None:
    """The commit message, PR description and branch name are published with the commit: scan them as files are.

    The message never echoes the text: it is the secret. NUL bytes become spaces first, as they would hide the text from
    `secret_kind`'s binary-data rule.
    """
    token = _session_token()
    for what, text in fields.items():
        if not text:
            continue
        kind = SESSION_TOKEN if token and token in text else secret_kind(text.replace("\0", " ").encode())
        if kind:
            raise PushError(
                f"refusing to push: {what} looks like it holds {kind}, which the Hub would publish with the commit; "
                "write it without the secret (not shown here)"
            )


def check_branch(revision: str | None) -> None:
    """--revision names a branch to commit to (created when missing), not a ref path or a commit."""
    if revision is not None and (not revision or revision.startswith("refs/") or COMMIT_SHA.fullmatch(revision)):
        raise PushError(f"--revision {revision!r}: give a branch name (it is created from main when missing)")
