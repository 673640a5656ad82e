"""`resnext demo`: the Gradio web page (see :mod:`resnext.demo`)."""

from __future__ import annotations

import argparse
import sys

from .common import add_model_args, add_runtime_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="web page: drop an image, see its top-5 classes and a Grad-CAM heat-map",
        description="Serve a Gradio page on HOST:PORT (loopback by default, no share link, no analytics). "
        "Needs the demo extra: pip install 'resnext[demo]'.",
    )
    add_model_args(p)
    add_runtime_args(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; 0.0.0.0 exposes the page to the network (default: %(default)s)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument(
        "--triton-url",
        metavar="HOST:PORT",
        help="classify on a running `resnext serve` (HTTP endpoint); Grad-CAM still runs in-process from --weights",
    )
    p.add_argument("--no-explain", action="store_true", help="hide Grad-CAM heat-maps (faster on small CPUs)")
    p.set_defaults(func=run_demo)


def _check_port(host: str, port: int) -> None:
    """Fail in one line before loading the model when the address cannot be bound (port taken, bad host)."""
    import socket

    from ..errors import ResnextError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise ResnextError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import build_app, create_demo_model, import_gradio, launch, remove_uploads
    from ..errors import ResnextError

    if not 0 < args.port < 65536:
        raise ResnextError(f"--port must be between 1 and 65535, got {args.port}")
    import_gradio()  # a missing extra fails here, before the model is loaded
    _check_port(args.host, args.port)
    app = None
    try:
        model = create_demo_model(
            args.arch,
            weights=args.weights,
            model_file=args.model_file,
            backend=args.backend,
            device=args.device,
            precision=args.precision,
            triton_url=args.triton_url,
            explain=not args.no_explain,
            **({"calibration_dir": args.calibration_dir} if getattr(args, "calibration_dir", None) else {}),
        )
        app = build_app(model)
        print(f"resnext: serving the demo on http://{args.host}:{args.port} (Ctrl+C stops it)", file=sys.stderr)
        launch(app, host=args.host, port=args.port, block=True, quiet=True)
    except OSError as exc:  # port taken, address not available
        raise ResnextError(f"cannot serve on {args.host}:{args.port}: {exc}") from None
    finally:
        if app is not None:
            app.close()
        remove_uploads()
    return 0
