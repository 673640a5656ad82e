"""Exported-model runtimes behind ``Predictor``: registration, input checks, batching, the classify path."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
import torch

from resnext.errors import ResnextError
from resnext.export import writers as export_writers
from resnext.export.driver import ExportConfig, export_model
from resnext.images import sample_images
from resnext.inference.predict import Predictor
from resnext.model.factory import create_model
from resnext.runtime.backend import Backend, TorchBackend
from resnext.runtime.backends import BACKENDS, create_backend
from resnext.runtime.table import EXPORT_FORMATS, RUNTIMES

SIZE = 32
EXTENSIONS = {
    "onnxruntime": ("onnx", ".onnx"),
    "openvino": ("openvino", ".xml"),
    "torch-export": ("export", ".pt2"),
    "torchscript": ("torchscript", ".ts"),
}
NEEDS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """resnext_test (random weights) exported at 32 px with a batch range of 1..4 in every CPU format."""
    torch.manual_seed(0)
    model = create_model("resnext_test").eval()
    root = tmp_path_factory.mktemp("backends")
    files = {}
    for backend, (fmt, ext) in EXTENSIONS.items():
        if backend in NEEDS:
            pytest.importorskip(NEEDS[backend])
        files[backend] = root / f"m{ext}"
        export_model(
            ExportConfig(
                fmt, str(files[backend]), arch="resnext_test", weights="random", image_size=SIZE, batch_range=(1, 4)
            ),
            model=model,
        )
    return {"model": model, "files": files, "root": root}


def test_every_runtime_in_the_table_has_a_backend_class_a_writer_and_an_extra():
    assert {"torch", "onnxruntime", "openvino", "tensorrt", "torchscript", "torch-export"} == set(RUNTIMES)
    assert set(BACKENDS) | {TorchBackend.name} == set(RUNTIMES)  # the backends' own table covers the data table
    assert all(cls.name == name for name, cls in BACKENDS.items())
    for fmt in EXPORT_FORMATS:  # every export format has its writer (export.write_model calls them explicitly)
        assert callable(getattr(export_writers, f"write_{fmt}"))
    extras = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    for runtime in RUNTIMES.values():
        assert (runtime.module is None) == (runtime.extra is None)
        assert runtime.extra is None or runtime.extra in extras["optional-dependencies"]


def _check_contract(backend: Backend, model: torch.nn.Module, size: int) -> None:
    """The Backend protocol, kept: what it runs, its metadata and image size, logits and (when it has them)
    features equal to the eager model's."""
    assert backend.name in RUNTIMES and backend.device == torch.device("cpu")
    assert backend.precision == "fp32" and isinstance(backend.metadata, dict)
    assert backend.image_size in (None, size)
    backend.expect(3)  # a job size is only a hint
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        logits, features = model(x), model.forward_head(model.forward_features(x), pre_logits=True)
    assert (backend(x) - logits).abs().max() <= 1e-4 * max(1.0, float(logits.abs().max()))
    if backend.has_features:
        assert (backend.features(x) - features).abs().max() <= 1e-4 * max(1.0, float(features.abs().max()))
    else:
        with pytest.raises(ResnextError, match="features"):
            backend.features(x)


@pytest.mark.parametrize("backend", ["torch", *EXTENSIONS])
def test_every_backend_keeps_the_backend_contract(exported, backend):
    if backend == "torch":
        runtime = create_backend("torch", model=exported["model"], device="cpu")
        assert runtime.has_features and runtime.metadata == {} and runtime.image_size is None
    else:
        runtime = create_backend(backend, model_file=str(exported["files"][backend]))
        assert runtime.metadata["image_size"] == SIZE and not runtime.has_features  # exported without features
    _check_contract(runtime, exported["model"], SIZE)


