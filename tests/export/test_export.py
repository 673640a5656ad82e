"""Export: every CPU format exports, reloads in its own runtime and matches PyTorch; int8 on a trained model.

Reloads use the runtimes directly (onnxruntime.InferenceSession, openvino.Core, torch.jit.load,
torch.export.load) as independent references, not only the package's backends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import load_labelled, make_image_folder, tiny_classes, train_tiny

from resnext.cli import main
from resnext.errors import ResnextError
from resnext.export.config import parse_batch_range
from resnext.export.driver import ExportConfig, export_model
from resnext.model.factory import create_model
from resnext.runtime.hardware import native_precisions

CLASSES = tiny_classes(4)  # the shared tiny dataset's classes, in label order
IMAGE_SIZE = 32  # crop fed to the model (eval_preset resizes to 64 first)

FP32_TOL = 1e-4


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``resnext_test`` trained on 4 generated classes; its checkpoint; labelled train/val folders."""
    root = tmp_path_factory.mktemp("tiny")
    train_dir = make_image_folder(root / "train", per_class=40, seed=0)
    val_dir = make_image_folder(root / "val", per_class=25, seed=1)
    model = train_tiny(train_dir, image_size=IMAGE_SIZE)
    checkpoint = root / "tiny.pth"
    torch.save(model.state_dict(), checkpoint)
    val_x, val_y = load_labelled(val_dir, IMAGE_SIZE)
    with torch.no_grad():
        accuracy = float((model(val_x).argmax(-1) == val_y).float().mean())
    assert accuracy >= 0.8, f"the tiny model did not learn ({accuracy:.2f}): int8 agreement would mean little"
    return {
        "model": model,
        "checkpoint": str(checkpoint),
        "train": str(train_dir),
        "val": str(val_dir),
        "val_x": val_x,
        "val_y": val_y,
        "root": root,
    }


def _config(trained: dict, fmt: str, output: Path, **kwargs) -> ExportConfig:
    return ExportConfig(
        fmt, str(output), arch="resnext_test", weights=trained["checkpoint"], image_size=IMAGE_SIZE, **kwargs
    )


def _reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) for n in (1, 7)]


def test_parse_batch_range():
    assert parse_batch_range("1:256") == (1, 256)
    assert parse_batch_range("8") == (8, 8)
    for bad in ("0:4", "9:3", "a:b", "1:2:3"):
        with pytest.raises(ResnextError):
            parse_batch_range(bad)


def test_onnx_fp32_dynamic_batch_matches_pytorch(trained, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    result = export_model(_config(trained, "onnx", path))
    assert [p.limit is not None and p.max_abs_diff <= p.limit for p in result.parity] == [True] * 3
    assert any("inline" in n for n in result.notes)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["resnext"])
    assert meta["arch"] == "resnext_test" and meta["num_classes"] == len(CLASSES) and meta["image_size"] == IMAGE_SIZE

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in _inputs() + [trained["val_x"][:5]]:  # batch 1 and 7 in the same session, and real images
        out = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
        assert out.shape == (x.shape[0], len(CLASSES))
        assert (out - _reference(trained["model"], x)).abs().max() <= FP32_TOL


def test_torch_export_program_matches_pytorch(trained, tmp_path):
    path = tmp_path / "tiny.pt2"
    export_model(_config(trained, "export", path))
    module = torch.export.load(str(path)).module()
    for x in _inputs():
        assert (module(x) - _reference(trained["model"], x)).abs().max() <= FP32_TOL


def test_torchscript_traced_frozen_matches_pytorch(trained, tmp_path):
    path = tmp_path / "tiny.ts"
    export_model(_config(trained, "torchscript", path))
    module = torch.jit.load(str(path))
    assert "prim::GetAttr" not in str(module.graph)  # frozen: parameters inlined as constants
    with torch.no_grad():
        for x in _inputs():
            assert (module(x) - _reference(trained["model"], x)).abs().max() <= FP32_TOL


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_ir_matches_pytorch(trained, tmp_path, precision):
    ov = pytest.importorskip("openvino")
    path = tmp_path / f"tiny-{precision}.xml"
    result = export_model(_config(trained, "openvino", path, precision=precision, eval_dir=trained["val"]))
    assert path.with_suffix(".bin").is_file()
    # bf16 where the CPU has it (resnext.runtime.hardware: AVX512_BF16/AMX, unless masked); elsewhere OpenVINO runs f32
    hint = "bf16" if precision == "bf16" and "bf16" in native_precisions() else "f32"
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    # Ask for the value, never its printed form: OpenVINO 2026 prints bf16 as "<Type: 'bfloat16'>".
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    for x in _inputs() + [trained["val_x"]]:
        out = torch.from_numpy(compiled(x.numpy())[0])
        ref = _reference(trained["model"], x)
        if precision == "fp32" or ran != "bf16":  # CPUs without bf16 run f32 (the export notes it)
            assert (out - ref).abs().max() <= FP32_TOL
        else:
            assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.97
    if precision == "bf16":
        assert result.parity[-1].top1_agreement >= 0.97 and result.accuracy is not None


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_static_quantization_agrees_with_fp32(trained, tmp_path, fmt):
    pytest.importorskip("onnxruntime")
    if fmt == "openvino":
        pytest.importorskip("openvino")
    path = tmp_path / ("tiny-int8.onnx" if fmt == "onnx" else "tiny-int8.xml")
    result = export_model(
        _config(
            trained,
            fmt,
            path,
            precision="int8",
            calibration_dir=trained["train"],
            eval_dir=trained["val"],
            min_agreement=0.99,
        )
    )
    real = result.parity[-1]
    assert real.count == len(trained["val_y"]) and real.top1_agreement >= 0.99
    assert set(result.accuracy) == {"fp32", "int8"}
    assert abs(result.accuracy["int8"] - result.accuracy["fp32"]) <= 0.01 + 1e-9
    fp32_size = sum(p.numel() * 4 for p in trained["model"].parameters())
    assert sum(Path(f).stat().st_size for f in result.files) < 0.4 * fp32_size  # weights really are int8


