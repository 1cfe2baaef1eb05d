"""`hft push`: publish a finished run to the Hub as an adapter or a merged model, with its model card, in one commit.

The order is deliberate: everything that can be refused is refused before the network is touched.
1. pre-flight on the run directory: pickle files and secret-looking files stop the push, naming them;
2. the publish set is built from an allow-list (model files, card, eval results, recipe, manifest, loss curve);
   JSON/YAML that held local absolute paths are published sanitized (paths shortened to their last component);
3. the card is rendered and validated (license, model-index); labels must be real names;
4. for --merge, the adapter is merged and the merged logits are checked against the adapter's;
5. one `create_commit` with every file (and the removal of files an earlier push published that are gone now),
   pinned to the branch head we compared against, so a failure leaves the repo as it was. Unchanged runs are a no-op.
`--verify` then downloads the pushed revision, loads it the way the card says and compares predictions.

Tokens come only from huggingface_hub's own lookup (HF_TOKEN or `hf auth login`); they are never printed or written.
Heavy libraries are imported inside functions; an adapter push without --verify never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from hftoolkit.card import code_span
from hftoolkit.errors import HubOfflineError, PushError
from hftoolkit.paths import is_inside, require_inside
from hftoolkit.recipe import HF_TOKEN_PATTERN
from hftoolkit.repo_ids import require_repo_id
from hftoolkit.rundir import RunDir, read_json

log = logging.getLogger("hftoolkit")

# Folders of the run directory that are never published and may legitimately hold pickles (Trainer checkpoints
# with optimizer states and training_args.bin) or machine-specific logs (TensorBoard events).
UNPUBLISHED_DIRS = ("checkpoints", "tensorboard")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy")
SECRET_FILE_NAMES = (".env", ".netrc", ".git-credentials", ".pypirc", "id_rsa", "id_ecdsa", "id_ed25519", "credentials")
SECRET_SUFFIXES = (".env", ".pem", ".key", ".p12", ".pfx")
SECRET_CONTENT = {
    "a Hugging Face access token (hf_...)": re.compile(HF_TOKEN_PATTERN.pattern.encode()),
    "a PEM private key": re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"),
    "an environment-file secret (NAME=value with SECRET/TOKEN/PASSWORD/KEY in the name)": re.compile(
        rb"(?m)^[ \t]*(?:export[ \t]+)?[A-Z0-9_]*(?:SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)"
        rb"[A-Z0-9_]*[ \t]*=[ \t]*\S"
    ),
    "an AWS access key id": re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
}
TEXT_SCAN_LIMIT = 50 * 1024 * 1024  # larger files are weights, not configs or notes

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
WEIGHT_FILES = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")
CONFIG_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "processor_config.json", "image_processor_config.json",
)
RUN_FILES = ("README.md", "eval_results.json", "recipe.resolved.yaml", "manifest.json", "loss_curve.png")
PLACEHOLDER_LABEL = re.compile(r"^LABEL_\d+$")
# float32 logits of merged weights vs base + adapter differ by summation order only; lower precisions by far more.
MERGE_ATOL = {"float32": 1e-4, "float64": 1e-6, "bfloat16": 5e-2, "float16": 1e-2}
VERIFY_ATOL = 1e-4
PROBE_TEXTS = (
    "The delivery was fast and the product works perfectly.",
    "It broke after two days and support never answered.",
    "An ordinary afternoon with nothing much to report.",
    "Would I buy it again? Absolutely not.",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """The id git (and so the Hub) gives a regular file; compared with the remote's to skip unchanged runs."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Upload:
    """One file of the commit: copied from `file`, or generated/rewritten as `data`."""

    path_in_repo: str
    origin: str  # where it comes from, shown by --dry-run
    file: Path | None = None
    data: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.file.stat().st_size  # type: ignore[union-attr]

    def read(self) -> bytes:
        return self.data if self.data is not None else self.file.read_bytes()  # type: ignore[union-attr]

    @property
    def sha256(self) -> str:
        if "_sha256" not in self.__dict__:
            self.__dict__["_sha256"] = (
                hashlib.sha256(self.data).hexdigest() if self.data is not None else sha256_file(self.file)  # type: ignore[arg-type]
            )
        return self.__dict__["_sha256"]


