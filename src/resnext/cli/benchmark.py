"""`resnext benchmark inference|training|report|compare|serving|bulk`.

Every benchmark prints a table (or, with ``--json``, one JSON document on stdout) and can also write its JSON to
a file (``--json-file``/``-o``). Numbers are checked when the command line is parsed: a bad value is one line on
stderr and exit status 2, before anything is measured. Each row logs its progress on stderr (rows take minutes).
"""

from __future__ import annotations

import argparse
import sys

from ..bench.bulk import BulkBenchConfig
from ..bench.compare import CompareConfig
from ..bench.report import ReportConfig
from ..bench.serving import ServingConfig
from ..bench.settings import BenchConfig
from ..bench.training import TrainingBenchConfig
from ..bulk.engine import ModelSpec
from ..model.sources import DEFAULT_ARCH
from ..options import add_options, options_from
from .common import add_command, add_json, add_json_file, check_output, emit, model_spec, say


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="measure inference or training speed against a same-run reference")
    kinds = p.add_subparsers(dest="benchmark", required=True, metavar="KIND")
    for add in BENCHMARK_PARSERS:
        add(kinds)


def add_output_args(p: argparse.ArgumentParser) -> None:
    """``--json`` and ``--json-file``: every benchmark prints a table or JSON, and can write the JSON."""
    add_json(p)
    add_json_file(p)


def add_benchmark_inference_parser(kinds: argparse._SubParsersAction) -> None:
    """Options of :class:`BenchConfig`."""
    from ..bench.inference import SUPPORTED

    p = add_command(kinds, "inference", run_benchmark_inference)
    p.description += " Backends: " + "; ".join(f"{b} ({', '.join(ps)})" for b, ps in SUPPORTED.items()) + "."
    add_options(p, BenchConfig)
    add_output_args(p)


def run_benchmark_inference(args: argparse.Namespace) -> int:
    """Latency and img/s per backend, precision and batch size vs PyTorch eager fp32.

    About 2 minutes per backend and precision for resnext101_32x4d on 2 cores at the default batch sizes.
    """
    from ..bench import run_inference_benchmark

    check_output(args)
    result = run_inference_benchmark(options_from(BenchConfig, args))
    emit(args, result.to_dict(), result.table())
    return 0


def add_benchmark_training_parser(kinds: argparse._SubParsersAction) -> None:
    """Options of :class:`TrainingBenchConfig`."""
    p = add_command(kinds, "training", run_benchmark_training)
    add_options(p, TrainingBenchConfig)
    add_output_args(p)


def run_benchmark_training(args: argparse.Namespace) -> int:
    """Training img/s: fp32 NCHW reference vs NHWC, bf16, torch.compile."""
    from ..bench.report import training_rows
    from ..bench.training import format_speed_table

    check_output(args)
    c = options_from(TrainingBenchConfig, args)
    rows = training_rows(
        c.arch,
        batch_size=c.batch_size,
        image_size=c.image_size,
        warmup=c.warmup,
        steps=c.steps,
        precisions=set(c.precisions),
        compile=c.compile,
        device=c.device,
    )
    header = (
        f"training speed: {c.arch}, batch {c.batch_size}, {c.image_size} px, synthetic data, "
        f"{c.steps} timed steps after {c.warmup} warm-up"
    )
    emit(args, rows, header + "\n" + format_speed_table(rows))
    return 0


def add_benchmark_report_parser(kinds: argparse._SubParsersAction) -> None:
    """Options of :class:`ReportConfig`."""
    p = add_command(kinds, "report", run_benchmark_report)
    add_options(p, ReportConfig)
    add_output_args(p)


def run_benchmark_report(args: argparse.Namespace) -> int:
    """One regression record (versions, machine, accuracy, inference and training rows), appended to the history.

    About 10 minutes with the defaults on 2 cores (--quick: ~1 minute).
    """
    from ..bench.report import append_record, format_record, make_record

    check_output(args)
    config = ReportConfig.from_args(args)
    record = make_record(config)
    if config.append:
        append_record(record, config.history)
        print(f"resnext: appended to {config.history}", file=sys.stderr)
    emit(args, record, format_record(record))
    return 0


