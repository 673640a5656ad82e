"""``resnext serve`` on a real tritonserver (PyTriton): parity with in-process inference, the image model against
``resnext classify``, dynamic batching under concurrent load, refused requests, and a clean stop.

One server (module-scoped) serves every test here; it binds 127.0.0.1 on free ports and is stopped at the end,
after which no tritonserver or Python-backend stub may remain.
"""

from __future__ import annotations

import io
import json
import os
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pytriton")
tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

from _serve_util import alive, free_ports, triton_processes  # noqa: E402
from conftest import SAMPLES, small_model_flags  # noqa: E402

from resnext.cli import main  # noqa: E402
from resnext.inference.predict import Predictor  # noqa: E402
from resnext.serve.client import TritonClient  # noqa: E402
from resnext.serve.server import ResnextServer, ServeConfig  # noqa: E402
from resnext.serve.tritonserver import processes_started_from  # noqa: E402

SIZE = 64
MAX_BATCH = 8
MAX_PIXELS = 600 * 600  # the samples are 512x512 at most; the refused image is 700x700
MAX_IMAGE_BYTES = 2 * 2**20


AT_START: dict[str, int] = {}  # successful inferences per model when start() returned (before any client)


def _success_count(server, model: str) -> int:
    """Inferences Triton counted for ``model`` (its Prometheus metrics; PyTriton restricts the statistics API)."""
    return int(_metrics(server, model)[1])


@pytest.fixture(scope="module")
def served(small_checkpoint):
    """(server, in-process predictor of the same checkpoint); stopped at the end, with no process left over."""
    predictor = Predictor.from_pretrained(
        "resnext_test", weights=str(small_checkpoint), backend="torch", image_size=SIZE
    )
    http, grpc, metrics = free_ports(3)
    config = ServeConfig(
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        max_batch_size=MAX_BATCH,
        max_queue_delay_us=20_000,
        max_pixels=MAX_PIXELS,
        max_image_bytes=MAX_IMAGE_BYTES,
        exit_timeout_s=5,
    )
    server = ResnextServer(predictor, config)
    try:
        server.start()
        AT_START.update({m: _success_count(server, m) for m in (server.name, server.image_name)})
        workspace = server._workspace
        started = list(triton_processes(os.getpid()))
        assert started, "tritonserver should run as a child of this process"
        yield server, predictor
        started += triton_processes(os.getpid())  # the stubs start as models load: list them again at the end
    finally:
        server.stop()
    assert not alive(started), f"processes left after stop: {triton_processes(os.getpid())}"
    assert not triton_processes(os.getpid())
    assert not processes_started_from(f"{workspace}{os.sep}"), "a stub outlived its server (orphaned)"


def tensor_input(module, array: np.ndarray, name: str = "input", datatype: str = "FP32"):
    item = module.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def image_input(module, data: list[bytes]):
    return tensor_input(module, np.array([[d] for d in data], dtype=np.object_), "image", "BYTES")


def reference(predictor: Predictor, x: np.ndarray) -> np.ndarray:
    return predictor.backend(torch.from_numpy(x)).numpy()


