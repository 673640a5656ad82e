"""Resolve any model source, once, into a model with its architecture, class names and input size.

A *source* is one of:

* published weights: a :class:`~resnext.model.weights.WeightsEnum` member, its name (``"IMAGENET1K_NVIDIA"``) or
  ``"DEFAULT"`` (the architecture's default published weights; the default of every entry point);
* a checkpoint file or an http(s) URL: a flat state_dict, NVIDIA's layouts, or a ``resnext train`` checkpoint;
* a ``.safetensors`` file, a folder in timm's Hugging Face Hub layout, or ``hf-hub:owner/name[@revision]``
  (:mod:`resnext.model.hf`);
* ``None`` or ``"random"``: random initialisation (torchvision's meaning of ``weights=None``), drawn from a fixed
  seed (:data:`RANDOM_SEED`), so every command, process and rerun builds the same random model (a Ray replica
  agrees with its driver; ``--backend auto`` reuses one cache entry instead of exporting on every start).

``None`` means random weights everywhere in the package (as in torchvision); the published weights are asked
for by name, ``"DEFAULT"``, which is the default of the CLI, :class:`~resnext.inference.predict.Predictor`, evaluation,
export and the hub entry points with ``pretrained=True``.

Training checkpoints and files written by ``resnext export-weights`` carry their architecture, class names and
image size (:func:`checkpoint_metadata`), so a fine-tuned model classifies with its own names at its own size.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import WeightsError
from ..labels import imagenet_categories, imagenet_wnids
from ..options import option
from ..transforms import EvalPreset, eval_preset, preset_from_config
from .resnet import build_model, get_model_builder, get_model_weights, list_models, model_from_state_dict
from .weights import WeightsEnum, extract_state_dict, read_checkpoint, remap_state_dict

logger = logging.getLogger("resnext")

DEFAULT_ARCH = "resnext101_32x4d"
RANDOM = "random"
#: the seed of random weights (``load_source("random")``): the same model everywhere, whatever the caller's RNG
RANDOM_SEED = 0

#: a published weights name: ``DEFAULT``, ``IMAGENET1K_NVIDIA`` or ``ResNeXt101_32X4D_Weights.IMAGENET1K_NVIDIA``
_WEIGHTS_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

WeightsSource = Any  # WeightsEnum member | str (name, "DEFAULT", path, URL, "random") | os.PathLike | None


def arch_option(default: str | None = None, *, flags: tuple[str, ...] = ("--arch",)) -> Any:
    """The ``--arch`` field of a config: a registered architecture."""
    return option(
        default,
        flags=flags,
        help="architecture",
        choices=list_models(),
        unset=f"the checkpoint's own, else {DEFAULT_ARCH}",
    )


def weights_option(default: WeightsSource = "DEFAULT") -> Any:
    """The ``--weights`` field of a config: any source :func:`load_source` resolves."""
    return option(
        default,
        metavar="NAME|FILE|DIR|URL|hf-hub:ID",
        unset="random weights",
        help="published weights name, checkpoint, training checkpoint or export-weights file (.pth, .safetensors or "
        "a Hub folder), URL, hf-hub:owner/name[@revision], or 'random' (published weights are cached in "
        "$TORCH_HOME/hub/checkpoints, hf-hub: in huggingface_hub's cache)",
    )


@dataclass
class ModelSource:
    """A resolved source: the eval-mode torch model (``None`` for exported files) and what it needs to run."""

    arch: str
    model: nn.Module | None
    num_classes: int
    categories: list[str]  # display names, one per output index
    image_size: int
    weights: str  # where the weights came from: a weights name, path, URL or "random"
    classes: list[str] | None = None  # folder names / ImageNet wnids the model was trained with, for label matching
    transforms: EvalPreset = field(default=None)  # type: ignore[assignment]
    metadata: dict[str, Any] = field(default_factory=dict)
    published: WeightsEnum | None = None  # the published weights it was built with, if any

    def __post_init__(self) -> None:
        if self.transforms is None:
            self.transforms = eval_preset(self.image_size)

    def describe(self) -> dict[str, Any]:
        """What exported files and servers carry along so the model can be used without its checkpoint."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "categories": self.categories,
            "classes": self.classes,
            "weights": self.weights,
        }


