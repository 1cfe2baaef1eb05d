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
        log.warning(
            "trust_remote_code is on: Python code from %s at revision %s will run on this machine", model.name, model.revision
        )
    return kwargs


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
    has_head = any(a.endswith(("ForSequenceClassification", "ForImageClassification")) for a in archs)
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
    kwargs = {**load_kwargs(m), **task.model_kwargs(labels)}
    if replace:
        kwargs["ignore_mismatched_sizes"] = True
    if not m.allow_pickle and not m.gguf_file:
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return auto.from_pretrained(ref, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as e:
        raise explain_load_error(e, "model", m) from e


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
    if model_type not in DEFAULTS:
        raise ModelError(
            f"no default LoRA target modules for model type {model_type!r}; set lora.target_modules "
            f"(linear layers: {', '.join(linear_names(model))})"
        )
    return list(DEFAULTS[model_type])


def linear_names(model: Any) -> list[str]:
    import torch

    return sorted({n.split(".")[-1] for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)})


def apply_lora(model: Any, task: Task, recipe: Recipe) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = recipe.lora
    head = lora.modules_to_save if lora.modules_to_save is not None else task.head_modules(model)
    config = LoraConfig(
        task_type=getattr(TaskType, task.peft_task_type),
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(model, recipe),
        modules_to_save=head or None,
    )
    return get_peft_model(model, config)


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def load_trained(task: Task, recipe: Recipe, model_dir: Path) -> tuple[Any, Any]:
    """Model and processor as a run saved them: base + adapter (with head) for LoRA runs, full weights otherwise."""
    import transformers

    processor = task.load_processor(str(model_dir), {})
    auto = getattr(transformers, task.auto_model)
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        config = transformers.AutoConfig.from_pretrained(str(model_dir))
        try:
            base = auto.from_pretrained(resolve_ref(recipe.model), config=config, **load_kwargs(recipe.model))
        except (OSError, ValueError) as e:
            raise explain_load_error(e, "base model", recipe.model) from e
        model = PeftModel.from_pretrained(base, str(model_dir))
    else:
        model = auto.from_pretrained(str(model_dir), use_safetensors=True)
    model.eval()
    return model, processor
