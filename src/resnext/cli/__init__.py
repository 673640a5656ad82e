"""``resnext`` command line: argument parsing and output only; each command calls into the library modules.

User mistakes (bad paths, unreachable weights, corrupt images, ...) raise :class:`resnext.errors.ResnextError`;
``main`` prints its message as one line on stderr and exits with status 2, without a traceback (with ``-v``, the
chain of causes comes first, from :func:`error_chain`). Any other
exception is a bug: one line naming the file holding its traceback, exit status 3 (table: ``EXIT_*`` below).
Each command lives in a module of this package whose ``PARSERS`` add its subcommands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import ResnextError


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__
    from . import benchmark, classify, demo, embed, export, models, prepare, serve, train
    from .common import one_line_errors

    #: command modules, in the order ``resnext --help`` lists them
    commands = (classify, embed, train, export, prepare, benchmark, models, demo, serve)

    parser = argparse.ArgumentParser(
        prog="resnext", description="Classify, train, evaluate, export and benchmark NVIDIA's ResNeXt101-32x4d family."
    )
    parser.add_argument("--version", action="version", version=f"resnext {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        for add_parser in command.PARSERS:
            add_parser(sub)
    _accept_verbose_everywhere(sub)
    one_line_errors(parser)
    return parser


def _accept_verbose_everywhere(sub: argparse._SubParsersAction) -> None:
    """``-v`` works after the command too (``resnext classify -v``), in nested commands as well."""
    for command in sub.choices.values():
        if not any("--verbose" in action.option_strings for action in command._actions):
            # SUPPRESS: a subcommand that does not see -v leaves the top-level value alone
            command.add_argument(
                "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug details"
            )
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _accept_verbose_everywhere(action)


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


#: Exit statuses of every command (the README has this table).
EXIT_OK = 0  # done
EXIT_PARTIAL = 1  # done, but some inputs could not be used (classify/evaluate: unreadable images), or a check failed
EXIT_USAGE = 2  # nothing done: a mistake the user can fix (bad flag, missing file, unusable weights), one line
EXIT_CRASH = 3  # an unexpected error (a bug): one line naming the file that holds the full traceback
EXIT_INTERRUPTED = 130  # Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed in one line
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_USAGE
    _configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except ResnextError as exc:
        if args.verbose:
            print(error_chain(exc), end="", file=sys.stderr)
        print(f"resnext: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("resnext: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: keep the traceback, but out of the user's output
        where = write_crash_log(sys.argv[:1] + list(argv if argv is not None else sys.argv[1:]))
        summary = " ".join(str(exc).split())[:200]
        print(
            f"resnext: internal error ({type(exc).__name__}{': ' + summary if summary else ''}); this is a "
            f"bug, not a problem with your input: {where}",
            file=sys.stderr,
        )
        return EXIT_CRASH


def error_chain(exc: BaseException) -> str:
    """The traceback of ``exc`` and of every error that caused it (``raise ... from``), root cause first: what
    ``-v`` adds above a user error's one line, where the message alone hides which library call refused what."""
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def write_crash_log(argv: Sequence[str]) -> str:
    """Write the current exception's traceback to ``<tmp>/resnext-crash-*.log``; return where it went (a
    sentence), or print the traceback to stderr when no file can be written."""
    import platform
    import tempfile
    import time
    import traceback

    from ..version import __version__

    text = (
        f"resnext {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
        f"command: {' '.join(argv)}\ntime: {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n{traceback.format_exc()}"
    )
    try:
        fd, name = tempfile.mkstemp(prefix=f"resnext-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        traceback.print_exc()
        return "the full traceback is above"
    return f"the full traceback was written to {name}"
