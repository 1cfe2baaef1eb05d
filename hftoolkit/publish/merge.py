"""`hft push --merge`: merge the LoRA adapter into its base and publish the result only if its logits match the
adapter's on a few fixed inputs (the task's `probe_inputs`), within what the weights' precision allows.

torch and transformers are imported here, inside functions: an adapter push never needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import PushError

if TYPE_CHECKING:
    from hftoolkit.publish.inspect import RunFacts

# float32 logits of merged weights vs base + adapter differ by summation order only; lower precisions by far more.
MERGE_ATOL = {"float32": 1e-4, "float64": 1e-6, "bfloat16": 5e-2, "float16": 1e-2}
DEFAULT_MERGE_ATOL = 1e-2  # a dtype not listed above: as loose as float16


def logits(model: Any, inputs: list[dict]) -> list:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(**{k: v.to(device) for k, v in x.items()}).logits.float().cpu() for x in inputs]


def compare_logits(a: list, b: list, atol: float) -> tuple[bool, float]:
    """(same within `atol` and same argmax everywhere, the largest absolute difference)."""
    import torch

    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    same_argmax = all(torch.equal(x.argmax(-1), y.argmax(-1)) for x, y in zip(a, b))
    return diff <= atol and same_argmax, diff


def merge_adapter(facts: RunFacts, out_dir: Path) -> str:
    """Merge the LoRA adapter into the base, check the merged logits against the adapter's, save safetensors."""
    from hftoolkit.modeling import load_trained

    model, processor = load_trained(facts.task, facts.recipe, facts.run.model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    atol = MERGE_ATOL.get(dtype, DEFAULT_MERGE_ATOL)
    probe = facts.task.probe_inputs(processor, facts.recipe.dataset.max_length)
    before = logits(model, probe)
    merged = model.merge_and_unload()
    after = logits(merged, probe)
    ok, diff = compare_logits(before, after, atol)
    if not ok:
        raise PushError(
            f"--merge: the merged model's logits differ from the adapter's by up to {diff:.2e} (allowed {atol:g} in "
            f"{dtype}) or change a prediction; not publishing it. Push the adapter instead (without --merge)"
        )
    merged.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    return f"merged logits match the adapter's on {len(probe)} inputs (max |diff| {diff:.1e}, allowed {atol:g} in {dtype})"