def test_cli_export_prints_parity_and_json(trained, tmp_path, capsys):
    path = tmp_path / "cli.onnx"
    args = [
        "export",
        "--format",
        "onnx",
        "--arch",
        "resnext_test",
        "--weights",
        trained["checkpoint"],
        "--image-size",
        str(IMAGE_SIZE),
        "--batch-size-range",
        "1:16",
        "--output",
        str(path),
        "--json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metadata"]["batch_range"] == [1, 16] and len(report["parity"]) == 3
    assert all(p["max_abs_diff"] <= p["limit"] for p in report["parity"])


def test_wrong_architecture_checkpoint_fails_in_one_line(trained, tmp_path, capsys):
    args = [
        "export",
        "--format",
        "onnx",
        "--arch",
        "resnet50",
        "--weights",
        trained["checkpoint"],
        "--output",
        str(tmp_path / "x.onnx"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a resnet50 checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "torchscript", "--precision", "int8"], "supports --precision fp32"),
        (["--format", "onnx", "--precision", "int8"], "needs --calibration-dir"),
        (["--format", "onnx", "--batch-size-range", "4:2"], "--batch-size-range"),
        (["--format", "onnx", "--opset", "13"], "opset 13 is too old"),
    ],
)
def test_bad_export_options_fail_in_one_line(tmp_path, capsys, args, message):
    assert (
        main(["export", "--arch", "resnext_test", "--image-size", "32", "--output", str(tmp_path / "m.onnx"), *args])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no staging folder left behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_tensorrt_on_cpu_machine_says_so_in_one_line(tmp_path, capsys):
    args = ["export", "--format", "tensorrt", "--arch", "resnext_test", "--output", str(tmp_path / "m.engine")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT needs an NVIDIA GPU" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")
def test_tensorrt_fp16_engine_matches_pytorch(tmp_path):
    pytest.importorskip("tensorrt")
    from resnext.runtime.backends import TensorRTBackend

    model = create_model("resnext_test").eval()
    path = tmp_path / "m.engine"
    result = export_model(
        ExportConfig("tensorrt", str(path), arch="resnext_test", weights="random", image_size=64, batch_range=(1, 8)),
        model=model,
    )
    assert result.precision == "fp16"
    engine = TensorRTBackend(path)
    for n in (1, 7, 11):  # 11 > max batch 8: split by the backend
        x = torch.randn(n, 3, 64, 64)
        ref = _reference(model, x)
        assert (engine(x) - ref).abs().max() <= 0.02 * ref.abs().max()


def test_calibration_batch_is_capped_and_spread_over_the_classes(tmp_path) -> None:
    """What int8 export and the int8 benchmark rows calibrate on: at most calibration_count images, every class."""
    from resnext.export.driver import calibration_batch

    root = make_image_folder(tmp_path / "calib", num_classes=4, per_class=5, size=40)
    config = ExportConfig("onnx", "x.onnx", image_size=32, calibration_dir=str(root), calibration_count=4)
    batch = calibration_batch(config, num_classes=4)
    assert batch is not None and batch.shape == (4, 3, 32, 32)
    assert calibration_batch(ExportConfig("onnx", "x.onnx"), num_classes=4) is None
    full = calibration_batch(ExportConfig("onnx", "x.onnx", image_size=32, calibration_dir=str(root)), num_classes=4)
    assert full is not None and full.shape[0] == 20
    # spread over the folder, not its first four: the first and the last image are both in
    assert all(any(torch.equal(b, full[i]) for b in batch) for i in (0, 19))
