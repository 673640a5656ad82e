"""``resnext serve``: a real Triton Inference Server (through PyTriton) running a
:class:`~resnext.inference.predict.Predictor`.

Two models are served, each running the predictor's backend:

- ``<arch>``: FP32 ``input [-1, 3, S, S]`` (preprocessed by the client) -> FP32 ``logits [-1, C]``. The class names
  are attached to ``logits`` (``label_filename``), so Triton's classification extension (``class_count`` on the
  output) answers ``"score:index:name"``. Triton's dynamic batcher merges concurrent requests into one call.
- ``<arch>_image``: BYTES ``image [-1, 1]`` (a JPEG/PNG/WebP file as sent by any client) -> ``labels`` (BYTES),
  ``probabilities`` (FP32) and ``indices`` (INT64), all ``[-1, K]``, through the package's one decode
  (:func:`resnext.images.load_image`), the predictor's preset transforms and :func:`resnext.inference.predict.top_k`.
  Each request runs on its own (a request may carry many images), so an undecodable image fails only the
  request that sent it: Triton's Python backend, which PyTriton uses, can only fail a whole execution, and
  requests merged into one execution would fail together. Such a request is a client error (HTTP 400 naming
  the image's index), and one over ``max_request_bytes`` is refused before it is copied
  (:mod:`resnext.serve.triton_proxy`).

Both models are warmed (in-process, then one request through Triton each) before :meth:`ResnextServer.start`
returns.

Shape, dtype and batch-size limits of ``<arch>`` are enforced by Triton before the model sees a request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..download import MAX_IMAGE_BYTES
from ..errors import ResnextError, first_line
from ..images import MAX_IMAGE_PIXELS, load_image, sample_images
from ..inference.predict import Predictor, top_k
from ..options import (
    check_options,
    host_option,
    instances_option,
    max_batch_size_option,
    max_queue_delay_option,
    model_name_option,
    port_option,
    preferred_batch_sizes_option,
    topk_option,
)
from ..runtime.backends import run_merged
from ..runtime.table import INPUT_NAME, OUTPUT_NAME
from . import LABELS_FILE
from .repository import check_batching, check_model_name
from .tritonserver import new_workspace, remove_workspace, require_serving, server_environment

logger = logging.getLogger(__name__)

IMAGE_INPUT, LABELS_OUTPUT, PROBS_OUTPUT, INDEX_OUTPUT = "image", "labels", "probabilities", "indices"


@dataclass
class ServeConfig:
    name: str | None = model_name_option()  # default: the predictor's architecture
    host: str = host_option()
    max_batch_size: int = max_batch_size_option()
    max_queue_delay_us: int = max_queue_delay_option()  # how long the batcher may hold a request for a larger batch
    preferred_batch_sizes: Sequence[int] = preferred_batch_sizes_option()
    instances: int = instances_option()
    topk: int = topk_option()  # classes returned per image by <arch>_image
    http_port: int = port_option(8000)
    grpc_port: int = port_option(8001)
    metrics_port: int = port_option(8002, "Prometheus metrics")
    max_image_bytes: int = MAX_IMAGE_BYTES
    # all images of one <arch>_image request together; refused in Triton's stub before any copy (default: one
    # image's limit, so a request of 64 images cannot hold 64 x 64 MiB)
    max_request_bytes: int | None = None
    max_pixels: int = MAX_IMAGE_PIXELS
    exit_timeout_s: int = 10  # on stop, in-flight requests get this long to finish
    log_file: str | None = None  # Triton's own log; default: a file in the temporary workspace
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_options(self)
        check_batching(self.max_batch_size, self.preferred_batch_sizes)
        check_model_name(self.name)
        if self.max_request_bytes is None:
            self.max_request_bytes = self.max_image_bytes
        if self.max_request_bytes < 1 or self.max_image_bytes < 1:
            raise ResnextError("the image and request byte limits must be at least 1")


class TensorModel:
    """``<arch>``: the requests Triton batched together are concatenated into one backend call."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def __call__(self, requests: list) -> list[dict[str, np.ndarray]]:
        parts = run_merged(self.predictor.backend, [np.asarray(r[INPUT_NAME]) for r in requests])
        return [{OUTPUT_NAME: part} for part in parts]


