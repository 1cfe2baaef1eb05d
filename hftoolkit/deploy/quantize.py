"""int8: ONNX Runtime dynamic quantization, and the metric table that decides whether its accuracy cost is acceptable.

Dynamic quantization stores weights as int8 and quantizes activations on the fly (no calibration data needed).
Its cost is measured, not assumed: the run's own metrics on the whole evaluation split for PyTorch fp32, ONNX
fp32 and ONNX int8, through the task's `preprocess_logits_for_metrics` and `metrics`, exactly as `hft evaluate`
scores. The checked metric is the task's `checked_metric` (entity F1 for token classification), else the first of
the run's metrics where higher is better (accuracy for classifiers, f1_micro for multi-label, pearsonr for
regression, next_token_accuracy for causal LM); its drop from PyTorch fp32 to int8 is in points (x100).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hftoolkit.deploy.report import PERCENT, MetricRow
from hftoolkit.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

    from hftoolkit.deploy.run_access import TrainedRun

log = logging.getLogger("hftoolkit")

HIGHER_IS_BETTER = (
    "accuracy", "f1", "precision", "recall", "next_token_accuracy", "f1_micro", "f1_macro", "exact_match_accuracy",
    "pearsonr", "spearmanr",
)
IGNORE_INDEX = -100  # label / prediction padding that metrics skip (as in training)


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Batches joined along rows; token-level arrays of different widths are padded (ids with -100, floats with 0)."""
    import numpy as np

    if arrays[0].ndim == 1:
        return np.concatenate(arrays)
    width = max(a.shape[1] for a in arrays)
    padded = []
    for a in arrays:
        fill = IGNORE_INDEX if np.issubdtype(a.dtype, np.integer) else 0
        padded.append(np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=fill))
    return np.concatenate(padded)


def score(trained: TrainedRun, labels: list[str] | None, batches: list[tuple[dict, Any]], logits: Callable) -> dict[str, float]:
    """The run's metrics for `logits(inputs)` over `batches`, reduced and computed by the task as in evaluation."""
    import numpy as np
    import torch
    from transformers import EvalPrediction

    task = trained.task
    parts: list[list[np.ndarray]] = []
    references = []
    for inputs, label in batches:
        reduced = task.preprocess_logits_for_metrics(torch.from_numpy(logits(inputs)), label)
        reduced = reduced if isinstance(reduced, tuple) else (reduced,)
        parts = parts or [[] for _ in reduced]
        for part, r in zip(parts, reduced):
            part.append(np.asarray(r))
        references.append(label.numpy())
    joined = [_concat(p) for p in parts]
    predictions = joined[0] if len(joined) == 1 else tuple(joined)
    scores = task.metrics(trained.recipe, labels)(EvalPrediction(predictions=predictions, label_ids=_concat(references)))
    return {k: float(v) for k, v in scores.items()}


@dataclass
class DropCheck:
    metric: str | None
    drop_points: float | None
    refused: bool


def check_drop(rows: list[MetricRow], max_drop: float, force: bool, preferred: str | None = None) -> DropCheck:
    """Compare int8 with PyTorch fp32 on the checked metric (the task's `checked_metric` when the run reports it,
    else the first where higher is better); a drop over `max_drop` points refuses unless forced."""
    by_runtime = {row.runtime: row.metrics for row in rows}
    reference, int8 = by_runtime["pytorch-fp32"], by_runtime["onnx-int8"]
    metric = preferred if preferred in reference else next((m for m in reference if m in HIGHER_IS_BETTER), None)
    if metric is None:
        log.warning("none of the run's metrics (%s) is one where higher is better; the int8 drop is not checked", ", ".join(reference))
        return DropCheck(None, None, False)
    drop = (reference[metric] - int8[metric]) * PERCENT
    table = "; ".join(f"{row.runtime} {row.metrics[metric]:.4f}" for row in rows)
    if drop > max_drop and not force:
        raise ExportError(
            f"int8 quantization costs {drop:.2f} points of {metric} ({table}), more than --max-drop {max_drop:g}; "
            "nothing was written: export without --quantize, raise --max-drop, or pass --force to write it anyway"
        )
    if drop > max_drop:
        log.warning("--force: int8 costs %.2f points of %s (%s), over --max-drop %g", drop, metric, table, max_drop)
    return DropCheck(metric, drop, drop > max_drop)
