"""`dataset.augment` of image classification: `none` trains on exactly the evaluation transform, each option changes the
training images as it says (seeded), `hft validate` prints the pipeline, and bad values are one line naming the key.
On the tiny ViT (32x32 input) and the colour imagefolder fixture, through the real CLI in-process where a command runs.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hftoolkit.cli import app
from hftoolkit.recipe.schema import load_recipe
from hftoolkit.run.records import DataReport
from hftoolkit.tasks._image_augment import AugmentSettings
from hftoolkit.tasks.image_classification import TASK, ImageTransform
from tests.fixtures import image_cls_recipe

runner = CliRunner()
# Whole image kept, no flip: with no rotation or jitter this is the evaluation transform on a square image.
PLAIN = {"crop_scale": [1.0, 1.0], "horizontal_flip": False}


@pytest.fixture(scope="module")
def processor(tiny_vit):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_vit)


@pytest.fixture(scope="module")
def square():
    """A square noise image: rotation, crop, flip and jitter all show in it (a flat colour would hide a flip)."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))


def pixels(processor, settings, image, seed=0, train=True):
    torch.manual_seed(seed)
    augment = settings if isinstance(settings, str) else AugmentSettings(**settings)
    return ImageTransform(processor, "image", None, train=train, augment=augment)({"image": [image]})["pixel_values"][0]


def test_augment_none_trains_on_the_evaluation_transform(tiny_vit, colour_images, processor, tmp_path):
    recipe = load_recipe(image_cls_recipe(tmp_path / "r.yaml", tiny_vit, colour_images, tmp_path / "run",
                                          dataset={"name": str(colour_images), "augment": "none"}), [])
    raw = datasets.load_dataset("imagefolder", data_dir=str(colour_images))
    splits = {"train": raw["train"], "validation": raw["validation"]}
    report = DataReport()
    features = TASK.preprocess(splits, recipe, processor, report)
    evaluation = raw["train"].with_transform(ImageTransform(processor, "image", "label", train=False))
    for seed in (0, 1):  # no randomness left: any seed gives the evaluation tensors
        torch.manual_seed(seed)
        for i in range(len(raw["train"])):  # every training image: sizes 20-60 px, grayscale and RGBA among them
            assert torch.equal(features["train"][i]["pixel_values"], evaluation[i]["pixel_values"])
    assert any(note.startswith("train transform: Resize") and "(dataset.augment: none)" in note for note in report.notes), report.notes


def test_each_option_changes_training_images_as_it_says(processor, square):
    evaluation = pixels(processor, {}, square, train=False)
    assert torch.equal(pixels(processor, PLAIN, square), evaluation)  # nothing random left
    # Flip: each draw is the evaluation image or its mirror, and both occur.
    flips = [pixels(processor, {**PLAIN, "horizontal_flip": True}, square, seed) for seed in range(8)]
    assert all(torch.equal(f, evaluation) or torch.equal(f, evaluation.flip(-1)) for f in flips)
    assert {torch.equal(f, evaluation) for f in flips} == {True, False}
    # Crop: a smaller share of the area is a zoom; the same seed gives the same crop.
    crop = pixels(processor, {**PLAIN, "crop_scale": [0.2, 0.3]}, square, 3)
    assert not torch.equal(crop, evaluation) and torch.equal(crop, pixels(processor, {**PLAIN, "crop_scale": [0.2, 0.3]}, square, 3))
    # Rotation: every draw turns the image; where the angle uncovers a corner it is black ((0 - 0.5) / 0.25 = -2).
    rotated = [pixels(processor, {**PLAIN, "rotation": 90}, square, seed) for seed in range(4)]
    assert not any(torch.equal(r, evaluation) for r in rotated)
    assert any(torch.equal(r[:, 0, 0], torch.full((3,), -2.0)) for r in rotated)
    # Jitter: same geometry, other colours (brightness / contrast / saturation), reproducible under the seed.
    jitter = pixels(processor, {**PLAIN, "color_jitter": 0.8}, square, 7)
    assert not torch.equal(jitter, evaluation) and torch.equal(jitter, pixels(processor, {**PLAIN, "color_jitter": 0.8}, square, 7))
    assert pixels(processor, {**PLAIN, "color_jitter": 0.8}, square, 8).mean() != jitter.mean()


def test_validate_prints_the_training_pipeline(tiny_vit, colour_images, tmp_path):
    recipe = image_cls_recipe(tmp_path / "r.yaml", tiny_vit, colour_images, tmp_path / "run")
    default = runner.invoke(app, ["validate", str(recipe)])
    assert default.exit_code == 0, default.output
    assert "train transform: RandomResizedCrop(32x32, scale 0.08-1) -> HorizontalFlip(p=0.5) -> Normalize" in default.output
    assert "evaluation transform: Resize + CenterCrop(32x32) -> Normalize" in default.output
    custom = runner.invoke(app, ["validate", str(recipe), "--set", "dataset.augment.crop_scale=[0.5, 1.0]",
                                 "--set", "dataset.augment.horizontal_flip=false", "--set", "dataset.augment.rotation=15",
                                 "--set", "dataset.augment.color_jitter=0.2"])
    assert custom.exit_code == 0, custom.output
    assert ("train transform: RandomResizedCrop(32x32, scale 0.5-1) -> Rotation(±15°) -> "
            "ColorJitter(brightness/contrast/saturation 0.2) -> Normalize") in custom.output
    none = runner.invoke(app, ["validate", str(recipe), "--set", "dataset.augment=none"])
    assert "train transform: Resize + CenterCrop(32x32) -> Normalize (dataset.augment: none)" in none.output


@pytest.mark.parametrize("augment, fragment", [
    ({"crop_scale": [0.6, 0.2]}, "dataset.augment.crop_scale: [lo, hi] needs 0 < lo <= hi <= 1"),
    ({"crop_scale": [0, 1]}, "dataset.augment.crop_scale: [lo, hi] needs 0 < lo <= hi <= 1"),
    ({"rotation": 200}, "dataset.augment.rotation: Input should be less than or equal to 180"),
    ({"color_jitter": 1.5}, "dataset.augment.color_jitter: Input should be less than or equal to 1"),
    ({"rotaton": 10}, "dataset.augment.rotaton: unknown key (did you mean rotation?)"),
    ("light", "dataset.augment: Input should be 'none'"),
])
def test_bad_augment_values_are_one_line_naming_the_key(tiny_vit, colour_images, tmp_path, augment, fragment):
    recipe = image_cls_recipe(tmp_path / "r.yaml", tiny_vit, colour_images, tmp_path / "run",
                              dataset={"name": str(colour_images), "augment": augment})
    result = runner.invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    problems = [line for line in result.output.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1 and fragment in problems[0] and "r.yaml:" in problems[0], result.output
    assert not (tmp_path / "run").exists()
