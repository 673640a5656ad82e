"""What every command shares: one-line usage errors, the subcommand from its run function, the CLI's own flags
(inputs, ``--json``, ``--json-file``) and printing.

Every other flag is a field of a library config, declared once with :func:`resnext.options.option`: a command's
parser builder adds the options of the configs it takes (:func:`resnext.options.add_options`) and its run
function builds those configs from the parsed flags (:func:`resnext.options.options_from`), so a value is checked
when the command line is parsed (one line, exit status 2, before any model loads) with the words the config
itself uses when a library user builds it.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn

from ..bulk.engine import ModelSpec
from ..options import options_from

__all__ = ["add_cli_flag", "add_command", "add_inputs", "add_json", "add_json_file", "model_spec", "one_line_errors"]


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """argparse's error without the usage block, here and in every subcommand: one line, worded like every other
    user mistake (``resnext: error: ...``), exit status 2."""

    def error(self: argparse.ArgumentParser, message: str) -> NoReturn:
        self.exit(2, f"resnext: error: {message} (see {self.prog} --help)\n")

    parser.error = types.MethodType(error, parser)  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                one_line_errors(command)


def add_command(sub: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int]) -> Any:
    """The subcommand ``name`` that calls ``run``; its help is the first line of ``run``'s docstring, its
    description the rest (so ``--help`` and the code's documentation are one text)."""
    import inspect

    summary, _, details = inspect.cleandoc(run.__doc__ or "").partition("\n")
    short = (summary[:1].lower() + summary[1:]).rstrip(".").replace("%", "%%")  # argparse %-formats help only
    parser = sub.add_parser(name, help=short, description=" ".join(details.split()) or short)
    parser.set_defaults(func=run)
    return parser


# ---------------------------------------------------------------------------------------------------------------
# The CLI's own flags: they fill no config field (what to read, how to print)


def add_cli_flag(parser: argparse.ArgumentParser, *names: str, **options: Any) -> argparse.Action:
    """A flag of the command line itself, filling no config field; every other flag is a config's option
    (:func:`resnext.options.add_options`), and a test holds every command to that."""
    action = parser.add_argument(*names, **options)
    action.cli_only = True  # type: ignore[attr-defined]
    return action


def add_inputs(parser: argparse.ArgumentParser, help: str = "images, folders, quoted globs or URLs") -> None:
    add_cli_flag(parser, "inputs", nargs="*", metavar="PATH|URL|DIR|GLOB", help=help)


def add_json(parser: argparse.ArgumentParser, help: str = "print JSON on stdout instead of text") -> None:
    add_cli_flag(parser, "--json", action="store_true", help=help)


def add_json_file(parser: argparse.ArgumentParser) -> None:
    add_cli_flag(parser, "-o", "--json-file", metavar="PATH", help="also write the result as JSON to PATH")


def model_spec(args: argparse.Namespace, *, categories: list[str] | None = None) -> ModelSpec:
    """The model the command's flags describe (source, runtime, precision, ...): one place for every command."""
    return options_from(ModelSpec, args, categories=tuple(categories) if categories else None)


def say(message: str) -> None:
    """A progress line on stderr (stdout stays the result)."""
    print(f"resnext: {message}", file=sys.stderr, flush=True)


def emit(args: argparse.Namespace, document: Any, text: str) -> None:
    """Print ``text`` or, with ``--json``, the JSON document; write the document to ``--json-file`` when asked."""
    from ..util import atomic_open

    dumped = json.dumps(document, indent=1, default=str)
    print(dumped if args.json else text)
    if getattr(args, "json_file", None):
        with atomic_open(args.json_file, "w") as f:
            f.write(dumped + "\n")
        print(f"resnext: wrote {args.json_file}", file=sys.stderr)


def check_output(args: argparse.Namespace) -> None:
    """Fail before minutes of work when the JSON file cannot be written."""
    if getattr(args, "json_file", None):
        from ..util import check_writable

        check_writable(args.json_file, "--json-file")
