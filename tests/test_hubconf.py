"""torch.hub: the snippet from NVIDIA's PyTorch Hub page, run through this repository with local files."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import NGC_RESNEXT_FILE, REPO_ROOT, SAMPLES, place_file
from PIL import Image
from test_transforms import nvidia_validation_v1

from resnext.labels import imagenet_categories

REPO_DIR = str(REPO_ROOT)
ENTRY_POINTS = ["nvidia_resneXt", "nvidia_resnext101_32x4d", "nvidia_resnet50", "nvidia_se_resnext101_32x4d"]


def test_published_snippet_runs_verbatim(offline_cache, tv_reference, capsys) -> None:
    reference, path = tv_reference
    place_file(path, offline_cache / NGC_RESNEXT_FILE)  # "downloaded" weights; the mirror is a closed port
    uris = [str(p) for p in SAMPLES]
    device = torch.device("cpu")

    # --- the snippet from the issue, unchanged except REPO_DIR and source='local' ---
    resneXt = torch.hub.load(REPO_DIR, "nvidia_resneXt", source="local")
    utils = torch.hub.load(REPO_DIR, "nvidia_convnets_processing_utils", source="local")
    batch = torch.cat([utils.prepare_input_from_uri(uri) for uri in uris]).to(device)
    with torch.no_grad():
        output = torch.nn.functional.softmax(resneXt(batch), dim=1)
    results = utils.pick_n_best(predictions=output, n=5)
    # ---

    # Independent reference: torchvision's generic ResNet + a v1 transforms pipeline, same random weights.
    preprocess = nvidia_validation_v1()
    with torch.no_grad():
        expected = torch.softmax(reference(torch.stack([preprocess(Image.open(u).convert("RGB")) for u in uris])), 1)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)
    categories = imagenet_categories()
    for row, probs in zip(results, expected):
        values, indices = probs.topk(5)
        assert [name for name, _ in row] == [categories[i] for i in indices.tolist()]
        assert [pct for _, pct in row] == [f"{100 * v:.1f}%" for v in values.tolist()]
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines()] == ["sample 0", "sample 1", "sample 2"]


def test_entry_points_and_signatures() -> None:
    import hubconf

    listed = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert set(ENTRY_POINTS + ["nvidia_convnets_processing_utils"]) <= set(listed)
    assert all(__import__(dep) for dep in hubconf.dependencies)  # what torch.hub checks before loading

    for name in ENTRY_POINTS:
        parameters = inspect.signature(getattr(hubconf, name)).parameters
        assert list(parameters)[:2] == ["pretrained", "pretrained_from_file"]
        assert parameters["pretrained"].default is True and parameters["pretrained_from_file"].default is None


@pytest.mark.parametrize(("entry", "num_features"), [("nvidia_resnet50", 2048), ("nvidia_se_resnext101_32x4d", 2048)])
def test_siblings_with_num_classes(entry, num_features) -> None:
    model = torch.hub.load(REPO_DIR, entry, source="local", pretrained=False, num_classes=10)
    assert not model.training and model.fc.weight.shape == (10, num_features)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_pretrained_from_file_for_fine_tuning(small_checkpoint, tmp_path) -> None:
    import hubconf

    # a resnext_test file does not fit resnext101: the error names the mismatch instead of a traceback
    from resnext.errors import WeightsError

    with pytest.raises(WeightsError, match="missing keys"):
        hubconf.nvidia_resneXt(pretrained=False, pretrained_from_file=str(small_checkpoint))
