"""What the run to publish is: its records, task and kind (adapter / merged / full), the base model it needs, and the
inputs of its card (sanitized records, the license and language from the recipe or the base model's card).

Everything here reads local files (and, outside --dry-run, the base model's card from the Hub); nothing is sent.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import PushError
from hftoolkit.run.records import Manifest, read_json_file

if TYPE_CHECKING:
    from hftoolkit.run.layout import RunDir

log = logging.getLogger("hftoolkit")

ADAPTER, MERGED, FULL = "adapter", "merged", "full"  # what a push publishes
PLACEHOLDER_LABEL = re.compile(r"^LABEL_\d+$")
# Short paths (/, /root, /tmp) also occur inside vocabularies; only distinctive ones are markers of this machine.
MIN_MARKER_LENGTH = 7
MIN_MARKER_SEPARATORS = 2


@dataclass
class RunFacts:
    run: RunDir
    recipe: Any  # Recipe, as the run resolved it
    manifest: Manifest
    task: Any  # TaskBase
    kind: str  # ADAPTER | MERGED | FULL
    labels: list[str] | None
    base_model: str | None  # Hub id of the base model; None for a local one
    base_revision: str | None


def _check_labels(model_dir: Path, labels: list[str] | None) -> None:
    """Published labels must be names, and the model's config must say the same as the run."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return
    id2label = (read_json_file(config_file).get("id2label") or {}) if labels else {}
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
    placeholders = [n for n in (labels or []) + names if PLACEHOLDER_LABEL.match(str(n))]
    if placeholders:
        raise PushError(
            f"labels {', '.join(sorted(set(placeholders)))} are placeholders, not names; set dataset.label_names in "
            "the recipe and train again, so the published model says what it predicts"
        )
    if labels and names and names != labels:
        raise PushError(f"model/config.json id2label {names} differs from the run's labels {labels}")


def inspect_run(run_path: str | Path, merge: bool) -> RunFacts:
    from hftoolkit.refs import is_local_model
    from hftoolkit.run.layout import RunDir
    from hftoolkit.tasks.registry import get_task

    run = RunDir(run_path)
    manifest = run.require_trained()
    recipe = run.load_recipe()
    is_adapter = (run.model / "adapter_config.json").is_file()
    if merge and not is_adapter:
        raise PushError(f"--merge: run {run.path} is a full fine-tune (no LoRA adapter to merge); push it without --merge")
    kind = MERGED if merge else (ADAPTER if is_adapter else FULL)
    _check_labels(run.model, manifest.labels)
    base_model = None if is_local_model(recipe.model.name) else recipe.model.name
    base_revision = (manifest.model.commit if manifest.model else None) or recipe.model.revision
    if kind == ADAPTER and base_model is None:
        raise PushError(
            f"the base model {recipe.model.name!r} is not a Hub repo, so nobody could load this adapter; push the merged "
            "model with --merge, or train from the base model's Hub id"
        )
    return RunFacts(run, recipe, manifest, get_task(recipe.task), kind, manifest.labels, base_model, base_revision)


def local_markers(facts: RunFacts) -> list[str]:
    """Absolute paths of this machine that must not appear in published text."""
    from huggingface_hub import constants

    from hftoolkit.refs import is_local_dataset, resolve_model_ref

    candidates = {str(facts.run.path.resolve()), str(Path.cwd()), str(Path.home()), str(constants.HF_HOME)}
    try:
        candidates.add(str(Path(resolve_model_ref(facts.recipe.model)).resolve()))
    except Exception:  # resolving is best effort here; a broken reference was already reported elsewhere
        pass
    for f in (facts.recipe.dataset.files or {}).values():
        candidates.add(str(Path(f).expanduser().resolve().parent))
    if facts.recipe.dataset.name and is_local_dataset(facts.recipe.dataset.name):
        candidates.add(str(Path(facts.recipe.dataset.name).expanduser().resolve()))
    return sorted(c for c in candidates if c and len(c) >= MIN_MARKER_LENGTH and c.count("/") >= MIN_MARKER_SEPARATORS)


