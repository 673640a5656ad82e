"""Flags made from the config dataclasses (:mod:`resnext.options`), ``add_command``: every flag a config declares
reaches that config's field, and a bad value is refused with the same words on the command line and in Python."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from resnext import cli
from resnext.errors import ResnextError
from resnext.options import Option, declared, options_from


def commands(parser: argparse.ArgumentParser | None = None, prefix: tuple[str, ...] = ()):
    """(command words, parser) for every leaf command, nested ones included."""
    parser = parser or cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from commands(sub, (*prefix, name))
                else:
                    yield (*prefix, name), sub


ALL = dict(commands())


def option_actions(words: tuple[str, ...]) -> list[tuple[argparse.Action, type, Option]]:
    """The flags of a command that a config declared: (action, config class, its declaration)."""
    found = []
    for action in ALL[words]._actions:
        cls = getattr(action, "option_of", None)
        if cls is not None:
            meta = {f.name: m for f, m in declared(cls)}[action.dest]
            found.append((action, cls, meta))
    return found


def test_every_command_is_found():
    assert {"classify", "embed", "serve", "client", "export", "evaluate", "train"} <= {c[-1] for c in ALL}
    assert {("benchmark", k) for k in ("inference", "training", "report", "compare", "serving", "bulk")} <= set(ALL)


@pytest.mark.parametrize("words", sorted(ALL), ids=" ".join)
def test_every_flag_is_a_config_option_or_declared_as_the_command_lines_own(words):
    """A flag added by hand (``p.add_argument``) would bypass the configs: each is a config's option, or marked
    by ``add_cli_flag`` as the command line's own (what to read, how to print)."""
    for action in ALL[words]._actions:
        if action.dest in ("help", "verbose"):
            continue
        of_config, own = getattr(action, "option_of", None) is not None, getattr(action, "cli_only", False)
        assert of_config != own, f"{' '.join(words)} {action.option_strings or action.dest}"
        if of_config:
            assert action.dest in {f.name for f, _ in declared(action.option_of)}


# ---------------------------------------------------------------------------------------------------------------
# Every declared flag reaches its field


def _other_value(action: argparse.Action, meta: Option, default: object) -> tuple[list[str], object]:
    """Command-line words that give the flag a valid value other than its default, and that value parsed."""
    option = action.option_strings[-1] if action.option_strings else None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return [option], not default
    if meta.choices:
        value = [c for c in meta.choices if c != default][-1]
        text = value
    elif meta.check is not None and meta.check.each:
        text, value = "2,3", [2, 3]
    elif meta.check is not None:
        value = next(v for v in (1, 2, 33, 0.5, 0) if meta.check.failure(meta.check.kind(v)) is None and v != default)
        value = meta.check.kind(value)
        text = str(value)
    elif meta.parse is not None:
        text = "torch,onnxruntime"
        value = meta.parse(text)
    elif isinstance(default, int):
        text, value = "19", 19
    else:
        text, value = "x1", "x1"
    return ([option, text] if option else [text]), value


def _argv(words: tuple[str, ...], target: argparse.Action, target_words: list[str]) -> list[str]:
    """``target_words`` for ``target`` in its place, and a value for each other required argument."""
    argv = []
    for action in ALL[words]._actions:
        if action is target:
            argv += target_words
        elif action.required or (not action.option_strings and action.nargs is None):
            value = action.choices[0] if action.choices else "x0"
            argv += [action.option_strings[0], value] if action.option_strings else [value]
    return argv


@pytest.mark.parametrize("words", sorted(ALL), ids=" ".join)
def test_every_declared_flag_fills_its_config_field(words):
    """Each flag of a config, given a value other than its default, arrives in the field of that config that
    :func:`options_from` builds (so a command that builds the config passes every flag it took)."""
    for action, cls, meta in option_actions(words):
        field = next(f for f, _ in declared(cls) if f.name == action.dest)
        default = action.default if action.default is not argparse.SUPPRESS else dataclasses.MISSING
        if default is dataclasses.MISSING:
            default = field.default if field.default is not dataclasses.MISSING else None
        flag_words, value = _other_value(action, meta, default)
        args = ALL[words].parse_args(_argv(words, action, flag_words))
        given = {"task": "classify", "sources": [], "output": "o"} if cls.__name__ == "BulkJob" else {}
        config = options_from(cls, args, **given)
        assert getattr(config, action.dest) == value, f"{' '.join(words)} {flag_words}"


