"""Image classification: a tiny random ViT on generated colour images, end to end through the CLI (LoRA and full
fine-tuning: finetune -> evaluate -> predict), transforms, bad inputs, and the real hymenoptera photos from ../shared."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_hft, shared_path
from tests.fixtures import image_cls_recipe


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_vit_3_labels, colour_images):
    """LoRA on a checkpoint whose 3-class head is replaced by a 2-class one (model.replace_head)."""
    tmp = tmp_path_factory.mktemp("img_lora")
    recipe = image_cls_recipe(tmp / "r.yaml", tiny_vit_3_labels, colour_images, tmp / "run", model={
        "name": str(tiny_vit_3_labels), "replace_head": True,
    })
    proc = run_hft("finetune", recipe)
    return recipe, tmp / "run", proc


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_vit, colour_images):
    tmp = tmp_path_factory.mktemp("img_full")
    recipe = image_cls_recipe(tmp / "r.yaml", tiny_vit, colour_images, tmp / "run", lora={"enabled": False},
                              training={"epochs": 2, "learning_rate": 1e-3, "save_strategy": "no"})
    run_hft("finetune", recipe)
    return recipe, tmp / "run"


def recipe_for(tmp_path: Path, model: Path, data: Path, **sections):
    from hftoolkit.recipe.schema import load_recipe

    return load_recipe(image_cls_recipe(tmp_path / "r.yaml", model, data, tmp_path / "run", **sections))


# ----------------------------------------------------------------------------------------------------------------------
# End to end through the CLI


def test_lora_finetune_writes_adapter_processor_and_label_names(lora_run):
    _, run, proc = lora_run
    model = run / "model"
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json", "preprocessor_config.json"):
        assert (model / name).is_file(), name
    assert not (model / "model.safetensors").exists()
    config = json.loads((model / "config.json").read_text())
    assert config["id2label"] == {"0": "blue", "1": "red"}  # ClassLabel names from the imagefolder's class folders
    assert "replacing the 3-label head" in proc.stderr
    adapter = json.loads((model / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"} and adapter["modules_to_save"] == ["classifier"]
    from safetensors.torch import load_file

    assert any("classifier" in k for k in load_file(str(model / "adapter_model.safetensors")))

    report = json.loads((run / "data_report.json").read_text())
    assert report["split_sizes"] == {"train": 32, "validation": 12, "test": 12}
    assert report["label_counts"]["train"] == {"blue": 16, "red": 16}
    assert report["token_lengths"] == {} and report["dropped"] == {}
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in s for s in steps)


def test_lora_evaluate_and_predict(lora_run, colour_images):
    _, run, _ = lora_run
    proc = run_hft("evaluate", run)
    assert "test split, 12 examples" in proc.stdout
    results = json.loads((run / "eval_results.json").read_text())
    assert set(results["metrics"]) >= {"accuracy", "f1", "loss"}
    # Colour is trivially learnable: a tiny random ViT gets it from 32 images (1.0 on this machine).
    assert results["metrics"]["accuracy"] >= 0.75
    assert (run / "confusion_matrix.png").stat().st_size > 1000

    red, blue = colour_images / "test/red/red_1.png", colour_images / "test/blue/blue_0.jpg"
    grey, rgba = colour_images / "train/red/red_0.jpg", colour_images / "train/blue/blue_0.png"
    proc = run_hft("predict", run, red, blue, grey, rgba)
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [(label, path) for label, _, path in lines[:2]] == [("red", str(red)), ("blue", str(blue))]
    assert len(lines) == 4 and all(label in {"blue", "red"} and 0.5 <= float(score) <= 1 for label, score, _ in lines)


def test_predict_names_a_missing_or_undecodable_image(lora_run, tmp_path):
    from hftoolkit.errors import DataError
    from hftoolkit.tasks.registry import get_task

    _, run, _ = lora_run
    proc = run_hft("predict", run, tmp_path / "nowhere.png", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: image '{tmp_path / 'nowhere.png'}' does not exist"

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("just text")
    with pytest.raises(DataError, match="notes.png' failed to decode"):
        get_task("image-classification").predict(None, None, [str(not_an_image)], {})  # fails before using the model


def test_full_finetune_evaluate_predict(full_run, colour_images):
    _, run = full_run
    assert (run / "model/model.safetensors").is_file() and not (run / "model/adapter_config.json").exists()
    assert (run / "model/preprocessor_config.json").is_file()
    proc = run_hft("evaluate", run, "--split", "validation")
    assert "validation split, 12 examples" in proc.stdout
    assert json.loads((run / "eval_results.json").read_text())["metrics"]["accuracy"] >= 0.75
    proc = run_hft("predict", run, colour_images / "test/red/red_3.png", "--json")
    result = json.loads(proc.stdout)
    assert result["label"] == "red" and 0.5 <= result["score"] <= 1


def test_validate_reports_images_without_token_stats(tiny_vit, colour_images, tmp_path):
    from hftoolkit.commands.validate import validate

    lines = validate(recipe_for(tmp_path, tiny_vit, colour_images))
    assert "data: split train: 32 rows" in lines and "data: split validation: 12 rows" in lines
    assert "data: labels (train): blue=16, red=16" in lines
    assert "label mapping: 0=blue, 1=red" in lines
    assert not any("token length" in line or "truncated" in line for line in lines)
    assert any(line.startswith("model: vit, LoRA r=4 on") and "q_proj" in line for line in lines)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Transforms


@pytest.fixture(scope="module")
def processor(tiny_vit):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(tiny_vit)


def test_grayscale_rgba_and_palette_become_rgb(processor):
    from PIL import Image

    from hftoolkit.tasks.image_classification import ImageTransform, to_rgb

    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(rgba).mode == "RGB" and to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (5, 5), 80)).getpixel((0, 0)) == (80, 80, 80)
    assert to_rgb(Image.new("P", (5, 5))).mode == "RGB"
    out = ImageTransform(processor, "image", "label", train=False)({"image": [rgba, Image.new("L", (70, 20))], "label": [0, 1]})
    assert tuple(out["pixel_values"].shape) == (2, 3, 32, 32) and out["labels"] == [0, 1]


def test_train_augmentation_is_seeded_and_eval_is_deterministic(processor):
    import numpy as np
    import torch
    from PIL import Image

    from hftoolkit.tasks.image_classification import ImageTransform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    train = ImageTransform(processor, "image", None, train=True)
    evaluation = ImageTransform(processor, "image", None, train=False)

    def augmented(seed: int):
        torch.manual_seed(seed)
        return train({"image": [image] * 4})["pixel_values"]

    a, b, c = augmented(1), augmented(1), augmented(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # each draw is a different crop/flip
    e1, e2 = evaluation({"image": [image]})["pixel_values"], evaluation({"image": [image]})["pixel_values"]
    assert torch.equal(e1, e2) and e1.shape == (1, 3, 32, 32)
    # Normalised with the processor's mean/std (0.5, 0.25): pixel 0..255 -> -2..2.
    assert -2.0 <= float(e1.min()) and float(e1.max()) <= 2.0


def test_random_crop_stays_inside_extreme_images(processor):
    import torch

    from hftoolkit.tasks.image_classification import ImageTransform

    t = ImageTransform(processor, "image", None, train=True)
    torch.manual_seed(0)
    for w, h in ((1000, 3), (3, 1000), (1, 1), (32, 32)):
        for _ in range(20):
            left, top, right, bottom = t._random_box(w, h)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: found before training, each naming what is wrong


def test_undecodable_image_is_an_error_naming_the_file_or_is_skipped_and_counted(tiny_vit, colour_images, tmp_path):
    import shutil

    from hftoolkit.errors import DataError
    from hftoolkit.commands.validate import validate

    data = tmp_path / "images"
    shutil.copytree(colour_images, data)
    (data / "train/red/broken.png").write_bytes((colour_images / "train/red/red_1.png").read_bytes()[:200])
    (data / "val/blue/empty.jpg").write_bytes(b"")

    with pytest.raises(DataError) as info:
        validate(recipe_for(tmp_path, tiny_vit, data))
    msg = str(info.value)
    assert str(data / "train/red/broken.png") in msg and "failed to decode" in msg and "skip_bad_images" in msg

    lines = validate(recipe_for(tmp_path, tiny_vit, data, dataset={"name": str(data), "skip_bad_images": True}))
    assert "data: dropped: 2 rows (image failed to decode)" in lines
    assert "data: split train: 32 rows" in lines and "data: split validation: 12 rows" in lines
    assert any("broken.png" in line and "empty.jpg" in line for line in lines)


def test_missing_image_column_lists_the_columns(tiny_vit, colour_images, tmp_path):
    from hftoolkit.errors import DataError
    from hftoolkit.commands.validate import validate

    with pytest.raises(DataError, match="dataset.columns.image: column 'picture' not found in split 'train'; available columns: image, label"):
        validate(recipe_for(tmp_path, tiny_vit, colour_images, dataset={"name": str(colour_images), "columns": {"image": "picture"}}))


def test_image_paths_in_a_table_missing_file_is_named(tiny_vit, colour_images, tmp_path):
    """A jsonl of file paths is read as images; a path that does not exist is reported with the path."""
    from hftoolkit.errors import DataError
    from hftoolkit.commands.validate import validate
    from tests.fixtures import write_jsonl

    rows = [{"path": str(p), "label": p.parent.name} for p in sorted((colour_images / "train").rglob("*.*"))]
    rows[5]["path"] = str(tmp_path / "gone.jpg")
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    sections = {"dataset": {"name": None, "files": {"train": str(train)}, "columns": {"image": "path", "label": "label"}}}
    with pytest.raises(DataError) as info:
        validate(recipe_for(tmp_path, tiny_vit, colour_images, **sections))
    assert "gone.jpg" in str(info.value) and "split 'train' row 5" in str(info.value)

    rows[5]["path"] = 17
    write_jsonl(train, [{"path": 17, "label": r["label"]} for r in rows])
    with pytest.raises(DataError, match="column 'path' in split 'train' holds .*int64.*, not images"):
        validate(recipe_for(tmp_path, tiny_vit, colour_images, **sections))


def test_missing_dataset_folder_and_head_mismatch(tiny_vit_3_labels, colour_images, tmp_path):
    from hftoolkit.errors import DataError, ModelError
    from hftoolkit.commands.validate import validate

    with pytest.raises(DataError, match="does not exist"):
        validate(recipe_for(tmp_path, tiny_vit_3_labels, tmp_path / "no" / "such" / "folder"))
    with pytest.raises(ModelError, match="already has a classification head for 3 labels but the data has 2; set model.replace_head"):
        validate(recipe_for(tmp_path, tiny_vit_3_labels, colour_images))


# ----------------------------------------------------------------------------------------------------------------------
# Real photos: ../shared/data/hymenoptera (245 train / 153 val, ants and bees, sizes up to 2592x1944)


@pytest.mark.slow
@pytest.mark.shared
def test_hymenoptera_end_to_end(tiny_vit, tmp_path):
    data = shared_path("data", "hymenoptera")
    recipe = image_cls_recipe(tmp_path / "r.yaml", tiny_vit, data, tmp_path / "run", dataset={
        "name": str(data), "max_samples": {"train": 48, "validation": 32},
    }, training={"max_steps": 6, "batch_size": 8, "learning_rate": 5e-3, "report_to": ["none"], "seed": 7, "save_strategy": "no"})
    run_hft("finetune", recipe)
    report = json.loads((tmp_path / "run/data_report.json").read_text())
    assert report["split_sizes"] == {"train": 48, "validation": 32}  # `val/` is the validation split
    assert report["dropped"] == {}  # every file decodes, the GIF placeholder included
    assert json.loads((tmp_path / "run/model/config.json").read_text())["id2label"] == {"0": "ants", "1": "bees"}
    proc = run_hft("evaluate", tmp_path / "run")
    assert "validation split, 32 examples" in proc.stdout
    gif, jpeg = data / "train/ants/imageNotFound.gif", data / "train/ants/formica.jpeg"
    proc = run_hft("predict", tmp_path / "run", gif, jpeg, "--json")
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["input"] for r in results] == [str(gif), str(jpeg)] and {r["label"] for r in results} <= {"ants", "bees"}


@pytest.mark.shared
def test_hymenoptera_with_a_broken_photo_both_ways(tiny_vit, tmp_path):
    """The real folder (linked, not copied) plus a truncated real JPEG: an error naming it, or skipped and counted."""
    from hftoolkit.errors import DataError
    from hftoolkit.commands.validate import validate

    data = shared_path("data", "hymenoptera")
    linked = tmp_path / "hymenoptera"
    for src in data.rglob("*"):
        if src.is_file() and src.parent != data:
            dst = linked / src.relative_to(data)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
    broken = linked / "train/bees/truncated.jpg"
    broken.write_bytes((data / "train/ants/0013035.jpg").read_bytes()[:2000])

    with pytest.raises(DataError) as info:
        validate(recipe_for(tmp_path, tiny_vit, linked))
    assert str(broken) in str(info.value) and "failed to decode" in str(info.value)

    lines = validate(recipe_for(tmp_path, tiny_vit, linked, dataset={"name": str(linked), "skip_bad_images": True}))
    assert "data: dropped: 1 rows (image failed to decode)" in lines
    assert "data: split train: 245 rows" in lines and "data: labels (train): ants=124, bees=121" in lines


def test_recipe_file_is_valid_and_says_how_to_run_it():
    from hftoolkit.recipe.schema import load_recipe
    from tests.fixtures import REPO

    path = REPO / "recipes" / "vit_cls.yaml"
    assert path.read_text().startswith("# Run:") and "hft finetune recipes/vit_cls.yaml" in path.read_text().splitlines()[0]
    recipe = load_recipe(path)
    assert recipe.task == "image-classification" and yaml.safe_load(path.read_text())["output_dir"] == recipe.output_dir
