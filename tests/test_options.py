"""resnext.options: a dataclass field declared with ``option()`` is a flag; its check runs on the command line
(argparse's one-line error) and when the config is built in Python (the same words, as a ResnextError)."""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass

import pytest

from resnext.errors import ResnextError
from resnext.options import (
    PRECISIONS,
    as_precision,
    at_least,
    between,
    check_options,
    each,
    greater_than,
    option,
    options_from,
    precisions,
)
from resnext.options import add_options as add


@dataclass
class Toy:
    path: str = option(MISSING, flags=("path",), metavar="PATH", help="where")
    size: int = option(16, flags=("--size", "-s"), check=at_least(1), metavar="N", help="images per step")
    rate: float = option(0.5, check=between(0.0, 1.0, high_open=True), help="a fraction")
    mode: str = option("fast", choices=("fast", "exact"), help="how")
    sizes: tuple[int, ...] = option((1, 2), check=each(at_least(1)), help="targets")
    limit: int | None = option(None, check=at_least(1), help="at most", unset="no limit")
    quiet: bool = option(False, help="say less")
    progress: bool = option(True, flags=("--no-progress",), help="no progress bar")
    internal: int = 3  # not a flag

    def __post_init__(self) -> None:
        check_options(self)


def parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy", exit_on_error=False)
    add(p, Toy, **kwargs)
    return p


def test_every_option_field_is_a_flag_whose_dest_is_the_field():
    args = parser().parse_args(["p", "-s", "4", "--rate", "0.25", "--mode", "exact", "--sizes", "3,4"])
    args2 = parser().parse_args(["p", "--limit", "9", "--quiet", "--no-progress"])
    assert options_from(Toy, args) == Toy("p", 4, 0.25, "exact", [3, 4])
    assert options_from(Toy, args2) == Toy("p", limit=9, quiet=True, progress=False)
    assert not hasattr(args, "internal")


def test_a_switch_stores_the_opposite_of_its_default():
    assert parser().parse_args(["p"]).progress is True
    assert parser().parse_args(["p", "--no-progress"]).progress is False


def test_help_shows_the_default_or_what_unset_means():
    text = parser().format_help()
    assert "images per step (default: 16)" in text
    assert "at most (default: no limit)" in text
    assert "targets (default: 1,2)" in text
    assert "say less\n" in text  # a switch shows no default


@pytest.mark.parametrize(
    "argv, message",
    [
        (["p", "--size", "0"], "argument --size/-s: must be an integer >= 1, got 0"),
        (["p", "--size", "x"], "argument --size/-s: expected an integer >= 1, got 'x'"),
        (["p", "--rate", "1"], "argument --rate: must be a number >= 0 and < 1, got 1"),
        (["p", "--rate", "nan"], "argument --rate: must be a number >= 0 and < 1, got nan"),
        (["p", "--sizes", "2,0"], "argument --sizes: must be an integer >= 1, got 0"),
        (["p", "--mode", "slow"], "argument --mode: invalid choice: 'slow'"),
    ],
)
def test_a_bad_value_is_refused_when_parsed(argv, message):
    with pytest.raises(argparse.ArgumentError, match=message.replace("(", r"\(").split("argument ")[1]):
        parser().parse_args(argv)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 0}, "--size must be an integer >= 1, got 0"),
        ({"rate": 1.0}, "--rate must be a number >= 0 and < 1, got 1"),
        ({"rate": math.nan}, "--rate must be a number >= 0 and < 1, got nan"),
        ({"sizes": (2, 0)}, "--sizes must be an integer >= 1, got 0"),
        ({"mode": "slow"}, "unknown --mode 'slow'; choose one of fast, exact"),
        ({"limit": 0}, "--limit must be an integer >= 1, got 0"),
        ({"size": "4"}, "--size must be an integer >= 1, got 4"),  # text is not a number
    ],
)
def test_the_same_check_runs_when_the_config_is_built_in_python(kwargs, message):
    with pytest.raises(ResnextError) as caught:
        Toy("p", **kwargs)
    assert str(caught.value) == message


def test_none_passes_only_where_the_default_is_none():
    assert Toy("p", limit=None).limit is None
    with pytest.raises(ResnextError, match="--size"):
        Toy("p", size=None)  # type: ignore[arg-type]


def test_given_only_leaves_flags_not_given_out_of_the_namespace():
    args = parser(given_only=True).parse_args(["p", "-s", "3"])
    assert vars(args) == {"path": "p", "size": 3}
    assert "images per step (default: 16)" in parser(given_only=True).format_help()


def test_a_command_may_skip_options_or_change_a_default_but_only_of_fields_that_exist():
    p = parser(skip=("quiet",), defaults={"size": 64})
    args = p.parse_args(["p"])
    assert args.size == 64 and not hasattr(args, "quiet") and "(default: 64)" in p.format_help()
    with pytest.raises(ValueError, match="no option quite"):
        parser(skip=("quite",))
    with pytest.raises(ValueError, match="no option sise"):
        parser(defaults={"sise": 1})


def test_options_from_reads_only_the_config_s_own_fields_and_given_values_win():
    args = argparse.Namespace(path="p", size=2, unrelated=1, internal=99)
    assert options_from(Toy, args) == Toy("p", 2)  # internal is no option: not read
    assert options_from(Toy, args, size=5).size == 5
    assert options_from(Toy, {"path": "q"}).path == "q"


def test_check_wording():
    assert at_least(0).what == "an integer >= 0" and at_least(0.0).what == "a number >= 0"
    assert greater_than(0.0).what == "a number > 0"
    assert between(32, 1024).what == "an integer from 32 to 1024"
    assert between(0.0, 1.0, low_open=True, high_open=True).what == "a number > 0 and < 1"
    assert not greater_than(0.0).accepts(math.inf) and not at_least(0).accepts(True)


def test_one_precision_type_narrowed_by_choices():
    assert PRECISIONS == ("fp32", "tf32", "bf16", "fp16", "int8")
    assert precisions("tf32") == ("fp32", "bf16", "fp16", "int8")
    assert as_precision("bf16") == "bf16"
    with pytest.raises(ResnextError, match="unknown precision 'fp64'"):
        as_precision("fp64")
