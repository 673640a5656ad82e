"""``--backend auto`` (the default): the fastest exact runtime installed, exported once into a cache and reused.

Rule, from the measurements in ``benchmarks/RESULTS.md`` (batch 16, ResNeXt101-32x4d, 2 cores, same run):

* On a CPU, fp32 (the default precision): the first installed runtime of :data:`EXACT_ORDER`, i.e. the exact
  runtime that was fastest at batch 16 on the machines measured; eager PyTorch when neither is installed.
* ``precision="bf16"`` or ``"int8"`` opt into approximate runtimes (:data:`APPROXIMATE_ORDER`), calibrated on
  ``calibration_dir`` or the bundled sample photos; their top-1 agreement with eager fp32 is logged and kept in
  the cache entry's manifest. Without any runtime, bf16 runs in eager PyTorch under autocast.
* On a GPU (``device`` resolving to CUDA), and for fp16: eager PyTorch (TensorRT stays an explicit choice).
* ``$RESNEXT_AUTO`` pins the choice: ``torch`` (never export) or ``onnxruntime``/``openvino``.

The exported file lives in :func:`cache_dir` under a key made of the weights' sha256 (over the tensors, so random,
in-memory and file weights are all keyed by content), the architecture, image size, precision, runtime and its
version, and the package version (plus the calibration images for int8). It is written by
:func:`resnext.export.export_model` (so it passed the export's parity check against eager fp32: logits within
1e-4 x max |logit| for fp32) into a staging folder that is renamed into place only when complete, together with a
manifest holding the sha256 of each file. A later run checks those hashes before loading: a damaged or
incomplete entry is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ResnextError
from .runtimes import RUNTIMES, Backend, Runtime, TorchBackend, create_backend
from .util import TMP_PREFIX, resolve_device, sweep_stale_temporaries

logger = logging.getLogger(__name__)

#: exact runtimes, preferred first (see the module docstring and benchmarks/RESULTS.md for the measurements)
EXACT_ORDER = ("onnxruntime", "openvino")
#: approximate precision -> runtimes that run it, preferred first
APPROXIMATE_ORDER = {"bf16": ("openvino",), "int8": ("openvino", "onnxruntime")}
CACHE_ENV = "RESNEXT_CACHE"
#: pins what auto picks: "torch" (no export; what the test suite uses outside the auto tests) or a runtime name
PIN_ENV = "RESNEXT_AUTO"
MANIFEST = "manifest.json"
FILE_NAMES = {"onnxruntime": "model.onnx", "openvino": "model.xml"}


@dataclass
class AutoChoice:
    """What ``--backend auto`` chose and where the file came from (``backend.auto`` of an auto backend)."""

    runtime: str
    precision: str
    path: str | None = None  # the cached model file; None for eager PyTorch
    reused: bool = False  # True: loaded from the cache; False: exported in this call (or torch)
    reason: str = ""
    parity: list[str] = field(default_factory=list)
    agreement: float | None = None  # top-1 agreement with eager fp32 on the check images (approximate runs)

    def line(self) -> str:
        where = "" if self.path is None else f" ({'cached' if self.reused else 'exported to'} {self.path})"
        agreement = "" if self.agreement is None else f", top-1 agreement with eager fp32 {100 * self.agreement:.1f}%"
        return f"backend auto: {self.runtime} {self.precision}{where}{agreement}; {self.reason}"


def cache_dir() -> Path:
    """``$RESNEXT_CACHE``, else ``$TORCH_HOME/resnext/auto`` (beside torch.hub's ``hub`` folder)."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path(torch.hub.get_dir()).parent / "resnext" / "auto"


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes and bytes, in name order): the weights' identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def runtime_version(runtime: Runtime) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(runtime.module or "torch")
    except PackageNotFoundError:
        return "unknown"


def choose_runtime(precision: str, device: torch.device) -> tuple[Runtime | None, str]:
    """The runtime auto uses for ``precision`` on ``device`` (None: eager PyTorch), and why."""
    if device.type != "cpu":
        return None, f"{device.type} device: eager PyTorch (pass --backend tensorrt for TensorRT)"
    if precision == "fp16":
        return None, "fp16 runs in eager PyTorch"
    order = EXACT_ORDER if precision == "fp32" else APPROXIMATE_ORDER.get(precision, ())
    pinned = os.environ.get(PIN_ENV, "").strip()
    if pinned == "torch" and precision != "int8":
        return None, f"{PIN_ENV}=torch: eager PyTorch"
    if pinned:
        if pinned not in order:
            raise ResnextError(f"{PIN_ENV}={pinned!r} cannot run {precision}; choose one of torch, {', '.join(order)}")
        order = (pinned,)
    for name in order:
        if RUNTIMES[name].installed():
            kind = "fastest exact runtime installed" if precision == "fp32" else f"{precision} runtime"
            return RUNTIMES[name], f"{kind} (order: {', '.join(order)})"
    if precision == "int8":
        raise ResnextError("--precision int8 needs OpenVINO or ONNX Runtime: pip install 'resnext[openvino]'")
    return None, f"no {' or '.join(order)} installed: eager PyTorch (pip install 'resnext[onnx]' for speed)"


