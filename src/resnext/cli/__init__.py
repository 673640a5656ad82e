"""``resnext`` command line: argument parsing and output only; each command calls into the library modules.

User mistakes (bad paths, unreachable weights, corrupt images, ...) raise :class:`resnext.errors.ResnextError`;
``main`` prints its message as one line on stderr and exits with status 2, without a traceback.
Each command lives in a module of this package with a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from ..errors import ResnextError

#: command modules of this package, in the order ``resnext --help`` lists them
COMMANDS = ("classify", "train", "export", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnext", description="Classify, train, evaluate, export and benchmark NVIDIA's ResNeXt101-32x4d family."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so in-process callers that swap it still see logs)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def _configure_logging(level: int) -> None:
    # Only the package's logger: third-party INFO chatter (matplotlib, PIL) stays quiet.
    log = logging.getLogger("resnext")
    log.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("resnext: %(message)s"))
        log.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except ResnextError as exc:
        print(f"resnext: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnext: interrupted", file=sys.stderr)
        return 130


