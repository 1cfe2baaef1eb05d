"""Hub repo ids checked the way the Hub checks them, before any network call, with a message naming the rule.

huggingface_hub's `validate_repo_id` mirrors only part of the Hub's naming rules (it lets `org/x.ipynb` through, and
its one message covers several rules); the Hub refuses the rest at `create_repo` time, after hft has done its work.
`repo_id_problem` checks each rule the Hub applies to NAMESPACE/NAME and names the one broken; huggingface_hub's
validator then runs too, so what it refuses is refused here, as one line, not as HFValidationError from inside a
download or upload. Light at import (huggingface_hub is imported when checking): run/hub_run.py on the CLI path uses it.
"""

from __future__ import annotations

import re

from hftoolkit.errors import RepoIdError
from hftoolkit.safety import HF_TOKEN_PATTERN

MAX_PART_LENGTH = 96  # the Hub's limit for a repo name (and huggingface_hub's for the namespace)
FORBIDDEN_SUFFIXES = (".git", ".ipynb")  # the Hub reserves them (git remotes, notebook URLs)
FORBIDDEN_RUNS = ("--", "..")  # `--` separates namespace and name in cache folders; `..` walks paths
EDGE_CHARS = "-."  # a name may not start or end with these
PART_CHARS = re.compile(r"[A-Za-z0-9._-]+")  # ASCII only: the Hub refuses other letters, whatever `\w` says


def _part_problem(part: str, role: str) -> str | None:
    if not part:
        return f"the {role} is empty"
    if len(part) > MAX_PART_LENGTH:
        return f"the {role} is {len(part)} characters long; the Hub allows at most {MAX_PART_LENGTH}"
    if not PART_CHARS.fullmatch(part):
        bad = sorted({c for c in part if not PART_CHARS.fullmatch(c)})
        shown = " ".join(repr(c) for c in bad)
        return f"the {role} has characters the Hub does not allow ({shown}); use letters, digits, '-', '_' and '.'"
    run = next((r for r in FORBIDDEN_RUNS if r in part), None)
    if run:
        return f"the {role} contains {run!r}, which the Hub does not allow"
    if part[0] in EDGE_CHARS or part[-1] in EDGE_CHARS:
        return f"the {role} starts or ends with '-' or '.', which the Hub does not allow"
    suffix = next((s for s in FORBIDDEN_SUFFIXES if part.endswith(s)), None)
    if suffix:
        return f"the {role} ends with {suffix!r}, which the Hub reserves"
    return None


def repo_id_problem(repo_id: str) -> str | None:
    """Which Hub rule the NAMESPACE/NAME id `repo_id` breaks, as a phrase, or None when the Hub would accept it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    parts = repo_id.split("/")
    if len(parts) != 2:
        return (
            f"expected NAMESPACE/NAME with exactly one '/' (your user or organization, then the repo name); "
            f"it has {len(parts) - 1}"
        )
    for part, role in zip(parts, ("namespace", "name")):
        problem = _part_problem(part, role)
        if problem:
            return problem
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:  # a rule added to huggingface_hub after this module was written
        return f"huggingface_hub refuses it ({str(e).splitlines()[0]})"
    return None


def require_repo_id(repo_id: str, what: str = "--repo-id") -> str:
    """`repo_id` when the Hub would accept it as NAMESPACE/NAME; else RepoIdError naming `what`, the id and the rule."""
    if HF_TOKEN_PATTERN.search(repo_id):
        # Never echo it: an access token pasted in the wrong place is still a secret.
        raise RepoIdError(f"{what} looks like a Hugging Face access token, not NAMESPACE/NAME; give the repo id there")
    problem = repo_id_problem(repo_id)
    if problem:
        raise RepoIdError(f"{what} {repo_id!r} is not a valid Hub repo id: {problem}")
    return repo_id
