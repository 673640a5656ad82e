"""`resnext benchmark inference|training|report|compare|serving|bulk`.

Every benchmark prints a table (or, with ``--json``, one JSON document on stdout) and can also write its JSON to
a file (``--json-file``/``-o``). Numbers are checked when the command line is parsed: a bad value is one line on
stderr and exit status 2, before anything is measured. Each row logs its progress on stderr (rows take minutes).
"""

from __future__ import annotations

import argparse
import sys

from .common import (
    DEFAULT_ARCH,
    add_command,
    add_flags,
    add_model_args,
    add_runtime_args,
    check_output,
    emit,
    model_spec,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    positive_int_list,
    say,
)

_TRAINING_STEPS_HELP = "timed training steps per setting; 0 skips training rows (default: %(default)s)"
_QUICK_HELP = (
    "resnext_test at 64 px unless --arch/--image-size say otherwise: checks the harness, not the model (recorded as "
    "such)"
)


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="measure inference or training speed against a same-run reference")
    kinds = p.add_subparsers(dest="benchmark", required=True, metavar="KIND")
    for add in BENCHMARK_PARSERS:
        add(kinds)


def add_inference_args(p: argparse.ArgumentParser, *, precisions: str, batch_sizes: list[int]) -> None:
    """The measurement settings shared by ``inference`` and ``report``."""
    p.add_argument("--backends", default="torch,onnxruntime,openvino", help="comma-separated (default: %(default)s)")
    p.add_argument(
        "--precision", default=precisions, help="comma-separated: fp32,bf16,fp16,int8 (default: %(default)s)"
    )
    p.add_argument(
        "--batch-sizes",
        type=positive_int_list,
        default=batch_sizes,
        metavar="N,N,...",
        help=f"(default: {','.join(map(str, batch_sizes))})",
    )
    add_flags(p, "warmup", "calibration_dir", "json", "json_file", image_size=224)
    add_flags(p, threads={"help": "threads for every runtime and the peak GEMMs"})
    p.add_argument(
        "--min-iters", type=positive_int, default=3, help="timed calls per row, at least (default: %(default)s)"
    )
    p.add_argument(
        "--min-time",
        type=non_negative_float,
        default=2.0,
        help="timed seconds per row, at least (default: %(default)s)",
    )
    p.add_argument(
        "--time-budget",
        type=positive_float,
        default=1800.0,
        metavar="S",
        help="seconds for all inference rows and peaks: once spent, the row being timed stops after one call and "
        "the rest are skipped with a note; the JSON is still written (default: %(default)s)",
    )


def add_benchmark_inference_parser(kinds: argparse._SubParsersAction) -> None:
    from ..bench.inference import SUPPORTED

    p = add_command(kinds, "inference", run_benchmark_inference)
    p.description += " Backends: " + "; ".join(f"{b} ({', '.join(ps)})" for b, ps in SUPPORTED.items()) + "."
    add_model_args(p, arch=DEFAULT_ARCH, weights=None)
    add_inference_args(p, precisions="fp32", batch_sizes=[1, 16, 64])
    p.add_argument(
        "--agreement-dir",
        metavar="DIR",
        help="images for the agreement column; a labelled folder "
        "(class sub-folders) adds accuracy (default: the packaged samples)",
    )


def run_benchmark_inference(args: argparse.Namespace) -> int:
    """Latency and img/s per backend, precision and batch size vs PyTorch eager fp32.

    About 2 minutes per backend and precision for resnext101_32x4d on 2 cores at the default batch sizes.
    """
    from ..bench import BenchConfig, parse_list, run_inference_benchmark
    from ..util import call_with

    check_output(args)
    config = call_with(BenchConfig, args, backends=parse_list(args.backends), precisions=parse_list(args.precision))
    result = run_inference_benchmark(config)
    emit(args, result.to_dict(), result.table())
    return 0


def add_benchmark_training_parser(kinds: argparse._SubParsersAction) -> None:
    p = add_command(kinds, "training", run_benchmark_training)
    add_flags(p, "batch_size", "device", "json", "json_file", arch=DEFAULT_ARCH, image_size=224)
    add_flags(p, warmup={"help": "untimed steps per setting"})
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps per setting (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    p.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma-separated precisions to measure; the fp32 NCHW reference row always runs (default: %(default)s)",
    )


