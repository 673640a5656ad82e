"""Benchmarks: each measures against a reference row taken in the same run, because these machines are shared.

``inference`` (runtimes x precisions x batch sizes), ``training`` (img/s per precision and memory format),
and the commands built on them; ``resnext benchmark KIND`` runs them.
"""

from .inference import BenchConfig, BenchResult, Row, model_gflop, run_inference_benchmark, summarise
from .peak import Peak, measure_peaks
from .settings import parse_list

__all__ = [
    "BenchConfig",
    "BenchResult",
    "Peak",
    "Row",
    "measure_peaks",
    "model_gflop",
    "parse_list",
    "run_inference_benchmark",
    "summarise",
]
