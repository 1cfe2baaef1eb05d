"""The export directory's contract: `export_report.json` as a typed record (one writer, one reader), OUT_DIR rules,
latency measurement, and what `hft push --with-onnx` uploads from an export and shows in the card.

    OUT_DIR/
      model.onnx             fp32 graph: inputs as the task's batches (input_ids, attention_mask ...), output logits
      model.int8.onnx        with --quantize int8: ONNX Runtime dynamic quantization of model.onnx
      config.json            the merged model's config, with id2label
      tokenizer / processor files
      export_report.json     parity, metric table, latency, file sizes, versions (ExportReport)
      README.md              how to run it with onnxruntime (and tokenizers) alone

An export is written into a staging folder next to OUT_DIR and moved into place only when every check passed, so
a refused or failed export leaves nothing behind. OUT_DIR may be missing, empty, or an earlier hft export (which
is replaced as a whole); anything else is refused and never touched.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from hftoolkit.errors import ExportError
from hftoolkit.paths import require_inside

REPORT = "export_report.json"
MODEL = "model.onnx"
MODEL_INT8 = "model.int8.onnx"
README = "README.md"
REPORT_VERSION = 1
ONNX_PREFIX = "onnx/"  # where `hft push --with-onnx` puts the export in the Hub repo
LATENCY_BATCHES = (1, 32)
LATENCY_WARMUP = 3
LATENCY_RUNS = {1: 30, 32: 10}
PERCENT = 100


@dataclass
class Parity:
    """ONNX Runtime vs PyTorch on the same real examples: worst |logit difference| and how often argmax agrees."""

    max_abs_diff: float
    argmax_agreement: float
    examples: int
    compared: str  # "examples" or "tokens" (token-level outputs, compared where the attention mask is set)


@dataclass
class MetricRow:
    runtime: str  # "pytorch-fp32" | "onnx-fp32" | "onnx-int8"
    metrics: dict[str, float]


@dataclass
class Latency:
    runtime: str
    batch: int
    p50_ms: float
    p95_ms: float
    runs: int


@dataclass
class ExportReport:
    task: str
    source: str  # run directory name, or org/name@commit
    run_id: str | None
    opset: int
    opset_requested: int | None
    inputs: list[str]
    labels: list[str] | None
    split: str
    parity: Parity
    max_diff: float
    parity_int8: Parity | None = None
    metrics: list[MetricRow] = field(default_factory=list)  # whole evaluation split, with --quantize
    checked_metric: str | None = None
    metric_drop_points: float | None = None  # int8 vs PyTorch fp32, in points (x100)
    max_drop: float | None = None
    forced: bool = False
    latency: list[Latency] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes
    # The run's `predict` defaults (multi-label threshold, tagging scheme, max_length): the ONNX backend and the
    # README snippet answer with them, as `hft predict` does on the run.
    predict_options: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    version: int = REPORT_VERSION

    @property
    def model_files(self) -> list[str]:
        return [name for name in (MODEL, MODEL_INT8) if name in self.files]


def write_report(folder: Path, report: ExportReport) -> Path:
    """The one writer of export_report.json (written last, so its presence marks a complete export)."""
    from hftoolkit.run.records import write_atomic

    path = folder / REPORT
    write_atomic(path, json.dumps(asdict(report), indent=2, default=str) + "\n")
    return path


def read_report(folder: str | Path) -> ExportReport:
    """The one reader: a typed ExportReport, or ExportError naming the file when it is missing or malformed."""
    path = Path(folder) / REPORT
    try:
        data = json.loads(path.read_text())
        report = ExportReport(**data)
        report.parity = Parity(**data["parity"])
        report.parity_int8 = Parity(**data["parity_int8"]) if data.get("parity_int8") else None
        report.metrics = [MetricRow(**row) for row in data.get("metrics", [])]
        report.latency = [Latency(**row) for row in data.get("latency", [])]
    except FileNotFoundError:
        raise ExportError(f"{folder} is not an hft export: {REPORT} is missing (write one with `hft export RUN --onnx DIR`)") from None
    except (ValueError, TypeError, KeyError) as e:
        raise ExportError(f"{path} is not a valid hft export report ({type(e).__name__}: {e})") from None
    if report.version != REPORT_VERSION:
        raise ExportError(f"{path} has report version {report.version}; this hftoolkit reads version {REPORT_VERSION}")
    return report


# ----------------------------------------------------------------------------------------------------------------------
# OUT_DIR


def check_out_dir(out: Path) -> None:
    """Refuse an OUT_DIR that holds anything but an earlier hft export; called before any work."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"--onnx {out} exists and is not a directory; choose another output folder")
    if any(out.iterdir()) and not (out / REPORT).is_file():
        raise ExportError(
            f"--onnx {out} is not empty and holds no hft export ({REPORT} is missing); it is never overwritten: "
            "choose a new or empty folder"
        )


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder beside `out`; moved to `out` (replacing an earlier export) only if the block succeeds."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    try:
        yield stage
        stage.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared like any output
        old = out.parent / f"{stage.name}.old"
        if out.exists():
            out.rename(old)
        try:
            stage.rename(out)
        except OSError:
            if old.exists():
                old.rename(out)  # the earlier export stays as it was
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != REPORT}


# ----------------------------------------------------------------------------------------------------------------------
# Latency


def measure_latency(runtime: str, run: Callable[[Any], Any], batches: dict[int, Any]) -> list[Latency]:
    """p50/p95 wall time of `run(batch)` per batch size, after a few warm-up calls."""
    out = []
    for size, batch in batches.items():
        for _ in range(LATENCY_WARMUP):
            run(batch)
        times = []
        for _ in range(LATENCY_RUNS.get(size, LATENCY_RUNS[1])):
            start = time.perf_counter()
            run(batch)
            times.append((time.perf_counter() - start) * 1000)
        out.append(Latency(runtime, size, statistics.median(times), percentile(times, 95), len(times)))
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / PERCENT * len(s)) - 1))]


# ----------------------------------------------------------------------------------------------------------------------
# Publishing (used by `hft push --with-onnx`)


@dataclass
class OnnxPublication:
    uploads: list[tuple[str, Path]]  # (path in the Hub repo under onnx/, local file)
    card: dict[str, Any]  # the model card's ONNX section: files, opset, parity, metric table, latency
    task: str  # what was exported: push checks it is the run being published
    source: str
    run_id: str | None


def onnx_publication(export_dir: str | Path) -> OnnxPublication:
    """What to upload from an export and what the card says about it; refuses a folder that is no complete export."""
    folder = Path(export_dir)
    report = read_report(folder)
    uploads = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        real = require_inside(path, folder, "export file")
        if not real.is_file():
            raise ExportError(f"{path} is not a file; an hft export holds only files")
        uploads.append((ONNX_PREFIX + path.name, real))
    missing = [name for name in report.files if not (folder / name).is_file()]
    if missing:
        raise ExportError(f"{folder} is incomplete: {', '.join(missing)} listed in {REPORT} but missing")
    card = {
        "files": {ONNX_PREFIX + name: report.files[name] for name in report.model_files},  # fp32 first
        "opset": report.opset,
        "split": report.split,
        "parity": {"max_abs_diff": report.parity.max_abs_diff, "argmax_agreement": report.parity.argmax_agreement,
                   "examples": report.parity.examples, "max_diff": report.max_diff},
        "metrics": [{"runtime": row.runtime, **row.metrics} for row in report.metrics],
        "metric_drop_points": report.metric_drop_points,
        "latency": [asdict(row) for row in report.latency],
    }
    return OnnxPublication(uploads, card, report.task, report.source, report.run_id)
