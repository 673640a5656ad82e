"""Small helpers shared by every layer: atomic file writes, device resolution, the precision table."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from .errors import ResnextError

#: precision name (of :data:`resnext.options.PRECISIONS`, the package's one list) -> autocast dtype (``None`` =
#: plain fp32); int8 is no autocast precision.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "tf32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
#: Prefix of every temporary file this package writes beside a target; stale ones can be recognised and swept.
TMP_PREFIX = ".resnext-tmp-"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def loader_workers(wanted: int = 4) -> int:
    """``wanted`` DataLoader processes, at most one per CPU this process may use (torch's DataLoader warns
    beyond that, counting the same affinity mask)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(wanted, cpus))


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision not in AUTOCAST_DTYPES:
        raise ResnextError(f"unknown precision {precision!r}; choose one of {', '.join(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available; a CUDA request without a GPU is a :class:`ResnextError`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ResnextError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ResnextError("--device cuda was requested but no CUDA GPU is available")
    return resolved


def check_writable(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Fail early, before any work, when ``path`` cannot be written: a directory, or an unwritable folder."""
    path = Path(path)
    if path.is_dir():
        raise ResnextError(f"{what} {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ResnextError(f"cannot write {what} {path}: {existing} is not a writable folder")
    return path


def temporary_beside(path: Path, suffix: str = "") -> Path:
    """A new empty file ``<TMP_PREFIX><pid>-*`` in ``path``'s folder (created if needed), with the permissions a
    plain ``open()`` would give ``path`` (mkstemp makes 0600), ready to be renamed over it. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=f"-{path.name}{suffix}")
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step, on any failure it is
    removed. Readers never see a half-written file, and a failed write leaves the old file intact."""
    path = Path(path)
    try:
        tmp = temporary_beside(path)
    except OSError as exc:
        raise ResnextError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ResnextError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` for writing through :func:`atomic_path`; the data is flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def sweep_stale_temporaries(folder: str | os.PathLike[str], prefix: str = TMP_PREFIX) -> list[Path]:
    """Remove temporary files (or staging folders) named ``<prefix><pid>-...`` left in ``folder`` by processes of
    this package that no longer run (a hard abort such as SIGKILL or a full disk). Those of live processes stay."""
    import shutil

    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            if not entry.name.startswith(prefix):
                continue
            pid = entry.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_digest(path: str | os.PathLike[str], digest: Any = None) -> str:
    """Hex digest of a file's bytes, read 1 MiB at a time: sha256, or ``digest`` (a hashlib object, possibly
    already fed a prefix, as git's blob hash is)."""
    digest = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return str(digest.hexdigest())
