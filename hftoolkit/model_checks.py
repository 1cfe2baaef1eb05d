"""Checks on a model that would otherwise train silently wrong or crash at step 1, run by validate and finetune.

- A local folder without weights (only config.json) is refused by `hft validate` as `hft finetune` would.
- A local folder without tokenizer (or image processor) files is refused: transformers 5 would build an empty
  placeholder tokenizer from the config alone, and the model would learn from a handful of special tokens.
- `dataset.max_length` above the model's position limit crashes inside the embeddings at the first step.
Only the config is read; no weights are loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import ModelError
from hftoolkit.modeling import PICKLE_SUFFIXES, load_config, resolve_ref

if TYPE_CHECKING:
    from hftoolkit.recipe import ModelSection, Recipe
    from hftoolkit.tasks.base import Task

# Each entry is a set of files that together let transformers build the processor (any one entry is enough).
PROCESSOR_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "tokenizer": (
        ("tokenizer.json",),  # fast tokenizers of any family
        ("vocab.txt",),  # WordPiece (BERT family)
        ("vocab.json", "merges.txt"),  # byte-level BPE (GPT-2, RoBERTa)
        ("tokenizer.model",),  # SentencePiece (Llama, Mistral)
        ("spiece.model",),  # SentencePiece (T5, ALBERT)
        ("sentencepiece.bpe.model",),  # SentencePiece (XLM-R, CamemBERT)
        ("tekken.json",),  # Mistral tekken
    ),
    "image processor": (("preprocessor_config.json",), ("processor_config.json",)),
}
# Config attributes that hold the number of positions a model embeds.
POSITION_ATTRS = ("max_position_embeddings", "n_positions")
# RoBERTa-style models number positions from padding_idx + 1, so two of max_position_embeddings are never usable
# (514 in the config, 512 tokens in practice).
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "xlm-roberta-xl": 2, "data2vec-text": 2}


def check_model(task: Task, recipe: Recipe) -> Any:
    """Weights present, max_length within the position limit; returns the model config (read, nothing loaded)."""
    ref = resolve_ref(recipe.model)
    check_weights_present(ref, recipe.model)
    config = load_config(recipe.model)
    check_max_length(config, task, recipe)
    return config


def check_weights_present(ref: str, model: ModelSection) -> None:
    """A local model folder must hold weights (pickle-only folders are refused by check_local_weights)."""
    folder = Path(ref)
    if not folder.is_dir() or model.gguf_file:
        return
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    if any(f.endswith(".safetensors") for f in files) or any(f.endswith(PICKLE_SUFFIXES) for f in files):
        return
    raise ModelError(
        f"model folder {folder} has no weights (no *.safetensors file; it holds {', '.join(files) or 'nothing'}); "
        "point model.name at a folder written by save_pretrained, or at a Hub id"
    )


def check_processor_files(ref: str, task: Task, model: ModelSection) -> None:
    """A local model folder must hold the files its tokenizer or image processor is built from."""
    folder = Path(ref)
    if not folder.is_dir() or model.gguf_file:  # a GGUF file carries its own tokenizer
        return
    kind = getattr(task, "processor_kind", "tokenizer")
    present = {p.name for p in folder.iterdir()}
    needs = PROCESSOR_FILES[kind]
    if any(all(f in present for f in group) for group in needs):
        return
    options = ", ".join(" + ".join(group) for group in needs)
    raise ModelError(
        f"model folder {folder} has no {kind} files (it needs one of: {options}); without them transformers builds "
        f"an empty placeholder {kind} and the model would learn nothing: save the {kind} of the base model into the "
        f"folder (e.g. AutoTokenizer.from_pretrained(BASE).save_pretrained(FOLDER))"
    )


def position_limit(config: Any) -> tuple[str, int, int] | None:
    """(attribute, value in the config, usable tokens) of the model's position limit, or None when it has none."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in POSITION_ATTRS:
        value = getattr(text, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return attr, value, value - POSITION_OFFSET.get(getattr(config, "model_type", ""), 0)
    return None


def check_max_length(config: Any, task: Task, recipe: Recipe) -> None:
    if getattr(task, "processor_kind", "tokenizer") != "tokenizer":
        return  # images: dataset.max_length does not apply
    found = position_limit(config)
    if found is None:
        return
    attr, value, usable = found
    wanted = recipe.dataset.max_length
    if wanted > usable:
        extra = f", {usable} usable" if usable != value else ""
        raise ModelError(
            f"dataset.max_length is {wanted} but model {recipe.model.name!r} takes at most {usable} tokens "
            f"({attr} = {value} in its config{extra}); set dataset.max_length to {usable} or less"
        )
