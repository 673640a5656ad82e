"""CPU feature detection, the feature mask, and the benchmark steps whose cost depends on them staying bounded.

CPU features: none required. The detection is checked against feature sets of known CPU classes (AVX2-only,
AVX-512 BF16/VNNI, AMX, AVX-VNNI) and against this machine's own /proc/cpuinfo; the bounded steps use a fake
"emulating" CPU (``native={"fp32"}``) so they exercise the AVX2 path on any machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from resnext.bench import peak
from resnext.bench.inference import BenchConfig, run_inference_benchmark, time_calls
from resnext.cli import main
from resnext.runtime import hardware

AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma", "f16c"}
EPYC_AVX512 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}  # Zen 4: no AMX
SAPPHIRE_RAPIDS = EPYC_AVX512 | {"avx_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"}
ALDER_LAKE = AVX2_ONLY | {"avx_vnni"}  # VNNI without AVX-512
AVX2_MASK = "avx512*,amx*,avx_vnni*"


@pytest.fixture
def fake_cpu(monkeypatch):
    """Make the detection read the given flags instead of this machine's."""

    def use(flags: set[str]) -> None:
        monkeypatch.setattr(hardware, "_cpuinfo", lambda: ("Fake CPU", frozenset(flags)))

    monkeypatch.delenv(hardware.FEATURES_MASK_ENV, raising=False)
    return use


@pytest.mark.parametrize(
    "flags, native",
    [
        (AVX2_ONLY, {"fp32"}),
        (ALDER_LAKE, {"fp32", "int8"}),
        (EPYC_AVX512, {"fp32", "bf16", "int8"}),
        (SAPPHIRE_RAPIDS, {"fp32", "bf16", "int8"}),
        (set(), {"fp32"}),  # no /proc/cpuinfo (not Linux): assume nothing beyond fp32
    ],
)
def test_native_precisions_follow_the_cpu_features(fake_cpu, flags, native):
    fake_cpu(flags)
    assert hardware.native_precisions() == native
    assert hardware.native_precisions("cpu") == hardware.native_precisions(torch.device("cpu"))


def test_mask_hides_features_by_pattern_and_makes_any_cpu_avx2_only(fake_cpu, monkeypatch):
    fake_cpu(SAPPHIRE_RAPIDS)
    monkeypatch.setenv(hardware.FEATURES_MASK_ENV, AVX2_MASK.upper().replace(",", " , "))  # case and spaces
    assert hardware.cpu_features() == frozenset(AVX2_ONLY)
    assert hardware.native_precisions() == {"fp32"}
    # an exact name hides that feature only: AMX and VNNI still give int8, AMX-BF16 still gives bf16
    monkeypatch.setenv(hardware.FEATURES_MASK_ENV, "avx512_bf16")
    assert "avx512_bf16" not in hardware.cpu_features() and "avx512_vnni" in hardware.cpu_features()
    assert hardware.native_precisions() == {"fp32", "bf16", "int8"}
    monkeypatch.setenv(hardware.FEATURES_MASK_ENV, "avx512_bf16,amx_bf16")
    assert hardware.native_precisions() == {"fp32", "int8"}


def test_detection_reads_this_machines_cpuinfo(monkeypatch):
    monkeypatch.delenv(hardware.FEATURES_MASK_ENV, raising=False)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split(":")[1].split()
    assert hardware.cpu_features() == frozenset(flags)
    assert ("bf16" in hardware.native_precisions()) == bool({"avx512_bf16", "amx_bf16"} & set(flags))
    assert ("int8" in hardware.native_precisions()) == bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


@pytest.mark.parametrize(
    "capability, native",
    [
        ((6, 1), {"fp32"}),
        ((7, 0), {"fp32", "fp16"}),
        ((7, 5), {"fp32", "fp16", "int8"}),
        ((9, 0), {"fp32", "fp16", "int8", "bf16"}),
    ],
)
def test_native_precisions_on_cuda_follow_the_compute_capability(monkeypatch, capability, native):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert hardware.native_precisions("cuda") == native


def test_machine_info_records_the_masked_features(fake_cpu, monkeypatch):
    fake_cpu(SAPPHIRE_RAPIDS)
    info = peak.machine_info()
    assert {"avx512_bf16", "amx_int8"} <= set(info["isa"]) and info["native"] == ["bf16", "fp32", "int8"]
    assert "features_mask" not in info
    monkeypatch.setenv(hardware.FEATURES_MASK_ENV, AVX2_MASK)
    info = peak.machine_info()
    assert info["isa"] == ["avx2", "fma"] and info["native"] == ["fp32"] and info["features_mask"] == AVX2_MASK


@pytest.fixture
def gemm_calls(monkeypatch) -> list[tuple[int, list[str]]]:
    """Record which (size, precisions) the PyTorch GEMM engine is asked for; the only engine measured."""
    calls: list[tuple[int, list[str]]] = []
    real = peak.ENGINES["torch"]

    def recording(n, threads, precisions):
        calls.append((n, sorted(precisions)))
        return real(n, threads, precisions)

    monkeypatch.setitem(peak.ENGINES, "torch", recording)
    return calls


