"""Grad-CAM (resnext.inference.explain, Predictor.explain, `resnext classify --explain`): equal to the grad-cam package,
defined for every architecture, meaningful on a model trained here, and sensitive to the model's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLES, randomize_bn, small_model_flags
from PIL import Image

from resnext import create_model
from resnext.errors import ResnextError
from resnext.inference.explain import grad_cam, overlay_heatmap, overlay_name
from resnext.inference.predict import Predictor
from resnext.model.resnet import list_models
from resnext.model.sources import load_source, source_from_model
from resnext.runtime.backends import create_backend
from resnext.transforms import eval_preset

SIZE = 64  # image side for the trained model: the last stage's map is 2x2, each cell one quadrant


def test_equals_grad_cam_package():
    """Independent reference: the grad-cam package's GradCAM with hooks on layer4 and a full backward pass."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = randomize_bn(create_model("resnext_test"))
    batch = torch.randn(3, 3, 96, 96)
    targets = [3, 500, 999]
    ours, chosen, logits = grad_cam(model, batch, targets)
    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        reference = cam(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in targets])
    assert chosen.tolist() == targets
    assert torch.allclose(logits, model(batch), atol=1e-4)
    assert ours.shape == (3, 96, 96)
    assert float(ours.amax()) == pytest.approx(1.0) and float(ours.amin()) == pytest.approx(0.0)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4)


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture(arch):
    torch.manual_seed(0)
    model = randomize_bn(create_model(arch, num_classes=7))
    with torch.inference_mode():  # callers in inference mode still get gradients inside grad_cam
        maps, chosen, logits = grad_cam(model, torch.randn(1, 3, 64, 64))
    assert maps.shape == (1, 64, 64) and torch.isfinite(maps).all()
    assert float(maps.max()) == pytest.approx(1.0)
    assert int(chosen[0]) == int(logits.argmax())
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated on the model


def test_predictor_explain_and_overlay():
    predictor = Predictor.from_source(load_source("random", arch="resnext_test"), backend="torch")
    top = predictor.classify([SAMPLES[0]], topk=2)[0]
    explanation = predictor.explain(SAMPLES[0])
    assert (explanation.target, explanation.label) == (top[0].index, top[0].label)
    assert explanation.probability == pytest.approx(top[0].probability, rel=1e-4)
    assert explanation.image.size == (224, 224) and explanation.heatmap.shape == (224, 224)
    by_name = predictor.explain(SAMPLES[0], target=top[1].label)
    assert by_name.target == top[1].index and not torch.equal(by_name.heatmap, explanation.heatmap)
    overlay = explanation.overlay()
    assert overlay.size == (224, 224) and overlay.mode == "RGB"
    # the overlay keeps the image visible where the map is cold and colours it where it is hot
    base = np.asarray(explanation.image, dtype=np.float32)
    diff = np.abs(np.asarray(overlay, dtype=np.float32) - base).mean(axis=2)
    heat = explanation.heatmap.numpy()
    assert diff[heat > 0.8].mean() > diff[heat < 0.2].mean()
    with pytest.raises(ResnextError, match="out of range"):
        predictor.explain(SAMPLES[0], target=1000)
    with pytest.raises(ResnextError, match="unknown class"):
        predictor.explain(SAMPLES[0], target="no such class")


def test_overlay_of_a_small_model_is_enlarged_for_display_and_files(tmp_path):
    """A 48 px model's crop is enlarged 5x (a whole factor) to 240 px, the map with it, hot areas still hot."""
    from resnext.inference.explain import save_overlay

    source = load_source("random", arch="resnext_test")
    predictor = Predictor.from_source(source, backend="torch", image_size=48)
    explanation = predictor.explain(SAMPLES[0])
    assert explanation.image.size == (48, 48)
    overlay = explanation.overlay()
    assert overlay.size == (240, 240) and overlay.mode == "RGB"
    base = np.asarray(explanation.image.resize((240, 240), Image.Resampling.BICUBIC), dtype=np.float32)
    heat = np.kron(explanation.heatmap.numpy(), np.ones((5, 5)))  # each model pixel's value over its 5x5 block
    diff = np.abs(np.asarray(overlay, dtype=np.float32) - base).mean(axis=2)
    assert diff[heat > 0.8].mean() > diff[heat < 0.2].mean()
    with Image.open(save_overlay(explanation, tmp_path / "cam.png")) as png:
        assert png.size == (240, 240)
    assert explanation.overlay(min_size=48).size == (48, 48)  # already large enough: as the model saw it


