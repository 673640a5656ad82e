"""Training speed: img/s of full SGD steps on a fixed synthetic batch, per precision, memory format and compile,
each row against the fp32 NCHW reference row measured in the same run (these machines are shared).

    resnext benchmark training --arch resnext_test --batch-size 16 --image-size 64 --steps 3 --no-compile
    python benchmarks/train.py                     # resnext101_32x4d, batch 16, 224 px (the same through the CLI)
    python benchmarks/gpu_check.py --only training # largest batch that fits, AMP + channels_last, on a GPU

The step is the training loop's own (:func:`resnext.training.optim.forward_backward` +
:func:`resnext.training.optim.optimizer_step`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.factory import create_model
from ..model.sources import DEFAULT_ARCH, arch_option
from ..options import (
    at_least,
    batch_size_option,
    check_options,
    comma_list,
    device_option,
    image_size_option,
    option,
)
from ..training.data import SyntheticData
from ..training.optim import forward_backward, optimizer_step, parameter_groups
from ..util import autocast_dtype, resolve_device


@dataclass(frozen=True)
class TrainingBenchConfig:
    """What ``benchmark training`` measures (the arguments of :func:`resnext.bench.report.training_rows`)."""

    batch_size: int = batch_size_option()
    device: str = device_option()
    arch: str = arch_option(DEFAULT_ARCH)
    image_size: int = image_size_option(224)
    warmup: int = option(2, check=at_least(0), metavar="N", help="untimed steps per setting")
    steps: int = option(5, check=at_least(1), help="timed steps per setting")
    compile: bool = option(True, flags=("--no-compile",), help="skip the torch.compile settings")
    precisions: tuple[str, ...] = option(
        ("fp32", "bf16"),
        parse=comma_list,
        help="comma-separated precisions to measure; the fp32 NCHW reference row always runs",
    )

    def __post_init__(self) -> None:
        check_options(self)


logger = logging.getLogger("resnext")

__all__ = [
    "SpeedSetting",
    "DEFAULT_SETTINGS",
    "Workload",
    "measure_training_speed",
    "benchmark_training",
    "format_speed_table",
]


@dataclass(frozen=True)
class SpeedSetting:
    name: str
    precision: str = "fp32"
    memory_format: str = "nchw"
    compile: bool = False


DEFAULT_SETTINGS = (
    SpeedSetting("fp32 nchw (reference)"),
    SpeedSetting("fp32 nhwc", memory_format="nhwc"),
    SpeedSetting("bf16 nhwc", "bf16", "nhwc"),
    SpeedSetting("fp32 nhwc compile", memory_format="nhwc", compile=True),
    SpeedSetting("bf16 nhwc compile", "bf16", "nhwc", compile=True),
)


def _criterion(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target, label_smoothing=0.1)


@dataclass(frozen=True)
class Workload:
    """What every setting of one benchmark trains: a fixed synthetic batch, some warm-up steps, the timed steps."""

    batch_size: int
    image_size: int = 224
    warmup: int = 2
    steps: int = 5
    device: str = "auto"
    num_classes: int = 1000


def measure_training_speed(arch: str, setting: SpeedSetting, workload: Workload) -> dict[str, Any]:
    """Training img/s of one setting on ``workload`` (SGD step included); raises on OOM/errors."""
    batch_size, image_size, steps = workload.batch_size, workload.image_size, workload.steps
    dev = resolve_device(workload.device)
    torch.manual_seed(0)
    memory_format = torch.channels_last if setting.memory_format == "nhwc" else torch.contiguous_format
    model = create_model(arch, num_classes=workload.num_classes).to(dev).to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(parameter_groups(model, 1 / 16384), lr=0.01, momentum=0.875)
    scaler = torch.amp.GradScaler(dev.type, init_scale=128.0, enabled=setting.precision == "fp16")
    net = cast(nn.Module, torch.compile(model)) if setting.compile else model
    data = SyntheticData(batch_size, image_size, workload.num_classes, 1)
    images = data.images.to(dev, memory_format=memory_format)
    labels = data.labels.to(dev)
    amp_dtype = autocast_dtype(setting.precision)

    def run(n: int) -> tuple[Tensor, float]:
        """``n`` training steps; returns the last loss and the wall time, GPU work included."""
        t0 = time.perf_counter()
        loss = torch.zeros(())
        for _ in range(n):
            loss = forward_backward(net, images, labels, criterion=_criterion, amp_dtype=amp_dtype, scaler=scaler)
            optimizer_step(optimizer, scaler)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return loss, time.perf_counter() - t0

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _, warmup_s = run(workload.warmup)
    loss, elapsed = run(steps)
    result = {
        "setting": setting.name,
        "precision": setting.precision,
        "memory_format": setting.memory_format,
        "compile": setting.compile,
        "batch_size": batch_size,
        "image_size": image_size,
        "steps": steps,
        "img_per_s": batch_size * steps / elapsed,
        "ms_per_step": 1000 * elapsed / steps,
        "warmup_s": warmup_s,
        "final_loss": float(loss),
        "device": str(dev),
    }
    if dev.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return result


def benchmark_training(
    arch: str = "resnext101_32x4d",
    *,
    batch_size: int = 16,
    image_size: int = 224,
    warmup: int = 2,
    steps: int = 5,
    settings: tuple[SpeedSetting, ...] = DEFAULT_SETTINGS,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Measure each setting in the same run; the first is the reference row for the ``ratio`` column."""
    rows: list[dict[str, Any]] = []
    workload = Workload(batch_size, image_size, warmup, steps, device)
    for setting in settings:
        logger.info("measuring %s (%d warm-up + %d timed steps)...", setting.name, warmup, steps)
        try:
            row = measure_training_speed(arch, setting, workload)
        except Exception as exc:  # noqa: BLE001 - one failing setting (e.g. compile without a compiler) must not hide the rest
            row = {
                "setting": setting.name,
                "img_per_s": float("nan"),
                "error": f"{type(exc).__name__}: {str(exc)[:200]}",
            }
        rows.append(row)
        logger.info("%s: %s", setting.name, f"{row['img_per_s']:.2f} img/s" if "error" not in row else row["error"])
    reference = rows[0]["img_per_s"]
    for row in rows:
        row["ratio"] = row["img_per_s"] / reference if reference == reference and reference > 0 else float("nan")
    return rows


def format_speed_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'setting':<26} {'img/s':>9} {'ms/step':>10} {'ratio':>7}  note", "-" * 64]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['setting']:<26} {'-':>9} {'-':>10} {'-':>7}  {row['error']}")
        else:
            lines.append(
                f"{row['setting']:<26} {row['img_per_s']:>9.2f} {row['ms_per_step']:>10.1f} "
                f"{row['ratio']:>6.2f}x  warm-up {row['warmup_s']:.1f} s"
            )
    return "\n".join(lines)
