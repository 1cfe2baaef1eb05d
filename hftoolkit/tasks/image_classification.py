"""Image classification (ViT and any AutoModelForImageClassification): image checks, on-the-fly transforms, predict.

Images are decoded and transformed when a batch is drawn (datasets `with_transform`), so no decoded pixels are
ever cached to disk. Every image is decode-checked once in `prepare`, before training, so a broken file is an
error naming it (or is skipped and counted with `dataset.skip_bad_images`) instead of a crash mid-epoch.
Labels, the head, metrics and the confusion matrix are shared with text classification (tasks/_classification.py).
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import Field

from hftoolkit.data import require_columns
from hftoolkit.errors import DataError, ModelError
from hftoolkit.tasks import _image_augment as aug
from hftoolkit.tasks._classification import LABELS, ClassificationTask

if TYPE_CHECKING:
    from datasets import Dataset

    from hftoolkit.recipe.schema import Recipe
    from hftoolkit.run.records import DataReport

# Bump when the decode check changes, so cached check results from older versions are not reused.
CHECK_VERSION = 1
DROP_REASON = "image failed to decode"
PREDICT_BATCH = 32
# probe_inputs: a few seeded noise images of this size (height, width) compare two models' logits.
PROBE_SEED, PROBE_IMAGES, PROBE_SIZE = 0, 3, (48, 48)  # probe_inputs: what `hft push --merge` compares logits on

# The export's README (`hft export`): running model.onnx with onnxruntime and PIL alone.
ONNX_USAGE = '''```python
import json

import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("{model_file}", providers=["CPUExecutionProvider"])
id2label = json.load(open("config.json"))["id2label"]
height, width, mean, std = {height}, {width}, np.array({mean}), np.array({std})

image = Image.open("photo.jpg").convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
pixels = ((np.asarray(image, dtype=np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
logits = session.run(["logits"], {{"pixel_values": pixels}})[0]
print(id2label[str(int(logits[0].argmax()))])
```

`hft serve` and `hft predict` resize and centre-crop exactly as in training; this plain resize is close to it when
the image is about square.'''


def input_size(processor: Any) -> tuple[int, int]:
    """(height, width) the model expects, from the image processor (its crop size when it centre-crops)."""
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    for size in (crop, getattr(processor, "size", None)):
        if isinstance(size, int):
            return size, size
        if not size:
            continue
        if size.get("height") and size.get("width"):
            return int(size.get("height")), int(size.get("width"))
        edge = size.get("shortest_edge") or size.get("longest_edge")
        if edge:
            return int(edge), int(edge)
    raise ModelError(f"cannot tell the input size from the image processor {type(processor).__name__} (no size or crop_size)")


def to_rgb(image: Any) -> Any:
    """Any PIL mode -> RGB. Transparent pixels become white: dropping alpha would expose arbitrary (often black) colour."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_error(value: dict | None) -> str | None:
    """Why this image (a datasets Image value with decode=False) cannot be decoded, or None when it decodes."""
    from PIL import Image

    if value is None or (not value.get("bytes") and not value.get("path")):
        return "no image data (null)"
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            # JPEG: decode at 1/8 scale. Every byte of the stream is still read, so truncation is caught, at a
            # fraction of the cost of a full decode. Other formats ignore draft() and decode fully.
            image.draft("RGB", (64, 64))
            image.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ... per format
        return f"{type(e).__name__}: {e}"
    return None


