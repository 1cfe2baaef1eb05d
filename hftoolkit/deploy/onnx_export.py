"""ONNX export with PyTorch's own exporter (`torch.onnx.export(dynamo=True)`) and the parity check that guards it.

The model is exported as the run trained it, merged: a LoRA adapter is merged into its base in memory
(`merge_and_unload`; the run directory is not touched), in float32, with `use_cache=False` (the graph scores a
whole sequence; no KV cache). The graph's inputs are exactly the tensors the task's collator puts in a batch
(input_ids, attention_mask, token_type_ids ... or pixel_values), with dynamic batch and sequence axes; its one
output is `logits`. Parity compares ONNX Runtime with PyTorch on real examples of the run's evaluation split:
the largest |logit difference| and the share of equal argmaxes (token-level outputs where the attention mask is 1).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hftoolkit.deploy.report import Parity
from hftoolkit.errors import ExportError

if TYPE_CHECKING:
    import numpy as np

    from datasets import Dataset

log = logging.getLogger("hftoolkit")

MIN_OPSET = 18  # what ONNX Runtime and torch's exporter are tested with together; the exporter may raise a request
OUTPUT = "logits"
LABELS = "labels"
PARITY_EXAMPLES = 64
BATCH_ROWS = 16  # rows per batch for parity and metrics (a memory bound for causal LM logits, not a tuning knob)


def merged_fp32(model: Any) -> Any:
    """The trained model as one plain float32 module: adapter merged in memory, no KV cache."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = model.float().eval()
    model.config.use_cache = False
    return model


def labelled_batches(features: Dataset, collate: Callable, limit: int | None = None) -> list[tuple[dict, Any]]:
    """(inputs, labels) batches of the first `limit` rows (all rows without a limit), collated as in evaluation."""
    n = len(features) if limit is None else min(limit, len(features))
    out = []
    for start in range(0, n, BATCH_ROWS):
        batch = dict(collate([features[i] for i in range(start, min(n, start + BATCH_ROWS))]))
        out.append((batch, batch.pop(LABELS, None)))
    return out


def tiled_batch(features: Dataset, collate: Callable, size: int) -> dict:
    """One batch of `size` rows (the split's first rows, repeated when it has fewer), without labels."""
    batch = dict(collate([features[i % len(features)] for i in range(size)]))
    batch.pop(LABELS, None)
    return batch


def logits_module(model: Any, names: list[str]) -> Any:
    """The module that is exported: the model as a function of its batch tensors (in `names` order) -> logits."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(names, tensors))).logits

    return Logits().eval()


def export_graph(model: Any, sample: dict[str, Any], path: Path, opset: int | None) -> int:
    """Export `model` traced on `sample` (batch of at least two rows) to `path`; returns the opset written."""
    import torch
    from torch.export import Dim

    names = list(sample)
    batch, sequence = Dim("batch"), Dim("sequence")
    # Token tensors (integer, [batch, sequence]) vary in both axes; pixel values only in the batch axis.
    shapes = tuple({0: batch, 1: sequence} if t.ndim == 2 and not t.is_floating_point() else {0: batch} for t in sample.values())
    try:
        with warnings.catch_warnings():
            # The exporter's own deprecation notes and axis-renaming remarks say nothing the user can act on.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            program = torch.onnx.export(
                logits_module(model, names), tuple(sample.values()), dynamic_shapes={"tensors": shapes},
                input_names=names, output_names=[OUTPUT], opset_version=opset, dynamo=True, verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportError(
            f"{type(model).__name__} (model type {model.config.model_type!r}) cannot be exported to ONNX by torch.onnx.export "
            f"(dynamo): {type(e).__name__}: {first}"
        ) from None
    program.save(str(path))
    written = written_opset(path)
    if written < MIN_OPSET:
        raise ExportError(f"the exporter wrote ONNX opset {written}; hft needs opset {MIN_OPSET} or later: pass --opset {MIN_OPSET}")
    if opset is not None and written != opset:
        log.info("asked for opset %d; the exporter wrote opset %d", opset, written)
    return written


def written_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def ort_errors() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's exception types (they derive from Exception directly, not from one base)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
             "RuntimeException", "EngineError", "EPFail")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except ort_errors() as e:
        raise ExportError(f"ONNX Runtime cannot load {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def ort_logits(session: Any, inputs: dict[str, Any]) -> np.ndarray:
    """Logits from ONNX Runtime for a batch of torch tensors (only the graph's inputs are fed)."""
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    return session.run([OUTPUT], feed)[0]


def torch_logits(model: Any, inputs: dict[str, Any]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(**inputs).logits.float().numpy()


def compare(reference: list[np.ndarray], candidate: list[np.ndarray], batches: list[tuple[dict, Any]]) -> Parity:
    """Worst |difference| and argmax agreement; [batch, sequence, classes] outputs are compared token by token
    where the attention mask is 1 (padding positions hold nothing anyone reads)."""
    import numpy as np

    worst, agree, total, rows, tokens = 0.0, 0, 0, 0, False
    for ref, got, (inputs, _) in zip(reference, candidate, batches):
        rows += ref.shape[0]
        mask = inputs.get("attention_mask")
        if ref.ndim == 3 and mask is not None:
            keep = mask.numpy().astype(bool)
            ref, got, tokens = ref[keep], got[keep], True
        worst = max(worst, float(np.abs(ref.astype(np.float64) - got).max()))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += int(np.prod(ref.shape[:-1]))
    return Parity(worst, agree / max(total, 1), rows, "tokens" if tokens else "examples")