@pytest.mark.parametrize("backend", list(EXTENSIONS))
def test_backend_matches_model_and_splits_batches_beyond_range(exported, backend):
    runtime = create_backend(backend, model_file=str(exported["files"][backend]))
    assert runtime.num_classes == 1000 and runtime.image_size == SIZE
    x = torch.randn(7, 3, SIZE, SIZE)  # 7 > the exported maximum of 4 for torch.export
    with torch.no_grad():
        ref = exported["model"](x)
    out = runtime(x)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (7, 1000)
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("backend", list(EXTENSIONS))
def test_wrong_image_size_is_a_clear_error(exported, backend):
    runtime = create_backend(backend, model_file=str(exported["files"][backend]))
    for bad in (torch.randn(2, 3, 48, 48), torch.randn(3, SIZE, SIZE), torch.randn(1, 1, SIZE, SIZE)):
        with pytest.raises(ResnextError, match=r"expects a batch of shape \[N, 3, 32, 32\]"):
            runtime(bad)


def test_missing_or_foreign_model_file(tmp_path, exported):
    with pytest.raises(ResnextError, match="model file not found"):
        create_backend("onnxruntime", model_file=str(tmp_path / "nope.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(ResnextError, match="not a valid ONNX model"):
        create_backend("onnxruntime", model_file=str(junk))
    with pytest.raises(ResnextError, match="no resnext.json"):
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(tmp_path / "bare.ts"))
        create_backend("torchscript", model_file=str(tmp_path / "bare.ts"))
    with pytest.raises(ResnextError, match="needs --model-file"):
        create_backend("onnxruntime")


def test_precision_fixed_in_file_is_enforced(exported):
    with pytest.raises(ResnextError, match="precision stored in the model file"):
        create_backend("onnxruntime", model_file=str(exported["files"]["onnxruntime"]), precision="bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_tensorrt_backend_on_cpu_says_so(exported):
    with pytest.raises(ResnextError, match="TensorRT needs an NVIDIA GPU"):
        create_backend("tensorrt", model_file=str(exported["files"]["onnxruntime"]))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_predictor_from_pretrained_runs_exported_model_like_torch(tmp_path, backend):
    """The classify path: same preprocessing and labels as the torch backend, same answers."""
    pytest.importorskip(NEEDS[backend])
    torch.manual_seed(1)
    model = create_model("resnext_test").eval()
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    fmt, ext = EXTENSIONS[backend]
    path = tmp_path / f"m{ext}"
    export_model(ExportConfig(fmt, str(path), arch="resnext_test", weights=str(weights), batch_range=(1, 8)))

    reference = Predictor.from_pretrained("resnext_test", weights=str(weights), device="cpu")
    exported = Predictor.from_pretrained("resnext_test", backend=backend, model_file=str(path))
    samples = sample_images()
    batch = torch.stack([reference.preprocess(s) for s in samples])
    assert (exported.predict(batch) - reference.predict(batch)).abs().max() <= 1e-5
    ours, theirs = exported.classify(samples, topk=3), reference.classify(samples, topk=3)
    assert [[p.index for p in row] for row in ours] == [[p.index for p in row] for row in theirs]
    assert ours[0][0].label == theirs[0][0].label and isinstance(ours[0][0].label, str)
    assert Path(path).is_file()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_predictor_preprocesses_at_the_exported_input_size(tmp_path, backend):
    """A model exported at 64 px gets 64 px crops without being told (a 224 px batch would be refused)."""
    pytest.importorskip(NEEDS[backend])
    torch.manual_seed(2)
    weights = tmp_path / "w.pth"
    torch.save(create_model("resnext_test").eval().state_dict(), weights)
    fmt, ext = EXTENSIONS[backend]
    path = tmp_path / f"m64{ext}"
    export_model(
        ExportConfig(fmt, str(path), arch="resnext_test", weights=str(weights), batch_range=(1, 4), image_size=64)
    )
    exported = Predictor.from_pretrained("resnext_test", backend=backend, model_file=str(path))
    reference = Predictor.from_pretrained("resnext_test", weights=str(weights), device="cpu", image_size=64)
    assert exported.transforms.crop_size == reference.transforms.crop_size == 64
    samples = sample_images()
    assert [[p.index for p in row] for row in exported.classify(samples, topk=2)] == [
        [p.index for p in row] for row in reference.classify(samples, topk=2)
    ]
