"""`hft push --merge`: merge the LoRA adapter into its base and publish the result only if its logits match the
adapter's on a few fixed inputs (the task's `probe_inputs`), within what the weights' precision allows.

An adapter trained on a 4-/8-bit base (QLoRA) is merged into that base dequantized to its compute dtype (PEFT would
re-quantize merged bitsandbytes layers), with the looser tolerance of quantization.MERGE_ATOL, said in the message.

torch and transformers are imported here, inside functions: an adapter push never needs them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import PushError

if TYPE_CHECKING:
    from hftoolkit.publish.inspect import RunFacts

log = logging.getLogger("hftoolkit")
# float32 logits of merged weights vs base + adapter differ by summation order only; lower precisions by far more.
MERGE_ATOL = {"float32": 1e-4, "float64": 1e-6, "bfloat16": 5e-2, "float16": 1e-2}
DEFAULT_MERGE_ATOL = 1e-2  # a dtype not listed above: as loose as float16


def logits(model: Any, inputs: list[dict]) -> list:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(**{k: v.to(device) for k, v in x.items()}).logits.float().cpu() for x in inputs]


def compare_logits(a: list, b: list, atol: float, same_argmax: bool = True) -> tuple[bool, float]:
    """(same within `atol`, and with `same_argmax` the same argmax everywhere; the largest absolute difference)."""
    import torch

    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    argmax_ok = not same_argmax or all(torch.equal(x.argmax(-1), y.argmax(-1)) for x, y in zip(a, b))
    return diff <= atol and argmax_ok, diff


def merge_adapter(facts: RunFacts, out_dir: Path) -> str:
    """Merge the LoRA adapter into the base, check the merged logits against the adapter's, save safetensors."""
    from hftoolkit.modeling import load_trained

    model, processor = load_trained(facts.task, facts.recipe, facts.run.model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    atol, into = MERGE_ATOL.get(dtype, DEFAULT_MERGE_ATOL), ""
    probe = facts.task.probe_inputs(processor, facts.recipe.dataset.max_length)
    before = logits(model, probe)
    quantized = facts.recipe.model.quantization
    if quantized is not None:
        from hftoolkit.quantization import MERGE_ATOL as QUANTIZED_ATOL

        model, _ = load_trained(facts.task, facts.recipe, facts.run.model, dequantize=True)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        atol, into = QUANTIZED_ATOL[quantized.bits], f" (the {quantized.bits}-bit base dequantized to {dtype})"
        log.warning("--merge: the adapter was trained on a %d-bit base; merging it into that base dequantized to %s "
                    "(a looser logit check: %g)", quantized.bits, dtype, atol)
    merged = model.merge_and_unload()
    after = logits(merged, probe)
    # Dequantized weights move the logits by up to the stated tolerance, so near-tied tokens may swap: that bound is
    # the check for a quantized base.
    ok, diff = compare_logits(before, after, atol, same_argmax=quantized is None)
    if not ok:
        raise PushError(
            f"--merge: the merged model's logits differ from the adapter's by up to {diff:.2e} (allowed {atol:g} in "
            f"{dtype}) or change a prediction; not publishing it. Push the adapter instead (without --merge)"
        )
    merged.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    return f"merged logits{into} match the adapter's on {len(probe)} inputs (max |diff| {diff:.1e}, allowed {atol:g} in {dtype})"