def display_names(num_classes: int, classes: list[str] | None = None) -> list[str]:
    """Human-readable names for ``num_classes`` outputs: ImageNet names for ImageNet wnids or a 1000-class head,
    else the stored class (folder) names, else ``class_<i>``."""
    if classes is not None and len(classes) == num_classes:
        return imagenet_categories() if list(classes) == imagenet_wnids() else list(classes)
    if num_classes == 1000:
        return imagenet_categories()
    return [f"class_{i}" for i in range(num_classes)]


def checkpoint_metadata(checkpoint: Any) -> dict[str, Any]:
    """``arch``, ``classes``, ``image_size`` and ``transforms`` (from its ``preprocessing``) stored in a training /
    export-weights checkpoint or a Hub folder (absent keys are left out; values of the wrong type are ignored)."""
    if not isinstance(checkpoint, Mapping):
        return {}
    found: dict[str, Any] = {}
    arch = checkpoint.get("arch")
    if isinstance(arch, str):
        arch = arch.replace("-", "_")  # NVIDIA's training scripts write "resnext101-32x4d"
        if arch in list_models():
            found["arch"] = arch
    classes = checkpoint.get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        found["classes"] = classes
    size = checkpoint.get("image_size")
    config = checkpoint.get("config")
    if not isinstance(size, int) and isinstance(config, Mapping):
        size = config.get("image_size")
    if isinstance(size, int) and not isinstance(size, bool) and size >= 32:
        found["image_size"] = size
    preprocessing = checkpoint.get("preprocessing")
    if isinstance(preprocessing, Mapping):
        try:
            found["transforms"] = preset_from_config(preprocessing)
        except ValueError as exc:
            logger.warning("ignoring the checkpoint's preprocessing (%s); using the defaults for its size", exc)
        else:
            found["image_size"] = found["transforms"].crop_size
    return found


def with_metadata(state_dict: Mapping[str, Tensor], **metadata: Any) -> dict[str, Any]:
    """A checkpoint object holding ``state_dict`` plus metadata that :func:`checkpoint_metadata` reads back."""
    return {"state_dict": dict(state_dict), **{k: v for k, v in metadata.items() if v is not None}}


def infer_arch(state_dict: Mapping[str, Tensor]) -> str | None:
    """The registered architecture whose parameter names and shapes (head aside) match ``state_dict``."""
    state_dict = remap_state_dict(state_dict)
    wanted = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith("fc.")}
    for name in list_models():
        with torch.device("meta"):
            candidate = get_model_builder(name)(weights=None).state_dict()
        shapes = {k: tuple(v.shape) for k, v in candidate.items() if not k.startswith("fc.")}
        if shapes == wanted:
            return name
    return None


def published_weights(arch: str | None, weights: WeightsSource) -> WeightsEnum | None:
    """The published weights ``weights`` names for ``arch`` (default resnext101_32x4d): a member, ``"DEFAULT"``,
    a member name or ``"<Enum>.<member>"``; ``None`` when it names a file, URL or Hub source instead. The one place
    that tells them apart: an existing file always wins over a name."""
    if isinstance(weights, WeightsEnum):
        return weights
    # a name is dotted identifiers: a URL, an hf-hub: id or a path with a folder never is, so no reader is asked
    if not isinstance(weights, str) or not _WEIGHTS_NAME.fullmatch(weights) or os.path.exists(weights):
        return None
    prefix, _, name = weights.rpartition(".")
    owner = _arch_of_enum_name(prefix.rsplit(".", 1)[-1]) if prefix else None  # "ResNet50_Weights.X" names its arch
    model_name = arch or owner or DEFAULT_ARCH
    if owner is not None and owner != model_name:
        raise WeightsError(f"{weights} are {owner}'s weights, not {model_name}'s; drop --arch or pass --arch {owner}")
    enum = get_model_weights(model_name)
    if name == "DEFAULT" and enum is None:
        raise WeightsError(f"{model_name} has no published weights; pass --weights FILE (or --weights random)")
    if enum is not None and name in enum.__members__:
        return enum[name]
    return None


