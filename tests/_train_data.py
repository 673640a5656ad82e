"""Helpers for the training tests: a small learnable ImageFolder dataset of coloured shapes, subprocess env."""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]

# class name -> (fill colour, shape); colour and shape both identify the class
SHAPES = {
    "blue_triangle": ((40, 60, 220), "triangle"),
    "green_square": ((40, 180, 60), "square"),
    "red_circle": ((220, 40, 40), "circle"),
    "yellow_cross": ((230, 210, 30), "cross"),
    "magenta_diamond": ((200, 50, 200), "diamond"),
}


def _draw(shape: str, colour: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    # A tinted, speckled background scattered with shapes of the class: any crop, at any of RandomResizedCrop's
    # scales or the evaluation's centre crop, holds similar evidence, so few steps learn it reliably.
    background = tuple(int(0.45 * c + 0.55 * rng.randint(90, 160)) for c in colour)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(size):
        draw.point((rng.randrange(size), rng.randrange(size)), fill=tuple(rng.randint(60, 200) for _ in range(3)))
    for _ in range(7):
        half = rng.uniform(0.09, 0.16) * size
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
        box = (cx - half, cy - half, cx + half, cy + half)
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
        elif shape == "diamond":
            draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
        else:
            w = half / 2.5
            draw.rectangle((cx - w, cy - half, cx + w, cy + half), fill=fill)
            draw.rectangle((cx - half, cy - w, cx + half, cy + w), fill=fill)
    return image


def make_shapes_dataset(
    root: Path, *, num_classes: int = 4, train_per_class: int = 24, val_per_class: int = 8, size: int = 40,
    seed: int = 0,
) -> Path:
    """Write ``root/train/<class>/*.png`` and ``root/val/<class>/*.jpg``; returns ``root``."""
    rng = random.Random(seed)
    for split, count, ext in (("train", train_per_class, "png"), ("val", val_per_class, "jpg")):
        for name in list(SHAPES)[:num_classes]:
            colour, shape = SHAPES[name]
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _draw(shape, colour, size, rng).save(folder / f"{i:03d}.{ext}", quality=95)
    return root


def cli_env(extra: dict[str, str] | None = None, threads: int = 2) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    env.pop("WORLD_SIZE", None)
    env.update(extra or {})
    return env
