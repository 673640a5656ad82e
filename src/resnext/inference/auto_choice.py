"""What ``--backend auto`` chose (:class:`AutoChoice`), and the backend that carries that record
(:class:`AutoBackend`); :mod:`resnext.inference.auto` makes the choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..runtime.backend import Backend


@dataclass
class AutoChoice:
    """What ``--backend auto`` chose and where the file came from (:attr:`AutoBackend.auto`)."""

    runtime: str
    precision: str
    path: str | None = None  # the cached model file; None for eager PyTorch
    reused: bool = False  # True: loaded from the cache; False: exported in this call (or torch)
    reason: str = ""
    parity: list[str] = field(default_factory=list)
    agreement: float | None = None  # top-1 agreement with eager fp32 on the check images (approximate runs)

    def line(self) -> str:
        where = "" if self.path is None else f" ({'cached' if self.reused else 'exported to'} {self.path})"
        agreement = "" if self.agreement is None else f", top-1 agreement with eager fp32 {100 * self.agreement:.1f}%"
        return f"backend auto: {self.runtime} {self.precision}{where}{agreement}; {self.reason}"


class AutoBackend:
    """What ``--backend auto`` runs: the backend it chose (:attr:`active`) and why (:attr:`auto`, an
    :class:`AutoChoice`); everything else is the chosen backend's."""

    def __init__(self, active: Backend, auto: AutoChoice) -> None:
        self.active = active
        self.auto = auto

    @property
    def name(self) -> str:
        return self.active.name

    @property
    def num_classes(self) -> int:
        return self.active.num_classes

    @property
    def device(self) -> torch.device:
        return self.active.device

    @property
    def precision(self) -> str:
        return self.active.precision

    @property
    def metadata(self) -> dict[str, Any]:
        return self.active.metadata

    @property
    def image_size(self) -> int | None:
        return self.active.image_size

    @property
    def has_features(self) -> bool:
        return self.active.has_features

    def __call__(self, batch: Tensor) -> Tensor:
        return self.active(batch)

    def features(self, batch: Tensor) -> Tensor:
        return self.active.features(batch)

    def expect(self, images: int) -> None:
        self.active.expect(images)
