"""The runtime registry: every way this package can run a model, in one table.

Each :class:`Runtime` names the file suffixes it reads, the precisions it runs, the export format (and so the
writer) that produces its files, and the package that runs it; its backend class goes by the same name. CLI
choices, export formats, benchmark rows, file-type inference and "install this extra" errors all derive from
:data:`RUNTIMES`.

A backend maps a normalised float batch ``[N, 3, S, S]`` to float32 CPU logits ``[N, C]``. Backends other than
``torch`` live in :mod:`resnext.backends` and are imported by name only when built, so optional runtimes are never
imported by ``import resnext``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from .errors import ResnextError
from .util import autocast_dtype, resolve_device

#: Key under which exported files store their JSON metadata (ONNX metadata_props, OpenVINO rt_info, the extra
#: file of TorchScript / torch.export archives, the sidecar ``<engine>.json`` of a TensorRT engine).
METADATA_KEY = "resnext"
METADATA_FILE = "resnext.json"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class Backend(Protocol):
    num_classes: int

    def __call__(self, batch: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Runtime:
    """One runtime: what files and precisions it takes, the export format that writes them, what installs it.

    Naming conventions keep the table to one line a runtime: the backend class is the one whose ``name`` is the
    runtime's (``TorchBackend`` here, the others in ``resnext.backends.BACKENDS``), the writer of an export format
    is ``resnext.export_writers.write_<format>``, and the pip extra that installs a third-party runtime is named
    after the export format it runs.
    """

    name: str
    suffixes: tuple[str, ...]  # files it reads (lower case); empty for the in-process torch model
    precisions: tuple[str, ...]  # precisions it runs; the first is the default
    export_format: str | None = None  # `resnext export --format` value that writes its files
    module: str | None = None  # import name of the third-party runtime, None when PyTorch runs it
    exact: bool = False  # fp32 output equals eager PyTorch within 1e-4 (candidates for --backend auto)
    gpu_only: bool = False

    @property
    def extra(self) -> str | None:
        """The pip extra that installs :attr:`module`."""
        return self.export_format if self.module else None

    @property
    def writer(self) -> str | None:
        """``"module:function"`` of the writer in resnext.export_writers that produces its files."""
        return f"resnext.export_writers:write_{self.export_format}" if self.export_format else None

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

    def backend_class(self) -> Any:
        if self.name == "torch":
            return TorchBackend
        return importlib.import_module("resnext.backends").BACKENDS[self.name]  # by name: it sits above this module


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        # name, file suffixes, precisions (the default first), export format, third-party module
        Runtime("torch", (), ("fp32", "bf16", "fp16"), exact=True),
        Runtime("onnxruntime", (".onnx",), ("fp32", "int8"), "onnx", "onnxruntime", exact=True),
        Runtime("openvino", (".xml",), ("fp32", "bf16", "int8"), "openvino", "openvino", exact=True),
        Runtime("torchscript", (".ts", ".torchscript"), ("fp32",), "torchscript"),
        Runtime("torch-export", (".pt2",), ("fp32",), "export"),
        Runtime("tensorrt", (".engine", ".plan"), ("fp16", "fp32"), "tensorrt", "tensorrt", gpu_only=True),
    )
}
#: ``--backend auto``: the fastest exact runtime installed, exported once and cached (see resnext.auto)
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


class TorchBackend:
    """Eager PyTorch; reduced precision through autocast, optional channels_last memory format."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        channels_last: bool = False,
        **_: Any,
    ) -> None:
        self.dtype = autocast_dtype(precision)
        if precision not in RUNTIMES["torch"].precisions:
            raise ResnextError(f"the torch backend runs {', '.join(RUNTIMES['torch'].precisions)}, not {precision}")
        self.device = resolve_device(device)
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        self.num_classes = int(getattr(model, "num_classes", 1000))

    @torch.inference_mode()
    def __call__(self, batch: Tensor) -> Tensor:
        batch = batch.to(self.device, memory_format=self.memory_format, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.model(batch).float().cpu()


def create_backend(
    name: str | None = None,
    *,
    model: torch.nn.Module | None = None,
    model_file: str | Path | None = None,
    device: str = "auto",
    precision: str | None = None,
    channels_last: bool = False,
    **options: Any,
) -> Backend:
    """Build a backend by name; with ``name=None`` the runtime is inferred from ``model_file`` (or torch).

    ``model`` is what the torch backend runs; ``model_file`` is the exported file every other runtime runs.
    ``name="auto"`` (:data:`AUTO`): the runtime of ``model_file`` when one is given, else :mod:`resnext.auto`
    picks the fastest exact runtime installed for ``model`` (``options["source"]``: its ModelSource).
    """
    if name == AUTO:
        if model_file is None:  # imported by name: resnext.auto sits above this module (it exports)
            auto = importlib.import_module("resnext.auto")
            return auto.auto_backend(model, device=device, precision=precision, channels_last=channels_last, **options)
        name = None
    if name is None:
        name = runtime_for_file(model_file).name if model_file is not None else "torch"
    runtime = get_runtime(name)
    if runtime.name == "torch":
        if model is None:
            raise ResnextError("the torch backend needs a model (weights), not --model-file")
        return TorchBackend(model, device=device, precision=precision or "fp32", channels_last=channels_last)
    if model_file is None:
        raise ResnextError(f"the {name} backend needs --model-file (an exported model; see `resnext export`)")
    return runtime.backend_class()(model_file, device=device, precision=precision, **options)


def run_merged(backend: Backend, batches: Sequence[Any]) -> list[Any]:
    """Several requests' batches (numpy ``[n_i, 3, S, S]``) as one backend call; each request's logits back, in
    order. Triton's dynamic batcher hands a model all the requests it merged: this is what makes that pay."""
    import numpy as np

    sizes = np.cumsum([b.shape[0] for b in batches])[:-1]
    merged = np.concatenate(batches).astype(np.float32, copy=False)
    return np.split(backend(torch.from_numpy(merged)).numpy(), sizes)