def test_peaks_measure_only_the_precisions_asked_for(gemm_calls):
    peaks = peak.measure_peaks(1, n=512, repeats=1, engines=("torch",), precisions=["fp32"], native={"fp32"})
    assert set(peaks) == {"fp32"} and gemm_calls == [(512, ["fp32"])]


@pytest.fixture
def fake_engine(monkeypatch) -> list[tuple[str, int]]:
    """An engine whose GEMMs take the time of a CPU at a fixed rate per precision (bf16 emulated at 0.5 GFLOP/s,
    as on 2 AVX2 cores; fp32 and int8 fast); records every (precision, size) built and every call's size."""
    rates = {"fp32": 200e9, "bf16": 0.5e9, "int8": 400e9}
    built: list[tuple[str, int]] = []

    def engine(n, threads, precisions):
        for precision in precisions:
            built.append((precision, n))
            yield precision, lambda n=n, precision=precision: time.sleep(2 * n**3 / rates[precision])

    monkeypatch.setitem(peak.ENGINES, "fake", engine)
    return built


def test_emulated_precision_is_timed_small_and_within_its_budget(fake_engine):
    started = time.perf_counter()
    peaks = peak.measure_peaks(
        1, n=2048, repeats=1, engines=("fake",), precisions=["fp32", "bf16", "int8"], native={"fp32"}
    )
    # bf16 at 0.5 GFLOP/s: 34 s per call at 2048, so only the small GEMM (67 ms); the fast "emulated" int8 fits
    # the budget at full size after its small probe; fp32 (native) at full size directly
    assert fake_engine == [("fp32", 2048), ("bf16", 256), ("int8", 256), ("int8", 2048)]
    assert peak.EMULATED_GEMM_SIZE == 256
    assert time.perf_counter() - started < 5
    assert peaks["bf16"].emulated and peaks["int8"].emulated and not peaks["fp32"].emulated
    assert peaks["bf16"].gflops == peaks["fp32"].gflops and peaks["bf16"].engine == "fp32 floor"
    assert peaks["int8"].gflops > peaks["fp32"].gflops and peaks["int8"].engine == "fake"


def test_best_seconds_stops_once_its_budget_is_spent():
    calls = []
    fn = lambda: (calls.append(1), time.sleep(0.05))  # noqa: E731
    assert peak.best_seconds(fn, repeats=50, budget_s=0.01) >= 0.05 and len(calls) == 1
    calls.clear()
    peak.best_seconds(fn, repeats=50, budget_s=0.12)
    assert 2 <= len(calls) <= 4


def test_time_calls_past_its_deadline_makes_one_timed_call():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=5, min_iters=100, min_time=100, deadline=time.perf_counter())
    assert len(times) == 1 and len(calls) == 2  # one warm-up call, one timed call


def test_inference_benchmark_past_its_time_budget_skips_rows_and_writes_json(tmp_path):
    out = tmp_path / "b.json"
    config = BenchConfig(
        arch="resnext_test",
        backends=["torch", "torch-cl"],
        batch_sizes=[1, 2],
        image_size=32,
        min_iters=50,
        min_time=30.0,
        peak_size=256,
        time_budget=0.01,
        json_path=str(out),
    )
    started = time.perf_counter()
    result = run_inference_benchmark(config)
    assert time.perf_counter() - started < 60  # without the budget: 2 x 30 s of timing at least
    assert [(r.backend, r.batch_size, r.iterations) for r in result.rows] == [("torch", 1, 1), ("torch", 2, 1)]
    assert any("time budget of 0 s spent: skipped torch-cl fp32" in n for n in result.notes)
    assert json.loads(out.read_text())["notes"] == result.notes


def test_benchmark_reports_an_emulated_precision_with_progress(monkeypatch, caplog):
    monkeypatch.setenv(hardware.FEATURES_MASK_ENV, AVX2_MASK)
    config = BenchConfig(
        arch="resnext_test",
        backends=["torch"],
        precisions=["fp32", "bf16"],
        batch_sizes=[1],
        image_size=32,
        warmup=0,
        min_iters=1,
        min_time=0.0,
        peak_size=256,
    )
    with caplog.at_level("INFO", logger="resnext"):
        result = run_inference_benchmark(config)
    assert result.peaks["bf16"]["emulated"] is True and result.peaks["fp32"]["emulated"] is False
    assert any(n.startswith("bf16 is emulated on this CPU") for n in result.notes)
    assert "emulated)" in result.table().split("GEMM peaks in this run")[1].split("bf16")[1]
    assert result.machine["native"] == ["fp32"] and "avx512f" not in result.machine["isa"]
    log = caplog.text
    for step in ("measuring GEMM peaks (fp32, bf16)", "GEMM peak torch: fp32", "bf16 (emulated, n=256)", "[2/2]"):
        assert step in log, step


def test_cli_time_budget_must_be_positive(capsys):
    assert main(["benchmark", "inference", "--time-budget", "0"]) == 2
    assert "--time-budget: must be a number > 0" in capsys.readouterr().err
