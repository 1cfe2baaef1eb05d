"""The files of a push: built from an allow-list (model files, card, eval results, recipe, manifest, loss curve), each
either copied from the run or generated / rewritten without local paths, and each checked to lie inside its folder.

Weights merged at push time are a `pending_merge` upload in --dry-run: listed, with no bytes yet.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import PushError
from hftoolkit.paths import require_inside
from hftoolkit.run.records import read_json_file

if TYPE_CHECKING:
    from hftoolkit.publish.inspect import RunFacts
    from hftoolkit.publish.onnx import OnnxPart

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
WEIGHT_FILES = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")
MERGED_WEIGHTS = "model.safetensors"
CONFIG_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "processor_config.json", "image_processor_config.json",
)
RUN_FILES = ("README.md", "eval_results.json", "recipe.resolved.yaml", "manifest.json", "loss_curve.png")
HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """The id git (and so the Hub) gives a regular file; compared with the remote's to skip unchanged runs."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def json_bytes(data: Any, sort_keys: bool = False) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n").encode()


@dataclass
class Upload:
    """One file of the commit: copied from `file`, generated/rewritten as `data`, or (--dry-run of --merge only)
    `pending_merge`: weights that exist only once the adapter is merged, listed without bytes."""

    path_in_repo: str
    origin: str  # where it comes from, shown by --dry-run
    file: Path | None = None
    data: bytes | None = None
    pending_merge: bool = False
    _sha256: str | None = field(default=None, init=False, repr=False, compare=False)

    def _require_content(self) -> None:
        if self.pending_merge:
            raise PushError(f"{self.path_in_repo} is merged at push time and has no content in a dry run")

    @property
    def size(self) -> int:
        self._require_content()
        return len(self.data) if self.data is not None else self.file.stat().st_size  # type: ignore[union-attr]

    def read(self) -> bytes:
        self._require_content()
        return self.data if self.data is not None else self.file.read_bytes()  # type: ignore[union-attr]

    def source(self) -> bytes | str:
        """What huggingface_hub's CommitOperationAdd takes: the bytes, or the file's path (streamed)."""
        self._require_content()
        return self.data if self.data is not None else str(self.file)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._require_content()
            self._sha256 = hashlib.sha256(self.data).hexdigest() if self.data is not None else sha256_file(self.file)  # type: ignore[arg-type]
        return self._sha256


def merged_weights_placeholder() -> Upload:
    return Upload(MERGED_WEIGHTS, "merged at push time (base + adapter, PEFT merge_and_unload)", pending_merge=True)


def public_name_or_path(path: Path) -> str | None:
    """transformers may record the folder a config was loaded from; that names this machine. Its public form or None."""
    from hftoolkit.publish.sanitize import public_path

    try:
        value = read_json_file(path).get("_name_or_path")
    except Exception:  # not a JSON object (a tokenizer vocab in JSON form ...): nothing to rewrite
        return None
    return public_path(value) if isinstance(value, str) and public_path(value) != value else None


def _wanted(name: str, kind: str) -> bool:
    return name in CONFIG_FILES or (name in ADAPTER_FILES if kind == "adapter" else bool(WEIGHT_FILES.match(name)))


def _model_file_upload(path: Path, folder: Path, facts: RunFacts) -> Upload:
    name = path.name
    if name == "adapter_config.json":
        config = read_json_file(path)
        # PEFT records where the base was loaded from (often a local folder); the card and AutoPeftModel need its Hub id.
        config["base_model_name_or_path"] = facts.base_model
        config["revision"] = facts.base_revision
        return Upload(name, f"model/{name} (base_model_name_or_path: {facts.base_model})", data=json_bytes(config, True))
    short = public_name_or_path(path) if name.endswith(".json") else None
    if short is not None:
        data = read_json_file(path)
        data["_name_or_path"] = short
        return Upload(name, f"{folder.name}/{name} (_name_or_path shortened)", data=json_bytes(data))
    return Upload(name, f"{folder.name}/{name}", file=path)


def model_folder_uploads(folder: Path, facts: RunFacts, boundary: Path) -> tuple[list[Upload], list[str]]:
    """The allow-listed files of `folder`, each of which must really lie inside `boundary` (symlinks resolved)."""
    uploads, skipped = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if not _wanted(path.name, facts.kind):
            skipped.append(path.name)
            continue
        require_inside(path, boundary, "file to publish")
        uploads.append(_model_file_upload(path, folder, facts))
    return uploads, skipped


def build_uploads(
    facts: RunFacts, repo_id: str, model_folder: Path, *, offline: bool, onnx: OnnxPart | None = None
) -> tuple[list[Upload], list[str], str]:
    """Every file of the commit (with --with-onnx, the export under onnx/), the names left out, and the card text."""
    from hftoolkit.publish.card import render_card, validate_card
    from hftoolkit.publish.inspect import card_inputs

    run = facts.run
    if not run.eval_results.is_file():
        raise PushError(
            f"{run.eval_results} is missing: the card's results come from it; run `hft evaluate {run.path}` first"
        )
    from_run = model_folder == run.model
    # The merged model is written into push's own temp dir, which is then its boundary.
    uploads, skipped = model_folder_uploads(model_folder, facts, run.path if from_run else model_folder)
    skipped = [f"model/{n}" for n in skipped] if from_run else skipped
    for path in (run.eval_results, run.data_report, run.loss_curve):
        if path.exists() or path.is_symlink():
            require_inside(path, run.path, "file to publish")
    inputs = card_inputs(facts, repo_id, offline=offline, onnx=onnx.card if onnx else None)
    card = render_card(inputs)
    validate_card(card, kind=facts.kind)
    uploads += [
        Upload("README.md", "generated model card", data=card.encode()),
        Upload("eval_results.json", "eval_results.json (without local paths)", data=json_bytes(inputs.eval_results.as_json())),
        Upload("recipe.resolved.yaml", "recipe.resolved.yaml (for publication: see the card)", data=inputs.recipe_yaml.encode()),
        Upload("manifest.json", "manifest.json (allow-listed fields, without local paths)", data=json_bytes(inputs.manifest.as_json())),
    ]
    if inputs.has_loss_curve:
        uploads.append(Upload("loss_curve.png", "loss_curve.png", file=run.loss_curve))
    if onnx:
        uploads += onnx.uploads
    published = {"model", *RUN_FILES}
    skipped += sorted(
        p.name + ("/" if p.is_dir() else "") for p in run.path.iterdir() if p.name not in published and not p.name.startswith(".")
    )
    return sorted(uploads, key=lambda u: u.path_in_repo), skipped, card
