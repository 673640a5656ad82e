"""`resnext benchmark inference|training`."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from ..errors import ResnextError
from ..models import list_models
from .common import DEFAULT_ARCH, add_model_args

def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="measure inference or training speed against a same-run reference")
    kinds = p.add_subparsers(dest="benchmark", required=True, metavar="KIND")
    for add in BENCHMARK_PARSERS:
        add(kinds)


def add_benchmark_inference_parser(kinds: argparse._SubParsersAction) -> None:
    from ..bench.inference import SUPPORTED

    p = kinds.add_parser(
        "inference", help="latency and img/s per backend, precision and batch size vs PyTorch eager fp32",
        description="Backends: " + "; ".join(f"{b} ({', '.join(p)})" for b, p in SUPPORTED.items()) + ".",
    )
    p.add_argument("--arch", default=DEFAULT_ARCH, choices=list_models(), help="architecture (default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="FILE|URL", help="checkpoint (default: random weights; speed "
                   "does not depend on them)")
    p.add_argument("--backends", default="torch,onnxruntime,openvino", help="comma-separated (default: %(default)s)")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32,bf16,fp16,int8 (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1,16,64", help="comma-separated (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=224, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, help="intra-op threads for every runtime (default: each runtime's own)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per row (default: %(default)s)")
    p.add_argument("--min-iters", type=int, default=3, help="timed calls per row, at least (default: %(default)s)")
    p.add_argument("--min-time", type=float, default=2.0, help="timed seconds per row, at least (default: %(default)s)")
    p.add_argument("--calibration-dir", metavar="DIR", help="int8 calibration images (default: the packaged samples)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=run_benchmark_inference)


def run_benchmark_inference(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, parse_list, run_inference_benchmark

    config = BenchConfig(
        arch=args.arch, weights=args.weights, backends=parse_list(args.backends),
        precisions=parse_list(args.precision), batch_sizes=parse_list(args.batch_sizes, int),
        image_size=args.image_size, threads=args.threads, warmup=args.warmup, min_iters=args.min_iters,
        min_time=args.min_time, calibration_dir=args.calibration_dir, json_path=args.json,
    )
    print(run_inference_benchmark(config).table())
    return 0





def add_benchmark_training_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("training", help="training img/s: fp32 NCHW reference vs NHWC, bf16, torch.compile")
    p.add_argument("--arch", default=DEFAULT_ARCH, choices=list_models(), help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--image-size", type=int, default=224, help="(default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per setting (default: %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per setting (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    p.add_argument(
        "--precisions", default="fp32,bf16",
        help="comma-separated precisions to measure; the fp32 NCHW reference row always runs (default: %(default)s)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.set_defaults(func=run_benchmark_training)


def run_benchmark_training(args: argparse.Namespace) -> int:
    import json

    from ..train import DEFAULT_SETTINGS, benchmark_training, format_speed_table

    precisions = {p.strip() for p in args.precisions.split(",") if p.strip()}
    reference, *others = DEFAULT_SETTINGS
    settings = (reference,) + tuple(
        s for s in others if s.precision in precisions and not (args.no_compile and s.compile)
    )
    rows = benchmark_training(args.arch, batch_size=args.batch_size, image_size=args.image_size, warmup=args.warmup,
                              steps=args.steps, settings=settings, device=args.device)
    print(f"training speed: {args.arch}, batch {args.batch_size}, {args.image_size} px, synthetic data, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(format_speed_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0



BENCHMARK_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_benchmark_inference_parser, add_benchmark_training_parser,
]


def register(sub: argparse._SubParsersAction) -> None:
    add_benchmark_parser(sub)
