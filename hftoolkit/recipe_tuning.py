"""Recipe keys for preference tuning (training.objective), quantized loading (model.quantization) and LoRA variants.

- `model.quantization` and the LoRA variants (`lora.use_dora`, `use_rslora`, `init`) are sections and keys every task
  has (recipe/schema.py declares them with the types from here); `tuning_problems` holds their cross-section rules.
- The objective keys (`training.objective`, `beta`, `loss_type`, `dataset.skip_bad_pairs`) are causal-lm's own: the
  task adds `PREFERENCE_FIELDS` to its recipe fields and calls `preference_problems` from its `check_recipe`.
- Per-objective defaults: a training key the recipe leaves out (learning rate, epochs, beta, loss type) is filled with
  its objective's default before validation (recipe/defaults.py), so the resolved recipe says what ran.
Light on purpose: only pydantic is imported (the schema, and so `hft --help`, imports this).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from hftoolkit.recipe.base import Section

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe

Objective = Literal["sft", "dpo", "orpo"]
PREFERENCE_OBJECTIVES = ("dpo", "orpo")
# TRL DPOTrainer loss types offered (DPOConfig.loss_type); the others need settings hft does not expose.
DpoLoss = Literal["sigmoid", "ipo", "hinge"]
# PEFT init_lora_weights choices offered; "default" is PEFT's True (B = 0: the adapter starts as a no-op).
LoraInit = Literal["default", "gaussian", "pissa", "olora"]
# Inits that rewrite the base weights (the adapter holds their principal part): saved converted, see lora_variants.py.
BASE_REWRITING_INITS = ("pissa", "olora")

# Chosen by measurement: bench/RESULTS.md "preference-defaults" (LoRA r=16 on SmolLM2-135M-Instruct, real HH-RLHF
# pairs, held-out reward accuracy first, margin second). DPO: 2e-4 was within one held-out pair of the best accuracy
# with 4x its margin; beta 0.5 did not beat 0.1. ORPO: 1e-3 beat 2e-4 by two pairs. Both measured at 2 epochs.
OBJECTIVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "dpo": {"learning_rate": 2e-4, "epochs": 2.0, "beta": 0.1, "loss_type": "sigmoid"},
    "orpo": {"learning_rate": 1e-3, "epochs": 2.0, "beta": 0.1},
}
# The objectives each objective-specific training key applies to.
OBJECTIVE_KEYS = {"beta": PREFERENCE_OBJECTIVES, "loss_type": ("dpo",)}

PREFERENCE_FIELDS: dict[str, tuple[Any, Any]] = {
    "training.objective": (Objective, Field(
        "sft", description="Causal LM: sft, or preference tuning through TRL: dpo (DPOTrainer) or orpo (ORPOTrainer); "
        "dpo/orpo fill their own learning_rate, epochs and beta defaults for the keys a recipe leaves out.",
    )),
    "training.beta": (float | None, Field(None, gt=0, description="DPO / ORPO beta (default per objective: 0.1).")),
    "training.loss_type": (DpoLoss | None, Field(None, description="DPO loss (TRL DPOConfig.loss_type; default sigmoid).")),
    "dataset.skip_bad_pairs": (bool, Field(
        False, description="DPO / ORPO: drop bad preference pairs (empty, identical, differing prompts) and count them "
        "in the data report, instead of stopping at the first one.",
    )),
}


class QuantizationSection(Section):
    """Load the base model quantized through bitsandbytes (QLoRA): LoRA trains on top of 4- or 8-bit weights."""

    bits: Literal[4, 8] = Field(description="4 (NF4/FP4 through bitsandbytes) or 8 (LLM.int8).")
    type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (4 bits only).")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (4 bits only; ~0.4 bit per weight less).")
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype the quantized layers compute in; auto = the training precision."
    )


def preference_problems(recipe: Recipe) -> list[str]:
    """causal-lm's rules for the objective keys and the preference columns (chosen / rejected, prompt optional)."""
    t, c, ds = recipe.training, recipe.dataset.columns, recipe.dataset
    problems = [
        f"training.{key} is a setting of objective {' or '.join(owners)}, not {t.objective}; remove it"
        for key, owners in OBJECTIVE_KEYS.items() if getattr(t, key) is not None and t.objective not in owners
    ]
    if t.objective not in PREFERENCE_OBJECTIVES:
        if c.chosen or c.rejected:
            problems.append("dataset.columns.chosen and rejected are for training.objective dpo or orpo (preference pairs)")
        if ds.skip_bad_pairs:
            problems.append("dataset.skip_bad_pairs is for preference pairs (training.objective dpo or orpo)")
        return problems
    extra = [role for role in ("text", "messages", "response") if getattr(c, role)]
    if extra or not (c.chosen and c.rejected):
        given = f" (given: dataset.columns.{extra[0]})" if extra else ""
        problems.append(
            f"training.objective {t.objective} needs dataset.columns.chosen and rejected (prompt optional: without it "
            f"the prompt is the turns the two conversations share){given}"
        )
    if ds.batching != "padded":
        problems.append(f"dataset.batching {ds.batching} is for SFT; TRL batches preference pairs padded")
    if recipe.evaluation.metrics is not None:
        problems.append(
            f"evaluation.metrics is not used with training.objective {t.objective}: TRL's own preference metrics "
            "(rewards/accuracies, rewards/margins, logps/...) are reported; remove it"
        )
    return problems


def tuning_problems(recipe: Recipe) -> list[str]:
    """Rules of model.quantization and the LoRA variants across sections (one message each)."""
    q = recipe.model.quantization
    if q is None:
        return []
    problems = []
    if q.bits == 8 and (q.type != "nf4" or not q.double_quant):
        problems.append("model.quantization.type and double_quant are 4-bit settings; remove them with bits: 8")
    if not recipe.lora.enabled:
        problems.append(
            "model.quantization needs LoRA (lora.enabled: true): quantized weights cannot be trained, only an adapter "
            "on top of them (QLoRA)"
        )
    if recipe.task != "causal-lm":
        problems.append(f"model.quantization is for task causal-lm; a {recipe.task} head would be quantized with the body")
    if recipe.lora.init in BASE_REWRITING_INITS:
        problems.append(f"lora.init {recipe.lora.init} rewrites the base weights, which a quantized base cannot hold")
    return problems
