"""Writers from a PyTorch model to each export format's files (ONNX, int8 QDQ ONNX, OpenVINO IR, torch.export,
TorchScript, TensorRT). :data:`resnext.runtime.table.RUNTIMES` names them; :func:`resnext.export.driver.write_model`
calls them and :func:`resnext.export.driver.export_model` checks what they wrote.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ResnextError
from ..runtime.backends import require_tensorrt
from ..runtime.table import INPUT_NAME, METADATA_FILE, METADATA_KEY, OUTPUT_NAME, require
from .config import INLINE_LIMIT_BYTES, ExportConfig

logger = logging.getLogger("resnext.export.driver")


def _example(config: ExportConfig) -> tuple[Tensor, dict[str, Any] | None]:
    """Example input and dynamic-shape spec. The example batch is 2 where allowed: exporters specialise 0/1."""
    low, high = config.batch_range
    size = config.size
    if low == high:
        return torch.randn(low, 3, size, size), None
    batch = torch.export.Dim("batch", min=low, max=high)
    return torch.randn(min(max(2, low), high), 3, size, size), {"x": {0: batch}}


class WithFeatures(torch.nn.Module):
    """``x -> (logits, pooled features)``: what files exported with ``features=True`` compute."""

    def __init__(self, model: Any) -> None:  # a registry ResNet: forward_features/forward_head/get_classifier
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model.get_classifier()(features), features


# ---------------------------------------------------------------------------------------------------------------
# Writers


def write_onnx(model: torch.nn.Module, path: Path, config: ExportConfig, metadata: dict[str, Any]) -> list[Path]:
    """fp32 ONNX, named ``input``/``logits``, dynamic batch axis; returns the files written."""
    require("onnx", "onnx")
    require("onnxscript", "onnx")
    import onnx

    if config.opset < 17:
        raise ResnextError(f"ONNX opset {config.opset} is too old: use 17 or newer")
    example, dynamic = _example(config)
    external = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > INLINE_LIMIT_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        # Exported in memory and saved once with its metadata: writing the file and then reloading it to add
        # the metadata cost ~5 s of the ~40 s a ResNeXt101 export takes (benchmarks/RESULTS.md, cold start).
        program = torch.onnx.export(
            model,
            (example,),
            None,
            input_names=[INPUT_NAME],
            output_names=metadata.get("outputs", [OUTPUT_NAME]),
            dynamic_shapes=dynamic,
            opset_version=config.opset,
            dynamo=True,
            verbose=False,
        )
        assert program is not None
        program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
        program.model.producer_name = "resnext"
        program.save(str(path), external_data=external)
    onnx.checker.check_model(str(path), full_check=True)
    return [p for p in (path, path.with_name(path.name + ".data")) if p.is_file()]


def _set_onnx_metadata(path: Path, metadata: dict[str, Any], external: bool = False) -> None:
    import onnx

    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in [*kept, (METADATA_KEY, json.dumps(metadata))]:
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "resnext"
    onnx.save(proto, str(path), save_as_external_data=external, location=path.name + ".data")


class _Calibration:
    """ONNX Runtime calibration reader over preprocessed images (``onnxruntime.quantization`` protocol)."""

    def __init__(self, images: Tensor, batch_size: int = 8) -> None:
        self.batches = iter([images[i : i + batch_size].numpy() for i in range(0, images.shape[0], batch_size)])

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def quantize_onnx(fp32_path: Path, path: Path, calibration: Tensor, metadata: dict[str, Any]) -> list[Path]:
    """Static int8 post-training quantization of an fp32 ONNX file (QDQ, per-channel weights)."""
    require("onnxruntime", "onnx")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(path),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    _set_onnx_metadata(path, metadata)
    return [path]


def write_openvino(onnx_path: Path, path: Path, metadata: dict[str, Any]) -> list[Path]:
    """OpenVINO IR from an (fp32 or QDQ int8) ONNX file; weights kept in fp32 (no silent fp16 compression)."""
    ov = require("openvino", "openvino")
    if path.suffix != ".xml":
        raise ResnextError(f"an OpenVINO IR is an .xml file (plus its .bin); got --output {path}")
    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(json.dumps(metadata), METADATA_KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return [path, path.with_suffix(".bin")]


def write_export(model: torch.nn.Module, path: Path, config: ExportConfig, metadata: dict[str, Any]) -> list[Path]:
    """``torch.export`` program (``.pt2``) with a dynamic batch dimension bounded by the batch range."""
    example, dynamic = _example(config)
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {METADATA_FILE: json.dumps(metadata)}
    _save_through_python(lambda f: torch.export.save(program, f, extra_files=extra), path)
    return [path]


def _save_through_python(save: Callable[[io.BytesIO], None], path: Path) -> None:
    """Serialise into memory, then write the bytes from Python: PyTorch's C++ file writer aborts the whole
    process (exit 134, no cleanup) on a full disk, where Python raises an ``OSError`` we can report."""
    buffer = io.BytesIO()
    save(buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def write_torchscript(model: torch.nn.Module, path: Path, config: ExportConfig, metadata: dict[str, Any]) -> list[Path]:
    """Traced and frozen TorchScript (deprecated upstream; kept for Triton's ``pytorch_libtorch`` backend)."""
    example, _ = _example(config)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's own deprecation notices: documented in the module docstring
        scripted = torch.jit.freeze(torch.jit.trace(model, example))
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {METADATA_FILE: json.dumps(metadata)}
        _save_through_python(lambda f: torch.jit.save(scripted, f, _extra_files=extra), path)
    return [path]


def write_tensorrt(
    onnx_path: Path, path: Path, config: ExportConfig, precision: str, metadata: dict[str, Any]
) -> list[Path]:
    """Serialized TensorRT engine with one optimisation profile (min, opt = max, max) over the batch range."""
    trt = require_tensorrt()
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ResnextError(f"TensorRT could not parse the ONNX export: {errors[:300]}")
    builder_config = builder.create_builder_config()
    if precision == "fp16":
        builder_config.set_flag(trt.BuilderFlag.FP16)
    low, high = config.batch_range
    shape = (3, config.size, config.size)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (low, *shape), (high, *shape), (high, *shape))
    builder_config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, builder_config)
    if engine is None:
        raise ResnextError("TensorRT failed to build the engine (see the TensorRT messages above)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(engine))
    sidecar = path.with_suffix(path.suffix + ".json")
    sidecar.write_text(json.dumps(metadata, indent=1))
    return [path, sidecar]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' progress prints, INFO logs and warnings out of the command's output."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "onnxruntime", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
