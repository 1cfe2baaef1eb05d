"""Loading the recipe's dataset into named splits (train / validation / test), task-independent.

Everything a user can get wrong about the data source is checked here, before any model is loaded:
missing paths, unknown formats, missing splits, Hub access while offline, files that are not UTF-8 or not
valid JSON, empty files (hftoolkit/data_scan.py says why a file failed). Label and column checks that depend on the
task live in the task files. `datasets` is imported inside functions: it is heavy.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from hftoolkit.data_scan import file_problem
from hftoolkit.errors import DataError, HubOfflineError
from hftoolkit.refs import dataset_path, hub_offline, offline_hint

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from hftoolkit.recipe.schema import DatasetSection

log = logging.getLogger("hftoolkit")
_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
FOLDER_SCAN_LIMIT = 10_000  # entries of a local dataset folder looked at for symlinks and for a file that broke loading


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
    path = dataset_path(ds.name)
    kwargs: dict[str, Any] = {"revision": ds.revision} if ds.revision else {}
    if path is not None and path.is_file():
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"dataset {ds.name!r}: unsupported file type {path.suffix!r} (use csv, json, jsonl, parquet or txt)")
        return _load_files({"train": str(path)}, ds.text_sample_by, key="dataset.name")
    notes = _folder_link_notes(path) if path is not None else []
    target = str(path) if path is not None else ds.name
    if path is not None and _is_image_folder(path):
        # Named explicitly: left to guess, datasets picks the builder of the most common file type.
        target, kwargs = "imagefolder", {**kwargs, "data_dir": str(path)}
    try:
        raw = datasets.load_dataset(target, ds.config, **kwargs)
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError, ValueError)
        bad = _folder_file_problem(path) if path is not None and path.is_dir() else None
        raise (bad or _explain_load_error(e, ds)) from e
    source = DataSource(id=ds.name if path is None else str(path), config=ds.config, revision=ds.revision, notes=notes)
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


def _load_files(
    files: dict[str, str], text_sample_by: str = "paragraph", key: str = "dataset.files"
) -> tuple[DatasetDict, DataSource]:
    fmts = set()
    notes = []
    for role, f in files.items():
        where = key if key != "dataset.files" else f"{key}.{role}"
        p = Path(f).expanduser()
        if p.is_symlink() and not p.exists():
            raise DataError(
                f"{where}: {f} is a symlink to {os.path.realpath(p)}, which does not exist (DVC or git-annex data: "
                "fetch the content first, e.g. `dvc pull` or `git annex get`)"
            )
        if not p.is_file():
            raise DataError(f"{where}: file {f!r} does not exist (resolved to {p.resolve()})")
        fmt = _FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise DataError(f"{where}: unsupported file type {p.suffix!r} (use csv, json, jsonl, parquet or txt)")
        fmts.add(fmt)
        if p.is_symlink():
            notes.append(_link_note(where, p))
    if len(fmts) > 1:
        raise DataError(f"dataset.files mixes formats ({', '.join(sorted(fmts))}); use one format for all splits")
    fmt = fmts.pop()
    extra = {"delimiter": "\t"} if all(f.endswith(".tsv") for f in files.values()) else {}
    if fmt == "text":
        # Plain text becomes one `text` column; datasets' own builder decides rows (paragraphs by default).
        extra = {"sample_by": text_sample_by, "keep_linebreaks": True}
    raw = _read_files(fmt, files, extra, key)
    for role, f in files.items():
        if role in raw and len(raw[role]) == 0:
            raise DataError(f"split {role} is empty (file {f}): it has no data rows")
        if fmt == "json" and not _valid_arrow(raw[role]):
            # pyarrow's JSON reader can keep bytes that are not UTF-8 as "strings"; they fail later, on first read.
            raise _file_error(Path(f).expanduser(), fmt, role) or DataError(f"split {role}: file {f} is not valid UTF-8")
    return raw, DataSource(id="local files", files={k: str(v) for k, v in files.items()}, notes=notes)


def _read_files(fmt: str, files: dict[str, str], extra: dict[str, Any], key: str) -> DatasetDict:
    """datasets' builder on the files; when it fails, the broken file named (data_scan.py), or the splits read one
    by one when only their column types disagree (datasets casts every split to the first one's types), so the
    task's checks can name the first row of the other type."""
    import datasets

    paths = {k: str(Path(v).expanduser()) for k, v in files.items()}
    try:
        with _builder_logs_held_back():
            return datasets.load_dataset(fmt, data_files=paths, **extra)
    except Exception as e:  # each builder fails its own way (ValueError, ArrowInvalid, DatasetGenerationError, StopIteration ...)
        for role, f in paths.items():
            bad = _file_error(Path(f), fmt, role)
            if bad is not None:
                raise bad from e
        if len(paths) > 1:
            try:
                with _builder_logs_held_back():
                    return datasets.DatasetDict(
                        {role: datasets.load_dataset(fmt, data_files={role: f}, **extra)[role] for role, f in paths.items()}
                    )
            except Exception:  # the same failure in a single file: the original error says most
                pass
        raise DataError(f"cannot read {key} ({type(e).__name__}: {e})") from e


def _valid_arrow(split: Dataset) -> bool:
    import pyarrow as pa

    try:
        split.data.table.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


@contextmanager
def _builder_logs_held_back() -> Iterator[None]:
    """datasets' file builders log a failure (pandas' traceback text included) before raising it; hft explains the
    failure itself in one line, so those logs are held back unless `hft --debug`."""
    builders = logging.getLogger("datasets.packaged_modules")
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    before = builders.level
    builders.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        builders.setLevel(before)


def _file_error(path: Path, fmt: str, role: str | None) -> DataError | None:
    """A DataError naming the file and what in it is broken, when a scan finds it (see data_scan.py)."""
    try:
        problem = file_problem(path, fmt)
    except OSError:
        return None  # unreadable now: the load error itself is the best we have
    if problem is None:
        return None
    if problem == "empty":
        what = "only a header, no data rows" if fmt == "csv" else "no data rows"
        if role is None:  # a file of a local dataset folder: datasets decides its split from the file name
            return DataError(f"file {path} is empty: it has {what}")
        return DataError(f"split {role} is empty (file {path}): it has {what}")
    return DataError(f"{'split ' + role + ': ' if role else ''}file {path}: {problem}")


def _link_note(where: str, path: Path) -> str:
    """Data kept by DVC or git-annex is a symlink into their store: read, and said so, so a surprise is visible."""
    note = f"{where}: {path} is a symlink to {os.path.realpath(path)}; reading the file it points to"
    log.info("%s", note)
    return note


def _folder_entries(folder: Path) -> list[Path]:
    """Files below a dataset folder, at most FOLDER_SCAN_LIMIT of them (a folder of a million images is not listed)."""
    out: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            out.append(Path(root) / name)
            if len(out) >= FOLDER_SCAN_LIMIT:
                return out
    return out


def _folder_link_notes(folder: Path) -> list[str]:
    if folder.is_file():
        return []
    notes = [_link_note("dataset.name", folder)] if folder.is_symlink() else []
    links = [p for p in _folder_entries(folder) if p.is_symlink()]
    if links:
        note = (
            f"dataset.name: {len(links)} file(s) in {folder} are symlinks (e.g. {links[0].name} -> "
            f"{os.path.realpath(links[0])}); reading the files they point to"
        )
        log.info("%s", note)
        notes.append(note)
    return notes


def _folder_file_problem(folder: Path) -> DataError | None:
    """After a local folder failed to load: the first of its data files that a scan finds broken."""
    for p in _folder_entries(folder):
        fmt = _FORMATS.get(p.suffix.lower())
        if fmt is not None and p.is_file():
            bad = _file_error(p, fmt, None)
            if bad is not None:
                return bad
    return None


def _explain_load_error(e: Exception, ds: DatasetSection) -> Exception:
    """datasets' failure as one line, by exception type (the Hub error behind it, when there is one)."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled

    text = f"{type(e).__name__}: {e}"
    causes = _causes(e)
    if any(isinstance(c, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)) for c in causes) or (
        isinstance(e, DatasetNotFoundError) and hub_offline()
    ):
        return HubOfflineError(
            f"dataset {ds.name!r} is not a local path and is not in the local cache, and the Hub cannot be used "
            f"({offline_hint()}); use a local folder or files, or go online once to cache it"
        )
    if any(isinstance(c, GatedRepoError) for c in causes):
        return DataError(f"dataset {ds.name!r} is a gated repo: request access on the Hub, then log in (hf auth login)")
    if isinstance(e, DatasetNotFoundError):
        return DataError(f"dataset {ds.name!r} was not found locally or on the Hub (check the name and token): {e}")
    if isinstance(e, ValueError) and ds.config is None:
        # datasets raises a plain ValueError for a missing configuration name, among others: the hint is offered,
        # with datasets' own message saying which it was.
        return DataError(f"cannot load dataset {ds.name!r}: {text}; if it has several configurations, set dataset.config")
    return DataError(f"cannot load dataset {ds.name!r}: {text}")


def _causes(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: BaseException | None = e
    while seen is not None and seen not in out:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


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
    """Add a validation split cut from train when the source has none (stratified by label when there is one).

    With labels, every class keeps at least one row in train: datasets' stratified split is used when it can keep
    that promise; when it cannot (a class with one row, fewer validation rows than classes) the carve is done per
    class here, and when no class can spare a row it is refused with the rows per class.
    """
    if "validation" in splits:
        return
    train = splits["train"]
    if len(train) < 2:
        raise DataError("the train split has fewer than 2 rows: cannot carve a validation split from it")
    if stratify is None:
        try:
            parts = train.train_test_split(test_size=size, seed=seed)
        except ValueError as e:
            raise DataError(f"cannot carve a validation split: {e}") from e
        how = ""
    else:
        labels = column_values(train, stratify)
        parts = _stratified_split(train, size, seed, stratify, set(labels))
        how = "stratified by label, "
        if parts is None:
            keep, carve = carve_keeping_classes(labels, size, seed)
            if not carve:
                names = getattr(train.features[stratify], "names", None)
                counts = ", ".join(f"{names[k] if names else k}={n}" for k, n in sorted(Counter(labels).items()))
                raise DataError(
                    f"cannot carve a validation split from train ({len(train)} rows) that leaves every class at least "
                    f"one training row (rows per class: {counts}); give a validation split (dataset.files.validation "
                    "or dataset.splits.validation) or more training rows"
                )
            parts = {"train": train.select(keep), "test": train.select(carve)}
            how = "per class, every class kept in train, "
    splits["train"], splits["validation"] = parts["train"], parts["test"]
    source.notes.append(f"validation carved from train: {size:.0%} ({how}seed {seed}), {len(parts['test'])} rows")


def _stratified_split(train: Dataset, size: float, seed: int, col: str, classes: set) -> Any:
    """datasets' stratified split, or None when it refuses (a class with one row, fewer validation rows than
    classes) or would leave a class without train rows."""
    try:
        parts = train.train_test_split(test_size=size, seed=seed, stratify_by_column=col)
    except ValueError:
        return None
    return parts if set(column_values(parts["train"], col)) == classes else None


def carve_keeping_classes(labels: list, size: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, validation) for a seeded per-class carve of about `size` that leaves one row of every class."""
    import numpy as np

    by_class: dict = {}
    for i, v in enumerate(labels):
        by_class.setdefault(v, []).append(i)
    room = {c: len(rows) - 1 for c, rows in by_class.items()}
    take = {c: min(room[c], int(size * len(rows))) for c, rows in by_class.items()}
    wanted = math.ceil(size * len(labels))
    # Top up towards the requested size, classes with the largest unmet share first.
    for c in sorted(by_class, key=lambda c: (take[c] - size * len(by_class[c]), str(c))):
        if sum(take.values()) >= wanted:
            break
        if take[c] < room[c]:
            take[c] += 1
    rng = np.random.default_rng(seed)
    carve: list[int] = []
    for c in sorted(by_class, key=str):
        carve += [int(i) for i in rng.permutation(by_class[c])[: take[c]]]
    chosen = set(carve)
    return [i for i in range(len(labels)) if i not in chosen], sorted(carve)


