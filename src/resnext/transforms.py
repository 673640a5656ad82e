"""Image presets: the only place the resize/crop/normalisation numbers live.

Evaluation follows NVIDIA's recipe: resize the shorter side to ``crop + 32`` (256 for 224) with bilinear
interpolation and antialiasing, center-crop, scale to [0, 1], normalise with ImageNet mean/std. Training uses
RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3, bilinear) and a horizontal flip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EvalPreset:
    """Callable eval preprocessing: PIL image or uint8 ``[3,H,W]`` tensor -> normalised float ``[3,crop,crop]``."""

    crop_size: int = 224
    resize_size: int = 256
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    _pipeline: v2.Compose = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Resize and crop come before ToImage so a PIL input is resized by PIL, exactly as NVIDIA's validation
        # loader (torchvision ImageFolder + PIL) did when it measured the published accuracy; uint8 tensors
        # take torchvision's antialiased tensor kernel instead.
        pipeline = v2.Compose(
            [
                v2.Resize(self.resize_size, interpolation=self.interpolation, antialias=True),
                v2.CenterCrop(self.crop_size),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(self.mean), std=list(self.std)),
                v2.ToPureTensor(),
            ]
        )
        object.__setattr__(self, "_pipeline", pipeline)

    def __call__(self, image) -> Tensor:
        return self._pipeline(image)

    def config(self) -> dict[str, Any]:
        """Plain values (JSON, safetensors metadata, ``torch.load(weights_only=True)``); :func:`preset_from_config`
        reads them back."""
        return {
            "crop_size": self.crop_size,
            "resize_size": self.resize_size,
            "interpolation": self.interpolation.value,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def describe(self) -> str:
        return (
            f"resize shorter side to {self.resize_size} ({self.interpolation.value}, antialias), "
            f"center crop {self.crop_size}, scale to [0, 1], normalise mean={self.mean} std={self.std}"
        )


def eval_preset(crop_size: int = 224, resize_size: int | None = None) -> EvalPreset:
    """NVIDIA's validation preprocessing; ``resize_size`` defaults to ``crop_size + 32``."""
    return EvalPreset(crop_size=crop_size, resize_size=resize_size or crop_size + 32)


def preset_from_config(config: Mapping[str, Any]) -> EvalPreset:
    """The :class:`EvalPreset` that :meth:`EvalPreset.config` describes; ``ValueError`` names a value out of range
    (sizes 32..4096 with resize >= crop, bilinear/bicubic/nearest, three means and three positive stds)."""
    crop, resize = config.get("crop_size"), config.get("resize_size")
    mean, std = config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= 4096 for v in (crop, resize)):
        raise ValueError(f"crop_size {crop!r} / resize_size {resize!r} must be whole numbers of pixels, 32..4096")
    assert isinstance(crop, int) and isinstance(resize, int)
    if resize < crop:
        raise ValueError(f"resize_size {resize} is smaller than crop_size {crop}")
    try:
        interpolation = InterpolationMode(config.get("interpolation", "bilinear"))
    except ValueError:  # from None: the enum's own error only repeats the value quoted here
        raise ValueError(f"unknown interpolation {config.get('interpolation')!r}") from None
    if interpolation not in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC, InterpolationMode.NEAREST):
        raise ValueError(f"interpolation {interpolation.value} is not bilinear, bicubic or nearest")
    numbers = [mean, std]
    if not all(isinstance(v, (list, tuple)) and len(v) == 3 for v in numbers) or not all(
        isinstance(x, (int, float)) and math.isfinite(x) for v in numbers for x in v
    ):
        raise ValueError(f"mean {mean!r} and std {std!r} must be three finite numbers each")
    if min(std) <= 0:
        raise ValueError(f"std {std!r} must be positive")
    m = (float(mean[0]), float(mean[1]), float(mean[2]))
    d = (float(std[0]), float(std[1]), float(std[2]))
    return EvalPreset(crop_size=crop, resize_size=resize, interpolation=interpolation, mean=m, std=d)


def train_preset(crop_size: int = 224, *, hflip: float = 0.5) -> v2.Compose:
    """NVIDIA's training augmentation, producing a normalised float tensor."""
    # Crop and flip before ToImage: on PIL inputs only the cropped region is converted to a tensor.
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                crop_size,
                scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3),
                interpolation=InterpolationMode.BILINEAR,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(hflip),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
            v2.ToPureTensor(),
        ]
    )
