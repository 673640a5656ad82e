"""``resnext`` command line: argument parsing only; each command calls into the library modules.

User mistakes (bad paths, unreachable weights, corrupt images, ...) raise :class:`resnext.errors.ResnextError`;
``main`` prints its message as one line on stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from .errors import ResnextError
from .models import list_models

DEFAULT_ARCH = "resnext101_32x4d"


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default=DEFAULT_ARCH, choices=list_models(), help="architecture (default: %(default)s)")
    parser.add_argument(
        "--weights", default=None, metavar="FILE|URL",
        help="checkpoint file or URL; default: the published NGC weights (cached in $TORCH_HOME/hub/checkpoints)",
    )


# ---------------------------------------------------------------------------------------------------------------
# classify


def add_classify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify", help="classify images, folders of images or image URLs",
        description="Print the top-k ImageNet classes of each input. Exit status 1 if any input could not be read.",
    )
    p.add_argument(
        "inputs", nargs="*", metavar="PATH|URL|DIR",
        help="image files, folders (searched recursively) or http(s) URLs; default: the bundled sample photos",
    )
    _add_model_args(p)
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="(default: %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="run the model in NHWC memory format")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    p.add_argument("--plot", metavar="OUT.png", help="also write one PNG: each image beside a bar chart of its top-k")
    p.add_argument(
        "--backend", default="torch", choices=["torch", "onnxruntime", "openvino", "tensorrt"],
        help="inference runtime; all but torch run an exported --model-file (default: %(default)s)",
    )
    p.add_argument("--model-file", metavar="PATH", help="exported model for the non-torch backends")
    p.add_argument(
        "--image-size", type=int, default=None,
        help="center-crop size the model was trained at (default: an exported file's input size, else 224)",
    )
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (for fine-tuned models)")
    p.add_argument(
        "--workers", type=int, default=2, help="background processes decoding images; 0 = none (default: %(default)s)"
    )
    p.set_defaults(func=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .labels import read_label_file
    from .predict import (
        Predictor, classify_sources, find_images, format_json, format_table, plot_predictions, sample_images,
    )

    sources = find_images(args.inputs) if args.inputs else sample_images()
    if not sources:
        raise ResnextError(f"no images found in {', '.join(args.inputs)}")
    categories = read_label_file(args.labels) if args.labels else None
    predictor = Predictor.from_pretrained(
        args.arch, weights=args.weights, backend=args.backend, model_file=args.model_file, device=args.device,
        precision=args.precision, channels_last=args.channels_last, categories=categories, image_size=args.image_size,
    )
    results, failed = [], 0
    for result in classify_sources(
        predictor, sources, topk=args.topk, batch_size=args.batch_size, workers=args.workers
    ):
        # tqdm.write lifts the progress bar (on stderr) out of the way instead of splicing text into it.
        if result.error is not None:
            failed += 1
            tqdm.write(f"resnext: skipped: {result.error}", file=sys.stderr)
            continue
        tqdm.write(format_json(result) if args.json else format_table(result) + "\n", file=sys.stdout)
        results.append(result)
    if args.plot:
        path = plot_predictions(results, args.plot)
        print(f"resnext: wrote {path}", file=sys.stderr)
    if failed:
        print(f"resnext: {failed} of {len(sources)} inputs could not be classified", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------------------
# train


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from .train import add_train_arguments

    p = sub.add_parser(
        "train", help="train or fine-tune on an ImageFolder tree (works under torchrun)",
        description="Train or fine-tune. Flags keep NVIDIA's names; --recipe sets NVIDIA's hyper-parameters and "
        "explicit flags override it. Multi-GPU/CPU: torchrun --nproc_per_node N -m resnext.cli train ...",
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .train import config_from_args, train

    return int(train(config_from_args(args))["exit_code"])


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

    from .train import DEFAULT_SETTINGS, benchmark_training, format_speed_table

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


# ---------------------------------------------------------------------------------------------------------------
# evaluate


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5/loss of weights on an ImageFolder tree (works under torchrun)")
    p.add_argument("data", metavar="DATA_DIR/val", help="folder with <class>/<image> (class names as in training)")
    p.add_argument("--arch", default=None, choices=list_models(),
                   help="architecture (default: the checkpoint's, else %s)" % DEFAULT_ARCH)
    p.add_argument("--weights", default=None, metavar="FILE|URL",
                   help="weights or training checkpoint; default: the published NGC weights")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--batch-size", "-b", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="(default: %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="run the model in NHWC memory format")
    p.add_argument(
        "--image-size", type=int, default=None,
        help="center crop; resize to size + 32 first (default: the training checkpoint's size, else 224)",
    )
    p.add_argument("--workers", "-j", type=int, default=4, help="data loading processes (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--output", "-o", default="evaluation.json", help="JSON results file (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    import os

    from .evaluate import evaluate_folder

    r = evaluate_folder(
        args.data, arch=args.arch, weights=args.weights, use_ema=args.ema, batch_size=args.batch_size,
        precision=args.precision, channels_last=args.channels_last, image_size=args.image_size, workers=args.workers,
        device=args.device, output=args.output, progress=args.progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{r['arch']} on {r['data']}: top-1 {r['val.top1']:.2f}%  top-5 {r['val.top5']:.2f}%  "
              f"loss {r['val.loss']:.4f}  ({r['val.count']} images, {r['val.total_ips']:.1f} img/s, "
              f"{r['val.skipped_images']} unreadable); wrote {args.output}")
    return 1 if r["val.skipped_images"] else 0


# ---------------------------------------------------------------------------------------------------------------
# export-weights


def add_export_weights_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-weights", help="plain (or EMA) weights out of a training checkpoint")
    p.add_argument("checkpoint", metavar="CKPT", help="training checkpoint (e.g. runs/train/best.pth)")
    p.add_argument("output", metavar="OUT", help="flat state_dict file, loadable with --weights / pretrained_from_file")
    p.add_argument("--ema", action="store_true", help="export the EMA weights (state_dict_ema)")
    p.set_defaults(func=run_export_weights)


def run_export_weights(args: argparse.Namespace) -> int:
    from .train import export_weights

    path = export_weights(args.checkpoint, args.output, ema=args.ema)
    print(f"resnext: wrote {'EMA ' if args.ema else ''}weights to {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# export


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    from .export import FORMATS

    p = sub.add_parser(
        "export", help="export to ONNX, torch.export, TorchScript, OpenVINO or TensorRT, parity-checked vs PyTorch",
        description="Write an exported model, reload it in its runtime and compare it with PyTorch fp32. "
        "Precisions per format: " + "; ".join(f"{f}: {', '.join(p)}" for f, p in FORMATS.items()) + ".",
    )
    p.add_argument("--format", required=True, choices=list(FORMATS), help="onnx, export (.pt2), torchscript, openvino "
                   "(.xml IR), tensorrt (.engine, GPU only)")
    p.add_argument("--output", required=True, metavar="PATH", help="file to write")
    _add_model_args(p)
    p.add_argument("--batch-size-range", default="1:256", metavar="MIN:MAX", help="dynamic batch range (default: %(default)s)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], help="default: fp32 (fp16 for tensorrt)")
    p.add_argument("--calibration-dir", metavar="DIR", help="images for int8 calibration (class sub-folders: accuracy too)")
    p.add_argument("--eval-dir", metavar="DIR", help="images for the agreement/accuracy report (default: calibration dir)")
    p.add_argument("--calibration-count", type=int, default=256, help="max calibration images (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=224, help="input crop size (default: %(default)s)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="fp32 parity: max abs diff <= TOL x max(1, max |logit|) (default: %(default)s)")
    p.add_argument("--min-agreement", type=float, metavar="FRACTION",
                   help="bf16/fp16/int8: fail when top-1 agreement with fp32 is below this (e.g. 0.99)")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    import json

    from .export import ExportConfig, export_model, parse_batch_range

    config = ExportConfig(
        format=args.format, output=args.output, arch=args.arch, weights=args.weights,
        batch_range=parse_batch_range(args.batch_size_range), precision=args.precision,
        calibration_dir=args.calibration_dir, eval_dir=args.eval_dir, calibration_count=args.calibration_count,
        image_size=args.image_size, opset=args.opset, tolerance=args.tolerance, min_agreement=args.min_agreement,
    )
    result = export_model(config)
    print(json.dumps(result.to_dict(), indent=1) if args.json else "\n".join(result.summary()))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# benchmark (subcommands: inference, training)


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="measure inference or training speed against a same-run reference")
    kinds = p.add_subparsers(dest="benchmark", required=True, metavar="KIND")
    for add in BENCHMARK_PARSERS:
        add(kinds)


def add_benchmark_inference_parser(kinds: argparse._SubParsersAction) -> None:
    from .bench import SUPPORTED

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
    from .bench import BenchConfig, parse_list, run_inference_benchmark

    config = BenchConfig(
        arch=args.arch, weights=args.weights, backends=parse_list(args.backends),
        precisions=parse_list(args.precision), batch_sizes=parse_list(args.batch_sizes, int),
        image_size=args.image_size, threads=args.threads, warmup=args.warmup, min_iters=args.min_iters,
        min_time=args.min_time, calibration_dir=args.calibration_dir, json_path=args.json,
    )
    print(run_inference_benchmark(config).table())
    return 0


BENCHMARK_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_benchmark_inference_parser, add_benchmark_training_parser,
]


# ---------------------------------------------------------------------------------------------------------------
# dispatcher

PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_classify_parser, add_train_parser, add_evaluate_parser, add_export_weights_parser, add_export_parser,
    add_benchmark_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnext", description="Classify, train, evaluate, export and benchmark NVIDIA's ResNeXt101-32x4d family."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so in-process callers that swap it still see logs)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def _configure_logging(level: int) -> None:
    # Only the package's logger: third-party INFO chatter (matplotlib, PIL) stays quiet.
    log = logging.getLogger("resnext")
    log.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("resnext: %(message)s"))
        log.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except ResnextError as exc:
        print(f"resnext: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnext: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
