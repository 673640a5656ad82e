"""Runtimes for exported models (ONNX Runtime, OpenVINO, TensorRT, TorchScript and torch.export programs), and
:func:`create_backend`, which builds any backend by its runtime's name.

Each backend here loads a file written by :mod:`resnext.export.driver` and maps a normalised float batch ``[N, 3, S,
S]`` to float32 CPU logits ``[N, C]``, exactly like :class:`resnext.runtime.backend.TorchBackend` (both are a
:class:`resnext.runtime.backend.Backend`). :data:`resnext.runtime.table.RUNTIMES` describes each runtime and
:data:`BACKENDS` maps its name to the class that runs its files. The runtimes themselves are optional dependencies,
imported only when a backend is built.

What they share (loading steps, the input shape check that turns a wrong image size into one clear sentence instead
of a runtime's internal message, batch splitting) is :class:`resnext.runtime.exported.ExportedBackend`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ResnextError, first_line
from ..options import option
from .backend import Backend, TorchBackend
from .exported import FEATURES_NAME, ExportedBackend, LoadedFile, static_dim
from .hardware import native_precisions
from .table import (
    AUTO,
    INPUT_NAME,
    METADATA_FILE,
    METADATA_KEY,
    OUTPUT_NAME,
    RUNTIMES,
    get_runtime,
    runtime_for_file,
)

logger = logging.getLogger(__name__)


def backend_option(
    default: str = AUTO, *, choices: tuple[str, ...] = (AUTO, *RUNTIMES), help: str | None = None
) -> Any:
    """The ``--backend`` field of a config: a runtime of :data:`RUNTIMES`, or ``auto``."""
    return option(
        default,
        choices=choices,
        help=help
        or "inference runtime: auto = the runtime of --model-file (from its suffix), else the fastest exact runtime "
        "installed (ONNX Runtime, else OpenVINO, else torch), exported once into $TORCH_HOME/resnext and reused; with "
        "--precision bf16|int8 the approximate runtimes (agreement is reported)",
    )


def model_file_option() -> Any:
    """The ``--model-file`` field of a config: an exported model, run by the runtime its suffix names."""
    return option(None, metavar="PATH", help="exported model (see `resnext export`)")


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime


class OnnxRuntimeBackend(ExportedBackend):
    """An ``.onnx`` file (fp32 or QDQ int8) on ONNX Runtime's CPU (or CUDA) execution provider."""

    name = "onnxruntime"

    def _load(self, ort: Any, device: str, precision: str | None, threads: int | None) -> LoadedFile:
        path = self.path
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise ResnextError("--device cuda was requested but this onnxruntime build has no CUDA execution provider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid files
            raise ResnextError(f"{path} is not a valid ONNX model ({first_line(exc)})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        return LoadedFile(
            image_size=static_dim(inp.shape[-1], "image size", path),
            num_classes=static_dim(out.shape[-1], "class", path),
            metadata=json.loads(meta) if meta else {},
        )

    def run(self, batch: Tensor) -> Tensor:
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: batch.numpy()})[0])

    def run_features(self, batch: Tensor) -> Tensor:
        return torch.from_numpy(self.session.run([FEATURES_NAME], {self.input_name: batch.numpy()})[0])


