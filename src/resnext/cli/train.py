"""`resnext train`, `resnext evaluate`, `resnext export-weights`."""

from __future__ import annotations

import argparse
import sys

from ..errors import ResnextError
from ..models import list_models
from .common import DEFAULT_ARCH, add_model_args

def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from ..train import add_train_arguments

    p = sub.add_parser(
        "train", help="train or fine-tune on an ImageFolder tree (works under torchrun)",
        description="Train or fine-tune. Flags keep NVIDIA's names; --recipe sets NVIDIA's hyper-parameters and "
        "explicit flags override it. Multi-GPU/CPU: torchrun --nproc_per_node N -m resnext.cli train ...",
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..train import config_from_args, train

    return int(train(config_from_args(args))["exit_code"])



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

    from ..evaluate import evaluate_folder

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
    from ..train import export_weights

    path = export_weights(args.checkpoint, args.output, ema=args.ema)
    print(f"resnext: wrote {'EMA ' if args.ema else ''}weights to {path}", file=sys.stderr)
    return 0



def register(sub: argparse._SubParsersAction) -> None:
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_export_weights_parser(sub)
