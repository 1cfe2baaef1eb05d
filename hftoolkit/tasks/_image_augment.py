"""Training-time image augmentation that the recipe controls (`dataset.augment` of image classification).

`dataset.augment: none` trains on exactly the evaluation transform (resize + centre crop); a mapping sets the random
resized crop's area range, the horizontal flip, a random rotation and a colour jitter. The defaults are what hft
always did (crop area 0.08-1.0, flip with p=0.5, no rotation, no jitter), so recipes without the key train as before.
Crops, flips and labels that a flip or a crop would change (digits, text, documents, scans) are why it is a key.

torchvision is not a dependency (no CPU wheel of the pinned version is installable here), so the operations are done
with PIL, the way torchvision.transforms.v2 defines them, with torch's global generator as the source of randomness
(seeded by the Trainer, restored on resume). Swapping in torchvision later is one place: `augment_image` (rotation,
jitter) and ImageTransform.geometry in image_classification.py (crop, flip) become one v2.Compose built from these
same settings, and `describe_train` names its steps.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator

from hftoolkit.recipe.base import Section

NONE = "none"
DEFAULT_CROP_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's area range
FLIP_P = 0.5
MAX_ROTATION = 180.0
# The union branches' tags: recipe/loading.py leaves union branch names (`str`, bracketed ones) out of error paths,
# so a problem is reported at dataset.augment or dataset.augment.<key>.
NONE_TAG, MAPPING_TAG = "str", "dict[augment]"


class AugmentSettings(Section):
    """dataset.augment as a mapping: the random operations applied to training images (evaluation never has them)."""

    crop_scale: list[float] = Field(
        list(DEFAULT_CROP_SCALE), min_length=2, max_length=2,
        description="Random resized crop: the share of the image's area kept, [lo, hi] in (0, 1].",
    )
    horizontal_flip: bool = Field(True, description="Flip left-right with probability 0.5.")
    rotation: float = Field(0.0, ge=0, le=MAX_ROTATION, description="Rotate by a random angle in [-rotation, rotation] degrees.")
    color_jitter: float = Field(
        0.0, ge=0, le=1, description="Brightness, contrast and saturation each scaled by a random factor in [1-s, 1+s]."
    )

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: list[float]) -> list[float]:
        lo, hi = value
        if not (0 < lo <= hi <= 1):
            raise ValueError(f"[lo, hi] needs 0 < lo <= hi <= 1 (got [{lo:g}, {hi:g}]): the share of the area kept")
        return value


def _branch(value: Any) -> str:
    return NONE_TAG if isinstance(value, str) else MAPPING_TAG


Augment = Annotated[
    Union[Annotated[Literal["none"], Tag(NONE_TAG)], Annotated[AugmentSettings, Tag(MAPPING_TAG)]], Discriminator(_branch)
]
RECIPE_FIELD = (Augment, Field(
    default_factory=AugmentSettings,
    description="Image classification: training augmentation; `none` trains on the evaluation transform, or a mapping "
    "{crop_scale: [lo, hi], horizontal_flip, rotation (degrees), color_jitter (0-1)}.",
))


def active(augment: Any) -> AugmentSettings | None:
    """The settings to train with, or None for `augment: none`."""
    return None if augment == NONE else augment


def augment_image(image: Any, settings: AugmentSettings, uniform: Any) -> Any:
    """Rotation and colour jitter on an image already cropped, resized and maybe flipped. `uniform(lo, hi)` draws."""
    from PIL import Image, ImageEnhance

    if settings.rotation:
        # As torchvision's RandomRotation: about the centre, same size, uncovered corners filled with black.
        image = image.rotate(uniform(-settings.rotation, settings.rotation), resample=Image.Resampling.BILINEAR)
    if settings.color_jitter:
        s = settings.color_jitter
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhance(image).enhance(uniform(max(0.0, 1 - s), 1 + s))
    return image


def describe_eval(height: int, width: int, resize_edge: int | None) -> str:
    resize = f"Resize(shortest edge {resize_edge}) -> CenterCrop({height}x{width})" if resize_edge else (
        f"Resize + CenterCrop({height}x{width})"
    )
    return f"{resize} -> Normalize"


def describe_train(augment: Any, height: int, width: int, resize_edge: int | None) -> str:
    """The training pipeline in words, as `hft validate` prints it and the model card lists it."""
    settings = active(augment)
    if settings is None:
        return f"{describe_eval(height, width, resize_edge)} (dataset.augment: none)"
    lo, hi = settings.crop_scale
    steps = [f"RandomResizedCrop({height}x{width}, scale {lo:g}-{hi:g})"]
    if settings.horizontal_flip:
        steps.append(f"HorizontalFlip(p={FLIP_P:g})")
    if settings.rotation:
        steps.append(f"Rotation(±{settings.rotation:g}°)")
    if settings.color_jitter:
        steps.append(f"ColorJitter(brightness/contrast/saturation {settings.color_jitter:g})")
    return " -> ".join([*steps, "Normalize"])