class ImageTransform:
    """Decoded PIL images -> `pixel_values` (and `labels`), as a datasets transform.

    torchvision is not a dependency, so the geometry (random resized crop + horizontal flip for training, resize +
    centre crop for evaluation) is done here with PIL, the way torchvision defines it; what training adds is the
    recipe's `dataset.augment` (tasks/_image_augment.py, the one place a torchvision v2 pipeline would replace;
    `none`: training images get the evaluation transform). Rescaling and normalisation
    (mean/std) are left to the model's image processor. Randomness comes from torch's global generator: seeded by
    the Trainer (`training.seed`), restored on resume, and re-seeded per DataLoader worker, so runs reproduce.
    A class rather than a closure so DataLoader workers can pickle it.
    """

    ratio = (3 / 4, 4 / 3)  # RandomResizedCrop's usual aspect-ratio range

    def __init__(self, processor: Any, image_col: str, label_col: str | None, train: bool, augment: Any = None):
        from PIL import Image

        self.processor = processor
        self.image_col = image_col
        self.label_col = label_col
        # Training with `augment: none` is the evaluation transform; without settings, the default augmentation.
        self.augment = aug.active(augment if augment is not None else aug.AugmentSettings()) if train else None
        self.train = self.augment is not None
        self.for_training = train
        self.scale = self.augment.crop_scale if self.augment else aug.DEFAULT_CROP_SCALE
        self.height, self.width = input_size(processor)
        try:
            self.resample = Image.Resampling(int(getattr(processor, "resample", None)))
        except (TypeError, ValueError):
            self.resample = Image.Resampling.BILINEAR
        size = getattr(processor, "size", None)
        # Processors that centre-crop (crop_size) first resize the shorter edge to size.shortest_edge.
        self.resize_edge = size.get("shortest_edge") if hasattr(size, "get") and getattr(processor, "do_center_crop", False) else None

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images = [self.geometry(to_rgb(image)) for image in batch[self.image_col]]
        out: dict[str, Any] = {"pixel_values": self.pixels(images)}
        if self.label_col is not None and self.label_col in batch:
            out[LABELS] = batch[self.label_col]
        return out

    def pixels(self, images: list) -> Any:
        # Geometry is done; the processor only rescales and normalises.
        return self.processor(images, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]

    def geometry(self, image: Any) -> Any:
        from PIL import Image

        box = self._random_box(*image.size) if self.train else self._centre_box(*image.size)
        # resize(box=...) crops and resamples in one step.
        out = image.resize((self.width, self.height), self.resample, box=box)
        if not self.train:
            return out
        if self.augment.horizontal_flip and _uniform(0.0, 1.0) < aug.FLIP_P:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return aug.augment_image(out, self.augment, _uniform)

    def describe(self) -> str:
        """This transform in words (`hft validate`, the model card's data notes)."""
        if self.for_training:
            return aug.describe_train(self.augment or aug.NONE, self.height, self.width, self.resize_edge)
        return aug.describe_eval(self.height, self.width, self.resize_edge)

    def _centre_box(self, w: int, h: int) -> tuple[float, float, float, float]:
        scale = self.resize_edge / min(w, h) if self.resize_edge else max(self.height / h, self.width / w)
        cw, ch = min(w, self.width / scale), min(h, self.height / scale)
        left, top = (w - cw) / 2, (h - ch) / 2
        return left, top, left + cw, top + ch

    def _random_box(self, w: int, h: int) -> tuple[float, float, float, float]:
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.scale)
            aspect = math.exp(_uniform(*log_ratio))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = _randint(0, w - cw), _randint(0, h - ch)
                return left, top, left + cw, top + ch
        # No sample fitted (extreme aspect ratios): the largest centred crop within the ratio range.
        aspect = w / h
        if aspect < self.ratio[0]:
            cw, ch = w, round(w / self.ratio[0])
        elif aspect > self.ratio[1]:
            cw, ch = round(h * self.ratio[1]), h
        else:
            cw, ch = w, h
        left, top = (w - cw) // 2, (h - ch) // 2
        return left, top, left + cw, top + ch


def _uniform(low: float, high: float) -> float:
    import torch

    return float(torch.empty(1).uniform_(low, high))


def _randint(low: int, high: int) -> int:
    import torch

    return int(torch.randint(low, high + 1, (1,)))


