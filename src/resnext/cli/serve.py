"""`resnext serve`, `resnext triton-repo`, `resnext client`."""

from __future__ import annotations

import argparse
import sys

from ..errors import ResnextError
from .common import add_model_args, add_runtime_args, model_spec


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model on NVIDIA Triton Inference Server (PyTriton), with dynamic batching",
        description="Start Triton with two models: <arch> (FP32 tensor -> logits, class names through the "
        "classification extension) and <arch>_image (encoded image bytes -> top-k names). Binds 127.0.0.1 unless "
        "--host says otherwise; stops cleanly on Ctrl-C / SIGTERM. Needs pip install 'resnext[serve]'.",
    )
    add_model_args(p)
    add_runtime_args(p)
    p.add_argument("--image-size", type=int, default=None, help="crop size (default: the model's own)")
    p.add_argument("--name", help="model name (default: the architecture)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 exposes it)")
    p.add_argument("--http-port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=8001, help="(default: %(default)s)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=64, help="largest batch Triton forms (default: %(default)s)")
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="how long a request may wait for a fuller batch (default: %(default)s)",
    )
    p.add_argument(
        "--preferred-batch-sizes",
        type=_int_list,
        default=[],
        metavar="B,B",
        help="batch sizes the batcher aims for (default: as large as possible)",
    )
    p.add_argument(
        "--instances", type=int, default=1, help="model instances running in parallel (default: %(default)s)"
    )
    p.add_argument("--topk", type=int, default=5, help="classes <arch>_image returns (default: %(default)s)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..serve.tritonserver import require_serving

    require_serving()  # before loading any model: a missing extra is one line
    from ..serve.server import ResnextServer, ServeConfig

    config = ServeConfig(
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        preferred_batch_sizes=args.preferred_batch_sizes,
        instances=args.instances,
        topk=args.topk,
        name=args.name,
    )
    config.check()
    predictor = model_spec(args).predictor(progress=True)
    server = ResnextServer(predictor, config)
    server.start()
    print("\n".join(server.describe()), flush=True)
    print("resnext: serving; Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)
    server.serve_forever()
    print("resnext: stopped", file=sys.stderr)
    return 0


def add_triton_repo_parser(sub: argparse._SubParsersAction) -> None:
    from ..serve.repository import FORMATS, PYTHON_RUNTIMES

    p = sub.add_parser(
        "triton-repo",
        help="write a Triton model repository (onnx, torchscript, tensorrt or python backend)",
        description="Write OUT_DIR/<name>/{config.pbtxt,labels.txt,1/<model file>} for NVIDIA Triton; every "
        "config.pbtxt is parsed back with Triton's protobuf schema. tensorrt on a machine without a GPU writes the "
        "config and prints the export command to build the engine on the GPU host.",
    )
    p.add_argument("output", metavar="OUT_DIR", help="model repository folder (created; other models are kept)")
    p.add_argument("--format", required=True, choices=FORMATS)
    add_model_args(p)
    p.add_argument("--name", help="model name (default: the architecture)")
    p.add_argument("--image-size", type=int, default=None, help="input crop size (default: the model's own)")
    p.add_argument(
        "--max-batch-size", type=int, default=64, help="also the TensorRT profile's maximum (default: %(default)s)"
    )
    p.add_argument("--preferred-batch-sizes", type=_int_list, default=[], metavar="B,B")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="(default: %(default)s)")
    p.add_argument("--instances", type=int, default=1, help="instances per instance group (default: %(default)s)")
    p.add_argument("--kind", choices=["cpu", "gpu"], help="instance kind (default: gpu for tensorrt, else cpu)")
    p.add_argument(
        "--runtime",
        default="onnxruntime",
        choices=list(PYTHON_RUNTIMES),
        help="--format python: the runtime model.py runs (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing model folder of the same name")
    p.set_defaults(func=run_triton_repo)


def run_triton_repo(args: argparse.Namespace) -> int:
    from ..serve.repository import RepoConfig, write_repository

    result = write_repository(
        RepoConfig(
            output=args.output,
            format=args.format,
            arch=args.arch,
            weights=args.weights,
            name=args.name,
            max_batch_size=args.max_batch_size,
            preferred_batch_sizes=args.preferred_batch_sizes,
            max_queue_delay_us=args.max_queue_delay_us,
            instances=args.instances,
            kind=args.kind,
            runtime=args.runtime,
            image_size=args.image_size,
            force=args.force,
        )
    )
    print("\n".join(result.summary()))
    return 0


def add_client_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "client",
        help="classify images with a running Triton server (resnext serve or a triton-repo repository)",
        description="Print the top-k classes of each image as a Triton server answers them. Exit status 1 if any "
        "image could not be classified.",
    )
    p.add_argument("inputs", nargs="*", metavar="PATH|URL|DIR", help="images (default: the bundled sample photos)")
    p.add_argument(
        "--url", default="127.0.0.1:8000", help="host:port of Triton's HTTP or gRPC endpoint (default: %(default)s)"
    )
    p.add_argument("--protocol", default="http", choices=["http", "grpc"])
    p.add_argument("--model", help="model name (default: the server's <arch>_image model, else its first model)")
    p.add_argument("--topk", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: %(default)s)")
    p.set_defaults(func=run_client)


