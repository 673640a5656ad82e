"""``resnext benchmark serving``: a load test of a Triton server against the same model run in-process.

For each concurrency level, that many client threads (one Triton client each) send one image per request for
``duration`` seconds after a warm-up; the table shows requests/s, p50/p95/p99 latency, the batch size the server
actually formed (Triton's metrics: ``nv_inference_count`` / ``nv_inference_exec_count`` over the level), and, as
the same-run reference, the in-process throughput of the same runtime and precision at that batch size (measured
right after each level while the server idles, so the two never share the CPU). ``--input image`` sends encoded
JPEG bytes to ``<arch>_image`` and the reference then includes decoding and preprocessing.

Before the levels, the first request of a new client is timed and reported against the first level's steady p50
(cold start: ``resnext serve`` warms its models before it reports ready, so the two should be close).

Without ``--url`` the benchmark starts ``resnext serve`` itself (a separate process on free loopback ports).
"""

from __future__ import annotations

import math
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bulk.engine import ModelSpec
from ..errors import ResnextError
from ..images import sample_images
from ..inference.predict import Predictor
from ..options import (
    at_least,
    check_options,
    declared,
    each,
    greater_than,
    instances_option,
    max_batch_size_option,
    max_queue_delay_option,
    option,
)
from ..serve.client import protocol_option
from .inference import machine_info, time_calls


@dataclass
class ServingConfig:
    url: str | None = option(  # host:port of a running server; None starts one here
        None, help="host:port of a running server's HTTP (or gRPC) endpoint (default: start one)"
    )
    metrics_url: str | None = option(  # default: http://<host>:8002/metrics, or the started server's
        None, help="Prometheus endpoint (default: http://<host>:8002/metrics)"
    )
    concurrency: list[int] = option(default_factory=lambda: [1, 2, 4, 8, 16], check=each(at_least(1)), help="")
    duration: float = option(10.0, check=greater_than(0.0), help="measured seconds per level")
    input: str = option("tensor", choices=("tensor", "image"), help="")
    model: str | None = option(None, help="model name on the server (default: <arch> or <arch>_image)")
    # the model both the server started here and the in-process reference run (random weights: speed does not
    # depend on them)
    spec: ModelSpec = field(default_factory=lambda: ModelSpec(arch="resnext101_32x4d", weights="random"))
    protocol: str = protocol_option()
    max_batch_size: int = max_batch_size_option()
    max_queue_delay_us: int = max_queue_delay_option()
    instances: int = instances_option()
    warmup: float = option(2.0, check=at_least(0.0), metavar="S", help="unmeasured seconds per level")
    timeout: float = 120.0

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class Level:
    concurrency: int
    requests: int
    errors: int
    throughput: float  # images/s (one image per request)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    executions: float
    inferences: float
    reference: float = math.nan  # in-process images/s at the server's batch size
    reference_batch: int = 1

    @property
    def avg_batch(self) -> float:
        return self.inferences / self.executions if self.executions else math.nan


