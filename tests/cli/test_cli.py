"""The CLI behaves the same everywhere: --version, `resnext models`, -v after the command, inputs checked before
the model is loaded, --threads, model files classified by the runtime their suffix names, and -v printing the
causes of a user error."""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from conftest import SAMPLES

import resnext
from resnext import cli
from resnext.errors import WeightsError
from resnext.model.weights import read_checkpoint
from resnext.runtime.table import RUNTIMES


def test_version_is_the_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"resnext {resnext.__version__}"


def test_models_lists_architectures_weights_and_runtimes(capsys):
    assert cli.main(["models", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {a["arch"] for a in info["architectures"]} == set(resnext.list_models())
    by_arch = {a["arch"]: a["weights"] for a in info["architectures"]}
    assert by_arch["resnext101_32x4d"][0]["metrics"] == {"top1": 80.43, "top5": 95.06}
    assert "Apache-2.0" in by_arch["resnext101_32x4d"][0]["license"]
    assert by_arch["resnext_test"] == []
    runtimes = {r["name"]: r for r in info["runtimes"]}
    assert set(runtimes) == set(RUNTIMES)
    for name, runtime in runtimes.items():
        assert runtime["installed"] == RUNTIMES[name].installed()
        assert (runtime["install"] is None) == runtime["installed"]
    if not torch.cuda.is_available():
        assert "GPU" in runtimes["tensorrt"]["install"]


def test_models_table_names_each_runtime(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in RUNTIMES:
        assert f"  {name} " in out


@pytest.mark.parametrize("argv", [["-v", "models"], ["models", "-v"], ["models", "--verbose"]])
def test_verbose_is_accepted_before_and_after_the_command(argv):
    args = cli.build_parser().parse_args(argv)
    assert args.verbose is True


def test_verbose_after_a_nested_command():
    args = cli.build_parser().parse_args(["benchmark", "inference", "-v"])
    assert args.verbose is True
    assert cli.build_parser().parse_args(["benchmark", "inference"]).verbose is False


def _loads_no_model(monkeypatch) -> None:
    import resnext.inference.predict

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(resnext.inference.predict.Predictor, "from_pretrained", forbidden)


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jpg"], "no such file or folder: missing.jpg"),
        (["--topk", "0"], "--topk: must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "--batch-size/-b: must be an integer >= 1, got 0"),
        (["--threads", "0"], "--threads: must be an integer >= 1"),
        (["--workers", "-1"], "--workers/-j: must be an integer >= 0"),
        (["--image-size", "2000"], "--image-size: must be an integer from 32 to 1024"),
        (["--topk", "x"], "--topk: expected an integer >= 1, got 'x'"),
    ],
)
def test_classify_checks_inputs_before_loading_the_model(monkeypatch, capsys, args, message):
    _loads_no_model(monkeypatch)
    assert cli.main(["classify", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_classify_plot_into_a_directory_fails_before_loading_the_model(monkeypatch, capsys, tmp_path):
    _loads_no_model(monkeypatch)
    assert cli.main(["classify", "--plot", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_classify_threads_sets_torch_threads(small_checkpoint, capsys):
    before = torch.get_num_threads()
    try:
        code = cli.main(
            [
                "classify",
                "--arch",
                "resnext_test",
                "--weights",
                str(small_checkpoint),
                "--workers",
                "0",
                "--threads",
                "1",
                "--backend",
                "torch",
            ]
        )
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().out.count("[") >= 15  # 3 images x 5 rows, each with its [index]


def test_model_file_without_backend_uses_the_runtime_of_its_suffix(tmp_path, small_checkpoint, capsys):
    """A .pt2 file from `resnext export` classifies from the CLI with no --backend (it was silently ignored)."""
    path = tmp_path / "m.pt2"
    assert (
        cli.main(
            [
                "export",
                "--format",
                "export",
                "--arch",
                "resnext_test",
                "--weights",
                str(small_checkpoint),
                "--image-size",
                "64",
                "--batch-size-range",
                "1:4",
                "--output",
                str(path),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["classify", "--model-file", str(path), "--workers", "0", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(len(r["predictions"]) == 5 for r in rows)

    # a file exported without --features cannot embed: one line naming the CLI flag, before any progress bar
    vectors = tmp_path / "vectors.npy"
    assert cli.main(["embed", "--model-file", str(path), "--workers", "0", "--output", str(vectors)]) == 2
    err = capsys.readouterr().err
    assert "resnext export --features" in err and "embedding" not in err and "%|" not in err, err
    assert not vectors.exists()


def test_missing_model_file_is_an_error_not_a_silent_torch_run(capsys, tmp_path):
    assert cli.main(["classify", "--model-file", str(tmp_path / "nope.onnx"), "--workers", "0"]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_python_m_resnext_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "resnext", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("resnext ")


def test_export_features_flag_feeds_resnext_embed(tmp_path, small_checkpoint, capsys, monkeypatch):
    """`resnext export --features` writes the second output that `resnext embed --model-file` runs."""
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    path = Path("exp") / "m.onnx"  # relative, in a folder: the summary names it as given
    common = ["--arch", "resnext_test", "--weights", str(small_checkpoint), "--image-size", "64"]
    assert (
        cli.main(
            ["export", "--format", "onnx", *common, "--batch-size-range", "1:4", "--features", "--output", str(path)]
        )
        == 0
    )
    assert "wrote onnx fp32: exp/m.onnx (" in capsys.readouterr().out
    out = tmp_path / "vectors.npy"
    assert cli.main(["embed", "--model-file", str(path), "--workers", "0", "--output", str(out)]) == 0
    import numpy as np

    from resnext import load_source
    from resnext.images import load_image, sample_images
    from resnext.transforms import eval_preset

    vectors = np.load(out)
    source = load_source(str(small_checkpoint), arch="resnext_test")
    batch = torch.stack([eval_preset(64)(load_image(p)) for p in sample_images()])  # the exported input size
    with torch.no_grad():
        expected = source.model.forward_head(source.model.forward_features(batch), pre_logits=True)
    assert vectors.shape == (3, expected.shape[1])
    assert np.abs(vectors - expected.numpy()).max() <= 1e-4 * max(1.0, float(expected.abs().max()))


def test_verbose_prints_the_cause_chain_above_the_one_line_error(tmp_path, small_checkpoint, capsys):
    data = small_checkpoint.read_bytes()
    weights = tmp_path / "truncated.pth"
    weights.write_bytes(data[: len(data) // 2])
    argv = ["classify", str(SAMPLES[0]), "--arch", "resnext_test", "--workers", "0", "--weights", str(weights)]
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()  # by default: the message alone, one line
    assert line.startswith("resnext: error: ") and "truncated or corrupt" in line

    assert cli.main([*argv, "-v"]) == 2
    verbose = capsys.readouterr().err
    assert verbose.splitlines()[-1] == line  # the same line, last, under the chain
    with pytest.raises(WeightsError) as info:
        read_checkpoint(weights)
    root = info.value.__cause__
    assert root is not None
    assert "The above exception was the direct cause of the following exception" in verbose
    assert "".join(traceback.format_exception_only(type(root), root)) in verbose
