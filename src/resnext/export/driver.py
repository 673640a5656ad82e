"""Export a model for deployment, and prove each exported file computes what PyTorch computes.

    resnext export --format onnx --output resnext101.onnx                   # fp32, dynamic batch 1..256, opset 18
    resnext export --format onnx --precision int8 --calibration-dir calib/ --output resnext101-int8.onnx
    resnext export --format openvino --output resnext101.xml                # IR, fp32 weights; --precision bf16|int8
    resnext export --format export --output resnext101.pt2                  # torch.export program
    resnext export --format torchscript --output resnext101.ts              # traced + frozen, for Triton libtorch
    resnext export --format tensorrt --output resnext101.engine             # GPU only: fp16 engine from ONNX

Every export reloads the written file in its runtime (:mod:`resnext.runtime.backends`) and compares it with the eager
fp32 PyTorch model on a random batch of 7, a batch of 1 and the packaged sample photos (plus the calibration /
evaluation folder for int8), all preprocessed by :func:`resnext.transforms.eval_preset`. fp32 formats must agree
to ``tolerance * max(1, max |logit|)``; reduced precisions report top-1 agreement (and accuracy on a labelled
folder) and fail only below ``min_agreement`` when one is given.

Formats and precisions:

- ``onnx``: fp32 (weights inline; files whose weights exceed 1.8 GiB go to an external ``.data`` file because of
  protobuf's 2 GiB limit) and int8 (ONNX Runtime static post-training quantization, QDQ format, per-channel
  int8 weights, uint8 activations, MinMax calibration on ``--calibration-dir``).
- ``openvino``: IR with fp32 weights; fp32 and bf16 are a run-time precision hint that is always set
  explicitly; int8 is the quantized ONNX graph converted to IR.
- ``export`` (``.pt2``) and ``torchscript``: fp32. TorchScript is deprecated upstream; it is kept because Triton's
  ``pytorch_libtorch`` backend loads TorchScript files.
- ``tensorrt``: fp16 (or fp32) engine built from the ONNX export with one optimisation profile over the batch range.

``--weights random`` exports a randomly initialised model (smoke tests, speed measurements).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ResnextError, first_line
from ..images import load_image, sample_images
from ..model.sources import ModelSource, load_source, source_from_model
from ..options import check_options
from ..runtime.backends import create_backend, require_tensorrt
from ..runtime.exported import FEATURES_NAME
from ..runtime.table import EXPORT_FORMATS, INPUT_NAME, OUTPUT_NAME
from ..transforms import eval_preset
from ..util import check_writable
from .config import ExportConfig, ExportResult, Parity
from .writers import (
    WithFeatures,
    quantize_onnx,
    write_export,
    write_onnx,
    write_openvino,
    write_tensorrt,
    write_torchscript,
)

logger = logging.getLogger(__name__)

#: format -> supported precisions (the first is the default), derived from the runtime registry.
FORMATS: dict[str, tuple[str, ...]] = {name: r.precisions for name, r in EXPORT_FORMATS.items()}
# ---------------------------------------------------------------------------------------------------------------
# Inputs


def preprocess(paths: Sequence[str], image_size: int) -> Tensor:
    """Decode and preprocess with the package's one eval preset."""
    transforms = eval_preset(image_size)
    return torch.stack([transforms(load_image(p)) for p in paths])


def labelled_images(root: str | Path, num_classes: int) -> tuple[list[str], list[int] | None, str | None]:
    """Images under ``root`` and, when it is an ImageFolder tree the model's classes fit, their class indices
    (label order from :func:`resnext.images.match_classes`, the rule evaluation uses)."""
    from ..images import find_classes, match_classes, walk_images

    root = Path(root)
    if not root.is_dir():
        raise ResnextError(f"image folder not found: {root}")
    try:
        folders = find_classes(root)
    except ResnextError:
        return (
            walk_images(root),
            None,
            "the folder has no class sub-folders, so only agreement (not accuracy) is reported",
        )
    try:
        index = {name: i for i, name in enumerate(match_classes(root, num_classes, None))}
    except ResnextError:
        note = f"{len(folders)} class folders do not match the model's {num_classes} classes"
        return walk_images(root), None, note + ", so only agreement (not accuracy) is reported"
    paths, labels = [], []
    for name in folders:
        found = walk_images(root / name)
        paths += found
        labels += [index[name]] * len(found)
    return paths, labels, None


