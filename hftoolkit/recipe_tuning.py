"""Recipe keys for preference tuning (training.objective), quantized loading (model.quantization) and LoRA variants.

The sections and cross-section rules live here so recipe.py stays the one schema while these features stay in one
place. Light on purpose: only pydantic is imported (recipe.py, and so `hft --help`, imports this).

Per-objective defaults: a key the recipe leaves out (learning rate, epochs, beta, loss type) is filled with its
objective's default before validation, so the resolved recipe says what ran. The numbers come from the sweep in
bench/RESULTS.md (preference-defaults); the SFT values are the schema's field defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from hftoolkit.recipe import Recipe

Objective = Literal["sft", "dpo", "orpo"]
PREFERENCE_OBJECTIVES = ("dpo", "orpo")
# TRL DPOTrainer loss types offered (DPOConfig.loss_type); others need settings hft does not expose.
DpoLoss = Literal["sigmoid", "ipo", "hinge"]
# PEFT init_lora_weights choices offered; "default" is PEFT's True (B = 0: the adapter starts as a no-op).
LoraInit = Literal["default", "gaussian", "pissa", "olora"]
# Inits that rewrite the base weights (the adapter holds the principal part): saved converted, see lora_variants.py.
BASE_REWRITING_INITS = ("pissa", "olora")

# Chosen by measurement (bench/RESULTS.md, preference-defaults: LoRA r=16 on SmolLM2-135M-Instruct, HH-RLHF pairs).
OBJECTIVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "dpo": {"learning_rate": 5e-5, "epochs": 1.0, "beta": 0.1, "loss_type": "sigmoid"},
    "orpo": {"learning_rate": 5e-5, "epochs": 1.0, "beta": 0.1},
}
# Which objectives each objective-specific training key applies to.
OBJECTIVE_KEYS = {"beta": PREFERENCE_OBJECTIVES, "loss_type": ("dpo",)}


class QuantizationSection(BaseModel):
    """Load the base model quantized through bitsandbytes (QLoRA): LoRA trains on top of 4- or 8-bit weights."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    bits: Literal[4, 8] = Field(description="4 (NF4/FP4 through bitsandbytes) or 8 (LLM.int8).")
    type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (4 bits only).")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (4 bits only; saves ~0.4 bit per weight).")
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype the quantized layers compute in; auto = the training precision."
    )

    def problems(self) -> list[str]:
        if self.bits == 8 and (self.type != "nf4" or not self.double_quant):
            return ["model.quantization.type and double_quant are 4-bit settings; remove them with bits: 8"]
        return []


def fill_objective_defaults(data: Any) -> Any:
    """Before validation of `training`: the objective's defaults for the keys the recipe leaves out."""
    if not isinstance(data, dict):
        return data
    defaults = OBJECTIVE_DEFAULTS.get(data.get("objective"), {})  # type: ignore[arg-type]
    return {**{k: v for k, v in defaults.items() if k not in data}, **data}


def objective_problems(training: Any) -> list[str]:
    """Objective-specific training keys given for an objective they do not apply to."""
    return [
        f"training.{key} is a setting of objective {' or '.join(owners)}, not {training.objective}; remove it"
        for key, owners in OBJECTIVE_KEYS.items()
        if getattr(training, key) is not None and training.objective not in owners
    ]


def preference_columns_problem(recipe: Recipe) -> str | None:
    """Preference objectives read prompt (optional) / chosen / rejected; SFT reads neither chosen nor rejected."""
    c = recipe.dataset.columns
    if recipe.training.objective not in PREFERENCE_OBJECTIVES:
        if c.chosen or c.rejected:
            return "dataset.columns.chosen and rejected are for training.objective dpo or orpo (preference pairs)"
        return None
    if recipe.task != "causal-lm":
        return f"training.objective {recipe.training.objective} needs task causal-lm (it tunes a generator), not {recipe.task}"
    extra = [role for role in ("text", "messages", "response") if getattr(c, role)]
    if extra or not (c.chosen and c.rejected):
        given = f" (given: dataset.columns.{extra[0]})" if extra else ""
        return (
            f"training.objective {recipe.training.objective} needs dataset.columns.chosen and rejected (prompt optional: "
            f"without it the prompt is the turns the two conversations share){given}"
        )
    if recipe.dataset.batching != "padded":
        return f"dataset.batching {recipe.dataset.batching} is for SFT; preference pairs are batched padded by TRL"
    return None


def tuning_problems(recipe: Recipe) -> list[str]:
    """Cross-section rules of quantization, LoRA variants and objectives (one message each)."""
    problems = []
    column_problem = preference_columns_problem(recipe)
    if column_problem:
        problems.append(column_problem)
    q = recipe.model.quantization
    if q is not None:
        problems += q.problems()
        if not recipe.lora.enabled:
            problems.append(
                "model.quantization needs LoRA (lora.enabled: true): quantized weights cannot be trained, only an "
                "adapter on top of them (QLoRA)"
            )
        if recipe.task != "causal-lm":
            problems.append(
                f"model.quantization is for task causal-lm; a {recipe.task} head would be quantized with the body"
            )
        if recipe.lora.init in BASE_REWRITING_INITS:
            problems.append(f"lora.init {recipe.lora.init} rewrites the base weights, which a quantized base cannot hold")
    preference = recipe.training.objective in PREFERENCE_OBJECTIVES
    if recipe.dataset.skip_bad_pairs and not preference:
        problems.append("dataset.skip_bad_pairs is for preference pairs (training.objective dpo or orpo)")
    if preference and recipe.evaluation.metrics is not None:
        problems.append(
            f"evaluation.metrics is not used with training.objective {recipe.training.objective}: TRL's own preference "
            "metrics (rewards/accuracies, rewards/margins, logps/...) are reported; remove it"
        )
    return problems
