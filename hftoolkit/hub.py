"""Hub repos as runs: `hft evaluate org/name` and `hft predict org/name` read a pushed model like a run directory.

`hft push` publishes the model files at the repo root together with recipe.resolved.yaml and manifest.json, so a
snapshot of the repo (downloaded into the Hugging Face cache with snapshot_download) has everything `evaluate` and
`predict` read from a run directory. What those commands write (eval_results.json, plots) goes to the Hub cache's
assets folder for that commit, never into the snapshot, which huggingface_hub owns.

huggingface_hub is imported inside functions: this module is reachable from the CLI start-up path.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hftoolkit.errors import HubOfflineError, RunDirError
from hftoolkit.rundir import MANIFEST, RECIPE, RunDir

log = logging.getLogger("hftoolkit")

# namespace/name as the Hub spells repo ids (no leading dot or dash, no `..`, no `--` runs at the edges).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


def is_hub_id(ref: str) -> bool:
    return bool(HUB_ID.match(ref)) and ".." not in ref and not ref.endswith((".", "-"))


def cached_commit(section) -> str | None:
    """The commit sha of a Hub model the Hub cache holds for this ModelSection's name and revision, else None."""
    from huggingface_hub import try_to_load_from_cache

    name, revision = section.name, section.revision
    if not is_hub_id(name) or Path(name).expanduser().exists():
        return None
    if revision and _SHA.match(revision):
        return revision
    for filename in ("config.json", "adapter_config.json", "README.md"):
        found = try_to_load_from_cache(name, filename, revision=revision)
        if isinstance(found, str):
            parent = Path(found).parent.name
            return parent if _SHA.match(parent) else None
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

    @property
    def manifest(self) -> Path:
        return self.snapshot / MANIFEST

    @property
    def recipe(self) -> Path:
        return self.snapshot / RECIPE

    @property
    def model(self) -> Path:
        # Pushed repos keep the model at the root, so `from_pretrained("org/name")` works as the card says.
        return self.snapshot

    @property
    def data_report(self) -> Path:
        return self.snapshot / "data_report.json"

    @property
    def loss_curve(self) -> Path:
        return self.snapshot / "loss_curve.png"

    def require_trained(self) -> dict:
        if not self.recipe.is_file() or not self.manifest.is_file():
            raise RunDirError(
                f"Hub repo {self} was not published by `hft push`: it has no {RECIPE} and {MANIFEST}, so the data and "
                "settings it was trained with are unknown"
            )
        return super().require_trained()


def open_hub_run(repo_id: str, revision: str | None = None) -> HubRun:
    """Download (or reuse from the cache) a pushed repo at `revision` and view it as a run."""
    from hftoolkit.repo_ids import require_repo_id

    require_repo_id(repo_id, "Hub repo")
    from huggingface_hub import cached_assets_path, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        folder = Path(snapshot_download(repo_id, revision=revision))
    except RevisionNotFoundError:
        raise RunDirError(f"Hub repo {repo_id!r} has no revision {revision!r}") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise RunDirError(
            f"{repo_id!r} is neither a local run directory nor a Hub repo this token can read (check the name, "
            "and HF_TOKEN or `hf auth login` for private repos)"
        ) from None
    except LocalEntryNotFoundError:
        raise HubOfflineError(
            f"{where!r} is not a local run directory, is not in the Hub cache, and the Hub is unreachable (or "
            "HF_HUB_OFFLINE is set)"
        ) from None
    except HfHubHTTPError as e:
        raise RunDirError(f"cannot download Hub repo {where!r}: {str(e).splitlines()[0]}") from None
    commit = folder.name
    out = cached_assets_path("hftoolkit", namespace=repo_id, subfolder=commit)
    run = HubRun(out, folder, repo_id, commit)
    log.info("using Hub repo %s (snapshot %s); outputs go to %s", repo_id, commit[:12], out)
    return run
