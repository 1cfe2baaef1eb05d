"""`hft export RUN_DIR|REPO_ID --onnx OUT_DIR`: the trained model as ONNX, parity-checked, optionally int8.

Order matters: what can be refused cheaply (OUT_DIR, the run, the task) is checked before the model loads, and
everything is written into a staging folder that becomes OUT_DIR only after every check passed, so a refusal or
a failure leaves nothing behind (hftoolkit/deploy/report.py).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from hftoolkit.deploy.report import ExportReport, Parity
    from hftoolkit.deploy.run_access import EvaluationSplit, TrainedRun

log = logging.getLogger("hftoolkit")

DEFAULT_MAX_DIFF = 1e-4
DEFAULT_MAX_DROP = 1.0  # points of the checked metric
QUANTIZE_CHOICES = ("int8",)
TRACE_ROWS = 2  # the exporter specialises an axis it sees at size 1, so the traced batch has two rows
DEPLOY_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


@dataclass
class ExportOptions:
    quantize: str | None = None
    opset: int | None = None
    max_diff: float = DEFAULT_MAX_DIFF
    max_drop: float = DEFAULT_MAX_DROP
    force: bool = False


def export(target: str | Path, out_dir: str | Path, options: ExportOptions) -> tuple[Path, ExportReport]:
    from hftoolkit.deploy import onnx_export as ox
    from hftoolkit.deploy.report import LATENCY_BATCHES, MODEL, ExportReport, check_out_dir, measure_latency, staged
    from hftoolkit.deploy.extras import require_extra
    from hftoolkit.deploy.run_access import evaluation_split, export_collator, load_model, open_trained

    require_extra("export")
    out = Path(out_dir)
    check_out_dir(out)
    trained = open_trained(target)
    model, processor = load_model(trained)
    model = ox.merged_fp32(model)  # in memory: the run directory keeps its adapter
    evaluation = evaluation_split(trained, processor)
    collate = export_collator(trained, processor)
    sample = ox.labelled_batches(evaluation.features, collate, limit=ox.PARITY_EXAMPLES)
    reference = [ox.torch_logits(model, inputs) for inputs, _ in sample]

    with staged(out) as stage:
        trace = ox.tiled_batch(evaluation.features, collate, TRACE_ROWS)
        opset = ox.export_graph(model, trace, stage / MODEL, options.opset)
        fp32 = ox.ort_session(stage / MODEL)
        parity = ox.compare(reference, [ox.ort_logits(fp32, inputs) for inputs, _ in sample], sample)
        _check_parity(parity, options.max_diff, evaluation.split)
        report = ExportReport(
            task=trained.recipe.task, source=trained.source, run_id=trained.manifest.run_id, opset=opset,
            opset_requested=options.opset, inputs=list(trace), labels=evaluation.labels, split=evaluation.split,
            parity=parity, max_diff=options.max_diff, predict_options=trained.task.predict_options(trained.recipe),
        )
        runtimes: dict[str, Callable] = {"pytorch-fp32": partial(ox.torch_logits, model), "onnx-fp32": partial(ox.ort_logits, fp32)}
        if options.quantize:
            _add_int8(report, trained, evaluation, collate, stage, runtimes, options, sample, reference)
        batches = {size: ox.tiled_batch(evaluation.features, collate, size) for size in LATENCY_BATCHES}
        report.latency = [row for name, run in runtimes.items() for row in measure_latency(name, run, batches)]
        _write_files(stage, trained, processor, report)
    log.info("export written to %s", out)
    return out, report


def _check_parity(parity: Parity, max_diff: float, split: str) -> None:
    from hftoolkit.errors import ExportError

    if not parity.max_abs_diff <= max_diff:  # also catches NaN
        raise ExportError(
            f"parity check failed: ONNX Runtime and PyTorch logits differ by up to {parity.max_abs_diff:.3g} on "
            f"{parity.examples} {split!r} examples (argmax agreement {parity.argmax_agreement:.1%}), over --max-diff "
            f"{max_diff:g}; nothing was written"
        )


def _add_int8(
    report: ExportReport, trained: TrainedRun, evaluation: EvaluationSplit, collate: Callable, stage: Path,
    runtimes: dict[str, Callable], options: ExportOptions, sample: list, reference: list,
) -> None:
    """model.int8.onnx, its parity, the metric table on the whole split and the drop check (may refuse)."""
    from hftoolkit.deploy import onnx_export as ox
    from hftoolkit.deploy.quantize import check_drop, quantize_int8, score
    from hftoolkit.deploy.report import MODEL, MODEL_INT8, MetricRow

    quantize_int8(stage / MODEL, stage / MODEL_INT8)
    runtimes["onnx-int8"] = partial(ox.ort_logits, ox.ort_session(stage / MODEL_INT8))
    report.parity_int8 = ox.compare(reference, [runtimes["onnx-int8"](inputs) for inputs, _ in sample], sample)
    whole = ox.labelled_batches(evaluation.features, collate)
    report.metrics = [MetricRow(name, score(trained, evaluation.labels, whole, run)) for name, run in runtimes.items()]
    check = check_drop(report.metrics, options.max_drop, options.force, trained.task.checked_metric)
    report.checked_metric, report.metric_drop_points = check.metric, check.drop_points
    report.max_drop, report.forced = options.max_drop, check.refused


def _write_files(stage: Path, trained: TrainedRun, processor: Any, report: ExportReport) -> None:
    from hftoolkit.commands.finetune import package_versions
    from hftoolkit.deploy.report import MODEL, README, file_sizes, write_report
    from hftoolkit.paths import read_boundary, require_inside
    from transformers import AutoConfig

    processor.save_pretrained(str(stage))
    # The run's own config (id2label, architecture) as saved, not the in-memory one with use_cache switched off.
    config = require_inside(trained.model_dir / "config.json", read_boundary(trained.model_dir), "model config")
    shutil.copyfile(config, stage / "config.json")
    title = f"ONNX export of {trained.source} ({trained.recipe.task})"
    usage = trained.task.onnx_usage(MODEL, processor, AutoConfig.from_pretrained(str(stage)))
    (stage / README).write_text(f"# {title}\n\nRun it with onnxruntime alone (no torch, no transformers):\n\n{usage}\n")
    report.files = file_sizes(stage)
    report.versions = {**package_versions(), **_deploy_versions()}
    write_report(stage, report)


def _deploy_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in DEPLOY_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def summary_lines(out: Path, report: ExportReport) -> list[str]:
    """What `hft export` prints: where, opset, parity, the metric table, latency and file sizes."""
    p = report.parity
    lines = [
        f"exported {report.source} ({report.task}) to {out}: opset {report.opset}, inputs {', '.join(report.inputs)}",
        f"parity on {p.examples} {report.split!r} examples: max |logit diff| {p.max_abs_diff:.2e} (allowed "
        f"{report.max_diff:g}), argmax agreement {p.argmax_agreement:.1%} of {p.compared}",
    ]
    if report.parity_int8:
        q = report.parity_int8
        lines.append(f"int8 vs PyTorch: max |logit diff| {q.max_abs_diff:.2e}, argmax agreement {q.argmax_agreement:.1%}")
    if report.metrics:
        names = list(report.metrics[0].metrics)
        lines.append(f"metrics on the whole {report.split!r} split:  " + "  ".join(f"{n:>10}" for n in names))
        lines += [f"  {row.runtime:<14}" + "  ".join(f"{row.metrics[n]:>10.4f}" for n in names) for row in report.metrics]
        if report.checked_metric:
            verdict = "forced" if report.forced else "ok"
            lines.append(f"int8 drop: {report.metric_drop_points:.2f} points of {report.checked_metric} "
                         f"(allowed {report.max_drop:g}): {verdict}")
    for row in report.latency:
        lines.append(f"latency {row.runtime} batch {row.batch}: p50 {row.p50_ms:.2f} ms, p95 {row.p95_ms:.2f} ms")
    lines.append("files: " + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in report.files.items()))
    return lines
