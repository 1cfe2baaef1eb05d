"""Loading the recipe's dataset into named splits (train / validation / test), task-independent.

Everything a user can get wrong about the data source is checked here, before any model is loaded:
missing paths, unknown formats, missing splits, Hub access while offline. Label and column checks that
depend on the task live in the task files. `datasets` is imported inside functions: it is heavy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import DataError, HubOfflineError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from hftoolkit.recipe import DatasetSection

_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def looks_like_path(ref: str) -> bool:
    """A reference that can only be a local path (a Hub id is `name` or `org/name`)."""
    return ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1


def local_path(ref: str) -> Path | None:
    """The local folder/file `ref` names, or None when it is a Hub id. A path-like ref that does not exist is an error."""
    p = Path(ref).expanduser()
    if p.exists():
        return p
    if looks_like_path(ref):
        raise DataError(f"dataset path {ref!r} does not exist (resolved to {p.resolve()})")
    return None


@dataclass
class DataSource:
    """Where the data came from, recorded in the manifest and the model card."""

    id: str
    config: str | None = None
    revision: str | None = None
    commit: str | None = None
    files: dict[str, str] | None = None
    split_names: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], {})}


def load_raw(ds: DatasetSection) -> tuple[DatasetDict, DataSource]:
    """Load every split the source has, unprocessed."""
    import datasets

    if ds.files is not None:
        return _load_files(ds.files, ds.text_sample_by)
    assert ds.name is not None
    path = local_path(ds.name)
    kwargs: dict[str, Any] = {"revision": ds.revision} if ds.revision else {}
    if path is not None and path.is_file():
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"dataset {ds.name!r}: unsupported file type {path.suffix!r} (use csv, json, jsonl, parquet or txt)")
        return _load_files({"train": str(path)}, ds.text_sample_by)
    target = str(path) if path is not None else ds.name
    if path is not None and _is_image_folder(path):
        # Named explicitly: left to guess, datasets picks the builder of the most common file type.
        target, kwargs = "imagefolder", {**kwargs, "data_dir": str(path)}
    try:
        raw = datasets.load_dataset(target, ds.config, **kwargs)
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError, ValueError)
        raise _explain_load_error(e, ds) from e
    source = DataSource(id=ds.name if path is None else str(path), config=ds.config, revision=ds.revision)
    source.commit = _resolved_commit(raw) if path is None else None
    return raw, source


def _is_image_folder(path: Path) -> bool:
    """A local folder of image files (class subfolders, optionally inside split folders), not of data tables.

    Decided by the first image or table file found, so a folder of a million images is not listed in full.
    """
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    if not path.is_dir():
        return False
    image_suffixes = {e.lower() for e in ImageFolder.EXTENSIONS}
    for p in path.rglob("*"):
        suffix = p.suffix.lower()
        if suffix in image_suffixes:
            return True
        # .txt is a data format too, but README/SOURCE.txt files commonly sit beside images: they decide nothing.
        if (suffix in _FORMATS and suffix != ".txt") or suffix == ".arrow":
            return False
    return False


def _load_files(files: dict[str, str], text_sample_by: str = "paragraph") -> tuple[DatasetDict, DataSource]:
    import datasets

    fmts = set()
    for role, f in files.items():
        p = Path(f).expanduser()
        if not p.is_file():
            raise DataError(f"dataset.files.{role}: file {f!r} does not exist (resolved to {p.resolve()})")
        fmt = _FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise DataError(f"dataset.files.{role}: unsupported file type {p.suffix!r} (use csv, json, jsonl, parquet or txt)")
        fmts.add(fmt)
    if len(fmts) > 1:
        raise DataError(f"dataset.files mixes formats ({', '.join(sorted(fmts))}); use one format for all splits")
    fmt = fmts.pop()
    extra = {"delimiter": "\t"} if all(f.endswith(".tsv") for f in files.values()) else {}
    if fmt == "text":
        # Plain text becomes one `text` column; datasets' own builder decides rows (paragraphs by default).
        extra = {"sample_by": text_sample_by, "keep_linebreaks": True}
    try:
        raw = datasets.load_dataset(fmt, data_files={k: str(Path(v).expanduser()) for k, v in files.items()}, **extra)
    except Exception as e:
        raise DataError(f"cannot read dataset.files ({type(e).__name__}: {e})") from e
    return raw, DataSource(id="local files", files={k: str(v) for k, v in files.items()})


def _explain_load_error(e: Exception, ds: DatasetSection) -> Exception:
    text = f"{type(e).__name__}: {e}"
    if hub_offline() or "offline" in text.lower() or "connect" in text.lower():
        return HubOfflineError(
            f"dataset {ds.name!r} is not a local path and is not in the local cache, and the Hub is unreachable "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); use a local folder or files, or go online once to cache it"
        )
    if "config" in text.lower() and ds.config is None and "available" in text.lower():
        return DataError(f"dataset {ds.name!r} has several configurations; set dataset.config ({e})")
    return DataError(f"cannot load dataset {ds.name!r}: {text}")


def _resolved_commit(raw: DatasetDict) -> str | None:
    """The Hub commit the data was read at, when datasets recorded it (it keeps it in the cache path)."""
    for split in raw.values():
        for f in getattr(split, "cache_files", []) or []:
            parts = Path(f.get("filename", "")).parts
            for p in parts:
                if len(p) == 40 and all(c in "0123456789abcdef" for c in p):
                    return p
    return None


def pick_splits(raw: DatasetDict, ds: DatasetSection, source: DataSource) -> dict[str, Dataset]:
    """Map the source's split names onto train / validation / test. Missing train is an error."""
    available = list(raw.keys())
    wanted = {"train": ds.splits.train, "validation": ds.splits.validation, "test": ds.splits.test}
    if ds.files is not None:
        wanted = {role: role if role in ds.files else None for role in wanted}
    out: dict[str, Dataset] = {}
    for role, name in wanted.items():
        if name is None:
            continue
        if name in raw:
            out[role] = raw[name]
            source.split_names[role] = name
        elif role == "train" or (role == "validation" and ds.splits.validation != "validation"):
            raise DataError(
                f"dataset.splits.{role}: split {name!r} not found in {source.id!r}; available splits: {', '.join(available)}"
            )
    return out