def _spread(paths: list[str], labels: list[int] | None, limit: int) -> tuple[list[str], list[int] | None]:
    """At most ``limit`` items, evenly spaced so every class folder is represented."""
    if len(paths) <= limit:
        return paths, labels
    keep = [round(i * (len(paths) - 1) / (limit - 1)) for i in range(limit)] if limit > 1 else [0]
    return [paths[i] for i in keep], ([labels[i] for i in keep] if labels is not None else None)


def _batches(x: Tensor, size: int) -> Iterator[Tensor]:
    for i in range(0, x.shape[0], size):
        yield x[i : i + size]


# ---------------------------------------------------------------------------------------------------------------
# Model


def _metadata(config: ExportConfig, source: ModelSource, precision: str) -> dict[str, Any]:
    """What every exported file carries, so it runs with its own class names and input size (no checkpoint)."""
    return {
        **source.describe(),
        "format": config.format,
        "precision": precision,
        "image_size": config.image_size,
        "batch_range": list(config.batch_range),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "outputs": [OUTPUT_NAME, FEATURES_NAME] if config.features else [OUTPUT_NAME],
        # the source's own preset (a timm folder's bicubic, crop_pct 0.95), unless the export is made at another size
        "preprocessing": (
            source.transforms if source.transforms.crop_size == config.size else eval_preset(config.size)
        ).describe(),
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------------------------------------------------------
# Parity


@torch.inference_mode()
def _logits(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(b).float().cpu() for b in _batches(x, batch_size)])


def compare(reference: Tensor, candidate: Tensor, inputs: str, limit_factor: float | None) -> Parity:
    """Max abs diff and top-1 agreement; ``limit_factor`` scales the fp32 tolerance by the logits' magnitude."""
    diff = float((reference - candidate).abs().max())
    limit = None if limit_factor is None else limit_factor * max(1.0, float(reference.abs().max()))
    agreement = float((reference.argmax(-1) == candidate.argmax(-1)).float().mean())
    return Parity(inputs, int(reference.shape[0]), diff, limit, agreement)


def accuracy(logits: Tensor, labels: Sequence[int]) -> float:
    return float((logits.argmax(-1) == torch.as_tensor(labels)).float().mean())


