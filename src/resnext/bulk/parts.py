"""``.parquet`` and ``.npy`` bulk outputs: each batch an atomically written part in ``OUTPUT.parts/``, merged
into the final file when the run finishes (see :mod:`resnext.bulk.writers`)."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import first_line
from ..runtime.table import require
from ..util import atomic_path, sweep_stale_temporaries
from .output import OutputWriter, Row, damaged, embed_row, fingerprint, rows_to_table


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
        found = fingerprint(self.final_files())
        for key in ("final", "pending"):
            state = manifest.get(key)
            if isinstance(state, dict) and state.get("fingerprint") == found:
                self.merged_through, self.recovered = int(state.get("through", -1)), key == "pending"
                break
        else:
            if found or manifest.get("final"):
                raise damaged(self.path, "is not the file resnext recorded writing (damaged or replaced)")
        expected = rows_to_table(self.task, []).schema.names
        paths: list[str] = []
        try:
            for table in self.final_tables():
                paths += table.column("path").to_pylist()
            for part in self.part_files():
                if pq.read_schema(part).names != expected:
                    raise damaged(part, "is not a part of a resnext output")
                paths += pq.read_table(part, columns=["path"]).column("path").to_pylist()
        except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
            raise damaged(self.path, f"cannot be read ({first_line(exc)})") from exc
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
        self.write_manifest(pending={"fingerprint": fingerprint(written), "through": through})

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