def collate_images(examples: list[dict]) -> dict[str, Any]:
    import torch

    batch = {"pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples])}
    if LABELS in examples[0]:
        batch[LABELS] = torch.tensor([int(e[LABELS]) for e in examples])
    return batch


class ImageClassification(ClassificationTask):
    name = "image-classification"
    pipeline_tag = "image-classification"
    card_title = "Image Classification"
    auto_model = "AutoModelForImageClassification"
    auto_processor = "AutoImageProcessor"
    predict_example = "example.jpg"
    # No PEFT task type: PEFT's typed wrappers feed `input_ids`; the plain PeftModel passes `pixel_values` through.
    peft_task_type = None
    processor_kind = "image processor"
    column_roles = {
        "image": "the image: an Image feature, or file paths (default: a column named image)",
        "label": "the class label (default: a column named label)",
    }
    recipe_fields = {
        "dataset.skip_bad_images": (bool, Field(False, description="Skip images that fail to decode (counted in the data report).")),
        "dataset.augment": aug.RECIPE_FIELD,
    }
    serve_kind = "image"
    onnx_servable = True

    def load_processor(self, ref: str, kwargs: dict[str, Any]) -> Any:
        from transformers import AutoImageProcessor

        kwargs = {k: v for k, v in kwargs.items() if k != "gguf_file"}
        return AutoImageProcessor.from_pretrained(ref, **kwargs)

    # imagefolder names its columns `image` and `label`, so those are the defaults.
    def image_column(self, recipe: Recipe) -> str:
        return recipe.dataset.columns.image or "image"

    def label_column(self, recipe: Recipe) -> str:
        return recipe.dataset.columns.label or "label"

    # ---------------------------------------------------------------------------------------------------------------
    # Checking columns, labels and images on the raw splits

    def prepare(self, splits: dict[str, Dataset], recipe: Recipe, report: DataReport) -> list[str]:
        from datasets import Image, Value

        image_col, label_col = self.image_column(recipe), self.label_column(recipe)
        for role, split in splits.items():
            require_columns(split, role, {"image": image_col, "label": label_col})
            report.columns[role] = list(split.column_names)
            feature = split.features[image_col]
            if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
                # A column of file paths (e.g. in a csv): datasets reads the files as images.
                splits[role] = split.cast_column(image_col, Image())
            elif not isinstance(feature, Image):
                raise DataError(
                    f"dataset.columns.image: column {image_col!r} in split {role!r} holds {feature}, not images "
                    "(expected an Image feature or file paths)"
                )
        labels = self.encode_labels(splits, recipe)
        self._check_images(splits, image_col, recipe.dataset.skip_bad_images, recipe.dataset.num_proc, report)
        return labels

    def _check_images(self, splits: dict[str, Dataset], col: str, skip: bool, num_proc: int | None, report: DataReport) -> None:
        """Decode-check every image once (the result is cached by datasets, keyed on the data's fingerprint)."""
        from datasets import Features, Image, Value

        def check(batch: dict[str, list]) -> dict[str, list]:
            return {"error": [decode_error(v) for v in batch[col]]}

        dropped, names = 0, []
        for role, split in splits.items():
            raw = split.cast_column(col, Image(decode=False))
            fingerprint = hashlib.sha256(f"imgcheck{CHECK_VERSION}|{raw._fingerprint}|{col}".encode()).hexdigest()[:32]
            errors = raw.map(
                check,
                batched=True,
                batch_size=64,
                num_proc=num_proc,
                remove_columns=raw.column_names,
                features=Features({"error": Value("string")}),  # a batch of all-None would otherwise type it null
                new_fingerprint=fingerprint,
                desc=f"Checking images ({role})",
            )["error"]
            bad = [i for i, e in enumerate(errors) if e is not None]
            if not bad:
                continue
            values = list(raw.select(bad)[col])
            where = [(f"{v['path']} (split {role!r} row {i})" if v and v.get("path") else f"split {role!r} row {i}") for i, v in zip(bad, values)]
            if not skip:
                more = f"; {len(bad) - 1} more in this split" if len(bad) > 1 else ""
                raise DataError(
                    f"image {where[0]} failed to decode ({errors[bad[0]]}){more}; fix or remove the file, or set "
                    "dataset.skip_bad_images: true to skip such images"
                )
            keep = sorted(set(range(len(split))) - set(bad))
            splits[role] = split.select(keep)
            dropped += len(bad)
            names += where
        if dropped:
            report.dropped[DROP_REASON] = dropped
            report.notes.append("skipped images: " + "; ".join(names[:5]) + (f"; … {len(names) - 5} more" if len(names) > 5 else ""))

    # ---------------------------------------------------------------------------------------------------------------
    # Features: transforms applied when a batch is drawn

    def preprocess(self, splits: dict[str, Dataset], recipe: Recipe, processor: Any, report: DataReport) -> dict[str, Dataset]:
        image_col, label_col = self.image_column(recipe), self.label_column(recipe)
        train = ImageTransform(processor, image_col, label_col, train=True, augment=recipe.dataset.augment)
        evaluation = ImageTransform(processor, image_col, label_col, train=False)
        report.notes.append(f"train transform: {train.describe()}")
        report.notes.append(f"evaluation transform: {evaluation.describe()}")
        return {role: split.with_transform(train if role == "train" else evaluation) for role, split in splits.items()}

    def collator(self, processor: Any, recipe: Recipe, on_gpu: bool) -> Callable:
        return collate_images

    # ---------------------------------------------------------------------------------------------------------------
    # Prediction

    def check_predict_inputs(self, inputs: list[str]) -> None:
        """Every input is an existing image file; called before the model is loaded."""
        for item in inputs:
            path = Path(item).expanduser()
            if not path.is_file():
                raise DataError(f"image {item!r} does not exist" if not path.exists() else f"image {item!r} is not a file")

    def probe_inputs(self, processor: Any, max_length: int) -> list[dict[str, Any]]:
        """Three fixed random RGB images (seeded), one processor call each, for `hft push --merge`'s logit check."""
        import numpy as np
        from PIL import Image

        rng = np.random.RandomState(PROBE_SEED)
        images = [Image.fromarray(rng.randint(0, 256, (*PROBE_SIZE, 3), dtype=np.uint8)) for _ in range(PROBE_IMAGES)]
        return [dict(processor(images=[im], return_tensors="pt")) for im in images]

    def predict(self, model: Any, processor: Any, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
        import torch
        from datasets import Image

        self.check_predict_inputs(inputs)
        decoder = Image()  # the same decoding as training (EXIF rotation included)
        images = []
        for item in inputs:
            path = Path(item).expanduser()
            try:
                images.append(to_rgb(decoder.decode_example({"path": str(path), "bytes": None})))
            except Exception as e:  # whatever PIL raises for this format
                raise DataError(f"image {item!r} failed to decode ({type(e).__name__}: {e})") from None
        transform = ImageTransform(processor, "image", None, train=False)
        out = []
        for start in range(0, len(images), PREDICT_BATCH):
            chunk = [transform.geometry(im) for im in images[start : start + PREDICT_BATCH]]
            pixels = transform.pixels(chunk).to(model.device, dtype=next(model.parameters()).dtype)
            with torch.no_grad():
                logits = model(pixel_values=pixels).logits
            out += self.top_labels(model, logits, inputs[start : start + PREDICT_BATCH])
        return out

    def onnx_usage(self, model_file: str, processor: Any, config: Any) -> str:
        height, width = input_size(processor)
        return ONNX_USAGE.format(
            model_file=model_file, height=height, width=width, mean=list(processor.image_mean), std=list(processor.image_std)
        )


TASK = ImageClassification()
