"""resnext.images: every input becomes an upright 8-bit RGB image, or one :class:`ImageError` line naming it.

Colour conversions are checked against Pillow's own conversion (where Pillow's is the reference) or against the
arithmetic the docstring promises, computed here with NumPy. Damaged inputs, size bounds and URL loading (over a
127.0.0.1 server) are checked for their one-line error. The fuzz corpus, PNG truncation and aspect-ratio limits
live in tests/test_hostile.py.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnext.errors import ImageError, ResnextError
from resnext.images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, load_image, sample_images


def random_rgb(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB")


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def assert_one_line_naming(exc: pytest.ExceptionInfo, name: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and message.startswith(name), message


# ---------------------------------------------------------------------------------------------------------------
# Colour modes


def test_rgb_file_decodes_to_the_same_pixels(tmp_path: Path) -> None:
    original = random_rgb()
    path = tmp_path / "rgb.png"
    original.save(path)
    decoded = load_image(path)
    assert decoded.size == original.size
    np.testing.assert_array_equal(pixels(decoded), np.asarray(original))


def test_greyscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = random_rgb().convert("L")
    path = tmp_path / "grey.png"
    grey.save(path)
    decoded = pixels(load_image(path))
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], np.asarray(grey))


def test_cmyk_is_converted_as_pillow_converts_it(tmp_path: Path) -> None:
    cmyk = random_rgb(seed=1).convert("CMYK")
    path = tmp_path / "cmyk.tif"  # TIFF: lossless, keeps CMYK
    cmyk.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "CMYK"
        expected = np.asarray(reopened.convert("RGB"))
    np.testing.assert_array_equal(pixels(load_image(path)), expected)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgb = np.asarray(random_rgb(seed=2)).astype(np.float64)
    alpha = np.random.default_rng(3).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255  # fully transparent -> white; opaque -> unchanged
    rgba = Image.fromarray(np.dstack([rgb.astype(np.uint8), alpha]), "RGBA")
    path = tmp_path / "rgba.png"
    rgba.save(path)
    decoded = pixels(load_image(path)).astype(np.float64)
    a = alpha[..., None] / 255.0
    expected = a * rgb + (1 - a) * 255.0
    assert np.abs(decoded - expected).max() <= 1.0  # Pillow's alpha_composite rounds
    assert decoded[0, 0].tolist() == [255, 255, 255] and decoded[0, 1].tolist() == rgb[0, 1].tolist()
    # what Pillow's plain convert("RGB") would give (alpha dropped) differs: the compositing really happened
    assert not np.array_equal(decoded, rgb)


def test_palette_images_with_and_without_a_transparent_index(tmp_path: Path) -> None:
    palette = random_rgb(seed=4).quantize(colors=16)
    plain = tmp_path / "palette.png"
    palette.save(plain)
    np.testing.assert_array_equal(pixels(load_image(plain)), np.asarray(palette.convert("RGB")))

    transparent_index = int(np.asarray(palette)[0, 0])
    clear = tmp_path / "palette-transparent.png"
    palette.save(clear, transparency=transparent_index)
    decoded = pixels(load_image(clear))
    where = np.asarray(palette) == transparent_index
    assert (decoded[where] == 255).all()  # the transparent colour became white
    np.testing.assert_array_equal(decoded[~where], np.asarray(palette.convert("RGB"))[~where])


@pytest.mark.parametrize(("mode", "key"), [("RGB", (10, 20, 30)), ("L", 10)])
def test_a_colour_keyed_transparent_png_is_composited_on_white_too(mode: str, key) -> None:
    """PNG's tRNS chunk on an RGB or greyscale image: pixels of the key colour are transparent (Pillow keeps the
    key in ``info["transparency"]``); they become white like every other kind of transparency here."""
    image = Image.fromarray(np.asarray(random_rgb(seed=10).convert(mode)))
    image.putpixel((0, 0), key)
    data = encode(image, "PNG", transparency=key)
    decoded = pixels(load_image(data))
    keyed = np.asarray(image) == np.asarray(key, dtype=np.uint8)
    keyed = keyed.all(axis=-1) if keyed.ndim == 3 else keyed
    assert keyed[0, 0] and (decoded[keyed] == 255).all()
    np.testing.assert_array_equal(decoded[~keyed], np.asarray(image.convert("RGB"))[~keyed])


def test_16_bit_greyscale_is_rescaled_not_clipped(tmp_path: Path) -> None:
    values = np.random.default_rng(5).integers(0, 65536, (16, 24), dtype=np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")  # really a 16-bit file, not silently 8-bit
    decoded = pixels(load_image(path))
    expected = np.floor(values / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], expected)
    assert decoded[0, 0, 0] == 0 and decoded[0, 1, 0] == 255


def test_pil_image_input_is_converted_too() -> None:
    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert pixels(load_image(rgba)).tolist() == np.full((8, 8, 3), 255).tolist()
    rgb = random_rgb()
    np.testing.assert_array_equal(pixels(load_image(rgb)), np.asarray(rgb))
    assert rgb.load() is not None  # the caller's image is neither closed nor changed


# ---------------------------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.parametrize(
    ("orientation", "transpose"),
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, transpose: Image.Transpose) -> None:
    original = random_rgb(24, 16, seed=6)
    exif = Image.Exif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    path = tmp_path / "rotated.png"
    original.save(path, exif=exif)
    decoded = load_image(path)
    upright = original.transpose(transpose)  # the EXIF spec's meaning of the tag, independent of exif_transpose
    assert decoded.size == upright.size
    np.testing.assert_array_equal(pixels(decoded), np.asarray(upright))


# ---------------------------------------------------------------------------------------------------------------
# Damaged and foreign inputs: one line naming the input


def test_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not an image\nsecond line\n")
    with pytest.raises(ImageError, match="not an image file") as info:
        load_image(path)
    assert_one_line_naming(info, str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file") as info:
        load_image(tmp_path / "absent.png")
    assert_one_line_naming(info, str(tmp_path / "absent.png"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_truncated_files_are_refused_not_padded(tmp_path: Path, fmt: str) -> None:
    data = encode(random_rgb(64, 64, seed=7), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert_one_line_naming(info, str(path))
    with pytest.raises(ImageError):  # the same bytes in memory
        load_image(data[: len(data) * 2 // 3])


def test_empty_and_random_bytes(tmp_path: Path) -> None:
    for data in (b"", np.random.default_rng(8).bytes(4096)):
        with pytest.raises(ImageError, match="not an image") as info:
            load_image(data)
        assert_one_line_naming(info, f"<{len(data)} bytes>")


# ---------------------------------------------------------------------------------------------------------------
# Size bounds


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` greyscale pixels but holds one row: a decompression bomb's
    header, cheap to write."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, we refuse
@pytest.mark.parametrize("side", [10_000, 20_000])  # over our limit; and over 2x it, where Pillow itself refuses
def test_huge_dimensions_are_refused_before_decoding(side: int) -> None:
    assert side * side > MAX_IMAGE_PIXELS
    data = png_header_only(side, side)
    assert len(data) < 100_000
    with pytest.raises(ImageError, match=f"limit of {MAX_IMAGE_PIXELS} pixels") as info:
        load_image(data)
    assert_one_line_naming(info, f"<{len(data)} bytes>")


def test_pixel_and_byte_limits_are_the_callers(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    random_rgb(20, 20).save(path)
    assert load_image(path, max_pixels=400).size == (20, 20)  # the limit itself is allowed
    with pytest.raises(ImageError, match="20x20 pixels exceeds the limit of 399"):
        load_image(path, max_pixels=399)
    size = path.stat().st_size
    assert load_image(path, max_bytes=size).size == (20, 20)
    with pytest.raises(ImageError, match=f"larger than {size - 1} bytes"):
        load_image(path, max_bytes=size - 1)
    with pytest.raises(ImageError, match="larger than the limit of 10 bytes"):
        load_image(path.read_bytes(), max_bytes=10)


# ---------------------------------------------------------------------------------------------------------------
# URLs (loopback server)


def test_url_decodes_like_the_file(tmp_path: Path, http_server) -> None:
    path = tmp_path / "remote.png"
    random_rgb(seed=9).convert("RGBA").save(path)
    base, requests = http_server({"/img/remote.png": path.read_bytes(), "/junk.png": b"plain text"})
    from_url = load_image(f"{base}/img/remote.png")
    np.testing.assert_array_equal(pixels(from_url), pixels(load_image(path)))
    assert requests == ["/img/remote.png"]

    with pytest.raises(ImageError, match="not an image file") as info:
        load_image(f"{base}/junk.png")
    assert_one_line_naming(info, f"{base}/junk.png")
    with pytest.raises(ResnextError, match="404") as missing:
        load_image(f"{base}/absent.png")
    assert "\n" not in str(missing.value)
    with pytest.raises(ResnextError) as too_big:
        load_image(f"{base}/img/remote.png", max_bytes=100)
    assert "100" in str(too_big.value) and "\n" not in str(too_big.value)


# ---------------------------------------------------------------------------------------------------------------
# Bundled samples


def test_sample_images_are_bundled_photos_that_decode() -> None:
    samples = sample_images()
    assert len(samples) >= 3 and samples == sorted(samples)
    for sample in samples:
        path = Path(sample)
        assert path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
        assert path.parent.name == "samples" and path.parent.parent.name == "assets"
        image = load_image(path)
        assert image.mode == "RGB" and min(image.size) >= 64  # real photos, not placeholders
