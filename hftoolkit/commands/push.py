"""`hft push RUN_DIR --repo-id ORG/NAME`: publish a finished run to the Hub as an adapter or a merged model, with its
model card, in one commit.

The order is deliberate: everything that can be refused is refused before the network is touched.
1. the repo id, the commit's text and the branch name; then the run directory: pickle files, secret-looking files and
   symlinks stop the push, naming them (publish/checks.py);
2. the publish set is built from an allow-list, JSON/YAML sanitized of local paths (publish/uploads.py, sanitize.py);
3. the card is rendered and validated (license, model-index); labels must be real names (publish/card.py);
4. for --merge, the adapter is merged and the merged logits are checked against the adapter's (publish/merge.py);
5. one `create_commit` pinned to the branch head compared against; unchanged runs are a no-op (publish/hub_commit.py).
`--verify` then downloads the pushed revision, loads it the way the card says and compares predictions (verify.py).
`--with-onnx EXPORT_DIR` adds an `hft export` of the same run under `onnx/` of that one commit, and an ONNX section to
the card (publish/onnx.py), checked with everything else in steps 1-3.

Tokens come only from huggingface_hub's own lookup (HF_TOKEN or `hf auth login`); they are never printed or written.
An adapter push without --verify never imports torch.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hftoolkit.errors import HubOfflineError, PushError
from hftoolkit.publish.checks import check_branch, check_commit_text, check_uploads, preflight
from hftoolkit.publish.hub_commit import MAIN_BRANCH, SHORT_SHA, CommitOutcome, commit_uploads, hub_problem
from hftoolkit.publish.inspect import MERGED, RunFacts, inspect_run, local_markers
from hftoolkit.publish.merge import merge_adapter
from hftoolkit.publish.onnx import onnx_part
from hftoolkit.publish.uploads import Upload, build_uploads, merged_weights_placeholder
from hftoolkit.publish.verify import verify_push
from hftoolkit.repo_ids import require_repo_id

log = logging.getLogger("hftoolkit")


@dataclass
class PushResult:
    repo_id: str
    kind: str
    card: str
    uploads: list[Upload]
    not_published: list[str] = field(default_factory=list)
    revision: str = MAIN_BRANCH
    dry_run: bool = False
    merge_check: str | None = None
    outcome: CommitOutcome = field(default_factory=CommitOutcome)  # empty for a dry run
    verify_lines: list[str] = field(default_factory=list)


def push(
    run_path: str | Path, repo_id: str, *, private: bool = False, merge: bool = False, revision: str | None = None,
    create_pr: bool = False, commit_message: str | None = None, dry_run: bool = False, verify: bool = False,
    with_onnx: str | Path | None = None, progress: Callable[[str], None] = log.info,
) -> PushResult:
    facts, message, description = _checked_run(run_path, repo_id, merge, revision, commit_message)
    onnx = onnx_part(with_onnx, facts) if with_onnx is not None else None
    if not dry_run:
        _require_hub_access()
    with tempfile.TemporaryDirectory(prefix="hft-push-") as tmp:
        model_folder, merge_check = facts.run.model, None
        if facts.kind == MERGED and not dry_run:
            progress("merging the LoRA adapter into the base model")
            model_folder = Path(tmp) / "merged"
            merge_check = merge_adapter(facts, model_folder)
        uploads, skipped, card = build_uploads(facts, repo_id, model_folder, offline=dry_run, onnx=onnx)
        if facts.kind == MERGED and dry_run:
            uploads = sorted([*uploads, merged_weights_placeholder()], key=lambda u: u.path_in_repo)
        check_uploads([u for u in uploads if not u.pending_merge], local_markers(facts))
        result = PushResult(repo_id, facts.kind, card, uploads, skipped, revision or MAIN_BRANCH, dry_run, merge_check)
        if dry_run:
            return result
        result.outcome = commit_uploads(
            repo_id, result.revision, uploads, private=private, create_pr=create_pr, message=message,
            description=description, progress=progress,
        )
        if verify:
            result.verify_lines = _verify(facts, result, progress)
    return result


def _checked_run(run_path: str | Path, repo_id: str, merge: bool, revision: str | None,
                 commit_message: str | None) -> tuple[RunFacts, str, str]:
    """What is refused before any network call: the repo id, the commit's text, the branch name, the run's files."""
    from hftoolkit.run.layout import RunDir

    require_repo_id(repo_id, "--repo-id")
    check_commit_text({"--commit-message": commit_message, "--revision": revision})
    check_branch(revision)
    run = RunDir(run_path)
    if run.manifest.exists() or run.manifest.is_symlink():
        # Before anything of the run is read: a manifest or recipe linked from outside the run is refused, not parsed.
        preflight(run)
    facts = inspect_run(run_path, merge)
    message, description = commit_text(facts, commit_message)
    check_commit_text({"the commit message": None if commit_message else message, "the commit description": description})
    return facts, message, description


def commit_text(facts: RunFacts, commit_message: str | None) -> tuple[str, str]:
    """The commit title and the description's fixed part (also the PR description with --create-pr)."""
    manifest = facts.manifest
    message = commit_message or f"hft push: {facts.kind} of run {facts.run.path.resolve().name}"
    description = (
        f"Published by hftoolkit {manifest.hftoolkit_version or ''} from a {facts.recipe.task} run "
        f"(recipe fingerprint {manifest.recipe_fingerprint or '?'})."
    )
    return message, description


