"""LoRA inits that rewrite the base weights (PiSSA, OLoRA): saving an adapter that applies to the original base.

PiSSA and OLoRA move the principal part of each adapted weight into the adapter (W = W_res + A0 B0), so the trained
adapter only makes sense on W_res, which exists in this process alone. PEFT converts it into a plain LoRA adapter on
the original W (rank 2r: [A | A0] x [B | -B0]) when saving with `path_initial_model_for_weight_conversion`; that
needs the adapter as it was initialised, kept here in memory from before the first step. The result reloads onto the
untouched base like any LoRA adapter, which is what `hft evaluate`, `predict`, `push` and the Hub load.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hftoolkit.recipe_tuning import BASE_REWRITING_INITS

_INITIAL = "initial"  # PEFT loads the initial adapter from <folder>/<this name>


def initial_adapter(model: Any, recipe: Any) -> dict[str, Any] | None:
    """The adapter's weights as initialised, for inits that rewrite the base; None for the others."""
    if not recipe.lora.enabled or recipe.lora.init not in BASE_REWRITING_INITS:
        return None
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def save_converted(model: Any, out_dir: Path, initial: dict[str, Any]) -> None:
    """Overwrite the saved adapter in `out_dir` by its conversion to a plain LoRA adapter on the original base."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="hft-lora-init-") as tmp:
        folder = Path(tmp) / _INITIAL
        folder.mkdir()
        save_file(initial, str(folder / "adapter_model.safetensors"))
        # PEFT writes the initial adapter's config there itself (init_lora_weights: True) before loading it back.
        model.save_pretrained(
            str(out_dir), selected_adapters=["default"], path_initial_model_for_weight_conversion=str(folder)
        )
