"""What every bulk output file shares: its rows, the lock a run holds on it, its manifest, and
:class:`OutputWriter`, the base of the writers in :mod:`resnext.bulk.writers` (``.jsonl``, ``.csv``) and
:mod:`resnext.bulk.parts` (``.parquet``, ``.npy``).

Beside ``OUTPUT`` a run keeps ``OUTPUT.lock`` (an exclusive ``flock`` holding its pid, while it runs: a second run
on the same output is refused) and writes ``OUTPUT.resnext.json``, the manifest, with its first row: the settings
that define the rows (task, arch, weights sha256, image size, top-k or normalisation, precision, runtime, labels)
and what identifies the file as ours. ``--resume`` reads an existing output only when its manifest proves it ours
and the settings agree; anything else is refused before a byte is changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ResnextError
from ..runtime.table import require
from ..util import atomic_open, check_writable

TASKS = ("classify", "embed")
Row = dict[str, Any]  # path, error, and labels/indices/probabilities (classify) or embedding (embed)


# ---------------------------------------------------------------------------------------------------------------
# Rows


def classify_row(source: str, predictions: Sequence[Any] | None, error: str | None) -> Row:
    predictions = predictions or []
    return {
        "path": source,
        "error": _one_line(error),
        "labels": [p.label for p in predictions],
        "indices": [p.index for p in predictions],
        "probabilities": [p.probability for p in predictions],
    }


def embed_row(source: str, embedding: Any, error: str | None) -> Row:
    vector = None if embedding is None else np.asarray(embedding, dtype=np.float32)
    return {"path": source, "error": _one_line(error), "embedding": vector}


def _clean(row: Row) -> Row:
    """An error row carries no results (rows that crossed Ray's block conversions may hold [] for null)."""
    if row.get("error"):
        return {
            **row,
            **({"embedding": None} if "embedding" in row else {"labels": [], "indices": [], "probabilities": []}),
        }
    return row


def _one_line(error: str | None) -> str | None:
    return None if error is None else " ".join(str(error).split())


def rows_to_table(task: str, rows: Sequence[Row]) -> Any:
    """Rows -> a pyarrow table in the parts schema (variable-size lists; the final parquet fixes the size)."""
    pa = require("pyarrow", "parquet")
    columns: dict[str, Any] = {
        "path": pa.array([r["path"] for r in rows], pa.string()),
        "error": pa.array([r["error"] for r in rows], pa.string()),
    }
    if task == "classify":
        columns["labels"] = pa.array([r["labels"] for r in rows], pa.list_(pa.string()))
        columns["indices"] = pa.array([r["indices"] for r in rows], pa.list_(pa.int64()))
        columns["probabilities"] = pa.array([r["probabilities"] for r in rows], pa.list_(pa.float64()))
    else:
        vectors = [None if r["embedding"] is None else np.asarray(r["embedding"], np.float32) for r in rows]
        columns["embedding"] = pa.array(vectors, pa.list_(pa.float32()))
    return pa.table(columns)


# ---------------------------------------------------------------------------------------------------------------
# What makes an output ours: the lock held while a run writes it, and the manifest written with its first row

MANIFEST_SUFFIX = ".resnext.json"  # OUTPUT.resnext.json
LOCK_SUFFIX = ".lock"  # OUTPUT.lock, only while a run writes OUTPUT
MANIFEST_FORMAT = "resnext bulk output"
HEAD_CHARS = 4096  # .jsonl/.csv: how much of the first write the manifest keeps, to recognise the file by
FINGERPRINT_BYTES = 1 << 20  # .parquet/.npy: the final file is recognised by its size and first + last MiB


class OutputLock:
    """An exclusive ``flock`` on ``OUTPUT.lock`` for the whole run, holding the writer's pid. The kernel drops the
    lock of a process that dies, so a lock file left by a killed run is stale and simply taken over."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output.with_name(output.name + LOCK_SUFFIX)
        self.file: Any = None

    def acquire(self) -> None:
        import fcntl

        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
            except OSError as exc:
                raise ResnextError(f"cannot lock {self.output}: {exc.strerror or exc}") from exc
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip()
                f.close()
                raise ResnextError(
                    f"{self.output} is being written by another run (pid {holder if holder.isdigit() else 'unknown'}"
                    "): wait for it to finish, or choose another --output"
                ) from None  # flock's EWOULDBLOCK only says the lock is held, which this says
            try:
                current = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            f.close()  # the previous holder removed the file between our open and our lock: lock the new one
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: a run waiting on this inode then retries
            self.file.close()
            self.file = None


def check_settings(path: Path, recorded: dict[str, Any], settings: dict[str, Any], *, known_only: bool) -> None:
    """Refuse to add rows made with other settings to ``path``; with ``known_only``, ``None`` means not known yet."""
    for key in sorted(set(recorded) | set(settings)):
        if known_only and settings.get(key) is None:
            continue
        if recorded.get(key) != settings.get(key):
            raise ResnextError(
                f"--resume: {path} holds rows made with {key}={recorded.get(key)!r}, this run's is "
                f"{settings.get(key)!r}; use the same settings, or another --output"
            )


def fingerprint(files: dict[str, Path]) -> dict[str, Any]:
    """Size and sha256 of the first and last MiB of each file: recognises a file without reading gigabytes."""
    found = {}
    for key, path in files.items():
        if not path.exists():
            continue
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            digest.update(f.read(FINGERPRINT_BYTES))
            f.seek(max(0, size - FINGERPRINT_BYTES))
            digest.update(f.read(FINGERPRINT_BYTES))
        found[key] = {"size": size, "sha256": digest.hexdigest()}
    return found


# ---------------------------------------------------------------------------------------------------------------
# The writers' base


class OutputWriter:
    """Append rows to one output file so that a crash loses at most the rows of the call in flight.

    :meth:`open` locks the output and, for ``--resume``, proves the existing file is one this package wrote (its
    manifest ``OUTPUT.resnext.json``) with the same settings, before anything is changed; :meth:`confirm` checks
    the settings known only once the model is built. :meth:`close` or :meth:`abort` releases the lock.
    """

    def __init__(self, path: Path, task: str, topk: int) -> None:
        self.path, self.task, self.topk = path, task, topk
        self.done: set[str] = set()  # inputs already in the output (resume) or written by this run
        self.manifest_path = path.with_name(path.name + MANIFEST_SUFFIX)
        self.lock = OutputLock(path)
        self.manifest: dict[str, Any] | None = None  # the output's manifest, once resumed or started
        self.settings: dict[str, Any] = {"task": task}  # what defines this run's rows

    def open(self, *, resume: bool, overwrite: bool, settings: dict[str, Any] | None = None) -> set[str]:
        """Lock and prepare the output; returns the inputs it already holds (empty unless ``resume``).
        ``settings``: those defining the rows that are known now (``None`` values: not yet known)."""
        check_writable(self.path)
        self.settings = {"task": self.task, **(settings or {})}
        self.lock.acquire()
        try:
            if self.exists():
                if overwrite:
                    self.remove()
                elif not resume:
                    raise ResnextError(f"{self.path} exists: pass --resume to add the inputs it lacks, or --overwrite")
                else:
                    manifest = self.read_manifest()
                    check_settings(self.path, manifest["settings"], self.settings, known_only=True)
                    self.done = set(self.read_done(manifest))
                    self.manifest = manifest
        except BaseException:
            self.lock.release()
            raise
        return set(self.done)

    def confirm(self, settings: dict[str, Any]) -> None:
        """All the settings that define this run's rows, once the model is built: a resumed output must have them."""
        if self.manifest is not None:
            check_settings(self.path, self.manifest["settings"], settings, known_only=False)
        self.settings = dict(settings)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest of an existing output; an output without one was not written by this package."""
        if not self.manifest_path.exists():
            raise ResnextError(
                f"{self.path} was not written by resnext (no {self.manifest_path.name} beside it): --resume "
                "leaves it unchanged; choose another --output"
            )
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResnextError(f"cannot read {self.manifest_path}: {getattr(exc, 'strerror', None) or exc}") from exc
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != MANIFEST_FORMAT
            or not isinstance(manifest.get("settings"), dict)
        ):
            raise ResnextError(f"{self.manifest_path} is damaged: not a manifest of a resnext output")
        if manifest["settings"].get("task") != self.task:
            raise ResnextError(f"{self.path} holds {manifest['settings'].get('task')} rows, not {self.task} rows")
        return manifest

    def write_manifest(self, **changes: Any) -> None:
        """Record ``changes`` in the manifest (written atomically: a crash leaves the old one or the new one)."""
        if self.manifest is None:
            self.manifest = {"format": MANIFEST_FORMAT, "version": 1, "settings": self.settings}
        self.manifest.update(changes)
        with atomic_open(self.manifest_path, "w", encoding="utf-8") as f:
            json.dump(self.manifest, f, indent=1)
            f.write("\n")

    def write(self, rows: Sequence[Row]) -> int:
        """Append the rows of inputs not in the output yet (a retried batch is never written twice)."""
        fresh = [_clean(r) for r in rows if r["path"] not in self.done]
        fresh = list({r["path"]: r for r in fresh}.values())
        if fresh:
            self.append(fresh)
            self.done.update(r["path"] for r in fresh)
        return len(fresh)

    def exists(self) -> bool:
        return self.path.exists()

    def remove(self) -> None:
        """``--overwrite``: the output and what belongs to it."""
        self.path.unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)

    def read_done(self, manifest: dict[str, Any]) -> list[str]:  # pragma: no cover - overridden
        """The inputs an output of ours holds, after proving it is ours; refuses (changing nothing) otherwise."""
        raise NotImplementedError

    def append(self, rows: Sequence[Row]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """The run finished: make the output final and release it."""
        self.lock.release()

    def abort(self) -> None:
        """The run stopped early: keep what was written, for ``--resume``, and release the output."""
        self.lock.release()


def damaged(path: Path, why: str) -> ResnextError:
    return ResnextError(f"{path} {why}: --resume leaves it unchanged; choose another --output, or --overwrite")