@dataclass
class ServingResult:
    config: dict[str, Any]
    machine: dict[str, Any]
    levels: list[Level]
    notes: list[str] = field(default_factory=list)
    # the first request of a new client right after the server reported ready (a server started here: its very
    # first client request), against the steady-state median latency of the first level
    first_request_ms: float = math.nan

    @property
    def first_request_ratio(self) -> float:
        steady = self.levels[0].p50_ms if self.levels else math.nan
        return self.first_request_ms / steady if steady > 0 else math.nan

    def table(self) -> str:
        head = [
            "concurrency",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
            "batch formed",
            "in-process img/s (batch)",
            "server / in-process",
        ]
        body = [
            [
                str(lv.concurrency),
                f"{lv.throughput:.1f}",
                f"{lv.p50_ms:.1f}",
                f"{lv.p95_ms:.1f}",
                f"{lv.p99_ms:.1f}",
                str(lv.errors),
                f"{lv.avg_batch:.2f}",
                f"{lv.reference:.1f} ({lv.reference_batch})",
                f"{100 * lv.throughput / lv.reference:.0f}%",
            ]
            for lv in self.levels
        ]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        fmt = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
        c = self.config
        lines = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, body)]
        if self.levels:
            lines.append(
                f"first request after ready: {self.first_request_ms:.1f} ms, x{self.first_request_ratio:.2f} the "
                f"steady p50 at concurrency {self.levels[0].concurrency} ({self.levels[0].p50_ms:.1f} ms)"
            )
        lines.append(
            f"model {c['model']} ({c['input']} input, {c['protocol']}), {c['duration']:.0f} s per level; "
            f"server: max batch {c['max_batch_size']}, queue delay {c['max_queue_delay_us']} us, "
            f"{c['instances']} instance(s); CPU: {self.machine['cpu']}, {self.machine['cores']} cores, "
            f"ISA {' '.join(self.machine['isa'])}"
        )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "first_request_ratio": self.first_request_ratio}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(metrics_url: str, model: str) -> tuple[float, float]:
    """(executions, inferences) of ``model`` from Triton's Prometheus endpoint."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for metric in ("nv_inference_exec_count", "nv_inference_count"):
        match = re.search(rf'^{metric}{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$', text, re.M)
        values[metric] = float(match.group(1)) if match else 0.0
    return values["nv_inference_exec_count"], values["nv_inference_count"]


class Load:
    """``concurrency`` threads, each sending requests back to back; requests completed in [start, end] count."""

    def __init__(self, make_call: Callable[[], Callable[[], None]], concurrency: int) -> None:
        self.make_call, self.concurrency = make_call, concurrency
        self.start = self.end = math.inf
        self.latencies: list[float] = []
        self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def worker(self) -> None:
        call = self.make_call()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                call()
                ok = True
            except Exception:  # noqa: BLE001 - counted, the load goes on
                ok = False
            t1 = time.perf_counter()
            if self.start <= t1 <= self.end:  # completions inside the window, as perf_analyzer counts them
                with self.lock:
                    if ok:
                        self.latencies.append(t1 - t0)
                    else:
                        self.errors += 1
        getattr(call, "close", lambda: None)()

    def run(self, warmup: float, duration: float, on_start: Callable[[], Any], on_end: Callable[[], Any]) -> tuple:
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(self.concurrency)]
        for t in threads:
            t.start()
        time.sleep(warmup)
        before = on_start()
        self.start = time.perf_counter()
        self.end = self.start + duration
        time.sleep(duration)
        after = on_end()
        self.stop.set()
        for t in threads:
            t.join(60)
        return before, after


def request_maker(config: ServingConfig, url: str, model: str, payload: np.ndarray) -> Callable[[], Callable[[], None]]:
    """A factory of per-thread request functions (each thread gets its own client)."""
    from ..runtime.table import require

    module = require(f"tritonclient.{config.protocol}", "serve")
    datatype = "BYTES" if payload.dtype == np.object_ else "FP32"

    def make() -> Callable[[], None]:
        client = module.InferenceServerClient(url)
        item = module.InferInput("image" if datatype == "BYTES" else "input", list(payload.shape), datatype)
        item.set_data_from_numpy(payload)

        def call() -> None:
            client.infer(model, [item])

        call.close = client.close  # type: ignore[attr-defined]  # an open keep-alive connection delays Triton's exit
        return call

    return make


def serve_flags(spec: ModelSpec) -> list[str]:
    """The ``resnext serve`` flags that build ``spec``'s model (each field's own declared flag)."""
    flags = []
    for f, meta in declared(ModelSpec):
        value = getattr(spec, f.name)
        if value is not None and f.name not in ("channels_last", "threads"):  # flags serve does not take
            flags += [meta.flag(f.name), str(value)]
    return flags


def start_server(config: ServingConfig, model: str) -> tuple[subprocess.Popen, str, str]:
    """``resnext serve`` in a child process on free loopback ports; returns (process, http url, metrics url)."""
    from ..serve.tritonserver import wait_ready

    http, grpc, metrics = free_port(), free_port(), free_port()
    args = [
        sys.executable,
        "-m",
        "resnext",
        "serve",
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        "--max-batch-size",
        str(config.max_batch_size),
        "--max-queue-delay-us",
        str(config.max_queue_delay_us),
        "--instances",
        str(config.instances),
        *serve_flags(config.spec),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    url = f"127.0.0.1:{http}"
    try:
        wait_ready(url, config.timeout, process, models=[model])
    except ResnextError as exc:
        stop_server(process)
        err = process.stderr.read().decode(errors="replace").strip().splitlines() if process.stderr else []
        raise ResnextError(f"resnext serve did not start: {err[-1] if err else 'no output'}") from exc
    return process, url, f"http://127.0.0.1:{metrics}/metrics"


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def reference_throughput(predictor: Predictor, batch: int, image: bytes | None, min_time: float) -> float:
    """In-process images/s at ``batch``: the backend on a random batch, or decode + preprocess + backend."""
    size = predictor.image_size
    if image is None:
        x = torch.randn(batch, 3, size, size)
        fn: Callable[[], Any] = lambda: predictor.backend(x)  # noqa: E731
    else:
        fn = lambda: predictor.classify([image] * batch)  # noqa: E731
    times = time_calls(fn, warmup=2, min_iters=3, min_time=min_time)
    return batch / float(np.median(times))


def measure_level(
    make: Callable[[], Callable[[], None]],
    concurrency: int,
    config: ServingConfig,
    metrics: Callable[[], tuple[float, float]],
) -> Level:
    load = Load(make, concurrency)
    before, after = load.run(config.warmup, config.duration, metrics, metrics)
    lat = np.array(load.latencies or [math.nan]) * 1e3
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    return Level(
        concurrency,
        len(load.latencies),
        load.errors,
        len(load.latencies) / config.duration,
        p50,
        p95,
        p99,
        after[0] - before[0],
        after[1] - before[1],
    )


def run_serving_benchmark(config: ServingConfig, progress: Callable[[str], None] | None = None) -> ServingResult:
    if config.input not in ("tensor", "image"):
        raise ResnextError(f"--input must be tensor or image, got {config.input!r}")
    if not config.concurrency or min(config.concurrency) < 1 or config.duration <= 0:
        raise ResnextError("--concurrency needs positive integers and --duration a positive number of seconds")
    say = progress or (lambda _: None)
    predictor = config.spec.predictor()
    name = config.model or (predictor.arch or "resnext") + ("_image" if config.input == "image" else "")
    image = Path(sample_images()[0]).read_bytes() if config.input == "image" else None
    size = predictor.image_size
    payload = (
        np.array([[image]], dtype=np.object_)
        if image is not None
        else np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    )
    process = None
    url, metrics_url = config.url, config.metrics_url
    if url is None:
        say("starting resnext serve ...")
        process, url, metrics_url = start_server(config, name)
    metrics_url = metrics_url or f"http://{url.rsplit(':', 1)[0]}:8002/metrics"
    levels = []
    try:
        make = request_maker(config, url, name, payload)
        say("first request ...")
        first_request_ms = first_request(make)
        for c in config.concurrency:
            say(f"concurrency {c} ...")
            levels.append(measure_level(make, c, config, lambda: scrape(metrics_url, name)))
            # The reference runs right after its level, while the server idles: on a shared machine, load drifts
            # over minutes, and measuring both close together keeps the ratio about this code, not the neighbours.
            lv = levels[-1]
            lv.reference_batch = max(1, round(lv.avg_batch)) if math.isfinite(lv.avg_batch) else 1
            say(f"in-process reference at batch {lv.reference_batch} ...")
            lv.reference = reference_throughput(predictor, lv.reference_batch, image, min(config.duration, 10.0))
    finally:
        if process is not None:
            stop_server(process)
    settings = {**asdict(config), "model": name, "url": url}
    notes = [
        "server req/s counts one image per request; the reference runs the same runtime and precision "
        "in this process right after each level, while the server idles"
    ]
    return ServingResult(settings, machine_info(), levels, notes, first_request_ms)


def first_request(make: Callable[[], Callable[[], None]]) -> float:
    """Milliseconds of one request from a new client (its connection included), before any other load."""
    call = make()
    try:
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1000
    finally:
        getattr(call, "close", lambda: None)()
