"""Inference benchmark: latency and throughput per (backend, precision, batch size) against a same-run reference.

    resnext benchmark inference                                              # torch, onnxruntime, openvino; fp32
    resnext benchmark inference --backends torch,torch-cl,onnxruntime,openvino --precision fp32,bf16,int8 \
        --batch-sizes 1,16 --json-file bench.json
    resnext benchmark inference --arch resnext_test --image-size 64 --batch-sizes 1,4 --min-time 0.2   # smoke

Every row runs the same preprocessed batch (the packaged sample photos through ``eval_preset``, tiled to the
batch size), first for a few warm-up calls, then for at least ``min_iters`` calls and ``min_time`` seconds. It
reports median and p50/p95/p99 latency, img/s, the ratio to the reference row of the same batch size (PyTorch
eager fp32 NCHW, always measured in the same run), the achieved GFLOP/s (model FLOPs x img/s; for int8 rows the
fp32-equivalent work), its share of the peak *of the precision the row ran in* (:mod:`resnext.bench.peak`, GEMMs
measured in the same run with the same thread count), and its top-1 agreement with eager fp32 on the agreement
images (``agreement_dir``, e.g. a labelled folder, where accuracy is reported too; default: the sample photos).

Every runtime gets the same thread count: ``threads``, default PyTorch's current setting. A whole run has a time
budget (``time_budget``, seconds): once it is spent, the row being timed stops after its first timed call, the rows
not yet started are skipped with a note, and the JSON is still written. A precision the CPU only emulates (bf16
without AVX-512 BF16/AMX, int8 without VNNI/AMX: :func:`resnext.runtime.hardware.native_precisions`) is noted as such.
Exported backends are exported into a temporary folder first and must pass :func:`resnext.export.driver.check_parity`
before they are timed. Without ``--weights`` the model has random weights, with batch-norm statistics set from
the sample photos so activations have realistic ranges (speed does not depend on the weight values; agreement
does: a random network's logits are near-ties, so measure agreement with real weights and ``agreement_dir``).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ResnextError
from ..options import as_precision
from ..runtime.backend import Backend
from .peak import apply_peaks, emulated_note, machine_info, measure_peaks, merge_peaks, ran_precision, torch_threads
from .settings import BenchConfig

logger = logging.getLogger(__name__)

#: backend -> precisions it can be benchmarked in. ``torch`` fp32 is the reference.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16"),
    "torch-cl": ("fp32", "bf16"),
    "torch-compile": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "torchscript": ("fp32",),
    "torch-export": ("fp32",),
    "tensorrt": ("fp16", "fp32"),
}
REFERENCE = ("torch", "fp32")


@dataclass
class Row:
    backend: str
    precision: str
    batch_size: int
    iterations: int
    median_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    images_per_s: float
    ratio: float = float("nan")  # img/s relative to the reference row of the same batch size
    gflops: float = float("nan")
    peak_fraction: float = float("nan")  # gflops / peak_gflops
    peak_gflops: float = float("nan")  # the peak of the precision this row ran in
    ran_precision: str = ""  # what the runtime ran (OpenVINO runs "bf16" in fp32 on CPUs without bf16)
    agreement: float | None = None  # top-1 agreement with eager fp32 on the agreement images
    max_abs_diff: float | None = None
    accuracy: float | None = None  # top-1 on the agreement images when they are labelled


@dataclass
class BenchResult:
    machine: dict[str, Any]
    config: dict[str, Any]
    model_gflop_per_image: float
    peaks: dict[str, dict[str, Any]]  # precision -> {"gflops", "engine"}
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    agreement_images: str = ""  # what agreement was measured on
    reference_accuracy: float | None = None  # eager fp32 top-1 on the agreement images, when labelled

    def table(self) -> str:
        head = (
            "backend",
            "precision",
            "batch",
            "median ms",
            "p95 ms",
            "p99 ms",
            "img/s",
            "x ref",
            "GFLOP/s",
            "% peak",
            "agree %",
        )
        body = [
            (
                r.backend,
                r.precision if r.ran_precision in ("", r.precision) else f"{r.precision}->{r.ran_precision}",
                str(r.batch_size),
                f"{r.median_ms:.1f}",
                f"{r.p95_ms:.1f}",
                f"{r.p99_ms:.1f}",
                f"{r.images_per_s:.2f}",
                f"{r.ratio:.2f}",
                f"{r.gflops:.1f}",
                f"{100 * r.peak_fraction:.0f}",
                "-" if r.agreement is None else f"{100 * r.agreement:.1f}",
            )
            for r in self.rows
        ]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        fmt = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
        lines = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, body)]
        peaks = ", ".join(
            f"{p} {v['gflops']:.0f} ({v['engine']}{', emulated' if v.get('emulated') else ''})"
            for p, v in self.peaks.items()
        )
        lines.append(
            f"model: {self.config['arch']} at {self.config['image_size']} px, {self.model_gflop_per_image:.2f} "
            f"GFLOP/image; GEMM peaks in this run, GFLOP/s at {self.machine['threads']} threads: {peaks}; "
            f"% peak is of the row's own precision; reference = torch fp32 eager NCHW"
        )
        accuracy = (
            "" if self.reference_accuracy is None else f"; fp32 top-1 accuracy {100 * self.reference_accuracy:.2f}%"
        )
        lines.append(f"agreement: top-1 vs eager fp32 on {self.agreement_images}{accuracy}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def model_gflop(model: torch.nn.Module, image_size: int) -> float:
    """FLOPs (2 x multiply-adds) of one image, counted by PyTorch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 1e9