def _arch_of_enum_name(enum_name: str) -> str | None:
    """The architecture whose builder takes the weights enum called ``enum_name`` (None: no such enum)."""
    for model_name in list_models():
        enum = get_model_weights(model_name)
        if enum is not None and enum.__name__ == enum_name:
            return model_name
    return None


def load_source(
    weights: WeightsSource = "DEFAULT",
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    use_ema: bool = False,
    progress: bool = True,
) -> ModelSource:
    """Resolve ``weights`` (see the module docstring) into an eval-mode model and its metadata.

    ``arch`` defaults to the checkpoint's own, else the architecture its tensors fit, else resnext101_32x4d.
    ``num_classes`` different from the checkpoint's re-initialises the head (fine-tuning); inference callers
    leave it ``None`` so a fine-tuned file keeps its own head.

    The value is looked at once, here (:func:`published_weights`), and goes down one branch: published weights
    to the builder (:func:`~resnext.model.resnet.build_model`, which fetches and loads them), anything else to
    :func:`~resnext.model.weights.read_checkpoint` (file, URL, Hub folder, ``hf-hub:``), read once for its tensors and
    metadata, then into the model (:func:`~resnext.model.resnet.model_from_state_dict`). Nothing below asks again
    whether it is a name or a file.
    """
    if arch is not None and arch not in list_models():
        raise WeightsError(f"unknown architecture {arch!r}; choose one of {', '.join(list_models())}")
    if weights is None or weights == RANDOM:
        arch = arch or DEFAULT_ARCH
        with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
            torch.manual_seed(RANDOM_SEED)
            model = build_model(arch, num_classes=num_classes)
        return _source(arch, model, RANDOM, None, None)
    published = published_weights(arch, weights)
    if published is not None:
        return _published_source(arch or _arch_of(published), published, num_classes=num_classes, progress=progress)

    checkpoint = read_checkpoint(weights, progress=progress)  # read once: the tensors and the metadata
    stored = checkpoint_metadata(checkpoint)
    state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
    if arch is None:
        arch = stored.get("arch") or infer_arch(state_dict) or DEFAULT_ARCH
    elif stored.get("arch") not in (None, arch):
        raise WeightsError(
            f"{weights} holds a {stored['arch']} checkpoint, not {arch}; drop --arch or pass --arch {stored['arch']}"
        )
    try:
        model = model_from_state_dict(arch, state_dict, num_classes=num_classes, source=str(weights))
    except WeightsError as exc:
        fits = infer_arch(state_dict)
        hint = f"; its tensors fit --arch {fits}" if fits and fits != arch else ""
        raise WeightsError(f"{exc}{hint}") from exc
    classes = stored.get("classes") if num_classes is None else None
    source = _source(arch, model, str(weights), classes, stored.get("image_size"))
    if "transforms" in stored:
        source.transforms = stored["transforms"]
    return source


def _arch_of(published: WeightsEnum) -> str:
    """The architecture whose builder takes these weights."""
    return next((a for a in list_models() if get_model_weights(a) is type(published)), DEFAULT_ARCH)


def _published_source(arch: str, published: WeightsEnum, *, num_classes: int | None, progress: bool) -> ModelSource:
    model = build_model(arch, weights=published, num_classes=num_classes, progress=progress)
    source = _source(arch, model, repr(published), imagenet_wnids(), published.transforms().crop_size)
    source.transforms = published.transforms()
    source.published = published
    return source


def _source(
    arch: str, model: nn.Module, weights: str, classes: list[str] | None, image_size: int | None
) -> ModelSource:
    num_classes = int(getattr(model, "num_classes", 1000))
    if classes is not None and len(classes) != num_classes:
        classes = None
    return ModelSource(
        arch=arch,
        model=model.eval(),
        num_classes=num_classes,
        categories=display_names(num_classes, classes),
        image_size=image_size or 224,
        weights=weights,
        classes=classes,
    )


def source_from_model(
    model: nn.Module,
    *,
    arch: str | None = None,
    image_size: int = 224,
    classes: list[str] | None = None,
    weights: str = "in-memory model",
) -> ModelSource:
    """Wrap a model built in memory (tests, benchmarks, a training run) as a :class:`ModelSource`."""
    name = arch or str(getattr(model, "arch_name", type(model).__name__))
    return _source(name, model, weights, classes, image_size)