def add_benchmark_compare_parser(kinds: argparse._SubParsersAction) -> None:
    """Options of :class:`CompareConfig`."""
    from ..bench.compare import ACCURACY_DROP, RATIO_DROP

    p = add_command(kinds, "compare", run_benchmark_compare)
    p.description += (
        f" Regression: top-1/top-5 accuracy down more than {100 * ACCURACY_DROP:.1f} point, or a speed ratio (vs "
        f"the same run's eager fp32) down more than {100 * RATIO_DROP:.0f}%."
    )
    add_options(p, CompareConfig)
    add_output_args(p)


def run_benchmark_compare(args: argparse.Namespace) -> int:
    """The latest record vs the last comparable one; exit 1 on a regression or a value it cannot compare.

    Comparable: same machine class (CPU model and flags, or GPU), architecture, image size and data.
    """
    from ..bench.compare import compare_latest, plot_history

    check_output(args)
    config = options_from(CompareConfig, args)
    comparison = compare_latest(config.history)
    if config.plot:
        path = plot_history(config.history, config.plot)
        print(f"resnext: wrote {path}", file=sys.stderr)
    emit(args, comparison.to_dict(), comparison.table())
    return comparison.exit_status


def add_benchmark_bulk_parser(kinds: argparse._SubParsersAction) -> None:
    """Options of :class:`BulkBenchConfig` and its :class:`ModelSpec` (random weights by default)."""
    p = add_command(kinds, "bulk", run_benchmark_bulk)
    add_options(p, BulkBenchConfig)
    add_options(p, ModelSpec, skip=("channels_last", "threads"), defaults={"arch": DEFAULT_ARCH, "weights": None})
    add_output_args(p)


def run_benchmark_bulk(args: argparse.Namespace) -> int:
    """End-to-end img/s of the local and Ray engines vs model-only throughput.

    Read -> decode -> model -> write over DIR, for each engine, against the model alone on the same runtime and
    precision (same run). Goals: local >= 90% of model only, Ray >= 80% of local.
    """
    from ..bench.bulk import run_bulk_benchmark

    check_output(args)
    result = run_bulk_benchmark(options_from(BulkBenchConfig, args, spec=model_spec(args)))
    emit(args, result.to_dict(), result.table())
    return 0


def add_benchmark_serving_parser(kinds: argparse._SubParsersAction) -> None:
    """Options of :class:`ServingConfig` and its :class:`ModelSpec` (random weights by default)."""
    p = add_command(kinds, "serving", run_benchmark_serving)
    add_options(p, ServingConfig)
    add_options(p, ModelSpec, skip=("channels_last", "threads"), defaults={"arch": DEFAULT_ARCH, "weights": "random"})
    add_output_args(p)


def run_benchmark_serving(args: argparse.Namespace) -> int:
    """Triton load test: req/s and p50/p95/p99 per concurrency vs the same model in-process.

    Without --url, starts `resnext serve` on free loopback ports with the model arguments below; the in-process
    reference always uses them (random weights by default: speed does not depend on them).
    """
    from ..bench.serving import run_serving_benchmark
    from ..serve.tritonserver import require_serving

    require_serving()
    check_output(args)
    result = run_serving_benchmark(options_from(ServingConfig, args, spec=model_spec(args)), progress=say)
    emit(args, result.to_dict(), result.table())
    return 0


BENCHMARK_PARSERS = (
    add_benchmark_inference_parser,
    add_benchmark_training_parser,
    add_benchmark_report_parser,
    add_benchmark_compare_parser,
    add_benchmark_serving_parser,
    add_benchmark_bulk_parser,
)
PARSERS = (add_benchmark_parser,)
