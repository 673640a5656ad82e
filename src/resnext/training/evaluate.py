"""Top-1 / top-5 / loss over an ImageFolder tree, correct under ``torchrun`` (every sample counted once).

    resnext evaluate /data/imagenet/val --arch resnext101_32x4d --weights model.pth --precision bf16
    torchrun --nproc_per_node 8 -m resnext.cli evaluate /data/imagenet/val --weights model.pth

The model comes from :func:`resnext.model.sources.load_source` (any source: published weights, a file, a URL, a
training checkpoint with its class names and image size); images go through the one inference path
(:func:`resnext.images.load_image`, the eval preset of :mod:`resnext.transforms`, a
:class:`resnext.runtime.backend.TorchBackend`). Each process
evaluates an unpadded shard; the per-process sums (correct, loss, count) are added with ``all_reduce``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..errors import ResnextError
from ..model.sources import arch_option, weights_option
from ..options import (
    Precision,
    batch_size_option,
    check_options,
    device_option,
    image_size_option,
    option,
    precision_option,
    precisions,
    workers_option,
)
from ..util import loader_workers
from .distributed import Distributed, init_distributed, shutdown_distributed

logger = logging.getLogger("resnext")

__all__ = ["evaluate", "evaluate_folder", "EvaluateConfig", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def evaluate(
    backend: Callable[[Tensor], Tensor],
    batches: Iterable[tuple[Tensor | None, Tensor, list[str]]],
    *,
    num_classes: int,
    dist_info: Distributed | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Run ``backend`` (normalised batch -> CPU float logits) over ``(images, labels, errors)`` batches.

    Returns NVIDIA's metric names: ``val.top1`` / ``val.top5`` (percent), ``val.loss`` (mean cross-entropy),
    ``val.count``, ``val.compute_ips`` / ``val.total_ips`` and ``val.compute_latency`` with its 95/99/100th
    percentiles (seconds per batch, this process).
    """
    dist_info = dist_info or Distributed()
    sums = torch.zeros(5, dtype=torch.float64)  # top-1 correct, top-5 correct, loss sum, samples, skipped
    latencies: list[float] = []
    local_count = 0
    start = time.perf_counter()
    iterator: Iterable = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc="evaluate", unit="batch", dynamic_ncols=True)
    for step, (images, labels, errors) in enumerate(iterator):
        if max_steps is not None and step >= max_steps:
            break
        for error in errors:
            logger.warning("skipped unreadable image: %s", error)
        sums[4] += len(errors)
        if images is None:
            continue
        t0 = time.perf_counter()
        logits = backend(images).float()
        latencies.append(time.perf_counter() - t0)
        # rank the logits, not softmax probabilities: saturated probabilities underflow to equal zeros and tie
        hits = logits.topk(min(5, num_classes), dim=-1).indices == labels[:, None]
        local_count += len(labels)
        sums += torch.tensor(
            [
                hits[:, 0].sum().item(),
                hits.any(dim=1).sum().item(),
                F.cross_entropy(logits, labels, reduction="sum").item(),
                len(labels),
                0,
            ],
            dtype=torch.float64,
        )
    elapsed = time.perf_counter() - start
    if dist_info.enabled:
        reduced = sums.to(dist_info.device)
        dist.all_reduce(reduced)
        sums = reduced.cpu()
    correct1, correct5, loss_sum, count, skipped = sums.tolist()
    if count == 0:
        raise ResnextError("no image could be evaluated (all unreadable, or an empty folder)")
    compute = sum(latencies)
    return {
        "val.top1": 100.0 * correct1 / count,
        "val.top5": 100.0 * correct5 / count,
        "val.loss": loss_sum / count,
        "val.count": int(count),
        "val.skipped_images": int(skipped),
        "val.compute_ips": local_count / compute if compute else float("nan"),
        "val.total_ips": count / elapsed if elapsed else float("nan"),
        "val.compute_latency": compute / len(latencies) if latencies else float("nan"),
        "val.compute_latency_at95": percentile(latencies, 95),
        "val.compute_latency_at99": percentile(latencies, 99),
        "val.compute_latency_at100": percentile(latencies, 100),
    }