def write_model(
    model: torch.nn.Module,
    config: ExportConfig,
    precision: str,
    path: Path,
    metadata: dict[str, Any],
    *,
    workdir: Path,
    calibration: Tensor | None = None,
    cache: dict[str, Path] | None = None,
) -> list[Path]:
    """Write ``model`` as ``config.format`` at ``precision`` to ``path``; returns the files written there.

    int8 ONNX, OpenVINO and TensorRT are built from an fp32 (and for int8 a quantized) ONNX intermediate in
    ``workdir``. ``cache`` lets several calls share those intermediates (the benchmark writes each once);
    asking for an intermediate's own path returns it without writing again.
    """
    cache = {} if cache is None else cache
    fp32_meta = {**metadata, "precision": "fp32"}

    def onnx_fp32() -> Path:
        if "onnx" not in cache:
            cache["onnx"] = workdir / "model.onnx"
            write_onnx(model, cache["onnx"], config, fp32_meta)
        return cache["onnx"]

    def quantized(target: Path) -> list[Path]:
        if calibration is None:
            raise ResnextError("--precision int8 needs --calibration-dir DIR (a folder of representative images)")
        cache.setdefault("onnx-int8", target)
        return quantize_onnx(onnx_fp32(), target, calibration, metadata)

    def onnx_int8() -> Path:
        if "onnx-int8" not in cache:
            quantized(workdir / "model-int8.onnx")
        return cache["onnx-int8"]

    if config.format == "onnx":
        if path in (cache.get("onnx"), cache.get("onnx-int8")):
            return [path]
        if precision == "int8":
            return quantized(path)
        files = write_onnx(model, path, config, fp32_meta)
        cache.setdefault("onnx", path)
        return files
    if config.format == "openvino":
        return write_openvino(onnx_int8() if precision == "int8" else onnx_fp32(), path, metadata)
    if config.format == "tensorrt":
        return write_tensorrt(onnx_fp32(), path, config, precision, metadata)
    if config.format == "export":
        return write_export(model, path, config, metadata)
    return write_torchscript(model, path, config, metadata)


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def export_model(config: ExportConfig, model: ModelSource | torch.nn.Module | None = None) -> ExportResult:
    """Write ``config.output`` in ``config.format``, reload it and check it against the PyTorch fp32 model
    (``model``, else the source ``config.weights`` resolves to)."""
    precision = _check_config(config)
    path = check_writable(config.output, "--output")  # a folder or a read-only place: one line, before any work
    if model is None:
        source = load_source(config.weights, arch=config.arch)
    elif isinstance(model, ModelSource):
        source = model
    else:
        source = source_from_model(model, arch=config.arch, image_size=config.image_size or 224)
    config.arch = source.arch
    config.image_size = config.image_size or source.image_size
    assert source.model is not None
    model = source.model.eval().float()
    metadata = _metadata(config, source, precision)
    # Inputs for calibration and for the agreement report, loaded before writing anything.
    calibration, eval_paths, eval_labels, notes = _check_images(config, metadata["num_classes"], precision)

    # Everything is written into a staging folder beside the output and moved into place only after the parity
    # check passed: a failed export leaves no file behind, and no half-written file ever has the final name.
    final = path
    stage = _staging_folder(final)
    try:
        path = stage / final.name
        logger.info("writing %s %s (%s, %d px)...", config.format, precision, source.arch, config.image_size)
        exported = WithFeatures(model).eval() if config.features else model
        files = write_model(
            exported, config, precision, path, metadata, workdir=stage / "intermediate", calibration=calibration
        )
        if precision == "int8":
            count = 0 if calibration is None else calibration.shape[0]
            notes.append(f"int8 calibrated on {count} images from {config.calibration_dir}")
        if config.format == "onnx" and precision == "fp32":
            notes.append("weights stored " + ("as external data in " + files[-1].name if len(files) > 1 else "inline"))
        runtime_name = EXPORT_FORMATS[config.format].name
        logger.info("reloading %s in %s and checking it against PyTorch fp32...", final.name, runtime_name)
        runtime = create_backend(runtime_name, model_file=str(path), precision=precision, threads=config.threads)
        images = preprocess(eval_paths, config.size)  # decoded once for both checks
        parity, acc = check_parity(model, runtime, config, precision, images, eval_labels)
        if config.features:
            parity.append(check_features(model, runtime, config, precision, images))
        for f in files:
            os.replace(f, final.parent / f.name)
    except ResnextError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) or _disk_full(final.parent):  # full disk: some writers wrap the OSError
            raise ResnextError(f"cannot write {final}: {_reason(exc, final.parent)}") from exc
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if precision == "bf16" and runtime.precision != "bf16":
        notes.append(f"this CPU has no native bf16: OpenVINO ran {runtime.precision}; bf16 applies on CPUs with it")
    files_written = [str(final.parent / f.name) for f in files]
    return ExportResult(
        config.format, precision, str(final), files_written, metadata, parity=parity, accuracy=acc, notes=notes
    )


def _check_config(config: ExportConfig) -> str:
    """Everything about the request that can be refused before any work; returns the precision to write."""
    if config.format not in FORMATS:
        raise ResnextError(f"unknown export format {config.format!r}; choose one of {', '.join(FORMATS)}")
    precision = config.precision or FORMATS[config.format][0]
    if precision not in FORMATS[config.format]:
        raise ResnextError(
            f"--format {config.format} supports --precision {', '.join(FORMATS[config.format])}, not {precision}"
        )
    if config.format == "tensorrt":
        require_tensorrt()  # fail in one line before any work on machines without a GPU
        if config.features:
            raise ResnextError("a features output is not supported for TensorRT engines yet; export onnx or openvino")
    if precision == "int8" and not config.calibration_dir:
        raise ResnextError("--precision int8 needs --calibration-dir DIR (a folder of representative images)")
    if config.format in ("onnx", "openvino", "tensorrt") and config.opset < 17:
        raise ResnextError(f"ONNX opset {config.opset} is too old: use 17 or newer")
    check_options(config)  # each value alone (as when it was built: it may have been changed since)
    return precision


def calibration_batch(config: ExportConfig, num_classes: int) -> Tensor | None:
    """The int8 calibration images of ``config.calibration_dir``, preprocessed: at most ``calibration_count``,
    spread over the folder (None without a folder)."""
    if not config.calibration_dir:
        return None
    paths, _, _ = labelled_images(config.calibration_dir, num_classes)
    paths, _ = _spread(paths, None, config.calibration_count)
    if not paths:
        raise ResnextError(f"no images found in --calibration-dir {config.calibration_dir}")
    return preprocess(paths, config.size)


