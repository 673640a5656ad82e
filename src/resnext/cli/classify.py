"""`resnext classify`."""

from __future__ import annotations

import argparse
import sys

from ..errors import ResnextError
from .common import add_model_args, add_runtime_args, model_spec
from .embed import add_bulk_args, run_bulk


def add_classify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="classify images, folders of images or image URLs",
        description="Print the top-k ImageNet classes of each input. Exit status 1 if any input could not be read.",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="PATH|URL|DIR",
        help="image files, folders (searched recursively) or http(s) URLs; default: the bundled sample photos",
    )
    add_model_args(p)
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="run the model in NHWC memory format")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    p.add_argument("--plot", metavar="OUT.png", help="also write one PNG: each image beside a bar chart of its top-k")
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="also write a Grad-CAM overlay PNG of the top class per image into DIR (torch backend)",
    )
    add_runtime_args(p)
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="center-crop size the model was trained at (default: an exported file's input size, else 224)",
    )
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (for fine-tuned models)")
    p.add_argument(
        "--workers", type=int, default=2, help="background processes decoding images; 0 = none (default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the model (default: one per physical core; use 1 on a busy machine for steady latency)",
    )
    add_bulk_args(p)
    p.set_defaults(func=run_classify)


def check_classify_inputs(args: argparse.Namespace) -> None:
    """Everything that can be checked without the model, so a typo fails in a second, not after loading it."""
    from pathlib import Path

    from ..download import is_url
    from ..util import check_writable

    missing = [item for item in args.inputs if not is_url(item) and not Path(item).exists()]
    if missing:
        raise ResnextError(
            f"no such file or folder: {missing[0]}" + (f" (+{len(missing) - 1} more)" if missing[1:] else "")
        )
    for name in ("topk", "batch_size", "threads"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ResnextError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.workers < 0:
        raise ResnextError(f"--workers must be 0 or more, got {args.workers}")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ResnextError("--plot needs matplotlib: pip install 'resnext[plot]'")
        check_writable(args.plot, "--plot file")


def run_classify(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..bulk import list_inputs
    from ..images import sample_images
    from ..labels import read_label_file
    from ..predict import classify_sources
    from ..report import format_json, format_table, plot_predictions, printable

    if args.output or args.engine == "ray":
        printed = [f"--{n}" for n in ("json", "plot", "explain") if getattr(args, n, None)]
        if printed:
            raise ResnextError(f"{', '.join(printed)} apply to printed results, not to --output files")
        return run_bulk(args, "classify")
    check_classify_inputs(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sources = list_inputs(args.inputs, from_list=args.from_list) if args.inputs or args.from_list else sample_images()
    if not sources:
        raise ResnextError(f"no images found in {', '.join(args.inputs)}")
    categories = read_label_file(args.labels) if args.labels else None
    predictor = model_spec(args, categories=categories).predictor(progress=True)
    if args.explain:
        _check_explain(args.explain, predictor)
    results, failed, overlays = [], 0, set[str]()
    for result in classify_sources(
        predictor, sources, topk=args.topk, batch_size=args.batch_size, workers=args.workers
    ):
        # tqdm.write lifts the progress bar (on stderr) out of the way instead of splicing text into it.
        if result.error is not None:
            failed += 1
            tqdm.write(f"resnext: skipped: {printable(result.error)}", file=sys.stderr)
            continue
        tqdm.write(format_json(result) if args.json else format_table(result) + "\n", file=sys.stdout)
        results.append(result)
        if args.explain:
            _write_explanation(predictor, result, args.explain, overlays)
    if args.plot:
        path = plot_predictions(results, args.plot)
        print(f"resnext: wrote {path}", file=sys.stderr)
    if failed:
        print(f"resnext: {failed} of {len(sources)} inputs could not be classified", file=sys.stderr)
    return 1 if failed else 0


def _check_explain(folder: str, predictor) -> None:  # noqa: ANN001
    from ..util import check_writable

    if predictor.model is None:
        raise ResnextError("--explain needs the torch backend: Grad-CAM takes gradients of the eager model")
    from pathlib import Path

    check_writable(Path(folder) / "overlay.gradcam.png", "--explain folder")  # a file inside: DIR may not exist yet


def _write_explanation(predictor, result, folder: str, taken: set[str]) -> None:  # noqa: ANN001
    """The Grad-CAM overlay of ``result``'s top class, as ``DIR/<stem>.gradcam.png``."""
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..explain import overlay_name, save_overlay

    explanation = predictor.explain(result.source, target=result.predictions[0].index)
    path = save_overlay(explanation, Path(folder) / overlay_name(result.source, taken))
    tqdm.write(f"resnext: wrote {path}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    add_classify_parser(sub)