def run_benchmark_training(args: argparse.Namespace) -> int:
    """Training img/s: fp32 NCHW reference vs NHWC, bf16, torch.compile."""
    from ..bench.report import training_rows
    from ..bench.training import format_speed_table
    from ..util import call_with

    check_output(args)
    precisions = {p.strip() for p in args.precisions.split(",") if p.strip()}
    rows = call_with(training_rows, args, precisions=precisions, compile=not args.no_compile)
    header = (
        f"training speed: {args.arch}, batch {args.batch_size}, {args.image_size} px, synthetic data, "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    emit(args, rows, header + "\n" + format_speed_table(rows))
    return 0


def add_benchmark_report_parser(kinds: argparse._SubParsersAction) -> None:
    from ..bench.report import DEFAULT_HISTORY

    p = add_command(kinds, "report", run_benchmark_report)
    p.add_argument(
        "--data",
        metavar="LABELLED_DIR",
        help="labelled images (class sub-folders): top-1/top-5 accuracy, and agreement of every runtime",
    )
    add_model_args(p, weights=None)
    p.add_argument("--history", default=DEFAULT_HISTORY, metavar="FILE.jsonl", help="(default: %(default)s)")
    add_inference_args(p, precisions="fp32,bf16,int8", batch_sizes=[1, 16])
    p.add_argument("--training-steps", type=non_negative_int, default=3, help=_TRAINING_STEPS_HELP)
    p.add_argument("--quick", action="store_true", help=_QUICK_HELP)
    p.add_argument("--no-append", action="store_true", help="print the record without appending it to the history")


def run_benchmark_report(args: argparse.Namespace) -> int:
    """One regression record (versions, machine, accuracy, inference and training rows), appended to the history.

    About 10 minutes with the defaults on 2 cores (--quick: ~1 minute).
    """
    from ..bench.report import ReportConfig, append_record, format_record, make_record

    check_output(args)
    config = ReportConfig.from_args(args)
    record = make_record(config)
    if not args.no_append:
        append_record(record, args.history)
        print(f"resnext: appended to {args.history}", file=sys.stderr)
    emit(args, record, format_record(record))
    return 0


def add_benchmark_compare_parser(kinds: argparse._SubParsersAction) -> None:
    from ..bench.compare import ACCURACY_DROP, RATIO_DROP
    from ..bench.report import DEFAULT_HISTORY, DEFAULT_PLOT

    p = add_command(kinds, "compare", run_benchmark_compare)
    p.description += (
        f" Regression: top-1/top-5 accuracy down more than {100 * ACCURACY_DROP:.1f} point, or a speed ratio (vs "
        f"the same run's eager fp32) down more than {100 * RATIO_DROP:.0f}%."
    )
    p.add_argument("--history", default=DEFAULT_HISTORY, metavar="FILE.jsonl", help="(default: %(default)s)")
    p.add_argument(
        "--plot", default=DEFAULT_PLOT, metavar="PNG", help="history plot (default: %(default)s; '' to skip)"
    )
    add_flags(p, "json", "json_file")


def run_benchmark_compare(args: argparse.Namespace) -> int:
    """The latest record vs the last comparable one; exit 1 on a regression or a value it cannot compare.

    Comparable: same machine class (CPU model and flags, or GPU), architecture, image size and data.
    """
    from ..bench.compare import compare_latest, plot_history

    check_output(args)
    comparison = compare_latest(args.history)
    if args.plot:
        path = plot_history(args.history, args.plot)
        print(f"resnext: wrote {path}", file=sys.stderr)
    emit(args, comparison.to_dict(), comparison.table())
    return comparison.exit_status


def add_benchmark_bulk_parser(kinds: argparse._SubParsersAction) -> None:
    p = add_command(kinds, "bulk", run_benchmark_bulk)
    p.add_argument("folder", metavar="DIR", help="images to run over")
    p.add_argument("--engine", default="local", help="comma-separated: local,ray (default: %(default)s)")
    p.add_argument("--task", choices=["classify", "embed"], default="classify", help="(default: %(default)s)")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
    add_model_args(p, arch=DEFAULT_ARCH, weights=None)
    add_runtime_args(p)
    add_flags(p, "image_size", "batch_size", "workers", "json", "json_file", actors=1, cpus_per_actor=1.0)


def run_benchmark_bulk(args: argparse.Namespace) -> int:
    """End-to-end img/s of the local and Ray engines vs model-only throughput.

    Read -> decode -> model -> write over DIR, for each engine, against the model alone on the same runtime and
    precision (same run). Goals: local >= 90% of model only, Ray >= 80% of local.
    """
    from ..bench.bulk import BulkBenchConfig, run_bulk_benchmark
    from ..util import call_with

    check_output(args)
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    result = run_bulk_benchmark(call_with(BulkBenchConfig, args, engines=engines, spec=model_spec(args)))
    emit(args, result.to_dict(), result.table())
    return 0


def add_benchmark_serving_parser(kinds: argparse._SubParsersAction) -> None:
    p = add_command(kinds, "serving", run_benchmark_serving)
    p.add_argument("--url", help="host:port of a running server's HTTP (or gRPC) endpoint (default: start one)")
    p.add_argument("--metrics-url", help="Prometheus endpoint (default: http://<host>:8002/metrics)")
    p.add_argument("--concurrency", type=positive_int_list, default=[1, 2, 4, 8, 16], help="(default: 1,2,4,8,16)")
    p.add_argument(
        "--duration", type=positive_float, default=10.0, help="measured seconds per level (default: %(default)s)"
    )
    p.add_argument("--input", default="tensor", choices=["tensor", "image"], help="(default: %(default)s)")
    p.add_argument("--model", help="model name on the server (default: <arch> or <arch>_image)")
    add_model_args(p, arch=DEFAULT_ARCH, weights="random")
    add_runtime_args(p)
    add_flags(p, "protocol", "image_size", "max_batch_size", "max_queue_delay_us", "instances", "json", "json_file")
    add_flags(
        p, warmup={"type": non_negative_float, "default": 2.0, "metavar": "S", "help": "unmeasured seconds per level"}
    )


def run_benchmark_serving(args: argparse.Namespace) -> int:
    """Triton load test: req/s and p50/p95/p99 per concurrency vs the same model in-process.

    Without --url, starts `resnext serve` on free loopback ports with the model arguments below; the in-process
    reference always uses them (random weights by default: speed does not depend on them).
    """
    from ..bench.serving import ServingConfig, run_serving_benchmark
    from ..serve.tritonserver import require_serving
    from ..util import call_with

    require_serving()
    check_output(args)
    result = run_serving_benchmark(call_with(ServingConfig, args, spec=model_spec(args)), progress=say)
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