def _require_hub_access() -> None:
    from huggingface_hub import get_token

    from hftoolkit.refs import hub_offline

    if hub_offline():
        raise HubOfflineError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it, or preview with --dry-run")
    if not get_token():
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (tokens are never taken from recipes or options)")


def _verify(facts: RunFacts, result: PushResult, progress: Callable[[str], None]) -> list[str]:
    commit = result.outcome.commit or result.revision
    progress(f"verifying {result.repo_id}@{commit[:SHORT_SHA]}")
    try:
        return verify_push(facts, result.repo_id, commit, result.uploads)
    except Exception as e:
        problem = hub_problem(e)
        if problem is None:
            raise
        raise PushError(f"pushed as commit {commit[:SHORT_SHA]}, but --verify could not download it: {problem}") from None


def print_result(result: PushResult, echo: Callable[[str], None]) -> None:
    """What `hft push` prints: the card and file list of a dry run, else the commit (or why nothing changed)."""
    if result.dry_run:
        echo(result.card)
        total = sum(u.size for u in result.uploads if not u.pending_merge)
        echo(f"--- {len(result.uploads)} files for {result.repo_id}@{result.revision} ({result.kind}, {total / 1e6:.2f} MB):")
        width = max(len(u.path_in_repo) for u in result.uploads)
        for u in result.uploads:
            size = f"{'(merged)' if u.pending_merge else f'{u.size:,} B':>12}"
            echo(f"  {u.path_in_repo:<{width}}  {size}  {u.origin}")
        if result.not_published:
            echo(f"not published: {', '.join(result.not_published)}")
        echo("dry run: nothing was uploaded")
        return
    target, outcome = f"{result.repo_id}@{result.revision}", result.outcome
    commit = (outcome.commit or "")[:SHORT_SHA]
    if outcome.noop:
        echo(f"nothing to push: {target} (commit {commit}) already holds exactly these {len(result.uploads)} files")
    else:
        echo(
            f"pushed {result.kind} to {target}: commit {commit} "
            f"({len(outcome.changed)} of {len(result.uploads)} files changed, {len(outcome.removed)} removed)"
        )
        echo(f"  {outcome.pr_url or outcome.commit_url}")
    if result.merge_check:
        echo(result.merge_check)
    for line in result.verify_lines:
        echo(line)
