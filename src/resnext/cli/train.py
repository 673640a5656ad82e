"""`resnext train`, `resnext evaluate`, `resnext export-weights`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from ..models import list_models
from .common import DEFAULT_ARCH


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from ..train_config import add_train_arguments

    p = sub.add_parser(
        "train",
        help="train or fine-tune on an ImageFolder tree (works under torchrun)",
        description="Train or fine-tune. Flags keep NVIDIA's names; --recipe sets NVIDIA's hyper-parameters and "
        "explicit flags override it. One run per --workspace: continue it with --resume auto, or start over with "
        "--overwrite. Multi-GPU/CPU: torchrun --nproc_per_node N -m resnext.cli train ...",
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def _format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for prefix in ("val", "val_ema"):
        if f"{prefix}.top1" in metrics:
            parts.append(
                f"{prefix}: top-1 {metrics[f'{prefix}.top1']:.2f}%  top-5 {metrics[f'{prefix}.top5']:.2f}%  "
                f"loss {metrics[f'{prefix}.loss']:.4f}  ({metrics[f'{prefix}.count']} images, "
                f"{metrics[f'{prefix}.skipped_images']} unreadable)"
            )
    return "; ".join(parts)


def run_train(args: argparse.Namespace) -> int:
    """Exit status: 0 done, 128 + signal when SIGTERM/SIGINT stopped the run after writing a checkpoint."""
    from ..train import Status, train
    from ..train_config import config_from_args

    cfg = config_from_args(args)
    result = train(cfg)
    if result.status is Status.EVALUATED and int(os.environ.get("RANK", "0")) == 0:
        shown = _format_metrics(result.metrics) or "no validation data (synthetic), nothing was evaluated"
        print(f"{cfg.arch} on {cfg.data}/val at {cfg.image_size} px: {shown}")
    if result.status is Status.STOPPED:
        return 128 + int(result.stopped_by or signal.SIGTERM)
    return 0


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5/loss of weights on an ImageFolder tree (works under torchrun)")
    p.add_argument("data", metavar="DATA_DIR/val", help="folder with <class>/<image> (class names as in training)")
    p.add_argument(
        "--arch",
        default=None,
        choices=list_models(),
        help=f"architecture (default: the checkpoint's own, else {DEFAULT_ARCH})",
    )
    p.add_argument(
        "--weights",
        default="DEFAULT",
        metavar="NAME|FILE|URL",
        help="published weights name, weights file, training checkpoint or export-weights file, or URL "
        "(default: %(default)s, the published NGC weights)",
    )
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--batch-size", "-b", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="(default: %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="run the model in NHWC memory format")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="center crop, 32..1024; resize to size + 32 first (default: the size the weights were trained at, "
        "else 224)",
    )
    p.add_argument("--workers", "-j", type=int, default=4, help="data loading processes (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--output", "-o", default="evaluation.json", help="JSON results file (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout instead of one line")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Exit status: 0, or 1 when some images could not be read (they are counted and skipped)."""
    from ..evaluate import evaluate_folder

    r = evaluate_folder(
        args.data,
        arch=args.arch,
        weights=args.weights,
        use_ema=args.ema,
        batch_size=args.batch_size,
        precision=args.precision,
        channels_last=args.channels_last,
        image_size=args.image_size,
        workers=args.workers,
        device=args.device,
        output=args.output,
        progress=args.progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            print(json.dumps(r, indent=2))
        else:
            print(
                f"{r['arch']} on {r['data']}: top-1 {r['val.top1']:.2f}%  top-5 {r['val.top5']:.2f}%  "
                f"loss {r['val.loss']:.4f}  ({r['val.count']} images at {r['image_size']} px, "
                f"{r['val.total_ips']:.1f} img/s, {r['val.skipped_images']} unreadable); wrote {args.output}"
            )
    return 1 if r["val.skipped_images"] else 0


def add_export_weights_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-weights", help="plain (or EMA) weights out of a training checkpoint")
    p.add_argument("checkpoint", metavar="CKPT", help="training checkpoint (e.g. runs/train/best.pth)")
    p.add_argument(
        "output",
        metavar="OUT",
        help="weights file with the architecture, class names and image size; "
        "loadable with --weights / create_model / pretrained_from_file",
    )
    p.add_argument("--ema", action="store_true", help="export the EMA weights (state_dict_ema)")
    p.set_defaults(func=run_export_weights)


def run_export_weights(args: argparse.Namespace) -> int:
    from ..checkpoint import export_weights

    path = export_weights(args.checkpoint, args.output, ema=args.ema)
    print(f"resnext: wrote {'EMA ' if args.ema else ''}weights to {path}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_export_weights_parser(sub)
