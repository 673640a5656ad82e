"""Architecture: equivalence with torchvision's generic ResNet, parameter counts, the timm-style model API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from conftest import randomize_bn

from resnext import create_model, get_model_weights, list_models
from resnext.errors import WeightsError
from resnext.model.resnet import ResNet, SEBottleneck, se_resnext101_32x4d
from resnext.model.weights import WeightsEnum, load_checkpoint_into

# 64 px keeps every stage's spatial size >= 2 (64 / 32) while staying cheap on 2 CPU cores.
X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_registry_lists_the_family() -> None:
    assert {"resnet50", "resnext101_32x4d", "se_resnext101_32x4d", "resnext_test"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnext9000")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnext101_32x4d", 44_177_704),  # NVIDIA README / paper
        ("resnet50", 25_557_032),  # torchvision resnet50
        # NVIDIA's SE unit adds Linear(C,16) + Linear(16,C) = 33*C + 16 per block, C = 256/512/1024/2048 x 3/4/23/3.
        (
            "se_resnext101_32x4d",
            44_177_704 + sum(n * (33 * c + 16) for n, c in [(3, 256), (4, 512), (23, 1024), (3, 2048)]),
        ),
    ],
)
def test_parameter_counts(name: str, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected
    weights = get_model_weights(name)
    assert weights is not None and weights.DEFAULT.meta["num_params"] == expected


def test_resnext101_matches_torchvision_resnet_with_groups(tv_reference) -> None:
    import hubconf

    reference, path = tv_reference
    model = hubconf.nvidia_resneXt(pretrained=False, pretrained_from_file=str(path))
    assert list(model.state_dict()) == list(reference.state_dict())  # same key names, same order: strict NGC layout
    with torch.no_grad():
        expected, actual = reference(X64), model(X64)
    assert expected.abs().max() > 0.1  # not a degenerate all-zero comparison
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_resnet50_matches_torchvision_resnet50(tmp_path) -> None:
    torch.manual_seed(2)
    reference = randomize_bn(torchvision.models.resnet50(), seed=2)
    path = tmp_path / "nvidia_resnet50.pth.tar"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet50", weights=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X64), reference(X64), atol=1e-5, rtol=0)


def test_stride_is_on_the_3x3_convolution() -> None:
    """ResNet v1.5: the first block of stages 2-4 down-samples in conv2, not conv1."""
    model = create_model("resnext_test")
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.conv2.groups == 32
        assert block.downsample[0].stride == (2, 2)


def test_se_model_loads_squeeze_weights_stored_as_1x1_convolutions(tmp_path) -> None:
    torch.manual_seed(3)
    source = randomize_bn(se_resnext101_32x4d(), seed=3)
    state = source.state_dict()
    squeeze_keys = [k for k in state if ".squeeze." in k and k.endswith("weight")]
    assert len(squeeze_keys) == 2 * 33 and state["layer1.0.squeeze.squeeze.weight"].shape == (16, 256)
    as_conv = {k: (v[:, :, None, None] if k in squeeze_keys else v) for k, v in state.items()}
    path = tmp_path / "se_conv.pth"
    torch.save(as_conv, path)
    model = load_checkpoint_into(se_resnext101_32x4d(), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X64), source(X64), atol=1e-5, rtol=0)


def test_se_unit_is_applied_before_the_residual_add() -> None:
    """With the SE scale forced to 0, the block must reduce to relu(identity)."""
    block = SEBottleneck(256, 64, groups=32, base_width=4).eval()
    with torch.no_grad():
        block.squeeze.expand.weight.zero_()
        block.squeeze.expand.bias.fill_(-1e4)  # sigmoid -> 0
        x = torch.randn(1, 256, 8, 8)
        torch.testing.assert_close(block(x), torch.relu(x))


@pytest.mark.parametrize("name", list_models())
def test_model_api(name: str) -> None:
    """timm-style surface on every registered model, on a small input."""
    model: ResNet = create_model(name).eval()
    with torch.no_grad():
        logits = model(X64)
        features = model.forward_features(X64)
        pooled = model.forward_head(features, pre_logits=True)
        assert logits.shape == (2, 1000) and model.num_classes == 1000
        assert features.shape == (2, model.num_features, 2, 2)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(features), logits)
        torch.testing.assert_close(model.get_classifier()(pooled), logits)

        model.reset_classifier(7)
        assert model.num_classes == 7 and model(X64).shape == (2, 7)
        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(X64), pooled)
    assert create_model(name, num_classes=5).fc.out_features == 5


def test_resnext_test_has_no_published_weights() -> None:
    from resnext.errors import WeightsError

    with pytest.raises(WeightsError, match="no published weights"):
        create_model("resnext_test", weights="DEFAULT")


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_with_its_own_weights_enum(name: str) -> None:
    """The builder's ``weights`` parameter is the one record of its published weights (torchvision's pattern)."""
    weights = get_model_weights(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = create_model(name)
    assert model.arch_name == name
    if weights is None:
        with pytest.raises(WeightsError, match="no published weights"):
            create_model(name, weights="DEFAULT")
        return
    assert issubclass(weights, WeightsEnum) and weights.DEFAULT in weights
    assert weights.DEFAULT.meta["num_params"] == sum(p.numel() for p in model.parameters())
    other = next(get_model_weights(n) for n in list_models() if get_model_weights(n) not in (None, weights))
    with pytest.raises(WeightsError, match=weights.__name__):
        create_model(name, weights=other.DEFAULT)  # another architecture's weights are refused, not loaded


def test_create_model_from_a_file_is_built_once_and_in_training_mode(small_checkpoint) -> None:
    """A file goes through load_source (the one resolver) and comes back like a fresh module: training mode."""
    model = create_model("resnext_test", weights=str(small_checkpoint))
    assert model.training and all(m.training for m in model.modules())
    assert model.arch_name == "resnext_test"
    expected = torch.load(small_checkpoint, weights_only=True)
    torch.testing.assert_close(model.state_dict()["fc.weight"], expected["fc.weight"])
    with pytest.raises(ValueError, match="cannot be combined"):
        create_model("resnext_test", weights=str(small_checkpoint), zero_init_residual=True)


def test_no_module_reaches_into_the_private_registry() -> None:
    """``list_models``/``get_model_builder``/``get_model_weights`` are the registry's public face."""
    root = Path(__file__).resolve().parents[2]
    files = [*(root / "src").rglob("*.py"), *(root / "tests").rglob("*.py"), root / "hubconf.py"]
    users = sorted(
        str(f.relative_to(root))
        for f in files
        if f.name not in ("resnet.py", Path(__file__).name) and "_MODEL_REGISTRY" in f.read_text()
    )
    assert users == []


