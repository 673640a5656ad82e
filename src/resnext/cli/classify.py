"""`resnext classify`."""

from __future__ import annotations

import argparse
import sys

from ..errors import ResnextError
from .common import add_model_args, add_runtime_args


def add_classify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify", help="classify images, folders of images or image URLs",
        description="Print the top-k ImageNet classes of each input. Exit status 1 if any input could not be read.",
    )
    p.add_argument(
        "inputs", nargs="*", metavar="PATH|URL|DIR",
        help="image files, folders (searched recursively) or http(s) URLs; default: the bundled sample photos",
    )
    add_model_args(p)
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "int8"],
                   help="default: fp32, or the precision an exported file was written in")
    p.add_argument("--channels-last", action="store_true", help="run the model in NHWC memory format")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    p.add_argument("--plot", metavar="OUT.png", help="also write one PNG: each image beside a bar chart of its top-k")
    add_runtime_args(p)
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

    from ..labels import read_label_file
    from ..images import find_images, sample_images
    from ..predict import Predictor, classify_sources
    from ..report import format_json, format_table, plot_predictions

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


def register(sub: argparse._SubParsersAction) -> None:
    add_classify_parser(sub)
