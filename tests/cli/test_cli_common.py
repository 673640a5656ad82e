"""The shared flag table, ``add_command`` and ``call_with``: one declaration per flag, and no flag whose value a
command silently drops on the way to its library config."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from resnext import cli
from resnext.cli.common import FLAGS
from resnext.util import call_with


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
#: The one flag name that means something else in one place: the inference benchmarks measure a comma-separated
#: list of precisions where every other command runs one.
OTHER_MEANING = {("benchmark", "inference", "--precision"), ("benchmark", "report", "--precision")}
#: ``train`` keeps NVIDIA's flag names: they are the fields of ``TrainConfig``, declared once in train_config.
OWN_TABLE = {("train",)}


def test_every_command_is_found():
    assert {"classify", "embed", "serve", "client", "export", "evaluate"} <= {c[-1] for c in ALL}
    assert {("benchmark", k) for k in ("inference", "training", "report", "compare", "serving", "bulk")} <= set(ALL)


@pytest.mark.parametrize("words", sorted(set(ALL) - OWN_TABLE), ids=" ".join)
def test_a_shared_flag_is_never_declared_again_by_hand(words):
    names = {name: dest for dest, flag in FLAGS.items() for name in flag.names if name.startswith("--")}
    for action in ALL[words]._actions:
        for option in action.option_strings:
            if option in names and (*words, option) not in OTHER_MEANING:
                assert getattr(action, "shared_flag", None) == names[option], f"{' '.join(words)} {option}"


def test_every_shared_flag_is_shared():
    used = {a.shared_flag for p in ALL.values() for a in p._actions if hasattr(a, "shared_flag")}
    counts = {
        dest: sum(any(getattr(a, "shared_flag", None) == dest for a in p._actions) for p in ALL.values())
        for dest in FLAGS
    }
    assert used == set(FLAGS)
    assert [dest for dest, n in counts.items() if n < 2] == []


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
    ],
    ids=lambda argv: " ".join(argv),
)
def test_bad_numbers_are_one_line_exit_2_in_every_command(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: argument" in err[0] and "Traceback" not in err[0]


def test_unknown_command_and_unknown_flag_are_one_line():
    for argv in (["frobnicate"], ["classify", "--frobnicate"]):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(argv)
        assert cli.main(argv) == 2


def test_a_command_changes_a_shared_default_without_changing_its_meaning():
    evaluate, classify = ALL[("evaluate",)], ALL[("classify",)]
    assert evaluate.get_default("batch_size") == 64 and classify.get_default("batch_size") == 16
    assert evaluate.parse_args(["d", "-b", "8"]).batch_size == classify.parse_args(["--batch-size", "8"]).batch_size


# ---------------------------------------------------------------------------------------------------------------
# call_with: the flag -> config step every command uses


def test_call_with_takes_attributes_by_name_keeps_defaults_and_lets_given_values_win():
    @dataclasses.dataclass
    class Config:
        a: int
        b: int = 2
        c: int = 3

    values = argparse.Namespace(a=1, c=30, unrelated="x")
    assert call_with(Config, values) == Config(1, 2, 30)
    assert call_with(Config, values, c=300) == Config(1, 2, 300)
    with pytest.raises(TypeError):
        call_with(Config, argparse.Namespace(b=1))  # a required field with no flag is a bug, not a default


def _consumers():
    from resnext.bench.bulk import BulkBenchConfig
    from resnext.bench.inference import BenchConfig
    from resnext.bench.report import ReportConfig, training_rows
    from resnext.bench.serving import ServingConfig
    from resnext.bulk.engine import BulkJob, ModelSpec
    from resnext.bulk.ray_engine import RayOptions
    from resnext.demo import create_demo_model
    from resnext.export.driver import ExportConfig
    from resnext.serve.repository import RepoConfig
    from resnext.serve.server import ServeConfig
    from resnext.training.evaluate import evaluate_folder

    bulk = [ModelSpec, BulkJob, RayOptions]
    # flags the run function reads itself (printing, inputs, options renamed on the way)
    own = {"func", "verbose", "json", "json_file", "inputs", "from_list", "engine", "ray_address", "labels"}
    return {
        ("classify",): (bulk, own | {"plot", "explain", "threads"}),
        ("embed",): (bulk, own | {"threads"}),
        ("serve",): ([ServeConfig, ModelSpec], own),
        ("triton-repo",): ([RepoConfig], own),
        ("client",): ([], own | {"url", "protocol", "model", "topk", "timeout"}),
        ("demo",): ([create_demo_model], own | {"host", "port", "no_explain", "calibration_dir"}),
        ("export",): ([ExportConfig], own | {"batch_size_range"}),
        ("evaluate",): ([evaluate_folder], own | {"data"}),
        ("benchmark", "inference"): ([BenchConfig], own | {"backends", "precision"}),
        ("benchmark", "report"): ([ReportConfig], own | {"backends", "precision", "history", "no_append"}),
        ("benchmark", "training"): ([training_rows], own | {"steps", "precisions", "no_compile"}),
        ("benchmark", "serving"): ([ServingConfig, ModelSpec], own),
        ("benchmark", "bulk"): ([BulkBenchConfig, ModelSpec], own),
    }


@pytest.mark.parametrize("words", sorted(_consumers()), ids=" ".join)
def test_every_flag_reaches_a_parameter_of_the_same_name(words):
    """call_with matches flags to config fields by name: a renamed field would silently drop its flag."""
    factories, own = _consumers()[words]
    parameters = {name for f in factories for name in inspect.signature(f).parameters}
    dests = {a.dest for a in ALL[words]._actions if a.dest != "help"}
    assert sorted(dests - parameters - own) == []


def test_serve_flags_arrive_in_the_server_config():
    from resnext.serve.server import ServeConfig

    argv = ["serve", "--max-batch-size", "8", "--instances", "3", "--preferred-batch-sizes", "2,4", "--topk", "2"]
    argv += ["--host", "0.0.0.0", "--http-port", "9000", "--max-queue-delay-us", "50", "--name", "m"]
    config = call_with(ServeConfig, cli.build_parser().parse_args(argv))
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
