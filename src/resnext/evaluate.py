"""Top-1 / top-5 / loss over an ImageFolder tree, correct under ``torchrun`` (every sample counted once).

    resnext evaluate /data/imagenet/val --arch resnext101_32x4d --weights model.pth --precision bf16
    torchrun --nproc_per_node 8 -m resnext.cli evaluate /data/imagenet/val --weights model.pth

Images go through the one inference path (:func:`resnext.images.load_image`, the eval preset of
:mod:`resnext.transforms`, a :class:`resnext.predict.TorchBackend`). Each process
evaluates an unpadded shard; the per-process sums (correct, loss, count) are added with ``all_reduce``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .errors import ResnextError
from .labels import imagenet_wnids
from .util import resolve_device

logger = logging.getLogger("resnext")

__all__ = ["Distributed", "init_distributed", "evaluate", "evaluate_folder", "percentile"]


# ---------------------------------------------------------------------------------------------------------------
# Distributed setup (shared with training)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group when started by ``torchrun`` (NCCL on GPU, gloo on CPU); else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", device_id=resolved if resolved.type == "cuda" else None)
    return Distributed(rank, local_rank, world_size, resolved)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


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
            [hits[:, 0].sum().item(), hits.any(dim=1).sum().item(),
             F.cross_entropy(logits, labels, reduction="sum").item(), len(labels), 0],
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


def load_for_evaluation(
    arch: str | None, weights: str | None, *, use_ema: bool = False
) -> tuple[torch.nn.Module, str, list[str] | None, int | None]:
    """Model with the checkpoint's own number of classes, its architecture name, and the class names and training
    image size when the checkpoint stores them (training checkpoints do)."""
    from .models import create_model, model_from_state_dict
    from .weights import WEIGHTS_BY_MODEL, extract_state_dict, read_checkpoint

    if weights is None:
        arch = arch or "resnext101_32x4d"
        if arch not in WEIGHTS_BY_MODEL:
            raise ResnextError(f"{arch} has no published weights; pass --weights FILE")
        return create_model(arch, weights="DEFAULT"), arch, imagenet_wnids(), None
    checkpoint = read_checkpoint(weights)  # read once: the model and the stored metadata both come from it
    stored = checkpoint if isinstance(checkpoint, dict) else {}
    arch = arch or stored.get("arch") or "resnext101_32x4d"
    model = model_from_state_dict(arch, extract_state_dict(checkpoint, use_ema=use_ema), source=str(weights))
    num_classes = model.num_classes
    classes = stored.get("classes")
    if not (isinstance(classes, list) and len(classes) == num_classes and all(isinstance(c, str) for c in classes)):
        classes = None
    config = stored.get("config")
    image_size = config.get("image_size") if isinstance(config, dict) else None
    return model, arch, classes, int(image_size) if isinstance(image_size, int) else None


def evaluate_folder(
    root: str | os.PathLike,
    *,
    arch: str | None = None,
    weights: str | None = None,
    use_ema: bool = False,
    batch_size: int = 64,
    precision: str = "fp32",
    channels_last: bool = False,
    image_size: int | None = None,
    workers: int = 4,
    device: str = "auto",
    output: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``weights`` on the ImageFolder tree ``root``; rank 0 writes the results as JSON to ``output``.

    ``image_size`` defaults to the size a training checkpoint was trained at, else 224.
    """
    from .data import eval_loader, match_classes
    from .runtimes import TorchBackend

    dist_info = init_distributed(device)
    model, arch, classes, trained_size = load_for_evaluation(arch, weights, use_ema=use_ema)
    image_size = image_size or trained_size or 224
    classes = match_classes(root, model.num_classes, classes)
    loader = eval_loader(
        root, image_size=image_size, batch_size=batch_size, workers=workers, classes=classes,
        rank=dist_info.rank, world_size=dist_info.world_size, pin_memory=dist_info.device.type == "cuda",
    )
    backend = TorchBackend(model, device=str(dist_info.device), precision=precision, channels_last=channels_last)
    metrics = evaluate(
        backend, loader, num_classes=model.num_classes, dist_info=dist_info, progress=progress and dist_info.is_main
    )
    results: dict[str, Any] = {
        "data": str(root), "arch": arch, "weights": str(weights) if weights else "DEFAULT", "ema": use_ema,
        "precision": precision, "channels_last": channels_last, "image_size": image_size,
        "batch_size": batch_size, "world_size": dist_info.world_size, **metrics,
    }
    if dist_info.is_main and output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, path)
    if dist_info.enabled:
        dist.destroy_process_group()
    return results
