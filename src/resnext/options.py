"""Options declared once, on the config dataclasses: the command-line flags are made from them.

A config field declared with :func:`option` carries its flag's help, option strings, choices and value check in
its metadata (transformers' ``HfArgumentParser`` does the same). From that one declaration:

* :func:`add_options` adds the field's flag to a command's parser (``dest`` is the field's name); a bad value is
  refused when the command line is parsed: one line, exit status 2, before any model loads;
* :func:`options_from` builds the config from the parsed flags, reading exactly that config's own fields;
* :func:`check_options`, called by each config's ``__post_init__``, refuses the same values with the same words
  when a library user builds the config in Python (``ServeConfig(max_batch_size=0)``).

Flags that several configs take (image size, precision, ...) are declared once, as a function returning the field
(:func:`image_size_option`, ...), so a flag means the same in every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, get_args

from .errors import ResnextError

__all__ = [
    "PRECISIONS",
    "Check",
    "as_precision",
    "Precision",
    "add_options",
    "at_least",
    "between",
    "check_options",
    "greater_than",
    "option",
    "declared",
    "options_from",
]

#: Every numeric precision the package knows; a config narrows it with ``choices`` (training has no int8, ONNX
#: Runtime no fp16, ...). tf32 is fp32 storage with TF32 matmuls on CUDA.
Precision = Literal["fp32", "tf32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

#: Smallest and largest center crop accepted: smaller crops break the network's strides, and 1024 px already
#: needs ~21x the activations of 224 px.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024

_KEY = "resnext.option"  # the field metadata entry this module writes and reads
C = TypeVar("C")


def as_precision(name: str) -> Precision:
    """``name`` as a :data:`Precision`, or a one-line error listing the known ones."""
    for known in get_args(Precision):
        if name == known:
            return known  # type: ignore[no-any-return]
    raise ResnextError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")


def precisions(*excluded: str) -> tuple[str, ...]:
    """:data:`PRECISIONS` without ``excluded``, in the package's order (a config's ``choices``)."""
    return tuple(p for p in PRECISIONS if p not in excluded)


# ---------------------------------------------------------------------------------------------------------------
# Checks


@dataclasses.dataclass(frozen=True)
class Check:
    """What a value must be: ``kind`` (int or float) is what the flag's text parses to, ``what`` the requirement
    as the one-line error words it (``an integer >= 1``), ``test`` the requirement itself."""

    kind: type
    what: str
    test: Callable[[Any], bool]
    each: bool = False  # the value is a list (``1,16,64`` on the command line): every item must pass

    def failure(self, value: Any) -> str | None:
        """``must be <what>, got <value>`` when ``value`` (each item of it, with ``each``) fails, else None."""
        for item in value if self.each else [value]:
            if not self.accepts(item):
                return f"must be {self.what}, got {_number(item)}"
        return None

    def accepts(self, item: Any) -> bool:
        """Whether one value (one item of a list) meets the requirement."""
        return not isinstance(item, bool) and isinstance(item, (int, float)) and self.test(item)


def _number(value: Any) -> str:
    """``-1`` for -1.0 (as it was typed), ``0.5``, ``nan``: a value in an error message."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _kind_words(low: float) -> tuple[type, str]:
    return (int, "an integer") if isinstance(low, int) else (float, "a number")


def at_least(low: float) -> Check:
    """``low`` or more; an int ``low`` asks for integers, a float for (finite) numbers."""
    kind, words = _kind_words(low)
    return Check(kind, f"{words} >= {low:g}", lambda v: math.isfinite(v) and v >= low)


def greater_than(low: float) -> Check:
    """More than ``low`` (a finite number)."""
    kind, words = _kind_words(low)
    return Check(kind, f"{words} > {low:g}", lambda v: math.isfinite(v) and v > low)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """From ``low`` to ``high``; ``low_open``/``high_open`` leave that end out."""
    kind, words = _kind_words(low)
    if kind is int and not (low_open or high_open):
        what = f"an integer from {low} to {high}"
    else:
        what = f"{words} {'>' if low_open else '>='} {low:g} and {'<' if high_open else '<='} {high:g}"

    def test(v: float) -> bool:
        return math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Check(kind, what, test)


