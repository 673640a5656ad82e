"""`resnext classify`."""

from __future__ import annotations

import argparse
import sys

from ..bulk.engine import BulkJob, ModelSpec
from ..errors import ResnextError
from ..options import add_options
from .common import add_cli_flag, add_command, add_inputs, add_json, model_spec
from .embed import add_bulk_args, run_bulk


def add_classify_parser(sub: argparse._SubParsersAction) -> None:
    """Options of :class:`ModelSpec` and :class:`BulkJob` (and, with ``--engine ray``, ``RayOptions``)."""
    p = add_command(sub, "classify", run_classify)
    add_inputs(p)
    add_options(p, ModelSpec)
    add_options(p, BulkJob, skip=("normalize",))
    add_json(p, "print one JSON object per image instead of a table")
    add_cli_flag(p, "--plot", metavar="OUT.png", help="also write one PNG: each image beside a bar chart of its top-k")
    add_cli_flag(
        p,
        "--explain",
        metavar="DIR",
        help="also write a Grad-CAM overlay PNG of the top class per image into DIR (torch backend)",
    )
    add_cli_flag(p, "--labels", metavar="FILE", help="class names, one per line (for fine-tuned models)")
    add_bulk_args(p)


def check_classify_inputs(args: argparse.Namespace) -> None:
    """Everything that can be checked without the model, so a typo fails in a second, not after loading it."""
    from pathlib import Path

    from ..bulk.engine import is_glob
    from ..download import is_url
    from ..util import check_writable

    # globs are expanded (and an empty match refused) by the input listing
    missing = [i for i in args.inputs if not (is_url(i) or Path(i).exists() or is_glob(i))]
    if missing:
        raise ResnextError(
            f"no such file or folder: {missing[0]}" + (f" (+{len(missing) - 1} more)" if missing[1:] else "")
        )
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ResnextError("--plot needs matplotlib: pip install 'resnext[plot]'")
        check_writable(args.plot, "--plot file")


def run_classify(args: argparse.Namespace) -> int:
    """Classify images, folders of images or image URLs.

    Print the top-k ImageNet classes of each input. Exit status 1 if any input could not be read.
    """
    from tqdm.auto import tqdm

    from ..bulk.engine import list_inputs
    from ..images import sample_images
    from ..inference.predict import classify_sources
    from ..inference.report import format_json, format_table, plot_predictions, printable
    from ..labels import read_label_file

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

    from ..inference.explain import overlay_name, save_overlay

    explanation = predictor.explain(result.source, target=result.predictions[0].index)
    path = save_overlay(explanation, Path(folder) / overlay_name(result.source, taken))
    tqdm.write(f"resnext: wrote {path}", file=sys.stderr)


PARSERS = (add_classify_parser,)
