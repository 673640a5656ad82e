"""`resnext train`, `resnext evaluate`, `resnext export-weights`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import MISSING, dataclass
from typing import Any

from ..model.sources import arch_option
from ..options import add_options, check_options, option, options_from
from ..training.checkpoint import WEIGHTS_FORMATS
from ..training.evaluate import EvaluateConfig
from .common import add_cli_flag, add_command, add_json


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """Options of :class:`TrainConfig`; a flag not given leaves the ``--recipe`` (or checkpoint) value alone."""
    from ..training.config import TrainConfig

    add_options(add_command(sub, "train", run_train), TrainConfig, given_only=True)


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
    """Options of :class:`EvaluateConfig`."""
    p = add_command(sub, "evaluate", run_evaluate)
    add_cli_flag(p, "data", metavar="DATA_DIR/val", help="folder with <class>/<image> (class names as in training)")
    add_options(p, EvaluateConfig)
    add_json(p)


def run_evaluate(args: argparse.Namespace) -> int:
    """Top-1/top-5/loss of weights on an ImageFolder tree (works under torchrun).

    Exit status: 0, or 1 when some images could not be read (they are counted and skipped).
    """
    from ..training.evaluate import evaluate_folder

    c = options_from(EvaluateConfig, args)
    r = evaluate_folder(
        args.data,
        arch=c.arch,
        weights=c.weights,
        use_ema=c.use_ema,
        batch_size=c.batch_size,
        precision=c.precision,
        channels_last=c.channels_last,
        image_size=c.image_size,
        workers=c.workers,
        device=c.device,
        output=c.output,
        overwrite=c.overwrite,
        progress=c.progress,
    )
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


@dataclass(frozen=True)
class ExportWeightsConfig:
    """What ``resnext export-weights`` writes (the arguments of :func:`resnext.training.checkpoint.export_weights`)."""

    checkpoint: str = option(
        MISSING,
        flags=("checkpoint",),
        metavar="SRC",
        help="any weights source: training checkpoint (e.g. runs/train/best.pth), weights file, published weights "
        "name (DEFAULT), URL, .safetensors file, Hub folder or hf-hub:owner/name",
    )
    output: str = option(
        MISSING,
        flags=("output",),
        metavar="OUT",
        help="weights file (.pth, or .safetensors) or, with --format hf, a folder; it carries the architecture, "
        "class names, image size and preprocessing and loads with --weights / create_model / pretrained_from_file",
    )
    format: str | None = option(
        None,
        choices=WEIGHTS_FORMATS,
        help="pth (default), safetensors (default for OUT.safetensors), or hf: a folder in timm's Hugging Face "
        "Hub layout (model.safetensors, config.json, README.md) for 'hf upload OWNER/NAME OUT'",
    )
    overwrite: bool = option(False, help="replace an existing OUT")
    arch: str | None = arch_option()
    ema: bool = option(False, help="the EMA weights of a training checkpoint")

    def __post_init__(self) -> None:
        check_options(self)


def add_export_weights_parser(sub: argparse._SubParsersAction) -> None:
    """Options of :class:`ExportWeightsConfig`."""
    add_options(add_command(sub, "export-weights", run_export_weights), ExportWeightsConfig)


def run_export_weights(args: argparse.Namespace) -> int:
    """Weights out of any source, as .pth, .safetensors or a Hugging Face Hub folder (timm's layout)."""
    from ..training.checkpoint import export_weights

    c = options_from(ExportWeightsConfig, args)
    path = export_weights(c.checkpoint, c.output, ema=c.ema, arch=c.arch, format=c.format, overwrite=c.overwrite)
    print(f"resnext: wrote {'EMA ' if c.ema else ''}weights to {path}", file=sys.stderr)
    return 0


PARSERS = (add_train_parser, add_evaluate_parser, add_export_weights_parser)
