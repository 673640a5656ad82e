"""The flags several commands share, declared once: their names, checks, defaults and help.

A command adds them by name (``add_flags(p, "image_size", "batch_size", batch_size=64)``: a keyword changes that
flag's default for this command) and builds its library config with :func:`resnext.util.call_with`, which takes
every field of the config from the flag of the same name. So a flag means the same in every command, its value is
checked when the command line is parsed (one line, exit status 2, before any model loads), and no command spells
out a flag-to-field copy of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn

from ..model.factory import list_models
from ..model.sources import DEFAULT_ARCH
from ..runtime.table import AUTO, RUNTIMES
from ..training.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

__all__ = ["DEFAULT_ARCH", "FLAGS", "add_flags", "add_model_args", "add_runtime_args", "model_spec"]

# ---------------------------------------------------------------------------------------------------------------
# Values checked at parse time


def _number(kind: type, low: float, what: str, *, strict: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from exc
        if not (value > low if strict else value >= low):  # also rejects NaN
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


positive_int = _number(int, 1, "an integer >= 1")
non_negative_int = _number(int, 0, "an integer >= 0")
non_negative_float = _number(float, 0.0, "a number >= 0")
positive_float = _number(float, 0.0, "a number > 0", strict=True)


def _bounded(low: int, high: int) -> Callable[[str], int]:
    what = f"an integer from {low} to {high}"
    at_least = _number(int, low, what)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


crop_size = _bounded(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
port = _bounded(1, 65535)


def positive_int_list(text: str) -> list[int]:
    """``"1,16,64"`` -> ``[1, 16, 64]``, each at least 1."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers >= 1, got {text!r}")
    return [positive_int(t) for t in items]


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
# The table


class Flag:
    """One command-line flag: its option strings and ``add_argument`` options. ``unset`` says what happens when
    the flag is not given and its default is None; help ends with that, or with the default value."""

    def __init__(self, *names: str, unset: str | None = None, **options: Any) -> None:
        self.names, self.unset, self.options = names, unset, options
        self.dest = options.get("dest") or max(names, key=len).lstrip("-").replace("-", "_")

    def add(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, **changes: Any) -> None:
        options = {**self.options, **changes}
        default = options.get("default")
        if "(default:" in options["help"]:
            pass  # this command words its default itself
        elif default is None and self.unset:
            options["help"] += f" (default: {self.unset})"
        elif not (default is None or isinstance(default, bool) or default in (argparse.SUPPRESS, [])):
            options["help"] += " (default: %(default)s)"
        action = parser.add_argument(*self.names, **options)
        action.shared_flag = self.dest  # type: ignore[attr-defined]  # lets a test find flags declared twice


_PRECISIONS = ["fp32", "bf16", "fp16", "int8"]
_BACKEND_HELP = (
    "inference runtime: auto = the runtime of --model-file (from its suffix), else the fastest exact runtime "
    "installed (ONNX Runtime, else OpenVINO, else torch), exported once into $TORCH_HOME/resnext and reused; with "
    "--precision bf16|int8 the approximate runtimes (agreement is reported)"
)
_WEIGHTS_HELP = (
    "published weights name, checkpoint, training checkpoint or export-weights file (.pth, .safetensors or a "
    "Hub folder), URL, hf-hub:owner/name[@revision], or 'random' (published weights are cached in "
    "$TORCH_HOME/hub/checkpoints, hf-hub: in huggingface_hub's cache)"
)
_CHECKPOINT_ARCH = f"the checkpoint's own, else {DEFAULT_ARCH}"

#: Every flag that more than one command takes, by destination name.
FLAGS: dict[str, Flag] = {
    flag.dest: flag
    for flag in (
        Flag("inputs", nargs="*", metavar="PATH|URL|DIR|GLOB", help="images, folders, quoted globs or URLs"),
        Flag("--arch", choices=list_models(), help="architecture", unset=_CHECKPOINT_ARCH),
        Flag(
            "--weights",
            default="DEFAULT",
            metavar="NAME|FILE|DIR|URL|hf-hub:ID",
            help=_WEIGHTS_HELP,
            unset="random weights",
        ),
        Flag("--backend", default=AUTO, choices=[AUTO, *RUNTIMES], help=_BACKEND_HELP),
        Flag("--model-file", metavar="PATH", help="exported model (see `resnext export`)"),
        Flag("--device", default="auto", help="auto, cpu, cuda or cuda:N"),
        Flag("--precision", choices=_PRECISIONS, help="numeric precision", unset="fp32, or an exported file's own"),
        Flag("--calibration-dir", metavar="DIR", help="images for int8 calibration", unset="the bundled samples"),
        Flag("--image-size", type=crop_size, metavar="PX", help="center-crop size", unset="the model's own"),
        Flag("--batch-size", "-b", type=positive_int, default=16, metavar="N", help="images per forward pass"),
        Flag("--workers", "-j", type=non_negative_int, default=2, metavar="N", help="decoding processes; 0 = none"),
        Flag("--threads", type=positive_int, metavar="N", help="CPU threads", unset="one per physical core"),
        Flag("--channels-last", action="store_true", help="run the model in NHWC memory format"),
        Flag("--topk", type=positive_int, default=5, metavar="K", help="classes per image"),
        Flag("--json", action="store_true", help="print JSON on stdout instead of text"),
        Flag("-o", "--json-file", metavar="PATH", help="also write the result as JSON to PATH"),
        Flag("--warmup", type=non_negative_int, default=2, metavar="N", help="untimed calls per row"),
        Flag("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes it to the network"),
        Flag("--name", help="model name", unset="the architecture"),
        Flag("--protocol", default="http", choices=["http", "grpc"], help="Triton's HTTP or gRPC endpoint"),
        Flag("--max-batch-size", type=positive_int, default=64, metavar="N", help="largest batch Triton forms"),
        Flag("--max-queue-delay-us", type=non_negative_int, default=2000, metavar="US", help="wait for a fuller batch"),
        Flag("--preferred-batch-sizes", type=positive_int_list, default=[], metavar="B,B", help="batcher targets"),
        Flag("--instances", type=positive_int, default=1, metavar="N", help="model instances running in parallel"),
        Flag("--actors", type=positive_int, default=2, metavar="N", help="Ray model replicas (actors)"),
        Flag("--cpus-per-actor", type=positive_float, default=1.0, metavar="CPUS", help="CPUs Ray reserves per actor"),
        Flag("--ema", action="store_true", help="the EMA weights of a training checkpoint"),
    )
}


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str, **changes: Any) -> None:
    """Add the shared flags ``names`` (destination names). A keyword changes that flag for this command: a dict
    replaces ``add_argument`` options (``precision={"choices": [...]}``), any other value is its default."""
    for name in (*names, *(n for n in changes if n not in names)):
        change = changes.get(name, {})
        FLAGS[name].add(parser, **(change if isinstance(change, dict) else {"default": change}))


def add_model_args(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """``--arch`` and ``--weights``: the model source (see :mod:`resnext.model.sources`)."""
    add_flags(parser, "arch", "weights", **defaults)


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """Which runtime runs the model, where and in what precision."""
    add_flags(parser, "backend", "model_file", "device", "precision", "calibration_dir")


def model_spec(args: argparse.Namespace, *, categories: list[str] | None = None) -> Any:
    """The model the command's flags describe (source, runtime, precision, ...): one place for every command."""
    from ..bulk.engine import ModelSpec
    from ..util import call_with

    return call_with(ModelSpec, args, categories=tuple(categories) if categories else None)


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
