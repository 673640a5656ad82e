"""`resnext classify` end to end on the bundled samples, in-process and as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import NGC_RESNEXT_FILE, SAMPLES, small_model_flags
from PIL import Image

from resnext import cli, create_model
from resnext.inference.predict import Predictor
from resnext.labels import imagenet_categories
from resnext.model.weights import ResNeXt101_32X4D_Weights


def messages(stderr: str) -> list[str]:
    """stderr without the progress bar: the lines the CLI itself printed."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("resnext:")]


@pytest.fixture
def run(small_checkpoint, capsys):
    def run(*args: str, weights: bool = True) -> tuple[int, str, str]:
        # defaults first: a test's own options (given later) win, as argparse keeps the last value
        argv = ["classify", "--arch", "resnext_test", "--workers", "0"]
        if weights:
            argv += ["--weights", str(small_checkpoint)]
        code = cli.main(argv + list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def expected_top1(small_checkpoint) -> dict[str, str]:
    predictor = Predictor.from_pretrained("resnext_test", weights=str(small_checkpoint), device="cpu")
    return {str(p): row[0].label for p, row in zip(SAMPLES, predictor.classify([str(p) for p in SAMPLES]))}


def test_no_inputs_classifies_the_bundled_samples_as_a_table(run, expected_top1) -> None:
    code, out, err = run()
    assert code == 0 and messages(err) == []
    blocks = out.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [str(p) for p in SAMPLES]
    for block in blocks:
        rows = block.splitlines()[1:]
        assert [r.split()[0] for r in rows] == ["1", "2", "3", "4", "5"]
        percents = [float(r.split()[1].rstrip("%")) for r in rows]
        assert percents == sorted(percents, reverse=True) and 0 < percents[0] <= 100
        assert expected_top1[block.splitlines()[0]] in rows[0]
    assert "classifying" in err  # progress bar on stderr


def test_json_lines(run, expected_top1) -> None:
    code, out, _ = run(*map(str, SAMPLES), "--json", "--topk", "3")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["source"] for r in records] == [str(p) for p in SAMPLES]
    categories = imagenet_categories()
    for record in records:
        predictions = record["predictions"]
        assert [p["rank"] for p in predictions] == [1, 2, 3]
        assert all(p["label"] == categories[p["index"]] for p in predictions)
        assert all(0 <= p["probability"] <= 1 for p in predictions)
        assert predictions[0]["label"] == expected_top1[record["source"]]


def test_plot_writes_one_valid_png(run, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    out_png = tmp_path / "plots" / "predictions.png"
    code, _, err = run("--plot", str(out_png), "--topk", "4")
    assert code == 0 and out_png.is_file() and f"wrote {out_png}" in err
    with Image.open(out_png) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.load()
    assert 400 <= width <= 2000 and 3 * 120 <= height <= 3000  # three rows of image + bar chart
    assert [p.name for p in out_png.parent.iterdir()] == ["predictions.png"]


def test_folder_with_a_corrupt_file(run, tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in SAMPLES:
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_bytes(SAMPLES[0].read_bytes()[:200])
    (folder / "notes.txt").write_text("ignored: not an image extension")
    code, out, err = run(str(folder), "--json")
    assert code == 1
    assert sorted(json.loads(line)["source"] for line in out.splitlines()) == sorted(
        str(folder / p.name) for p in SAMPLES
    )
    naming = [line for line in messages(err) if "broken.jpg" in line]
    assert len(naming) == 1 and "Traceback" not in err


def test_fine_tuned_weights_with_labels_file(run, tmp_path) -> None:
    weights = tmp_path / "five.pth"
    torch.save(create_model("resnext_test", num_classes=5).state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("ant\nbee\ncat\ndog\neel\n")
    code, out, _ = run(str(SAMPLES[0]), "--weights", str(weights), "--labels", str(labels), "--json")
    assert code == 0
    assert {p["label"] for p in json.loads(out)["predictions"]} == {"ant", "bee", "cat", "dog", "eel"}


def test_offline_default_weights_is_one_line_exit_2(offline_cache, capsys) -> None:
    code = cli.main(["classify", str(SAMPLES[0])])  # default arch, published weights, empty cache, no network
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("resnext: error: could not download pretrained weights")
    assert ResNeXt101_32X4D_Weights.DEFAULT.url in line and str(offline_cache / NGC_RESNEXT_FILE) in line


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--topk", "0"], "--topk: must be an integer >= 1"),
        (["--weights", "/nonexistent/w.pth"], "weights file not found"),
        (["--device", "warp-drive"], "unknown device"),
    ],
)
def test_bad_options_are_one_line_errors(run, args, match) -> None:
    code, _, err = run(str(SAMPLES[0]), *args)
    assert code == 2 and "Traceback" not in err
    assert (
        [line for line in messages(err) if "error" in line] == [line for line in messages(err) if match in line] != []
    )


def test_quoted_glob_is_expanded_and_an_empty_one_refused(run, tmp_path) -> None:
    code, out, _ = run(str(SAMPLES[0].parent / "c*.jpg"), "--json")
    assert code == 0
    assert [json.loads(line)["source"] for line in out.splitlines()] == [str(p) for p in SAMPLES if p.name[0] == "c"]
    code, out, err = run(str(tmp_path / "*.png"))
    assert code == 2 and out == "" and f"no files match '{tmp_path / '*.png'}'" in err


def test_unreadable_input_is_reported_and_exit_1(run, tmp_path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    code, out, err = run(str(SAMPLES[0]), str(broken))
    assert code == 1 and out.startswith(str(SAMPLES[0]))
    assert any("broken.jpg: not an image" in line for line in messages(err))


def test_missing_input_is_one_line_and_exit_2_before_any_work(run, tmp_path) -> None:
    code, out, err = run(str(SAMPLES[0]), str(tmp_path / "nope.jpg"))
    assert code == 2 and out == ""
    assert messages(err) == [f"resnext: error: no such file or folder: {tmp_path / 'nope.jpg'}"]


def test_real_subprocess_with_background_decoding(small_checkpoint, tmp_path) -> None:
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), "RESNEXT_WEIGHTS_MIRROR": "http://127.0.0.1:9/"}
    flags = small_model_flags(small_checkpoint, "--json", "--workers", "2", "--batch-size", "2")
    command = [sys.executable, "-m", "resnext", "classify", *map(str, SAMPLES), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["source"] for line in done.stdout.splitlines()] == [str(p) for p in SAMPLES]
    assert "Traceback" not in done.stderr


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    from conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    first, second = block.strip().splitlines()
    assert first.endswith("&& resnext classify")
    ci_last = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert second == ci_last == 'pip install torch==2.14.1 torchvision==0.29.1 -e ".[test]" && python -m pytest'
