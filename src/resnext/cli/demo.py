"""`resnext demo`: the Gradio web page (see :mod:`resnext.demo`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from ..bulk.engine import ModelSpec
from ..demo import DemoConfig
from ..options import add_options, options_from
from .common import add_command, model_spec


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """Options of :class:`ModelSpec` and :class:`DemoConfig`."""
    p = add_command(sub, "demo", run_demo)
    add_options(p, ModelSpec, skip=("image_size", "channels_last", "threads"))
    add_options(p, DemoConfig)


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

    # The model is loaded before Gradio is imported (build_app does): importing it switches huggingface_hub
    # offline, which would leave an hf-hub: source only its cache. A missing extra still fails first.
    if importlib.util.find_spec("gradio") is None:
        require("gradio", "demo")
    config, spec = options_from(DemoConfig, args), model_spec(args)
    _check_port(config.host, config.port)
    app = None
    try:
        model = create_demo_model(
            spec.arch,
            weights=spec.weights,
            model_file=spec.model_file,
            backend=spec.backend,
            device=spec.device,
            precision=spec.precision,
            triton_url=config.triton_url,
            explain=config.explain,
            calibration_dir=spec.calibration_dir,
        )
        app = build_app(model)
        print(f"resnext: serving the demo on http://{config.host}:{config.port} (Ctrl+C stops it)", file=sys.stderr)
        launch(app, host=config.host, port=config.port, block=True, quiet=True)
    except OSError as exc:  # port taken, address not available
        raise ResnextError(f"cannot serve on {config.host}:{config.port}: {exc}") from exc
    finally:
        if app is not None:
            app.close()
        remove_uploads()
    return 0


PARSERS = (add_demo_parser,)