# ---------------------------------------------------------------------------------------------------------------
# OpenVINO

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoBackend(ExportedBackend):
    """OpenVINO IR (``.xml`` + ``.bin``) or an ``.onnx`` file on OpenVINO's CPU plugin.

    The inference precision is a run-time choice in OpenVINO (the IR keeps fp32 weights): ``precision`` is
    ``"fp32"`` or ``"bf16"`` and is always set explicitly, because OpenVINO silently picks bf16 on CPUs that have
    it. int8 comes from the file (quantize-dequantize pairs from ``--precision int8`` export), not from here.
    """

    name = "openvino"
    precision_in_file = False  # a run-time choice here, resolved in _load

    def _load(self, ov: Any, device: str, precision: str | None, threads: int | None) -> LoadedFile:
        path = self.path
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # openvino raises RuntimeError with a multi-line C++ trace
            raise ResnextError(f"{path} is not a readable OpenVINO/ONNX model ({first_line(exc)})") from exc
        metadata: dict[str, Any] = {}
        if model.has_rt_info(METADATA_KEY):
            metadata = json.loads(model.get_rt_info(METADATA_KEY).astype(str))
        if precision in (None, "int8") or precision == metadata.get("precision"):
            precision = metadata.get("precision", "fp32")
        if precision == "int8":
            precision = "fp32"  # the int8 parts are explicit in the graph; the rest runs in fp32
        if precision not in _OV_PRECISION:
            raise ResnextError(
                f"the openvino backend runs fp32 or bf16 (int8 comes from the exported file), not {precision}"
            )
        ov_device = "CPU" if device in ("auto", "cpu") else device.upper()
        hint = _OV_PRECISION[precision]
        if ov_device == "CPU" and precision == "bf16" and "bf16" not in native_precisions("cpu"):
            # f32 is what OpenVINO runs on such a CPU anyway; asked for bf16 where the feature mask hides it, its own
            # detection would disagree with the kernels ONEDNN_MAX_CPU_ISA allows and fail to compile
            hint = "f32"
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(model, ov_device, config)
        except Exception as exc:
            raise ResnextError(f"OpenVINO could not compile {path} for {ov_device}: {first_line(exc)}") from exc
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        name = ran.get_type_name() if hasattr(ran, "get_type_name") else str(ran)
        ran_precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(name, name)
        if precision == "bf16" and ran_precision != "bf16":
            logger.warning("this CPU has no native bf16 support: OpenVINO runs %s in %s", path.name, ran_precision)
        self.request = self.compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        classes = model.outputs[0].get_partial_shape()[-1]
        return LoadedFile(
            image_size=static_dim(shape[3].get_length() if shape[3].is_static else None, "image size", path),
            num_classes=static_dim(classes.get_length() if classes.is_static else None, "class", path),
            metadata=metadata,
            precision=ran_precision,  # what OpenVINO actually runs: "fp32", "bf16" or "fp16"
        )

    def run(self, batch: Tensor) -> Tensor:
        result = self.request.infer({0: batch.numpy()})
        return torch.from_numpy(result[self.compiled.outputs[0]].copy())

    def run_features(self, batch: Tensor) -> Tensor:
        result = self.request.infer({0: batch.numpy()})
        return torch.from_numpy(result[self.compiled.output(FEATURES_NAME)].copy())


# ---------------------------------------------------------------------------------------------------------------
# TorchScript and torch.export archives (run by PyTorch itself)


def _archive_metadata(path: Path, loader: Callable[..., Any]) -> tuple[Any, dict[str, Any]]:
    extra = {METADATA_FILE: ""}
    try:
        obj = loader(str(path), extra)
    except Exception as exc:  # torch raises RuntimeError/zipfile errors for foreign files
        raise ResnextError(f"{path} is not a readable archive for this backend ({first_line(exc)})") from exc
    raw = extra[METADATA_FILE]
    if not raw:
        raise ResnextError(f"{path} has no {METADATA_FILE} entry: export it with `resnext export`")
    return obj, json.loads(raw.decode() if isinstance(raw, bytes) else raw)


class TorchScriptBackend(ExportedBackend):
    """A frozen TorchScript file (``.ts``/``.pt``), as used by Triton's ``pytorch_libtorch`` backend."""

    name = "torchscript"

    def _load(self, runtime: Any, device: str, precision: str | None, threads: int | None) -> LoadedFile:
        self.device = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation: kept for Triton, see export.py
            module, metadata = _archive_metadata(
                self.path, lambda f, extra: torch.jit.load(f, map_location=self.device, _extra_files=extra)
            )
        self.module = module.eval()
        return LoadedFile(metadata["image_size"], metadata["num_classes"], metadata)

    @torch.inference_mode()
    def run(self, batch: Tensor) -> Tensor:
        return _output(self.module(batch.to(self.device)), 0)

    @torch.inference_mode()
    def run_features(self, batch: Tensor) -> Tensor:
        return _output(self.module(batch.to(self.device)), 1)


class TorchExportBackend(ExportedBackend):
    """A ``torch.export`` program (``.pt2``); its batch range is fixed at export time, larger batches are split."""

    name = "torch-export"

    def _load(self, runtime: Any, device: str, precision: str | None, threads: int | None) -> LoadedFile:
        program, metadata = _archive_metadata(self.path, lambda f, extra: torch.export.load(f, extra_files=extra))
        self.module = program.module()
        max_batch = metadata.get("batch_range", [1, None])[1]
        return LoadedFile(metadata["image_size"], metadata["num_classes"], metadata, max_batch=max_batch)

    @torch.inference_mode()
    def run(self, batch: Tensor) -> Tensor:
        return _output(self.module(batch), 0)

    @torch.inference_mode()
    def run_features(self, batch: Tensor) -> Tensor:
        return _output(self.module(batch), 1)