def base_card_metadata(facts: RunFacts, offline: bool) -> dict:
    """The base model's README metadata (license, language) from its folder or Hub repo; {} when unknown."""
    import yaml
    from huggingface_hub import hf_hub_download, metadata_load

    from hftoolkit.refs import resolve_model_ref

    try:
        ref = resolve_model_ref(facts.recipe.model)
    except Exception:  # a missing package or folder only means the card cannot be read
        return {}
    readme: Path | None = Path(ref) / "README.md" if Path(ref).is_dir() else None
    if readme is None and facts.base_model:
        try:
            readme = Path(hf_hub_download(facts.base_model, "README.md", revision=facts.base_revision, local_files_only=offline))
        except Exception as e:  # no README, offline, or no access: the recipe's model.license must say
            log.debug("no base model card for %s: %s", facts.base_model, e)
            return {}
    try:
        return (metadata_load(readme) or {}) if readme is not None and readme.is_file() else {}
    except (ValueError, yaml.YAMLError, OSError):
        return {}


def resolve_license(facts: RunFacts, base_meta: dict, offline: bool) -> tuple[str, str]:
    """(license id, where it came from): the recipe's model.license, else the base model's card; else refused."""
    from hftoolkit.publish.card import license_problem

    recipe_license = facts.recipe.model.license
    base_license = base_meta.get("license")
    base_license = base_license if isinstance(base_license, str) else None
    if recipe_license:
        problem = license_problem(recipe_license, "model.license")
        if problem:
            raise PushError(f"recipe {problem}")
        if base_license and base_license != recipe_license:
            log.warning("model.license %s differs from the base model's license %s; the card says %s",
                        recipe_license, base_license, recipe_license)
        return recipe_license, "the recipe (model.license)"
    if base_license:
        return base_license, "the base model's card"
    where = (
        f"the card of the base model {facts.base_model} is not in the Hub cache and --dry-run stays offline"
        if offline and facts.base_model else "the base model's card states none"
    )
    raise PushError(f"license unknown: {where}; set model.license in the recipe (a Hub license id such as apache-2.0)")


def _lora_targets(model_dir: Path) -> list[str] | None:
    path = model_dir / "adapter_config.json"
    targets = read_json_file(path).get("target_modules") if path.is_file() else None
    return sorted(set(targets)) if isinstance(targets, list) else None


def card_inputs(facts: RunFacts, repo_id: str, *, offline: bool, onnx: dict[str, Any] | None = None):
    """Everything the card says, from the run's records made public (paths shortened, revisions pinned), and the
    ONNX export's facts with --with-onnx."""
    import yaml

    from hftoolkit.publish.card import CardInputs
    from hftoolkit.publish.sanitize import public_command, public_path, public_recipe
    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.refs import is_local_dataset

    run, notes = facts.run, []
    recipe = public_recipe(facts.recipe, facts.manifest, notes)
    recipe_json = recipe.model_dump(mode="json")
    Recipe.model_validate(recipe_json)  # what we publish must load again in `hft evaluate org/name`
    manifest = facts.manifest.public(kind=facts.kind, model_name=recipe.model.name, shorten=public_path, command=public_command)
    base_meta = base_card_metadata(facts, offline)
    license_id, license_source = resolve_license(facts, base_meta, offline)
    language = base_meta.get("language")
    return CardInputs(
        repo_id=repo_id, kind=facts.kind, task=facts.recipe.task, fields=facts.task.card_fields(), recipe=recipe,
        recipe_yaml=yaml.safe_dump(recipe_json, sort_keys=False, allow_unicode=True), manifest=manifest,
        data_report=run.read_data_report(), eval_results=run.read_eval_results().public(public_path),
        license=license_id, license_source=license_source, base_model=facts.base_model,
        base_revision=facts.base_revision, language=language if isinstance(language, (str, list)) else None,
        dataset_id=None if is_local_dataset(facts.recipe.dataset.name) else facts.recipe.dataset.name,
        has_loss_curve=run.loss_curve.is_file(), notes=notes, lora_targets=_lora_targets(run.model), onnx=onnx,
    )
