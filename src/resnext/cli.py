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
    p = sub.add_parser("classify", help="classify images, folders of images or image URLs")
    p.add_argument("inputs", nargs="+", metavar="PATH|URL|DIR")
    _add_model_args(p)
    p.set_defaults(func=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    raise ResnextError("classify is not available in this build")


# ---------------------------------------------------------------------------------------------------------------
# train


# ---------------------------------------------------------------------------------------------------------------
# evaluate


# ---------------------------------------------------------------------------------------------------------------
# export-weights


# ---------------------------------------------------------------------------------------------------------------
# export


# ---------------------------------------------------------------------------------------------------------------
# benchmark (subcommands: inference, training)


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="measure inference or training speed against a same-run reference")
    kinds = p.add_subparsers(dest="benchmark", required=True, metavar="KIND")
    for add in BENCHMARK_PARSERS:
        add(kinds)


BENCHMARK_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = []


# ---------------------------------------------------------------------------------------------------------------
# dispatcher

PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [add_classify_parser, add_benchmark_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnext", description="Classify, train, evaluate, export and benchmark NVIDIA's ResNeXt101-32x4d family."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="resnext: %(message)s", stream=sys.stderr
    )
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
