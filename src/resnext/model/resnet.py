"""ResNet v1.5 family as published by NVIDIA: ResNet-50, ResNeXt101-32x4d and SE-ResNeXt101-32x4d.

One ``ResNet`` class builds all three. State-dict keys follow torchvision's naming (``conv1``, ``bn1``,
``layer1..4``, ``fc``) because that is the layout of NVIDIA's published NGC checkpoints, so they load with
``strict=True``. "v1.5" means the stride of a down-sampling block sits on the 3x3 convolution, not the first 1x1.

Builders are keyword-only and take ``weights=`` like torchvision's: a member of their weights enum (or its name) or
``None``, never a file. The registry gives them by name (:func:`list_models`, :func:`get_model_builder`,
:func:`get_model_weights`); files, URLs and Hub sources are resolved by :func:`resnext.model.sources.load_source`, and
:func:`resnext.model.factory.create_model` is the factory over both.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import WeightsError
from .weights import (
    ResNet50_Weights,
    ResNeXt101_32X4D_Weights,
    SE_ResNeXt101_32X4D_Weights,
    WeightsEnum,
    load_state_dict_into,
    remap_state_dict,
)

__all__ = [
    "Bottleneck",
    "SEBottleneck",
    "SqueezeExcitation",
    "ResNet",
    "resnet50",
    "resnext101_32x4d",
    "se_resnext101_32x4d",
    "resnext_test",
    "build_model",
    "model_from_state_dict",
    "list_models",
    "get_model_builder",
    "get_model_weights",
    "get_weights",
    "register_model",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class SqueezeExcitation(nn.Module):
    """NVIDIA's SE unit: a fixed 16-unit bottleneck (not timm's C/16), Linear layers ``squeeze``/``expand``."""

    def __init__(self, channels: int, squeeze_units: int = 16) -> None:
        super().__init__()
        self.squeeze = nn.Linear(channels, squeeze_units)
        self.expand = nn.Linear(squeeze_units, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean((2, 3))
        scale = torch.sigmoid(self.expand(torch.relu(self.squeeze(scale))))
        return x * scale[:, :, None, None]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 grouped (carries the stride) -> 1x1, each followed by BN; residual add; ReLU."""

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)


