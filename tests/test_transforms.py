"""Presets against an independent torchvision.transforms (v1) pipeline written out from NVIDIA's recipe."""

from __future__ import annotations

import torch
import torchvision.transforms as T
from conftest import SAMPLES
from PIL import Image

from resnext.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_preset, train_preset


def nvidia_validation_v1() -> T.Compose:
    # NVIDIA's validation loader: Resize(224 + 32) bilinear on the PIL image, CenterCrop(224), ToTensor, Normalize.
    return T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )


def test_eval_preset_matches_torchvision_v1_pipeline() -> None:
    preset, reference = eval_preset(224), nvidia_validation_v1()
    for path in SAMPLES:
        image = Image.open(path).convert("RGB")
        out = preset(image)
        assert type(out) is torch.Tensor and out.shape == (3, 224, 224) and out.dtype == torch.float32
        torch.testing.assert_close(out, reference(image), atol=1e-5, rtol=0)


def test_eval_preset_accepts_uint8_tensors() -> None:
    image = Image.open(SAMPLES[0]).convert("RGB")
    tensor = T.PILToTensor()(image)
    out = eval_preset()(tensor)
    # Tensor resizing uses torchvision's kernel, PIL's differs by rounding only (about one grey level).
    assert out.shape == (3, 224, 224)
    assert (out - eval_preset()(image)).abs().mean() < 0.01


def test_non_square_and_small_images() -> None:
    wide = Image.new("RGB", (600, 200), (255, 0, 0))
    tiny = Image.new("RGB", (20, 30), (0, 0, 255))
    for image in (wide, tiny):
        out = eval_preset()(image)
        assert out.shape == (3, 224, 224)
    # pure red normalises to ((1 - mean) / std, (0 - mean) / std, ...)
    expected = torch.tensor([(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1]])
    torch.testing.assert_close(eval_preset()(wide)[:2, 100, 100], expected, atol=1e-4, rtol=0)


def test_eval_preset_sizes() -> None:
    assert (eval_preset(224).resize_size, eval_preset(288).resize_size) == (256, 320)
    assert "center crop 224" in eval_preset().describe()


def test_train_preset_output() -> None:
    torch.manual_seed(0)
    image = Image.open(SAMPLES[1]).convert("RGB")
    preset = train_preset(64)
    a, b = preset(image), preset(image)
    assert a.shape == b.shape == (3, 64, 64) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # random crops differ
    assert a.min() > -3 and a.max() < 3  # normalised, not [0, 255]