def test_endpoints_bind_loopback_and_health(served):
    server, _ = served
    for url in (server.http_url, server.grpc_url):
        assert url.startswith("127.0.0.1:")
    with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{server.image_name}/ready", timeout=10) as r:
        assert r.status == 200
    lines = "\n".join(server.describe())
    assert "curl" in lines and server.image_name in lines and server.metrics_url in lines


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_logits_equal_in_process(served, protocol):
    server, predictor = served
    module = tritonclient_http if protocol == "http" else tritonclient_grpc
    x = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE), dtype=np.float32)
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    try:
        logits = client.infer(server.name, [tensor_input(module, x)]).as_numpy("logits")
        # Triton's classification extension: "score:index:name" from the labels wired to the output
        top = client.infer(
            server.name, [tensor_input(module, x)], outputs=[module.InferRequestedOutput("logits", class_count=3)]
        ).as_numpy("logits")
    finally:
        client.close()
    expected = reference(predictor, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    for row, ref in zip(top, expected):
        entries = [e.decode().split(":", 2) for e in row]
        assert [int(i) for _, i, _ in entries] == list(np.argsort(-ref)[:3])
        assert [name for _, _, name in entries] == [predictor.categories[int(i)] for _, i, _ in entries]
        np.testing.assert_allclose([float(s) for s, _, _ in entries], np.sort(ref)[::-1][:3], rtol=1e-4, atol=1e-4)


def test_image_model_matches_classify(served, small_checkpoint, capsys):
    server, _ = served
    flags = small_model_flags(small_checkpoint, "--backend", "torch", "--image-size", str(SIZE), "--topk", "5")
    assert main(["classify", *map(str, SAMPLES), *flags, "--json", "--workers", "0"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        assert main(["client", *map(str, SAMPLES), "--url", url, "--protocol", protocol, "--topk", "5", "--json"]) == 0
        got = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
        assert len(got) == len(expected) == len(SAMPLES)
        for g, e in zip(got, expected):
            assert [p["index"] for p in g["predictions"]] == [p["index"] for p in e["predictions"]]
            assert [p["label"] for p in g["predictions"]] == [p["label"] for p in e["predictions"]]
            np.testing.assert_allclose(
                [p["probability"] for p in g["predictions"]], [p["probability"] for p in e["predictions"]], atol=1e-5
            )


def test_tensor_model_through_client(served):
    server, predictor = served
    with TritonClient(server.grpc_url, "grpc") as client:
        results = list(client.classify([str(SAMPLES[0])], model=server.name, topk=3))
    expected = predictor.classify([str(SAMPLES[0])], topk=3)[0]
    assert [p.index for p in results[0].predictions] == [p.index for p in expected]
    assert [p.label for p in results[0].predictions] == [p.label for p in expected]


def _metrics(server, model: str) -> tuple[float, float]:
    from resnext.bench.serving import scrape

    return scrape(server.metrics_url, model)


def test_concurrent_requests_are_batched(served):
    server, predictor = served
    inputs = np.random.default_rng(2).standard_normal((64, 1, 3, SIZE, SIZE), dtype=np.float32)
    executions0, inferences0 = _metrics(server, server.name)

    def send(i: int) -> np.ndarray:
        client = tritonclient_http.InferenceServerClient(server.http_url)
        try:
            return client.infer(server.name, [tensor_input(tritonclient_http, inputs[i])]).as_numpy("logits")
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(64)))
    expected = reference(predictor, inputs[:, 0])
    np.testing.assert_allclose(np.concatenate(results), expected, rtol=1e-4, atol=1e-4)
    executions, inferences = _metrics(server, server.name)
    assert inferences - inferences0 == 64
    assert executions - executions0 < 64, "Triton should have merged concurrent requests into batches > 1"


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bad_requests(module, server):
    jpeg = SAMPLES[0].read_bytes()
    rng = np.random.default_rng(3)
    return [
        (
            "wrong shape",
            server.name,
            [tensor_input(module, rng.standard_normal((1, 3, 32, 32), dtype=np.float32))],
            r"shape",
        ),
        (
            "wrong dtype",
            server.name,
            [tensor_input(module, np.zeros((1, 3, SIZE, SIZE)), datatype="FP64")],
            r"data-type|datatype|FP64",
        ),
        (
            "batch over max",
            server.name,
            [tensor_input(module, np.zeros((MAX_BATCH + 1, 3, SIZE, SIZE), np.float32))],
            r"batch",
        ),
        ("garbage bytes", server.image_name, [image_input(module, [b"this is not an image at all"])], r"not an image"),
        ("truncated JPEG", server.image_name, [image_input(module, [jpeg[: len(jpeg) // 2]])], r"truncated|corrupt"),
        ("too many pixels", server.image_name, [image_input(module, [_png(700, 700)])], r"exceeds the limit"),
        (
            "body over the limit",
            server.image_name,
            [image_input(module, [b"\xff" * (MAX_IMAGE_BYTES + 1)])],
            r"more than the limit|larger than the limit",
        ),
    ]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_are_refused_and_server_keeps_serving(served, protocol):
    from resnext.serve.client import server_message

    server, predictor = served
    module = tritonclient_http if protocol == "http" else tritonclient_grpc
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    good = np.random.default_rng(4).standard_normal((1, 3, SIZE, SIZE), dtype=np.float32)
    try:
        for what, model, inputs, pattern in _bad_requests(module, server):
            with pytest.raises(Exception) as info:  # tritonclient's InferenceServerException
                client.infer(model, inputs)
            message = server_message(info.value)
            assert re.search(pattern, message, re.I), f"{what}: {message}"
            assert "\n" not in message
            logits = client.infer(server.name, [tensor_input(module, good)]).as_numpy("logits")
            np.testing.assert_allclose(logits, reference(predictor, good), rtol=1e-4, atol=1e-4)
        ok = client.infer(server.image_name, [image_input(module, [SAMPLES[1].read_bytes()])])
        assert ok.as_numpy("labels").shape == (1, 5)
    finally:
        client.close()


def test_client_reports_refused_image(served, tmp_path, capsys):
    server, _ = served
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(SAMPLES[0].read_bytes()[:500])
    assert main(["client", str(bad), str(SAMPLES[0]), "--url", server.http_url]) == 1
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "truncated" in captured.err.lower()
    assert SAMPLES[0].name in captured.out


def test_benchmark_serving_measures_a_running_server(served, small_checkpoint):
    """The load test's mechanics (not its speed): requests counted, batches read from the metrics, a reference."""
    from resnext.bench.serving import ServingConfig, run_serving_benchmark
    from resnext.bulk.engine import ModelSpec

    server, _ = served
    result = run_serving_benchmark(
        ServingConfig(
            url=server.http_url,
            metrics_url=server.metrics_url,
            concurrency=[4],
            duration=1.5,
            warmup=0.5,
            spec=ModelSpec(arch="resnext_test", weights=str(small_checkpoint), backend="torch", image_size=SIZE),
        )
    )
    (level,) = result.levels
    assert level.requests > 0 and level.errors == 0 and level.executions > 0
    assert level.inferences >= level.executions and level.reference > 0 and level.reference_batch >= 1
    assert level.p50_ms <= level.p95_ms <= level.p99_ms
    assert re.search(r"^\|\s+4 \|", result.table(), re.M)
    assert result.first_request_ms > 0 and result.first_request_ratio == result.first_request_ms / level.p50_ms
    assert re.search(
        r"^first request after ready: [\d.]+ ms, x[\d.]+ the steady p50 at concurrency 4", result.table(), re.M
    )
    assert result.to_dict()["first_request_ratio"] == result.first_request_ratio


def test_each_model_is_warmed_before_start_returns(served):
    """The first client does not pay the backend's first call: start() sent one request through Triton to each
    model (counted by Triton's statistics) before it returned."""
    server, _ = served
    assert {server.name: 1, server.image_name: 1} == AT_START
    assert set(server.warmup_ms) == set(AT_START) and all(ms > 0 for ms in server.warmup_ms.values())
    assert "warmed:" in "\n".join(server.describe())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_undecodable_image_is_a_client_error_naming_its_index(served, protocol):
    """HTTP 400 / gRPC INVALID_ARGUMENT, one line naming the image by its place in the request; no traceback,
    no path of the server's installation."""
    server, _ = served
    module = tritonclient_http if protocol == "http" else tritonclient_grpc
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    try:
        with pytest.raises(Exception) as info:
            client.infer(server.image_name, [image_input(module, [SAMPLES[0].read_bytes(), b"not an image"])])
    finally:
        client.close()
    status, message = str(info.value.status()), info.value.message()
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (status, message)
    assert "image 1 of the request (2 images)" in message and "not an image" in message
    assert "\n" not in message.strip() and "Traceback" not in message
    assert not re.search(r"/(usr|root|home|tmp|opt)/|site-packages|\.py\b", message), message


def _request_bytes(server, data: list[bytes]) -> str:
    client = tritonclient_http.InferenceServerClient(server.http_url, network_timeout=120)
    try:
        client.infer(server.image_name, [image_input(tritonclient_http, data)])
        return "accepted"
    except Exception as exc:  # noqa: BLE001 - tritonclient's InferenceServerException
        return f"{exc.status()} {exc.message()}"
    finally:
        client.close()


def _server_rss_mb(server) -> float:
    """Resident memory of tritonserver and its Python-backend stubs (children of this process), in MiB."""
    total = 0
    for pid in triton_processes(os.getpid()):
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return total / 1024


def test_refused_requests_give_their_memory_back(served):
    """Requests over the per-request byte limit are refused in Triton's stub before they are copied, and
    undecodable images are answered without PyTriton's error path, which kept every failed request's shared
    memory (~3x its size per request, for good)."""
    server, _ = served
    limit = server.config.max_request_bytes
    assert limit == MAX_IMAGE_BYTES  # default: one image's limit for the whole request
    over = [b"\xff" * (limit // 2 + 1)] * 2  # each image under the per-image limit, together over the request's
    undecodable = [b"\xff" * (limit - 1)]
    assert _request_bytes(server, over).startswith("400 request holds")
    assert _request_bytes(server, undecodable).startswith("400 image 0 of the request")
    before = _server_rss_mb(server)
    for _ in range(8):
        assert _request_bytes(server, over).startswith("400 ")
        assert _request_bytes(server, undecodable).startswith("400 ")
    grown = _server_rss_mb(server) - before
    sent = 8 * (sum(map(len, over)) + len(undecodable[0])) / 2**20
    # PyTriton's error path kept ~3x each failed request (~96 MiB here); allocator noise is a few MiB
    assert grown < 16, f"tritonserver and stubs grew {grown:.0f} MiB over {sent:.0f} MiB of refused requests"
