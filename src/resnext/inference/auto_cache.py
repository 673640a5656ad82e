"""The ``--backend auto`` cache: entries keyed by everything that decides what they compute, proved on every load.

An entry is a folder in :func:`cache_dir` named from its :class:`CacheKey`, holding the exported file(s) and a
manifest with the full key and the sha256 of every file. :func:`read_entry` accepts an entry only when it is a real
folder whose manifest holds exactly the requested key and whose files are plain files with their recorded hashes;
:func:`build_entry` exports into a staging folder and renames it into place under a per-entry lock. The policy that
decides when to export lives in :mod:`resnext.inference.auto`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ResnextError
from ..options import as_precision
from ..runtime.table import Runtime
from ..util import TMP_PREFIX, file_digest, sweep_stale_temporaries

logger = logging.getLogger("resnext.inference.auto")

CACHE_ENV = "RESNEXT_CACHE"
MANIFEST = "manifest.json"
FILE_NAMES = {"onnxruntime": "model.onnx", "openvino": "model.xml"}
TIMINGS = "timings.json"


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


def runtime_version(runtime: Runtime) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(runtime.module or "torch")
    except PackageNotFoundError:
        return "unknown"


def _calibration_digest(calibration_dir: str | None) -> str:
    """Identity of the calibration images: names, sizes and modification times."""
    from ..images import find_images, sample_images

    paths = find_images([calibration_dir]) if calibration_dir else sample_images()
    digest = hashlib.sha256()
    for p in sorted(paths):
        stat = Path(p).stat()
        digest.update(f"{Path(p).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CacheKey:
    """Everything that decides what a cache entry computes; recorded in its manifest, checked on every load."""

    arch: str
    image_size: int
    precision: str
    runtime: str
    runtime_version: str
    resnext_version: str
    torch_version: str
    weights_sha256: str
    #: the file also has a pooled-features output. Off: at 1e-4 of their largest value, a ResNeXt101's features
    #: failed the parity check (2.27e-4 > 2.25e-4), so ``embed`` runs the eager model, as before
    features: bool = False
    calibration: str | None = None  # int8: identity of the calibration images

    @property
    def folder(self) -> str:
        """The entry's folder name: readable, and unique for the key (the hashes of weights and calibration)."""
        parts = [
            self.arch,
            f"{self.image_size}px",
            self.precision,
            f"{self.runtime}-{self.runtime_version}",
            f"resnext-{self.resnext_version}",
            f"torch-{self.torch_version}",
            self.weights_sha256[:32],
        ]
        if self.calibration:
            parts.append("calib-" + self.calibration)
        return "-".join(parts).replace("/", "_").replace("+", "_")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_key(
    model: torch.nn.Module,
    *,
    arch: str,
    image_size: int,
    runtime: Runtime,
    precision: str,
    calibration_dir: str | None = None,
) -> CacheKey:
    from ..version import __version__

    return CacheKey(
        arch=arch,
        image_size=int(image_size),
        precision=precision,
        runtime=runtime.name,
        runtime_version=runtime_version(runtime),
        resnext_version=__version__,
        torch_version=torch.__version__,
        weights_sha256=weights_sha256(model),
        calibration=_calibration_digest(calibration_dir) if precision == "int8" else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# The cache entry


class CacheUnwritable(ResnextError):
    """The cache folder cannot be written (read-only, not a folder, no space): nothing was exported."""


def read_entry(entry: Path, key: CacheKey) -> dict[str, Any] | None:
    """The manifest of the entry at ``entry`` when it is a real folder holding exactly ``key``, complete and
    undamaged (every file a plain file with its recorded sha256); else None, after a warning saying why."""
    if entry.is_symlink():
        logger.warning("backend auto: %s is a symbolic link: not followed, rebuilding the entry", entry)
        return None
    if not entry.exists():
        return None
    if not entry.is_dir():
        logger.warning("backend auto: %s is not a cache folder: replacing it", entry)
        return None
    try:
        manifest_path = entry / MANIFEST
        if manifest_path.is_symlink():
            raise ValueError("a symbolic link")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") != key.as_dict():
            logger.warning("backend auto: %s holds another model or settings: rebuilding it", entry.name)
            return None
        files = manifest["files"]
        if not files or manifest.get("model_file") not in files:
            return None
        for name, sha in files.items():
            path = entry / name
            if Path(name).name != name or path.is_symlink() or file_digest(path) != sha:
                logger.warning("backend auto: %s in the cache is damaged (sha256 differs): rebuilding", name)
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _remove(path: Path) -> None:
    """Whatever occupies a cache entry's name: a link is removed (never what it points to), a folder as a whole."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def _entry_lock(entry: Path) -> Iterator[None]:
    """One process exports ``entry`` at a time; the others wait, then find it built (the lock dies with its
    process, so a killed export never blocks the next)."""
    import fcntl

    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = open(entry.with_name(entry.name + ".lock"), "a")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise CacheUnwritable(f"cannot write the auto cache {entry.parent}: {exc.strerror or exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or its process dies
        yield


def build_entry(
    entry: Path, key: CacheKey, source: Any, runtime: Runtime, calibration_dir: str | None, threads: int | None
) -> tuple[dict[str, Any], bool]:
    """The entry's manifest and whether it was reused: exported into a staging folder that is renamed into place
    with its manifest, unless another process built it while this one waited for the lock."""
    from ..export.driver import ExportConfig, export_model
    from ..images import sample_images

    with _entry_lock(entry):
        finished = read_entry(entry, key)
        if finished is not None:  # another process built it while this one waited
            return finished, True
        sweep_stale_temporaries(entry.parent)  # staging folders of builds whose process died during an export
        try:
            stage = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        except OSError as exc:
            raise CacheUnwritable(f"cannot write the auto cache {entry.parent}: {exc.strerror or exc}") from exc
        try:
            precision = key.precision
            calibration = calibration_dir or (str(Path(sample_images()[0]).parent) if precision == "int8" else None)
            config = ExportConfig(
                runtime.export_format or runtime.name,
                str(stage / FILE_NAMES[runtime.name]),
                arch=source.arch,
                precision=as_precision(precision),
                image_size=source.image_size,
                calibration_dir=calibration,
                eval_dir=calibration_dir,
                threads=threads,
                features=key.features,
                random_batches=(1,),  # with the photos (a batch of 3): batch 1 and a larger batch are both checked
            )
            started = time.perf_counter()
            logger.info(
                "backend auto: exporting %s to %s %s once (cached for later runs) ...",
                source.arch,
                runtime.name,
                precision,
            )
            result = export_model(config, source)
            seconds = time.perf_counter() - started
            real = next(p for p in result.parity if p.inputs == "real images")
            manifest = {
                "key": key.as_dict(),
                "model_file": FILE_NAMES[runtime.name],
                "files": {Path(f).name: file_digest(f) for f in result.files},
                "parity": [p.line() for p in result.parity],
                "agreement": real.top1_agreement,
                "accuracy": result.accuracy,
                "seconds": round(seconds, 1),
                "weights": source.weights,
            }
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=1))
            _remove(entry)  # a damaged entry, another key's, a link or a file: replaced as a whole
            os.rename(stage, entry)
            record_timing(key, export_seconds=seconds)
            return manifest, False
        except OSError as exc:
            raise CacheUnwritable(f"cannot write the auto cache {entry.parent}: {exc.strerror or exc}") from exc
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def timing_name(key: CacheKey) -> str:
    return f"{key.arch}-{key.image_size}px-{key.precision}-{key.runtime}"


def timings() -> dict[str, Any]:
    try:
        data = json.loads((cache_dir() / TIMINGS).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record_timing(key: CacheKey, **measured: float) -> None:
    """Keep the last export time / speed-up measured for this model and runtime (estimates for later cold starts)."""
    from ..util import atomic_open

    known = timings()
    entry = known.get(timing_name(key))
    entry = entry if isinstance(entry, dict) else {}
    known[timing_name(key)] = {**entry, **{k: round(v, 3) for k, v in measured.items()}}
    with contextlib.suppress(OSError), atomic_open(cache_dir() / TIMINGS, "w") as f:
        f.write(json.dumps(known, indent=1))