@dataclass
class PushResult:
    repo_id: str
    kind: str
    card: str
    uploads: list[Upload]
    not_published: list[str] = field(default_factory=list)
    revision: str = "main"
    commit: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    noop: bool = False
    dry_run: bool = False
    verify_lines: list[str] = field(default_factory=list)
    merge_check: str | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Pre-flight: what is in the run directory


def _looks_like_pickle(path: Path) -> bool:
    if path.name.endswith(PICKLE_SUFFIXES):
        return True
    try:
        with path.open("rb") as f:
            head = f.read(4)
        # Pickle protocols 2-5 start with PROTO; torch.save writes a zip holding data.pkl.
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            return True
        if head == b"PK\x03\x04" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return any(n.endswith(".pkl") for n in z.namelist())
    except OSError:
        return False
    return False


def secret_kind(data: bytes) -> str | None:
    """What secret `data` seems to hold, or None. Binary data (weights, images) is not scanned."""
    if b"\0" in data[:8192]:
        return None
    for kind, pattern in SECRET_CONTENT.items():
        if pattern.search(data):
            return kind
    return None


def _link_problem(link: Path, root: Path, shown: str) -> str:
    """A link is refused either way; one that leaves the run is the dangerous case, so the message says so."""
    target = os.path.realpath(link)
    if not is_inside(link, root):
        return f"{shown}: a symlink to {target}, outside the run directory (hft publishes no file from outside the run)"
    inside = Path(target).relative_to(os.path.realpath(root)).as_posix()
    return f"{shown}: a symlink to {inside} (publishing follows no links)"


