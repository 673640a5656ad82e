"""The regression harness: a record holds what it promises; ``compare`` catches an injected accuracy drop and an
injected slowdown, passes an unchanged record, and only compares records of the same machine class; the history
plot is written. CPU features: none required."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from conftest import make_image_folder, tiny_classes

from resnext.bench import compare, report
from resnext.cli import main
from resnext.model.factory import create_model
from resnext.model.sources import with_metadata


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
    assert compare.compare_latest(_history(tmp_path / "same", record, record)).regressions == []

    worse = copy.deepcopy(record)
    worse["accuracy"]["top1"] -= 0.2  # points: more than the 0.1 allowed
    comparison = compare.compare_latest(_history(tmp_path / "acc", record, worse))
    assert [c.what for c in comparison.regressions] == ["accuracy top1 %"]
    assert "REGRESSION" in comparison.table()

    slower = copy.deepcopy(record)
    row = next(r for r in slower["inference"] if r["backend"] == "torch-cl")
    row["ratio"] *= 0.85  # 15% slower relative to the same run's eager fp32
    comparison = compare.compare_latest(_history(tmp_path / "speed", record, slower))
    assert [c.what for c in comparison.regressions] == ["torch-cl fp32 batch 2 ratio"]

    within = copy.deepcopy(record)
    next(r for r in within["inference"] if r["backend"] == "torch-cl")["ratio"] *= 0.95  # noise, not a regression
    within["accuracy"]["top1"] -= 0.05
    assert compare.compare_latest(_history(tmp_path / "noise", record, within)).regressions == []


def test_compare_only_against_the_same_machine_class(record, tmp_path):
    other = copy.deepcopy(record)
    other["machine"]["class"] = "cpu: another CPU [avx2] x2"
    slower = copy.deepcopy(record)
    slower["accuracy"]["top1"] -= 5
    # the latest (other machine) has no comparable record: nothing to compare, no regression
    assert compare.compare_latest(_history(tmp_path / "a", slower, record, other)).previous is None
    # the slower record is compared with the last record of its own class (the first), skipping the other machine
    comparison = compare.compare_latest(_history(tmp_path / "b", record, other, slower))
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


def test_history_without_usable_records_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "h.jsonl"
    path.write_text('{"schema": 1}\nnot json\n')
    assert main(["benchmark", "compare", "--history", str(path), "--plot", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no usable records" in err
    assert f"{path}:1: no 'time'" in err and f"{path}:2: not a JSON record" in err
    assert main(["benchmark", "compare", "--history", str(tmp_path / "none.jsonl"), "--plot", ""]) == 2


def _compare(history: str, capsys) -> tuple[int, str, str]:
    status = main(["benchmark", "compare", "--history", history, "--plot", ""])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_damaged_history_lines_are_reported_by_number_and_skipped(record, tmp_path, capsys):
    no_ratio, text_ratio = copy.deepcopy(record), copy.deepcopy(record)
    del no_ratio["inference"][1]["ratio"]
    text_ratio["inference"][1]["ratio"] = "fast"
    no_machine, no_time = copy.deepcopy(record), copy.deepcopy(record)
    del no_machine["machine"], no_time["time"]
    damaged = [b"[]", b"null", json.dumps(no_machine).encode(), json.dumps(no_time).encode()]
    damaged += [json.dumps(no_ratio).encode(), json.dumps(text_ratio).encode(), b'{"time": "\xff\xfe"}', b"{"]
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join([json.dumps(record).encode(), *damaged, json.dumps(record).encode()]) + b"\n")
    status, out, err = _compare(str(path), capsys)
    assert status == 0 and out.strip().endswith("no regression")  # the two good records still compare
    reasons = ["a list", "a NoneType", "no 'machine'", "no 'time'", "has no 'ratio'", "not a number ('fast')"]
    reasons += ["not UTF-8", "not a JSON record"]
    for number, reason in enumerate(reasons, 2):
        assert re.search(rf"{re.escape(str(path))}:{number}: .*{re.escape(reason)}", err), (number, reason, err)
    assert "Traceback" not in err


def test_compare_never_says_no_regression_when_it_cannot_know(record, tmp_path, capsys):
    nan_latest = copy.deepcopy(record)
    next(r for r in nan_latest["inference"] if r["backend"] == "torch-cl")["ratio"] = float("nan")
    status, out, _ = _compare(_history(tmp_path / "nan", record, nan_latest), capsys)
    assert status == 1 and "no regression" not in out
    assert re.search(r"UNKNOWN\s+torch-cl fp32 batch 2 ratio: nan in the latest record", out)
    status, out, _ = _compare(_history(tmp_path / "nan-before", nan_latest, record), capsys)
    assert status == 1 and "nan in the previous record" in out and "no regression" not in out

    empty = {**copy.deepcopy(record), "inference": [], "training": [], "accuracy": None}
    for history in (_history(tmp_path / "empty", record, empty), _history(tmp_path / "empty-only", empty)):
        status, out, _ = _compare(history, capsys)
        assert status == 1 and "no inference rows, no training rows, no accuracy" in out
        assert "no regression" not in out and "nothing to compare" not in out

    no_reference = copy.deepcopy(record)
    no_reference["inference"] = [r for r in no_reference["inference"] if r["backend"] != "torch"]
    status, out, _ = _compare(_history(tmp_path / "noref", record, no_reference), capsys)
    assert status == 1 and "no reference row (torch fp32 batch 2)" in out
    assert "torch fp32 batch 2: row missing in the latest record" in out


def test_training_rows_after_a_missing_reference_are_still_compared(record, tmp_path, capsys):
    """The first training row used to be skipped as "the reference" whatever it was."""
    reference = record["training"][0]["setting"]
    rows = [
        {"setting": reference, "img_per_s": 10.0, "ratio": 1.0},
        {"setting": "bf16 autocast", "img_per_s": 20.0, "ratio": 2.0},
        {"setting": "fp32 channels_last", "img_per_s": 12.0, "ratio": 1.2},
    ]
    before = {**copy.deepcopy(record), "training": rows}
    slower = {**copy.deepcopy(record), "training": [rows[0], {**rows[1], "ratio": 1.0}, rows[2]]}
    status, out, _ = _compare(_history(tmp_path / "slower", before, slower), capsys)
    assert status == 1 and re.search(r"REGRESSION\s+training bf16 autocast ratio", out)
    unreferenced = {**copy.deepcopy(record), "training": rows[1:]}
    status, out, _ = _compare(_history(tmp_path / "noref", before, unreferenced), capsys)
    assert status == 1 and "no regression" not in out
    for name in ("bf16 autocast", "fp32 channels_last"):
        assert f"training {name} ratio: no reference row ({reference})" in out


def test_plot_title_names_the_whole_machine_class_inside_the_figure(record, tmp_path):
    """The title used to be cut at 110 characters ("... avx512_bf16 avx51")."""
    pytest.importorskip("matplotlib")
    long_class = (
        "cpu: Intel(R) Xeon(R) Platinum 8480+ [avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 "
        "amx_tile avx_vnni] x224"
    )
    records = [copy.deepcopy(record) for _ in range(2)]
    for r in records:
        r["machine"]["class"] = long_class
    fig = compare.history_figure(records)
    fig.canvas.draw()
    title = fig.get_suptitle()
    assert " ".join(title.split()) == f"resnext_test 32 px on {long_class}"
    box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y0 >= 0 and box.y1 <= fig.bbox.y1
    plot = tmp_path / "history.png"
    compare.plot_history(_history(tmp_path, *records), plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
