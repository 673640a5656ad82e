"""What an export is asked to do and what it reports: :class:`ExportConfig`, :class:`Parity`, :class:`ExportResult`.

Shared by the writers (:mod:`resnext.export.writers`) and the export driver with its parity checks
(:mod:`resnext.export.driver`), so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResnextError

ONNX_OPSET = 18
INLINE_LIMIT_BYTES = int(1.8 * 2**30)


@dataclass
class ExportConfig:
    format: str
    output: str
    arch: str | None = None  # default: the checkpoint's own architecture, else resnext101_32x4d
    weights: Any = "DEFAULT"  # a model source (see resnext.model.sources): weights name, file, URL, or "random"/None
    batch_range: tuple[int, int] = (1, 256)
    precision: str | None = None  # None = the format's default (FORMATS[format][0])
    calibration_dir: str | None = None
    eval_dir: str | None = None  # images for the int8/bf16 agreement report; default: the calibration folder
    image_size: int | None = None  # default: the checkpoint's training size, else 224
    calibration_count: int = 256  # at most this many calibration images are used
    tolerance: float = 1e-4  # fp32 parity: max abs diff <= tolerance * max(1, max |logit|)
    min_agreement: float | None = None  # reduced precision: fail below this top-1 agreement with fp32
    opset: int = ONNX_OPSET
    threads: int | None = None
    features: bool = False  # also expose the pooled penultimate features as a second output named "features"
    random_batches: tuple[int, ...] = (7, 1)  # parity: random batches checked besides the real images

    @property
    def size(self) -> int:
        """The input size, once resolved (``export_model`` fills ``image_size`` from the source)."""
        return self.image_size or 224


@dataclass
class Parity:
    """Comparison of the exported file with eager fp32 PyTorch on one set of inputs."""

    inputs: str
    count: int
    max_abs_diff: float
    limit: float | None  # the tolerance it had to meet (fp32), None when only reported
    top1_agreement: float

    def line(self) -> str:
        check = f" (limit {self.limit:.2e})" if self.limit is not None else ""
        return (
            f"{self.inputs}: {self.count} images, max abs diff {self.max_abs_diff:.2e}{check}, "
            f"top-1 agreement {100 * self.top1_agreement:.1f}%"
        )


@dataclass
class ExportResult:
    format: str
    precision: str
    path: str
    files: list[str]
    metadata: dict[str, Any]
    parity: list[Parity] = field(default_factory=list)
    accuracy: dict[str, float] | None = None  # {"fp32": .., "<precision>": ..} on a labelled folder
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        sizes = ", ".join(f"{f} ({Path(f).stat().st_size / 2**20:.1f} MiB)" for f in self.files)  # as given
        lines = [f"wrote {self.format} {self.precision}: {sizes}"]
        lines += [f"  parity vs PyTorch fp32, {p.line()}" for p in self.parity]
        if self.accuracy:
            lines.append("  labelled accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in self.accuracy.items()))
        lines += [f"  note: {n}" for n in self.notes]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_batch_range(text: str) -> tuple[int, int]:
    """``"1:256"`` -> ``(1, 256)``; ``"8"`` -> ``(8, 8)`` (a static batch)."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise ResnextError(f"--batch-size-range must look like MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return parts[0], parts[1]
