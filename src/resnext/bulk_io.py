"""Bulk output files: rows, the resumable writers (``.jsonl``, ``.csv``, ``.parquet``, ``.npy``) and
:func:`open_writer`, which picks one from the ``--output`` suffix. The local engine (:mod:`resnext.bulk`) and the
Ray Data engine (:mod:`resnext.bulk_ray`) write through these.

- ``.jsonl`` / ``.csv``: appended and fsync'ed once per batch; a crash loses at most the batch in flight.
- ``.parquet`` / ``.npy``: each batch is written atomically as a part into ``OUTPUT.parts/``; the finished run
  merges the parts into ``OUTPUT`` (for ``.npy`` plus ``OUTPUT_STEM.index.csv``: ``row,path,error``, where ``row``
  is the vector's row in the ``.npy`` and empty for inputs that failed).

Beside ``OUTPUT`` a run keeps ``OUTPUT.lock`` (an exclusive ``flock`` holding its pid, while it runs: a second run
on the same output is refused) and writes ``OUTPUT.resnext.json``, the manifest, with its first row: the settings
that define the rows (task, arch, weights sha256, image size, top-k or normalisation, precision, runtime, labels)
and what identifies the file as ours. Resuming (``OutputWriter.open(resume=True)``) reads the inputs an existing
output already holds only when its manifest proves it ours and the settings agree; anything else is refused before
a byte is changed.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResnextError
from .runtimes import require
from .util import atomic_open, atomic_path, check_writable, sweep_stale_temporaries

TASKS = ("classify", "embed")
#: output suffix -> the tasks it can hold
SUFFIXES = {".jsonl": TASKS, ".csv": ("classify",), ".parquet": TASKS, ".npy": ("embed",)}
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
                raise ResnextError(f"cannot lock {self.output}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip()
                f.close()
                raise ResnextError(
                    f"{self.output} is being written by another run (pid {holder if holder.isdigit() else 'unknown'}"
                    "): wait for it to finish, or choose another --output"
                ) from None
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


def _fingerprint(files: dict[str, Path]) -> dict[str, Any]:
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
# Writers


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
            raise ResnextError(f"cannot read {self.manifest_path}: {getattr(exc, 'strerror', None) or exc}") from None
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


def _damaged(path: Path, why: str) -> ResnextError:
    return ResnextError(f"{path} {why}: --resume leaves it unchanged; choose another --output, or --overwrite")


class LineWriter(OutputWriter):
    """``.jsonl`` and ``.csv``: one record per row, appended and fsync'ed per call. The manifest holds the start of
    the file (``head``) and the size known complete (``committed``, updated after each fsync): only what lies
    beyond it, in a file that begins as recorded, can be a record torn by a crash, and only that is cut."""

    file: Any = None

    def read_done(self, manifest: dict[str, Any]) -> list[str]:
        keep = self._verified_end(manifest)
        paths = list(self.parse(self._lines(keep)))  # all of it is checked before anything is cut
        if keep < self.path.stat().st_size:
            os.truncate(self.path, keep)
        return paths

    def _verified_end(self, manifest: dict[str, Any]) -> int:
        """The size of the complete records of an output proven ours (a torn last record beyond is dropped)."""
        size = self.path.stat().st_size
        head = str(manifest.get("head") or "").encode("utf-8")
        committed = manifest.get("committed", 0)
        if not isinstance(committed, int) or committed < 0 or size < committed:
            raise _damaged(self.path, f"is shorter than the {committed} bytes resnext recorded writing")
        with open(self.path, "rb") as f:
            start = f.read(len(head))
            if (size and not head) or start != head[: len(start)]:
                raise _damaged(self.path, "does not begin with the rows resnext wrote there (replaced or changed)")
            f.seek(committed)
            tail = f.read()
        return committed + self.complete(tail)

    def complete(self, data: bytes) -> int:
        """The length of the complete records at the start of ``data``."""
        return data.rfind(b"\n") + 1

    def _lines(self, keep: int) -> Iterator[str]:
        """The file's lines up to ``keep`` (a record boundary), as text."""
        with open(self.path, "rb") as f:
            position = 0
            for number, raw in enumerate(f, 1):
                if position >= keep:
                    return
                position += len(raw)
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _damaged(self.path, f"line {number} is not UTF-8") from None

    def parse(self, lines: Iterator[str]) -> Iterator[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def append(self, rows: Sequence[Row]) -> None:
        data = self.format(rows).encode("utf-8")
        committed = (self.manifest or {}).get("committed", 0)
        try:
            if self.file is None:
                if self.manifest is None or committed == 0:  # a new file: the manifest first, then the rows
                    data = self.header().encode("utf-8") + data
                    committed = 0
                    self.write_manifest(head=data[:HEAD_CHARS].decode("utf-8", "ignore"), committed=0)
                self.file = open(self.path, "r+b" if committed else "wb")  # noqa: SIM115 - open for the run
                self.file.seek(committed)
            self.file.write(data)
            self.file.flush()
            os.fsync(self.file.fileno())
            self.write_manifest(committed=committed + len(data))
        except (OSError, ResnextError) as exc:
            self._cut_back(committed)
            if isinstance(exc, ResnextError):
                raise
            raise ResnextError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def _cut_back(self, committed: int) -> None:
        """After a failed write (a full disk): back to the last complete record, so a resume finds no torn one."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.truncate(committed)
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None

    def header(self) -> str:
        return ""

    def format(self, rows: Sequence[Row]) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        try:
            if self.file is not None:
                self.file.close()
                self.file = None
            elif not self.path.exists():  # an empty run still leaves its (empty) output
                self.write_manifest(head=self.header(), committed=0)
                with open(self.path, "w", encoding="utf-8") as f:
                    f.write(self.header())
                self.write_manifest(committed=len(self.header().encode("utf-8")))
        except OSError as exc:
            raise ResnextError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        finally:
            self.lock.release()

    def abort(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None
        self.lock.release()


class JsonlWriter(LineWriter):
    def parse(self, lines: Iterator[str]) -> Iterator[str]:
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise _damaged(self.path, f"line {number} is not JSON") from None
            if not _is_row(row, self.task):
                raise _damaged(self.path, f"line {number} is not a {self.task} row")
            yield row["path"]

    def format(self, rows: Sequence[Row]) -> str:
        def plain(row: Row) -> Row:
            if row.get("embedding") is not None:
                row = {**row, "embedding": np.asarray(row["embedding"], np.float32).tolist()}
            return row

        return "".join(json.dumps(plain(r), ensure_ascii=False) + "\n" for r in rows)


def _is_row(row: Any, task: str) -> bool:
    if not isinstance(row, dict) or not isinstance(row.get("path"), str):
        return False
    if not isinstance(row.get("error"), (str, type(None))):
        return False
    if task == "embed":
        return isinstance(row.get("embedding", False), (list, type(None)))
    return all(isinstance(row.get(key), list) for key in ("labels", "indices", "probabilities"))


class CsvWriter(LineWriter):
    def columns(self) -> list[str]:
        return ["path", "error"] + [
            f"{c}_{i}" for i in range(1, self.topk + 1) for c in ("label", "index", "probability")
        ]

    def complete(self, data: bytes) -> int:
        """Records, not lines, end at a newline outside quotes (a quoted path may hold newlines; a doubled
        quote inside one toggles twice)."""
        end, quoted = 0, False
        for i, byte in enumerate(data):
            if byte == 0x22:  # "
                quoted = not quoted
            elif byte == 0x0A and not quoted:  # \n
                end = i + 1
        return end

    def parse(self, lines: Iterator[str]) -> Iterator[str]:
        reader = csv.reader(lines, strict=True)
        try:
            header = next(reader, None)
            if header is not None and header != self.columns():
                raise _damaged(self.path, f"has other columns than --topk {self.topk} writes")
            for row in reader:
                if len(row) != len(self.columns()):
                    raise _damaged(self.path, f"line {reader.line_num} is blank or has other cells than a row")
                yield row[0]
        except csv.Error as exc:
            raise _damaged(self.path, f"line {reader.line_num} is not CSV ({exc})") from None

    def header(self) -> str:
        return self._csv([self.columns()])

    def format(self, rows: Sequence[Row]) -> str:
        lines = []
        for r in rows:
            cells = [r["path"], r["error"] or ""]
            for i in range(self.topk):
                has = i < len(r["indices"])
                cells += [r["labels"][i], r["indices"][i], repr(r["probabilities"][i])] if has else ["", "", ""]
            lines.append(cells)
        return self._csv(lines)

    @staticmethod
    def _csv(lines: list[list[Any]]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(lines)
        return buffer.getvalue()


class PartsWriter(OutputWriter):
    """``.parquet`` and ``.npy``: each call is one atomically written part file in ``OUTPUT.parts/``; closing
    merges the parts (and a previous final file, when resuming) into the final file in one atomic step.

    The manifest records the final file's fingerprint and the last part merged into it (``through``), first as
    ``pending`` (before the rename), then as ``final``: a crash at any point leaves a final file the manifest
    recognises, and parts already merged into it are never merged twice."""

    def __init__(self, path: Path, task: str, topk: int) -> None:
        super().__init__(path, task, topk)
        self.parts = path.with_name(path.name + ".parts")
        self.count: int | None = None  # number of the next part file
        self.merged_through = -1  # parts numbered up to this are in the final file already
        self.recovered = False  # the final file is the one a crash left between its rename and the manifest

    def final_files(self) -> dict[str, Path]:
        return {"final": self.path}

    def part_files(self) -> list[Path]:
        sweep_stale_temporaries(self.parts)
        found = sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []
        return [p for p in found if _part_number(p) > self.merged_through]

    def exists(self) -> bool:
        return any(p.exists() for p in self.final_files().values()) or self.parts.is_dir()

    def remove(self) -> None:
        for path in self.final_files().values():
            path.unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        shutil.rmtree(self.parts, ignore_errors=True)

    def read_done(self, manifest: dict[str, Any]) -> list[str]:
        pq = require("pyarrow.parquet", "parquet")
        found = _fingerprint(self.final_files())
        for key in ("final", "pending"):
            state = manifest.get(key)
            if isinstance(state, dict) and state.get("fingerprint") == found:
                self.merged_through, self.recovered = int(state.get("through", -1)), key == "pending"
                break
        else:
            if found or manifest.get("final"):
                raise _damaged(self.path, "is not the file resnext recorded writing (damaged or replaced)")
        expected = rows_to_table(self.task, []).schema.names
        paths: list[str] = []
        try:
            for table in self.final_tables():
                paths += table.column("path").to_pylist()
            for part in self.part_files():
                if pq.read_schema(part).names != expected:
                    raise _damaged(part, "is not a part of a resnext output")
                paths += pq.read_table(part, columns=["path"]).column("path").to_pylist()
        except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
            raise _damaged(self.path, f"cannot be read ({str(exc).splitlines()[0][:200]})") from None
        return paths

    def append(self, rows: Sequence[Row]) -> None:
        pq = require("pyarrow.parquet", "parquet")
        if self.manifest is None:
            self.write_manifest(final=None, pending=None)
        if self.count is None:
            self.parts.mkdir(parents=True, exist_ok=True)
            numbers = [_part_number(p) for p in self.parts.glob("part-*.parquet")]
            self.count = max([*numbers, self.merged_through]) + 1
        with atomic_path(self.parts / f"part-{self.count:08d}.parquet") as tmp:
            pq.write_table(rows_to_table(self.task, rows), tmp)
        self.count += 1

    def tables(self) -> Iterator[Any]:
        pq = require("pyarrow.parquet", "parquet")
        yield from self.final_tables()
        for part in self.part_files():
            yield pq.read_table(part)

    def close(self) -> None:
        try:
            parts = self.part_files()
            if parts or not self.path.exists():
                if self.manifest is None:
                    self.write_manifest(final=None, pending=None)
                through = max([_part_number(p) for p in parts], default=self.merged_through)
                self.finalize(through)
                self.write_manifest(final=self.manifest["pending"], pending=None)  # type: ignore[index]
            elif self.recovered:
                self.write_manifest(final=self.manifest["pending"], pending=None)  # type: ignore[index]
            shutil.rmtree(self.parts, ignore_errors=True)
        finally:
            self.lock.release()

    def record_pending(self, written: dict[str, Path], through: int) -> None:
        """Called with the finished temporary files, just before they are renamed into place."""
        self.write_manifest(pending={"fingerprint": _fingerprint(written), "through": through})

    def final_tables(self) -> Iterator[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def finalize(self, through: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def schema(self) -> Any:
        """The final schema: the parts' one, with the embedding as a fixed-size list once its size is known."""
        pa = require("pyarrow", "parquet")
        schema = rows_to_table(self.task, []).schema
        dim = self.dimension()
        if self.task == "embed" and dim:
            schema = schema.set(schema.get_field_index("embedding"), pa.field("embedding", pa.list_(pa.float32(), dim)))
        return schema

    def dimension(self) -> int | None:
        if self.task != "embed":
            return None
        for table in self.tables():
            vectors = table.column("embedding").drop_null()
            if len(vectors):
                return len(vectors[0].as_py())
        return None


def _part_number(part: Path) -> int:
    return int(part.stem.split("-")[1])


class ParquetWriter(PartsWriter):
    def final_tables(self) -> Iterator[Any]:
        if self.path.exists():
            pq = require("pyarrow.parquet", "parquet")
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=4096):
                yield require("pyarrow", "parquet").Table.from_batches([batch])

    def finalize(self, through: int) -> None:
        pa, pq = require("pyarrow", "parquet"), require("pyarrow.parquet", "parquet")
        schema = self.schema()
        with atomic_path(self.path) as tmp:
            with pq.ParquetWriter(tmp, schema) as writer:
                for table in self.tables():
                    if self.task == "embed" and isinstance(schema.field("embedding").type, pa.FixedSizeListType):
                        table = table.set_column(
                            table.schema.get_field_index("embedding"),
                            "embedding",
                            _fixed_size(table.column("embedding"), schema),
                        )
                    writer.write_table(table.cast(schema))
            self.record_pending({"final": tmp}, through)


