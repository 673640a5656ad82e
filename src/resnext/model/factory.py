"""The model factory (timm's ``create_model``): a registered architecture by name, with any weights source.

The architectures, their builders and the registry live in :mod:`resnext.model.resnet`; files, URLs,
training checkpoints, safetensors and Hub sources are resolved by :func:`resnext.model.sources.load_source` alone.
:func:`create_model` only picks between random weights (built here) and that resolver.
"""

from __future__ import annotations

import os
from typing import Any

from .resnet import ResNet, build_model, list_models
from .sources import load_source
from .weights import Weights, WeightsEnum

__all__ = ["create_model"]


def create_model(
    name: str,
    *,
    weights: WeightsEnum | Weights | str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> ResNet:
    """Build a registered architecture by name (timm style); ``weights=None`` gives random weights.

    Otherwise ``weights`` is any source :func:`~resnext.model.sources.load_source` takes: a weights member or its name
    (``"DEFAULT"``), a checkpoint or ``export-weights`` file, a URL, a Hub folder or ``hf-hub:`` id. It is handed
    to that resolver as it is (one walk: load_source tells names from files once and builds once); for the class
    names and image size stored with a checkpoint, call :func:`~resnext.model.sources.load_source` itself.
    With ``num_classes`` different from the checkpoint's, every layer but ``fc`` is loaded and the head is
    re-initialised (fine-tuning). Model options (``kwargs``) shape a model built from scratch, so they cannot be
    combined with ``weights``.
    """
    if name not in list_models():
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if weights is None:
        return build_model(name, num_classes=num_classes, progress=progress, **kwargs)
    if kwargs:
        raise ValueError(f"model options {sorted(kwargs)} cannot be combined with published or loaded weights")
    model = load_source(weights, arch=name, num_classes=num_classes, progress=progress).model
    assert isinstance(model, ResNet)
    return model.train()  # the mode of a freshly built module; load_source hands out eval-mode models for inference
