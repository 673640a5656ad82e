"""Published checkpoints and the one loader every entry point uses.

Each :class:`Weights` record carries a checkpoint's URL, its preprocessing and its metadata (categories,
parameter count, GMACs, reported accuracy with its source, licence), so docs and code cannot drift.

:func:`load_checkpoint_into` accepts every checkpoint layout NVIDIA's code has produced: a flat state_dict in
torchvision naming (the NGC files), NVIDIA's current ``layers.{0..3}`` naming, ``module.`` / ``_orig_mod.``
prefixes (DDP, ``torch.compile``), training checkpoints ``{'state_dict', 'state_dict_ema', ...}``, and SE units
stored as 1x1 convolutions. Files are read with ``torch.load(weights_only=True)``, or without pickle by the
``safetensors`` library (``.safetensors`` files and Hub folders: :mod:`resnext.model.hf`; ``hf-hub:`` ids:
:mod:`resnext.model.hf_hub`).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..download import download_file, is_url, url_cache_name, url_file_name
from ..errors import DownloadError, WeightsError, first_line
from ..labels import imagenet_categories
from ..transforms import EvalPreset, eval_preset

logger = logging.getLogger("resnext")

#: Base URL of an offline mirror; when set, ``<mirror>/<file name>`` is fetched instead of the NGC URL.
MIRROR_ENV = "RESNEXT_WEIGHTS_MIRROR"
_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia"
_SOURCE = "https://github.com/NVIDIA/DeepLearningExamples/tree/master/PyTorch/Classification/ConvNets"


def cache_path_for(url: str) -> Path:
    """Where the weights at ``url`` are cached, under ``$TORCH_HOME/hub/checkpoints/``.

    A published checkpoint's own URL keeps its file name (where ``torch.hub.load_state_dict_from_url`` keeps it,
    so a file downloaded by hand is found); any other URL gets :func:`~resnext.download.url_cache_name`, a name
    that includes a hash of the full URL: no URL can replace a published file or share a file with another URL.
    """
    published = _published(url)
    return published.cache_path if published else Path(torch.hub.get_dir()) / "checkpoints" / url_cache_name(url)


def _published(url: str) -> Weights | None:
    """The published checkpoint whose URL this is, if any (of every weights enum: an architecture's is the one its
    builder's ``weights`` annotation names, :func:`resnext.model.resnet.get_model_weights`)."""
    return next((m.value for enum in WeightsEnum.__subclasses__() for m in enum if m.value.url == url), None)


@dataclass(frozen=True)
class Weights:
    """One published checkpoint: where it lives, how inputs must be prepared, and what it is."""

    url: str
    transforms: EvalPreset
    meta: Mapping[str, Any] = field(default_factory=dict)
    sha256: str | None = None

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def cache_path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / url_file_name(self.url)

    def resolved_url(self) -> str:
        mirror = os.environ.get(MIRROR_ENV)
        return f"{mirror.rstrip('/')}/{self.file_name}" if mirror else self.url

    def fetch(self, *, progress: bool = True) -> Path:
        """Return the cached file, downloading it first when absent. Raises :class:`WeightsError` offline."""
        path = self.cache_path
        if path.is_file():
            return path
        url = self.resolved_url()
        logger.debug("downloading %s to %s", url, path)
        try:
            return download_file(url, path, progress=progress, sha256=self.sha256, verify=verify_download)
        except DownloadError as exc:
            source = "" if url == self.url else f" (original: {self.url})"
            raise WeightsError(
                f"could not download pretrained weights from {exc}{source}; download the file by hand and place "
                f"it at {path}, or set {MIRROR_ENV} to a base URL serving {self.file_name}, or pass --weights FILE"
            ) from exc

    def load_into(self, model: nn.Module, *, progress: bool = True) -> nn.Module:
        return load_checkpoint_into(model, self.fetch(progress=progress), progress=progress)


class WeightsEnum(Enum):
    """torchvision-style enum of :class:`Weights`; attribute access falls through to the record."""

    @classmethod
    def verify(cls, obj: Any) -> Any:
        if obj is None or isinstance(obj, cls):
            return obj
        if isinstance(obj, str):
            name = obj.removeprefix(cls.__name__ + ".")
            try:
                return cls[name]
            except KeyError:
                raise WeightsError(
                    f"unknown weights {obj!r} for {cls.__name__}; choose one of {', '.join(cls.__members__)}"
                ) from None  # the KeyError only repeats the name quoted above
        raise WeightsError(f"expected {cls.__name__} or its name, got {type(obj).__name__}")

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_value_"), name)

    def transforms(self) -> EvalPreset:
        return self.value.transforms

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _meta(**extra: Any) -> dict[str, Any]:
    return {
        "categories": imagenet_categories(),
        "min_size": (32, 32),
        "dataset": "ImageNet-1k (ILSVRC2012)",
        "license": "Apache-2.0 (NVIDIA DeepLearningExamples); published on NGC, version 20.06.0",
        "source": _SOURCE,
        **extra,
    }


class ResNeXt101_32X4D_Weights(WeightsEnum):
    IMAGENET1K_NVIDIA = Weights(
        url=f"{_NGC}/resnext101_32x4d_pyt_amp/versions/20.06.0/files/nvidia_resnext101-32x4d_200821.pth.tar",
        transforms=eval_preset(224),
        meta=_meta(
            num_params=44_177_704,
            gmacs=7.97,
            metrics={"top1": 80.43, "top5": 95.06},
            metrics_note="NVIDIA README: 250 epochs, AMP, 8x V100, 224 px single center crop",
            recipe="nvidia-250e",
        ),
    )
    DEFAULT = IMAGENET1K_NVIDIA


class ResNet50_Weights(WeightsEnum):
    IMAGENET1K_NVIDIA = Weights(
        url=f"{_NGC}/resnet50_pyt_amp/versions/20.06.0/files/nvidia_resnet50_200821.pth.tar",
        transforms=eval_preset(224),
        meta=_meta(num_params=25_557_032, gmacs=4.09, metrics=None, metrics_note="see NVIDIA's resnet50v1.5 README"),
    )
    DEFAULT = IMAGENET1K_NVIDIA


class SE_ResNeXt101_32X4D_Weights(WeightsEnum):
    IMAGENET1K_NVIDIA = Weights(
        url=f"{_NGC}/seresnext101_32x4d_pyt_amp/versions/20.06.0/files/nvidia_se-resnext101-32x4d_200821.pth.tar",
        transforms=eval_preset(224),
        meta=_meta(
            num_params=45_251_128, gmacs=7.97, metrics=None, metrics_note="see NVIDIA's se-resnext101-32x4d README"
        ),
    )
    DEFAULT = IMAGENET1K_NVIDIA


# ---------------------------------------------------------------------------------------------------------------
# Reading and remapping checkpoints


def read_checkpoint(source: str | os.PathLike[str], *, progress: bool = True) -> Any:
    """Load a checkpoint object from a path, URL, Hub folder or ``hf-hub:`` id, checked by :func:`check_tensor_bounds`.

    Files are read with ``torch.load(weights_only=True)``, or by the ``safetensors`` library (no pickle at all)
    when they are safetensors files (:mod:`resnext.model.hf`). A folder in timm's Hub layout is read from its weights
    file, with what its ``config.json`` says. URLs are downloaded once into the cache (:func:`cache_path_for`),
    verified before they enter it; ``hf-hub:`` ids go through ``huggingface_hub``'s cache.
    """
    from . import hf, hf_hub

    if hf_hub.is_hf_hub(source):
        source = hf_hub.fetch_hf_hub(str(source))
    elif is_url(source):
        source = _fetch_url(str(source), progress=progress)
    path = Path(source)
    described: dict[str, Any] = {}
    if path.is_dir():
        path, described = hf.folder_files(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if hf.is_safetensors(path):
        checkpoint = hf.read_safetensors(path, max_elements=MAX_TENSOR_ELEMENTS)
    else:
        _verify_archive(path)
        checkpoint = _torch_load(path)
    check_tensor_bounds(checkpoint, path)
    if described and isinstance(checkpoint, Mapping):
        # a Hub folder: the weights file's own metadata wins, config.json fills in the rest (timm's files have none)
        checkpoint = {**described, **(checkpoint if "state_dict" in checkpoint else {"state_dict": checkpoint})}
    return checkpoint


def _fetch_url(url: str, *, progress: bool) -> Path:
    published = _published(url)
    if published is not None:
        return published.fetch(progress=progress)  # its own cache file, checksum and mirror
    try:
        path = cache_path_for(url)
        if not path.is_file():
            download_file(url, path, progress=progress, verify=verify_download)
    except DownloadError as exc:
        raise WeightsError(f"could not download weights: {exc}") from exc
    return path


def verify_download(path: Path) -> None:
    """Refuse a downloaded checkpoint before it enters the cache: the CRC-32 of every record of a zip-format
    file (a body cut short has no central directory and fails here too), or a full read of a legacy one."""
    from . import hf

    if hf.is_safetensors(path):
        hf.read_safetensors(path)
    elif zipfile.is_zipfile(path):
        _verify_archive(path)
    else:
        _torch_load(path)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _UNSUPPORTED_GLOBAL.search(str(exc))
        if refused:
            name = refused.group(1) or refused.group(2)
            raise WeightsError(
                f"{path} was refused: it holds Python objects that are not loaded for safety ({name} is "
                f"not a tensor or a plain container; loading it could run code). Nothing in it was run; only "
                f"tensors, numbers, strings and plain containers are read (torch.load weights_only=True)"
            ) from exc
        raise WeightsError(f"{path} is not a PyTorch checkpoint, or it is corrupt (unreadable pickle data)") from exc
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for damaged files; all mean the same
        reason = first_line(exc).split(". ")[0]
        if isinstance(exc, KeyError):
            reason = "unrecognised file format"
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {reason[:120]}"
        ) from exc


#: torch's refusals of a non-allow-listed object, as worded by torch 2.0 - 2.14 (the wording keeps changing).
_UNSUPPORTED_GLOBAL = re.compile(
    r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)|"
    r"(?:Can only create new object for|Can only build) [^\n]*?(?:but got|got) <?(?:class )?'?([\w.]+)"
)


