"""``resnext triton-repo``: repositories whose configs parse with Triton's own protobuf schema and name files that
exist, and a Python-backend repository loaded and answered by the real tritonserver binary."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("tritonclient.grpc")

from _serve_util import alive, free_ports, triton_processes  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from resnext.cli import main  # noqa: E402
from resnext.errors import ResnextError  # noqa: E402
from resnext.model.sources import load_source  # noqa: E402
from resnext.serve.repository import RepoConfig, parse_config, validate_repository, write_repository  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def source(small_checkpoint):
    return load_source(str(small_checkpoint), arch="resnext_test")


def parsed(path) -> model_config_pb2.ModelConfig:
    """Parse independently of the code under test: Triton's schema, straight from the file."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def check_common(root, name: str, cfg, source, max_batch: int) -> None:
    assert cfg.name == name and cfg.max_batch_size == max_batch
    assert list(cfg.input[0].dims) == [3, SIZE, SIZE] and cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(cfg.output[0].dims) == [source.num_classes]
    labels = (root / name / cfg.output[0].label_filename).read_text().splitlines()
    assert labels == source.categories
    assert cfg.HasField("dynamic_batching") and cfg.instance_group[0].count >= 1


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_repositories_parse_and_name_existing_files(fmt, source, tmp_path):
    result = write_repository(
        RepoConfig(
            str(tmp_path),
            fmt,
            name="clf",
            image_size=SIZE,
            max_batch_size=16,
            preferred_batch_sizes=[4, 8],
            instances=2,
        ),
        source,
    )
    cfg = parsed(tmp_path / "clf" / "config.pbtxt")
    check_common(tmp_path, "clf", cfg, source, 16)
    assert (tmp_path / "clf" / "1" / cfg.default_model_filename).is_file()
    assert cfg.backend == {"onnx": "onnxruntime", "torchscript": "pytorch"}[fmt]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8] and cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    if fmt == "torchscript":  # TorchScript has no tensor names: Triton's <name>__<index> convention
        assert cfg.input[0].name == "input__0" and cfg.output[0].name == "logits__0"
    assert "clf/config.pbtxt" in result.files
    assert set(validate_repository(tmp_path)) == {"clf"}


def test_tensorrt_repository_without_gpu(source, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("builds a real engine on GPU machines")
    assert (
        main(
            [
                "triton-repo",
                str(tmp_path),
                "--format",
                "tensorrt",
                "--arch",
                "resnext_test",
                "--weights",
                "random",
                "--image-size",
                str(SIZE),
                "--max-batch-size",
                "32",
                "--instances",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    cfg = parsed(tmp_path / "resnext_test" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.max_batch_size == 32 and list(cfg.instance_group[0].profile) == ["0"]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "resnext_test" / cfg.output[0].label_filename).is_file()
    # the engine is built on the GPU host with the repository's batch range as its profile
    assert "--format tensorrt" in out and "--batch-size-range 1:32" in out and "model.plan" in out
    with pytest.raises(ResnextError, match="model.plan"):
        validate_repository(tmp_path)
    assert validate_repository(tmp_path, allow_missing_engine=True)


def test_bad_configs_are_refused(tmp_path, source):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nmax_batch_size: lots\n')
    with pytest.raises(ResnextError, match="not a valid Triton model config"):
        parse_config(tmp_path / "m" / "config.pbtxt")
    (tmp_path / "m" / "config.pbtxt").write_text(
        'name: "m"\nbackend: "onnxruntime"\ndefault_model_filename: "x.onnx"\n'
    )
    with pytest.raises(ResnextError, match="x.onnx"):
        validate_repository(tmp_path)
    with pytest.raises(ResnextError, match="--kind cpu"):
        write_repository(RepoConfig(str(tmp_path), "tensorrt", kind="cpu"), source)
    with pytest.raises(ResnextError, match="already exists"):
        write_repository(RepoConfig(str(tmp_path), "tensorrt", name="m", image_size=SIZE), source)


@pytest.mark.slow
def test_python_repository_served_by_bundled_tritonserver(source, tmp_path):
    pytest.importorskip("pytriton")
    pytest.importorskip("onnxruntime")
    import tritonclient.http as httpclient

    from resnext.serve.tritonserver import TritonProcess

    write_repository(RepoConfig(str(tmp_path), "python", name="clf", image_size=SIZE, max_batch_size=8), source)
    cfg = parsed(tmp_path / "clf" / "config.pbtxt")
    check_common(tmp_path, "clf", cfg, source, 8)
    assert cfg.backend == "python" and (tmp_path / "clf" / "1" / "model.onnx").is_file()
    http, grpc, metrics = free_ports(3)
    x = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE), dtype=np.float32)
    server = TritonProcess(tmp_path, http_port=http, grpc_port=grpc, metrics_port=metrics, exit_timeout_s=5)
    children: list[int] = []
    try:
        server.start(timeout=240)
        children = list(triton_processes(os.getpid()))
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            item = httpclient.InferInput("input", list(x.shape), "FP32")
            item.set_data_from_numpy(x)
            logits = client.infer("clf", [item]).as_numpy("logits")
            top = client.infer("clf", [item], outputs=[httpclient.InferRequestedOutput("logits", class_count=1)])
        finally:
            client.close()
    finally:
        server.stop()
    with torch.no_grad():
        expected = source.model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    names = [row[0].decode().split(":", 2)[2] for row in top.as_numpy("logits")]
    assert names == [source.categories[i] for i in expected.argmax(1)]
    assert children and not alive(children)


@pytest.mark.parametrize("name", ["{outside}", "..", "../../escaped", ".", "a/b", "", ".hidden", "two words", "x\ny"])
def test_model_name_outside_one_folder_is_refused_before_anything_is_written(tmp_path, capsys, name):
    """``--name`` is one path component (Triton's model-name rules): an absolute path, ``..`` or a nested path
    would write outside the repository (``--force`` even replaced a folder there)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("user data")
    name = name.format(outside=outside)
    repo = tmp_path / "deep" / "er" / "repo"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = ["triton-repo", str(repo), "--format", "onnx", "--arch", "resnext_test", "--weights", "random"]
    assert main([*args, "--image-size", str(SIZE), "--name", name, "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--name" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert (outside / "keep.txt").read_text() == "user data"
