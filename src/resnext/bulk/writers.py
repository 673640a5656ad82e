"""Bulk output files: the resumable writers (``.jsonl``, ``.csv`` here; ``.parquet``, ``.npy`` in
:mod:`resnext.bulk.parts`) and :func:`open_writer`, which picks one from the ``--output`` suffix. The local engine
(:mod:`resnext.bulk.engine`) and the Ray Data engine (:mod:`resnext.bulk.ray_engine`) write through these.

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
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ResnextError
from ..runtime.table import require
from .output import (
    HEAD_CHARS,
    TASKS,
    OutputWriter,
    Row,
    classify_row,
    damaged,
    embed_row,
    rows_to_table,
)
from .parts import NpyWriter, ParquetWriter

__all__ = ["TASKS", "OutputWriter", "Row", "classify_row", "embed_row", "open_writer", "rows_to_table"]

#: output suffix -> the tasks it can hold
SUFFIXES = {".jsonl": TASKS, ".csv": ("classify",), ".parquet": TASKS, ".npy": ("embed",)}


# ---------------------------------------------------------------------------------------------------------------
# Line writers


class LineWriter(OutputWriter):
    """``.jsonl`` and ``.csv``: one record per row, appended and fsync'ed per call. The manifest holds the start of
    the file (``head``) and the size known complete (``committed``, updated after each fsync): only what lies
    beyond it, in a file that begins as recorded, can be a record torn by a crash, and only that is cut."""

    file: Any = None
    keep = 0  # resumed: the size of the complete records, where this run's rows begin

    def read_done(self, manifest: dict[str, Any]) -> list[str]:
        self.keep = self._verified_end(manifest)
        return list(self.parse(self._lines(self.keep)))  # a torn record beyond is cut by the first append

    def _verified_end(self, manifest: dict[str, Any]) -> int:
        """The size of the complete records of an output proven ours (a torn last record beyond is dropped)."""
        size = self.path.stat().st_size
        head = str(manifest.get("head") or "").encode("utf-8")
        committed = manifest.get("committed", 0)
        if not isinstance(committed, int) or committed < 0 or size < committed:
            raise damaged(self.path, f"is shorter than the {committed} bytes resnext recorded writing")
        with open(self.path, "rb") as f:
            start = f.read(len(head))
            if (size and not head) or start != head[: len(start)]:
                raise damaged(self.path, "does not begin with the rows resnext wrote there (replaced or changed)")
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
                except UnicodeDecodeError as exc:
                    raise damaged(self.path, f"line {number} is not UTF-8") from exc

    def parse(self, lines: Iterator[str]) -> Iterator[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def append(self, rows: Sequence[Row]) -> None:
        data = self.format(rows).encode("utf-8")
        start = 0
        try:
            if self.file is None:
                if self.manifest is None or self.keep == 0:
                    data = self.header().encode("utf-8") + data  # a new file: the manifest first, then the rows
                    self.write_manifest(head=data[:HEAD_CHARS].decode("utf-8", "ignore"), committed=0)
                    # unbuffered: what a failed write leaves is cut back below, no buffer writes it again later
                    self.file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - open for the run
                else:  # resumed: after the complete records (a crash may have kept some beyond "committed")
                    self.file = open(self.path, "r+b", buffering=0)  # noqa: SIM115
                    self.file.truncate(self.keep)
                    self.file.seek(self.keep)
            start = self.file.tell()
            view = memoryview(data)
            while view:  # a raw write may write part of it
                view = view[self.file.write(view) :]
            os.fsync(self.file.fileno())
            self.write_manifest(committed=start + len(data))
        except (OSError, ResnextError) as exc:
            self._cut_back(start)
            if isinstance(exc, ResnextError):
                raise
            raise ResnextError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

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
            raise ResnextError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
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
            except json.JSONDecodeError as exc:
                raise damaged(self.path, f"line {number} is not JSON") from exc
            if not _is_row(row, self.task):
                raise damaged(self.path, f"line {number} is not a {self.task} row")
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
                raise damaged(self.path, f"has other columns than --topk {self.topk} writes")
            for row in reader:
                if len(row) != len(self.columns()):
                    raise damaged(self.path, f"line {reader.line_num} is blank or has other cells than a row")
                yield row[0]
        except csv.Error as exc:
            raise damaged(self.path, f"line {reader.line_num} is not CSV ({exc})") from exc

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