def _calibration_digest(calibration_dir: str | None) -> str:
    """Identity of the calibration images: names, sizes and modification times."""
    from .images import find_images, sample_images

    paths = find_images([calibration_dir]) if calibration_dir else sample_images()
    digest = hashlib.sha256()
    for p in sorted(paths):
        stat = Path(p).stat()
        digest.update(f"{Path(p).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cache_key(
    model: torch.nn.Module,
    *,
    arch: str,
    image_size: int,
    runtime: Runtime,
    precision: str,
    calibration_dir: str | None = None,
) -> str:
    from . import __version__

    parts = [
        arch,
        f"{image_size}px",
        precision,
        f"{runtime.name}-{runtime_version(runtime)}",
        f"resnext-{__version__}",
        weights_sha256(model)[:32],
    ]
    if precision == "int8":
        parts.append("calib-" + _calibration_digest(calibration_dir))
    return "-".join(parts).replace("/", "_").replace("+", "_")


# ---------------------------------------------------------------------------------------------------------------
# The cache entry


def _valid_entry(entry: Path) -> dict[str, Any] | None:
    """The manifest of a complete, undamaged entry (every file present with its recorded sha256), else None."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = manifest["files"]
        if not files or manifest.get("model_file") not in files:
            return None
        for name, sha in files.items():
            if file_sha256(entry / name) != sha:
                logger.warning("backend auto: %s in the cache is damaged (sha256 differs): rebuilding", name)
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build_entry(
    entry: Path, source: Any, runtime: Runtime, precision: str, calibration_dir: str | None, threads: int | None
) -> dict[str, Any]:
    """Export into a staging folder, write the manifest, then rename the folder into place."""
    from .export import ExportConfig, export_model
    from .images import sample_images

    entry.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(entry.parent)  # staging folders of builds whose process died during an export
    stage = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f"{TMP_PREFIX}{os.getpid()}-"))
    try:
        calibration = calibration_dir or (str(Path(sample_images()[0]).parent) if precision == "int8" else None)
        config = ExportConfig(
            runtime.export_format or runtime.name,
            str(stage / FILE_NAMES[runtime.name]),
            arch=source.arch,
            precision=precision,
            image_size=source.image_size,
            calibration_dir=calibration,
            eval_dir=calibration_dir,
            threads=threads,
        )
        started = time.perf_counter()
        logger.info(
            "backend auto: exporting %s to %s %s once (cached for later runs) ...", source.arch, runtime.name, precision
        )
        result = export_model(config, source)
        real = result.parity[-1]
        manifest = {
            "model_file": FILE_NAMES[runtime.name],
            "runtime": runtime.name,
            "precision": precision,
            "files": {Path(f).name: file_sha256(Path(f)) for f in result.files},
            "parity": [p.line() for p in result.parity],
            "agreement": real.top1_agreement,
            "accuracy": result.accuracy,
            "seconds": round(time.perf_counter() - started, 1),
            "arch": source.arch,
            "image_size": source.image_size,
            "weights": source.weights,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if entry.exists():
            finished = _valid_entry(entry)
            if finished is not None:  # another process finished the same entry meanwhile: keep theirs
                return finished
            shutil.rmtree(entry, ignore_errors=True)  # damaged: replaced as a whole
        try:
            os.rename(stage, entry)
        except OSError:  # another process finished the same entry first: use theirs if it is sound
            if _valid_entry(entry) is None:
                raise
        return manifest
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def auto_backend(
    model: torch.nn.Module | None = None,
    *,
    source: Any = None,
    device: str = "auto",
    precision: str | None = None,
    channels_last: bool = False,
    calibration_dir: str | None = None,
    threads: int | None = None,
    **_: Any,
) -> Backend:
    """The backend ``--backend auto`` runs for ``source`` (a :class:`resnext.sources.ModelSource`; or ``model``,
    wrapped at 224 px). The result has an ``auto`` attribute (:class:`AutoChoice`)."""
    from .sources import source_from_model

    if source is None:
        if model is None:
            raise ResnextError("backend auto needs a model (weights) or --model-file")
        source = source_from_model(model)
    precision = precision or "fp32"
    dev = resolve_device(device)
    runtime, reason = choose_runtime(precision, dev)
    if runtime is None:
        backend: Any = TorchBackend(source.model, device=str(dev), precision=precision, channels_last=channels_last)
        backend.auto = AutoChoice("torch", precision, reason=reason)
        logger.debug(backend.auto.line())
        return backend
    key = cache_key(
        source.model,
        arch=source.arch,
        image_size=source.image_size,
        runtime=runtime,
        precision=precision,
        calibration_dir=calibration_dir,
    )
    entry = cache_dir() / key
    manifest, reused = _valid_entry(entry), True
    if manifest is None:
        manifest, reused = _build_entry(entry, source, runtime, precision, calibration_dir, threads), False
    path = entry / manifest["model_file"]
    backend = create_backend(runtime.name, model_file=str(path), precision=precision, threads=threads)
    approximate = precision != "fp32" or not runtime.exact
    backend.auto = AutoChoice(
        runtime.name,
        precision,
        str(path),
        reused,
        reason,
        manifest.get("parity", []),
        manifest.get("agreement") if approximate else None,
    )
    (logger.info if approximate or not reused else logger.debug)(backend.auto.line())
    return backend
