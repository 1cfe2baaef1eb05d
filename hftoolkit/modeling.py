"""Loading models and processors safely, adding LoRA, and reloading what a run saved.

Safety defaults: safetensors only (pickle weights need `model.allow_pickle`), remote code only when the recipe
says so with a pinned commit, and loader errors turned into one actionable message.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import HubOfflineError, ModelError
from hftoolkit.model_checks import (
    check_file_references, check_local_weights, check_max_length, check_model_folder, check_processor_files,
    check_weights_present,
)
from hftoolkit.refs import hub_offline, offline_hint, resolve_model_ref

if TYPE_CHECKING:
    from hftoolkit.recipe.schema import ModelSection, Recipe
    from hftoolkit.tasks.base import Task

log = logging.getLogger("hftoolkit")
# Architectures with a classification head sized by the label count, whose loss is a plain batch mean.
HEAD_ARCHITECTURES = ("ForSequenceClassification", "ForImageClassification", "ForTokenClassification")
# The file transformers reads first from a model repo: fetched (or found in the cache) to check it before it is used.
TOKENIZER_CONFIG = "tokenizer_config.json"


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
        folder = Path(resolve_model_ref(model))
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


def _local_snapshot(ref: str, model: ModelSection) -> Path | None:
    """The folder the processor is read from: the local folder, or the cached Hub snapshot (None if not cached)."""
    if Path(ref).is_dir():
        return Path(ref)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        found = try_to_load_from_cache(ref, TOKENIZER_CONFIG, revision=model.revision)
        if not isinstance(found, str) and not hub_offline():
            found = hf_hub_download(ref, TOKENIZER_CONFIG, revision=model.revision)
    except (HFValidationError, EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError):
        return None  # not a repo id, no such file, no network: the loader itself reports what matters
    return Path(found).parent if isinstance(found, str) else None


def _hub_cause(e: BaseException) -> BaseException | None:
    """The huggingface_hub error behind a loader's OSError (transformers raises `OSError(...) from e`)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def explain_load_error(e: Exception, what: str, model: ModelSection, *, weights: bool = False) -> Exception:
    """A loader failure as one line, chosen by the type of the Hub error behind it (or, for weights, the fact that
    only safetensors are accepted)."""
    from huggingface_hub.errors import (
        GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError,
    )

    cause = _hub_cause(e)
    if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return HubOfflineError(
            f"{what} {model.name!r} is not a local folder and is not in the local cache, and the Hub cannot be used "
            f"({offline_hint()}); use a local folder or go online once to cache it"
        )
    if isinstance(cause, GatedRepoError):
        return ModelError(f"{what} {model.name!r} is a gated repo: request access on the Hub, then log in (hf auth login)")
    if isinstance(cause, RevisionNotFoundError):
        return ModelError(f"{what} {model.name!r} has no revision {model.revision!r} on the Hub")
    if isinstance(cause, RepositoryNotFoundError):
        return ModelError(f"{what} {model.name!r} was not found locally or on the Hub (check the name, revision and token)")
    if cause is not None:
        return ModelError(f"cannot load {what} {model.name!r}: the Hub answered HTTP {cause.response.status_code}")
    if weights and isinstance(e, OSError) and not model.allow_pickle:
        return ModelError(
            f"{what} {model.name!r} has no safetensors weights; pickle weights are refused unless model.allow_pickle: true"
        )
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ModelError(f"cannot load {what} {model.name!r}: {first}")


def load_processor(task: Task, model: ModelSection) -> Any:
    ref = resolve_model_ref(model)
    snapshot = _local_snapshot(ref, model)
    if snapshot is not None:
        check_file_references(snapshot)
    check_processor_files(ref, task, model)
    try:
        return task.load_processor(ref, load_kwargs(model))
    except (OSError, ValueError, KeyError) as e:
        raise explain_load_error(e, "processor of model", model) from e


def check_model(task: Task, recipe: Recipe) -> Any:
    """Weights present, max_length within the position limit; returns the model config (read, nothing loaded).
    validate and finetune both call this before any data is read."""
    check_weights_present(resolve_model_ref(recipe.model), recipe.model)
    config = load_config(recipe.model)
    check_max_length(config, task, recipe)
    return config


def save_model_extras(model: Any, model_dir: Path) -> None:
    """The base config (with id2label) next to an adapter, so labels survive; drop PEFT's placeholder card.

    training_args.bin is a pickle (Trainer writes it with torch.save); the resolved recipe already records
    every argument, and a pickle in the model folder would be refused by push and by safe loaders.
    """
    (model_dir / "training_args.bin").unlink(missing_ok=True)
    if hasattr(model, "get_base_model"):
        model.get_base_model().config.save_pretrained(str(model_dir))
        placeholder = model_dir / "README.md"
        if placeholder.is_file():
            placeholder.unlink()


