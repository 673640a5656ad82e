"""The contract every backend keeps (:class:`Backend`), and eager PyTorch's backend (:class:`TorchBackend`).

A backend maps a normalised float batch ``[N, 3, S, S]`` to float32 CPU logits ``[N, C]`` and says what it runs
(device, precision, image size, stored metadata) and whether it gives embeddings. The backends of exported files are
in :mod:`resnext.runtime.backends`, ``--backend auto`` in :mod:`resnext.inference.auto`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from ..errors import ResnextError
from ..util import autocast_dtype, resolve_device
from .table import RUNTIMES


class Backend(Protocol):
    """What every backend offers (eager PyTorch, an exported file, ``--backend auto``, a remote Triton model)."""

    @property
    def name(self) -> str:
        """The runtime's name in :data:`resnext.runtime.table.RUNTIMES` (``"auto"`` while auto has not settled)."""

    @property
    def num_classes(self) -> int: ...

    @property
    def device(self) -> torch.device:
        """Where the backend takes its input batch (a CPU runtime reads host memory)."""

    @property
    def precision(self) -> str:
        """The precision it runs: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``."""

    @property
    def metadata(self) -> dict[str, Any]:
        """What an exported file stores about itself (arch, classes, image size, ...); empty for eager PyTorch."""

    @property
    def image_size(self) -> int | None:
        """The one image size it takes; None when any size runs (eager PyTorch)."""

    @property
    def has_features(self) -> bool:
        """True when :meth:`features` gives pooled penultimate features (embeddings)."""

    def __call__(self, batch: Tensor) -> Tensor:
        """Logits ``[N, C]`` (float32, CPU) of a preprocessed batch ``[N, 3, S, S]``."""

    def features(self, batch: Tensor) -> Tensor:
        """Pooled penultimate features ``[N, D]`` (float32, CPU); an error where :attr:`has_features` is False."""

    def expect(self, images: int) -> None:
        """A job of ``images`` images starts (``--backend auto`` decides from it whether exporting pays)."""


def torch_features(
    model: torch.nn.Module,
    batch: Tensor,
    device: torch.device,
    dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """Pooled features of the eager ``model`` (``forward_head(forward_features(x), pre_logits=True)``)."""
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        x = batch.to(device, memory_format=memory_format, non_blocking=True)
        return model.forward_head(model.forward_features(x), pre_logits=True).float().cpu()  # type: ignore[operator]


class TorchBackend:
    """Eager PyTorch; reduced precision through autocast, optional channels_last memory format."""

    name = "torch"
    image_size = None  # the eager model runs any size

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        self.dtype = autocast_dtype(precision)
        if precision not in RUNTIMES["torch"].precisions:
            raise ResnextError(f"the torch backend runs {', '.join(RUNTIMES['torch'].precisions)}, not {precision}")
        self.device = resolve_device(device)
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        self.num_classes = int(getattr(model, "num_classes", 1000))  # any nn.Module may be run: 1000 is ImageNet's
        self.has_features = hasattr(model, "forward_features")
        self.metadata: dict[str, Any] = {}

    @torch.inference_mode()
    def __call__(self, batch: Tensor) -> Tensor:
        batch = batch.to(self.device, memory_format=self.memory_format, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.model(batch).float().cpu()

    def features(self, batch: Tensor) -> Tensor:
        if not self.has_features:
            raise ResnextError(f"{type(self.model).__name__} has no forward_features: it cannot give embeddings")
        return torch_features(self.model, batch, self.device, self.dtype, self.memory_format)

    def expect(self, images: int) -> None:
        pass  # nothing to prepare
