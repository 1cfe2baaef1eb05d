"""Loading models and processors safely, adding LoRA, and reloading what a run saved.

Safety defaults: safetensors only (pickle weights need `model.allow_pickle`), remote code only when the recipe
says so with a pinned commit, and loader errors turned into one actionable message.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import HubOfflineError, ModelError

if TYPE_CHECKING:
    from hftoolkit.recipe import ModelSection, Recipe
    from hftoolkit.tasks.base import Task

log = logging.getLogger("hftoolkit")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Architectures with a classification head sized by the label count, whose loss is a plain batch mean.
HEAD_ARCHITECTURES = ("ForSequenceClassification", "ForImageClassification", "ForTokenClassification")


def resolve_ref(model: ModelSection) -> str:
    """Where to load the model from: a local folder, a Hub id, or a folder shipped in a Python package."""
    name = model.name
    if name.startswith("package:"):
        module_name = name.removeprefix("package:")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ModelError(f"model.name {name!r}: Python package {module_name!r} is not installed") from None
        if not hasattr(module, "get_model_path"):
            raise ModelError(f"model.name {name!r}: package {module_name!r} has no get_model_path()")
        return str(module.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise ModelError(f"model.name {name!r}: local path does not exist (resolved to {path.resolve()})")
    return name


def load_kwargs(model: ModelSection) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": model.trust_remote_code}
    if model.revision:
        kwargs["revision"] = model.revision
    if model.gguf_file:
        kwargs["gguf_file"] = model.gguf_file
    if model.trust_remote_code:
        _warn_remote_code(model)
    return kwargs


_warned_remote_code: set[tuple[str, str | None]] = set()


def _warn_remote_code(model: ModelSection) -> None:
    """Say once per model which code trust_remote_code lets run: the repo's .py files its auto_map points to."""
    key = (model.name, model.revision)
    if key in _warned_remote_code:
        return
    _warned_remote_code.add(key)
    what = "the Python files its config's auto_map names"
    try:
        folder = Path(resolve_ref(model))
    except ModelError:
        return
    if folder.is_dir():
        import json

        files = sorted(p.name for p in folder.glob("*.py"))
        classes: list[str] = []
        for name in ("config.json", "tokenizer_config.json", "preprocessor_config.json"):
            try:
                auto_map = json.loads((folder / name).read_text()).get("auto_map") or {}
            except (OSError, ValueError, AttributeError):
                continue
            for v in auto_map.values():
                classes += [c for c in (v if isinstance(v, list) else [v]) if isinstance(c, str)]
        what = ", ".join(files) or "no .py files found"
        if classes:
            what += f" (classes: {', '.join(sorted(set(classes)))})"
    log.warning(
        "trust_remote_code is on: Python code from %s at revision %s will run on this machine: %s",
        model.name,
        model.revision,
        what,
    )


def weight_kwargs(model: ModelSection) -> dict[str, Any]:
    """`from_pretrained` arguments for model weights only (tokenizers and configs take load_kwargs alone).

    A GGUF checkpoint is dequantized into a plain dense model: recent transformers otherwise keep its weights in
    GGUF blocks behind a quantizer that the Trainer refuses to train, and PEFT cannot adapt.
    """
    import transformers

    gguf_config = getattr(transformers, "GgufConfig", None)  # older 5.x releases always dequantize and lack it
    if model.gguf_file and gguf_config is not None:
        return {"quantization_config": gguf_config(dequantize=True)}
    return {}


def check_local_weights(ref: str, model: ModelSection) -> None:
    """A local folder with only pickle weights is refused before transformers would unpickle it."""
    folder = Path(ref)
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


def check_file_references(folder: str | Path) -> None:
    """Refuse tokenizer/processor configs whose file entries leave the model folder (e.g. "vocab_file": "../.env").

    Older transformers open such entries as given, so a downloaded model could read any file this user can read
    (and `hft push` would then publish it as part of the vocabulary). Checked before anything is loaded; the path
    is normalised without following symlinks, since the Hub cache links snapshot files to blobs elsewhere.
    """
    import json

    folder = Path(folder)
    if not folder.is_dir():
        return
    root = os.path.normpath(os.path.abspath(folder))
    for name in _REFERENCING_CONFIGS:
        path = folder / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # missing or unreadable: transformers reports that itself
        for key, value in _file_entries(data):
            target = os.path.normpath(os.path.join(root, value))
            if os.path.isabs(value) or not target.startswith(root + os.sep):
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


