"""Quantized LoRA (QLoRA) through bitsandbytes: loading the base 4- or 8-bit, preparing it, the memory plan, merging.

- Loading: transformers' `BitsAndBytesConfig` (nf4 / fp4, double quantization, compute dtype), then PEFT's
  `prepare_model_for_kbit_training` before the adapter is added. bitsandbytes >= 0.50 runs these layers on CPU too.
- GGUF: a GGUF start is dequantized while it loads (`GgufConfig(dequantize=True)`), so it cannot take a
  `BitsAndBytesConfig` in the same load. It is dequantized once into safetensors under the HF cache, in a folder keyed
  by the GGUF file's sha256, and that folder is loaded with bitsandbytes (later runs reuse it).
- Merging (`hft push --merge`): the quantized layers are dequantized to the compute dtype (transformers'
  `dequantize()`), the adapter is merged into those weights, and the logit check allows the looser `MERGE_ATOL`.

Imports torch and transformers inside functions only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import ModelError

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.recipe_tuning import QuantizationSection

log = logging.getLogger("hftoolkit")

# Merged weights (dequantized) vs the adapter on the quantized layers, float32 logits. 4-bit layers dequantize
# their blocks and multiply in the compute dtype, as the merged model does: they agreed exactly on the tiny models.
# LLM.int8 multiplies int8-rounded activations (fp16 on CPU): 4e-3 apart on the tiny models.
MERGE_ATOL = {4: 1e-3, 8: 5e-2}
GGUF_CACHE = "hftoolkit/gguf-dequantized"  # under HF_HOME
_HASH_CHUNK = 1 << 20
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Bytes per weight of a quantized layer: 4 bits plus one fp32 absmax per block of 64 (double quantization stores it
# as 8 bits plus one fp32 per 256 blocks), or int8 plus one fp32 scale per output row (counted per row below).
BYTES_4BIT = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
ADAM_BYTES = 16  # fp32 weight, gradient and two Adam moments per trainable parameter


def compute_dtype(q: QuantizationSection, precision: str) -> Any:
    import torch

    name = q.compute_dtype if q.compute_dtype != "auto" else precision
    return getattr(torch, _DTYPES.get(name, "float32"))


def bnb_config(q: QuantizationSection, precision: str) -> Any:
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.type, bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(q, precision),
    )


def quantized_base(ref: str, recipe: Recipe, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Where and how to load the base quantized: `from_pretrained` kwargs with the bitsandbytes config (and, for a
    GGUF start, the dequantized safetensors folder instead of the GGUF file)."""
    from hftoolkit.training.args import choose_precision

    m = recipe.model
    _require_bitsandbytes(m.name)
    if m.gguf_file:  # `kwargs` still load the GGUF file (dequantized), once, into the cache folder
        ref = str(dequantized_gguf(ref, recipe, kwargs))
    kwargs = {k: v for k, v in kwargs.items() if k not in ("gguf_file", "quantization_config", "use_safetensors")}
    if m.gguf_file:
        kwargs.pop("revision", None)  # the cache folder has no revisions
    kwargs["quantization_config"] = bnb_config(m.quantization, choose_precision(recipe.training.precision))
    kwargs["use_safetensors"] = True
    return ref, kwargs


def _require_bitsandbytes(name: str) -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"model.quantization: loading {name!r} quantized needs bitsandbytes; pip install 'hftoolkit[quant]'"
        )


def check_quantized(model: Any, recipe: Recipe) -> None:
    """bitsandbytes quantizes linear layers; a model where none became quantized has nothing QLoRA can use."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    layers = sum(isinstance(module, kinds) for module in model.modules())
    q = recipe.model.quantization
    log.info("model.quantization: %d linear layers loaded %d-bit through bitsandbytes", layers, q.bits)
    if not layers:
        raise ModelError(
            f"model.quantization: bitsandbytes quantized no layer of {recipe.model.name!r} (model type "
            f"{model.config.model_type!r}: it has no linear layers bitsandbytes handles); remove model.quantization"
        )


def prepare_for_training(model: Any, recipe: Recipe) -> Any:
    """PEFT's preparation of a quantized model (norms in fp32, base frozen, input gradients for checkpointing)."""
    from peft import prepare_model_for_kbit_training

    check_quantized(model, recipe)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.training.gradient_checkpointing)


def is_quantized(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


# ----------------------------------------------------------------------------------------------------------------------
# GGUF -> safetensors, once per GGUF file


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_path(ref: str, recipe: Recipe) -> Path:
    local = Path(ref) / recipe.model.gguf_file
    if local.is_file():
        return local
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(ref, recipe.model.gguf_file, revision=recipe.model.revision))


def dequantized_gguf(ref: str, recipe: Recipe, kwargs: dict[str, Any]) -> Path:
    """The GGUF checkpoint dequantized into a safetensors folder of the HF cache (written once, atomically);
    `kwargs` are the `from_pretrained` arguments that load the GGUF file dequantized (modeling.weight_kwargs)."""
    from huggingface_hub import constants

    gguf = _gguf_path(ref, recipe)
    folder = Path(constants.HF_HOME) / GGUF_CACHE / _sha256(gguf)
    if (folder / "config.json").is_file():
        return folder
    import transformers

    log.info("model.quantization: dequantizing %s once into %s, to load it with bitsandbytes", gguf.name, folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(ref, **{k: v for k, v in kwargs.items() if k != "config"})
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    model.save_pretrained(str(partial))
    try:
        os.replace(partial, folder)
    except OSError:  # another process finished first: its copy is the same
        shutil.rmtree(partial, ignore_errors=True)
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# Memory plan (hft validate) and merging (hft push --merge)


def weight_bytes(model: Any, bits: int | None, double_quant: bool = True) -> float:
    """Bytes of the model's weights loaded at `bits` (None: as they are): bitsandbytes quantizes the linear layers of
    the body; embeddings, norms and the output head keep their dtype."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantizable: set[int] = set()
    rows = 0
    if bits is not None:
        for module in model.modules():
            if module is not head and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"):
                quantizable.add(id(module.weight))
                rows += module.weight.shape[0]
    total = 0.0
    for p in {id(p): p for p in model.parameters()}.values():
        if id(p) not in quantizable:
            total += p.numel() * p.element_size()
        else:
            total += p.numel() * (BYTES_4BIT[double_quant] if bits == 4 else 1)
    return total + (4 * rows if bits == 8 else 0)


def memory_plan(model: Any, recipe: Recipe, trainable: int, reference_copy: bool) -> str:
    """Weights + trainable state (fp32 weight, gradient, Adam moments), with and without quantization."""
    mb = 1e6
    state = trainable * ADAM_BYTES
    ref = weight_bytes(model, None) if reference_copy else 0.0
    q = recipe.model.quantization
    double_quant = q.double_quant if q is not None else True
    plans = {"not quantized": weight_bytes(model, None) + state + ref}
    if recipe.lora.enabled:
        plans.update({f"{bits}-bit": weight_bytes(model, bits, double_quant) + state for bits in (8, 4)})
    chosen = f"{q.bits}-bit" if q is not None else "not quantized"
    shown = ", ".join(f"{name} {size / mb:,.3g} MB{' (this recipe)' if name == chosen else ''}" for name, size in plans.items())
    extra = " and the frozen reference copy DPO needs" if reference_copy else ""
    return f"memory plan (weights, trainable parameters' gradients and Adam state{extra}; activations not counted): {shown}"
