"""`resnext train`, `resnext evaluate`, `resnext export-weights`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from ..util import loader_workers
from .common import add_command, add_flags, add_model_args

PRECISIONS = ["fp32", "bf16", "fp16"]  # evaluation runs eager torch under autocast: no int8


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from ..training.config import add_train_arguments

    add_train_arguments(add_command(sub, "train", run_train))


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
    """Train or fine-tune on an ImageFolder tree (works under torchrun).

    Flags keep NVIDIA's names; --recipe sets NVIDIA's hyper-parameters and explicit flags override it. One run per
    --workspace: continue it with --resume auto, or start over with --overwrite. Multi-GPU/CPU: torchrun
    --nproc_per_node N -m resnext.cli train ... Exit status: 0 done, 128 + signal when SIGTERM/SIGINT stopped the
    run after writing a checkpoint.
    """
    from ..training.config import config_from_args
    from ..training.trainer import Status, train

    cfg = config_from_args(args)
    result = train(cfg)
    if result.status is Status.EVALUATED and int(os.environ.get("RANK", "0")) == 0:
        shown = _format_metrics(result.metrics) or "no validation data (synthetic), nothing was evaluated"
        print(f"{cfg.arch} on {cfg.data}/val at {cfg.image_size} px: {shown}")
    if result.status is Status.STOPPED:
        return 128 + int(result.stopped_by or signal.SIGTERM)
    if result.status is Status.COMPLETED and int(os.environ.get("RANK", "0")) == 0:
        print(_closing_summary(cfg, result))
    return 0


def _closing_summary(cfg: Any, result: Any) -> str:
    """What a finished run leaves: the best epoch, its top-1 and where its weights are."""
    best = os.path.join(cfg.workspace, "best.pth")
    done = f"trained {result.epochs_done}/{cfg.epochs} epochs"
    if result.best_top1 < 0:  # no val/ folder: best.pth follows last.pth
        return f"{done} (no validation data): the last epoch's weights are in {best}"
    at = f" at epoch {result.best_epoch}" if result.best_epoch else ""  # 0: a checkpoint older than best_epoch
    return f"{done}: best val top-1 {result.best_top1:.2f}%{at}, weights in {best}"


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "evaluate", run_evaluate)
    p.add_argument("data", metavar="DATA_DIR/val", help="folder with <class>/<image> (class names as in training)")
    add_model_args(p)
    add_flags(p, "channels_last", "image_size", "device", "json", batch_size=64, workers=loader_workers())
    add_flags(
        p, precision={"default": "fp32", "choices": PRECISIONS, "help": "autocast precision"}, ema={"dest": "use_ema"}
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--output", "-o", metavar="FILE", help="also write the results as JSON to FILE (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def run_evaluate(args: argparse.Namespace) -> int:
    """Top-1/top-5/loss of weights on an ImageFolder tree (works under torchrun).

    Exit status: 0, or 1 when some images could not be read (they are counted and skipped).
    """
    from ..training.evaluate import evaluate_folder
    from ..util import call_with

    r = call_with(evaluate_folder, args, root=args.data)
    if int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            print(json.dumps(r, indent=2))
        else:
            print(
                f"{r['arch']} on {r['data']}: top-1 {r['val.top1']:.2f}%  top-5 {r['val.top5']:.2f}%  "
                f"loss {r['val.loss']:.4f}  ({r['val.count']} images at {r['image_size']} px, "
                f"{r['val.total_ips']:.1f} img/s, {r['val.skipped_images']} unreadable)"
                + (f"; wrote {args.output}" if args.output else "")
            )
    return 1 if r["val.skipped_images"] else 0


def add_export_weights_parser(sub: argparse._SubParsersAction) -> None:
    from ..training.checkpoint import WEIGHTS_FORMATS

    p = add_command(sub, "export-weights", run_export_weights)
    p.add_argument(
        "checkpoint",
        metavar="SRC",
        help="any weights source: training checkpoint (e.g. runs/train/best.pth), weights file, published weights "
        "name (DEFAULT), URL, .safetensors file, Hub folder or hf-hub:owner/name",
    )
    p.add_argument(
        "output",
        metavar="OUT",
        help="weights file (.pth, or .safetensors) or, with --format hf, a folder; it carries the architecture, "
        "class names, image size and preprocessing and loads with --weights / create_model / pretrained_from_file",
    )
    p.add_argument(
        "--format",
        choices=WEIGHTS_FORMATS,
        help="pth (default), safetensors (default for OUT.safetensors), or hf: a folder in timm's Hugging Face "
        "Hub layout (model.safetensors, config.json, README.md) for 'hf upload OWNER/NAME OUT'",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_flags(p, "arch", "ema")


def run_export_weights(args: argparse.Namespace) -> int:
    """Weights out of any source, as .pth, .safetensors or a Hugging Face Hub folder (timm's layout)."""
    from ..training.checkpoint import export_weights

    path = export_weights(
        args.checkpoint, args.output, ema=args.ema, arch=args.arch, format=args.format, overwrite=args.overwrite
    )
    print(f"resnext: wrote {'EMA ' if args.ema else ''}weights to {path}", file=sys.stderr)
    return 0


PARSERS = (add_train_parser, add_evaluate_parser, add_export_weights_parser)
