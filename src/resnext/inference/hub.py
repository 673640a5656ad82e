"""NVIDIA-compatible torch.hub processing utils (``nvidia_convnets_processing_utils``), on the package's one path."""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image
from torch import Tensor

from ..images import load_image
from ..labels import imagenet_categories
from ..model.sources import display_names
from ..transforms import EvalPreset, eval_preset
from .predict import top_k


class ProcessingUtils:
    """Drop-in for NVIDIA's hub utils, with any image mode accepted and labels shipped in the package."""

    def __init__(self, transforms: EvalPreset | None = None, categories: Sequence[str] | None = None) -> None:
        self.transforms = transforms or eval_preset()
        self.categories = list(categories) if categories is not None else imagenet_categories()

    def prepare_input_from_image(self, image: Image.Image, cuda: bool = False) -> Tensor:
        batch = self.transforms(load_image(image)).unsqueeze(0)
        return batch.cuda() if cuda else batch

    def prepare_input_from_uri(self, uri: str | os.PathLike, cuda: bool = False) -> Tensor:
        batch = self.transforms(load_image(uri)).unsqueeze(0)
        return batch.cuda() if cuda else batch

    def pick_n_best(self, predictions: Tensor, n: int = 5) -> list[list[tuple[str, str]]]:
        results = []
        for i, row in enumerate(top_k(predictions.detach().cpu(), n, self._names(predictions.shape[-1]))):
            formatted = [(p.label, f"{100 * p.probability:.1f}%") for p in row]
            print(f"sample {i}: {formatted}")
            results.append(formatted)
        return results

    def _names(self, num_classes: int) -> list[str]:
        return self.categories if len(self.categories) == num_classes else display_names(num_classes)
