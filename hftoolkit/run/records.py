"""The run directory's JSON files as typed records: the contract between commands.

Each file has exactly one record class here, one writer (`write`) and one reader (`read`). Commands never index a
manifest or results dict by string key: they read attributes, so a renamed field is a type error, not a silent None.
Reading ignores fields this version does not know (a run written by a newer hft still opens); writing is atomic.
What may be published is decided here too (`Manifest.public`, `EvalResults.public`): a new field stays local until
it is added to a public view on purpose.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hftoolkit.errors import RunDirError

Status = Literal["running", "failed", "interrupted", "completed"]


def utc_now() -> str:
    """Timestamps in run records: UTC, second resolution, ISO 8601 (one format everywhere)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_atomic(path: Path, content: str | bytes) -> None:
    """Temp file + rename, so a crash never leaves a truncated file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are meant to be shared like any output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Record(BaseModel):
    """A JSON file of the run directory."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)
    filename: ClassVar[str]

    @classmethod
    def read(cls, path: Path):
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise RunDirError(f"{path} is missing") from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise RunDirError(f"{path} is not a valid {cls.filename} ({where}: {first['msg']})") from None

    def write(self, path: Path) -> None:
        write_atomic(path, self.model_dump_json(indent=2, exclude_none=True) + "\n")

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ModelInfo(BaseModel):
    name: str
    revision: Optional[str] = None
    commit: Optional[str] = None


class DatasetInfo(BaseModel):
    """Where the data came from (see data.DataSource) and the fingerprints of the prepared splits."""

    id: str
    config: Optional[str] = None
    revision: Optional[str] = None
    commit: Optional[str] = None
    files: Optional[dict[str, str]] = None
    split_names: dict[str, str] = Field(default_factory=dict)
    fingerprints: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def public(self, shorten: Callable[[str], str]) -> DatasetInfo:
        files = {k: shorten(v) for k, v in self.files.items()} if self.files else None
        return self.model_copy(update={"id": shorten(self.id), "files": files})


class ResumePoint(BaseModel):
    checkpoint: str
    step: int
    at: str


class Interruption(BaseModel):
    signal: str
    step: int
    at: str


class Parameters(BaseModel):
    trainable: int
    total: int


class Manifest(_Record):
    """manifest.json: what ran, on what, with which versions; its status says whether the run finished."""

    filename: ClassVar[str] = "manifest.json"

    status: Optional[Status] = None
    run_id: Optional[str] = None
    resumed_from: list[ResumePoint] = Field(default_factory=list)
    hftoolkit_version: Optional[str] = None
    recipe_fingerprint: Optional[str] = None
    command: Optional[str] = None
    task: Optional[str] = None
    seed: Optional[int] = None
    precision: Optional[str] = None
    world_size: Optional[int] = None
    device: Optional[str] = None
    started: Optional[str] = None
    finished: Optional[str] = None
    interrupted: Optional[Interruption] = None
    model: Optional[ModelInfo] = None
    dataset: Optional[DatasetInfo] = None
    labels: Optional[list[str]] = None
    adapter: Optional[bool] = None
    parameters: Optional[Parameters] = None
    versions: dict[str, str] = Field(default_factory=dict)
    published_as: Optional[str] = None  # set on the copy `hft push` publishes: adapter, merged or full

    # Fields published as they are; the others are local (run id, times, resume history) or rewritten below.
    PUBLIC_FIELDS: ClassVar[tuple[str, ...]] = (
        "status", "hftoolkit_version", "recipe_fingerprint", "task", "seed", "precision", "world_size", "device",
        "labels", "adapter", "parameters", "versions",
    )

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def public(
        self, *, kind: str, model_name: str, shorten: Callable[[str], str], command: Callable[[str], str]
    ) -> Manifest:
        """The manifest as `hft push` publishes it: allow-listed fields, local paths shortened, the published kind."""
        kept = {k: getattr(self, k) for k in self.PUBLIC_FIELDS}
        model = self.model or ModelInfo(name=model_name)
        return Manifest(
            **kept,
            command=command(self.command or "hft finetune"),
            model=ModelInfo(name=model_name, revision=model.revision, commit=model.commit),
            dataset=self.dataset.public(shorten) if self.dataset else None,
            published_as=kind,
        )


class TrainResults(_Record):
    """train_results.json: Trainer's final training metrics and the validation scores after training."""

    filename: ClassVar[str] = "train_results.json"

    train: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict)
    global_step: int = 0
    best_checkpoint: Optional[str] = None
    split_sizes: dict[str, int] = Field(default_factory=dict)


class EvalResults(_Record):
    """eval_results.json: what `hft evaluate` scored, on which data, with which model."""

    filename: ClassVar[str] = "eval_results.json"

    split: str
    num_examples: int
    metrics: dict[str, float] = Field(default_factory=dict)
    dataset: Optional[DatasetInfo] = None
    model: Optional[ModelInfo] = None
    run: Optional[str] = None  # the directory, or org/name@commit for a Hub repo
    labels: Optional[list[str]] = None
    artifacts: list[str] = Field(default_factory=list)
    fingerprint: Optional[str] = None  # of the scored split's features
    fingerprint_matches_training: Optional[bool] = None

    PUBLIC_FIELDS: ClassVar[tuple[str, ...]] = ("split", "num_examples", "metrics", "labels", "artifacts")

    def public(self, shorten: Callable[[str], str]) -> EvalResults:
        kept = {k: getattr(self, k) for k in self.PUBLIC_FIELDS}
        model = self.model.model_copy(update={"name": shorten(self.model.name)}) if self.model else None
        return EvalResults(**kept, dataset=self.dataset.public(shorten) if self.dataset else None, model=model)


def read_json_file(path: Path) -> Any:
    """A JSON file hft did not type (e.g. a model's config.json), with a one-line error when it is broken."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); restore it or train the run again") from None