def time_calls(
    fn: Callable[[], Any], *, warmup: int, min_iters: int, min_time: float, deadline: float = math.inf
) -> list[float]:
    """Per-call wall times (s) after at least ``warmup`` untimed calls.

    oneDNN builds its kernels over the first few calls of each shape (seen here: 4.8 s, 1.4 s, 1.2 s, then 0.18 s
    per call), so warm-up goes on while calls are still getting more than 10% faster, up to 10 extra calls. Past
    ``deadline`` (a ``time.perf_counter()`` value) warm-up ends and timing stops after one timed call.
    """
    previous = math.inf
    for i in range(warmup + 10):
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        if (i + 1 >= warmup and elapsed > 0.9 * previous) or t0 + elapsed > deadline:
            break
        previous = elapsed
    times: list[float] = []
    start = time.perf_counter()
    while not times or (
        (len(times) < min_iters or time.perf_counter() - start < min_time) and time.perf_counter() < deadline
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summarise(backend: str, precision: str, batch_size: int, times: Sequence[float]) -> Row:
    ms = torch.tensor(times, dtype=torch.float64) * 1e3
    q = torch.quantile(ms, torch.tensor([0.5, 0.95, 0.99], dtype=torch.float64)).tolist()
    median = statistics.median(ms.tolist())
    return Row(backend, precision, batch_size, len(times), median, q[0], q[1], q[2], batch_size / median * 1e3)


# ---------------------------------------------------------------------------------------------------------------
# Runners


def set_bn_statistics(model: torch.nn.Module, images: Tensor) -> None:
    """Give a randomly initialised model realistic activation ranges: batch-norm running statistics from
    ``images`` (one cumulative pass in train mode). Without it, random ResNeXt101 logits reach ~1e6."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def make_runner(
    backend: str, precision: str, model: torch.nn.Module, config: BenchConfig, workdir: Path, cache: dict[str, Path]
) -> Backend:
    """A callable batch -> logits for (backend, precision); exported files are written once and parity-checked."""
    from ..export import driver as export
    from ..model.sources import source_from_model
    from ..runtime.backend import TorchBackend
    from ..runtime.backends import create_backend

    if backend == "torch":
        return TorchBackend(model, device="cpu", precision=precision)
    if backend == "torch-cl":  # a copy: the reference model and the exporters keep their NCHW weights
        return TorchBackend(copy.deepcopy(model), device="cpu", precision=precision, channels_last=True)
    if backend == "torch-compile":
        # freezing folds the weights into the graph so inductor can pre-pack them for oneDNN (CPU inference)
        compiled = torch.compile(copy.deepcopy(model), options={"freezing": True})
        runner = TorchBackend(compiled, device="cpu", precision=precision, channels_last=True)  # type: ignore[arg-type]
        settings = export.ExportConfig("torch-compile", "", image_size=config.image_size, batch_range=(1, 1024))
        images = export.preprocess(export.sample_images(), settings.size)
        parity, _ = export.check_parity(model, runner, settings, precision, images)
        logger.info("%s %s parity: %s", backend, precision, parity[-1].line())
        return runner

    low, high = 1, max(config.batch_sizes)
    settings = export.ExportConfig(
        format={"onnxruntime": "onnx", "torch-export": "export"}.get(backend, backend),
        output="",
        arch=config.arch,
        weights=config.weights,
        batch_range=(low, high),
        precision=as_precision(precision),
        image_size=config.image_size,
        # int8 calibrates on the packaged samples unless a folder is given (as `--backend auto` does)
        calibration_dir=config.calibration_dir or str(Path(export.sample_images()[0]).parent),
        threads=config.threads,
    )
    metadata = export._metadata(
        settings, source_from_model(model, arch=config.arch, image_size=config.image_size), precision
    )
    calibration = export.calibration_batch(settings, metadata["num_classes"]) if precision == "int8" else None
    file_name = {
        "onnxruntime": f"model{'-int8' if precision == 'int8' else ''}.onnx",  # = the shared ONNX intermediates
        "openvino": f"model-{precision}.xml",
        "tensorrt": f"model-{precision}.engine",
        "torchscript": "model.ts",
        "torch-export": "model.pt2",
    }[backend]
    path = workdir / file_name
    export.write_model(
        model, settings, precision, path, metadata, workdir=workdir, calibration=calibration, cache=cache
    )
    runtime = create_backend(backend, model_file=str(path), precision=precision, threads=config.threads)
    images = export.preprocess(export.sample_images(), settings.size)
    parity, _ = export.check_parity(model, runtime, settings, precision, images)
    logger.info("%s %s parity: %s", backend, precision, parity[-1].line())
    return runtime


def plan(config: BenchConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """The (backend, precision) pairs to measure, reference first, and the requested pairs that are unsupported."""
    unknown = [b for b in config.backends if b not in SUPPORTED]
    if unknown:
        raise ResnextError(f"unknown backend {unknown[0]!r}; choose from {', '.join(SUPPORTED)}")
    if not config.batch_sizes:
        raise ResnextError("--batch-sizes must name at least one batch size")
    pairs = [REFERENCE] + [
        (b, p) for b in config.backends for p in config.precisions if p in SUPPORTED[b] and (b, p) != REFERENCE
    ]
    skipped = [f"{b} {p}" for b in config.backends for p in config.precisions if p not in SUPPORTED[b]]
    return pairs, skipped


def agreement_images(config: BenchConfig, num_classes: int) -> tuple[Tensor, list[int] | None, str]:
    """Preprocessed images for the agreement column, their labels when the folder is labelled, a description."""
    from ..export.driver import _spread, labelled_images, preprocess
    from ..images import sample_images

    if not config.agreement_dir:
        paths = sample_images()
        return preprocess(paths, config.image_size), None, f"the {len(paths)} sample photos"
    paths, labels, note = labelled_images(config.agreement_dir, num_classes)
    paths, labels = _spread(paths, labels, config.agreement_count)
    if not paths:
        raise ResnextError(f"no images found in {config.agreement_dir}")
    kind = "labelled images" if labels is not None else f"images ({note})"
    return preprocess(paths, config.image_size), labels, f"{len(paths)} {kind} from {config.agreement_dir}"


def run_inference_benchmark(config: BenchConfig, model: torch.nn.Module | None = None) -> BenchResult:
    """Measure every supported (backend, precision) at every batch size, reference rows included."""
    from dataclasses import replace

    from ..export.driver import _logits, preprocess, sample_images
    from ..model.sources import load_source

    pairs, skipped = plan(config)
    config = replace(config, threads=config.threads or torch.get_num_threads())
    deadline = time.perf_counter() + config.time_budget
    with torch_threads(config.threads):
        images = preprocess(sample_images(), config.image_size)
        if model is None:
            logger.info("loading %s (%s weights) ...", config.arch, config.weights or "random")
            model = load_source(config.weights, arch=config.arch).model
            assert model is not None
            if config.weights in (None, "random"):
                set_bn_statistics(model, images)
        model = model.eval()
        asked = ", ".join(dict.fromkeys(["fp32", *config.precisions]))
        logger.info("measuring GEMM peaks (%s) at %d threads ...", asked, config.threads)
        peaks_before = measure_peaks(config.threads, n=config.peak_size, precisions=config.precisions)
        result = BenchResult(
            machine=machine_info(),
            config=asdict(config),
            model_gflop_per_image=model_gflop(model, config.image_size),
            peaks={},
        )
        result.notes += ["not supported, skipped: " + ", ".join(skipped)] if skipped else []
        result.notes += [emulated_note(p) for p, peak in peaks_before.items() if peak.emulated]
        if config.weights in (None, "random"):
            result.notes.append(
                "random weights with batch-norm statistics from the sample photos (agreement of a "
                "random network is near-ties: measure it with trained weights)"
            )
        agree_x, labels, result.agreement_images = agreement_images(config, int(getattr(model, "num_classes", 1000)))
        logger.info("reference logits (eager fp32) on %s ...", result.agreement_images)
        step = max(config.batch_sizes)
        reference_logits = _logits(model, agree_x, step)
        if labels is not None:
            result.reference_accuracy = _accuracy(reference_logits, labels)
        _measure_rows(config, model, pairs, images, (agree_x, reference_logits, labels), result, deadline)
        if time.perf_counter() < deadline:
            logger.info("measuring GEMM peaks again (the higher value is kept) ...")
            peaks = merge_peaks(
                peaks_before, measure_peaks(config.threads, n=config.peak_size, precisions=config.precisions)
            )
        else:
            peaks = peaks_before
    result.peaks = {p: {"gflops": v.gflops, "engine": v.engine, "emulated": v.emulated} for p, v in peaks.items()}
    apply_peaks(result.rows, peaks, result.model_gflop_per_image)
    if config.json_path:
        from ..util import atomic_open

        with atomic_open(config.json_path, "w") as f:
            f.write(json.dumps(result.to_dict(), indent=1))
        logger.info("wrote %s", config.json_path)
    return result


def _accuracy(logits: Tensor, labels: Sequence[int]) -> float:
    from ..export.driver import accuracy

    return accuracy(logits, labels)


def _measure_rows(
    config: BenchConfig,
    model: torch.nn.Module,
    pairs: Sequence[tuple[str, str]],
    images: Tensor,
    agreement: tuple[Tensor, Tensor, list[int] | None],
    result: BenchResult,
    deadline: float = math.inf,
) -> None:
    """Build each runner, measure its agreement, then time it at every batch size (progress on the log); past
    ``deadline`` (``time.perf_counter()``) the rows not started are skipped with a note."""
    from ..export.driver import _logits, compare

    agree_x, reference_logits, labels = agreement
    total, done = len(pairs) * len(config.batch_sizes), 0
    reference: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[str, Path] = {}
        for backend, precision in pairs:
            if time.perf_counter() > deadline and (backend, precision) != REFERENCE:
                left = [f"{b} {p}" for b, p in pairs[pairs.index((backend, precision)) :]]
                result.notes.append(f"time budget of {config.time_budget:.0f} s spent: skipped " + ", ".join(left))
                logger.warning("time budget of %.0f s spent: skipping %s", config.time_budget, ", ".join(left))
                break
            logger.info("preparing %s %s ...", backend, precision)
            try:
                runner = make_runner(backend, precision, model, config, Path(tmp), cache)
            except ResnextError as exc:
                if (backend, precision) == REFERENCE:
                    raise
                result.notes.append(f"{backend} {precision} skipped: {exc}")
                done += len(config.batch_sizes)
                continue
            logits = _logits(runner, agree_x, max(config.batch_sizes))
            parity = compare(reference_logits, logits, "agreement images", None)
            for batch_size in config.batch_sizes:
                done += 1
                started = time.perf_counter()
                logger.info("[%d/%d] %s %s batch %d ...", done, total, backend, precision, batch_size)
                batch = images.repeat((batch_size + len(images) - 1) // len(images), 1, 1, 1)[:batch_size]
                times = time_calls(
                    functools.partial(runner, batch),
                    warmup=config.warmup,
                    min_iters=config.min_iters,
                    min_time=config.min_time,
                    deadline=deadline,
                )
                row = summarise(backend, precision, batch_size, times)
                if (backend, precision) == REFERENCE:
                    reference[batch_size] = row.images_per_s
                row.ratio = row.images_per_s / reference[batch_size]
                row.ran_precision = ran_precision(runner, precision)
                row.agreement, row.max_abs_diff = parity.top1_agreement, parity.max_abs_diff
                row.accuracy = None if labels is None else _accuracy(logits, labels)
                result.rows.append(row)
                logger.info(
                    "[%d/%d] %s %s batch %d: %.2f img/s, x%.2f, agreement %.1f%% (%.0f s)",
                    done,
                    total,
                    backend,
                    precision,
                    batch_size,
                    row.images_per_s,
                    row.ratio,
                    100 * row.agreement,
                    time.perf_counter() - started,
                )
