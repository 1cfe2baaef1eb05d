"""Checks on a model that would otherwise train silently wrong or crash at step 1, run by validate and finetune.

- A local folder without weights (only config.json) is refused by `hft validate` as `hft finetune` would.
- A local folder without tokenizer (or image processor) files is refused: transformers 5 would build an empty
  placeholder tokenizer from the config alone, and the model would learn from a handful of special tokens.
- `dataset.max_length` above the model's position limit crashes inside the embeddings at the first step.
- A folder with only pickle weights, a symlink leading out of it, or a tokenizer config whose `*_file` entry points
  outside it is refused before anything is loaded from it.
Only the config is read; no weights are loaded (modeling.check_model reads it and calls these). Light imports only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import ModelError
from hftoolkit.safety import PICKLE_SUFFIXES

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import ModelSection, Recipe
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
    kind = task.processor_kind
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
    if task.processor_kind != "tokenizer":
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


def check_local_weights(ref: str, model: ModelSection) -> None:
    """A local folder with a symlink leaving it, or with only pickle weights, is refused before anything is loaded."""
    folder = Path(ref)
    check_model_folder(folder)
    if not folder.is_dir() or model.allow_pickle or model.gguf_file:
        return
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ModelError(
            f"model {model.name!r} has only pickle weights ({', '.join(pickles)}), which can run arbitrary code when "
            "loaded; convert them to safetensors, or set model.allow_pickle: true if you trust the source"
        )


# Configs whose `*_file` entries a tokenizer or processor opens as paths.
_REFERENCING_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json", "processor_config.json", "preprocessor_config.json")


def check_model_folder(folder: str | Path) -> None:
    """Refuse a model folder any of whose files is a symlink leading out of it, naming the link and its target.

    Every loader (config, tokenizer, processor, weights) opens files from it, and what a tokenizer reads is saved
    into the run's model/ (and published by `hft push`). A Hub snapshot's boundary is its repo cache folder
    (`models--org--name/`), whose snapshot files link to `../../blobs/` by design.
    """
    from hftoolkit.paths import read_boundary, require_no_escaping_links

    folder = Path(folder)
    if folder.is_dir():
        require_no_escaping_links(folder, read_boundary(folder), "model file")


def check_file_references(folder: str | Path) -> None:
    """Refuse tokenizer/processor configs whose file entries leave the model folder (e.g. "vocab_file": "../.env").

    Older transformers open such entries as given, so a downloaded model could read any file this user can read
    (and `hft push` would then publish it as part of the vocabulary). Checked before anything is loaded: the entry
    must stay in the folder as written, and its real path (symlinks resolved) inside the folder's read boundary.
    """
    import json

    from hftoolkit.paths import is_inside, read_boundary

    folder = Path(folder)
    if not folder.is_dir():
        return
    check_model_folder(folder)
    boundary = read_boundary(folder)
    root = os.path.normpath(os.path.abspath(folder))
    for name in _REFERENCING_CONFIGS:
        path = folder / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # missing or unreadable: transformers reports that itself
        for key, value in _file_entries(data):
            target = os.path.normpath(os.path.join(root, value))
            if os.path.isabs(value) or not target.startswith(root + os.sep) or not is_inside(target, boundary):
                raise ModelError(
                    f"{path}: {key} = {value!r} points outside the model folder; refusing to load a tokenizer or "
                    "processor that would read files from elsewhere on this machine"
                )


def _file_entries(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            dotted = f"{prefix}{k}"
            if isinstance(k, str) and k.endswith(("_file", "_files")):
                values = v if isinstance(v, list) else [v]
                out += [(dotted, x) for x in values if isinstance(x, str) and x]
            elif isinstance(v, dict):
                out += _file_entries(v, dotted + ".")
    return out