#: the answer of a request the client must fix (see :mod:`resnext.serve.triton_proxy`, which turns it into
#: Triton's ``INVALID_ARG``, HTTP 400; an exception would be a 500 and leak the request's shared memory)
ERROR_OUTPUT = "__resnext_client_error__"


class ClientError(ResnextError):
    """A request the client must fix (an image that does not decode)."""


class ImageModel:
    """``<arch>_image``: encoded images -> top-k names and probabilities, one request per execution."""

    def __init__(self, predictor: Predictor, config: ServeConfig) -> None:
        self.predictor = predictor
        self.topk = min(config.topk, len(predictor.categories))
        self.max_bytes, self.max_pixels = config.max_image_bytes, config.max_pixels

    def decode(self, item: Any) -> torch.Tensor:
        data = item if isinstance(item, bytes) else bytes(item)
        return self.predictor.transforms(load_image(data, max_pixels=self.max_pixels, max_bytes=self.max_bytes))

    def _decode_all(self, items: np.ndarray) -> list[torch.Tensor]:
        tensors = []
        for index, item in enumerate(items):
            try:
                tensors.append(self.decode(item))
            except ResnextError as exc:  # names the item by its place in the request: bytes have no file name
                raise ClientError(f"image {index} of the request ({len(items)} images): {exc}") from exc
        return tensors

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        batch = torch.stack(self._decode_all(images.reshape(-1)))
        predictions = top_k(self.predictor.backend(batch), self.topk, self.predictor.categories, from_logits=True)
        labels = np.array([[p.label.encode() for p in row] for row in predictions], dtype=np.object_)
        probs = np.array([[p.probability for p in row] for row in predictions], dtype=np.float32)
        indices = np.array([[p.index for p in row] for row in predictions], dtype=np.int64)
        return {LABELS_OUTPUT: labels, PROBS_OUTPUT: probs, INDEX_OUTPUT: indices}

    def answer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        try:
            return self.run(images)
        except ClientError as exc:
            return {ERROR_OUTPUT: np.array([str(exc).encode()], dtype=np.object_)}

    def __call__(self, requests: list) -> list[dict[str, np.ndarray]]:
        return [self.answer(r[IMAGE_INPUT]) for r in requests]


def _extend_model(model: Any, categories: Sequence[str] | None = None, max_request_bytes: int = 0) -> None:
    """Give the bound PyTriton model :mod:`resnext.serve.triton_proxy` as its ``model.py`` (client errors as
    ``INVALID_ARG``, oversized requests refused in the stub), the request limit as a config parameter, and with
    ``categories`` a ``labels.txt`` wired to its ``logits`` output.

    PyTriton's config generator has no ``label_filename`` and no way to change its proxy model; it loads each
    model through Triton's load API with a JSON config and a file map, so both are extended on this one model
    object (the ``serve`` extra pins PyTriton).
    """
    get_config, get_files = model.get_model_config, model.get_proxy_model_files
    version = f"file:{model.model_version}"

    def config() -> dict:
        cfg = get_config()
        for output in cfg.get("output", []):
            if categories is not None and output.get("name") == OUTPUT_NAME:
                output["label_filename"] = LABELS_FILE
        cfg.setdefault("parameters", {})["max_request_bytes"] = {"string_value": str(max_request_bytes)}
        return cfg

    def files() -> dict[str, bytes]:
        found = get_files()
        found[f"{version}/pytriton_model.py"] = found[f"{version}/model.py"]
        found[f"{version}/model.py"] = Path(__file__).with_name("triton_proxy.py").read_bytes()
        if categories is not None:
            found[f"file:{LABELS_FILE}"] = ("\n".join(categories) + "\n").encode()
        return found

    model.get_model_config = config
    model.get_proxy_model_files = files