def run_client(args: argparse.Namespace) -> int:
    from ..images import find_images, sample_images
    from ..report import format_json, format_table
    from ..serve.client import TritonClient

    sources = find_images(args.inputs) if args.inputs else sample_images()
    if not sources:
        raise ResnextError(f"no images found in {', '.join(args.inputs)}")
    failed = 0
    with TritonClient(args.url, args.protocol, timeout=args.timeout) as client:
        for result in client.classify(sources, model=args.model, topk=args.topk):
            if result.error is not None:
                failed += 1
                print(f"resnext: skipped: {result.error}", file=sys.stderr)
                continue
            print(format_json(result) if args.json else format_table(result) + "\n", flush=True)
    if failed:
        print(f"resnext: {failed} of {len(sources)} inputs could not be classified", file=sys.stderr)
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    add_serve_parser(sub)
    add_triton_repo_parser(sub)
    add_client_parser(sub)


def add_benchmark_serving_parser(kinds: argparse._SubParsersAction) -> None:
    """`resnext benchmark serving` (registered in cli/benchmark.py's BENCHMARK_PARSERS)."""
    p = kinds.add_parser(
        "serving",
        help="Triton load test: req/s and p50/p95/p99 per concurrency vs the same model in-process",
        description="Without --url, starts `resnext serve` on free loopback ports with the model arguments below; "
        "the in-process reference always uses them (random weights by default: speed does not depend on them).",
    )
    p.add_argument("--url", help="host:port of a running server's HTTP (or gRPC) endpoint (default: start one)")
    p.add_argument("--metrics-url", help="Prometheus endpoint (default: http://<host>:8002/metrics)")
    p.add_argument("--protocol", default="http", choices=["http", "grpc"])
    p.add_argument("--concurrency", type=_int_list, default=[1, 2, 4, 8, 16], help="(default: 1,2,4,8,16)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per level (default: %(default)s)")
    p.add_argument("--input", default="tensor", choices=["tensor", "image"], help="(default: %(default)s)")
    p.add_argument("--model", help="model name on the server (default: <arch> or <arch>_image)")
    p.add_argument("--arch", default="resnext101_32x4d", help="(default: %(default)s)")
    p.add_argument("--weights", default="random", help="(default: %(default)s)")
    add_runtime_args(p)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--max-batch-size", type=int, default=64, help="for the server started here (default: %(default)s)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="(default: %(default)s)")
    p.add_argument("--instances", type=int, default=1, help="(default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=run_benchmark_serving)


def run_benchmark_serving(args: argparse.Namespace) -> int:
    import json

    from ..bench.serving import ServingConfig, run_serving_benchmark
    from ..serve.tritonserver import require_serving

    require_serving()
    config = ServingConfig(
        url=args.url,
        metrics_url=args.metrics_url,
        protocol=args.protocol,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        input=args.input,
        model=args.model,
        arch=args.arch,
        weights=args.weights,
        backend=args.backend,
        model_file=args.model_file,
        precision=args.precision,
        image_size=args.image_size,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        instances=args.instances,
    )
    result = run_serving_benchmark(config, progress=lambda m: print(f"resnext: {m}", file=sys.stderr, flush=True))
    print(result.table())
    if args.json:
        from ..util import atomic_open

        with atomic_open(args.json) as f:
            json.dump(result.to_dict(), f, indent=1, default=str)
    return 0
