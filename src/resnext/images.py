"""Image inputs: decoding any path, URL, bytes or PIL image into bounded RGB; finding image files; the one
error-tolerant dataset whose items carry their decoding error instead of raising it.

Every consumer (classify, evaluation, training, export calibration, serving, the demo, bulk engines) decodes
through :func:`load_image`, so limits and colour handling are the same everywhere.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .download import MAX_IMAGE_BYTES, fetch_bytes, is_url
from .errors import ImageError, ResnextError
from .labels import imagenet_wnids

#: Images with more pixels than this are refused before decoding (PIL's own decompression-bomb threshold).
MAX_IMAGE_PIXELS = 89_478_485
#: Longer side / shorter side above this is refused: eval presets resize the *shorter* side (to 256), so a
#: 1x60000 strip would become 256x15,360,000 pixels (12 GB); at 100:1 one image stays under ~20 MB after resizing.
MAX_ASPECT_RATIO = 100
#: How far past the header's declared size the PNG completeness check inflates (bounds an IDAT bomb's cost).
_PNG_MARGIN = 1 << 16
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

ImageSource = str | os.PathLike | bytes | Image.Image


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def describe_source(source: ImageSource) -> str:
    """How errors and results name an input: its path or URL, ``<N bytes>`` or ``<PIL image>``."""
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return str(source)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16/32-bit greyscale is rescaled, transparency is composited on white."""
    keyed = "transparency" in image.info and image.mode in ("P", "L", "RGB")  # a PNG tRNS colour key
    if image.mode == "RGB" and not keyed:
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or keyed:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES
) -> Image.Image:
    """Decode a path, http(s) URL, bytes or PIL image into an upright RGB image; :class:`ImageError` otherwise.

    Refused (with the reason): more than ``max_pixels`` pixels, an aspect ratio above :data:`MAX_ASPECT_RATIO`,
    pixel data cut short (never zero-padded), and anything a decoder raises on damaged data.
    """
    name = describe_source(source)
    if isinstance(source, Image.Image):
        image, raw = source, None
    else:
        data, raw = _open_data(source, name, max_bytes)
        image = _open_image(data, name, max_pixels)
    _check_size(image, name, max_pixels)
    opened = image if not isinstance(source, Image.Image) else None
    try:
        # Decode now (RGB images are otherwise decoded lazily, later, outside this error handling).
        image.load()
        if image.format == "PNG" and opened is not None:
            _check_png_complete(raw if raw is not None else Path(source).read_bytes(), name)  # type: ignore[arg-type]
        rgb = to_rgb(ImageOps.exif_transpose(image))
        if opened is not None and rgb is not opened:
            opened.close()  # multi-frame files (GIF, TIFF) keep their file open until closed
        return rgb
    except ResnextError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image dimensions exceed the limit of {max_pixels} pixels") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated data, broken headers
        raise ImageError(f"{name}: image data is corrupt or truncated ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders and EXIF parsing also raise struct.error,
        # TypeError, OverflowError, NotImplementedError, MemoryError, ... on damaged files: all mean "corrupt".
        raise ImageError(f"{name}: image data is corrupt ({type(exc).__name__}: {exc})") from exc


def _open_data(source: str | os.PathLike | bytes, name: str, max_bytes: int) -> tuple[Any, bytes | None]:
    """What ``Image.open`` reads (a path or a buffer) and the raw bytes when they are already in memory."""
    if isinstance(source, bytes):
        if len(source) > max_bytes:
            raise ImageError(f"{name}: image is larger than the limit of {max_bytes} bytes")
        return io.BytesIO(source), source
    if is_url(source):
        raw = fetch_bytes(str(source), max_bytes=max_bytes)
        return io.BytesIO(raw), raw
    return _checked_file(Path(source), name, max_bytes), None


def _checked_file(path: Path, name: str, max_bytes: int) -> Path:
    try:
        if not path.is_file():
            raise ImageError(f"{name}: no such file")
        if path.stat().st_size > max_bytes:
            raise ImageError(f"{name}: file is larger than {max_bytes} bytes")
    except (OSError, ValueError) as exc:  # name too long, NUL byte, permission denied on a parent folder
        raise ImageError(f"{name}: cannot read ({exc})") from exc
    return path


def read_image_bytes(source: str | os.PathLike, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The encoded bytes of a path or http(s) URL, not decoded, with the same checks as :func:`load_image`."""
    if is_url(source):
        return fetch_bytes(str(source), max_bytes=max_bytes)
    return _checked_file(Path(source), describe_source(source), max_bytes).read_bytes()


def _open_image(data: Any, name: str, max_pixels: int) -> Image.Image:
    try:
        # Only the header is read here; Pillow's own bomb check may fire already (2x its limit).
        return Image.open(data)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image file, or a format Pillow cannot read") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image dimensions exceed the limit of {max_pixels} pixels") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: cannot open image ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - header parsers raise struct.error, TypeError, ... on damage
        raise ImageError(f"{name}: cannot open image ({type(exc).__name__}: {exc})") from exc


def _check_size(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"{name}: {width}x{height} is too long and thin (aspect ratio above {MAX_ASPECT_RATIO}:1); "
            "resizing its shorter side would need unbounded memory"
        )


def _check_png_complete(data: bytes, name: str) -> None:
    """Pillow zero-fills the missing rows of a PNG whose compressed stream ends early (the zlib stream is
    complete, just short), without an error. Count the decompressed bytes of the IDAT stream against what the
    header declares. Inflating stops a little past that size (a 1 MB stream of a 10x10 image may inflate to
    gigabytes), and output is discarded as it comes, so time and memory stay bounded by the header's size."""
    import struct
    import zlib

    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 29:
        return
    header = struct.unpack(">IIBBBBB", data[16:29])
    expected = _png_raw_size(*header[:4], interlaced=header[6] == 1)
    if expected is None:
        return
    limit = expected + _PNG_MARGIN  # anything past `expected` proves the rows are complete
    pos, inflate, produced = 8, zlib.decompressobj(), 0
    while pos + 8 <= len(data) and produced < limit:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            chunk = data[pos + 8 : pos + 8 + length]
            while chunk and not inflate.eof and produced < limit:
                produced += len(inflate.decompress(chunk, min(limit - produced, 1 << 20)))
                chunk = inflate.unconsumed_tail
        elif kind in (b"IEND", b"fdAT", b"fcTL") and produced:
            break
        pos += 12 + length
    if produced < expected:
        raise ImageError(f"{name}: PNG pixel data is truncated ({produced} of {expected} bytes); not zero-filling it")


def _png_raw_size(width: int, height: int, depth: int, colour: int, *, interlaced: bool) -> int | None:
    """Bytes of the filtered scanlines a PNG header declares (one filter byte per row, Adam7 passes if any)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None:
        return None
    bits = channels * depth

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if not interlaced:
        return rows(width, height)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    return sum(rows((width - x + dx - 1) // dx, (height - y + dy - 1) // dy) for x, y, dx, dy in passes)


def sample_images() -> list[str]:
    """The photos bundled with the package (``resnext classify`` with no inputs classifies these)."""
    from importlib import resources

    folder = Path(str(resources.files("resnext").joinpath("assets/samples")))
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def walk_images(root: str | os.PathLike) -> list[str]:
    """Image files under the folder ``root`` (by extension), sorted. The one discovery rule of the package
    (classify, training, evaluation): a symlinked folder is followed only when it points inside ``root`` to a
    folder not visited yet, so discovery never leaves ``root`` and never visits a folder twice
    (``train/a/up -> ..`` is not followed). Symlinked files are kept."""
    root = os.fspath(root)
    top = os.path.realpath(root)
    seen = {top}
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            if real not in seen and real.startswith(top.rstrip(os.sep) + os.sep):
                seen.add(real)
                keep.append(name)
        dirnames[:] = keep
        found += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def find_images(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expand folders into their image files (:func:`walk_images`); paths and URLs are kept as given."""
    found: list[str] = []
    for item in inputs:
        if not is_url(item) and Path(item).is_dir():
            found += walk_images(item)
        else:
            found.append(str(item))
    return found


class ImageDataset(torch.utils.data.Dataset):
    """Sources -> ``(index, tensor, error)``, the one error-tolerant dataset (classify, training, evaluation).

    Any failure to decode or preprocess one item (a :class:`ResnextError` from :func:`load_image`, or whatever a
    Pillow decoder or a transform raises) comes back as that item's error naming the source, never raised, so
    one bad file cannot end a run. An item may be asked for as ``(index, seed)``: the random transforms then
    draw from a generator seeded with it (reproducible augmentation whatever the worker, process or resume).
    """

    def __init__(self, sources: Sequence[ImageSource], transforms: Callable[[Image.Image], Tensor]) -> None:
        self.sources = list(sources)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[int, Tensor | None, str | None]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        source = self.sources[index]
        try:
            image = load_image(source)
            if seed is None:
                return index, self.transforms(image), None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return index, self.transforms(image), None
        except ResnextError as exc:
            return index, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - decoders raise struct.error, TypeError, ...: skip the item
            reason = f"cannot decode or preprocess ({type(exc).__name__}: {exc})"
            return index, None, f"{describe_source(source)}: {reason}"


def collate_images(
    items: list[tuple[int, Tensor | None, str | None]],
) -> tuple[list[int], Tensor | None, list[tuple[int, str]]]:
    """Stack the decodable items: ``(their indices, batch | None, [(index, reason), ...] of the others)``."""
    ok = [(i, t) for i, t, _ in items if t is not None]
    errors = [(i, e or "unreadable") for i, t, e in items if t is None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, errors


# ---------------------------------------------------------------------------------------------------------------
# ImageFolder trees: class folders and their label order


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class folder names under ``root``; clear error when ``root`` is not an ImageFolder tree."""
    root = Path(root)
    if not root.is_dir():
        raise ResnextError(f"data folder not found: {root}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ResnextError(f"{root} has no class folders; expected the ImageFolder layout {root}/<class>/<image>")
    return classes


def match_classes(root: str | os.PathLike, num_classes: int, classes: list[str] | None) -> list[str]:
    """Label order for ``root``: the checkpoint's class names, ImageNet wnids (1000-class model, wnid folders),
    or the sorted folders (torchvision's ImageFolder rule) when their count matches the model's classes."""
    if classes is not None:
        return classes
    folders = find_classes(root)
    if num_classes == 1000 and set(folders) <= set(imagenet_wnids()):
        return imagenet_wnids()
    if len(folders) == num_classes:
        return folders
    raise ResnextError(
        f"{root} has {len(folders)} class folders but the model predicts {num_classes} classes, and the weights "
        "carry no class names to match them (use a training checkpoint, or ImageNet wnid folder names)"
    )
