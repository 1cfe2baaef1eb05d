"""`hft push --verify`: download the pushed commit, check every byte, load it the way the card says (base model by
Hub id and commit from the published recipe) and compare its predictions with the local run's."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hftoolkit.errors import PushError
from hftoolkit.publish.hub_commit import SHORT_SHA
from hftoolkit.publish.merge import compare_logits, logits
from hftoolkit.publish.uploads import Upload, sha256_file

if TYPE_CHECKING:
    from hftoolkit.publish.inspect import RunFacts

VERIFY_ATOL = 1e-4  # the same weights loaded twice: only float noise may differ


def verify_atol(facts: RunFacts) -> float:
    """How far the downloaded model may predict from the local run: a merged QLoRA run was merged into dequantized
    weights (quantization.MERGE_ATOL, as `--merge` checked); anything else is the same weights."""
    quantized = facts.recipe.model.quantization
    if facts.kind == "merged" and quantized is not None:
        from hftoolkit.quantization import MERGE_ATOL

        return MERGE_ATOL[quantized.bits]
    return VERIFY_ATOL


def _intact(folder: Path, uploads: list[Upload]) -> list[str]:
    """Uploads the downloaded snapshot lacks or holds with other bytes."""
    return [
        u.path_in_repo for u in uploads
        if not (folder / u.path_in_repo).is_file() or sha256_file(folder / u.path_in_repo) != u.sha256
    ]


def verify_push(facts: RunFacts, repo_id: str, commit: str, uploads: list[Upload]) -> list[str]:
    """Download the pushed commit into a temp dir, check every byte, load it as the card says, compare predictions."""
    import yaml
    from huggingface_hub import snapshot_download

    from hftoolkit.modeling import load_trained
    from hftoolkit.recipe.schema import Recipe

    shown = f"{repo_id}@{commit[:SHORT_SHA]}"
    with tempfile.TemporaryDirectory(prefix="hft-verify-") as tmp:
        folder = Path(snapshot_download(repo_id, revision=commit, cache_dir=tmp))
        bad = _intact(folder, uploads)
        if bad:
            raise PushError(f"--verify: {shown} does not hold what was pushed: {', '.join(bad)}")
        # The published recipe names the base model by Hub id and commit: loading through it is what the card shows.
        published = Recipe.model_validate(yaml.safe_load((folder / "recipe.resolved.yaml").read_text()))
        remote, remote_processor = load_trained(facts.task, published, folder)
        local, processor = load_trained(facts.task, facts.recipe, facts.run.model)
        max_length = facts.recipe.dataset.max_length
        probe = facts.task.probe_inputs(processor, max_length)
        remote_probe = facts.task.probe_inputs(remote_processor, max_length)
        atol = verify_atol(facts)
        # The same weights must also agree on every top token; a dequantized merge is bounded by its tolerance alone.
        ok, diff = compare_logits(logits(local, probe), logits(remote, remote_probe), atol, same_argmax=atol == VERIFY_ATOL)
        if not ok:
            raise PushError(
                f"--verify: the model downloaded from {shown} predicts differently from the local run "
                f"(max |logit diff| {diff:.2e}, allowed {atol:g})"
            )
    return [
        f"verified {shown}: {len(uploads)} files downloaded intact",
        f"verified: loaded as the card says, predictions on {len(probe)} inputs match the local run (max |logit diff| {diff:.1e})",
    ]
