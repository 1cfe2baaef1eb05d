"""The Hub side of `hft push`: compare the upload set with the branch head, then one `create_commit` pinned to it.

Unchanged runs are a no-op; files an earlier push of another kind published are removed in the same commit; a failed
commit leaves the branch as it was, which is checked and said. Hub failures are explained by exception type
(huggingface_hub's error classes, the HTTP status of `HfHubHTTPError`, httpx2's transport errors), never by text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from hftoolkit.errors import PushError
from hftoolkit.publish.uploads import ADAPTER_FILES, CONFIG_FILES, RUN_FILES, WEIGHT_FILES, Upload, git_blob_sha1

if TYPE_CHECKING:
    from huggingface_hub import HfApi

log = logging.getLogger("hftoolkit")

MAIN_BRANCH = "main"
SHORT_SHA = 12  # how many hex digits of a commit messages show
# What an HTTP status from the Hub means for a push, and what to do about it.
HTTP_STATUS = {
    401: "the Hub refused the token (HTTP 401); set a valid HF_TOKEN or run `hf auth login`",
    403: "the token may not write there (HTTP 403); use a token with write access to that namespace",
    409: "the branch changed while pushing (HTTP 409)",
    413: "the Hub refused a file as too large (HTTP 413)",
    429: "the Hub is rate-limiting this token (HTTP 429); wait a little",
}
SERVER_ERROR = 500


@dataclass
class CommitOutcome:
    """What the Hub holds after the push: the commit (the unchanged head for a no-op) and what changed."""

    commit: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    noop: bool = False


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    """`e` and its causes: huggingface_hub wraps failed LFS uploads in a RuntimeError raised from the real error."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _http_problem(e) -> str:
    status = e.response.status_code if e.response is not None else None
    if status in HTTP_STATUS:
        text = HTTP_STATUS[status]
    elif status is not None and status >= SERVER_ERROR:
        text = f"the Hub failed (HTTP {status}); try again later"
    else:
        text = f"the Hub answered HTTP {status}"
    server = (e.server_message or "").strip().splitlines()
    return f"{text} ({server[0]})" if server else text


def hub_problem(e: BaseException) -> str | None:
    """What went wrong talking to the Hub, as one phrase chosen by exception type; None when `e` is not such a failure
    (a bug or a local problem, which must surface as it is)."""
    from httpx2 import TimeoutException, TransportError
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError,
    )

    for x in _chain(e):
        if isinstance(x, OfflineModeIsEnabled):
            return "HF_HUB_OFFLINE is set, so the Hub cannot be used"
        if isinstance(x, GatedRepoError):
            return "the repo is gated and this token has not been granted access"
        if isinstance(x, RepositoryNotFoundError):
            return "the repo does not exist or this token cannot see it"
        if isinstance(x, RevisionNotFoundError):
            return "the branch or revision does not exist"
        if isinstance(x, HfHubHTTPError):
            return _http_problem(x)
        if isinstance(x, TimeoutException):
            return f"the Hub did not answer in time ({type(x).__name__})"
        if isinstance(x, (TransportError, ConnectionError)):
            return f"the connection to the Hub failed ({type(x).__name__})"
    return None


def _remote_files(api: HfApi, repo_id: str, branch: str, private: bool) -> tuple[str, dict]:
    """The branch head (the repo and branch created when missing) and the files it holds."""
    from huggingface_hub.hf_api import RepoFile

    api.create_repo(repo_id, private=private, exist_ok=True)
    if branch != MAIN_BRANCH:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    info = api.repo_info(repo_id, revision=branch)
    if private and not info.private:
        log.warning("%s already exists and is public; --private only applies to new repos", repo_id)
    files = api.list_repo_tree(repo_id, revision=info.sha, recursive=True)
    return info.sha, {f.path: f for f in files if isinstance(f, RepoFile)}


def _unchanged(upload: Upload, remote) -> bool:
    if remote is None:
        return False
    return remote.lfs.sha256 == upload.sha256 if remote.lfs else remote.blob_id == git_blob_sha1(upload.read())


def _ours(path: str) -> bool:
    """Files hft publishes; anything else in the repo is the user's and stays."""
    return path in ADAPTER_FILES or bool(WEIGHT_FILES.match(path)) or path in CONFIG_FILES or path in RUN_FILES


def plan(uploads: list[Upload], remote: dict) -> tuple[list[str], list[str]]:
    """(changed, removed): uploads the head lacks, and files an earlier push of another kind published (adapter files
    after --merge, or weights after an adapter push), which would make the repo load as the wrong thing."""
    changed = [u.path_in_repo for u in uploads if not _unchanged(u, remote.get(u.path_in_repo))]
    names = {u.path_in_repo for u in uploads}
    removed = sorted(p for p in remote if p not in names and _ours(p))
    return changed, removed


def _branch_state(api: HfApi, repo_id: str, branch: str, head: str) -> str:
    """After a failed commit: did the branch move? Said, so nobody has to guess."""
    try:
        now = api.repo_info(repo_id, revision=branch).sha
    except Exception as e:
        if hub_problem(e) is None:
            raise
        return f"could not check {repo_id}@{branch} afterwards"
    if now == head:
        return f"{repo_id}@{branch} is unchanged (still at {head[:SHORT_SHA]})"
    return f"{repo_id}@{branch} moved from {head[:SHORT_SHA]} to {now[:SHORT_SHA]}; check it"


def _operations(uploads: list[Upload], removed: list[str]) -> list:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    adds = [CommitOperationAdd(path_in_repo=u.path_in_repo, path_or_fileobj=u.source()) for u in uploads]
    return adds + [CommitOperationDelete(path_in_repo=p) for p in removed]


def commit_uploads(
    repo_id: str, branch: str, uploads: list[Upload], *, private: bool, create_pr: bool, message: str,
    description: str, progress: Callable[[str], None],
) -> CommitOutcome:
    """One commit with every upload (and the removals), pinned to the head compared against; a no-op when equal."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        head, remote = _remote_files(api, repo_id, branch, private)
    except Exception as e:
        problem = hub_problem(e)
        if problem is None:
            raise
        raise PushError(f"cannot reach {repo_id} on the Hub: {problem}; nothing was uploaded") from None
    changed, removed = plan(uploads, remote)
    if not changed and not removed:
        return CommitOutcome(commit=head, noop=True)
    description = f"{description} {len(changed)} file(s) changed, {len(removed)} removed."
    progress(f"uploading {len(changed)} changed file(s) to {repo_id}@{branch} in one commit")
    try:
        info = api.create_commit(
            repo_id, _operations(uploads, removed), commit_message=message, commit_description=description,
            revision=branch, create_pr=create_pr, parent_commit=head,
        )
    except Exception as e:
        problem = hub_problem(e)
        if problem is None:
            raise
        raise PushError(
            f"push failed: {problem}. {_branch_state(api, repo_id, branch, head)}; the run directory was not changed. "
            "Run the same command again: it uploads only what is missing"
        ) from None
    return CommitOutcome(info.oid, info.commit_url, info.pr_url, changed, removed)