def preflight(run: RunDir) -> None:
    """Refuse a run directory holding pickles or secrets outside checkpoints/ and tensorboard/, naming every one."""
    problems: list[str] = []
    for path in sorted(p for p in run.path.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(run.path)
        if rel.parts[0] in UNPUBLISHED_DIRS:
            continue
        shown = rel.as_posix()
        if path.is_symlink():
            problems.append(_link_problem(path, run.path, shown))
            continue
        name = path.name.lower()
        if name in SECRET_FILE_NAMES or name.startswith(".env") or name.endswith(SECRET_SUFFIXES):
            problems.append(f"{shown}: a credentials file by its name")
            continue
        if _looks_like_pickle(path):
            problems.append(f"{shown}: a pickle file (can run code when loaded); delete it, weights belong in safetensors")
            continue
        if path.stat().st_size <= TEXT_SCAN_LIMIT:
            kind = secret_kind(path.read_bytes())
            if kind:
                problems.append(f"{shown}: looks like {kind}")
    if problems:
        raise PushError(
            f"refusing to push {run.path}: " + "; ".join(problems) + ". Remove these files from the run directory "
            "(or move them elsewhere) and push again"
        )


def check_uploads(uploads: list[Upload], markers: list[str]) -> None:
    """Last line of defence on the exact bytes to send: no secret, no token of this session, no local path."""
    from huggingface_hub import get_token

    token = get_token()
    problems = []
    for u in uploads:
        data = u.read() if u.size <= TEXT_SCAN_LIMIT else b""
        if token and data and token.encode() in data:
            problems.append(f"{u.path_in_repo}: contains the Hugging Face token of this session")
            continue
        kind = secret_kind(data)
        if kind:
            problems.append(f"{u.path_in_repo}: looks like {kind}")
            continue
        if b"\0" not in data[:8192]:
            text = data.decode("utf-8", "replace")
            found = next((m for m in markers if m in text), None)
            if found:
                problems.append(f"{u.path_in_repo}: contains the local path {found}")
    if problems:
        raise PushError("refusing to push: " + "; ".join(problems))


def check_commit_text(fields: dict[str, str | None]) -> None:
    """The commit message, PR description and branch name are published with the commit: scan them as files are.

    The message never echoes the text: it is the secret. NUL bytes become spaces first, as they would hide the text from
    `secret_kind`'s binary-data rule.
    """
    from huggingface_hub import get_token

    token = get_token()
    for what, text in fields.items():
        if not text:
            continue
        kind = "the Hugging Face token of this session" if token and token in text else secret_kind(
            text.replace("\0", " ").encode()
        )
        if kind:
            raise PushError(
                f"refusing to push: {what} looks like it holds {kind}, which the Hub would publish with the commit; "
                "write it without the secret (not shown here)"
            )


# ----------------------------------------------------------------------------------------------------------------------
# Sanitizing what the run directory says about this machine


def public_path(value: str) -> str:
    """Local absolute paths become their last component (the rest names this machine); relative paths stay."""
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return Path(value.replace("\\", "/")).name
    return value


def public_command(command: str) -> str:
    try:
        parts = shlex.split(command)
    except ValueError:
        return "hft …"
    out = []
    for part in parts:
        key, sep, value = part.partition("=")
        out.append(f"{key}={public_path(value)}" if sep and not part.startswith("/") else public_path(part))
    return shlex.join(out)


def _is_local_model(name: str) -> bool:
    from hftoolkit.hub import is_hub_id

    return name.startswith("package:") or Path(name).expanduser().exists() or not is_hub_id(name)


def _is_local_dataset(ds: dict) -> bool:
    from hftoolkit.hub import is_hub_id

    name = ds.get("name")
    return name is None or Path(name).expanduser().exists() or not is_hub_id(name)


def public_recipe(recipe: dict, manifest: dict, notes: list[str]) -> dict:
    """The resolved recipe as published: local paths shortened, Hub revisions pinned to the commits the run used."""
    out = json.loads(json.dumps(recipe))
    model, ds = out["model"], out["dataset"]
    if _is_local_model(model["name"]):
        short = public_path(model["name"])
        if short != model["name"]:
            notes.append(f"model.name: the local folder is published as {code_span(short)}")
            model["name"] = short
    else:
        commit = (manifest.get("model") or {}).get("commit")
        if commit and model.get("revision") != commit:
            notes.append(f"model.revision: pinned to the commit the run used ({commit}; the recipe said {model.get('revision') or 'main'})")
            model["revision"] = commit
    if ds.get("name") is not None:
        if _is_local_dataset(ds):
            short = public_path(ds["name"])
            if short != ds["name"]:
                notes.append(f"dataset.name: the local folder is published as {code_span(short)}")
                ds["name"] = short
        else:
            commit = (manifest.get("dataset") or {}).get("commit")
            if commit and ds.get("revision") != commit:
                notes.append(f"dataset.revision: pinned to the commit the run used ({commit}; the recipe said {ds.get('revision') or 'main'})")
                ds["revision"] = commit
    if ds.get("files"):
        short = {k: public_path(v) for k, v in ds["files"].items()}
        if short != ds["files"]:
            notes.append("dataset.files: local absolute paths shortened to file names")
            ds["files"] = short
    if public_path(out["output_dir"]) != out["output_dir"]:
        out["output_dir"] = public_path(out["output_dir"])
        notes.append(f"output_dir: shortened to {code_span(out['output_dir'])}")
    return out


def _public_source(source: dict | None) -> dict:
    source = dict(source or {})
    if "id" in source:
        source["id"] = public_path(str(source["id"]))
    if source.get("files"):
        source["files"] = {k: public_path(v) for k, v in source["files"].items()}
    return {k: source[k] for k in ("id", "config", "revision", "commit", "files", "split_names", "fingerprints", "notes") if k in source}


def public_manifest(manifest: dict, kind: str, published_recipe: dict) -> dict:
    """An allow-list of manifest fields: new fields (possibly with paths) are not published until listed here."""
    keep = (
        "status", "hftoolkit_version", "recipe_fingerprint", "task", "seed", "precision", "world_size", "device",
        "labels", "adapter", "parameters", "versions",
    )
    out = {k: manifest[k] for k in keep if k in manifest}
    out["command"] = public_command(manifest.get("command", "hft finetune"))
    model = dict(manifest.get("model") or {})
    out["model"] = {"name": published_recipe["model"]["name"], "revision": model.get("revision"), "commit": model.get("commit")}
    out["dataset"] = _public_source(manifest.get("dataset"))
    out["published_as"] = kind
    return out


def public_eval_results(results: dict) -> dict:
    keep = ("split", "num_examples", "metrics", "labels", "artifacts")
    out = {k: results[k] for k in keep if k in results}
    out["dataset"] = _public_source(results.get("dataset"))
    model = dict(results.get("model") or {})
    if model:
        out["model"] = {**model, "name": public_path(str(model.get("name", "")))}
    return out


def _json_bytes(data: Any, sort_keys: bool = False) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n").encode()


# ----------------------------------------------------------------------------------------------------------------------
# What the run is and what goes into the repo


@dataclass
class RunFacts:
    run: RunDir
    recipe: Any  # Recipe
    recipe_dict: dict
    manifest: dict
    task: Any
    kind: str
    labels: list[str] | None
    base_model: str | None
    base_revision: str | None


def inspect_run(run_path: str | Path, merge: bool) -> RunFacts:
    from hftoolkit.tasks import get_task

    run = RunDir(run_path)
    manifest = run.require_trained()
    recipe = run.load_recipe()
    task = get_task(recipe.task)
    is_adapter = (run.model / "adapter_config.json").is_file()
    if merge and not is_adapter:
        raise PushError(f"--merge: run {run.path} is a full fine-tune (no LoRA adapter to merge); push it without --merge")
    kind = "merged" if merge else ("adapter" if is_adapter else "full")
    labels = manifest.get("labels")
    config_file = run.model / "config.json"
    if config_file.is_file():
        id2label = (read_json(config_file).get("id2label") or {}) if labels else {}
        names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
        placeholders = [n for n in (labels or []) + names if PLACEHOLDER_LABEL.match(str(n))]
        if placeholders:
            raise PushError(
                f"labels {', '.join(sorted(set(placeholders)))} are placeholders, not names; set dataset.label_names in "
                "the recipe and train again, so the published model says what it predicts"
            )
        if labels and names and names != labels:
            raise PushError(f"model/config.json id2label {names} differs from the run's labels {labels}")
    model_info = manifest.get("model") or {}
    base_model = None if _is_local_model(recipe.model.name) else recipe.model.name
    base_revision = model_info.get("commit") or recipe.model.revision
    if kind == "adapter" and base_model is None:
        raise PushError(
            f"the base model {recipe.model.name!r} is not a Hub repo, so nobody could load this adapter; push the merged "
            "model with --merge, or train from the base model's Hub id"
        )
    return RunFacts(run, recipe, recipe.model_dump(mode="json"), manifest, task, kind, labels, base_model, base_revision)


def _local_name_or_path(path: Path) -> bool:
    """transformers may record the folder a config was loaded from; that names this machine."""
    try:
        value = read_json(path).get("_name_or_path")
    except Exception:  # not a JSON object (a tokenizer vocab in JSON form ...): nothing to rewrite
        return False
    return isinstance(value, str) and public_path(value) != value


def _model_folder_uploads(folder: Path, kind: str, facts: RunFacts, boundary: Path) -> tuple[list[Upload], list[str]]:
    """The allow-listed files of `folder`, each of which must really lie inside `boundary` (symlinks resolved)."""
    uploads, skipped = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        name = path.name
        wanted = name in CONFIG_FILES or (name in ADAPTER_FILES if kind == "adapter" else bool(WEIGHT_FILES.match(name)))
        if not wanted:
            skipped.append(name)
            continue
        require_inside(path, boundary, "file to publish")
        if name == "adapter_config.json":
            config = read_json(path)
            # PEFT records where the base was loaded from (often a local folder); the card and AutoPeftModel need its Hub id.
            config["base_model_name_or_path"] = facts.base_model
            config["revision"] = facts.base_revision
            uploads.append(Upload(name, f"model/{name} (base_model_name_or_path: {facts.base_model})", data=_json_bytes(config, True)))
        elif name.endswith(".json") and _local_name_or_path(path):
            data = read_json(path)
            data["_name_or_path"] = public_path(data["_name_or_path"])
            uploads.append(Upload(name, f"{folder.name}/{name} (_name_or_path shortened)", data=_json_bytes(data)))
        else:
            uploads.append(Upload(name, f"{folder.name}/{name}", file=path))
    return uploads, skipped


def base_card_metadata(facts: RunFacts, offline: bool) -> dict:
    """The base model's README metadata (license, language) from its folder or Hub repo; {} when unknown."""
    from huggingface_hub import hf_hub_download, metadata_load

    from hftoolkit.modeling import resolve_ref

    try:
        ref = resolve_ref(facts.recipe.model)
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


def _license(facts: RunFacts, base_meta: dict) -> tuple[str | None, str]:
    from hftoolkit.card import license_problem

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
    return None, "nowhere"


def _lora_targets(run: RunDir) -> list[str] | None:
    path = run.model / "adapter_config.json"
    targets = read_json(path).get("target_modules") if path.is_file() else None
    return sorted(set(targets)) if isinstance(targets, list) else None


def build_uploads(facts: RunFacts, repo_id: str, model_folder: Path, *, offline: bool) -> tuple[list[Upload], list[str], str]:
    """Every file of the commit, the names left out, and the card text."""
    from hftoolkit.card import CardInputs, render_card, validate_card

    run = facts.run
    if not run.eval_results.is_file():
        raise PushError(
            f"{run.eval_results} is missing: the card's results come from it; run `hft evaluate {run.path}` first"
        )
    from_run = model_folder == run.model
    # The merged model is written into push's own temp dir, which is then its boundary.
    uploads, skipped = _model_folder_uploads(model_folder, facts.kind, facts, run.path if from_run else model_folder)
    skipped = [f"model/{n}" for n in skipped] if from_run else skipped
    for path in (run.eval_results, run.data_report, run.loss_curve):
        if path.exists() or path.is_symlink():
            require_inside(path, run.path, "file to publish")
    notes: list[str] = []
    recipe = public_recipe(facts.recipe_dict, facts.manifest, notes)
    from hftoolkit.recipe import Recipe

    Recipe.model_validate(recipe)  # what we publish must load again in `hft evaluate org/name`
    recipe_yaml = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    manifest = public_manifest(facts.manifest, facts.kind, recipe)
    eval_results = public_eval_results(read_json(run.eval_results))
    data_report = read_json(run.data_report) if run.data_report.is_file() else {}
    base_meta = base_card_metadata(facts, offline)
    license_id, license_source = _license(facts, base_meta)
    if license_id is None:
        where = (
            f"the card of the base model {facts.base_model} is not in the Hub cache and --dry-run stays offline"
            if offline and facts.base_model else "the base model's card states none"
        )
        raise PushError(f"license unknown: {where}; set model.license in the recipe (a Hub license id such as apache-2.0)")
    language = base_meta.get("language") if isinstance(base_meta.get("language"), (str, list)) else None
    has_curve = run.loss_curve.is_file()
    dataset_id = None if _is_local_dataset(facts.recipe_dict["dataset"]) else facts.recipe.dataset.name
    inputs = CardInputs(
        repo_id=repo_id, kind=facts.kind, task=facts.recipe.task, pipeline_tag=facts.task.pipeline_tag,
        auto_model=facts.task.auto_model, recipe=recipe, recipe_yaml=recipe_yaml, manifest=manifest,
        data_report=data_report, eval_results=eval_results, license=license_id, license_source=license_source,
        base_model=facts.base_model, base_revision=facts.base_revision, dataset_id=dataset_id, language=language,
        has_loss_curve=has_curve, notes=notes, lora_targets=_lora_targets(run),
    )
    card = render_card(inputs)
    validate_card(card, kind=facts.kind)
    uploads += [
        Upload("README.md", "generated model card", data=card.encode()),
        Upload("eval_results.json", "eval_results.json (without local paths)", data=_json_bytes(eval_results)),
        Upload("recipe.resolved.yaml", "recipe.resolved.yaml (for publication: see the card)", data=recipe_yaml.encode()),
        Upload("manifest.json", "manifest.json (allow-listed fields, without local paths)", data=_json_bytes(manifest)),
    ]
    if has_curve:
        uploads.append(Upload("loss_curve.png", "loss_curve.png", file=run.loss_curve))
    published = {"model", *RUN_FILES}
    skipped += sorted(
        p.name + ("/" if p.is_dir() else "") for p in run.path.iterdir() if p.name not in published and not p.name.startswith(".")
    )
    return sorted(uploads, key=lambda u: u.path_in_repo), skipped, card


def local_markers(facts: RunFacts) -> list[str]:
    """Absolute paths of this machine that must not appear in published text."""
    from hftoolkit.modeling import resolve_ref

    candidates = {str(facts.run.path.resolve()), str(Path.cwd()), str(Path.home()), os.environ.get("HF_HOME", "")}
    try:
        candidates.add(str(Path(resolve_ref(facts.recipe.model)).resolve()))
    except Exception:  # resolving is best effort here; a broken reference was already reported elsewhere
        pass
    for f in (facts.recipe.dataset.files or {}).values():
        candidates.add(str(Path(f).expanduser().resolve().parent))
    if facts.recipe.dataset.name and _is_local_dataset(facts.recipe_dict["dataset"]):
        candidates.add(str(Path(facts.recipe.dataset.name).expanduser().resolve()))
    # Short paths (/, /root, /tmp) also occur inside vocabularies; only distinctive ones are markers.
    return sorted(c for c in candidates if c and len(c) > 6 and c.count("/") >= 2)


# ----------------------------------------------------------------------------------------------------------------------
# Merging and checking outputs


def probe_inputs(task: Any, processor: Any, model: Any, max_length: int) -> list[dict]:
    """A few fixed inputs for comparing two models, one dict of tensors per example (no padding to get wrong)."""
    import torch

    if task.pipeline_tag == "image-classification":
        import numpy as np
        from PIL import Image

        rng = np.random.RandomState(0)
        images = [Image.fromarray(rng.randint(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]
        return [dict(processor(images=[im], return_tensors="pt")) for im in images]
    out = []
    for text in PROBE_TEXTS:
        enc = processor(text, return_tensors="pt", truncation=True, max_length=max_length)
        out.append({k: v for k, v in enc.items() if isinstance(v, torch.Tensor)})
    return out


def logits(model: Any, inputs: list[dict]) -> list:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(**{k: v.to(device) for k, v in x.items()}).logits.float().cpu() for x in inputs]


def compare_logits(a: list, b: list, atol: float) -> tuple[bool, float]:
    import torch

    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    same_argmax = all(torch.equal(x.argmax(-1), y.argmax(-1)) for x, y in zip(a, b))
    return diff <= atol and same_argmax, diff


def merge_adapter(facts: RunFacts, out_dir: Path) -> str:
    """Merge the LoRA adapter into the base, check the merged logits against the adapter's, save safetensors."""
    from hftoolkit.modeling import load_trained

    model, processor = load_trained(facts.task, facts.recipe, facts.run.model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    atol, base = MERGE_ATOL.get(dtype, 1e-2), ""
    probe = probe_inputs(facts.task, processor, model, facts.recipe.dataset.max_length)
    before = logits(model, probe)
    quantized = facts.recipe.model.quantization
    if quantized is not None:
        from hftoolkit.quantization import MERGE_ATOL as QUANTIZED_ATOL

        # PEFT would re-quantize merged 4/8-bit layers; the published weights are the base dequantized + the adapter.
        model, _ = load_trained(facts.task, facts.recipe, facts.run.model, dequantize=True)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        atol, base = QUANTIZED_ATOL[quantized.bits], f" (the {quantized.bits}-bit base dequantized to {dtype})"
        log.warning("--merge: the adapter was trained on a %d-bit base; merging it into that base dequantized to %s "
                    "(a looser logit check: %g)", quantized.bits, dtype, atol)
    merged = model.merge_and_unload()
    after = logits(merged, probe)
    ok, diff = compare_logits(before, after, atol)
    if not ok:
        raise PushError(
            f"--merge: the merged model's logits differ from the adapter's by up to {diff:.2e} (allowed {atol:g} in "
            f"{dtype}) or change a prediction; not publishing it. Push the adapter instead (without --merge)"
        )
    merged.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    return f"merged logits{base} match the adapter's on {len(probe)} inputs (max |diff| {diff:.1e}, allowed {atol:g} in {dtype})"


def verify_atol(facts: RunFacts) -> float:
    """How far the downloaded model may predict from the local run: a merged QLoRA run was merged into dequantized
    weights (quantization.MERGE_ATOL); anything else is the same weights."""
    quantized = facts.recipe.model.quantization
    if facts.kind == "merged" and quantized is not None:
        from hftoolkit.quantization import MERGE_ATOL as QUANTIZED_ATOL

        return QUANTIZED_ATOL[quantized.bits]
    return VERIFY_ATOL


def verify_push(facts: RunFacts, repo_id: str, commit: str, uploads: list[Upload]) -> list[str]:
    """Download the pushed commit into a temp dir, check every byte, load it as the card says, compare predictions."""
    from huggingface_hub import snapshot_download

    from hftoolkit.modeling import load_trained
    from hftoolkit.recipe import Recipe

    with tempfile.TemporaryDirectory(prefix="hft-verify-") as tmp:
        folder = Path(snapshot_download(repo_id, revision=commit, cache_dir=tmp))
        bad = [u.path_in_repo for u in uploads if not (folder / u.path_in_repo).is_file() or sha256_file(folder / u.path_in_repo) != u.sha256]
        if bad:
            raise PushError(f"--verify: {repo_id}@{commit[:12]} does not hold what was pushed: {', '.join(bad)}")
        # The published recipe names the base model by Hub id and commit: loading through it is what the card shows.
        published = Recipe.model_validate(yaml.safe_load((folder / "recipe.resolved.yaml").read_text()))
        remote, remote_processor = load_trained(facts.task, published, folder)
        local, processor = load_trained(facts.task, facts.recipe, facts.run.model)
        max_length = facts.recipe.dataset.max_length
        probe = probe_inputs(facts.task, processor, local, max_length)
        remote_probe = probe_inputs(facts.task, remote_processor, remote, max_length)
        atol = verify_atol(facts)
        ok, diff = compare_logits(logits(local, probe), logits(remote, remote_probe), atol)
        if not ok:
            raise PushError(
                f"--verify: the model downloaded from {repo_id}@{commit[:12]} predicts differently from the local run "
                f"(max |logit diff| {diff:.2e}, allowed {atol:g})"
            )
    return [
        f"verified {repo_id}@{commit[:12]}: {len(uploads)} files downloaded intact",
        f"verified: loaded as the card says, predictions on {len(probe)} inputs match the local run (max |logit diff| {diff:.1e})",
    ]


# ----------------------------------------------------------------------------------------------------------------------
# The push


def _chain(e: BaseException | None):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _network_error(e: Exception) -> bool:
    """An HTTP or connection failure, possibly wrapped (huggingface_hub raises RuntimeError around failed LFS uploads)."""
    from huggingface_hub.errors import HfHubHTTPError

    return any(
        isinstance(x, (HfHubHTTPError, OSError)) or type(x).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore")
        for x in _chain(e)
    )


def _first_line(e: Exception) -> str:
    def line(x: BaseException) -> str:
        text = str(x).strip()
        return text.splitlines()[0] if text else type(x).__name__

    chain = list(_chain(e))
    root = chain[-1]
    return line(e) + (f" ({type(root).__name__}: {line(root)})" if line(root) != line(e) else f" ({type(e).__name__})")


def _checked_run(run_path: str | Path, repo_id: str, *, merge: bool, revision: str | None,
                 commit_message: str | None) -> tuple[RunFacts, str, str]:
    """What is refused before any network call: the repo id, the commit's text, the branch name, the run's files."""
    require_repo_id(repo_id, "--repo-id")
    check_commit_text({"--commit-message": commit_message, "--revision": revision})
    if revision is not None and (not revision or revision.startswith("refs/") or re.fullmatch(r"[0-9a-f]{40}", revision)):
        raise PushError(f"--revision {revision!r}: give a branch name (it is created from main when missing)")
    run = RunDir(run_path)
    if run.manifest.exists() or run.manifest.is_symlink():
        # Before anything of the run is read: a manifest or recipe linked from outside the run is refused, not parsed.
        preflight(run)
    facts = inspect_run(run_path, merge)
    message, description = commit_text(facts, commit_message)
    generated = {"the commit message": None if commit_message else message, "the commit description": description}
    check_commit_text(generated)
    return facts, message, description


def push(
    run_path: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    merge: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    dry_run: bool = False,
    verify: bool = False,
    progress: Callable[[str], None] = log.info,
) -> PushResult:
    facts, message, description = _checked_run(
        run_path, repo_id, merge=merge, revision=revision, commit_message=commit_message
    )
    if not dry_run:
        from huggingface_hub import get_token

        from hftoolkit.data import hub_offline

        if hub_offline():
            raise HubOfflineError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it, or preview with --dry-run")

        if not get_token():
            raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (tokens are never taken from recipes or options)")

    with tempfile.TemporaryDirectory(prefix="hft-push-") as tmp:
        merge_check = None
        model_folder = facts.run.model
        if facts.kind == "merged" and not dry_run:
            progress("merging the LoRA adapter into the base model")
            model_folder = Path(tmp) / "merged"
            merge_check = merge_adapter(facts, model_folder)
        uploads, skipped, card = build_uploads(facts, repo_id, model_folder, offline=dry_run)
        if facts.kind == "merged" and dry_run:
            uploads.append(Upload("model.safetensors", "merged at push time (base + adapter, PEFT merge_and_unload)", data=b""))
            uploads.sort(key=lambda u: u.path_in_repo)
        result = PushResult(repo_id, facts.kind, card, uploads, skipped, revision or "main", dry_run=dry_run, merge_check=merge_check)
        check_uploads([u for u in uploads if u.data != b"" or u.file], local_markers(facts))
        if dry_run:
            return result
        _commit(result, private=private, create_pr=create_pr, message=message, description=description, progress=progress)
        if verify:
            commit = result.commit or result.revision
            progress(f"verifying {repo_id}@{commit[:12]}")
            try:
                result.verify_lines = verify_push(facts, repo_id, commit, uploads)
            except Exception as e:
                if not _network_error(e):
                    raise
                raise PushError(f"pushed as commit {commit[:12]}, but --verify could not download it: {_first_line(e)}") from None
    return result


def commit_text(facts: RunFacts, commit_message: str | None) -> tuple[str, str]:
    """The commit title and the description's fixed part (also the PR description with --create-pr)."""
    manifest = facts.manifest
    message = commit_message or f"hft push: {facts.kind} of run {facts.run.path.resolve().name}"
    description = (
        f"Published by hftoolkit {manifest.get('hftoolkit_version', '')} from a {facts.recipe.task} run "
        f"(recipe fingerprint {manifest.get('recipe_fingerprint', '?')})."
    )
    return message, description


def _commit(result: PushResult, *, private: bool, create_pr: bool, message: str, description: str,
            progress: Callable[[str], None]) -> None:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    repo_id, branch = result.repo_id, result.revision
    head = None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.repo_info(repo_id, revision=branch)
        head = info.sha
        if private and not info.private:
            log.warning("%s already exists and is public; --private only applies to new repos", repo_id)
        remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=head, recursive=True) if isinstance(f, RepoFile)}
    except Exception as e:
        if not _network_error(e):
            raise
        raise PushError(f"cannot reach {repo_id} on the Hub: {_first_line(e)}; nothing was uploaded") from None

    for u in result.uploads:
        r = remote.get(u.path_in_repo)
        same = r is not None and (r.lfs.sha256 == u.sha256 if r.lfs else r.blob_id == git_blob_sha1(u.read()))
        if not same:
            result.changed.append(u.path_in_repo)
    ours = {u.path_in_repo for u in result.uploads}
    # Files an earlier push of another kind published (adapter files after --merge, or weights after an adapter push)
    # would make the repo load as the wrong thing; anything else in the repo is the user's and stays.
    result.removed = sorted(
        p for p in remote
        if p not in ours and (p in ADAPTER_FILES or WEIGHT_FILES.match(p) or p in CONFIG_FILES or p in RUN_FILES)
    )
    result.commit = head
    if not result.changed and not result.removed:
        result.noop = True
        return

    operations: list = [CommitOperationAdd(path_in_repo=u.path_in_repo, path_or_fileobj=u.data if u.data is not None else str(u.file))
                        for u in result.uploads]
    operations += [CommitOperationDelete(path_in_repo=p) for p in result.removed]
    description = f"{description} {len(result.changed)} file(s) changed, {len(result.removed)} removed."
    progress(f"uploading {len(result.changed)} changed file(s) to {repo_id}@{branch} in one commit")
    try:
        info = api.create_commit(
            repo_id, operations, commit_message=message, commit_description=description, revision=branch,
            create_pr=create_pr, parent_commit=head,
        )
    except Exception as e:
        if not _network_error(e):
            raise
        try:
            now = api.repo_info(repo_id, revision=branch).sha
        except Exception:  # the Hub is unreachable: say we could not check
            now = None
        if now == head:
            state = f"{repo_id}@{branch} is unchanged (still at {head[:12]})"
        elif now is None:
            state = f"could not check {repo_id}@{branch} afterwards"
        else:
            state = f"{repo_id}@{branch} moved from {head[:12]} to {now[:12]}; check it"
        raise PushError(
            f"push failed: {_first_line(e)}. {state}; the run directory was not changed. Run the same command again: "
            "it uploads only what is missing"
        ) from None
    result.commit = info.oid
    result.commit_url = info.commit_url
    result.pr_url = info.pr_url