def torchvision_reference(name: str) -> torch.nn.Module:
    """torchvision's generic ResNet configured as each registered model (for SE models: its plain ResNeXt body).
    A new registered model fails here until it is given its reference."""
    from torchvision.models.resnet import Bottleneck, ResNet

    references = {
        "resnet50": lambda: ResNet(Bottleneck, [3, 4, 6, 3]),
        "resnext101_32x4d": lambda: ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4),
        "se_resnext101_32x4d": lambda: ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4),
        "resnext_test": lambda: ResNet(Bottleneck, [1, 1, 1, 1], groups=32, width_per_group=4),
    }
    assert name in references, f"{name} has no torchvision reference in this test"
    return references[name]()


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_torchvisions_layout_and_parameter_count(name: str) -> None:
    """Same tensor names and shapes as torchvision's ResNet of that configuration; an SE model adds exactly NVIDIA's
    fixed 16-unit squeeze (Linear(C,16) + Linear(16,C) per block) and nothing else."""
    with torch.device("meta"):
        model, reference = create_model(name), torchvision_reference(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    extra = {k: shape for k, shape in ours.items() if k not in theirs}
    assert {k: ours[k] for k in theirs} == theirs  # raises KeyError on a missing tensor
    count = sum(p.numel() for p in model.parameters())
    expected = sum(p.numel() for p in reference.parameters())
    if name.startswith("se_"):
        assert extra and all(".squeeze." in k for k in extra)
        blocks = [m for m in model.modules() if isinstance(m, SEBottleneck)]
        expected += sum(33 * block.squeeze.expand.out_features + 16 for block in blocks)
    else:
        assert extra == {}
    assert count == expected


@pytest.mark.parametrize("name", [n for n in list_models() if get_model_weights(n) is not None])
def test_published_weights_metadata_matches_the_architecture(name: str) -> None:
    """Every member of the builder's enum: its parameter count, class names and GMACs (counted here by torch's
    FlopCounterMode on shapes only, at the member's own crop size; NVIDIA's README gives 7.97 for ResNeXt101)."""
    from torch.utils.flop_counter import FlopCounterMode

    enum = get_model_weights(name)
    assert enum is not None and list(enum) != []
    with torch.device("meta"):
        model = create_model(name).eval()
    params = sum(p.numel() for p in model.parameters())
    for member in enum:
        assert enum.verify(member.name) is member and enum.verify(f"{enum.__name__}.{member.name}") is member
        assert member.meta["num_params"] == params
        assert len(member.meta["categories"]) == model.num_classes
        crop = member.transforms().crop_size
        with torch.device("meta"), FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, crop, crop))
        assert counter.get_total_flops() / 2e9 == pytest.approx(member.meta["gmacs"], rel=0.01)