def each(check: Check) -> Check:
    """A comma-separated list (``1,16,64``) whose every item passes ``check``."""
    return dataclasses.replace(check, each=True)


def comma_list(text: str) -> list[str]:
    """``"torch,onnxruntime"`` -> ``["torch", "onnxruntime"]`` (a ``parse`` for lists of names)."""
    return [item.strip() for item in text.split(",") if item.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Declaring


@dataclasses.dataclass(frozen=True)
class Option:
    """One field's flag (see :func:`option`)."""

    help: str
    flags: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    check: Check | None = None
    metavar: str | None = None
    unset: str | None = None
    nargs: str | None = None
    parse: Callable[[str], Any] | None = None

    def option_strings(self, name: str) -> tuple[str, ...]:
        return self.flags or ("--" + name.replace("_", "-"),)

    def flag(self, name: str) -> str:
        """The name an error message gives: the longest option string (``--batch-size``)."""
        return max(self.option_strings(name), key=len)


def option(
    default: Any = None,
    *,
    help: str,
    flags: Sequence[str] = (),
    choices: Sequence[str] | None = None,
    check: Check | None = None,
    metavar: str | None = None,
    unset: str | None = None,
    nargs: str | None = None,
    parse: Callable[[str], Any] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag.

    ``flags``: option strings (default ``--field-name``; a name without ``-`` is a positional argument).
    ``unset``: what a None default means, for the help (``the model's own``). A bool field is a switch (its flag
    stores the opposite of the default); a field with a ``check`` parses as the check's kind, any other as the
    type of its default (str when None), or with ``parse``.
    """
    choices = tuple(choices) if choices is not None else None
    meta = Option(help, tuple(flags), choices, check, metavar, unset, nargs, parse)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={_KEY: meta})
    return dataclasses.field(default=default, metadata={_KEY: meta})


def declared(cls: type) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of the dataclass ``cls`` declared with :func:`option`, in declaration order."""
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


# ---------------------------------------------------------------------------------------------------------------
# Checking a config


def check_options(config: Any) -> None:
    """Raise a one-line :class:`ResnextError` naming the flag for the first value of ``config`` its declaration
    refuses (a choice it does not list, a number out of range). None passes where the default is None."""
    for f, meta in declared(type(config)):
        value = getattr(config, f.name)
        if value is None and _default(f) is None:
            continue
        if meta.choices is not None and value not in meta.choices:
            raise ResnextError(f"unknown {meta.flag(f.name)} {value!r}; choose one of {', '.join(meta.choices)}")
        failure = meta.check.failure(value) if meta.check else None
        if failure:
            raise ResnextError(f"{meta.flag(f.name)} {failure}")


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _parse_with(check: Check | None, kind: type | None = None) -> Callable[[str], Any]:
    """The argparse ``type``: the text as ``kind`` (default: the check's; a list with ``each``), refused as the
    check words it."""
    kind = kind or (check.kind if check else str)
    what = check.what if check else ("an integer" if kind is int else "a number")

    def parse_one(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from exc
        if check and not check.accepts(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {_number(value)}")
        return value

    if not (check and check.each):
        return parse_one

    def parse_list(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        return [parse_one(t) for t in items]

    return parse_list


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value).replace("%", "%%")


def _help(meta: Option, default: Any) -> str:
    """The help: the declared text, then what the default is (unless the text says it, or it is a switch)."""
    if "(default:" in meta.help:
        return meta.help
    if default is None:
        shown = meta.unset
    elif isinstance(default, bool) or (isinstance(default, (list, tuple)) and not default):
        shown = None
    else:
        shown = _shown(default)
    return " ".join(filter(None, [meta.help, shown and f"(default: {shown})"]))


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    given_only: bool = False,
) -> None:
    """Add a flag for every :func:`option` field of the dataclass ``cls`` but those named in ``skip``.

    ``defaults``: this command's own defaults for some fields (a benchmark runs random weights), shown in the help.
    ``given_only``: a flag not given leaves its field out of the parsed namespace (so a layer of defaults below
    the flags, such as training's ``--recipe``, is not overwritten by the field's own default).
    """
    options = declared(cls)
    defaults = defaults or {}
    unknown = (set(skip) | set(defaults)) - {f.name for f, _ in options}
    if unknown:
        raise ValueError(f"{cls.__name__} has no option {', '.join(sorted(unknown))}")
    for f, meta in options:
        if f.name not in skip:
            _add(parser, cls, f, meta, defaults.get(f.name, _default(f)), given_only)


def _add(parser: Any, cls: type, f: dataclasses.Field, meta: Option, default: Any, given_only: bool) -> None:
    names = meta.option_strings(f.name)
    kwargs: dict[str, Any] = {"help": _help(meta, default), "default": argparse.SUPPRESS if given_only else default}
    if names[0].startswith("-"):
        kwargs["dest"] = f.name
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs["required"] = True
    if isinstance(default, bool):
        kwargs["action"] = "store_false" if default else "store_true"
    else:
        kind = meta.check.kind if meta.check else type(default) if isinstance(default, (int, float)) else str
        if meta.parse or meta.check or kind is not str:
            kwargs["type"] = meta.parse or _parse_with(meta.check, kind)
        for key in ("choices", "metavar", "nargs"):
            if getattr(meta, key) is not None:
                kwargs[key] = list(getattr(meta, key)) if key == "choices" else getattr(meta, key)
    action = parser.add_argument(*names, **kwargs)
    action.option_of = cls  # type: ignore[attr-defined]  # lets a test follow each flag to the field it fills


def options_from(cls: type[C], args: argparse.Namespace | Mapping[str, Any], /, **given: Any) -> C:
    """``cls(**given)`` plus, for each of ``cls``'s own :func:`option` fields, the parsed flag of that field (a
    flag the command does not take keeps the field's default). Checked by the config's ``__post_init__``."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    taken = {f.name: values[f.name] for f, _ in declared(cls) if f.name in values and f.name not in given}
    return cls(**taken, **given)


# ---------------------------------------------------------------------------------------------------------------
# Flags several configs take, declared once


def image_size_option(default: int | None = None, *, help: str = "center-crop size", metavar: str = "PX") -> Any:
    return option(
        default, help=help, check=between(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), metavar=metavar, unset="the model's own"
    )


def batch_size_option(default: int = 16, *, help: str = "images per forward pass") -> Any:
    return option(default, flags=("--batch-size", "-b"), help=help, check=at_least(1), metavar="N")


def workers_option(default: int = 2) -> Any:
    return option(
        default, flags=("--workers", "-j"), help="decoding processes; 0 = none", check=at_least(0), metavar="N"
    )


def threads_option(help: str = "CPU threads") -> Any:
    return option(None, help=help, check=at_least(1), metavar="N", unset="one per physical core")


def device_option(help: str = "auto, cpu, cuda or cuda:N") -> Any:
    return option("auto", help=help)


def precision_option(
    default: str | None = None,
    *,
    choices: Sequence[str] = precisions("tf32"),
    help: str = "numeric precision",
    unset: str = "fp32, or an exported file's own",
) -> Any:
    return option(default, help=help, choices=choices, unset=unset)


def calibration_dir_option() -> Any:
    return option(None, help="images for int8 calibration", metavar="DIR", unset="the bundled samples")


def topk_option() -> Any:
    return option(5, help="classes per image", check=at_least(1), metavar="K")


def max_batch_size_option() -> Any:
    return option(64, help="largest batch Triton forms", check=at_least(1), metavar="N")


def max_queue_delay_option() -> Any:
    return option(2000, help="wait for a fuller batch", check=at_least(0), metavar="US")


def preferred_batch_sizes_option() -> Any:
    return option((), help="batcher targets", check=each(at_least(1)), metavar="B,B")


def instances_option() -> Any:
    return option(1, help="model instances running in parallel", check=at_least(1), metavar="N")


def model_name_option() -> Any:
    return option(None, help="model name", unset="the architecture")


def host_option() -> Any:
    """A server's address: loopback unless asked."""
    return option("127.0.0.1", help="address to bind; 0.0.0.0 exposes it to the network")


def port_option(default: int, help: str = "") -> Any:
    return option(default, help=help, check=between(1, 65535))
