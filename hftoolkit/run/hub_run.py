"""Hub repos as runs: `hft evaluate org/name` and `hft predict org/name` read a pushed model like a run directory.

`hft push` publishes the model files at the repo root together with recipe.resolved.yaml and manifest.json, so a
snapshot of the repo (downloaded into the Hugging Face cache with snapshot_download) has everything `evaluate` and
`predict` read from a run directory. What those commands write (eval_results.json, plots) goes to the Hub cache's
assets folder for that commit, never into the snapshot, which huggingface_hub owns.

huggingface_hub is imported inside functions: this module is reachable from the CLI start-up path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from hftoolkit.errors import HubOfflineError, RunDirError
from hftoolkit.refs import is_commit, is_local, offline_hint
from hftoolkit.run.layout import MANIFEST, RECIPE, RunDir

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import ModelSection
    from hftoolkit.run.records import Manifest

log = logging.getLogger("hftoolkit")
# Files every model repo has one of: which cached snapshot of a Hub model was read.
SNAPSHOT_PROBES = ("config.json", "adapter_config.json", "README.md")


def open_run(ref: str | Path, revision: str | None = None) -> RunDir:
    """The run `evaluate` and `predict` read: a local run directory, or a Hub repo id (`org/name`) pushed by `hft push`.

    An existing local path always wins, so `runs/quickstart` is never mistaken for a Hub repo.
    """
    text = str(ref)
    if is_local(text):
        if revision is not None:
            raise RunDirError(f"--revision is for Hub repos; {text} is a local run directory")
        return RunDir(Path(text).expanduser())
    return open_hub_run(text, revision)


def cached_commit(section: ModelSection) -> str | None:
    """The commit sha of a Hub model the Hub cache holds for this ModelSection's name and revision, else None."""
    from huggingface_hub import try_to_load_from_cache

    name, revision = section.name, section.revision
    if is_local(name):
        return None
    if is_commit(revision):
        return revision
    for filename in SNAPSHOT_PROBES:
        found = try_to_load_from_cache(name, filename, revision=revision)
        if isinstance(found, str):
            parent = Path(found).parent.name
            return parent if is_commit(parent) else None
    return None


class HubRun(RunDir):
    """A run-directory view of a downloaded Hub snapshot: inputs from the snapshot, outputs in `path`."""

    def __init__(self, out_dir: Path, snapshot: Path, repo_id: str, commit: str):
        super().__init__(out_dir)
        self.snapshot = snapshot
        self.repo_id = repo_id
        self.commit = commit

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]}"

    manifest = property(lambda self: self.snapshot / MANIFEST)
    recipe = property(lambda self: self.snapshot / RECIPE)
    # Pushed repos keep the model at the root, so `from_pretrained("org/name")` works as the card says.
    model = property(lambda self: self.snapshot)
    data_report = property(lambda self: self.snapshot / "data_report.json")
    loss_curve = property(lambda self: self.snapshot / "loss_curve.png")

    def require_trained(self) -> Manifest:
        if not self.recipe.is_file() or not self.manifest.is_file():
            raise RunDirError(
                f"Hub repo {self} was not published by `hft push`: it has no {RECIPE} and {MANIFEST}, so the data and "
                "settings it was trained with are unknown"
            )
        return super().require_trained()


def open_hub_run(repo_id: str, revision: str | None = None) -> HubRun:
    """Download (or reuse from the cache) a pushed repo at `revision` and view it as a run."""
    from huggingface_hub import cached_assets_path, snapshot_download

    from hftoolkit.repo_ids import require_repo_id

    require_repo_id(repo_id, "Hub repo")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision))
    except Exception as e:  # huggingface_hub's error types are sorted out by type in _download_error
        raise _download_error(e, repo_id, revision) from None
    commit = folder.name
    out = cached_assets_path("hftoolkit", namespace=repo_id, subfolder=commit)
    run = HubRun(out, folder, repo_id, commit)
    log.info("using Hub repo %s (snapshot %s); outputs go to %s", repo_id, commit[:12], out)
    return run


def _download_error(e: Exception, repo_id: str, revision: str | None) -> Exception:
    """snapshot_download's failure as one line, chosen by exception type; anything unexpected is raised as it is."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    if isinstance(e, RevisionNotFoundError):
        return RunDirError(f"Hub repo {repo_id!r} has no revision {revision!r}")
    if isinstance(e, (RepositoryNotFoundError, GatedRepoError)):
        return RunDirError(
            f"{repo_id!r} is neither a local run directory nor a Hub repo this token can read (check the name, "
            "and HF_TOKEN or `hf auth login` for private repos)"
        )
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return HubOfflineError(
            f"{where!r} is not a local run directory, is not in the Hub cache, and the Hub cannot be used "
            f"({offline_hint()})"
        )
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "no response"
        return RunDirError(f"cannot download Hub repo {where!r}: the Hub answered HTTP {status}")
    return e
