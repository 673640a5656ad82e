"""The pure pieces of a training step, shared by the loop (:mod:`resnext.training.trainer`) and the training benchmark
(:mod:`resnext.bench.training`): learning-rate schedule, weight-decay groups, EMA of the weights, mixup, and
one forward/backward + optimizer step under autocast and loss scaling.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["lr_at", "parameter_groups", "ModelEma", "forward_backward", "optimizer_step", "mixup"]


def lr_at(
    iteration: int,
    *,
    base_lr: float,
    schedule: str,
    warmup_iters: int,
    total_iters: int,
    iters_per_epoch: int,
    epochs: int,
) -> float:
    """Learning rate at ``iteration`` (0-based, counted in optimizer steps over the whole run).

    Warmup: ``base_lr * (iteration + 1) / warmup_iters``. Then, with ``e`` iterations past warmup out of
    ``es = total_iters - warmup_iters``: cosine ``base_lr * (1 + cos(pi * e / es)) / 2``; linear
    ``base_lr * (1 - e / es)``; step ``base_lr * 0.1 ** k`` with ``k`` the number of milestones (1/3, 2/3 and
    8/9 of the epochs, NVIDIA's 30/60/80 for 90 epochs) already passed.
    """
    if iteration < warmup_iters:
        return base_lr * (iteration + 1) / warmup_iters
    e, es = iteration - warmup_iters, max(1, total_iters - warmup_iters)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr
    if schedule == "linear":
        return base_lr * (1 - e / es)
    if schedule == "step":
        epoch = iteration // iters_per_epoch
        milestones = [round(epochs * f) for f in (1 / 3, 2 / 3, 8 / 9)]
        return base_lr * 0.1 ** sum(epoch >= m for m in milestones)
    raise ValueError(f"unknown lr schedule {schedule!r}")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: conv/linear weights decay; every BN parameter and bias (ndim <= 1) does not.

    Going by shape rather than by module name covers the BN inside ``downsample`` too (NVIDIA decays it).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ModelEma:
    """Exponential moving average of every floating-point entry of the state_dict (weights and BN statistics)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema, src = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema[k] for k in floats], [src[k].detach() for k in floats], 1.0 - self.decay)
        for k, v in ema.items():
            if not v.is_floating_point():
                v.copy_(src[k])


def forward_backward(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    criterion: Callable[[Tensor, Tensor], Tensor],
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler,
    scale: float = 1.0,
) -> Tensor:
    """One micro-batch: forward under autocast, backward of ``loss * scale`` through the grad scaler."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = criterion(model(images), targets)
    scaler.scale(loss * scale).backward()
    return loss.detach()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    scaler.step(optimizer)  # skips the update when fp16 gradients overflowed, then lowers the scale
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def mixup(images: Tensor, soft_targets: Tensor, alpha: float, seed: int) -> tuple[Tensor, Tensor]:
    """Blend each sample with a partner from the same batch; ``lambda ~ Beta(alpha, alpha)`` drawn from ``seed``."""
    lam = random.Random(seed).betavariate(alpha, alpha)
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed)).to(images.device)
    return images.mul(lam).add_(images[perm], alpha=1 - lam), soft_targets.mul(lam).add_(
        soft_targets[perm], alpha=1 - lam
    )
