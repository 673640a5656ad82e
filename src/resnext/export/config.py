"""What an export is asked to do and what it reports: :class:`ExportConfig`, :class:`Parity`, :class:`ExportResult`.

Shared by the writers (:mod:`resnext.export.writers`) and the export driver with its parity checks
(:mod:`resnext.export.driver`), so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResnextError
from ..model.sources import arch_option, weights_option
from ..options import (
    Precision,
    at_least,
    between,
    calibration_dir_option,
    check_options,
    greater_than,
    image_size_option,
    option,
    precision_option,
)
from ..runtime.table import EXPORT_FORMATS

ONNX_OPSET = 18
INLINE_LIMIT_BYTES = int(1.8 * 2**30)


@dataclass
class ExportConfig:
    format: str = option(
        MISSING,
        choices=tuple(EXPORT_FORMATS),
        help="onnx, export (.pt2), torchscript, openvino (.xml IR), tensorrt (.engine, GPU only)",
    )
    output: str = option(MISSING, metavar="PATH", help="file to write")
    arch: str | None = arch_option()  # default: the checkpoint's own architecture, else resnext101_32x4d
    weights: Any = weights_option()  # a model source (see resnext.model.sources): name, file, URL, "random"/None
    image_size: int | None = image_size_option()  # default: the checkpoint's training size, else 224
    calibration_dir: str | None = calibration_dir_option()
    precision: Precision | None = precision_option(  # None = the format's default (FORMATS[format][0])
        help="numeric precision (default: fp32; fp16 for tensorrt)"
    )
    eval_dir: str | None = option(  # images for the int8/bf16 agreement report; default: the calibration folder
        None, metavar="DIR", help="images for the agreement/accuracy report (default: calibration dir)"
    )
    calibration_count: int = option(256, check=at_least(1), help="max calibration images")
    opset: int = option(ONNX_OPSET, help="ONNX opset, >= 17")
    tolerance: float = option(  # fp32 parity: max abs diff <= tolerance * max(1, max |logit|)
        1e-4, check=greater_than(0.0), help="fp32 parity: max abs diff <= TOL x max(1, max |logit|)"
    )
    min_agreement: float | None = option(  # reduced precision: fail below this top-1 agreement with fp32
        None,
        check=between(0.0, 1.0),
        metavar="FRACTION",
        help="bf16/fp16/int8: fail when top-1 agreement with fp32 is below this (e.g. 0.99)",
    )
    features: bool = option(  # also expose the pooled penultimate features as a second output named "features"
        False,
        help="also output the pooled penultimate features as a second output named 'features' (for resnext embed)",
    )
    batch_range: tuple[int, int] = (1, 256)
    threads: int | None = None
    random_batches: tuple[int, ...] = (7, 1)  # parity: random batches checked besides the real images

    def __post_init__(self) -> None:
        check_options(self)

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
