"""Arguments shared by several commands."""

from __future__ import annotations

import argparse

from ..models import list_models
from ..runtimes import RUNTIMES
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


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--model-file``: which runtime runs the model."""
    parser.add_argument(
        "--backend",
        default=None,
        choices=list(RUNTIMES),
        help="inference runtime; default: the runtime of --model-file (from its suffix), else torch",
    )
    parser.add_argument("--model-file", metavar="PATH", help="exported model (see `resnext export`)")
