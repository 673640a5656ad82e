"""Image presets: the only place the resize/crop/normalisation numbers live.

Evaluation follows NVIDIA's recipe: resize the shorter side to ``crop + 32`` (256 for 224) with bilinear
interpolation and antialiasing, center-crop, scale to [0, 1], normalise with ImageNet mean/std. Training uses
RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3, bilinear) and a horizontal flip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def describe(self) -> str:
        return (
            f"resize shorter side to {self.resize_size} ({self.interpolation.value}, antialias), "
            f"center crop {self.crop_size}, scale to [0, 1], normalise mean={self.mean} std={self.std}"
        )


def eval_preset(crop_size: int = 224, resize_size: int | None = None) -> EvalPreset:
    """NVIDIA's validation preprocessing; ``resize_size`` defaults to ``crop_size + 32``."""
    return EvalPreset(crop_size=crop_size, resize_size=resize_size or crop_size + 32)


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
