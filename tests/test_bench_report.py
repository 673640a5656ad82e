"""The regression harness: a record holds what it promises; ``compare`` catches an injected accuracy drop and an
injected slowdown, passes an unchanged record, and only compares records of the same machine class; the history
plot is written. CPU features: none required."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_image_folder, tiny_classes

from resnext.bench import report
from resnext.cli import main
from resnext.models import create_model
from resnext.sources import with_metadata


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:
    """One real record: resnext_test at 32 px on torch + torch-cl, accuracy on a labelled folder, one training row."""
    root = tmp_path_factory.mktemp("report")
    data = make_image_folder(root / "data", per_class=3, size=40)
    torch.manual_seed(0)
    weights = root / "four.pth"
    torch.save(
        with_metadata(
            create_model("resnext_test", num_classes=4).state_dict(),
            arch="resnext_test",
            classes=tiny_classes(),
            image_size=32,
        ),
        weights,
    )
    config = report.ReportConfig(
        data=str(data),
        weights=str(weights),
        image_size=32,
        backends=["torch-cl"],
        precisions=["fp32"],
        batch_sizes=[2],
        warmup=0,
        min_iters=1,
        min_time=0.0,
        training_steps=1,
        training_batch=2,
        peak_size=512,
    )
    return report.make_record(config)


def test_record_holds_versions_machine_accuracy_and_rows(record):
    assert torch.__version__.startswith(record["versions"]["torch"]) and record["versions"]["resnext"]
    assert record["machine"]["class"].startswith(("cpu: ", "gpu: ")) and record["machine"]["cpu"]
    assert record["model"] == {**record["model"], "arch": "resnext_test", "image_size": 32}
    assert record["accuracy"]["count"] == 12 and 0 <= record["accuracy"]["top1"] <= 100
    assert record["accuracy"]["top1"] <= record["accuracy"]["top5"]
    rows = {(r["backend"], r["precision"]): r for r in record["inference"]}
    assert set(rows) == {("torch", "fp32"), ("torch-cl", "fp32")} and rows[("torch", "fp32")]["ratio"] == 1.0
    for r in rows.values():
        assert 0 < r["peak_fraction"] <= 1.05 and r["agreement"] == 1.0
        assert r["accuracy"] == pytest.approx(record["accuracy"]["top1"] / 100)  # same images, exact runtimes
    assert set(record["peaks"]) == {"fp32"}  # peaks of the precisions asked for only (fp32 always)
    assert record["training"][0]["ratio"] == 1.0 and record["training"][0]["img_per_s"] > 0
    json.dumps(record)  # a history line


def _history(tmp_path, *records) -> str:
    path = tmp_path / "history.jsonl"
    for r in records:
        report.append_record(r, path)
    return str(path)


def test_compare_passes_unchanged_and_catches_accuracy_drop_and_slowdown(record, tmp_path):
    assert report.compare_latest(_history(tmp_path / "same", record, record)).regressions == []

    worse = copy.deepcopy(record)
    worse["accuracy"]["top1"] -= 0.2  # points: more than the 0.1 allowed
    comparison = report.compare_latest(_history(tmp_path / "acc", record, worse))
    assert [c.what for c in comparison.regressions] == ["accuracy top1 %"]
    assert "REGRESSION" in comparison.table()

    slower = copy.deepcopy(record)
    row = next(r for r in slower["inference"] if r["backend"] == "torch-cl")
    row["ratio"] *= 0.85  # 15% slower relative to the same run's eager fp32
    comparison = report.compare_latest(_history(tmp_path / "speed", record, slower))
    assert [c.what for c in comparison.regressions] == ["torch-cl fp32 batch 2 ratio"]

    within = copy.deepcopy(record)
    next(r for r in within["inference"] if r["backend"] == "torch-cl")["ratio"] *= 0.95  # noise, not a regression
    within["accuracy"]["top1"] -= 0.05
    assert report.compare_latest(_history(tmp_path / "noise", record, within)).regressions == []


def test_compare_only_against_the_same_machine_class(record, tmp_path):
    other = copy.deepcopy(record)
    other["machine"]["class"] = "cpu: another CPU [avx2] x2"
    slower = copy.deepcopy(record)
    slower["accuracy"]["top1"] -= 5
    # the latest (other machine) has no comparable record: nothing to compare, no regression
    assert report.compare_latest(_history(tmp_path / "a", slower, record, other)).previous is None
    # the slower record is compared with the last record of its own class (the first), skipping the other machine
    comparison = report.compare_latest(_history(tmp_path / "b", record, other, slower))
    assert comparison.previous["machine"]["class"] == record["machine"]["class"] and comparison.regressions


def test_cli_compare_exit_status_json_and_plot(record, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    slower = copy.deepcopy(record)
    slower["accuracy"]["top1"] -= 1.0
    history = _history(tmp_path, record, record)
    plot = tmp_path / "history.png"
    assert main(["benchmark", "compare", "--history", history, "--plot", str(plot)]) == 0
    assert "no regression" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.append_record(slower, history)
    assert main(["benchmark", "compare", "--history", history, "--plot", "", "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["regressions"] == 1 and document["changes"][0]["what"] == "accuracy top1 %"


def test_broken_history_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "h.jsonl"
    path.write_text('{"schema": 1}\nnot json\n')
    assert main(["benchmark", "compare", "--history", str(path), "--plot", ""]) == 2
    assert f"{path}:2 is not a JSON record" in capsys.readouterr().err
    assert main(["benchmark", "compare", "--history", str(tmp_path / "none.jsonl"), "--plot", ""]) == 2