def test_a_constant_map_stays_zero_instead_of_speckles():
    """At 32 px the last stage is 1x1: the map is constant, and only interpolation rounding told its pixels apart,
    which min-max scaling turned into hot and cold speckles."""
    torch.manual_seed(0)
    model = create_model("resnext_test", num_classes=10).eval()
    maps, _, _ = grad_cam(model, torch.randn(3, 3, 32, 32))
    assert torch.count_nonzero(maps) == 0


def test_explain_needs_the_torch_model():
    model = create_model("resnext_test").eval()
    predictor = Predictor(create_backend("torch", model=model))  # like an exported file: no eager model attached
    with pytest.raises(ResnextError, match="torch backend"):
        predictor.explain(SAMPLES[0])
    with pytest.raises(ResnextError, match="heat-map of shape"):
        overlay_heatmap(Image.new("RGB", (10, 10)), np.zeros((5, 5)))


def test_overlay_names_are_unique_and_safe():
    taken: set[str] = set()
    assert overlay_name("/a/cat.jpg", taken) == "cat.gradcam.png"
    assert overlay_name("/b/cat.png", taken) == "cat-1.gradcam.png"
    assert overlay_name("http://x/y/a b?.jpg?x=1", taken) == "a_b.gradcam.png"


# ---------------------------------------------------------------------------------------------------------------
# Meaning: a model trained here on images whose class is decided by an object in a known quadrant


def quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise background, a class object (red square: class 0, blue: class 1) in a random quadrant and an
    uninformative green square in another one. Returns normalised images, labels, the object's quadrant."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.4 + 0.3
    labels = torch.randint(0, 2, (n,), generator=g)
    quadrant = torch.randint(0, 4, (n,), generator=g)
    other = (quadrant + torch.randint(1, 4, (n,), generator=g)) % 4
    colours = {0: (1.0, 0.0, 0.0), 1: (0.0, 0.0, 1.0), "distractor": (0.0, 1.0, 0.0)}
    half = SIZE // 2
    for i in range(n):
        for q, colour in ((int(quadrant[i]), colours[int(labels[i])]), (int(other[i]), colours["distractor"])):
            offset = torch.tensor([q // 2 * half, q % 2 * half])
            y, x = (torch.randint(2, half - 14, (2,), generator=g) + offset).tolist()
            images[i, :, y : y + 12, x : x + 12] = torch.tensor(colour)[:, None, None]
    preset = eval_preset(SIZE)
    mean, std = torch.tensor(preset.mean).view(1, 3, 1, 1), torch.tensor(preset.std).view(1, 3, 1, 1)
    return (images - mean) / std, labels, quadrant


def top_fraction_inside(heatmap: torch.Tensor, quadrant: int, fraction: float = 0.1) -> float:
    top = heatmap.flatten().topk(int(fraction * heatmap.numel())).indices
    rows, cols = top // SIZE, top % SIZE
    inside = (rows // (SIZE // 2) == quadrant // 2) & (cols // (SIZE // 2) == quadrant % 2)
    return float(inside.float().mean())


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties sharing their mean rank (Spearman's definition)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = average_ranks(a.flatten().numpy()), average_ranks(b.flatten().numpy())
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def trained():
    """resnext_test (a registry architecture) trained for 2 epochs on 256 images at 64 px (~20 s on 2 cores)."""
    torch.manual_seed(0)
    images, labels, _ = quadrant_images(256, seed=0)
    model = create_model("resnext_test", num_classes=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    model.train()
    for _ in range(2):
        for batch in torch.randperm(len(images)).split(32):
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.mark.slow
def test_heatmap_points_at_the_deciding_object(trained):
    images, labels, quadrant = quadrant_images(48, seed=1)
    with torch.no_grad():
        accuracy = float((trained(images).argmax(1) == labels).float().mean())
    assert accuracy >= 0.9, f"the model did not learn the task (accuracy {accuracy:.2f})"
    maps, _, _ = grad_cam(trained, images, labels)
    inside = [top_fraction_inside(m, int(q)) for m, q in zip(maps, quadrant)]
    # chance is 25% (one quadrant of four); the distractor square is as salient as the object, but uninformative
    assert np.mean(inside) >= 0.6, f"only {np.mean(inside):.0%} of the hottest pixels are on the deciding object"
    # the Predictor path (decode, preset, explain) gives the same map for the same image
    source = source_from_model(trained, arch="resnext_test", image_size=SIZE)
    source.transforms = eval_preset(SIZE, resize_size=SIZE)  # no crop: the quadrants stay where they were drawn
    predictor = Predictor.from_source(source, backend="torch")
    pixels = images[0] * torch.tensor(predictor.transforms.std).view(3, 1, 1) + torch.tensor(
        predictor.transforms.mean
    ).view(3, 1, 1)
    image = Image.fromarray(pixels.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
    explanation = predictor.explain(image, target=int(labels[0]))
    assert explanation.target == int(labels[0])
    assert torch.allclose(explanation.heatmap, maps[0], atol=0.05)  # equal up to the image's 8-bit rounding


@pytest.mark.slow
def test_model_randomisation_changes_the_map(trained):
    """Adebayo et al. (2018): a saliency method that ignores the weights is an edge detector, not an explanation."""
    images, labels, _ = quadrant_images(32, seed=2)
    maps, _, _ = grad_cam(trained, images, labels)
    randomised = create_model("resnext_test", num_classes=2)  # every layer re-initialised
    torch.manual_seed(123)
    for module in randomised.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    random_maps, _, _ = grad_cam(randomize_bn(randomised, seed=5), images, labels)
    correlations = [spearman(a, b) for a, b in zip(maps, random_maps)]
    assert np.mean(correlations) < 0.5, f"maps barely changed: rank correlation {np.mean(correlations):.2f}"
    # the same weights give the same maps (the statistic itself can reach 1)
    again, _, _ = grad_cam(trained, images, labels)
    assert np.mean([spearman(a, b) for a, b in zip(maps, again)]) > 0.99


def test_classify_explain_writes_overlays(tmp_path, small_checkpoint, capsys):
    from resnext.cli import main

    out = tmp_path / "cams"
    flags = small_model_flags(small_checkpoint, "--backend", "torch", "--explain", str(out), "--workers", "0")
    code = main(["classify", *map(str, SAMPLES[:2]), *flags])
    assert code == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{p.stem}.gradcam.png" for p in SAMPLES[:2])
    with Image.open(out / written[0]) as png:
        assert png.size == (224, 224) and png.mode == "RGB"
    assert "gradcam.png" in capsys.readouterr().err


def test_classify_explain_refuses_exported_files(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from resnext.cli import main
    from resnext.export.driver import ExportConfig, export_model

    onnx_file = tmp_path / "model.onnx"
    export_model(
        ExportConfig("onnx", str(onnx_file), arch="resnext_test", weights="random", image_size=32, batch_range=(1, 2))
    )
    code = main(["classify", str(SAMPLES[0]), "--model-file", str(onnx_file), "--explain", str(tmp_path / "cams")])
    assert code == 2
    assert "--explain needs the torch backend" in capsys.readouterr().err
    assert not (tmp_path / "cams").exists()
