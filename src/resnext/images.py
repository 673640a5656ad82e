"""Image inputs: decoding any path, URL, bytes or PIL image into bounded RGB; finding image files; the one
error-tolerant dataset whose items carry their decoding error instead of raising it.

Every consumer (classify, evaluation, training, export calibration, serving, the demo, bulk engines) decodes
through :func:`load_image`, so limits and colour handling are the same everywhere.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .download import MAX_IMAGE_BYTES, fetch_bytes, is_url
from .errors import ImageError, ResnextError

#: Images with more pixels than this are refused before decoding (PIL's own decompression-bomb threshold).
MAX_IMAGE_PIXELS = 89_478_485
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageSource = str | os.PathLike | bytes | Image.Image


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def _describe(source: ImageSource) -> str:
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return str(source)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16/32-bit greyscale is rescaled, transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """Decode a path, http(s) URL, bytes or PIL image into an upright RGB image; :class:`ImageError` otherwise."""
    name = _describe(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, bytes):
            data: Any = io.BytesIO(source)
        elif is_url(source):
            data = io.BytesIO(fetch_bytes(str(source), max_bytes=max_bytes))
        else:
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"{name}: no such file")
            if path.stat().st_size > max_bytes:
                raise ImageError(f"{name}: file is larger than {max_bytes} bytes")
            data = path
        try:
            # Only the header is read here; Pillow's own bomb check may fire already (2x its limit).
            image = Image.open(data)
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file, or a format Pillow cannot read") from None
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: image dimensions exceed the limit of {max_pixels} pixels") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"{name}: cannot open image ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    opened = image if not isinstance(source, Image.Image) else None
    try:
        # Decode now (RGB images are otherwise decoded lazily, later, outside this error handling).
        image.load()
        rgb = to_rgb(ImageOps.exif_transpose(image))
        if opened is not None and rgb is not opened:
            opened.close()  # multi-frame files (GIF, TIFF) keep their file open until closed
        return rgb
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image dimensions exceed the limit of {max_pixels} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated data, broken headers
        raise ImageError(f"{name}: image data is corrupt or truncated ({exc})") from None


def sample_images() -> list[str]:
    """The photos bundled with the package (``resnext classify`` with no inputs classifies these)."""
    from importlib import resources

    folder = Path(str(resources.files("resnext").joinpath("assets/samples")))
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def find_images(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand folders (recursively, sorted) into image files; paths and URLs are kept as given."""
    found: list[str] = []
    for item in inputs:
        if not is_url(item) and Path(item).is_dir():
            found += sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.append(str(item))
    return found


class ImageDataset(torch.utils.data.Dataset):
    """Sources -> ``(index, tensor, error)``; decoding errors are returned, not raised, so a loader survives them."""

    def __init__(self, sources: Sequence[ImageSource], transforms: Callable[[Image.Image], Tensor]) -> None:
        self.sources = list(sources)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return index, self.transforms(load_image(self.sources[index])), None
        except ResnextError as exc:
            return index, None, str(exc)


def collate_images(items: list[tuple[int, Tensor | None, str | None]]) -> tuple[list[int], Tensor | None, list[tuple[int, str]]]:
    ok = [(i, t) for i, t, _ in items if t is not None]
    errors = [(i, e) for i, t, e in items if t is None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, errors