def test_a_flag_of_another_config_is_not_read():
    """``options_from`` reads the fields of the class it builds, whatever else the namespace holds."""
    from resnext.serve.server import ServeConfig

    args = cli.build_parser().parse_args(["serve", "--image-size", "64", "--topk", "3"])
    config = options_from(ServeConfig, args)
    assert config.topk == 3 and not hasattr(config, "image_size")


# ---------------------------------------------------------------------------------------------------------------
# One check, one message: on the command line and in Python


def _bad_value(meta: Option) -> str:
    check = meta.check
    assert check is not None
    for candidate in ("-1", "0", "100000", "nan", "1.5"):
        try:
            value = check.kind(candidate)
        except ValueError:
            continue
        if check.failure([value] if check.each else value):
            return candidate
    raise AssertionError(f"no bad value for {check.what}")


def _required_fields(cls: type) -> dict[str, object]:
    values: dict[str, object] = {}
    options = {f.name: m for f, m in declared(cls)}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            meta = options.get(f.name)
            values[f.name] = (
                meta.choices[0] if meta and meta.choices else {"task": "classify", "sources": []}.get(f.name, "x0")
            )
    return values


CHECKED = sorted(
    {
        (words, a.option_strings[-1] if a.option_strings else a.dest)
        for words in ALL
        for a, _, m in option_actions(words)
        if m.check
    },
    key=str,
)


@pytest.mark.parametrize("words, flag", CHECKED, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v)
def test_a_bad_value_is_the_same_one_line_error_in_python_and_on_the_command_line(words, flag, capsys):
    ((action, cls, meta),) = [
        (a, c, m) for a, c, m in option_actions(words) if (a.option_strings[-1] if a.option_strings else a.dest) == flag
    ]
    bad = _bad_value(meta)
    argv = [*words, *_argv(words, action, [*([flag] if action.option_strings else []), bad])]
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    shown = "/".join(action.option_strings) if action.option_strings else action.metavar
    prefix = f"resnext: error: argument {shown}: "
    assert line.startswith(prefix), line
    cli_reason = line[len(prefix) :].split(" (see ")[0]
    value = [meta.check.kind(bad)] if meta.check.each else meta.check.kind(bad)
    with pytest.raises(ResnextError) as caught:
        cls(**{**_required_fields(cls), action.dest: value})
    assert str(caught.value) == f"{meta.flag(action.dest)} {cli_reason}"