def limit_rows(splits: dict[str, Dataset], max_samples: int | dict[str, int] | None, seed: int) -> None:
    """Apply `max_samples` after a seeded shuffle (so sorted sources do not yield one class), then check emptiness."""
    for role in list(splits):
        n = max_samples.get(role) if isinstance(max_samples, dict) else max_samples
        if n is not None and len(splits[role]) > n:
            splits[role] = splits[role].shuffle(seed=seed).select(range(n))
    for role, split in splits.items():
        if len(split) == 0:
            raise DataError(f"split {role!r} is empty (after dataset.max_samples and filtering); it needs at least one row")


def column_values(split: Dataset, col: str) -> list:
    """One column as Python values, decoded as the features say (a Json column is stored as JSON text)."""
    from datasets.features.features import require_decoding

    if not require_decoding(split.features[col]):
        # Straight from Arrow (through the index mapping a select or split leaves): no formatting of other columns.
        column = split.data.column(col)
        if split._indices is not None:
            column = column.take(split._indices.column(0))
        return column.to_pylist()
    return list(split.select_columns([col])[col])


def require_columns(split: Dataset, role: str, wanted: dict[str, str | None]) -> None:
    """Every configured column must exist; the message lists what the data has."""
    missing = {k: v for k, v in wanted.items() if v is not None and v not in split.column_names}
    if missing:
        k, v = next(iter(missing.items()))
        raise DataError(
            f"dataset.columns.{k}: column {v!r} not found in split {role!r}; available columns: {', '.join(split.column_names)}"
        )
