"""Training speed: img/s for fp32 NCHW (reference row) vs fp32 NHWC, bf16 NHWC and torch.compile, same run.

    python benchmarks/train.py                                  # resnext101_32x4d, batch 16, 224 px, CPU or GPU
    python benchmarks/train.py --no-compile --steps 3           # quicker
    resnext benchmark training --batch-size 16                  # the same through the CLI

Synthetic data (a fixed random batch), SGD step included; each setting gets untimed warm-up steps first
(torch.compile compiles there). Record results with the machine line in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys

from resnext.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", "training", *sys.argv[1:]]))