def _local_snapshot(ref: str, model: ModelSection) -> Path | None:
    """The folder the processor is read from: the local folder, or the cached Hub snapshot (None if not cached)."""
    if Path(ref).is_dir():
        return Path(ref)
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        found = try_to_load_from_cache(ref, "tokenizer_config.json", revision=model.revision)
        if not isinstance(found, str) and os.environ.get("HF_HUB_OFFLINE", "0").lower() not in {"1", "true", "yes", "on"}:
            # The file transformers would download first anyway; fetching it now lets us check it before it is used.
            found = hf_hub_download(ref, "tokenizer_config.json", revision=model.revision)
    except Exception:  # not a repo id, no such file, no network: the loader itself reports what matters
        return None
    return Path(found).parent if isinstance(found, str) else None


def explain_load_error(e: Exception, what: str, model: ModelSection) -> Exception:
    text = str(e)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    if "safetensors" in text.lower() and ("not found" in text.lower() or "no file named" in text.lower() or "use_safetensors" in text):
        return ModelError(
            f"{what} {model.name!r} has no safetensors weights; pickle weights are refused unless model.allow_pickle: true"
        )
    if "offline" in text.lower() or "couldn't connect" in text.lower() or "connection" in text.lower() or (
        offline and "not a valid model identifier" not in text
    ):
        return HubOfflineError(
            f"{what} {model.name!r} is not a local folder and is not in the local cache, and the Hub is unreachable "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); use a local folder or go online once to cache it"
        )
    if "is not a local folder and is not a valid model identifier" in text or "Repository Not Found" in text or "404" in text:
        return ModelError(f"{what} {model.name!r} was not found locally or on the Hub (check the name, revision and token)")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return ModelError(f"cannot load {what} {model.name!r}: {first}")


def load_processor(task: Task, model: ModelSection) -> Any:
    ref = resolve_ref(model)
    snapshot = _local_snapshot(ref, model)
    if snapshot is not None:
        check_file_references(snapshot)
    try:
        return task.load_processor(ref, load_kwargs(model))
    except (OSError, ValueError, KeyError) as e:
        raise explain_load_error(e, "processor of model", model) from e


def load_config(model: ModelSection) -> Any:
    from transformers import AutoConfig

    ref = resolve_ref(model)
    try:
        return AutoConfig.from_pretrained(ref, **load_kwargs(model))
    except (OSError, ValueError, KeyError) as e:
        raise explain_load_error(e, "model", model) from e


def check_head(config: Any, task: Task, labels: list[str] | None, model: ModelSection) -> bool:
    """True when the checkpoint's existing head must be replaced (label count differs and the recipe allows it)."""
    if labels is None:
        return False
    archs = getattr(config, "architectures", None) or []
    has_head = any(a.endswith(HEAD_ARCHITECTURES) for a in archs)
    if not has_head or config.num_labels == len(labels):
        return False
    if not model.replace_head:
        raise ModelError(
            f"model {model.name!r} already has a classification head for {config.num_labels} labels but the data has "
            f"{len(labels)}; set model.replace_head: true to train a new head (its current weights are discarded)"
        )
    log.warning("replacing the %d-label head of %s with a new %d-label head", config.num_labels, model.name, len(labels))
    return True


def load_model(task: Task, recipe: Recipe, labels: list[str] | None, dtype: Any = None) -> Any:
    import transformers

    m = recipe.model
    ref = resolve_ref(m)
    check_local_weights(ref, m)
    config = load_config(m)
    replace = check_head(config, task, labels, m)
    auto = getattr(transformers, task.auto_model)
    kwargs = {**load_kwargs(m), **weight_kwargs(m), **task.model_kwargs(labels)}
    if replace:
        kwargs["ignore_mismatched_sizes"] = True
    if not m.allow_pickle and not m.gguf_file:
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    import pickle

    try:
        return auto.from_pretrained(ref, **kwargs)
    except pickle.UnpicklingError as e:
        # allow_pickle still loads with weights_only: a file that needs more than tensors is refused, not run.
        raise ModelError(
            f"refusing to load the weights of model {m.name!r}: a pickle file in it holds more than tensors and "
            f"loading it could run code ({unpickling_reason(e)})"
        ) from None
    except (OSError, ValueError, KeyError, EnvironmentError) as e:
        raise explain_load_error(e, "model", m) from e


