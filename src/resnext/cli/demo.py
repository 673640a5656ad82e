"""`resnext demo`: the Gradio web page (see :mod:`resnext.demo`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from .common import add_command, add_flags, add_model_args, add_runtime_args, port


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", run_demo)
    add_model_args(p)
    add_runtime_args(p)
    add_flags(p, "host")
    p.add_argument("--port", type=port, default=7860, help="(default: %(default)s)")
    p.add_argument(
        "--triton-url",
        metavar="HOST:PORT",
        help="classify on a running `resnext serve` (HTTP endpoint); Grad-CAM still runs in-process from --weights",
    )
    p.add_argument("--no-explain", action="store_true", help="hide Grad-CAM heat-maps (faster on small CPUs)")


def _check_port(host: str, port: int) -> None:
    """Fail in one line before loading the model when the address cannot be bound (port taken, bad host)."""
    import socket

    from ..errors import ResnextError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise ResnextError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc


def run_demo(args: argparse.Namespace) -> int:
    """Web page: drop an image, see its top-5 classes and a Grad-CAM heat-map.

    Serve a Gradio page on HOST:PORT (loopback by default, no share link, no analytics). Needs the demo extra:
    pip install 'resnext[demo]'.
    """
    from ..demo import build_app, create_demo_model, launch, remove_uploads
    from ..errors import ResnextError
    from ..runtime.table import require
    from ..util import call_with

    # The model is loaded before Gradio is imported (build_app does): importing it switches huggingface_hub
    # offline, which would leave an hf-hub: source only its cache. A missing extra still fails first.
    if importlib.util.find_spec("gradio") is None:
        require("gradio", "demo")
    _check_port(args.host, args.port)
    app = None
    try:
        explain = not args.no_explain
        model = call_with(create_demo_model, args, explain=explain, calibration_dir=args.calibration_dir)
        app = build_app(model)
        print(f"resnext: serving the demo on http://{args.host}:{args.port} (Ctrl+C stops it)", file=sys.stderr)
        launch(app, host=args.host, port=args.port, block=True, quiet=True)
    except OSError as exc:  # port taken, address not available
        raise ResnextError(f"cannot serve on {args.host}:{args.port}: {exc}") from exc
    finally:
        if app is not None:
            app.close()
        remove_uploads()
    return 0


PARSERS = (add_demo_parser,)
