"""Prepared GPU check: run once on a CUDA machine, paste its output into benchmarks/RESULTS.md.

    pip install --no-deps -e . && python benchmarks/gpu_check.py

Sections: training (AMP + channels_last img/s at the largest batch that fits) and inference (eager AMP
reference vs channels_last + torch.compile vs TensorRT when importable, each parity-checked).
"""

from __future__ import annotations


def check_training() -> None:
    raise NotImplementedError


def check_inference() -> None:
    raise NotImplementedError


def main() -> None:
    check_training()
    check_inference()


if __name__ == "__main__":
    main()