# ---------------------------------------------------------------------------------------------------------------
# `resnext evaluate`


@dataclass(frozen=True)
class EvaluateConfig:
    """The options of :func:`evaluate_folder` (``resnext evaluate``'s flags), checked when built."""

    arch: str | None = arch_option()
    weights: Any = weights_option()
    channels_last: bool = option(False, help="run the model in NHWC memory format")
    image_size: int | None = image_size_option()
    device: str = device_option()
    batch_size: int = batch_size_option(64)
    workers: int = workers_option(loader_workers())
    precision: Precision = precision_option("fp32", choices=precisions("tf32", "int8"), help="autocast precision")
    use_ema: bool = option(False, flags=("--ema",), help="the EMA weights of a training checkpoint")
    progress: bool = option(True, flags=("--no-progress",), help="no progress bar")
    output: str | None = option(
        None, flags=("--output", "-o"), metavar="FILE", help="also write the results as JSON to FILE (default: none)"
    )
    overwrite: bool = option(False, help="replace an existing --output file")

    def __post_init__(self) -> None:
        check_options(self)


def evaluate_folder(
    root: str | os.PathLike,
    *,
    arch: str | None = None,
    weights: Any = "DEFAULT",
    use_ema: bool = False,
    batch_size: int = 64,
    precision: str = "fp32",
    channels_last: bool = False,
    image_size: int | None = None,
    workers: int = loader_workers(),
    device: str = "auto",
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``weights`` (any source: see :mod:`resnext.model.sources`) on the ImageFolder tree ``root``; rank 0
    writes the results as JSON to ``output`` when given, atomically (an existing file only with ``overwrite``).

    ``image_size`` defaults to the size a training checkpoint (or an ``export-weights`` file) was trained at,
    else the published weights' preset, else 224. Class folders are matched by the checkpoint's class names.
    """
    from ..model.sources import load_source
    from ..runtime.backend import TorchBackend
    from ..util import atomic_open, check_writable
    from .data import eval_loader, match_classes

    # the CLI's checks, worded alike, for a library call too
    EvaluateConfig(batch_size=batch_size, workers=workers, image_size=image_size, precision=precision)  # type: ignore[arg-type]
    if output is not None:
        check_writable(output, "--output")
        if os.path.lexists(output) and not overwrite:
            raise ResnextError(f"--output {output} exists: pass --overwrite to replace it, or choose another file")
    dist_info = init_distributed(device)
    try:
        source = load_source(weights, arch=arch, use_ema=use_ema, progress=progress and dist_info.is_main)
        model = source.model
        assert model is not None
        classes = match_classes(root, source.num_classes, source.classes)
        loader = eval_loader(
            root,
            image_size=image_size or source.image_size,
            batch_size=batch_size,
            workers=workers,
            classes=classes,
            process=dist_info,
            transforms=None if image_size else source.transforms,
        )
        backend = TorchBackend(model, device=str(dist_info.device), precision=precision, channels_last=channels_last)
        metrics = evaluate(
            backend,
            loader,
            num_classes=source.num_classes,
            dist_info=dist_info,
            progress=progress and dist_info.is_main,
        )
    finally:
        shutdown_distributed(dist_info)
    results: dict[str, Any] = {
        "data": str(root),
        "arch": source.arch,
        "weights": source.weights,
        "ema": use_ema,
        "precision": precision,
        "channels_last": channels_last,
        "image_size": image_size or source.image_size,
        "batch_size": batch_size,
        "world_size": dist_info.world_size,
        **metrics,
    }
    if dist_info.is_main and output is not None:
        with atomic_open(output, "w", encoding="utf-8") as f:
            f.write(json.dumps(results, indent=2) + "\n")
    return results
