"""Inference benchmark: rows, same-run reference, percentiles, JSON, CLI; and the GPU script's CPU smoke path."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from resnext.bench.inference import BenchConfig, matmul_peak_gflops, model_gflop, run_inference_benchmark, summarise
from resnext.cli import main
from resnext.errors import ResnextError
from resnext.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def test_summarise_percentiles_and_throughput():
    row = summarise("torch", "fp32", 4, [0.010, 0.020, 0.030, 0.040, 1.0])
    assert row.median_ms == pytest.approx(30.0) and row.p50_ms == pytest.approx(30.0)
    assert row.p50_ms <= row.p95_ms <= row.p99_ms <= 1000.0 and row.p99_ms > 800
    assert row.images_per_s == pytest.approx(4 / 0.030)


def test_model_gflop_matches_known_count():
    # ResNeXt101-32x4d: ~8.0 GMACs at 224 px (NVIDIA / paper) = ~16 GFLOP
    assert 15.5 < model_gflop(create_model("resnext101_32x4d"), 224) < 16.5


def test_matmul_peak_is_measured():
    assert matmul_peak_gflops(n=256, repeats=2) > 0.1


def test_benchmark_rows_have_same_run_reference(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.json"
    config = BenchConfig(arch="resnext_test", backends=["torch-cl", "onnxruntime"], precisions=["fp32", "int8"],
                         batch_sizes=[1, 2], image_size=32, warmup=1, min_iters=2, min_time=0.0, json_path=str(out))
    result = run_inference_benchmark(config)
    keys = [(r.backend, r.precision, r.batch_size) for r in result.rows]
    assert keys == [("torch", "fp32", 1), ("torch", "fp32", 2), ("torch-cl", "fp32", 1), ("torch-cl", "fp32", 2),
                    ("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2), ("onnxruntime", "int8", 1),
                    ("onnxruntime", "int8", 2)]
    for r in result.rows:
        assert r.iterations >= 2 and r.images_per_s > 0 and r.p50_ms <= r.p95_ms <= r.p99_ms
        reference = next(x for x in result.rows if (x.backend, x.precision, x.batch_size) == ("torch", "fp32", r.batch_size))
        assert r.ratio == pytest.approx(r.images_per_s / reference.images_per_s)
        assert r.gflops == pytest.approx(r.images_per_s * result.model_gflop_per_image)
        assert math.isfinite(r.peak_fraction) and r.peak_fraction > 0
    assert "torch-cl int8" in " ".join(result.notes)  # unsupported pair reported, not silently dropped
    saved = json.loads(out.read_text())
    assert saved["matmul_peak_gflops"] == pytest.approx(result.matmul_peak_gflops) and len(saved["rows"]) == 8
    table = result.table()
    assert "x ref" in table and "reference = torch fp32 eager NCHW" in table


def test_cli_benchmark_inference(capsys):
    args = ["benchmark", "inference", "--arch", "resnext_test", "--image-size", "32", "--backends", "torch",
            "--batch-sizes", "1", "--warmup", "0", "--min-iters", "1", "--min-time", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("|")]
    assert [c.strip() for c in rows[0][:3]] == ["backend", "precision", "batch"]
    assert [c.strip() for c in rows[2][:3]] == ["torch", "fp32", "1"] and rows[2][8].strip() == "1.00"


def test_cli_benchmark_rejects_unknown_backend(capsys):
    assert main(["benchmark", "inference", "--arch", "resnext_test", "--backends", "tflite"]) == 2
    assert "unknown backend 'tflite'" in capsys.readouterr().err
    with pytest.raises(ResnextError):
        run_inference_benchmark(BenchConfig(arch="resnext_test", batch_sizes=[0]))


def test_gpu_check_inference_cpu_smoke(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    passed = gpu_check.check_inference(cpu_smoke=True)
    out = capsys.readouterr().out
    assert isinstance(passed, bool)
    assert "eager AMP (reference)" in out and "AMP + channels_last + compile" in out and "TensorRT: skipped" in out
    assert ("PASS:" in out) or ("FAIL:" in out)
