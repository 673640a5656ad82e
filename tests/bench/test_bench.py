"""Inference benchmark: rows, same-run reference, per-precision peaks, agreement, JSON, CLI validation and
progress; and the GPU script's CPU smoke path. CPU features: none required (peaks exist on AVX2 and AVX-512)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from resnext.bench.inference import BenchConfig, Row, model_gflop, run_inference_benchmark, summarise
from resnext.bench.peak import (
    PEAK_PRECISIONS,
    Peak,
    apply_peaks,
    floor_peaks,
    measure_peaks,
    merge_peaks,
    peak_fraction,
)
from resnext.cli import main
from resnext.errors import ResnextError
from resnext.model.factory import create_model

ROOT = Path(__file__).resolve().parents[2]


def test_summarise_percentiles_and_throughput():
    row = summarise("torch", "fp32", 4, [0.010, 0.020, 0.030, 0.040, 1.0])
    assert row.median_ms == pytest.approx(30.0) and row.p50_ms == pytest.approx(30.0)
    assert row.p50_ms <= row.p95_ms <= row.p99_ms <= 1000.0 and row.p99_ms > 800
    assert row.images_per_s == pytest.approx(4 / 0.030)


def test_model_gflop_matches_known_count():
    # ResNeXt101-32x4d: ~8.0 GMACs at 224 px (NVIDIA / paper) = ~16 GFLOP
    assert 15.5 < model_gflop(create_model("resnext101_32x4d"), 224) < 16.5


def test_each_row_is_divided_by_its_own_precisions_peak():
    # bf16 measured below fp32 (a CPU without bf16): floored at fp32; int8 above it: kept
    peaks = floor_peaks(
        {
            "fp32": Peak("fp32", 100.0, "torch"),
            "bf16": Peak("bf16", 60.0, "torch"),
            "int8": Peak("int8", 800.0, "onnxruntime"),
        }
    )
    assert peaks["bf16"] == Peak("bf16", 100.0, "fp32 floor") and peaks["int8"].gflops == 800.0
    later = {"fp32": Peak("fp32", 120.0, "openvino"), "bf16": Peak("bf16", 90.0, "x"), "int8": Peak("int8", 500.0, "x")}
    merged = merge_peaks(peaks, later)  # the best of the measurements before and after the rows
    assert [merged[p].gflops for p in PEAK_PRECISIONS] == [120.0, 100.0, 800.0]
    rows = [
        Row("torch", "fp32", 1, 3, 1, 1, 1, 1, 6.0),
        Row("openvino", "int8", 1, 3, 1, 1, 1, 1, 40.0),
        Row("openvino", "bf16", 1, 3, 1, 1, 1, 1, 7.0, ran_precision="fp32"),  # OpenVINO fell back to fp32
        Row("torch", "bf16", 1, 3, 1, 1, 1, 1, 5.0, ran_precision="bf16"),
    ]
    apply_peaks(rows, merged, gflop_per_image=16.0)
    assert [r.gflops for r in rows] == [96.0, 640.0, 112.0, 80.0]
    assert [r.peak_gflops for r in rows] == [120.0, 800.0, 120.0, 100.0]
    assert [round(r.peak_fraction, 4) for r in rows] == [0.8, 0.8, round(112 / 120, 4), 0.8]
    assert peak_fraction(60.0, "fp16", merged) == (0.5, 120.0)  # no fp16 peak on a CPU: fp32's


def test_measured_peaks_cover_every_precision():
    peaks = measure_peaks(threads=1, n=256, repeats=1)
    assert set(peaks) == set(PEAK_PRECISIONS)
    assert all(math.isfinite(p.gflops) and p.gflops > 0.1 for p in peaks.values())
    assert peaks["bf16"].gflops >= peaks["fp32"].gflops and peaks["int8"].gflops >= peaks["fp32"].gflops


@pytest.mark.slow  # six exports and two peak measurements: ~40 s on 2 quiet cores
@pytest.mark.isolated
def test_benchmark_rows_have_same_run_reference_own_peak_and_agreement(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    out = tmp_path / "bench.json"
    config = BenchConfig(
        arch="resnext_test",
        backends=["torch-cl", "onnxruntime", "openvino"],
        precisions=["fp32", "bf16", "int8"],
        batch_sizes=[1, 2],
        image_size=32,
        warmup=1,
        min_iters=2,
        min_time=0.0,
        peak_size=1024,
        json_path=str(out),
    )
    result = run_inference_benchmark(config)
    keys = [(r.backend, r.precision, r.batch_size) for r in result.rows]
    assert keys == [
        (b, p, n)
        for b, p in [
            ("torch", "fp32"),
            ("torch-cl", "fp32"),
            ("torch-cl", "bf16"),
            ("onnxruntime", "fp32"),
            ("onnxruntime", "int8"),
            ("openvino", "fp32"),
            ("openvino", "bf16"),
            ("openvino", "int8"),
        ]
        for n in (1, 2)
    ]
    peaks = {p: v["gflops"] for p, v in result.peaks.items()}
    assert set(peaks) == set(PEAK_PRECISIONS)
    for r in result.rows:
        assert r.iterations >= 2 and r.images_per_s > 0 and r.p50_ms <= r.p95_ms <= r.p99_ms
        reference = next(
            x for x in result.rows if (x.backend, x.precision, x.batch_size) == ("torch", "fp32", r.batch_size)
        )
        assert r.ratio == pytest.approx(r.images_per_s / reference.images_per_s)
        assert r.gflops == pytest.approx(r.images_per_s * result.model_gflop_per_image)
        assert r.peak_gflops == peaks[r.ran_precision] and r.peak_fraction == pytest.approx(r.gflops / r.peak_gflops)
        assert 0 < r.peak_fraction <= 1.05, f"{r.backend} {r.precision} at {100 * r.peak_fraction:.0f}% of its peak"
        assert r.agreement is not None and 0 <= r.agreement <= 1 and r.max_abs_diff is not None
        if r.precision == "fp32":  # exact runtimes agree with eager fp32
            assert r.agreement == 1.0
    assert {r.ran_precision for r in result.rows if r.precision == "int8"} == {"int8"}
    assert "torch-cl int8" in " ".join(result.notes)  # unsupported pair reported, not silently dropped
    saved = json.loads(out.read_text())
    assert saved["peaks"] == result.peaks and len(saved["rows"]) == 16 and "agreement" in saved["rows"][0]
    table = result.table()
    assert "agree %" in table and "% peak is of the row's own precision" in table and "int8" in table


def _bench(*extra: str) -> list[str]:
    return [
        "benchmark",
        "inference",
        "--arch",
        "resnext_test",
        "--image-size",
        "32",
        "--backends",
        "torch",
        "--batch-sizes",
        "1",
        "--warmup",
        "0",
        "--min-iters",
        "1",
        "--min-time",
        "0",
        *extra,
    ]


def test_cli_benchmark_inference_table_json_and_progress(tmp_path, capsys):
    assert main(_bench()) == 0
    captured = capsys.readouterr()
    rows = [line.split("|")[1:-1] for line in captured.out.splitlines() if line.startswith("|")]
    assert [c.strip() for c in rows[0][:3]] == ["backend", "precision", "batch"]
    assert [c.strip() for c in rows[2][:3]] == ["torch", "fp32", "1"] and rows[2][7].strip() == "1.00"
    assert "[1/1] torch fp32 batch 1 ..." in captured.err  # progress on stderr, one line per row

    out = tmp_path / "r.json"
    assert main(_bench("--json", "-o", str(out))) == 0
    document = json.loads(capsys.readouterr().out)  # stdout is JSON only
    assert document["rows"][0]["backend"] == "torch" and document["rows"][0]["ratio"] == 1.0
    assert json.loads(out.read_text())["rows"][0]["batch_size"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["inference", "--min-iters", "0"], "--min-iters: must be an integer >= 1"),
        (["inference", "--min-time", "-1"], "--min-time: must be a number >= 0"),
        (["inference", "--batch-sizes", "1,0"], "--batch-sizes: must be an integer >= 1"),
        (["inference", "--warmup", "x"], "--warmup: expected an integer >= 0"),
        (["training", "--steps", "0"], "--steps: must be an integer >= 1"),
        (["training", "--batch-size", "0"], "--batch-size/-b: must be an integer >= 1"),
        (["report", "--batch-sizes", "0"], "--batch-sizes: must be an integer >= 1"),
    ],
)
def test_cli_benchmark_rejects_bad_numbers_in_one_line(capsys, args, message):
    assert main(["benchmark", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_benchmark_rejects_unknown_backend(capsys):
    assert main(["benchmark", "inference", "--arch", "resnext_test", "--backends", "tflite"]) == 2
    assert "unknown backend 'tflite'" in capsys.readouterr().err
    with pytest.raises(ResnextError):
        run_inference_benchmark(BenchConfig(arch="resnext_test", batch_sizes=[0]))


@pytest.mark.slow  # ~30 s on 2 quiet cores (torch.compile tracing)
@pytest.mark.isolated
def test_gpu_check_inference_cpu_smoke(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    passed = gpu_check.check_inference(cpu_smoke=True)
    out = capsys.readouterr().out
    # every variant ran at every batch size with logits close to fp32: the smoke run's goal, so it must PASS
    assert passed is True, out
    rows = [line.split() for line in out.splitlines() if line.startswith(("eager AMP", "AMP + channels_last"))]
    assert len(rows) == 4 and all(float(r[-2].rstrip("%")) >= 0 for r in rows)
    assert "TensorRT: skipped" in out and out.strip().splitlines()[-1].startswith("PASS:")
