"""`resnext benchmark inference|training|report|compare`.

Every benchmark prints a table (or, with ``--json``, one JSON document on stdout) and can also write its JSON to
a file (``--json-file``/``-o``). Numbers are checked when the command line is parsed: a bad value is one line on
stderr and exit status 2, before anything is measured. Each row logs its progress on stderr (rows take minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn

from ..models import list_models
from .common import DEFAULT_ARCH

# ---------------------------------------------------------------------------------------------------------------
# Parse-time validation


def _one_line_error(self: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's error without the usage block: one line, exit 2 (the CLI's rule for user mistakes)."""
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind: type, low: float, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value >= low:  # also rejects NaN
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


positive_int = _number(int, 1, "an integer >= 1")
non_negative_int = _number(int, 0, "an integer >= 0")
non_negative_float = _number(float, 0.0, "a number >= 0")


def positive_int_list(text: str) -> list[int]:
    """``"1,16,64"`` -> ``[1, 16, 64]``, each at least 1."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers >= 1, got {text!r}")
    return [positive_int(t) for t in items]


def add_output_args(p: argparse.ArgumentParser) -> None:
    """``--json`` (JSON on stdout instead of the table) and ``--json-file``/``-o`` (also write it to a file)."""
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout instead of the table")
    p.add_argument("-o", "--json-file", metavar="PATH", help="also write the result as JSON to PATH")


def emit(args: argparse.Namespace, document: Any, table: str) -> None:
    """Print the table or the JSON document, and write the JSON file when asked (atomically)."""
    from ..util import atomic_open

    text = json.dumps(document, indent=1, default=str)
    print(text if args.json else table)
    if args.json_file:
        with atomic_open(args.json_file, "w") as f:
            f.write(text + "\n")
        print(f"resnext: wrote {args.json_file}", file=sys.stderr)


def check_output(args: argparse.Namespace) -> None:
    """Fail before minutes of measuring when the JSON file cannot be written."""
    if getattr(args, "json_file", None):
        from ..util import check_writable

        check_writable(args.json_file, "--json-file")


def _kind_parser(kinds: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    p = kinds.add_parser(name, **kwargs)
    p.error = types.MethodType(_one_line_error, p)  # type: ignore[method-assign]
    return p


# ---------------------------------------------------------------------------------------------------------------
# Commands


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="measure inference or training speed against a same-run reference")
    kinds = p.add_subparsers(dest="benchmark", required=True, metavar="KIND")
    for add in BENCHMARK_PARSERS:
        add(kinds)


def add_inference_args(p: argparse.ArgumentParser) -> None:
    """The measurement settings shared by ``inference`` and ``report``."""
    p.add_argument(
        "--image-size", type=_number(int, 32, "an integer >= 32"), default=224, help="(default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        help="threads for every runtime and the peak GEMMs (default: PyTorch's setting, one per core)",
    )
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls per row (default: %(default)s)")
    p.add_argument(
        "--min-iters", type=positive_int, default=3, help="timed calls per row, at least (default: %(default)s)"
    )
    p.add_argument(
        "--min-time",
        type=non_negative_float,
        default=2.0,
        help="timed seconds per row, at least (default: %(default)s)",
    )
    p.add_argument("--calibration-dir", metavar="DIR", help="int8 calibration images (default: the packaged samples)")


def add_benchmark_inference_parser(kinds: argparse._SubParsersAction) -> None:
    from ..bench.inference import SUPPORTED

    p = _kind_parser(
        kinds,
        "inference",
        help="latency and img/s per backend, precision and batch size vs PyTorch eager fp32",
        description="Backends: " + "; ".join(f"{b} ({', '.join(p)})" for b, p in SUPPORTED.items()) + ". "
        "About 2 minutes per backend and precision for resnext101_32x4d on 2 cores at the default batch sizes.",
    )
    p.add_argument("--arch", default=DEFAULT_ARCH, choices=list_models(), help="architecture (default: %(default)s)")
    p.add_argument(
        "--weights",
        default=None,
        metavar="FILE|URL",
        help="checkpoint (default: random weights; speed does not depend on them, agreement does)",
    )
    p.add_argument("--backends", default="torch,onnxruntime,openvino", help="comma-separated (default: %(default)s)")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32,bf16,fp16,int8 (default: %(default)s)")
    p.add_argument(
        "--batch-sizes",
        type=positive_int_list,
        default=[1, 16, 64],
        metavar="N,N,...",
        help="comma-separated (default: 1,16,64)",
    )
    add_inference_args(p)
    p.add_argument(
        "--agreement-dir",
        metavar="DIR",
        help="images for the agreement column; a labelled folder "
        "(class sub-folders) adds accuracy (default: the packaged samples)",
    )
    add_output_args(p)
    p.set_defaults(func=run_benchmark_inference)


def run_benchmark_inference(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, parse_list, run_inference_benchmark

    check_output(args)
    config = BenchConfig(
        arch=args.arch,
        weights=args.weights,
        backends=parse_list(args.backends),
        precisions=parse_list(args.precision),
        batch_sizes=args.batch_sizes,
        image_size=args.image_size,
        threads=args.threads,
        warmup=args.warmup,
        min_iters=args.min_iters,
        min_time=args.min_time,
        calibration_dir=args.calibration_dir,
        agreement_dir=args.agreement_dir,
    )
    result = run_inference_benchmark(config)
    emit(args, result.to_dict(), result.table())
    return 0


def add_benchmark_training_parser(kinds: argparse._SubParsersAction) -> None:
    p = _kind_parser(kinds, "training", help="training img/s: fp32 NCHW reference vs NHWC, bf16, torch.compile")
    p.add_argument("--arch", default=DEFAULT_ARCH, choices=list_models(), help="(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="(default: %(default)s)")
    p.add_argument(
        "--image-size", type=_number(int, 32, "an integer >= 32"), default=224, help="(default: %(default)s)"
    )
    p.add_argument(
        "--warmup", type=non_negative_int, default=2, help="untimed steps per setting (default: %(default)s)"
    )
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps per setting (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    p.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma-separated precisions to measure; the fp32 NCHW reference row always runs (default: %(default)s)",
    )
    add_output_args(p)
    p.set_defaults(func=run_benchmark_training)


def run_benchmark_training(args: argparse.Namespace) -> int:
    from ..bench.report import training_rows
    from ..bench.training import format_speed_table

    check_output(args)
    precisions = {p.strip() for p in args.precisions.split(",") if p.strip()}
    rows = training_rows(
        args.arch,
        batch_size=args.batch_size,
        image_size=args.image_size,
        warmup=args.warmup,
        steps=args.steps,
        precisions=precisions,
        compile=not args.no_compile,
        device=args.device,
    )
    header = (
        f"training speed: {args.arch}, batch {args.batch_size}, {args.image_size} px, synthetic data, "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    emit(args, rows, header + "\n" + format_speed_table(rows))
    return 0


def add_benchmark_report_parser(kinds: argparse._SubParsersAction) -> None:
    from ..bench.report import DEFAULT_HISTORY

    p = _kind_parser(
        kinds,
        "report",
        help="one regression record (versions, machine, accuracy, inference and training rows), "
        "appended to the history",
        description="About 10 minutes with the defaults on 2 cores (--quick: ~1 minute).",
    )
    p.add_argument(
        "--data",
        metavar="LABELLED_DIR",
        help="labelled images (class sub-folders): top-1/top-5 accuracy, and agreement of every runtime",
    )
    p.add_argument("--weights", default=None, metavar="SRC", help="model source (default: random weights)")
    p.add_argument(
        "--arch", default=None, choices=list_models(), help=f"(default: the checkpoint's, else {DEFAULT_ARCH})"
    )
    p.add_argument("--history", default=DEFAULT_HISTORY, metavar="FILE.jsonl", help="(default: %(default)s)")
    p.add_argument("--backends", default="torch,onnxruntime,openvino", help="comma-separated (default: %(default)s)")
    p.add_argument("--precision", default="fp32,bf16,int8", help="comma-separated (default: %(default)s)")
    p.add_argument("--batch-sizes", type=positive_int_list, default=[1, 16], metavar="N,N,...", help="(default: 1,16)")
    add_inference_args(p)
    p.add_argument(
        "--training-steps",
        type=non_negative_int,
        default=3,
        help="timed training steps per setting; 0 skips training rows (default: %(default)s)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="resnext_test at 64 px unless --arch/--image-size say "
        "otherwise: checks the harness, not the model (recorded as such)",
    )
    p.add_argument("--no-append", action="store_true", help="print the record without appending it to the history")
    add_output_args(p)
    p.set_defaults(func=run_benchmark_report)


def run_benchmark_report(args: argparse.Namespace) -> int:
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
    from ..bench.report import ACCURACY_DROP, DEFAULT_HISTORY, DEFAULT_PLOT, RATIO_DROP

    p = _kind_parser(
        kinds,
        "compare",
        help="the latest record vs the last comparable one; exit 1 on a regression",
        description=f"Regression: top-1/top-5 accuracy down more than {100 * ACCURACY_DROP:.1f} point, or a speed "
        f"ratio (vs the same run's eager fp32) down more than {100 * RATIO_DROP:.0f}%. Comparable: same machine "
        "class (CPU model and flags, or GPU), architecture, image size and data.",
    )
    p.add_argument("--history", default=DEFAULT_HISTORY, metavar="FILE.jsonl", help="(default: %(default)s)")
    p.add_argument(
        "--plot", default=DEFAULT_PLOT, metavar="PNG", help="history plot (default: %(default)s; '' to skip)"
    )
    add_output_args(p)
    p.set_defaults(func=run_benchmark_compare)


def run_benchmark_compare(args: argparse.Namespace) -> int:
    from ..bench.report import compare_latest, plot_history

    check_output(args)
    comparison = compare_latest(args.history)
    if args.plot:
        path = plot_history(args.history, args.plot)
        print(f"resnext: wrote {path}", file=sys.stderr)
    emit(args, comparison.to_dict(), comparison.table())
    return 1 if comparison.regressions else 0


from .embed import add_benchmark_bulk_parser  # noqa: E402 - `resnext benchmark bulk` lives beside `resnext embed`
from .serve import add_benchmark_serving_parser  # noqa: E402 - `resnext benchmark serving` lives with serve

BENCHMARK_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_benchmark_inference_parser,
    add_benchmark_training_parser,
    add_benchmark_report_parser,
    add_benchmark_compare_parser,
    add_benchmark_serving_parser,
    add_benchmark_bulk_parser,
]


def register(sub: argparse._SubParsersAction) -> None:
    add_benchmark_parser(sub)
