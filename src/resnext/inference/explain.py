"""Grad-CAM explanations: which part of the image made the model choose a class.

Grad-CAM (Selvaraju et al., 2017) weights the channels of the last stage's feature map ``A`` by the spatial mean
of the gradient of the class logit ``y_c`` with respect to them, sums, and keeps the positive part:
``map = ReLU(sum_k mean_ij(dy_c/dA_kij) * A_k)``, upsampled bilinearly to the input and scaled to [0, 1].

Every architecture of the registry is a :class:`resnext.model.resnet.ResNet`, which splits into ``forward_features``
(the last stage's map, the layer Grad-CAM is defined on) and ``forward_head`` (pool + ``fc``). So the gradient is
taken with ``torch.autograd.grad`` on the head alone: no hooks on modules, no backward pass through the backbone,
and nothing left attached to the model afterwards. The result equals the ``grad-cam`` package's ``GradCAM`` on
``model.layer4`` (``tests/test_explain.py`` checks that), without its dependencies (OpenCV, scikit-learn, ...).

Maps are aligned with the model's input crop (the eval preset's resize + center crop), so the overlay shows the
image exactly as the model saw it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..errors import ResnextError
from ..images import ImageSource, load_image
from ..transforms import EvalPreset
from ..util import atomic_path

#: smallest shorter side of an overlay as shown and saved (enlarged from smaller model crops)
DISPLAY_SIZE = 224

#: colour stops of the heat-map palette (dark blue -> cyan -> yellow -> red), perceptually ordered like "jet"
#: but without its dark red end, so the hottest areas stay bright on any photo
_PALETTE = np.array(
    [[0, 0, 96], [0, 64, 255], [0, 224, 255], [128, 255, 128], [255, 224, 0], [255, 64, 0], [255, 0, 64]],
    dtype=np.float32,
)


def _check_model(model: nn.Module | None) -> nn.Module:
    if model is None:
        raise ResnextError("explanations need the torch backend (an eager model): exported files have no gradients")
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ResnextError(f"Grad-CAM needs a model with forward_features/forward_head, not {type(model).__name__}")
    if getattr(model, "num_classes", 1) == 0:
        raise ResnextError("this model has no classifier head (num_classes=0), so there is no class to explain")
    return model


def grad_cam(
    model: nn.Module, batch: Tensor, targets: Sequence[int] | Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Grad-CAM maps for a preprocessed batch ``[N, 3, H, W]``.

    Returns ``(maps [N, H, W] in [0, 1] on the CPU, targets [N], logits [N, C])``; ``targets`` defaults to each
    sample's top class. A map that is zero everywhere (no positive evidence) stays zero.
    """
    model = _check_model(model)
    device = next(model.parameters()).device
    batch = batch.to(device=device, dtype=torch.float32)
    # inference_mode(False): callers may sit inside torch.inference_mode, where no gradient can be taken at all.
    net: Any = model  # a ResNet: forward_features / forward_head (checked above)
    forward_features, forward_head = net.forward_features, net.forward_head
    with torch.inference_mode(False), torch.no_grad():
        features = forward_features(batch.clone())
    with torch.inference_mode(False), torch.enable_grad():
        features = features.detach().clone().requires_grad_(True)
        logits = forward_head(features)
        if targets is None:
            targets = logits.argmax(dim=1)
        targets = torch.as_tensor(targets, device=logits.device).reshape(-1)
        if targets.numel() != logits.shape[0] or int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]:
            raise ResnextError(f"class index out of range for a model with {logits.shape[1]} classes")
        (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), features)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * features.detach()).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low, high = cams.amin(dim=(1, 2), keepdim=True), cams.amax(dim=(1, 2), keepdim=True)
    span = high - low
    # a constant map (a 1x1 last stage: 32 px inputs) differs only by the interpolation's rounding, which scaling
    # to [0, 1] would blow up into speckles: it has no location information and stays zero
    located = span > 1e-5 * high.abs()
    cams = torch.where(located, (cams - low) / span.clamp_min(1e-12), torch.zeros_like(cams))
    return cams.cpu(), targets.cpu(), logits.detach().float().cpu()