def load_config(model: ModelSection) -> Any:
    from transformers import AutoConfig

    ref = resolve_model_ref(model)
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


def load_model(task: Task, recipe: Recipe, labels: list[str] | None, dtype: Any = None, processor: Any = None) -> Any:
    """The model to train; with `processor`, the task's processor-dependent config (text classification:
    pad_token_id, saved with the config so decoder classifiers find each row's last real token after reloading)."""
    import transformers

    m = recipe.model
    ref = resolve_model_ref(m)
    check_local_weights(ref, m)
    config = load_config(m)
    replace = check_head(config, task, labels, m)
    auto = getattr(transformers, task.auto_model)
    kwargs = {**load_kwargs(m), **weight_kwargs(m), **task.model_kwargs(labels)}
    if processor is not None:
        kwargs.update(task.processor_model_kwargs(processor))
    if replace:
        kwargs["ignore_mismatched_sizes"] = True
    if not m.allow_pickle and not m.gguf_file:
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    if m.quantization is not None:
        from hftoolkit.quantization import quantized_base

        ref, kwargs = quantized_base(ref, recipe, kwargs)
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
        raise explain_load_error(e, "model", m, weights=kwargs.get("use_safetensors", False)) from e


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

    from hftoolkit.quantization import is_quantized, prepare_for_training

    lora = recipe.lora
    head = lora.modules_to_save if lora.modules_to_save is not None else task.head_modules(model)
    if is_quantized(model):
        model = prepare_for_training(model, recipe)
    config = LoraConfig(
        # None = PEFT's generic model (image classification: the typed wrappers assume `input_ids`).
        task_type=getattr(TaskType, task.peft_task_type) if task.peft_task_type else None,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(model, recipe),
        modules_to_save=head or None,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        init_lora_weights=True if lora.init == "default" else lora.init,
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
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return trainable, total


def _numel(p: Any) -> int:
    # bitsandbytes' 4-bit parameters store two weights per byte; their quant_state keeps the weight's real shape.
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else p.numel()


def load_trained(task: Task, recipe: Recipe, model_dir: Path, *, dequantize: bool = False) -> tuple[Any, Any]:
    """Model and processor as a run saved them: base + adapter (with head) for LoRA runs, full weights otherwise.

    A damaged saved file (cut short by a full disk, edited by hand) is named in one line instead of a traceback:
    every JSON and safetensors file is checked up front, and loader errors of those kinds are caught by type.
    `dequantize`: a quantized base is turned into plain layers (its compute dtype) before the adapter goes on.
    """
    import json

    from safetensors import SafetensorError

    from hftoolkit.run.integrity import unreadable_file

    check_file_references(model_dir)
    config_file = model_dir / "config.json"
    bad = unreadable_file(model_dir) if config_file.is_file() else (config_file, "missing")
    if bad is not None:
        raise ModelError(f"{bad[0]}: {bad[1]}; re-run `hft finetune` or restore the file")
    try:
        processor = task.load_processor(str(model_dir), {})
        model = _load_saved_model(task, recipe, model_dir, dequantize)
    except (SafetensorError, json.JSONDecodeError, OSError, ValueError) as e:  # ValueError: config without model_type
        first = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise ModelError(
            f"cannot load the trained model in {model_dir} ({type(e).__name__}: {first}); re-run `hft finetune` or "
            "restore the run's model/ folder"
        ) from e
    model.eval()
    return model, processor


def _load_saved_model(task: Task, recipe: Recipe, model_dir: Path, dequantize: bool = False) -> Any:
    import transformers

    auto = getattr(transformers, task.auto_model)
    if not (model_dir / "adapter_config.json").is_file():
        return auto.from_pretrained(str(model_dir), use_safetensors=True)
    from peft import PeftModel

    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    base_ref = resolve_model_ref(recipe.model)
    check_model_folder(base_ref)
    try:
        # A replaced head (model.replace_head) has another shape than the checkpoint's; the adapter restores it.
        extra = {"ignore_mismatched_sizes": True} if recipe.model.replace_head else {}
        kwargs = {**load_kwargs(recipe.model), **weight_kwargs(recipe.model), **extra}
        if recipe.model.quantization is not None:  # trained on the quantized base, so reloaded onto one
            from hftoolkit.quantization import quantized_base

            base_ref, kwargs = quantized_base(base_ref, recipe, kwargs)
            # The saved config records the training load's settings; the recipe's (in kwargs) are what loads now.
            vars(config).pop("quantization_config", None)
        base = auto.from_pretrained(base_ref, config=config, **kwargs)
        if dequantize and recipe.model.quantization is not None:
            base = base.dequantize()
    except (OSError, ValueError) as e:
        raise explain_load_error(e, "base model", recipe.model, weights=not recipe.model.allow_pickle) from e
    return PeftModel.from_pretrained(base, str(model_dir))