def carve_validation(splits: dict[str, Dataset], size: float, seed: int, stratify: str | None, source: DataSource) -> None:
    """Add a validation split cut from train when the source has none (stratified by label when there is one)."""
    if "validation" in splits:
        return
    train = splits["train"]
    if len(train) < 2:
        raise DataError("the train split has fewer than 2 rows: cannot carve a validation split from it")
    try:
        parts = train.train_test_split(test_size=size, seed=seed, stratify_by_column=stratify)
    except ValueError as e:
        # Stratification fails when a class has a single example; fall back to a plain seeded split and say so.
        if stratify is None:
            raise DataError(f"cannot carve a validation split: {e}") from e
        parts = train.train_test_split(test_size=size, seed=seed)
        source.notes.append(f"validation split not stratified ({e})")
        stratify = None
    splits["train"], splits["validation"] = parts["train"], parts["test"]
    how = "stratified by label, " if stratify else ""
    source.notes.append(f"validation carved from train: {size:.0%} ({how}seed {seed}), {len(parts['test'])} rows")


def limit_rows(splits: dict[str, Dataset], max_samples: int | dict[str, int] | None, seed: int) -> None:
    """Apply `max_samples` after a seeded shuffle (so sorted sources do not yield one class), then check emptiness."""
    for role in list(splits):
        n = max_samples.get(role) if isinstance(max_samples, dict) else max_samples
        if n is not None and len(splits[role]) > n:
            splits[role] = splits[role].shuffle(seed=seed).select(range(n))
    for role, split in splits.items():
        if len(split) == 0:
            raise DataError(f"split {role!r} is empty (after dataset.max_samples and filtering); it needs at least one row")


def require_columns(split: Dataset, role: str, wanted: dict[str, str | None]) -> None:
    """Every configured column must exist; the message lists what the data has."""
    missing = {k: v for k, v in wanted.items() if v is not None and v not in split.column_names}
    if missing:
        k, v = next(iter(missing.items()))
        raise DataError(
            f"dataset.columns.{k}: column {v!r} not found in split {role!r}; available columns: {', '.join(split.column_names)}"
        )
