"""Decoding any input, the Predictor, top-k and labels, batch classification, the hub processing utils."""

from __future__ import annotations

import ast
import io
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import SAMPLES
from PIL import Image

from resnext import create_model
from resnext.errors import ImageError, ResnextError
from resnext.images import ImageDataset, collate_images, find_images, load_image
from resnext.inference.hub import ProcessingUtils
from resnext.inference.predict import ClassifyResult, Predictor, classify_sources, top_k
from resnext.labels import imagenet_categories, imagenet_wnids
from resnext.runtime.backend import TorchBackend
from resnext.transforms import eval_preset
from resnext.util import resolve_device


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Decoding: every mode becomes sensible RGB, every bad input a clear ImageError


def _gradient(mode_max: int, size=(64, 48)) -> np.ndarray:
    return np.tile(np.linspace(0, mode_max, size[0]), (size[1], 1))


def test_image_modes_become_rgb_and_a_batch(tmp_path) -> None:
    utils = ProcessingUtils()
    cmyk = Image.new("CMYK", (80, 60), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    gray16 = Image.fromarray(_gradient(65535).astype(np.uint16))
    gray16.save(tmp_path / "gray16.png")
    palette = Image.new("RGB", (40, 40), (0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.save(tmp_path / "palette.png")
    transparent_p = palette.copy()
    transparent_p.info["transparency"] = transparent_p.getpixel((0, 0))
    transparent_p.save(tmp_path / "palette_transparent.png", transparency=transparent_p.getpixel((0, 0)))
    Image.new("L", (50, 70), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (50, 70), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    for name in ["cmyk.jpg", "gray16.png", "palette.png", "palette_transparent.png", "gray.png", "rgba.png"]:
        image = load_image(tmp_path / name)
        assert image.mode == "RGB", name
        batch = utils.prepare_input_from_uri(str(tmp_path / name))
        assert batch.shape == (1, 3, 224, 224) and batch.dtype == torch.float32, name

    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    r, g, b = load_image(tmp_path / "cmyk.jpg").getpixel((40, 30))
    assert r > 200 and g < 60 and b < 60  # still red
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    gray = np.asarray(load_image(tmp_path / "gray16.png"))[..., 0].astype(float)
    assert gray[:, 0].max() < 5 and gray[:, -1].min() > 250 and 100 < gray.mean() < 155  # rescaled, not saturated
    assert load_image(tmp_path / "palette.png").getpixel((5, 5)) == (0, 128, 0)
    assert load_image(tmp_path / "palette_transparent.png").getpixel((5, 5)) == (255, 255, 255)  # on white
    assert load_image(tmp_path / "rgba.png").getpixel((5, 5)) == (255, 255, 255)  # fully transparent -> white
    assert load_image(tmp_path / "gray.png").getpixel((5, 5)) == (77, 77, 77)


def test_exif_orientation_is_applied(tmp_path) -> None:
    image = Image.new("RGB", (60, 30), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (30, 60)


def test_text_file_renamed_jpg(tmp_path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not an image at all\n")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image file"):
        load_image(path)


def test_truncated_jpeg_is_an_image_error(tmp_path) -> None:
    data = SAMPLES[0].read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(path)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))  # 10^10 pixels claimed in a ~70-byte file
    with pytest.raises(ImageError, match="exceed"):
        load_image(path)
    with pytest.raises(ImageError, match="exceeds the limit of 1000 pixels"):
        load_image(SAMPLES[0], max_pixels=1000)


def test_missing_file_and_oversized_file(tmp_path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "absent.jpg")
    with pytest.raises(ImageError, match="larger than"):
        load_image(SAMPLES[0], max_bytes=1000)
    data = SAMPLES[0].read_bytes()  # bytes get the same bound as files, before any decoding
    with pytest.raises(ImageError, match=f"<{len(data)} bytes>: image is larger than the limit of 1000 bytes"):
        load_image(data, max_bytes=1000)
    assert load_image(data).size == load_image(SAMPLES[0]).size


def test_url_inputs_via_loopback(http_server) -> None:
    base, _ = http_server({"/cat.jpg": SAMPLES[1].read_bytes(), "/notes.jpg": b"hello"})
    utils = ProcessingUtils()
    from_url = utils.prepare_input_from_uri(f"{base}/cat.jpg")
    torch.testing.assert_close(from_url, utils.prepare_input_from_uri(str(SAMPLES[1])), atol=0, rtol=0)
    with pytest.raises(ImageError, match="not an image"):
        load_image(f"{base}/notes.jpg")
    with pytest.raises(ResnextError, match="HTTP 404"):
        load_image(f"{base}/missing.jpg")


def test_find_images_walks_folders_sorted(tmp_path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    for name in ["b/c/z.JPG", "b/a.png", "a.jpeg", "readme.txt"]:
        (tmp_path / name).write_bytes(b"x")
    found = find_images([str(tmp_path), "https://example.invalid/x.jpg", "missing.jpg"])
    assert [p.removeprefix(str(tmp_path) + "/") for p in found[:3]] == ["a.jpeg", "b/a.png", "b/c/z.JPG"]
    assert found[3:] == ["https://example.invalid/x.jpg", "missing.jpg"]


# ---------------------------------------------------------------------------------------------------------------
# Labels, top-k, pick_n_best


def test_label_order() -> None:
    categories = imagenet_categories()
    assert len(categories) == 1000 and len(set(imagenet_wnids())) == 1000
    assert categories[0] == "tench, Tinca tinca"
    assert categories[999] == "toilet tissue, toilet paper, bathroom tissue"
    assert imagenet_wnids() == sorted(imagenet_wnids()) and imagenet_wnids()[0] == "n01440764"


def test_pick_n_best_format_and_printing(capsys) -> None:
    probabilities = torch.full((2, 1000), 0.0001)
    probabilities[0, 0], probabilities[0, 1] = 0.7, 0.2
    probabilities[1, 999], probabilities[1, 5] = 0.456, 0.3
    results = ProcessingUtils().pick_n_best(predictions=probabilities, n=3)
    assert results[0][:2] == [("tench, Tinca tinca", "70.0%"), ("goldfish, Carassius auratus", "20.0%")]
    assert results[1][:2] == [
        ("toilet tissue, toilet paper, bathroom tissue", "45.6%"),
        (imagenet_categories()[5], "30.0%"),
    ]
    assert all(len(r) == 3 and all(re.fullmatch(r"\d+\.\d%", p) for _, p in r) for r in results)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sample 0: [") and lines[1].startswith("sample 1: [")
    assert ast.literal_eval(lines[1].removeprefix("sample 1: ")) == results[1]


def test_top_k_sorted_and_clipped() -> None:
    probabilities = torch.tensor([[0.1, 0.6, 0.3]])
    (row,) = top_k(probabilities, 10, ["a", "b", "c"])
    assert [(p.index, p.label) for p in row] == [(1, "b"), (2, "c"), (0, "a")]
    assert row[0].probability == pytest.approx(0.6)


def test_top_k_from_logits_keeps_order_where_softmax_underflows() -> None:
    logits = torch.tensor([[200.0, -150.0, -120.0, -130.0]])  # softmax: 1.0 then three exact 0.0 in float32
    assert (torch.softmax(logits, -1)[0, 1:] == 0).all()
    (row,) = top_k(logits, 4, ["a", "b", "c", "d"], from_logits=True)
    assert [p.label for p in row] == ["a", "c", "d", "b"]
    assert row[0].probability == pytest.approx(1.0) and row[1].probability == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Predictor and batch classification


@pytest.fixture(scope="module")
def predictor(small_checkpoint) -> Predictor:
    return Predictor.from_pretrained("resnext_test", weights=str(small_checkpoint), device="cpu")


def test_predictor_equals_model_on_preset(predictor, small_checkpoint) -> None:
    model = create_model("resnext_test", weights=str(small_checkpoint)).eval()
    preset = eval_preset()
    with torch.no_grad():
        expected = torch.softmax(model(torch.stack([preset(Image.open(p).convert("RGB")) for p in SAMPLES])), -1)
    results = predictor.classify([str(p) for p in SAMPLES], topk=5)
    for row, probs in zip(results, expected):
        values, indices = probs.topk(5)
        assert [p.index for p in row] == indices.tolist()
        assert [p.label for p in row] == [imagenet_categories()[i] for i in indices.tolist()]
        assert [p.probability for p in row] == pytest.approx(values.tolist(), abs=1e-6)


def test_fine_tuned_checkpoint_keeps_its_head(tmp_path) -> None:
    path = tmp_path / "five.pth"
    torch.save(create_model("resnext_test", num_classes=5).state_dict(), path)
    names = ["ant", "bee", "cat", "dog", "eel"]
    p = Predictor.from_pretrained("resnext_test", weights=str(path), device="cpu", categories=names)
    assert p.backend.num_classes == 5 and p.categories == names
    assert {x.label for x in p.classify([str(SAMPLES[0])], topk=5)[0]} == set(names)
    with pytest.raises(ResnextError, match="3 class names"):
        Predictor.from_pretrained("resnext_test", weights=str(path), device="cpu", categories=names[:3])
    with pytest.raises(ResnextError, match="5 classes, not the 7"):
        Predictor.from_pretrained("resnext_test", weights=str(path), device="cpu", num_classes=7)


def test_classify_sources_keeps_order_and_reports_errors(predictor, tmp_path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    sources = [str(SAMPLES[0]), str(bad), str(SAMPLES[1]), str(tmp_path / "gone.png"), str(SAMPLES[2])]
    results = list(classify_sources(predictor, sources, topk=3, batch_size=2, workers=1, progress=False))
    assert [r.source for r in results] == sources
    assert [r.error is None for r in results] == [True, False, True, False, True]
    assert "bad.jpg: not an image" in results[1].error and "no such file" in results[3].error
    direct = predictor.classify([str(SAMPLES[1])], topk=3)[0]
    assert [p.index for p in results[2].predictions] == [p.index for p in direct]


def test_dataset_returns_errors_instead_of_raising(tmp_path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    dataset = ImageDataset([str(SAMPLES[0]), str(bad)], eval_preset(64))
    indices, batch, errors = collate_images([dataset[0], dataset[1]])
    assert indices == [0] and batch.shape == (1, 3, 64, 64)
    assert errors[0][0] == 1 and "bad.png" in errors[0][1]
    assert collate_images([dataset[1]])[1] is None


def test_reduced_precision_and_channels_last_agree_with_fp32(small_checkpoint) -> None:
    model = create_model("resnext_test", weights=str(small_checkpoint))
    batch = torch.stack([eval_preset(64)(load_image(p)) for p in SAMPLES])
    reference = TorchBackend(model, device="cpu")(batch)
    channels_last = TorchBackend(model, device="cpu", channels_last=True)(batch)
    bf16 = TorchBackend(model, device="cpu", precision="bf16")(batch)
    torch.testing.assert_close(channels_last, reference, atol=1e-4, rtol=1e-4)
    assert bf16.dtype == torch.float32 and (bf16 - reference).abs().max() < 0.05 * reference.abs().max()
    with pytest.raises(ResnextError, match="precision"):
        TorchBackend(model, precision="fp8")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ResnextError, match="unknown device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ResnextError, match="no CUDA"):
            resolve_device("cuda")


def test_prepare_input_from_image_equals_uri() -> None:
    utils = ProcessingUtils()
    image = Image.open(SAMPLES[2])
    torch.testing.assert_close(utils.prepare_input_from_image(image), utils.prepare_input_from_uri(SAMPLES[2]))


def test_result_type() -> None:
    assert ClassifyResult("x", error="e").predictions is None
