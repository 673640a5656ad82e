"""Bulk output files: rows, the resumable writers (``.jsonl``, ``.csv``, ``.parquet``, ``.npy``) and
:func:`open_writer`, which picks one from the ``--output`` suffix. The local engine (:mod:`resnext.bulk`) and the
Ray Data engine (:mod:`resnext.bulk_ray`) write through these.

- ``.jsonl`` / ``.csv``: appended and fsync'ed once per batch; a crash loses at most the batch in flight.
- ``.parquet`` / ``.npy``: each batch is written atomically as a part into ``OUTPUT.parts/``; the finished run
  merges the parts into ``OUTPUT`` (for ``.npy`` plus ``OUTPUT_STEM.index.csv``: ``row,path,error``, where ``row``
  is the vector's row in the ``.npy`` and empty for inputs that failed).

Resuming (``OutputWriter.open(resume=True)``) reads the inputs an existing output already holds.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResnextError
from .runtimes import require
from .util import atomic_path, check_writable, sweep_stale_temporaries

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
# Writers


class OutputWriter:
    """Append rows to one output file so that a crash loses at most the rows of the call in flight."""

    def __init__(self, path: Path, task: str, topk: int) -> None:
        self.path, self.task, self.topk = path, task, topk
        self.done: set[str] = set()  # inputs already in the output (resume) or written by this run

    def open(self, *, resume: bool, overwrite: bool) -> set[str]:
        """Prepare the output; returns the inputs it already holds (empty unless ``resume``)."""
        check_writable(self.path)
        if self.exists():
            if overwrite:
                self.remove()
            elif not resume:
                raise ResnextError(f"{self.path} exists: pass --resume to add the inputs it lacks, or --overwrite")
            else:
                self.done = set(self.read_done())
        return set(self.done)

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
        self.path.unlink(missing_ok=True)

    def read_done(self) -> Iterator[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def append(self, rows: Sequence[Row]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """The run finished: make the output final."""

    def abort(self) -> None:
        """The run stopped early: keep what was written, for ``--resume``."""


class LineWriter(OutputWriter):
    """``.jsonl`` and ``.csv``: one line per row, appended and fsync'ed per call."""

    file: Any = None

    def read_done(self) -> Iterator[str]:
        _truncate_partial_line(self.path)
        with open(self.path, encoding="utf-8", newline="") as f:
            yield from self.parse(f)

    def parse(self, f: Any) -> Iterator[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def append(self, rows: Sequence[Row]) -> None:
        if self.file is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.file = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - open for the run
            if new:
                self.header()
        self.file.write(self.format(rows))
        self.file.flush()
        os.fsync(self.file.fileno())

    def header(self) -> None:
        pass

    def format(self, rows: Sequence[Row]) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        elif not self.path.exists():
            self.path.touch()  # an empty run still leaves its (empty) output
        self.file = None

    abort = close


def _truncate_partial_line(path: Path) -> int:
    """Cut a last line a crash left unfinished (no newline); returns the size kept."""
    size = keep = end = path.stat().st_size
    with open(path, "rb+") as f:
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = keep = start
        if keep < size:
            f.truncate(keep)
    return keep


class JsonlWriter(LineWriter):
    def parse(self, f: Any) -> Iterator[str]:
        key = "embedding" if self.task == "embed" else "indices"
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ResnextError(f"{self.path} line {number} is not JSON: not an output of this command") from None
            if not isinstance(row, dict) or "path" not in row or key not in row:
                raise ResnextError(f"{self.path} holds no {self.task} rows (line {number}); use another --output")
            yield row["path"]

    def format(self, rows: Sequence[Row]) -> str:
        def plain(row: Row) -> Row:
            if row.get("embedding") is not None:
                row = {**row, "embedding": np.asarray(row["embedding"], np.float32).tolist()}
            return row

        return "".join(json.dumps(plain(r), ensure_ascii=False) + "\n" for r in rows)


class CsvWriter(LineWriter):
    def columns(self) -> list[str]:
        return ["path", "error"] + [
            f"{c}_{i}" for i in range(1, self.topk + 1) for c in ("label", "index", "probability")
        ]

    def parse(self, f: Any) -> Iterator[str]:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is not None and header != self.columns():
            raise ResnextError(f"{self.path} has other columns than --topk {self.topk} writes; use another --output")
        for row in reader:
            yield row[0]

    def header(self) -> None:
        self.file.write(self._csv([self.columns()]))

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
        import io

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(lines)
        return buffer.getvalue()


class PartsWriter(OutputWriter):
    """``.parquet`` and ``.npy``: each call is one atomically written part file in ``OUTPUT.parts/``; closing
    merges the parts (and a previous final file, when resuming) into the final file in one atomic step."""

    def __init__(self, path: Path, task: str, topk: int) -> None:
        super().__init__(path, task, topk)
        self.parts = path.with_name(path.name + ".parts")
        self.count: int | None = None  # number of the next part file

    def part_files(self) -> list[Path]:
        sweep_stale_temporaries(self.parts)
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def exists(self) -> bool:
        return self.path.exists() or bool(self.part_files())

    def remove(self) -> None:
        super().remove()
        shutil.rmtree(self.parts, ignore_errors=True)

    def read_done(self) -> Iterator[str]:
        pq = require("pyarrow.parquet", "parquet")
        for table in self.final_tables():
            yield from table.column("path").to_pylist()
        for part in self.part_files():
            yield from pq.read_table(part, columns=["path"]).column("path").to_pylist()

    def append(self, rows: Sequence[Row]) -> None:
        pq = require("pyarrow.parquet", "parquet")
        self.parts.mkdir(parents=True, exist_ok=True)
        if self.count is None:
            existing = self.part_files()
            self.count = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        with atomic_path(self.parts / f"part-{self.count:08d}.parquet") as tmp:
            pq.write_table(rows_to_table(self.task, rows), tmp)
        self.count += 1

    def tables(self) -> Iterator[Any]:
        pq = require("pyarrow.parquet", "parquet")
        yield from self.final_tables()
        for part in self.part_files():
            yield pq.read_table(part)

    def close(self) -> None:
        if not self.part_files() and self.path.exists():
            return
        self.finalize()
        shutil.rmtree(self.parts, ignore_errors=True)

    def final_tables(self) -> Iterator[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def finalize(self) -> None:  # pragma: no cover - overridden
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


class ParquetWriter(PartsWriter):
    def final_tables(self) -> Iterator[Any]:
        if self.path.exists():
            pq = require("pyarrow.parquet", "parquet")
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=4096):
                yield require("pyarrow", "parquet").Table.from_batches([batch])

    def finalize(self) -> None:
        pa, pq = require("pyarrow", "parquet"), require("pyarrow.parquet", "parquet")
        schema = self.schema()
        with atomic_path(self.path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for table in self.tables():
                if self.task == "embed" and isinstance(schema.field("embedding").type, pa.FixedSizeListType):
                    table = table.set_column(
                        table.schema.get_field_index("embedding"),
                        "embedding",
                        _fixed_size(table.column("embedding"), schema),
                    )
                writer.write_table(table.cast(schema))


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

    def exists(self) -> bool:
        return super().exists() or self.index.exists()

    def remove(self) -> None:
        super().remove()
        self.index.unlink(missing_ok=True)

    def final_tables(self) -> Iterator[Any]:
        if not self.path.exists() or not self.index.exists():
            return
        vectors = np.load(self.path, mmap_mode="r")
        with open(self.index, encoding="utf-8", newline="") as f:
            index = list(csv.DictReader(f))
        rows = [embed_row(r["path"], vectors[int(r["row"])] if r["row"] else None, r["error"] or None) for r in index]
        yield rows_to_table("embed", rows)

    def finalize(self) -> None:
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
