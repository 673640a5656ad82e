"""`resnext serve`, `resnext triton-repo`, `resnext client`."""

from __future__ import annotations

import argparse
import sys

from ..errors import ResnextError
from .common import add_command, add_flags, add_model_args, add_runtime_args, model_spec, port, positive_float


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", run_serve)
    add_model_args(p)
    add_runtime_args(p)
    add_flags(p, "image_size", "name", "host", "max_batch_size", "max_queue_delay_us", "preferred_batch_sizes")
    add_flags(p, "instances", "topk")
    p.add_argument("--http-port", type=port, default=8000, help="(default: %(default)s)")
    p.add_argument("--grpc-port", type=port, default=8001, help="(default: %(default)s)")
    p.add_argument("--metrics-port", type=port, default=8002, help="Prometheus metrics (default: %(default)s)")


def run_serve(args: argparse.Namespace) -> int:
    """Serve the model on NVIDIA Triton Inference Server (PyTriton), with dynamic batching.

    Start Triton with two models: <arch> (FP32 tensor -> logits, class names through the classification
    extension) and <arch>_image (encoded image bytes -> top-k names). Binds 127.0.0.1 unless --host says
    otherwise; stops cleanly on Ctrl-C / SIGTERM. Needs pip install 'resnext[serve]'.
    """
    from ..serve.tritonserver import require_serving

    require_serving()  # before loading any model: a missing extra is one line
    from ..serve.server import ResnextServer, ServeConfig
    from ..util import call_with

    config = call_with(ServeConfig, args)
    config.check()
    predictor = model_spec(args).predictor(progress=True)
    server = ResnextServer(predictor, config)
    with server.stop_on_signals():  # a Ctrl-C or SIGTERM while starting (and warming up) stops cleanly too
        server.start()
        if server.is_alive():
            print("\n".join(server.describe()), flush=True)
            print("resnext: serving; Ctrl-C or SIGTERM stops", file=sys.stderr, flush=True)
        server.serve_forever()
    print("resnext: stopped", file=sys.stderr)
    return 0


def add_triton_repo_parser(sub: argparse._SubParsersAction) -> None:
    from ..serve.repository import FORMATS, PYTHON_RUNTIMES

    p = add_command(sub, "triton-repo", run_triton_repo)
    p.add_argument("output", metavar="OUT_DIR", help="model repository folder (created; other models are kept)")
    p.add_argument("--format", required=True, choices=FORMATS)
    add_model_args(p)
    add_flags(p, "name", "image_size", "max_batch_size", "preferred_batch_sizes", "max_queue_delay_us", "instances")
    p.add_argument("--kind", choices=["cpu", "gpu"], help="instance kind (default: gpu for tensorrt, else cpu)")
    p.add_argument(
        "--runtime",
        default="onnxruntime",
        choices=list(PYTHON_RUNTIMES),
        help="--format python: the runtime model.py runs (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing model folder of the same name")


def run_triton_repo(args: argparse.Namespace) -> int:
    """Write a Triton model repository (onnx, torchscript, tensorrt or python backend).

    Write OUT_DIR/<name>/{config.pbtxt,labels.txt,1/<model file>} for NVIDIA Triton; every config.pbtxt is parsed
    back with Triton's protobuf schema. tensorrt on a machine without a GPU writes the config and prints the export
    command to build the engine on the GPU host.
    """
    from ..serve.repository import RepoConfig, write_repository
    from ..util import call_with

    result = write_repository(call_with(RepoConfig, args))
    print("\n".join(result.summary()))
    return 0


def add_client_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "client", run_client)
    p.add_argument("inputs", nargs="*", metavar="PATH|URL|DIR", help="images (default: the bundled sample photos)")
    p.add_argument(
        "--url", default="127.0.0.1:8000", help="host:port of Triton's HTTP or gRPC endpoint (default: %(default)s)"
    )
    p.add_argument("--model", help="model name (default: the server's <arch>_image model, else its first model)")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per request (default: %(default)s)")
    add_flags(p, "protocol", "topk", json={"help": "one JSON object per image"})


def run_client(args: argparse.Namespace) -> int:
    """Classify images with a running Triton server (resnext serve or a triton-repo repository).

    Print the top-k classes of each image as a Triton server answers them. Exit status 1 if any image could not be
    classified.
    """
    from ..bulk.engine import list_inputs
    from ..images import sample_images
    from ..inference.report import format_json, format_table
    from ..serve.client import TritonClient

    # classify's listing: folders and globs expanded, a file named twice (alone and in its folder) classified once
    sources = list_inputs(args.inputs) if args.inputs else sample_images()
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


PARSERS = (add_serve_parser, add_triton_repo_parser, add_client_parser)