class SEBottleneck(Bottleneck):
    """Bottleneck with squeeze-excitation applied to the bn3 output, before the residual add."""

    def __init__(self, inplanes: int, planes: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(inplanes, planes, *args, **kwargs)
        self.squeeze = SqueezeExcitation(planes * self.expansion)

    def residual(self, x: Tensor) -> Tensor:
        return self.squeeze(super().residual(x))


class ResNet(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages of bottlenecks, global average pool, ``fc``."""

    #: registry name, set when built by name (``build_model``); exported files and servers carry it
    arch_name: str = "resnet"

    def __init__(
        self,
        block: type[Bottleneck],
        layers: list[int],
        *,
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def _make_layer(self, block: type[Bottleneck], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [
            block(self.inplanes, planes, groups=self.groups, base_width=self.base_width) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    @property
    def num_classes(self) -> int:
        """Size of the classifier output; 0 after ``reset_classifier(0)`` (the model returns pooled features)."""
        return self.fc.out_features if isinstance(self.fc, nn.Linear) else 0

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled feature map of the last stage, ``[N, num_features, H/32, W/32]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the feature map; return the pooled vector (``pre_logits=True``) or the class logits."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` with a freshly initialised head for ``num_classes`` (0 gives an identity head)."""
        device = next(self.parameters()).device
        self.fc = nn.Linear(self.num_features, num_classes).to(device) if num_classes > 0 else nn.Identity()


_MODEL_REGISTRY: dict[str, Callable[..., ResNet]] = {}


def register_model(fn: Callable[..., ResNet]) -> Callable[..., ResNet]:
    """Make the builder ``fn`` known by its name; its ``weights`` annotation names its published weights."""
    _MODEL_REGISTRY[fn.__name__] = fn
    return fn


def _build(
    block: type[Bottleneck],
    layers: list[int],
    weights: WeightsEnum | None,
    progress: bool,
    num_classes: int | None,
    **kwargs: Any,
) -> ResNet:
    model = ResNet(block, layers, num_classes=num_classes or 1000, **kwargs)
    if weights is not None:
        weights.load_into(model, progress=progress)
    return model


@register_model
def resnet50(
    *, weights: ResNet50_Weights | None = None, progress: bool = True, num_classes: int | None = None, **kwargs: Any
) -> ResNet:
    """ResNet-50 v1.5 (25.6M parameters)."""
    weights = ResNet50_Weights.verify(weights)
    return _build(Bottleneck, [3, 4, 6, 3], weights, progress, num_classes, **kwargs)


@register_model
def resnext101_32x4d(
    *,
    weights: ResNeXt101_32X4D_Weights | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    **kwargs: Any,
) -> ResNet:
    """ResNeXt101-32x4d (44.2M parameters, cardinality 32, 4 channels per group in the first stage)."""
    weights = ResNeXt101_32X4D_Weights.verify(weights)
    return _build(Bottleneck, [3, 4, 23, 3], weights, progress, num_classes, groups=32, width_per_group=4, **kwargs)


@register_model
def se_resnext101_32x4d(
    *,
    weights: SE_ResNeXt101_32X4D_Weights | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    **kwargs: Any,
) -> ResNet:
    """SE-ResNeXt101-32x4d with NVIDIA's fixed 16-unit squeeze."""
    weights = SE_ResNeXt101_32X4D_Weights.verify(weights)
    return _build(SEBottleneck, [3, 4, 23, 3], weights, progress, num_classes, groups=32, width_per_group=4, **kwargs)


@register_model
def resnext_test(
    *, weights: None = None, progress: bool = True, num_classes: int | None = None, **kwargs: Any
) -> ResNet:
    """One block per stage, same classes as ResNeXt101-32x4d: for fast tests and smoke runs, no weights."""
    if weights is not None:
        raise ValueError("resnext_test has no published weights")
    return _build(Bottleneck, [1, 1, 1, 1], None, progress, num_classes, groups=32, width_per_group=4, **kwargs)


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(_MODEL_REGISTRY)


def get_model_builder(name: str) -> Callable[..., ResNet]:
    """The builder registered as ``name`` (torchvision's ``get_model_builder``)."""
    if name not in _MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODEL_REGISTRY[name]


def get_model_weights(name: str) -> type[WeightsEnum] | None:
    """The published weights enum of architecture ``name``, or ``None`` when it has none.

    As torchvision's ``get_model_weights``, it is read from the builder's ``weights`` annotation: the builder is
    the one place that says which weights it takes, so no second table can drift from it.
    """
    hint = typing.get_type_hints(get_model_builder(name)).get("weights")
    kinds = typing.get_args(hint) or (hint,)
    return next((k for k in kinds if isinstance(k, type) and issubclass(k, WeightsEnum)), None)


def get_weights(model_name: str, weights: str = "DEFAULT") -> WeightsEnum:
    """The published weights for ``model_name`` (``"DEFAULT"`` or a member name)."""
    enum = get_model_weights(model_name)
    if enum is None:
        known = [name for name in list_models() if get_model_weights(name) is not None]
        raise WeightsError(f"no published weights for {model_name!r}; known: {', '.join(known)}")
    return enum.verify(weights)


def build_model(
    name: str,
    *,
    weights: WeightsEnum | None = None,
    num_classes: int | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> ResNet:
    """The registered architecture ``name`` with published ``weights`` or random ones (``None``): no files here,
    :func:`resnext.model.sources.load_source` resolves those. The model carries its registry name (``arch_name``)."""
    model = get_model_builder(name)(weights=weights, num_classes=num_classes, progress=progress, **kwargs)
    model.arch_name = name
    return model


def model_from_state_dict(
    name: str,
    state_dict: dict[str, Tensor],
    *,
    num_classes: int | None = None,
    source: str = "checkpoint",
    **kwargs: Any,
) -> ResNet:
    """Build ``name`` and load ``state_dict`` (any known key layout) into it.

    The head takes the checkpoint's size unless ``num_classes`` says otherwise (then it is re-initialised), so a
    fine-tuned file keeps its own classes. A checkpoint of another architecture is a one-line ``WeightsError``.
    """
    state_dict = remap_state_dict(state_dict)
    head = state_dict.get("fc.weight")
    if num_classes is None and head is not None and head.dim() == 2:
        num_classes = head.shape[0]
    model = build_model(name, num_classes=num_classes, **kwargs)
    try:
        load_state_dict_into(model, state_dict)
    except WeightsError as exc:
        raise WeightsError(f"{source} is not a {name} checkpoint: {exc}") from exc
    return model