def colorize(heatmap: Tensor | np.ndarray) -> Image.Image:
    """A ``[H, W]`` map in [0, 1] as an RGB image in the heat-map palette."""
    values = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0) * (len(_PALETTE) - 1)
    low = np.floor(values).astype(np.int64).clip(0, len(_PALETTE) - 2)
    frac = (values - low)[..., None]
    rgb = _PALETTE[low] * (1 - frac) + _PALETTE[low + 1] * frac
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def overlay_heatmap(image: Image.Image, heatmap: Tensor | np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` with the coloured heat-map blended over it; stronger where the map is hot, so cold areas stay
    readable. ``heatmap`` must have the image's size (``[H, W]``)."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if heat.shape != (image.height, image.width):
        raise ResnextError(f"heat-map of shape {heat.shape} does not match an image of {image.width}x{image.height}")
    weight = (alpha * (0.35 + 0.65 * heat))[..., None]
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = base * (1 - weight) + np.asarray(colorize(heat), dtype=np.float32) * weight
    return Image.fromarray(blended.round().astype(np.uint8), "RGB")


def model_view(batch_item: Tensor, transforms: EvalPreset) -> Image.Image:
    """The preprocessed ``[3, H, W]`` tensor back as the RGB crop the model saw (undoing only the normalisation)."""
    mean = torch.tensor(transforms.mean).view(3, 1, 1)
    std = torch.tensor(transforms.std).view(3, 1, 1)
    pixels = (batch_item.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


@dataclass(frozen=True)
class Explanation:
    """A Grad-CAM map for one image and one class, aligned with ``image`` (the crop the model saw)."""

    heatmap: Tensor  # [H, W], float in [0, 1]
    target: int  # the class index explained
    label: str
    probability: float  # the model's probability of ``target`` for this image
    image: Image.Image

    def overlay(self, alpha: float = 0.5, min_size: int = DISPLAY_SIZE) -> Image.Image:
        """The heat-map over the image, enlarged by a whole factor until its shorter side is at least
        ``min_size``: a 32 px model's crop would otherwise be a thumbnail on screen and in files."""
        image, heatmap = self.image, self.heatmap
        factor = math.ceil(min_size / min(image.size))
        if factor > 1:
            image = image.resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC)
            enlarged = F.interpolate(heatmap[None, None].float(), size=(image.height, image.width), mode="bilinear")
            heatmap = enlarged[0, 0].clamp(0, 1)
        return overlay_heatmap(image, heatmap, alpha)


def resolve_target(target: int | str | None, categories: Sequence[str]) -> int | None:
    """A class index from an index or a class name (``None`` stays ``None``: the top class)."""
    if target is None or isinstance(target, (int, np.integer)):
        if target is not None and not 0 <= int(target) < len(categories):
            raise ResnextError(f"class index {target} is out of range for a model with {len(categories)} classes")
        return None if target is None else int(target)
    if target not in categories:
        raise ResnextError(f"unknown class name {target!r}")
    return list(categories).index(target)


def explain_image(
    model: nn.Module | None,
    transforms: EvalPreset,
    categories: Sequence[str],
    image: ImageSource,
    target: int | str | None = None,
) -> Explanation:
    """Grad-CAM for one image (path, URL, bytes or PIL image) and ``target`` (index, name, or None: top class)."""
    model = _check_model(model)
    index = resolve_target(target, categories)
    tensor = transforms(load_image(image))
    maps, targets, logits = grad_cam(model, tensor[None], None if index is None else [index])
    chosen = int(targets[0])
    probability = float(torch.softmax(logits[0], dim=0)[chosen])
    return Explanation(maps[0], chosen, categories[chosen], probability, model_view(tensor, transforms))


def overlay_name(source: str, taken: set[str]) -> str:
    """A file name for the overlay of ``source`` (its stem + ``.gradcam.png``), unique among ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(source).split("?")[0].rstrip("/")).stem)[:100] or "image"
    name, n = f"{stem}.gradcam.png", 1
    while name in taken:
        name, n = f"{stem}-{n}.gradcam.png", n + 1
    taken.add(name)
    return name


def save_overlay(explanation: Explanation, path: str | Path) -> Path:
    """Write the overlay PNG atomically (never a half-written file under ``path``)."""
    with atomic_path(path) as tmp:
        explanation.overlay().save(tmp, format="PNG")
    return Path(path)
