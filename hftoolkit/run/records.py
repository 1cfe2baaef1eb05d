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
from typing import Any, Callable, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hftoolkit.errors import RunDirError

Status = Literal["running", "failed", "interrupted", "completed"]
DEFAULT_COMMAND = "hft finetune"  # what a manifest without a recorded command line ran


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
        write_atomic(path, json.dumps(self.as_json(), indent=2, ensure_ascii=False) + "\n")

    def as_json(self) -> dict[str, Any]:
        """The fields that were given (None included), in declaration order: a record read and written again keeps
        exactly the keys it had, and a field nobody set is not written as an empty default."""
        return self.model_dump(mode="json", exclude_unset=True)


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
        """Local paths shortened; only the fields this record has (model_copy would mark an absent `files` as set)."""
        fields = self.model_dump(exclude_unset=True)
        fields["id"] = shorten(self.id)
        if self.files:
            fields["files"] = {k: shorten(v) for k, v in self.files.items()}
        return DatasetInfo(**fields)


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
    """manifest.json: what ran, on what, with which versions; its status says whether the run finished.

    Fields are declared in the order the published copy lists them (`public`), local-only fields last.
    """

    filename: ClassVar[str] = "manifest.json"

    status: Optional[Status] = None
    hftoolkit_version: Optional[str] = None
    recipe_fingerprint: Optional[str] = None
    task: Optional[str] = None
    seed: Optional[int] = None
    precision: Optional[str] = None
    world_size: Optional[int] = None
    device: Optional[str] = None
    labels: Optional[list[str]] = None
    adapter: Optional[bool] = None
    parameters: Optional[Parameters] = None
    versions: dict[str, str] = Field(default_factory=dict)
    command: Optional[str] = None
    model: Optional[ModelInfo] = None
    dataset: Optional[DatasetInfo] = None
    published_as: Optional[str] = None  # set on the copy `hft push` publishes: adapter, merged or full
    run_id: Optional[str] = None
    resumed_from: list[ResumePoint] = Field(default_factory=list)
    started: Optional[str] = None
    finished: Optional[str] = None
    interrupted: Optional[Interruption] = None

    # Fields published as they are; the others are local (run id, times, resume history) or rewritten below.
    PUBLIC_FIELDS: ClassVar[tuple[str, ...]] = (
        "status", "hftoolkit_version", "recipe_fingerprint", "task", "seed", "precision", "world_size", "device",
        "labels", "adapter", "parameters", "versions",
    )

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @classmethod
    def read_if_present(cls, path: Path) -> Manifest:
        """The manifest, or an empty one when the run has none yet."""
        return cls.read(path) if path.is_file() else cls()

    def public(
        self, *, kind: str, model_name: str, shorten: Callable[[str], str], command: Callable[[str], str]
    ) -> Manifest:
        """The manifest as `hft push` publishes it: allow-listed fields, local paths shortened, the published kind."""
        kept = {k: getattr(self, k) for k in self.PUBLIC_FIELDS if k in self.model_fields_set}
        model = self.model or ModelInfo(name=model_name)
        return Manifest(
            **kept,
            command=command(self.command or DEFAULT_COMMAND),
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


class FingerprintCheck(BaseModel):
    """Whether the scored split is the data the run recorded at training time (see commands/evaluate.py)."""

    split: str
    fingerprint: str
    recorded: Optional[str] = None
    matched: Optional[bool] = None  # None: the run recorded no fingerprint for this split


class EvalResults(_Record):
    """eval_results.json: what `hft evaluate` scored, on which data, with which model.

    Fields are declared in the order the published copy lists them (`public`), local-only fields last.
    """

    filename: ClassVar[str] = "eval_results.json"

    split: str
    num_examples: int
    metrics: dict[str, float] = Field(default_factory=dict)
    labels: Optional[list[str]] = None
    artifacts: list[str] = Field(default_factory=list)
    dataset: Optional[DatasetInfo] = None
    model: Optional[ModelInfo] = None
    run: Optional[str] = None  # the directory, or org/name@commit for a Hub repo
    data_fingerprint: Optional[FingerprintCheck] = None

    PUBLIC_FIELDS: ClassVar[tuple[str, ...]] = ("split", "num_examples", "metrics", "labels", "artifacts")

    def public(self, shorten: Callable[[str], str]) -> EvalResults:
        kept = {k: getattr(self, k) for k in self.PUBLIC_FIELDS if k in self.model_fields_set}
        public = EvalResults(**kept, dataset=self.dataset.public(shorten) if self.dataset else None)
        if self.model is not None:
            public.model = self.model.model_copy(update={"name": shorten(self.model.name)})
        return public


class DataReport(_Record):
    """data_report.json: what the data looks like, shown by `hft validate` and `hft finetune`, saved in the run and
    the model card. Tasks fill it in while they check and preprocess the splits."""

    filename: ClassVar[str] = "data_report.json"

    columns: dict[str, list[str]] = Field(default_factory=dict)
    split_sizes: dict[str, int] = Field(default_factory=dict)
    label_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    token_lengths: dict[str, Union[int, float]] = Field(default_factory=dict)
    truncated_share: dict[str, float] = Field(default_factory=dict)
    dropped: dict[str, int] = Field(default_factory=dict)  # reason -> rows
    empty_texts: dict[str, dict[str, int]] = Field(default_factory=dict)  # split -> text column -> empty/blank rows
    notes: list[str] = Field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")  # every section, empty ones included: readers need not guess

    def as_dict(self) -> dict[str, Any]:
        return self.as_json()

    def lines(self) -> list[str]:
        out = [f"split {role}: {n} rows" for role, n in self.split_sizes.items()]
        out += [f"columns ({role}): {', '.join(cols)}" for role, cols in self.columns.items()]
        for role, counts in self.label_counts.items():
            out.append(f"labels ({role}): " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        if self.token_lengths:
            tl = self.token_lengths
            out.append(
                "token length (train sample of %d): mean %.1f, p50 %d, p95 %d, max %d"
                % (tl["sample"], tl["mean"], tl["p50"], tl["p95"], tl["max"])
            )
        out += [f"truncated ({role}): {share:.1%} of examples cut at max_length" for role, share in self.truncated_share.items()]
        for role, per_column in self.empty_texts.items():
            shown = ", ".join(f"{col}={n}" for col, n in per_column.items() if n)
            if shown:
                out.append(f"empty or whitespace-only texts ({role}): {shown}")
        out += [f"dropped: {n} rows ({reason})" for reason, n in self.dropped.items()]
        return out + self.notes


class CheckpointInfo(_Record):
    """hft_checkpoint.json, written into a checkpoint folder once all its files are on disk (training/callbacks.py):
    only a checkpoint with this marker is resumed from."""

    filename: ClassVar[str] = "hft_checkpoint.json"

    complete: bool = False
    step: int = 0
    epoch: Optional[float] = None
    run_id: Optional[str] = None
    recipe_fingerprint: Optional[str] = None
    data_fingerprint: Optional[str] = None
    world_size: Optional[int] = None
    metrics_lines: Optional[int] = None  # lines of metrics.jsonl written before this checkpoint
    loss_sum: Optional[float] = None  # summed training loss of every step so far
    saved: Optional[str] = None
    hftoolkit_version: Optional[str] = None
    recipe: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def read_or_empty(cls, folder: Path) -> CheckpointInfo:
        """The marker of a checkpoint folder; an empty (incomplete) one when it has none or an unreadable one."""
        try:
            return cls.read(folder / cls.filename)
        except (RunDirError, OSError, ValueError):
            return cls()


def read_json_file(path: Path) -> Any:
    """A JSON file hft did not type (e.g. a model's config.json), with a one-line error when it is broken."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); restore it or train the run again") from None