def _fixed_size(column: Any, schema: Any) -> Any:
    """A variable-size list column as the schema's fixed-size one. Inputs that failed get an all-NaN vector, not
    a null: pyarrow (22, 23) writes null entries of fixed-size lists into parquet files it cannot read back."""
    pa = require("pyarrow", "parquet")
    kind = schema.field("embedding").type
    vectors = column.to_pylist()
    flat = np.full((len(vectors), kind.list_size), np.nan, dtype=np.float32)
    for i, vector in enumerate(vectors):
        if vector is not None:
            flat[i] = vector
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), type=kind)


class NpyWriter(PartsWriter):
    """``OUTPUT.npy`` (float32 ``[rows, D]``, inputs that failed have no row) + ``STEM.index.csv``."""

    @property
    def index(self) -> Path:
        return self.path.with_suffix(".index.csv")

    def final_files(self) -> dict[str, Path]:
        return {"final": self.path, "index": self.index}

    def final_tables(self) -> Iterator[Any]:
        if not self.path.exists() or not self.index.exists():
            return
        vectors = np.load(self.path, mmap_mode="r")
        with open(self.index, encoding="utf-8", newline="") as f:
            index = list(csv.DictReader(f))
        rows = [embed_row(r["path"], vectors[int(r["row"])] if r["row"] else None, r["error"] or None) for r in index]
        yield rows_to_table("embed", rows)

    def finalize(self, through: int) -> None:
        count = sum(t.num_rows - t.column("embedding").null_count for t in self.tables())
        dim = self.dimension() or 0
        with atomic_path(self.path) as tmp_npy, atomic_path(self.index) as tmp_index:
            out = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.float32, shape=(count, dim))
            row = 0
            with open(tmp_index, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(["row", "path", "error"])
                for table in self.tables():
                    for r in table.to_pylist():
                        if r["embedding"] is None:
                            writer.writerow(["", r["path"], r["error"] or ""])
                            continue
                        out[row] = r["embedding"]
                        writer.writerow([row, r["path"], ""])
                        row += 1
            out.flush()
            del out
            self.record_pending({"final": tmp_npy, "index": tmp_index}, through)


WRITERS: dict[str, type[OutputWriter]] = {
    ".jsonl": JsonlWriter,
    ".csv": CsvWriter,
    ".parquet": ParquetWriter,
    ".npy": NpyWriter,
}


def open_writer(path: str | os.PathLike[str], task: str, *, topk: int = 5) -> OutputWriter:
    """The writer for ``path``'s suffix; a suffix the task cannot write is a one-line error."""
    path = Path(path)
    suffix = path.suffix.lower()
    allowed = [s for s, tasks in SUFFIXES.items() if task in tasks]
    if suffix not in allowed:
        raise ResnextError(f"{task} --output must end in {', '.join(allowed)}, got {path.name}")
    if suffix in (".parquet", ".npy"):
        require("pyarrow", "parquet")
    return WRITERS[suffix](path, task, topk)