class ResnextServer:
    """Triton serving ``predictor``; ``start()``/``stop()`` or a ``with`` block. Binds ``config.host`` only."""

    def __init__(self, predictor: Predictor, config: ServeConfig | None = None) -> None:
        self.predictor = predictor
        self.config = config or ServeConfig()
        self.name = self.config.name or predictor.arch or "resnext"
        self.image_name = f"{self.name}_image"
        # clients take host:port for HTTP and gRPC; Prometheus scrapes a full URL
        host = self.config.host
        self.http_url, self.grpc_url = f"{host}:{self.config.http_port}", f"{host}:{self.config.grpc_port}"
        self.metrics_url = f"http://{host}:{self.config.metrics_port}/metrics"
        self.triton: Any = None
        self._workspace: Path | None = None
        self._stop = threading.Event()
        self.warmup_ms: dict[str, float] = {}  # model -> its warm-up request's latency

    def _triton_config(self) -> Any:
        from pytriton.triton import TritonConfig

        c = self.config
        assert self._workspace is not None
        return TritonConfig(
            http_address=c.host,
            grpc_address=c.host,
            metrics_address=c.host,
            http_port=c.http_port,
            grpc_port=c.grpc_port,
            metrics_port=c.metrics_port,
            exit_timeout_secs=c.exit_timeout_s,
            allow_gpu_metrics=torch.cuda.is_available(),
            log_file=Path(c.log_file or self._workspace / "triton.log"),
            **c.extra,
        )

    def _bind(self, triton: Any) -> None:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

        c, size, classes = self.config, self.predictor.image_size, len(self.predictor.categories)
        batcher = DynamicBatcher(
            max_queue_delay_microseconds=c.max_queue_delay_us,
            preferred_batch_size=list(c.preferred_batch_sizes) or None,
        )
        triton.bind(
            model_name=self.name,
            infer_func=[TensorModel(self.predictor) for _ in range(c.instances)],
            inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=(3, size, size))],
            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(classes,))],
            config=ModelConfig(max_batch_size=c.max_batch_size, batcher=batcher),
        )
        _extend_model(self._bound(triton, self.name), self.predictor.categories)
        topk = min(c.topk, classes)
        triton.bind(
            model_name=self.image_name,
            infer_func=[ImageModel(self.predictor, c) for _ in range(c.instances)],
            inputs=[Tensor(name=IMAGE_INPUT, dtype=np.object_, shape=(1,))],
            outputs=[
                Tensor(name=LABELS_OUTPUT, dtype=np.object_, shape=(topk,)),
                Tensor(name=PROBS_OUTPUT, dtype=np.float32, shape=(topk,)),
                Tensor(name=INDEX_OUTPUT, dtype=np.int64, shape=(topk,)),
            ],
            # No dynamic batcher: one request per execution, so one bad image cannot fail other clients' requests.
            config=ModelConfig(max_batch_size=c.max_batch_size, batcher=None),
        )
        _extend_model(self._bound(triton, self.image_name), max_request_bytes=c.max_request_bytes or c.max_image_bytes)

    @staticmethod
    def _bound(triton: Any, name: str) -> Any:
        return next(m for m in triton._model_manager.models if m.model_name == name)

    def start(self) -> ResnextServer:
        require_serving()
        from pytriton.triton import Triton

        # A refused request (an undecodable image) is the client's error, reported to it; PyTriton would also log
        # each one's traceback here, which lets any client flood the server's console.
        logging.getLogger("pytriton.proxy.inference").setLevel(logging.ERROR)
        # PyTriton starts tritonserver with a copy of os.environ: the stub must find this interpreter's libpython.
        os.environ["LD_LIBRARY_PATH"] = server_environment()["LD_LIBRARY_PATH"]
        self._workspace = new_workspace("resnext-serve-")
        try:
            self.triton = Triton(config=self._triton_config(), workspace=self._workspace / "pytriton")
            self._bind(self.triton)
            self._warm_in_process()  # before Triton reports ready
            self.triton.run()
            self._warm_up()
        except Exception as exc:
            tail = self.log_tail()
            self.stop()
            if self._stop.is_set():  # SIGINT/SIGTERM while starting (see stop_on_signals): a requested stop
                return self
            if isinstance(exc, ResnextError):
                raise
            raise ResnextError(
                f"Triton failed to start: {first_line(exc)}" + (f"; log: {tail}" if tail else "")
            ) from exc
        return self

    def _warm_in_process(self) -> None:
        """The backend's first calls (allocations, kernel selection, a runtime's lazy compilation), paid before
        Triton starts, so its readiness endpoint never reports a cold model."""
        size = self.predictor.image_size
        TensorModel(self.predictor)([{INPUT_NAME: np.zeros((1, 3, size, size), np.float32)}])
        sample = Path(sample_images()[0]).read_bytes()
        ImageModel(self.predictor, self.config).run(np.array([[sample]], dtype=np.object_))

    def _warm_up(self) -> None:
        """One request to each model through Triton before ``start`` returns (and ``resnext serve`` says it
        serves): the first call of a backend (allocations, kernel selection, a runtime's lazy compilation) and
        the first trip through Triton's stub are paid here, not by the first client."""
        import tritonclient.http as http

        size = self.predictor.image_size
        sample = Path(sample_images()[0]).read_bytes()
        requests = (
            (self.name, INPUT_NAME, np.zeros((1, 3, size, size), np.float32), "FP32"),
            (self.image_name, IMAGE_INPUT, np.array([[sample]], dtype=np.object_), "BYTES"),
        )
        client = http.InferenceServerClient(self.http_url, network_timeout=300.0)
        try:
            for model, name, array, datatype in requests:
                item = http.InferInput(name, list(array.shape), datatype)
                item.set_data_from_numpy(array)
                started = time.perf_counter()
                client.infer(model, [item])
                self.warmup_ms[model] = (time.perf_counter() - started) * 1000
        finally:
            client.close()

    def log_tail(self) -> str:
        folder = self._workspace or Path("/nonexistent")
        path = Path(self.config.log_file) if self.config.log_file else folder / "triton.log"
        try:
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith("E")]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def is_alive(self) -> bool:
        return self.triton is not None and self.triton.is_alive()

    def stop(self) -> None:
        """Stop Triton (in-flight requests finish within ``exit_timeout_s``) and the model handlers."""
        if self.triton is not None:
            triton, self.triton = self.triton, None
            triton.stop()
        if self._workspace is not None:
            remove_workspace(self._workspace)
            self._workspace = None

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[ResnextServer]:
        """SIGINT/SIGTERM ask :meth:`serve_forever` to stop, from here on: around :meth:`start` too, which warms
        the models after Triton already answers, so a stop requested then is a clean stop, not an interruption."""
        previous = {s: signal.signal(s, lambda *_: self._stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def serve_forever(self, poll_s: float = 1.0) -> None:
        """Block until SIGINT/SIGTERM (or Triton dies), then stop cleanly."""
        with self.stop_on_signals():
            try:
                while not self._stop.wait(poll_s):
                    if not self.is_alive():
                        raise ResnextError(f"Triton stopped unexpectedly; log: {self.log_tail()}")
            finally:
                self.stop()

    def describe(self) -> list[str]:
        """Endpoints and a ready-to-paste curl line (the binary-data extension: a JSON header, then the file)."""
        url, size = f"http://{self.http_url}", self.predictor.image_size
        header = (
            '{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","parameters":{"binary_data_size":'
            '\'$((N+4))\'}}],"outputs":[{"name":"labels","parameters":{"binary_data":false}},'
            '{"name":"probabilities","parameters":{"binary_data":false}}]}'
        )
        curl = (
            f'IMG=photo.jpg; N=$(stat -c%s "$IMG"); H=\'{header}\'; {{ printf %s "$H"; printf "$(printf '
            '\'\\\\%03o\' $((N&255)) $((N>>8&255)) $((N>>16&255)) $((N>>24&255)))"; cat "$IMG"; } | curl -s '
            f'-H "Inference-Header-Content-Length: ${{#H}}" --data-binary @- '
            f"{url}/v2/models/{self.image_name}/infer"
        )
        return [
            f"serving {self.name} (input [-1,3,{size},{size}] FP32 -> logits [-1,{len(self.predictor.categories)}]) "
            f"and {self.image_name} (encoded image bytes -> top-{self.config.topk})",
            f"  HTTP     {url}   (health: {url}/v2/health/ready)",
            f"  gRPC     {self.grpc_url}",
            f"  metrics  {self.metrics_url}",
            f"  dynamic batching: max batch {self.config.max_batch_size}, max queue delay "
            f"{self.config.max_queue_delay_us} us, {self.config.instances} instance(s)",
            f"  limits:  {self.config.max_image_bytes} bytes per image, {self.config.max_request_bytes} bytes per "
            f"{self.image_name} request, {self.config.max_pixels} pixels per image",
            "  warmed:  "
            + (", ".join(f"{m} {ms:.0f} ms" for m, ms in self.warmup_ms.items()) or "not yet (start() warms)"),
            f"  try:     resnext client photo.jpg --url {self.http_url}",
            f"  or curl: {curl}",
        ]

    def __enter__(self) -> ResnextServer:
        return self.start() if self.triton is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
