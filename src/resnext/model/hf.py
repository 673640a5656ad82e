"""Weights that travel: safetensors files, timm's Hugging Face Hub folder layout, and ``hf-hub:`` sources.

Three ways out of ``resnext export-weights`` besides the ``.pth`` pickle, and the same three ways back in through
:func:`resnext.model.weights.read_checkpoint` (so ``--weights``, ``load_source``, ``create_model`` and the hub entry
points all accept them):

* ``OUT.safetensors``: the tensors, with the architecture, class names, image size and preprocessing as strings in
  the file's ``__metadata__`` header. Read with the ``safetensors`` library only: no pickle is involved, and the
  library refuses headers whose offsets overlap, leave gaps, or declare more bytes than the file holds.
* a folder in timm's Hub layout: ``model.safetensors`` + ``config.json`` (``architecture``, ``num_classes``,
  ``num_features``, ``label_names``, ``pretrained_cfg`` with input size, crop, interpolation, mean/std) + a model
  card ``README.md``. ``timm.create_model("local-dir:DIR", pretrained=True)`` loads it for the architectures in
  :data:`TIMM_ARCHS`; folders written by timm's ``save_for_hf``/``push_to_hf_hub`` for them load here too.
* ``hf-hub:owner/name[@revision]``: such a folder on the Hugging Face Hub, fetched by :mod:`resnext.model.hf_hub`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import ResnextError, WeightsError, first_line
from ..labels import imagenet_categories, imagenet_wnids
from ..transforms import EvalPreset
from ..util import TMP_PREFIX, atomic_open, atomic_path, sweep_stale_temporaries

logger = logging.getLogger("resnext")

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
#: weights files of a Hub folder, in the order they are looked for (timm's legacy pickle last; read weights_only)
FOLDER_WEIGHTS = (WEIGHTS_FILE, "pytorch_model.bin")

#: Our architectures that timm builds with the same tensor names and the same computation: our name ->
#: (timm's ``architecture``, timm's ``model_args``). Both are torchvision-layout ResNet v1.5 (stride on the 3x3).
#: se_resnext101_32x4d is not here: NVIDIA's SE unit has a fixed 16-unit squeeze (timm's has C/16, ``se.fc1``).
TIMM_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet50": ("resnet50", {}),
    "resnext101_32x4d": ("resnext101_32x4d", {}),
    "resnext_test": ("resnext50_32x4d", {"layers": [1, 1, 1, 1]}),
}
_NEUTRAL_ARGS = {"in_chans": 3, "global_pool": "avg"}
#: architectures with a torch.hub entry point ``nvidia_<arch>`` in hubconf.py
_HUB_ENTRY_ARCHS = ("resnet50", "resnext101_32x4d", "se_resnext101_32x4d")
#: the safetensors header is at most this long (the format's own limit)
_MAX_HEADER = 100_000_000


# ---------------------------------------------------------------------------------------------------------------
# What a weights file says about itself


def describe_weights(arch: str, classes: list[str] | None, transforms: EvalPreset, num_classes: int) -> dict[str, Any]:
    """The metadata every export carries (``.pth`` keys, safetensors header, and the reading side's view):
    architecture, class names (ImageNet wnids for a 1000-class head without names), image size, preprocessing."""
    if classes is None and num_classes == 1000:
        classes = imagenet_wnids()
    return {
        "arch": arch,
        "classes": classes,
        "image_size": transforms.crop_size,
        "preprocessing": transforms.config(),
    }


def _metadata_from_strings(header: Mapping[str, str]) -> dict[str, Any]:
    """Decode what :func:`save_safetensors` wrote; malformed values are dropped (the reader checks types)."""
    found: dict[str, Any] = {}
    if isinstance(header.get("arch"), str):
        found["arch"] = header["arch"]
    for key in ("classes", "image_size", "preprocessing"):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            found[key] = json.loads(header[key])
    return found


# ---------------------------------------------------------------------------------------------------------------
# safetensors files


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file (an 8-byte header length, then ``{``); a torch zip starts
    with ``PK`` and a legacy pickle with ``0x80``, so the name does not matter."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= _MAX_HEADER


def read_safetensors(path: Path, *, max_elements: int | None = None) -> dict[str, Any]:
    """``{"state_dict": tensors, **metadata}`` from a safetensors file, without pickle. A header the library
    refuses (overlapping or out-of-file offsets, shapes that do not match their bytes, a truncated file) is a
    one-line :class:`WeightsError`, and so is a tensor declaring more than ``max_elements``, before it is read."""
    from safetensors import safe_open

    tensors: dict[str, Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            for name in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                shape = f.get_slice(name).get_shape()
                if max_elements is not None and math.prod(shape) > max_elements:
                    raise WeightsError(f"{path}: tensor {name} declares shape {tuple(shape)}, over the bound")
                tensors[name] = f.get_tensor(name)
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the Rust library raises its own error type for every bad header
        raise WeightsError(
            f"{path} is not a readable safetensors file (truncated, corrupt or hostile): {first_line(exc, 160)}"
        ) from exc
    if not tensors:
        raise WeightsError(f"{path} holds no tensors")
    return {"state_dict": tensors, **_metadata_from_strings(header)}


def save_safetensors(state_dict: Mapping[str, Tensor], path: Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``state_dict`` with ``metadata`` (JSON strings in the header) atomically."""
    from safetensors.torch import save

    header = {"format": "pt", "library": "resnext"}
    header.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items() if v is not None})
    data = save({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, metadata=header)
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Hub folders (timm's layout)


def timm_config(state_dict: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``config.json`` in timm's Hub layout for weights described by :func:`describe_weights`."""
    arch, preprocessing, classes = metadata["arch"], metadata["preprocessing"], metadata.get("classes")
    num_classes, num_features = (int(n) for n in state_dict["fc.weight"].shape)
    architecture, model_args = TIMM_ARCHS.get(arch, (arch, {}))
    crop, resize = preprocessing["crop_size"], preprocessing["resize_size"]
    config: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": num_features,
        "global_pool": "avg",
    }
    if model_args:
        config["model_args"] = model_args
    if classes:
        config["label_names"] = classes
        if classes == imagenet_wnids():
            config["label_descriptions"] = dict(zip(classes, imagenet_categories()))
    config["pretrained_cfg"] = {
        "input_size": [3, crop, crop],
        "fixed_input_size": False,
        "interpolation": preprocessing["interpolation"],
        "crop_pct": crop / resize,
        "crop_mode": "center",
        "mean": preprocessing["mean"],
        "std": preprocessing["std"],
        "num_classes": num_classes,
        "pool_size": [-(-crop // 32)] * 2,
        "first_conv": "conv1",
        "classifier": "fc",
    }
    return config


def metadata_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a timm ``config.json`` (ours or timm's own ``save_for_hf``) says in our terms: arch, classes, size,
    preprocessing. Values of the wrong type are left out; :func:`resnext.model.sources.checkpoint_metadata` checks
    them."""
    found: dict[str, Any] = {}
    architecture = config.get("architecture")
    model_args = config.get("model_args") or {}
    if isinstance(architecture, str) and isinstance(model_args, Mapping):
        found["arch"] = _our_arch(architecture, model_args)
    names = config.get("label_names")
    if isinstance(names, list):
        found["classes"] = names
    cfg = config.get("pretrained_cfg")
    if isinstance(cfg, Mapping):
        size, crop_pct = cfg.get("input_size"), cfg.get("crop_pct", 0.875)
        if isinstance(size, list) and len(size) == 3 and isinstance(size[-1], int) and isinstance(crop_pct, float):
            found["image_size"] = size[-1]
            if 0.1 <= crop_pct <= 1:
                found["preprocessing"] = {
                    "crop_size": size[-1],
                    "resize_size": round(size[-1] / crop_pct),
                    "interpolation": cfg.get("interpolation", "bilinear"),
                    "mean": cfg.get("mean"),
                    "std": cfg.get("std"),
                }
    return found


def _our_arch(architecture: str, model_args: Mapping[str, Any]) -> str:
    """Our name for timm's ``architecture`` built with ``model_args``; timm's own name when none matches (the
    reader then goes by the tensors). timm's ``save_for_hf`` also records arguments that do not change the
    tensors' layout (``num_classes`` is the head's size, ``in_chans`` 3, ``global_pool`` avg)."""
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in model_args.items() if k != "num_classes"}
    for ours, (name, wanted) in TIMM_ARCHS.items():
        rest = {k: v for k, v in args.items() if k not in wanted}
        if (
            name == architecture
            and all(args.get(k) == v for k, v in wanted.items())
            and all(_NEUTRAL_ARGS.get(k, ...) == v for k, v in rest.items())
        ):
            return ours
    return architecture


def folder_files(folder: Path) -> tuple[Path, dict[str, Any]]:
    """(the weights file of a Hub folder, what its ``config.json`` says, or ``{}`` without one)."""
    weights = next((folder / name for name in FOLDER_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise WeightsError(
            f"{folder} is a folder without {' or '.join(FOLDER_WEIGHTS)}; give a weights file, or a folder "
            f"written by 'resnext export-weights --format hf' or timm's save_for_hf"
        )
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        return weights, {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"{config_path} is not a readable JSON file: {exc}") from exc
    if not isinstance(config, Mapping):
        raise WeightsError(f"{config_path} is not a timm config (a JSON object)")
    return weights, metadata_from_config(config)


def model_card(metadata: Mapping[str, Any], published: Mapping[str, Any] | None, name: str) -> str:
    """The Hub model card (``README.md``): YAML front matter the Hub indexes, then how to load the weights."""
    arch = metadata["arch"]
    timm_ok = arch in TIMM_ARCHS
    imagenet = metadata.get("classes") == imagenet_wnids()
    license_text = str((published or {}).get("license", ""))
    metrics = (published or {}).get("metrics") or {}
    front = ["---"]
    if license_text.lower().startswith("apache-2.0"):
        front.append("license: apache-2.0")
    front += [f"library_name: {'timm' if timm_ok else 'resnext'}", "pipeline_tag: image-classification", "tags:"]
    front += [f"- {tag}" for tag in ("image-classification", "resnext", *(("timm",) if timm_ok else ()))]
    if imagenet:
        front += ["datasets:", "- imagenet-1k"]
    if metrics:
        front += ["metrics:", "- accuracy"]
    front.append("---")
    prep = metadata["preprocessing"]
    lines = [
        f"# {name}",
        "",
        f"`{arch}` weights exported by [resnext](https://github.com/NVIDIA/DeepLearningExamples) "
        f"(`resnext export-weights --format hf`).",
        "",
        f"- classes: {len(metadata.get('classes') or []) or 'see config.json'}"
        + (" (ImageNet-1k)" if imagenet else ""),
        f"- input: {prep['crop_size']} px; resize the shorter side to {prep['resize_size']} ({prep['interpolation']}), "
        f"center crop, mean {prep['mean']}, std {prep['std']}",
    ]
    if license_text:
        lines.append(f"- licence: {license_text}")
    if metrics:
        note = (published or {}).get("metrics_note", "")
        lines.append(f"- ImageNet-1k top-1 {metrics['top1']}%, top-5 {metrics['top5']}% ({note})")
    repo = f"<owner>/{name}"
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"resnext classify photo.jpg --weights hf-hub:{repo}",
        "```",
        "",
        "```python",
        "from resnext import load_source",
        f'model = load_source("hf-hub:{repo}").model',
    ]
    if timm_ok:
        lines += ["", "import timm", f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()']
    else:
        lines += ["", f"# timm cannot build {arch} (NVIDIA's SE unit differs from timm's): load it with resnext"]
    if arch in _HUB_ENTRY_ARCHS:
        lines += [
            "",
            "import torch",
            f'model = torch.hub.load("<path or owner/repo of resnext>", "nvidia_{arch}", '
            f'pretrained_from_file="hf-hub:{repo}")',
        ]
    lines += [
        "```",
        "",
        f"Published with `hf upload {repo} .`",
        "",
    ]
    return "\n".join(front + lines)


def save_hf_folder(
    state_dict: Mapping[str, Tensor],
    folder: Path,
    metadata: Mapping[str, Any],
    *,
    published: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``folder``.

    A new folder is staged beside it and renamed into place in one step; an existing one (``overwrite``) gets
    each of the three files replaced atomically, and any other file in it (``.gitattributes``, a ``.git`` of a
    clone) is left alone.
    """
    if metadata["arch"] not in TIMM_ARCHS:
        logger.warning(
            "%s: timm has no architecture with these tensors (timm can load %s); the folder loads with resnext "
            "(--weights DIR, hf-hub:) but timm.create_model cannot build it",
            metadata["arch"],
            ", ".join(TIMM_ARCHS),
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(folder.parent)
    stage = folder.parent / f"{TMP_PREFIX}{os.getpid()}-{folder.name}"
    try:
        stage.mkdir()
        save_safetensors(state_dict, stage / WEIGHTS_FILE, metadata)
        with atomic_open(stage / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(timm_config(state_dict, metadata), f, indent=2)
        with atomic_open(stage / CARD_FILE, "w", encoding="utf-8") as f:
            f.write(model_card(metadata, published, folder.name))
        if folder.exists() and overwrite:
            for name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE):
                with atomic_path(folder / name) as tmp:
                    os.replace(stage / name, tmp)
        else:
            os.rename(stage, folder)
    except OSError as exc:
        raise ResnextError(f"cannot write {folder}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return folder
