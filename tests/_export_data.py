"""Helpers for the export tests: a tiny generated ImageFolder dataset and a ``resnext_test`` trained on it.

int8 agreement only means something on a trained model (a random network's logits are near-ties, so any
rounding flips its top-1). A plain torch loop trains ``resnext_test`` on four generated classes in ~15-45 s
(40 steps reach ~95% validation accuracy with confident logits: enough for a meaningful agreement check).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnext.models import create_model
from resnext.images import find_images, load_image
from resnext.transforms import eval_preset

CLASSES = ("blue", "green", "grey", "red")  # sorted: ImageFolder indices 0..3
IMAGE_SIZE = 32  # crop fed to the model (eval_preset resizes to 64 first)


def make_dataset(root: Path, per_class: int, seed: int) -> Path:
    """``root/<class>/<i>.png``: noisy 56x72 images whose dominant colour (or its absence) is the class."""
    rng = np.random.default_rng(seed)
    tint = {"red": (1.0, 0.45, 0.45), "green": (0.45, 1.0, 0.45), "blue": (0.45, 0.45, 1.0), "grey": (0.75, 0.75, 0.75)}
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.uniform(0.3, 1.0) * np.array(tint[name])
            texture = rng.uniform(0.6, 1.0, size=(56, 72, 1)) * (0.85 + 0.15 * np.sin(np.arange(72) / rng.uniform(2, 8)))[None, :, None]
            pixels = np.clip(base[None, None, :] * texture + rng.normal(0, 0.06, size=(56, 72, 3)), 0, 1)
            Image.fromarray((pixels * 255).astype(np.uint8), "RGB").save(root / name / f"{i}.png")
    return root


def load_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed images and labels, through the package's own decode + eval preset."""
    transforms = eval_preset(IMAGE_SIZE)
    images, labels = [], []
    for index, name in enumerate(CLASSES):
        for path in find_images([root / name]):
            images.append(transforms(load_image(path)))
            labels.append(index)
    return torch.stack(images), torch.tensor(labels)


def train_tiny(train_dir: Path, steps: int = 40, batch_size: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    images, labels = load_folder(train_dir)
    model = create_model("resnext_test", num_classes=len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        x, y = images[index], labels[index]
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()
