"""Files from outside the model folder (issue 11): a local model folder whose config, tokenizer or weights file is a
symlink leaving it is refused by `hft validate` and `hft finetune`, naming the link and its target, before anything
is read or written. A Hub cache snapshot, whose files link to `../../blobs/` on purpose, keeps working.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.cli_helpers import hft_cli
from tests.fixtures import text_cls_recipe

SHA = "0123456789abcdef0123456789abcdef01234567"
FAST = {"dataset": {"max_samples": {"train": 32, "validation": 16, "test": 16}}}


def _linked_model(tiny_bert: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A copy of the tiny BERT whose `name` is a symlink to a secret outside the folder. The secret is not valid
    JSON or safetensors, so a loader that read it before the check would fail with another message."""
    model, outside = tmp_path / "model", tmp_path / "outside"
    shutil.copytree(tiny_bert, model)
    outside.mkdir()
    target = outside / name
    target.write_text("[PAD]\nHF_TOKEN=hf_secret_never_read\n")
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to(target)
    return model, target


@pytest.mark.parametrize("command", ["validate", "finetune"])
@pytest.mark.parametrize("name", ["vocab.txt", "tokenizer.json", "model.safetensors", "config.json"])
def test_model_file_symlinked_out_of_the_model_folder_is_refused(tmp_path, tiny_bert, reviews, name, command):
    model, target = _linked_model(tiny_bert, tmp_path, name)
    recipe = text_cls_recipe(tmp_path / "r.yaml", model, reviews, tmp_path / "run", **FAST)
    result = hft_cli(command, recipe)
    assert result.exit_code == 2, result.output
    assert f"model file {model / name} is a symlink to {target}, outside {model}" in result.output
    assert "Traceback" not in result.output and "hf_secret_never_read" not in result.output
    assert not (tmp_path / "run").exists()


def test_symlinked_subfolder_leaving_the_model_folder_is_refused(tmp_path, tiny_bert, reviews):
    model, outside = tmp_path / "model", tmp_path / "outside"
    shutil.copytree(tiny_bert, model)
    outside.mkdir()
    (model / "extra").symlink_to(outside, target_is_directory=True)
    result = hft_cli("validate", text_cls_recipe(tmp_path / "r.yaml", model, reviews, tmp_path / "run", **FAST))
    assert result.exit_code == 2 and f"{model / 'extra'} is a symlink to {outside}" in result.output, result.output


def _hub_cache_layout(tiny_bert: Path, cache: Path, repo: str) -> Path:
    """models--org--name/{blobs/<sha256>, snapshots/<sha>/<file> -> ../../blobs/<sha256>, refs/main}, as the Hub
    cache lays a download out. Returns the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / SHA
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(SHA)
    for f in tiny_bert.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, root / "blobs" / digest)
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    return snapshot


def test_hub_cache_snapshot_links_to_blobs_keep_working(tmp_path, tiny_bert, reviews):
    import os

    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    assert cache.is_relative_to(os.environ["HF_HOME"]), "the suite's own cache (tests/conftest.py), never the user's"
    repo = "hft-test/tiny-bert-cache-layout"
    snapshot = _hub_cache_layout(tiny_bert, cache, repo)
    try:
        # As a Hub id resolved offline from the cache, and as a path into the cache.
        for name in (repo, str(snapshot)):
            recipe = text_cls_recipe(tmp_path / "r.yaml", Path(name), reviews, tmp_path / "run", **FAST)
            result = hft_cli("validate", recipe)
            assert result.exit_code == 0, result.output
            assert "label mapping: 0=negative, 1=positive" in result.output

        # A snapshot file linking out of its repo cache folder is refused like any other link.
        outside = tmp_path / "secret.txt"
        outside.write_text("[PAD]\n")
        (snapshot / "vocab.txt").symlink_to(outside)
        result = hft_cli("validate", text_cls_recipe(tmp_path / "r.yaml", Path(repo), reviews, tmp_path / "run", **FAST))
        assert result.exit_code == 2, result.output
        assert f"{snapshot / 'vocab.txt'} is a symlink to {outside}, outside {snapshot.parent.parent}" in result.output
    finally:
        shutil.rmtree(snapshot.parent.parent)


def test_trained_model_folder_with_an_escaping_link_is_refused_on_load(tmp_path):
    from hftoolkit.errors import UnsafePathError
    from hftoolkit.modeling import check_file_references

    folder, outside = tmp_path / "model", tmp_path / "id_rsa"
    folder.mkdir()
    outside.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (folder / "tokenizer_config.json").write_text('{"vocab_file": "vocab.txt"}')
    (folder / "vocab.txt").symlink_to(outside)
    with pytest.raises(UnsafePathError, match=r"vocab.txt is a symlink to .*id_rsa, outside"):
        check_file_references(folder)
