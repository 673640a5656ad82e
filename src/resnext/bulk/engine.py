"""Bulk classification and embeddings over collections: input lists, resumable output files, the local engine.

    resnext classify photos/ 'more/**/*.jpg' --from-list urls.txt --output preds.parquet      # folders, globs, lists
    resnext classify photos/ --output preds.jsonl --resume                                    # after a crash
    resnext embed photos/ --output vectors.npy --normalize                                    # + vectors.index.csv

One row per input, in one of these files (``--output`` picks the format from the suffix):

- ``.jsonl`` / ``.csv``: appended and fsync'ed once per batch; a crash loses at most the batch in flight.
- ``.parquet`` / ``.npy``: each batch is written atomically as a part into ``OUTPUT.parts/``; the finished run
  merges the parts into ``OUTPUT`` (for ``.npy`` plus ``OUTPUT_STEM.index.csv``: ``row,path,error``, where ``row``
  is the vector's row in the ``.npy`` and empty for inputs that failed).

Classify rows hold ``path``, ``error`` and the top-k ``labels``, ``indices`` and ``probabilities`` (CSV: flat
``label_1, index_1, probability_1, ...`` columns); embed rows hold ``path``, ``error`` and ``embedding`` (parquet: a
fixed-size float32 list, all NaN for an input that failed). ``--resume`` skips every input already in the output
(matched by the input string as given, errors included); without it an existing output is refused unless
``--overwrite``. A run locks its output, and ``--resume`` continues only an output whose manifest proves it ours
and made with the same settings (:mod:`resnext.bulk.output`); :func:`open_output` does all of that before the
model is built.

The local engine is :func:`resnext.inference.predict.classify_sources` / :func:`resnext.inference.predict.embed_sources`
(background decoding overlapped with the model); the Ray Data engine (:mod:`resnext.bulk.ray_engine`) writes through the
same writers (:mod:`resnext.bulk.writers`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..download import is_url
from ..errors import ResnextError
from ..images import find_images
from ..model.sources import arch_option, weights_option
from ..options import (
    Precision,
    batch_size_option,
    calibration_dir_option,
    check_options,
    device_option,
    image_size_option,
    option,
    precision_option,
    threads_option,
    topk_option,
    workers_option,
)
from ..runtime.backends import backend_option, model_file_option
from .writers import TASKS, OutputWriter, Row, classify_row, embed_row, open_writer

if TYPE_CHECKING:
    from ..inference.predict import Predictor

# ---------------------------------------------------------------------------------------------------------------
# Inputs


def read_list_file(path: str | os.PathLike[str]) -> list[str]:
    """One path or URL per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ResnextError(f"cannot read --from-list {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def is_remote(source: str) -> bool:
    """URLs and object-store URIs (``s3://``, ``gs://``, ...): kept as given, never globbed or walked."""
    return is_url(source) or "://" in source


def is_glob(item: str) -> bool:
    """Whether ``item`` is a pattern for :func:`list_inputs` to expand (``*``, ``?`` or ``[``)."""
    return any(c in item for c in "*?[")


def list_inputs(inputs: Iterable[str], *, from_list: str | os.PathLike[str] | None = None) -> list[str]:
    """Expand folders (recursively) and quoted globs (``**`` allowed) into files, append the lines of
    ``from_list``; remote URIs and plain paths are kept as given. Duplicates are dropped (first one kept),
    so every input gets exactly one output row."""
    items = [str(i) for i in inputs] + (read_list_file(from_list) if from_list is not None else [])
    found: list[str] = []
    for item in items:
        if not is_remote(item) and not Path(item).exists() and is_glob(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ResnextError(f"no files match {item!r}")
            found += find_images(matches)
        elif not is_remote(item) and Path(item).is_dir():
            found += find_images([item])
        else:
            found.append(item)
    return list(dict.fromkeys(found))


# ---------------------------------------------------------------------------------------------------------------
# The local engine


@dataclass
class BulkJob:
    """One bulk run: what to compute over which inputs, and where the rows go."""

    task: str  # "classify" | "embed"
    sources: list[str]
    output: str
    topk: int = topk_option()
    normalize: bool = option(False, help="scale each vector to unit L2 norm")  # embed
    batch_size: int = batch_size_option()
    workers: int = workers_option()  # local engine: background decoding processes
    resume: bool = option(False, help="skip the inputs already in --output")
    overwrite: bool = option(False, help="replace an existing --output")
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ResnextError(f"unknown bulk task {self.task!r}; choose one of {', '.join(TASKS)}")
        check_options(self)


@dataclass
class BulkSummary:
    output: str
    total: int  # inputs listed
    skipped: int  # already in the output (resume)
    written: int  # rows written by this run
    failed: int  # of those, error rows
    seconds: float

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        return (
            f"wrote {self.written} rows to {self.output} ({self.failed} errors, {self.skipped} already there) "
            f"in {self.seconds:.1f} s, {rate:.1f} img/s"
        )


def result_rows(job: BulkJob, predictor: Any, sources: Sequence[str]) -> Iterator[Row]:
    """Rows of ``sources`` in input order, through the package's one decode and inference path."""
    from ..inference.predict import classify_sources, embed_sources

    options: dict[str, Any] = {"batch_size": job.batch_size, "workers": job.workers, "progress": job.progress}
    if job.task == "classify":
        for r in classify_sources(predictor, sources, topk=job.topk, **options):
            yield classify_row(r.source, r.predictions, r.error)
    else:
        for e in embed_sources(predictor, sources, normalize=job.normalize, **options):
            yield embed_row(e.source, e.embedding, e.error)


def write_rows(job: BulkJob, writer: OutputWriter, rows: Iterable[Row], skipped: int, total: int) -> BulkSummary:
    """Write ``rows`` in chunks of one batch; finalise on success, keep the partial output on any failure."""
    start, written, failed = time.perf_counter(), 0, 0
    buffer: list[Row] = []

    def flush() -> None:
        nonlocal written, failed, buffer
        chunk, buffer = buffer, []  # not retried if the writer fails (a full disk): it cut back to whole rows
        written += writer.write(chunk)
        failed += sum(r["error"] is not None for r in chunk)

    try:
        try:
            for row in rows:
                buffer.append(row)
                if len(buffer) >= job.batch_size:
                    flush()
        except BaseException:
            if buffer:
                flush()  # finished rows are kept even when the run is interrupted
            raise
        flush()
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return BulkSummary(job.output, total, skipped, written, failed, time.perf_counter() - start)


def requested_settings(job: BulkJob, spec: ModelSpec | None = None) -> dict[str, Any]:
    """The settings that define a row and are known before the model is built (``None``: known only after)."""
    settings: dict[str, Any] = {"task": job.task}
    settings.update({"topk": job.topk} if job.task == "classify" else {"normalize": job.normalize})
    if spec is not None:
        settings["arch"] = spec.arch
        settings["image_size"] = spec.image_size
        settings["runtime"] = spec.backend if spec.backend not in (None, "auto") else None
        settings["labels_sha256"] = _labels_sha256(spec.categories) if spec.categories else None
    return settings


def row_settings(job: BulkJob, predictor: Predictor, spec: ModelSpec | None = None) -> dict[str, Any]:
    """Everything that defines a row of ``job`` made by ``predictor``: what ``--resume`` must find unchanged."""
    from ..inference.auto_cache import weights_sha256
    from ..util import file_digest

    backend = predictor.backend
    if predictor.model is not None:
        weights = weights_sha256(predictor.model)
    elif spec is not None and spec.model_file:
        weights = file_digest(spec.model_file)
    else:
        weights = None
    return {
        **requested_settings(job),
        "arch": predictor.arch,
        "weights_sha256": weights,
        "image_size": predictor.image_size,
        "precision": backend.precision,
        "runtime": backend.name,
        "labels_sha256": _labels_sha256(predictor.categories),
    }


def _labels_sha256(categories: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(categories).encode("utf-8")).hexdigest()


def open_output(job: BulkJob, spec: ModelSpec | None = None) -> OutputWriter:
    """Check, lock and (``--resume``) verify ``job.output``: everything that can be refused before the model loads."""
    writer = open_writer(job.output, job.task, topk=job.topk)
    writer.open(resume=job.resume, overwrite=job.overwrite, settings=requested_settings(job, spec))
    return writer


def run_local(
    job: BulkJob, predictor: Any, *, writer: OutputWriter | None = None, spec: ModelSpec | None = None
) -> BulkSummary:
    """Run ``job`` in this process (decoding in ``job.workers`` background processes); ``writer``: the output
    :func:`open_output` opened for it (default: opened here)."""
    writer = writer or open_output(job, spec)
    try:
        writer.confirm(row_settings(job, predictor, spec))
    except BaseException:
        writer.abort()
        raise
    pending = [s for s in job.sources if s not in writer.done]
    rows = result_rows(job, predictor, pending)
    return write_rows(job, writer, rows, skipped=len(job.sources) - len(pending), total=len(job.sources))


@dataclass(frozen=True)
class ModelSpec:
    """How to build the predictor: picklable, so each Ray actor builds its own copy from it. Its fields are the
    model flags of every command that runs a model (``--arch``, ``--weights``, ``--backend``, ...)."""

    arch: str | None = arch_option()
    weights: Any = weights_option()
    backend: str | None = backend_option()
    model_file: str | None = model_file_option()
    device: str = device_option()
    precision: Precision | None = precision_option()
    calibration_dir: str | None = calibration_dir_option()
    image_size: int | None = image_size_option()
    channels_last: bool = option(False, help="run the model in NHWC memory format")
    threads: int | None = threads_option()
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_options(self)

    def predictor(self, *, device: str | None = None, progress: bool = False) -> Any:
        from ..inference.predict import Predictor

        # random weights are the same model wherever this spec is built (Ray replicas, driver, reruns): the
        # fixed seed of resnext.model.sources.load_source
        return Predictor.from_pretrained(
            self.arch,
            weights=self.weights,
            backend=self.backend,
            model_file=self.model_file,
            device=device or self.device,
            precision=self.precision,
            channels_last=self.channels_last,
            categories=list(self.categories) if self.categories else None,
            image_size=self.image_size,
            calibration_dir=self.calibration_dir,
            progress=progress,
            threads=self.threads,
        )
