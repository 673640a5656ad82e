"""Process group, rank and device for ``torchrun`` (training and evaluation share this; neither imports the other),
and the stop request (SIGTERM/SIGINT) that a training loop shares with every process at its next step.

    torchrun --nproc_per_node 8 -m resnext.cli train /data/imagenet --workspace runs/r101
    torchrun --nproc_per_node 2 -m resnext.cli evaluate /data/imagenet/val --weights runs/r101/best.pth

Without ``torchrun`` (no ``WORLD_SIZE`` > 1) everything runs in one process and no process group is created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..util import resolve_device

logger = logging.getLogger("resnext")

__all__ = ["Distributed", "StopRequest", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class Distributed:
    """Where this process sits: its rank, its local rank on the node, the world size and its device."""

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
        dist.init_process_group(
            "nccl" if resolved.type == "cuda" else "gloo", device_id=resolved if resolved.type == "cuda" else None
        )
    return Distributed(rank, local_rank, world_size, resolved)


def shutdown_distributed(info: Distributed) -> None:
    """Leave the process group joined by :func:`init_distributed` (no-op for one process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, writes a checkpoint and returns.
    A second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning(
            "received %s: finishing the current step, then writing a checkpoint", signal.Signals(signum).name
        )

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: signals stay with the caller
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