def _check_images(
    config: ExportConfig, num_classes: int, precision: str
) -> tuple[Tensor | None, list[str], list[int] | None, list[str]]:
    """Calibration batch (int8), and the images (with labels when the folder has classes) of the agreement report."""
    eval_paths, eval_labels, notes = sample_images(), None, []
    calibration = calibration_batch(config, num_classes)
    if precision != "fp32" and (config.eval_dir or config.calibration_dir):
        paths, eval_labels, note = labelled_images(str(config.eval_dir or config.calibration_dir), num_classes)
        eval_paths, eval_labels = _spread(paths, eval_labels, max(config.calibration_count, 512))
        notes += [note] if note else []
    return calibration, eval_paths, eval_labels, notes


#: Staging folders are ``.resnext-export-<pid>-*``: those of processes that no longer run are removed.
STAGING_PREFIX = ".resnext-export-"


def _staging_folder(final: Path) -> Path:
    """A fresh staging folder beside ``final``, after sweeping the ones a killed export left behind."""
    from ..util import sweep_stale_temporaries

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temporaries(final.parent, prefix=STAGING_PREFIX)
        return Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    except OSError as exc:
        raise ResnextError(f"cannot write {final}: {exc.strerror or exc}") from exc


def _disk_full(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(folder).free < 1 << 20
    return False


def _reason(exc: Exception, folder: Path) -> str:
    if _disk_full(folder):
        return f"no space left on the device holding {folder}"
    return getattr(exc, "strerror", None) or first_line(exc)


def check_features(model: Any, runtime: Any, config: ExportConfig, precision: str, images: Tensor) -> Parity:
    """The exported ``features`` output against ``forward_head(forward_features(x), pre_logits=True)`` on the
    preprocessed ``images``."""
    step = config.batch_range[1]
    with torch.inference_mode():
        reference = _logits(lambda b: model.forward_head(model.forward_features(b), pre_logits=True), images, step)
    result = compare(
        reference,
        _logits(runtime.features, images, step),
        "features of real images",
        config.tolerance if precision == "fp32" else None,
    )
    if result.limit is not None and not result.max_abs_diff <= result.limit:
        raise ResnextError(
            f"{config.format} export's features differ from PyTorch: max abs diff "
            f"{result.max_abs_diff:.3g} exceeds {result.limit:.3g}"
        )
    return result


def check_parity(
    model: torch.nn.Module,
    runtime: Callable[[Tensor], Tensor],
    config: ExportConfig,
    precision: str,
    images: Tensor,
    labels: Sequence[int] | None = None,
) -> tuple[list[Parity], dict[str, float] | None]:
    """Compare ``runtime`` with ``model`` (fp32 eager) on random batches (``config.random_batches``: 7 and 1) and
    on the preprocessed real ``images``.

    Raises :class:`ResnextError` when an fp32 export differs beyond tolerance or a reduced-precision one agrees
    less than ``config.min_agreement``.
    """
    generator = torch.Generator().manual_seed(0)
    size = config.size
    step = config.batch_range[1]
    factor = config.tolerance if precision == "fp32" else None
    results, acc = [], None
    reference_images = _logits(model, images, step)
    candidate_images = _logits(runtime, images, step)
    for batch in config.random_batches:
        x = torch.randn(batch, 3, size, size, generator=generator)
        results.append(compare(_logits(model, x, step), _logits(runtime, x, step), f"random batch of {batch}", factor))
    results.append(compare(reference_images, candidate_images, "real images", factor))
    if labels is not None:
        acc = {"fp32": accuracy(reference_images, labels), precision: accuracy(candidate_images, labels)}
    for p in results:
        if p.limit is not None and not p.max_abs_diff <= p.limit:
            raise ResnextError(
                f"{config.format} export differs from PyTorch on {p.inputs}: max abs diff {p.max_abs_diff:.3g} "
                f"exceeds {p.limit:.3g}"
            )
    real = results[-1]
    if config.min_agreement is not None and real.top1_agreement < config.min_agreement:
        raise ResnextError(
            f"{precision} export agrees with fp32 on top-1 for only {100 * real.top1_agreement:.1f}% of "
            f"{real.count} images (--min-agreement {100 * config.min_agreement:.1f}%)"
        )
    if precision != "fp32" and real.top1_agreement < 0.99:
        logger.warning("%s top-1 agreement with fp32 is %.1f%%", precision, 100 * real.top1_agreement)
    if not math.isfinite(real.max_abs_diff):
        raise ResnextError(f"{config.format} export produced non-finite logits")
    return results, acc
