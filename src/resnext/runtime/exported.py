"""What every exported-model backend shares: :class:`ExportedBackend` (loading steps, input checks, splitting
batches the file cannot take at once, the optional ``features`` output) and :class:`LoadedFile`, what a runtime
reads from its file. The runtimes themselves are in :mod:`resnext.runtime.backends`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ResnextError
from .table import RUNTIMES

#: Name of the optional second output (pooled penultimate features) of files exported with ``features=True``.
FEATURES_NAME = "features"


def _existing(model_file: str | os.PathLike) -> Path:
    path = Path(model_file)
    if not path.is_file():
        raise ResnextError(f"model file not found: {path}")
    return path


@dataclass(frozen=True)
class LoadedFile:
    """What a runtime reads from an exported file: the fixed input and output sizes, and the stored metadata."""

    image_size: int
    num_classes: int
    metadata: dict[str, Any]
    max_batch: int | None = None  # the largest batch the file takes; larger ones are split
    precision: str | None = None  # the precision the runtime runs it in; None: the one stored in the file


class ExportedBackend:
    """Shared part: the loading steps every file goes through, input validation, batching, metadata.

    Subclasses read the file in :meth:`_load`; the constructor around it imports the runtime first (so a missing
    package is the error even for a missing file), checks the file exists and refuses a precision the file does
    not store.
    """

    name = "exported"  # each subclass: the name of its runtime in RUNTIMES
    #: whether the file fixes its precision (the runtime's precisions in RUNTIMES), so that a request for another
    #: one is refused; False where the backend resolves the request itself
    precision_in_file = True

    def __init__(
        self,
        model_file: str | os.PathLike,
        *,
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
    ) -> None:
        runtime = RUNTIMES[self.name].import_runtime()
        self.path = _existing(model_file)
        loaded = self._load(runtime, device, precision, threads)
        if self.precision_in_file:
            _check_precision(self.name, precision, loaded.metadata, allowed=RUNTIMES[self.name].precisions)
        self.image_size = int(loaded.image_size)
        self.num_classes = int(loaded.num_classes)
        self.max_batch = loaded.max_batch
        self.metadata = loaded.metadata
        self.precision: str = loaded.precision or loaded.metadata.get("precision") or "fp32"

    def _load(self, runtime: Any, device: str, precision: str | None, threads: int | None) -> LoadedFile:
        """Read ``self.path`` with ``runtime`` (its third-party module, None for PyTorch); keep what ``run`` needs."""
        raise NotImplementedError  # pragma: no cover - overridden

    def check_input(self, batch: Tensor) -> None:
        s = self.image_size
        if batch.dim() != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != (s, s):
            raise ResnextError(
                f"{self.path.name} expects a batch of shape [N, 3, {s}, {s}], got {list(batch.shape)}: preprocess "
                f"with eval_preset({s}) or re-export with --image-size {batch.shape[-1] if batch.dim() == 4 else '...'}"
            )

    #: CPU runtimes take host memory; the TensorRT backend keeps a CUDA batch where it is.
    host_input = True
    #: where the input batch goes (the TorchScript backend sets its own)
    device = torch.device("cpu")

    def expect(self, images: int) -> None:
        pass  # the file is loaded: nothing to prepare

    def __call__(self, batch: Tensor) -> Tensor:
        return self._split(batch, self.run)

    @property
    def has_features(self) -> bool:
        """True for files exported with a second output of pooled features (``ExportConfig(features=True)``)."""
        return FEATURES_NAME in self.metadata.get("outputs", ())

    def features(self, batch: Tensor) -> Tensor:
        """Pooled penultimate features ``[N, D]``, for files exported with a ``features`` output."""
        if not self.has_features:
            raise ResnextError(
                f"{self.path.name} has no '{FEATURES_NAME}' output: re-export it with features "
                "(resnext.export.driver.ExportConfig(features=True)) or embed with the torch backend"
            )
        return self._split(batch, self.run_features)

    def _split(self, batch: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        self.check_input(batch)
        batch = batch.detach().float()
        if self.host_input:
            batch = batch.cpu().contiguous()
        step = self.max_batch or batch.shape[0]
        outputs = [fn(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
        return torch.cat(outputs).float().cpu()

    def run(self, batch: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def run_features(self, batch: Tensor) -> Tensor:
        raise ResnextError(f"the {self.name} backend cannot read a '{FEATURES_NAME}' output")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, image_size={self.image_size}, num_classes={self.num_classes})"
        )


def static_dim(value: Any, what: str, path: Path) -> int:
    """A fixed input or output size read from an exported file; a dynamic one was not written by us."""
    if isinstance(value, int) and value > 0:
        return value
    raise ResnextError(
        f"{path}: the {what} dimension is not fixed ({value!r}); was this file written by `resnext export`?"
    )


def _check_precision(backend: str, requested: str | None, metadata: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """The precision of these files is fixed at export time; refuse a request the file cannot honour."""
    stored = metadata.get("precision", "fp32")
    if requested in (None, "fp32", stored):
        return
    raise ResnextError(
        f"the {backend} backend runs the precision stored in the model file ({stored}), not {requested}; "
        f"export with --precision {requested} (supported here: {', '.join(allowed)})"
    )
