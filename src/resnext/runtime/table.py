"""The runtime table: every way this package can run a model, one line of data each.

Each :class:`Runtime` names the file suffixes it reads, the precisions it runs, the export format that produces its
files, the pip extra that installs it and the third-party module it imports. CLI choices, export formats, benchmark
rows, file-type inference and "install this extra" errors all derive from :data:`RUNTIMES`.

This module is data: it imports nothing of this package above it. The code that runs a runtime picks it by name from
its own explicit table (:data:`resnext.runtime.backends.BACKENDS`, the writers in
:func:`resnext.export.driver.write_model`, ``--backend auto`` in :mod:`resnext.inference.auto`), so optional runtimes
are never imported by ``import resnext``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ResnextError

#: Key under which exported files store their JSON metadata (ONNX metadata_props, OpenVINO rt_info, the extra
#: file of TorchScript / torch.export archives, the sidecar ``<engine>.json`` of a TensorRT engine).
METADATA_KEY = "resnext"
METADATA_FILE = "resnext.json"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Runtime:
    """One runtime: what files and precisions it takes, the export format that writes them, what installs it."""

    name: str
    suffixes: tuple[str, ...]  # files it reads (lower case); empty for the in-process torch model
    precisions: tuple[str, ...]  # precisions it runs; the first is the default
    export_format: str | None = None  # `resnext export --format` value that writes its files
    module: str | None = None  # import name of the third-party runtime, None when PyTorch runs it
    extra: str | None = None  # the pip extra that installs `module`
    exact: bool = False  # fp32 output equals eager PyTorch within 1e-4 (candidates for --backend auto)
    gpu_only: bool = False

    def installed(self) -> bool:
        """True when the third-party package can be imported (and, for GPU runtimes, a GPU is present)."""
        if self.gpu_only and not torch.cuda.is_available():
            return False
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def missing_reason(self) -> str:
        if self.gpu_only and not torch.cuda.is_available():
            return "TensorRT needs an NVIDIA GPU with CUDA, and this machine has none"
        return f"the {self.name} runtime needs the {self.module} package: pip install 'resnext[{self.extra}]'"

    def import_runtime(self) -> Any:
        """The third-party runtime module (None when PyTorch runs it), or one error that says what is missing."""
        if not self.installed():
            raise ResnextError(self.missing_reason())
        return importlib.import_module(self.module) if self.module else None


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        # name, file suffixes, precisions (the default first), export format, third-party module, pip extra
        Runtime("torch", (), ("fp32", "bf16", "fp16"), exact=True),
        Runtime("onnxruntime", (".onnx",), ("fp32", "int8"), "onnx", "onnxruntime", "onnx", exact=True),
        Runtime("openvino", (".xml",), ("fp32", "bf16", "int8"), "openvino", "openvino", "openvino", exact=True),
        Runtime("torchscript", (".ts", ".torchscript"), ("fp32",), "torchscript"),
        Runtime("torch-export", (".pt2",), ("fp32",), "export"),
        Runtime("tensorrt", (".engine", ".plan"), ("fp16", "fp32"), "tensorrt", "tensorrt", "tensorrt", gpu_only=True),
    )
}
#: ``--backend auto``: the fastest exact runtime installed, exported once and cached (see resnext.inference.auto)
AUTO = "auto"
#: `resnext export --format` value -> runtime
EXPORT_FORMATS: dict[str, Runtime] = {r.export_format: r for r in RUNTIMES.values() if r.export_format}


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise ResnextError(f"unknown backend {name!r}; choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def runtime_for_file(path: str | Path) -> Runtime:
    """The runtime that reads ``path``, from its suffix; a missing file or an unknown suffix is an error."""
    path = Path(path)
    if not path.is_file():
        raise ResnextError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    for runtime in RUNTIMES.values():
        if suffix in runtime.suffixes:
            return runtime
    known = ", ".join(s for r in RUNTIMES.values() for s in r.suffixes)
    raise ResnextError(f"cannot tell which runtime reads {path.name}; known suffixes: {known} (or pass --backend)")


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or fail with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ResnextError(f"this needs the {module} package: pip install 'resnext[{extra}]'") from exc
