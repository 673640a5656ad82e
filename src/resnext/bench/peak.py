"""The machine's compute ceiling per precision, measured with large GEMMs on every installed engine.

A benchmark row's "% peak" is its model GFLOP/s divided by the peak *of its own precision*, measured in the same
run with the same thread count: on a CPU with AVX-512 BF16/VNNI/AMX a bf16 or int8 GEMM runs 4-20x faster than an
fp32 one, so dividing every row by one fp32 figure printed "767% of peak". Each precision's peak is the best GEMM
rate among PyTorch, ONNX Runtime and OpenVINO (whichever are installed): the engines' own GEMM kernels are the
ceiling their convolutions approach. A reduced precision's peak is never taken below fp32's, because any runtime
may compute a "bf16" or "int8" layer in fp32 (OpenVINO does on CPUs without bf16).

The peak is measured before and after the rows, and the higher value kept: on a shared machine one measurement
taken during a burst of load would understate it and push rows above 100%.

Only the precisions asked for are measured (fp32 always: it is the floor). A precision the CPU only emulates
(:func:`resnext.runtime.hardware.native_precisions`: bf16 on a CPU without AVX-512 BF16/AMX, int8 without VNNI/AMX) is
first timed with one small GEMM under a time budget, and at full size only where that rate says it fits in the budget
(an emulated bf16 GEMM of 2048^3 takes minutes on AVX2; ONNX Runtime's int8 without VNNI is fast), and reported as
emulated; like any precision, its peak is at least fp32's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..runtime.backend import Backend
from ..runtime.hardware import ISA_FLAGS, NATIVE_CPU_FEATURES, cpu_features, cpu_model, features_mask, native_precisions

logger = logging.getLogger(__name__)

#: precisions with a measured peak; fp16 rows (GPU) and anything else are divided by the fp32 peak
PEAK_PRECISIONS = ("fp32", "bf16", "int8")
GEMM_SIZE = 2048  # 2048^3: large enough to saturate a few cores' vector units, ~20-60 ms per fp32 call on 2 cores
EMULATED_GEMM_SIZE = 256  # an emulated precision's GEMM: 2 x 256^3 FLOP, ~50 ms for bf16 emulated on 2 AVX2 cores
EMULATED_BUDGET_S = 2.0  # an emulated GEMM's timing stops after its first call once this is spent


def machine_info() -> dict[str, Any]:
    """CPU model, the ISA flags that matter for speed (after ``RESNEXT_CPU_FEATURES_MASK``), core and thread counts,
    and the GPU when there is one."""
    import os

    features = cpu_features()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "isa": [f for f in ISA_FLAGS if f in features],
        "native": sorted(native_precisions("cpu")),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if info["cuda"]:
        info["cuda_native"] = sorted(native_precisions("cuda"))
    if features_mask():  # a record made with features hidden says so (its "isa" is what the mask left)
        info["features_mask"] = ",".join(features_mask())
    return info


@dataclass(frozen=True)
class Peak:
    precision: str
    gflops: float
    engine: str  # which engine's GEMM reached it ("torch", "onnxruntime", "openvino", or "fp32 floor")
    emulated: bool = False  # the CPU has no native kernels for it: timed within a budget (see above)


def best_seconds(fn: Callable[[], Any], repeats: int, budget_s: float = math.inf) -> float:
    """The fastest of ``repeats`` timed calls after one untimed call; once ``budget_s`` is spent, the calls made."""
    start = time.perf_counter()
    fn()
    best = time.perf_counter() - start
    if best > budget_s:
        return best
    best = float("inf")
    for _ in range(repeats):
        call = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - call)
        if time.perf_counter() - start > budget_s:
            break
    return best


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Set PyTorch's intra-op threads for a measurement only, restoring the previous value."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _torch_gemms(n: int, precisions: Collection[str]) -> Iterator[tuple[str, Callable[[], Any]]]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    if "fp32" in precisions:
        yield "fp32", lambda: torch.mm(a, b)
    if "bf16" in precisions:
        ab, bb = a.bfloat16(), b.bfloat16()
        yield "bf16", lambda: torch.mm(ab, bb)
    if "int8" in precisions:
        ai = torch.randint(-100, 100, (n, n), dtype=torch.int8)
        bi = torch.randint(-100, 100, (n, n), dtype=torch.int8)
        yield "int8", lambda: torch._int_mm(ai, bi)


def _onnx_gemm_model(n: int, integer: bool) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:  # uint8 activations x int8 weights: what the QDQ int8 export runs
        weight = numpy_helper.from_array(rng.integers(-100, 100, (n, n)).astype(np.int8), "w")
        node, in_type, out_type = (
            helper.make_node("MatMulInteger", ["x", "w"], ["y"]),
            TensorProto.UINT8,
            TensorProto.INT32,
        )
    else:
        weight = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
        node, in_type, out_type = helper.make_node("MatMul", ["x", "w"], ["y"]), TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", in_type, [n, n])],
        [helper.make_tensor_value_info("y", out_type, [n, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _onnxruntime_gemms(n: int, threads: int, precisions: Collection[str]) -> Iterator[tuple[str, Callable[[], Any]]]:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    for precision, integer in (("fp32", False), ("int8", True)):
        if precision not in precisions:
            continue
        session = ort.InferenceSession(_onnx_gemm_model(n, integer), options, providers=["CPUExecutionProvider"])
        x = np.random.randint(0, 255, (n, n)).astype(np.uint8) if integer else np.random.rand(n, n).astype(np.float32)
        yield precision, functools.partial(session.run, None, {"x": x})


def _openvino_gemms(n: int, threads: int, precisions: Collection[str]) -> Iterator[tuple[str, Callable[[], Any]]]:
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([n, n], ov.Type.f32, name="x")
    w = ops.constant(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    model = ov.Model([ops.matmul(x, w, False, False)], [x], "gemm")
    data = np.random.rand(n, n).astype(np.float32)
    core = ov.Core()
    for precision, hint in (("fp32", "f32"), ("bf16", "bf16")):
        if precision not in precisions:
            continue
        compiled = core.compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads}
        )
        if precision == "bf16" and compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() != "bf16":
            continue  # no native bf16 on this CPU: OpenVINO would run f32 and call it bf16
        request = compiled.create_infer_request()
        yield precision, functools.partial(request.infer, {0: data})


ENGINES: dict[str, Callable[[int, int, Collection[str]], Iterator[tuple[str, Callable[[], Any]]]]] = {
    "torch": lambda n, threads, precisions: _torch_gemms(n, precisions),
    "onnxruntime": _onnxruntime_gemms,
    "openvino": _openvino_gemms,
}


def measure_peaks(
    threads: int | None = None,
    *,
    n: int = GEMM_SIZE,
    repeats: int = 3,
    engines: tuple[str, ...] = tuple(ENGINES),
    precisions: Collection[str] = PEAK_PRECISIONS,
    native: Collection[str] | None = None,
) -> dict[str, Peak]:
    """Best GFLOP/s of fp32 and each of ``precisions`` (of ``PEAK_PRECISIONS``) over every installed engine's GEMMs.

    ``threads`` (default: PyTorch's current setting) is given to every engine, as the benchmark gives it to every
    runtime. An engine that is missing or fails contributes nothing; PyTorch's fp32 GEMM always runs. A precision
    not in ``native`` (default: :func:`resnext.runtime.hardware.native_precisions`) is timed once at
    :data:`EMULATED_GEMM_SIZE` within :data:`EMULATED_BUDGET_S` and marked emulated (see the module docstring).
    """
    threads = threads or torch.get_num_threads()
    native = native_precisions("cpu") if native is None else native
    wanted = ["fp32"] + [p for p in PEAK_PRECISIONS if p in precisions and p != "fp32"]
    emulated = [p for p in wanted if p != "fp32" and p not in native]
    found: dict[str, Peak] = {}
    with torch_threads(threads):
        for engine in engines:
            measured = []
            for precision in wanted:
                try:
                    size, gflops = _gemm_rate(engine, precision, threads, n, repeats, precision in emulated)
                except Exception as exc:  # noqa: BLE001 - an optional engine (missing, or an op it lacks) is skipped
                    logger.debug("peak: %s %s skipped (%s: %s)", engine, precision, type(exc).__name__, exc)
                    continue
                if gflops is None:  # this engine has no GEMM of that precision
                    continue
                slow = precision in emulated
                measured.append(f"{precision}{f' (emulated, n={size})' if slow else ''} {gflops:.1f}")
                if gflops > found.get(precision, Peak(precision, 0.0, "")).gflops:
                    found[precision] = Peak(precision, gflops, engine, emulated=slow)
            if measured:
                logger.info("GEMM peak %s: %s GFLOP/s", engine, ", ".join(measured))
    for precision in emulated:  # reported even where no engine could time it
        found.setdefault(precision, Peak(precision, 0.0, "not measured", emulated=True))
    return floor_peaks(found)


def _gemm_rate(
    engine: str, precision: str, threads: int, n: int, repeats: int, emulated: bool
) -> tuple[int, float | None]:
    """(GEMM size, GFLOP/s) of one engine's GEMM in ``precision``; (n, None) where the engine has none.

    An emulated precision is first timed once at :data:`EMULATED_GEMM_SIZE`; it is timed at ``n`` only when that
    rate says ``repeats + 1`` calls of size ``n`` fit in :data:`EMULATED_BUDGET_S` (ONNX Runtime's int8 without
    VNNI is fast enough; emulated bf16 is not)."""

    def rate(size: int, calls: int, budget: float) -> float | None:
        for _, fn in ENGINES[engine](size, threads, [precision]):
            return 2 * size**3 / best_seconds(fn, calls, budget) / 1e9
        return None

    if not emulated:
        return n, rate(n, repeats, math.inf)
    small = min(n, EMULATED_GEMM_SIZE)
    gflops = rate(small, 1, EMULATED_BUDGET_S)
    if gflops is None or small == n or 2 * n**3 / (gflops * 1e9) * (repeats + 1) > EMULATED_BUDGET_S:
        return small, gflops
    return n, rate(n, repeats, EMULATED_BUDGET_S)


def emulated_note(precision: str) -> str:
    needs = " or ".join(NATIVE_CPU_FEATURES.get(precision, ()))
    return (
        f"{precision} is emulated on this CPU (no {needs}): its GEMM peak was timed within a budget, and its rows "
        "may be slow (bounded by the time budget)"
    )


def floor_peaks(found: dict[str, Peak]) -> dict[str, Peak]:
    """Every precision of ``found`` (and fp32), none below fp32's (see the module docstring)."""
    fp32 = found["fp32"]
    return {
        p: peak if peak.gflops >= fp32.gflops else Peak(p, fp32.gflops, "fp32 floor", peak.emulated)
        for p, peak in found.items()
    }


def merge_peaks(*measurements: dict[str, Peak]) -> dict[str, Peak]:
    """The higher value per precision of several measurements (before and after the rows)."""
    precisions = [p for p in PEAK_PRECISIONS if any(p in m for m in measurements)]
    return {p: max((m[p] for m in measurements if p in m), key=lambda peak: peak.gflops) for p in precisions}


def peak_fraction(gflops: float, precision: str, peaks: dict[str, Peak]) -> tuple[float, float]:
    """(fraction of the row's own precision's peak, that peak in GFLOP/s); unknown precisions use fp32's."""
    peak = peaks.get(precision, peaks["fp32"]).gflops
    return gflops / peak, peak


def ran_precision(runner: Backend, precision: str) -> str:
    """The precision a runner really computes in (int8 files report their float fallback as their own)."""
    if precision == "int8":
        return "int8"
    actual = runner.precision
    return actual if actual in ("fp32", "bf16", "fp16") else precision


def apply_peaks(rows: Sequence[Any], peaks: dict[str, Peak], gflop_per_image: float) -> None:
    """Fill each row's GFLOP/s and its fraction of its own precision's peak."""
    for row in rows:
        row.gflops = row.images_per_s * gflop_per_image
        if row.backend == "tensorrt":  # GPU rows: the peaks are CPU GEMMs
            continue
        row.peak_fraction, row.peak_gflops = peak_fraction(row.gflops, row.ran_precision or row.precision, peaks)