def _verify_archive(path: Path) -> None:
    """Check the CRC-32 of every record of a zip-format checkpoint: ``torch.load`` itself does not, so a file
    damaged in transfer would otherwise load silently with wrong weights."""
    if not zipfile.is_zipfile(path):
        return  # legacy (pre-1.6) format or not a checkpoint at all: torch.load reports it
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise WeightsError(f"{path} is a damaged checkpoint archive ({exc})") from exc
    if bad is not None:
        raise WeightsError(
            f"{path} is corrupt: the checksum of its record {bad!r} does not match (damaged or tampered)"
        )


#: A classifier with more classes than this is refused before any model is built (ImageNet-21k has 21,843).
MAX_CLASSES = 100_000
#: No tensor of a checkpoint may declare more elements than this (8 GiB of fp32), whatever its storage.
MAX_TENSOR_ELEMENTS = 2**31


def _tensors(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Tensor]]:
    if isinstance(obj, Tensor):
        yield prefix or "<tensor>", obj
    elif depth < 6 and isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key), depth + 1)
    elif depth < 6 and isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}.{i}" if prefix else str(i), depth + 1)


def check_tensor_bounds(checkpoint: Any, path: Path) -> None:
    """Refuse a checkpoint whose tensors declare more memory than the file holds, before anything is built.

    ``weights_only=True`` blocks code, not allocation: a zero-stride tensor of shape (10**12, 2048) is a few bytes
    on disk and would make the model build (and copy into) an 8 PB head. Every tensor must be backed by its own
    bytes (elements x element size <= its storage), stay under :data:`MAX_TENSOR_ELEMENTS`, and all storages
    together must fit in the file.
    """
    file_size, seen, stored = path.stat().st_size, set(), 0
    for name, tensor in _tensors(checkpoint):
        if tensor.layout != torch.strided:
            raise WeightsError(f"{path}: tensor {name} is {tensor.layout}; only dense tensors are accepted")
        shape = tuple(tensor.shape)
        storage = tensor.untyped_storage()
        needed = tensor.numel() * tensor.element_size()
        if tensor.numel() > MAX_TENSOR_ELEMENTS or needed > storage.nbytes():
            raise WeightsError(
                f"{path}: tensor {name} declares shape {shape} ({needed:,} bytes) but the file holds only "
                f"{storage.nbytes():,} bytes for it; refusing a checkpoint that would demand that much memory"
            )
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            stored += storage.nbytes()
    if stored > file_size:
        raise WeightsError(f"{path}: its tensors claim {stored:,} bytes, more than the file's {file_size:,}; corrupt")