def _output(out: Any, index: int) -> Tensor:
    """Archives exported with features return ``(logits, features)``; plain ones return the logits."""
    return out[index] if isinstance(out, (tuple, list)) else out


# ---------------------------------------------------------------------------------------------------------------
# TensorRT (GPU only)


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or one clear error on machines without an NVIDIA GPU or the package."""
    return RUNTIMES["tensorrt"].import_runtime()


class TensorRTBackend(ExportedBackend):
    """A serialized TensorRT engine (``.engine``/``.plan``) from ``resnext export --format tensorrt``."""

    name = "tensorrt"
    host_input = False
    precision_in_file = False  # fixed when the engine was built; any request runs it as built

    def _load(self, trt: Any, device: str, precision: str | None, threads: int | None) -> LoadedFile:
        path = self.path
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ResnextError(f"{path} is not a TensorRT engine built by this TensorRT version on this GPU")
        self.context = self.engine.create_execution_context()
        self.input_name = INPUT_NAME
        self.output_name = OUTPUT_NAME
        min_shape, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        out_shape = self.engine.get_tensor_shape(self.output_name)
        self.min_batch = int(min_shape[0])
        self.device = torch.device("cuda")
        sidecar = path.with_suffix(path.suffix + ".json")
        metadata = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        return LoadedFile(int(max_shape[-1]), int(out_shape[-1]), metadata, max_batch=int(max_shape[0]))

    def run(self, batch: Tensor) -> Tensor:
        n = batch.shape[0]
        padded = n < self.min_batch
        x = batch.cuda()
        if padded:  # the optimisation profile starts above n: pad with zeros and drop the extra rows
            x = torch.cat([x, x.new_zeros((self.min_batch - n, *x.shape[1:]))])
        x = x.contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty((x.shape[0], self.num_classes), device="cuda", dtype=torch.float32)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ResnextError(f"TensorRT failed to run {self.path.name} on a batch of {list(batch.shape)}")
        stream.synchronize()
        return out[:n].cpu()


#: runtime name -> the backend class that runs its exported files
BACKENDS: dict[str, type[ExportedBackend]] = {
    cls.name: cls
    for cls in (OnnxRuntimeBackend, OpenVinoBackend, TorchScriptBackend, TorchExportBackend, TensorRTBackend)
}


def create_backend(
    name: str | None = None,
    *,
    model: torch.nn.Module | None = None,
    model_file: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str | None = None,
    channels_last: bool = False,
    threads: int | None = None,
) -> Backend:
    """Build the backend of runtime ``name``; with ``name=None`` (or ``"auto"`` and a ``model_file``) the runtime
    is inferred from ``model_file``'s suffix (torch without one).

    ``model`` is what the torch backend runs (``channels_last`` applies to it); ``model_file`` is the exported file
    every other runtime runs (``threads``: its CPU threads). ``--backend auto`` on a model is
    :func:`resnext.inference.auto.auto_backend`.
    """
    if name in (None, AUTO) and model_file is not None:
        name = runtime_for_file(Path(model_file)).name
    runtime = get_runtime(name or "torch")
    if runtime.name == "torch":
        if model is None:
            raise ResnextError("the torch backend needs a model (weights), not --model-file")
        return TorchBackend(model, device=device, precision=precision or "fp32", channels_last=channels_last)
    if model_file is None:
        raise ResnextError(f"the {runtime.name} backend needs --model-file (an exported model; see `resnext export`)")
    return BACKENDS[runtime.name](model_file, device=device, precision=precision, threads=threads)


def run_merged(backend: Backend, batches: Sequence[Any]) -> list[Any]:
    """Several requests' batches (numpy ``[n_i, 3, S, S]``) as one backend call; each request's logits back, in
    order. Triton's dynamic batcher hands a model all the requests it merged: this is what makes that pay."""
    import numpy as np

    sizes = np.cumsum([b.shape[0] for b in batches])[:-1]
    merged = np.concatenate(batches).astype(np.float32, copy=False)
    return np.split(backend(torch.from_numpy(merged)).numpy(), sizes)
