"""What the model card says about preference tuning, a quantized base and LoRA variants (card.py renders it).

Rows and phrases appear only when the run used them, so SFT cards (and the golden card) stay as they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe

# (library, class) each objective trains with: the card's "Trained with ..." sentence and hyperparameter row.
TRAINERS = {"sft": ("the transformers", "Trainer"), "dpo": ("TRL's", "DPOTrainer"), "orpo": ("TRL's", "ORPOTrainer")}


def trainer_phrase(recipe: Recipe) -> str:
    """`the transformers `Trainer``, or TRL's trainer of the objective (Markdown: the class in a code span)."""
    library, cls = TRAINERS[recipe.training.objective]
    return f"{library} `{cls}`"


def tuning_hyperparameters(recipe: Recipe) -> list[tuple[str, Any]]:
    """Objective, quantized-base and LoRA-variant rows of the hyperparameter table (raw values; the card escapes)."""
    t, lora, q = recipe.training, recipe.lora, recipe.model.quantization
    rows: list[tuple[str, Any]] = []
    if t.objective != "sft":
        rows += [("objective", f"{t.objective} (TRL {TRAINERS[t.objective][1]})"), ("beta", t.beta)]
        rows += [("DPO loss", t.loss_type)] if t.loss_type else []
    if q is not None:
        kind = f"4-bit {q.type}{', double quantization' if q.double_quant else ''}" if q.bits == 4 else "8-bit (LLM.int8)"
        rows.append(("base model loaded", f"{kind} through bitsandbytes, compute dtype {q.compute_dtype}"))
    if lora.enabled:
        rows += [(name, True) for name, on in (("DoRA", lora.use_dora), ("rsLoRA", lora.use_rslora)) if on]
        if lora.init != "default":
            rows.append(("LoRA init", lora.init))
    return rows


def quantized_loading(recipe: Recipe) -> dict[str, Any] | None:
    """How the card's code loads the base the adapter was trained on (BitsAndBytesConfig arguments), if quantized."""
    q = recipe.model.quantization
    if q is None:
        return None
    if q.bits == 8:
        return {"bits": 8, "args": "load_in_8bit=True"}
    return {"bits": 4, "args": f'load_in_4bit=True, bnb_4bit_quant_type="{q.type}", bnb_4bit_use_double_quant={q.double_quant}'}
