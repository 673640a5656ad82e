"""PyTorch Hub entry points, compatible with NVIDIA's ``NVIDIA/DeepLearningExamples:torchhub`` names.

    model = torch.hub.load(REPO, "nvidia_resneXt", source="local")            # or a GitHub "owner/repo"
    utils = torch.hub.load(REPO, "nvidia_convnets_processing_utils", source="local")

``pretrained_from_file`` takes any weights source: a checkpoint or ``export-weights`` file (``.pth`` or
``.safetensors``), a folder in timm's Hub layout, a URL, or ``"hf-hub:owner/name[@revision]"``.

A thin shim over ``resnext.model.sources`` (one model source) and ``resnext.inference.hub`` (processing utils).
"""

import os
import sys

dependencies = ["torch", "torchvision", "PIL", "numpy", "tqdm"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from resnext.inference.hub import ProcessingUtils  # noqa: E402
from resnext.model.sources import load_source  # noqa: E402


def _hub_model(arch, pretrained, pretrained_from_file, **kwargs):
    # A local file wins over the download, whatever ``pretrained`` says (NVIDIA's entry points behave alike).
    # Models come back in eval mode, ready for the published inference snippet; call .train() to fine-tune.
    weights = pretrained_from_file or ("DEFAULT" if pretrained else None)
    if kwargs.keys() - {"num_classes", "progress"}:
        raise TypeError(f"unexpected arguments {sorted(kwargs.keys() - {'num_classes', 'progress'})}")
    model = load_source(weights, arch=arch, **kwargs).model
    assert model is not None
    return model.eval()


def nvidia_resnext101_32x4d(pretrained=True, pretrained_from_file=None, **kwargs):
    """ResNeXt101-32x4d; ``pretrained`` downloads NVIDIA's NGC weights into the torch hub cache."""
    return _hub_model("resnext101_32x4d", pretrained, pretrained_from_file, **kwargs)


def nvidia_resneXt(pretrained=True, pretrained_from_file=None, **kwargs):
    """Alias of :func:`nvidia_resnext101_32x4d`, the name on the PyTorch Hub page."""
    return _hub_model("resnext101_32x4d", pretrained, pretrained_from_file, **kwargs)


def nvidia_resnet50(pretrained=True, pretrained_from_file=None, **kwargs):
    """ResNet-50 v1.5 with NVIDIA's NGC weights."""
    return _hub_model("resnet50", pretrained, pretrained_from_file, **kwargs)


def nvidia_se_resnext101_32x4d(pretrained=True, pretrained_from_file=None, **kwargs):
    """SE-ResNeXt101-32x4d with NVIDIA's NGC weights."""
    return _hub_model("se_resnext101_32x4d", pretrained, pretrained_from_file, **kwargs)


def nvidia_convnets_processing_utils():
    """``prepare_input_from_uri``, ``prepare_input_from_image`` and ``pick_n_best`` as on NVIDIA's hub page."""
    return ProcessingUtils()
