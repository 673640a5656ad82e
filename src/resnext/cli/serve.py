"""`resnext serve`, `resnext triton-repo`, `resnext client`."""

from __future__ import annotations

import argparse
import sys

from ..bulk.engine import ModelSpec
from ..errors import ResnextError
from ..options import add_options, options_from
from ..serve.client import ClientConfig
from ..serve.repository import RepoConfig
from ..serve.server import ServeConfig
from .common import add_cli_flag, add_command, add_json, model_spec


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Options of :class:`ModelSpec` and :class:`ServeConfig`."""
    p = add_command(sub, "serve", run_serve)
    add_options(p, ModelSpec, skip=("channels_last", "threads"))
    add_options(p, ServeConfig)


def run_serve(args: argparse.Namespace) -> int:
    """Serve the model on NVIDIA Triton Inference Server (PyTriton), with dynamic batching.

    Start Triton with two models: <arch> (FP32 tensor -> logits, class names through the classification
    extension) and <arch>_image (encoded image bytes -> top-k names). Binds 127.0.0.1 unless --host says
    otherwise; stops cleanly on Ctrl-C / SIGTERM. Needs pip install 'resnext[serve]'.
    """
    from ..serve.tritonserver import require_serving

    require_serving()  # before loading any model: a missing extra is one line
    from ..serve.server import ResnextServer

    config = options_from(ServeConfig, args)
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
    """Options of :class:`RepoConfig`."""
    add_options(add_command(sub, "triton-repo", run_triton_repo), RepoConfig)


def run_triton_repo(args: argparse.Namespace) -> int:
    """Write a Triton model repository (onnx, torchscript, tensorrt or python backend).

    Write OUT_DIR/<name>/{config.pbtxt,labels.txt,1/<model file>} for NVIDIA Triton; every config.pbtxt is parsed
    back with Triton's protobuf schema. tensorrt on a machine without a GPU writes the config and prints the export
    command to build the engine on the GPU host.
    """
    from ..serve.repository import write_repository

    result = write_repository(options_from(RepoConfig, args))
    print("\n".join(result.summary()))
    return 0


def add_client_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "client", run_client)
    """Options of :class:`ClientConfig`."""
    add_cli_flag(p, "inputs", nargs="*", metavar="PATH|URL|DIR", help="images (default: the bundled sample photos)")
    add_options(p, ClientConfig)
    add_json(p, "one JSON object per image")


def run_client(args: argparse.Namespace) -> int:
    """Classify images with a running Triton server (resnext serve or a triton-repo repository).

    Print the top-k classes of each image as a Triton server answers them. Exit status 1 if any image could not be
    classified.
    """
    from ..bulk.engine import list_inputs
    from ..images import sample_images
    from ..inference.report import format_json, format_table
    from ..serve.client import TritonClient

    config = options_from(ClientConfig, args)
    # classify's listing: folders and globs expanded, a file named twice (alone and in its folder) classified once
    sources = list_inputs(args.inputs) if args.inputs else sample_images()
    if not sources:
        raise ResnextError(f"no images found in {', '.join(args.inputs)}")
    failed = 0
    with TritonClient(config.url, config.protocol, timeout=config.timeout) as client:
        for result in client.classify(sources, model=config.model, topk=config.topk):
            if result.error is not None:
                failed += 1
                print(f"resnext: skipped: {result.error}", file=sys.stderr)
                continue
            print(format_json(result) if args.json else format_table(result) + "\n", flush=True)
    if failed:
        print(f"resnext: {failed} of {len(sources)} inputs could not be classified", file=sys.stderr)
    return 1 if failed else 0


PARSERS = (add_serve_parser, add_triton_repo_parser, add_client_parser)