def unpickling_reason(e: BaseException) -> str:
    """What a torch weights_only refusal refused, without torch's advice to allowlist it (wrong for a hostile file)."""
    import re

    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if m:
        return f"it calls {m.group(1)}"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def lora_targets(model: Any, recipe: Recipe) -> list[str]:
    """The recipe's target modules, or PEFT's per-architecture defaults (the same table PEFT itself uses)."""
    if recipe.lora.target_modules:
        names = {n.split(".")[-1] for n, _ in model.named_modules()}
        missing = [t for t in recipe.lora.target_modules if t not in names]
        if missing:
            raise ModelError(f"lora.target_modules {missing} not found in the model; linear layers: {', '.join(linear_names(model))}")
        return list(recipe.lora.target_modules)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(model.config, "model_type", None)
    default = DEFAULTS.get(model_type)
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    if isinstance(default, str) or (default and all(t in names for t in default)):
        return default if isinstance(default, str) else list(default)
    # PEFT's table has no entry for this model type (e.g. vit), or names this transformers version no longer uses
    # (ViT's attention is q_proj/v_proj in transformers 5): fall back to the attention query/value projections.
    for pair in (["q_proj", "v_proj"], ["query", "value"]):
        if all(t in names for t in pair):
            log.info("LoRA on %s (attention query/value; PEFT has no default for model type %r)", ", ".join(pair), model_type)
            return pair
    raise ModelError(
        f"no default LoRA target modules for model type {model_type!r}; set lora.target_modules "
        f"(linear layers: {', '.join(linear_names(model))})"
    )


def linear_names(model: Any) -> list[str]:
    import torch

    return sorted({n.split(".")[-1] for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)})


def apply_lora(model: Any, task: Task, recipe: Recipe) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = recipe.lora
    head = lora.modules_to_save if lora.modules_to_save is not None else task.head_modules(model)
    config = LoraConfig(
        # None = PEFT's generic model (image classification: the typed wrappers assume `input_ids`).
        task_type=getattr(TaskType, task.peft_task_type) if task.peft_task_type else None,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(model, recipe),
        modules_to_save=head or None,
    )
    return get_peft_model(model, config)


def declare_mean_loss(model: Any) -> None:
    """Tell Trainer that a classification head's loss is a plain batch mean (transformers' `accepts_loss_kwargs`).

    Their forward takes **kwargs, so Trainer assumes they normalise by `num_items_in_batch` like causal LMs do, and
    then neither divides the training loss by gradient_accumulation_steps nor stops multiplying every loss by the
    number of processes: a 2-process evaluation reported twice the single-process loss. Models that declare this
    class attribute themselves (as several in transformers do) are left alone.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if name.endswith(HEAD_ARCHITECTURES) and "accepts_loss_kwargs" not in vars(type(base)):
        base.accepts_loss_kwargs = False


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def load_trained(task: Task, recipe: Recipe, model_dir: Path) -> tuple[Any, Any]:
    """Model and processor as a run saved them: base + adapter (with head) for LoRA runs, full weights otherwise."""
    import transformers

    check_file_references(model_dir)
    processor = task.load_processor(str(model_dir), {})
    auto = getattr(transformers, task.auto_model)
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        config = transformers.AutoConfig.from_pretrained(str(model_dir))
        try:
            # A replaced head (model.replace_head) has another shape than the checkpoint's; the adapter restores it.
            extra = {"ignore_mismatched_sizes": True} if recipe.model.replace_head else {}
            base = auto.from_pretrained(
                resolve_ref(recipe.model), config=config, **load_kwargs(recipe.model), **weight_kwargs(recipe.model), **extra
            )
        except (OSError, ValueError) as e:
            raise explain_load_error(e, "base model", recipe.model) from e
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = auto.from_pretrained(str(model_dir), use_safetensors=True)
    model.eval()
    return model, processor
