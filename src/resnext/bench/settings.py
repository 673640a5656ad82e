"""The inference benchmark's settings (:class:`BenchConfig`, run by :mod:`resnext.bench.inference`) and the
measurement options ``benchmark report`` (:class:`resnext.bench.report.ReportConfig`) shares with it, declared
once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ResnextError
from ..model.sources import arch_option, weights_option
from ..options import (
    at_least,
    calibration_dir_option,
    check_options,
    comma_list,
    each,
    greater_than,
    image_size_option,
    option,
    precisions,
    threads_option,
)

DEFAULT_HISTORY = "benchmarks/history.jsonl"
DEFAULT_PLOT = "benchmarks/history.png"


def history_option() -> Any:
    """The regression history ``benchmark report`` appends to and ``benchmark compare`` reads."""
    return option(DEFAULT_HISTORY, metavar="FILE.jsonl", help="")


def backends_option() -> Any:
    return option(("torch", "onnxruntime", "openvino"), parse=comma_list, help="comma-separated")


def precisions_option(default: Sequence[str]) -> Any:
    return option(
        tuple(default),
        flags=("--precision",),
        parse=comma_list,
        metavar="PRECISION",
        help=f"comma-separated: {','.join(precisions('tf32'))}",
    )


def batch_sizes_option(default: Sequence[int]) -> Any:
    return option(tuple(default), check=each(at_least(1)), metavar="N,N,...", help="")


def warmup_option() -> Any:
    return option(2, check=at_least(0), metavar="N", help="untimed calls per row")


def min_iters_option() -> Any:
    return option(3, check=at_least(1), help="timed calls per row, at least")


def min_time_option() -> Any:
    return option(2.0, check=at_least(0.0), help="timed seconds per row, at least")


def threads_option_for_peaks() -> Any:
    return threads_option("threads for every runtime and the peak GEMMs")  # default: torch's


def time_budget_option() -> Any:
    return option(
        1800.0,
        check=greater_than(0.0),
        metavar="S",
        help="seconds for all inference rows and peaks: once spent, the row being timed stops after one call and the "
        "rest are skipped with a note; the JSON is still written",
    )


@dataclass
class BenchConfig:
    arch: str = arch_option("resnext101_32x4d")
    weights: str | None = weights_option(None)  # None: random weights (see the module docstring)
    backends: Sequence[str] = backends_option()
    precisions: Sequence[str] = precisions_option(("fp32",))
    batch_sizes: Sequence[int] = batch_sizes_option((1, 16, 64))
    warmup: int = warmup_option()
    calibration_dir: str | None = calibration_dir_option()  # int8 calibration images; default: the packaged samples
    image_size: int = image_size_option(224)
    threads: int | None = threads_option_for_peaks()
    min_iters: int = min_iters_option()
    min_time: float = min_time_option()
    time_budget: float = time_budget_option()  # seconds for the whole run (see the module docstring)
    agreement_dir: str | None = option(  # images (a labelled folder gives accuracy too)
        None,
        metavar="DIR",
        help="images for the agreement column; a labelled folder (class sub-folders) adds accuracy (default: the "
        "packaged samples)",
    )
    agreement_count: int = 256  # at most this many agreement images
    peak_size: int = 2048  # GEMM size of the peak measurement
    json_path: str | None = None

    def __post_init__(self) -> None:
        check_options(self)


def parse_list(text: str, kind: type = str) -> list[Any]:
    try:
        return [kind(item.strip()) for item in str(text).split(",") if item.strip()]
    except ValueError as exc:
        raise ResnextError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from exc
