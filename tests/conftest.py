"""Test setup: offline Hub, isolated caches, and tiny local models/datasets shared by the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# The whole suite runs offline with its own caches: nothing reaches the Hub or the user's ~/.cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.pop("HF_TOKEN", None)

from tests.fixtures import REPO, build_tiny_bert, build_tiny_vit, colour_imagefolder, small_reviews, text_cls_recipe  # noqa: E402

SHARED = Path(os.environ.get("HFT_SHARED", REPO.parent / "shared"))


# Set at import, before any test module is collected: huggingface_hub and datasets fix their cache paths when they
# are first imported, and some test modules import them at the top.
_HF_HOME = Path(tempfile.mkdtemp(prefix="hft-tests-hf-home-"))
os.environ["HF_HOME"] = str(_HF_HOME)
os.environ["HF_DATASETS_CACHE"] = str(_HF_HOME / "datasets")


@pytest.fixture(scope="session", autouse=True)
def _isolated_hf_home():
    yield _HF_HOME
    shutil.rmtree(_HF_HOME, ignore_errors=True)  # the suite's own temp folder, made above


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def reviews(tmp_path_factory) -> dict[str, Path]:
    return small_reviews(tmp_path_factory.mktemp("reviews"))


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    """Headless tiny ViT + image processor (32x32 input): the head is created for the data's labels."""
    return build_tiny_vit(tmp_path_factory.mktemp("tiny_vit"))


@pytest.fixture(scope="session")
def tiny_vit_3_labels(tmp_path_factory) -> Path:
    """Tiny ViT that already has a 3-class head (model.replace_head cases)."""
    return build_tiny_vit(tmp_path_factory.mktemp("tiny_vit_3"), num_labels=3)


@pytest.fixture(scope="session")
def colour_images(tmp_path_factory) -> Path:
    """imagefolder {train,val,test}/{blue,red}: two classes told apart by colour, PNG/JPEG, one L and one RGBA."""
    return colour_imagefolder(tmp_path_factory.mktemp("colour_images"))


@pytest.fixture
def make_recipe(tmp_path, tiny_bert, reviews):
    """make_recipe(**sections) -> path of a tiny text-classification recipe writing into tmp_path/run."""

    def make(name: str = "recipe.yaml", **sections) -> Path:
        return text_cls_recipe(tmp_path / name, tiny_bert, reviews, tmp_path / "run", **sections)

    return make


def run_hft(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True, timeout: int = 600):
    """Run the real CLI in a subprocess (`python -m hftoolkit ...`), as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "hftoolkit", *map(str, args)],
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"hft {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def hft():
    return run_hft


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (../shared is not present)")
    return p
