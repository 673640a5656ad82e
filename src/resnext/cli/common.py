"""Arguments shared by several commands."""

from __future__ import annotations

import argparse
from typing import Any

from ..models import list_models
from ..runtimes import AUTO, RUNTIMES
from ..sources import DEFAULT_ARCH

__all__ = ["DEFAULT_ARCH", "add_model_args", "add_runtime_args"]


def add_model_args(parser: argparse.ArgumentParser, *, arch_default: str | None = None) -> None:
    """``--arch`` and ``--weights``: the model source (see :mod:`resnext.sources`)."""
    parser.add_argument(
        "--arch",
        default=arch_default,
        choices=list_models(),
        help=f"architecture (default: the checkpoint's own, else {DEFAULT_ARCH})",
    )
    parser.add_argument(
        "--weights",
        default="DEFAULT",
        metavar="NAME|FILE|URL",
        help="published weights name, checkpoint file or URL, or 'random'; default: %(default)s, the published NGC "
        "weights (cached in $TORCH_HOME/hub/checkpoints)",
    )


def model_spec(args: argparse.Namespace, *, categories: list[str] | None = None) -> Any:
    """The model the command's flags describe (source, runtime, precision, ...): one place for every command."""
    from ..bulk import ModelSpec

    return ModelSpec(
        arch=args.arch,
        weights=args.weights,
        backend=args.backend,
        model_file=args.model_file,
        device=getattr(args, "device", "auto"),
        precision=getattr(args, "precision", None),
        channels_last=getattr(args, "channels_last", False),
        image_size=getattr(args, "image_size", None),
        categories=tuple(categories) if categories else None,
        calibration_dir=getattr(args, "calibration_dir", None),
        threads=getattr(args, "threads", None),
    )


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--model-file``: which runtime runs the model."""
    parser.add_argument(
        "--backend",
        default=AUTO,
        choices=[AUTO, *RUNTIMES],
        help="inference runtime; default: auto = the runtime of --model-file (from its suffix), else the fastest "
        "exact runtime installed (ONNX Runtime, else OpenVINO, else torch), exported once into $TORCH_HOME/resnext "
        "and reused; with --precision bf16|int8 the approximate runtimes (agreement is reported)",
    )
    parser.add_argument("--model-file", metavar="PATH", help="exported model (see `resnext export`)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16", "fp16", "int8"],
        help="default: fp32, or the precision an exported file was written in; bf16/int8 opt into approximate runtimes",
    )
    parser.add_argument(
        "--calibration-dir",
        metavar="DIR",
        help="images for int8 calibration with --backend auto --precision int8 (default: the bundled samples)",
    )