def check_state_dict(state_dict: Mapping[str, Tensor]) -> None:
    """A usable classifier: a head of 1..:data:`MAX_CLASSES` classes and finite values only (NaN or inf weights
    make every score NaN: a damaged file or a diverged training run)."""
    for key, value in state_dict.items():
        if key.endswith("fc.weight") and value.dim() == 2 and not 1 <= value.shape[0] <= MAX_CLASSES:
            raise WeightsError(
                f"the checkpoint's classifier {key} has {value.shape[0]} classes; a head needs 1 to {MAX_CLASSES:,}"
            )
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise WeightsError(
                f"the checkpoint's tensor {key} holds NaN or infinite values: its weights are damaged (a diverged "
                f"training run?) and would make every prediction NaN"
            )


def extract_state_dict(checkpoint: Any, *, use_ema: bool = False) -> dict[str, Tensor]:
    """Pick the model weights out of a flat state_dict or a training checkpoint."""
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(f"not a checkpoint: expected a dict of tensors, found {type(checkpoint).__name__}")
    if use_ema:
        for key in ("state_dict_ema", "model_ema", "ema"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
        else:
            raise WeightsError("the checkpoint holds no EMA weights (no 'state_dict_ema' entry)")
    else:
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    state_dict = {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if not state_dict:
        raise WeightsError("not a checkpoint: no tensors found in it")
    check_state_dict(state_dict)
    return state_dict


_PREFIXES = ("module.", "_orig_mod.", "model.")
_NVIDIA_STAGE = re.compile(r"^layers\.(\d)\.")


def remap_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Bring any known key naming to torchvision's; reshape SE 1x1-conv weights to Linear when ``model`` wants."""
    expected = model.state_dict() if model is not None else {}
    remapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix) and key not in expected:
                    key, changed = key[len(prefix) :], True
        key = _NVIDIA_STAGE.sub(lambda m: f"layer{int(m.group(1)) + 1}.", key)
        target = expected.get(key)
        if target is not None and value.dim() == 4 and target.dim() == 2 and value.shape[2:] == (1, 1):
            value = value.flatten(1)
        remapped[key] = value
    return remapped


def _summarise(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def load_state_dict_into(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Strict load, except that a classifier of another size is dropped and re-initialised (fine-tuning)."""
    state_dict = remap_state_dict(state_dict, model)
    expected = model.state_dict()
    head = {k for k in ("fc.weight", "fc.bias") if k in state_dict and k in expected}
    if head and any(state_dict[k].shape != expected[k].shape for k in head):
        checkpoint_classes = state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else "?"
        state_dict = {k: v for k, v in state_dict.items() if k not in head}
        logger.warning(
            "checkpoint head has %s classes, model has %d: loaded every layer except 'fc', which is re-initialised",
            checkpoint_classes,
            expected["fc.weight"].shape[0],
        )
        strict_keys = set(expected) - head
    else:
        head = set()
        strict_keys = set(expected)
    missing = sorted(strict_keys - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(state_dict) & set(expected) if state_dict[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_summarise(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_summarise(unexpected)}")
        if wrong_shape:
            shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong_shape]
            parts.append(f"{len(wrong_shape)} shape mismatches: {_summarise(shapes, 2)}")
        arch = getattr(model, "arch_name", type(model).__name__)
        raise WeightsError(f"checkpoint does not match {arch} ({'; '.join(parts)}); is it for another architecture?")
    model.load_state_dict(state_dict, strict=not head)
    return model


def load_checkpoint_into(
    model: nn.Module, source: str | os.PathLike[str], *, use_ema: bool = False, progress: bool = True
) -> nn.Module:
    """Read ``source`` (path or URL), extract, remap and load it into ``model``. The single loader."""
    return load_state_dict_into(model, extract_state_dict(read_checkpoint(source, progress=progress), use_ema=use_ema))