@pytest.mark.parametrize(
    "argv",
    [
        ["classify", "--image-size", "16"],
        ["embed", "--batch-size", "0"],
        ["export", "--format", "onnx", "--output", "x.onnx", "--image-size", "4096"],
        ["evaluate", "d", "--workers", "-2"],
        ["serve", "--max-batch-size", "0"],
        ["serve", "--http-port", "70000"],
        ["demo", "--port", "0"],
        ["triton-repo", "out", "--format", "onnx", "--preferred-batch-sizes", "4,0"],
        ["client", "--topk", "none"],
        ["benchmark", "serving", "--concurrency", "1,-1"],
        ["benchmark", "bulk", "d", "--actors", "0"],
        ["train", "--lr", "0"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_bad_numbers_are_one_line_exit_2_in_every_command(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: argument" in err[0] and "Traceback" not in err[0]


def test_a_choice_the_config_does_not_list_is_refused_in_python_too():
    from resnext.bulk.engine import ModelSpec
    from resnext.serve.repository import RepoConfig

    with pytest.raises(ResnextError, match=r"unknown --precision 'fp64'; choose one of fp32, bf16, fp16, int8"):
        ModelSpec(precision="fp64")
    with pytest.raises(ResnextError, match=r"unknown --kind 'tpu'"):
        RepoConfig("out", "onnx", kind="tpu")


def test_precision_choices_narrow_the_one_precision_type():
    from resnext.options import PRECISIONS, Precision

    assert Precision.__args__ == PRECISIONS  # type: ignore[attr-defined]
    for words in ALL:
        for action, _, meta in option_actions(words):
            if action.dest == "precision" and meta.choices:
                assert set(meta.choices) <= set(PRECISIONS), words


def test_unknown_command_and_unknown_flag_are_one_line():
    for argv in (["frobnicate"], ["classify", "--frobnicate"]):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(argv)
        assert cli.main(argv) == 2


# ---------------------------------------------------------------------------------------------------------------
# Help and defaults come from the declarations


def _listed_help(words: tuple[str, ...]) -> str:
    """What ``resnext [group] --help`` lists beside the command ``words[-1]``."""
    parent = _group(words[:-1])
    (group,) = [a for a in parent._actions if isinstance(a, argparse._SubParsersAction)]
    return next(c.help for c in group._choices_actions if c.dest == words[-1])


def _group(words: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    for word in words:
        (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = group.choices[word]
    return parser


@pytest.mark.parametrize("words", sorted(ALL), ids=" ".join)
def test_help_and_description_are_the_run_functions_docstring(words):
    run = ALL[words].get_default("func")
    assert run is not None and run.__doc__, f"{' '.join(words)} has no documented run function"
    summary, _, details = inspect.cleandoc(run.__doc__).partition("\n")
    assert _listed_help(words).lower() == summary.rstrip(".").replace("%", "%%").lower()
    assert ALL[words].description.startswith(" ".join(details.split()) or summary[:1].lower())


@pytest.mark.parametrize("words", sorted(ALL), ids=" ".join)
def test_each_flags_help_starts_with_its_declared_help_and_shows_its_default(words):
    for action, cls, meta in option_actions(words):
        shown_help = (action.help or "") % {"default": action.default}  # as argparse prints it
        assert shown_help.startswith(meta.help % {"default": action.default}), (words, action.dest)
        default = next(f.default for f, _ in declared(cls) if f.name == action.dest)
        if action.default is not argparse.SUPPRESS:  # train: the recipe's value may differ, the field's is shown
            default = action.default
        if isinstance(default, bool) or default in (None, (), [], dataclasses.MISSING):
            continue
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        assert f"(default: {shown}" in shown_help, (words, action.dest)


def test_a_command_changes_a_shared_default_through_its_own_config():
    evaluate, classify = ALL[("evaluate",)], ALL[("classify",)]
    assert evaluate.get_default("batch_size") == 64 and classify.get_default("batch_size") == 16
    assert evaluate.parse_args(["d", "-b", "8"]).batch_size == classify.parse_args(["--batch-size", "8"]).batch_size


def test_serve_flags_arrive_in_the_server_config():
    from resnext.serve.server import ServeConfig

    argv = ["serve", "--max-batch-size", "8", "--instances", "3", "--preferred-batch-sizes", "2,4", "--topk", "2"]
    argv += ["--host", "0.0.0.0", "--http-port", "9000", "--max-queue-delay-us", "50", "--name", "m"]
    config = options_from(ServeConfig, cli.build_parser().parse_args(argv))
    assert (config.max_batch_size, config.instances, config.preferred_batch_sizes, config.topk) == (8, 3, [2, 4], 2)
    assert (config.host, config.http_port, config.max_queue_delay_us, config.name) == ("0.0.0.0", 9000, 50, "m")


def test_the_started_server_gets_flags_that_rebuild_the_same_model():
    """``benchmark serving`` starts ``resnext serve`` from a ModelSpec: the flags it writes parse back to it."""
    from resnext.bench.serving import serve_flags
    from resnext.bulk.engine import ModelSpec
    from resnext.cli.common import model_spec

    spec = ModelSpec(
        "resnext_test", "w.pth", "onnxruntime", "m.onnx", "cpu", "int8", calibration_dir="c", image_size=64
    )
    assert model_spec(cli.build_parser().parse_args(["serve", *serve_flags(spec)])) == spec
