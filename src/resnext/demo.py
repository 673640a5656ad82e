"""The web demo (``resnext demo``, and ``demo/app.py`` as a Hugging Face Space): a Gradio page that classifies an
uploaded, pasted or sample image and shows its top-5 classes, the model's time and a Grad-CAM heat-map.

Classification goes through the package's one path (:func:`resnext.images.load_image` for bounded decoding, the
:class:`~resnext.inference.predict.Predictor`'s preset transforms and backend,
:func:`~resnext.inference.predict.top_k`); heat-maps come from :meth:`Predictor.explain
<resnext.inference.predict.Predictor.explain>`. Safe by default: loopback only, no share link, Gradio's analytics off
(nothing calls the internet, which would hang offline), uploads size-limited and kept in a private temporary folder.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .download import MAX_IMAGE_BYTES
from .errors import ResnextError
from .images import load_image, sample_images
from .inference.predict import Prediction, Predictor, top_k
from .options import check_options, host_option, option, port_option
from .runtime.backend import Backend
from .runtime.table import require
from .util import sweep_stale_temporaries

if TYPE_CHECKING:
    from torch import Tensor

TOPK = 5
#: environment that keeps Gradio offline and private; set before gradio is first imported (it reads some at import)
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_SHARE": "False",
    "GRADIO_SSR_MODE": "False",
    "GRADIO_MCP_SERVER": "False",
}
FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"]  # local: no font CDN
CSS = """
.rx-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 14px 16px;}
.rx-row {margin: 0 0 10px 0;}
.rx-head {display: flex; justify-content: space-between; gap: 12px; font-size: 15px;}
.rx-name {overflow: hidden; text-overflow: ellipsis; white-space: nowrap;}
.rx-pct {font-variant-numeric: tabular-nums; font-weight: 600;}
.rx-track {height: 10px; border-radius: 5px; background: var(--neutral-200); margin-top: 4px; overflow: hidden;}
.rx-fill {height: 100%; border-radius: 5px; background: #76b900;}
.rx-row:not(:first-child) .rx-fill {background: #9db8c9;}
.rx-row:first-child .rx-name {font-weight: 700;}
.rx-meta {color: var(--body-text-color-subdued); font-size: 13px; margin-top: 8px;}
.rx-error {border: 1px solid #e5484d; background: #fff0f0; color: #a1151a; border-radius: 10px;
           padding: 12px 14px; font-size: 15px;}
.rx-hint {color: var(--body-text-color-subdued); font-size: 15px; padding: 12px 2px;}
"""


_CREATED_TEMP: list[str] = []  # private upload folders this process made (removed by remove_uploads)
#: upload folders are ``<tmp>/resnext-demo-<pid>-*``: the pid tells a later start whether their demo still runs
UPLOADS_PREFIX = "resnext-demo-"


def import_gradio() -> Any:
    """Gradio, imported with the offline/private settings in force (the ``demo`` extra installs it)."""
    os.environ.update(OFFLINE_ENV)
    if not os.environ.get("GRADIO_TEMP_DIR"):
        # uploads land here (Gradio's cache), not in a shared /tmp/gradio; Gradio reads it at import time.
        # Folders of demos that no longer run (killed with SIGKILL, a power cut) are removed first.
        sweep_stale_temporaries(tempfile.gettempdir(), prefix=UPLOADS_PREFIX)
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix=f"{UPLOADS_PREFIX}{os.getpid()}-")
        _CREATED_TEMP.append(os.environ["GRADIO_TEMP_DIR"])
    return require("gradio", "demo")


def remove_uploads() -> None:
    """Delete the private upload folder :func:`import_gradio` created (``resnext demo`` does on exit)."""
    while _CREATED_TEMP:
        shutil.rmtree(_CREATED_TEMP.pop(), ignore_errors=True)


@dataclass
class Analysis:
    """What the page shows for one image."""

    predictions: list[Prediction]
    model_ms: float
    explain_ms: float | None = None
    overlay: Any = None  # PIL image: the model's crop with the Grad-CAM heat-map
    note: str = ""


class DemoModel:
    """The model behind the page: classification through ``predictor`` (in-process or a Triton server) and
    Grad-CAM through ``explainer`` (a torch-backend predictor, or None to hide explanations)."""

    def __init__(self, predictor: Predictor, *, explainer: Predictor | None = None, description: str = "") -> None:
        self.predictor = predictor
        self.explainer = explainer
        self.description = description

    def classify(self, source: Any) -> tuple[Any, list[Prediction], float]:
        """Decode (bounded), preprocess, run and rank: ``(image, top-5, milliseconds in the model)``."""
        image = load_image(source)
        batch = self.predictor.transforms(image)[None]  # already decoded: no second load_image
        start = time.perf_counter()
        logits = self.predictor.backend(batch)
        elapsed = (time.perf_counter() - start) * 1000
        return image, top_k(logits, TOPK, self.predictor.categories, from_logits=True)[0], elapsed

    def explain(self, image: Any, target: int) -> tuple[Any, float]:
        assert self.explainer is not None
        start = time.perf_counter()
        overlay = self.explainer.explain(image, target).overlay()
        return overlay, (time.perf_counter() - start) * 1000

    def analyse(self, source: Any, target: int | None = None) -> Analysis:
        image, predictions, model_ms = self.classify(source)
        result = Analysis(predictions, model_ms)
        if self.explainer is None:
            result.note = "Grad-CAM needs the in-process torch model; explanations are off for this backend."
        else:
            result.overlay, result.explain_ms = self.explain(image, predictions[0].index if target is None else target)
        return result


# ---------------------------------------------------------------------------------------------------------------
# HTML fragments (class names are escaped: a fine-tuned model's folder names are user data)


def predictions_html(analysis: Analysis) -> str:
    rows = []
    for p in analysis.predictions:
        pct = f"{p.probability * 100:.1f}"
        rows.append(
            f'<div class="rx-row" data-label="{html.escape(p.label)}" data-index="{p.index}" data-percent="{pct}">'
            f'<div class="rx-head"><span class="rx-name">{html.escape(p.label)}</span>'
            f'<span class="rx-pct">{pct}%</span></div>'
            f'<div class="rx-track"><div class="rx-fill" style="width:{max(float(pct), 0.5)}%"></div></div></div>'
        )
    timing = f"model {analysis.model_ms:.1f} ms"
    if analysis.explain_ms is not None:
        timing += f" · Grad-CAM {analysis.explain_ms:.1f} ms"
    note = f'<div class="rx-meta">{html.escape(analysis.note)}</div>' if analysis.note else ""
    return (
        f'<div class="rx-card" id="rx-predictions">{"".join(rows)}'
        f'<div class="rx-meta" id="rx-time">{timing}</div>{note}</div>'
    )


def error_html(message: str) -> str:
    return (
        f'<div class="rx-error" id="rx-error" role="alert"><b>Cannot classify this upload.</b> '
        f"{html.escape(message)}<br>Try another image, or click a sample.</div>"
    )


HINT_HTML = '<div class="rx-hint" id="rx-hint">Drop, paste or pick an image (JPEG, PNG, WebP), or click a sample.</div>'


def user_message(exc: Exception, source: Any) -> str:
    """The one-line error, naming the upload by its file name rather than Gradio's temporary path."""
    message = str(exc)
    if isinstance(source, str):
        message = message.replace(source, Path(source).name)
    return message


def raw_upload(payload: Any) -> Any:
    """The uploaded file as Gradio stored it (a path in its temp folder), or the bytes of a data: URL; decoding is
    left to :func:`load_image`, which bounds pixels and bytes and turns every failure into one clear line.
    A refused upload comes back as the exception (raising here would only show Gradio's generic "Error")."""
    if payload is None:
        return None
    url = getattr(payload, "url", None) or ""
    if url.startswith("data:"):
        encoded = url.partition(",")[2]
        if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            return ResnextError(f"upload is larger than {MAX_IMAGE_BYTES} bytes")
        try:
            return base64.b64decode(encoded)
        except ValueError:
            return ResnextError("upload is not valid base64 data")
    return getattr(payload, "path", None)


# ---------------------------------------------------------------------------------------------------------------
# The page


class Page:
    """Event handlers of the page, bound to one :class:`DemoModel`."""

    def __init__(self, model: DemoModel, gr: Any) -> None:
        self.model = model
        self.gr = gr

    def _choices(self, predictions: list[Prediction]) -> list[tuple[str, str]]:
        # the first of ImageNet's synonyms keeps the choices on one line; the bars above show the full names
        return [(f"{p.label.split(',')[0]} ({p.probability * 100:.1f}%)", str(p.index)) for p in predictions]

    def on_image(self, source: Any) -> tuple[Any, ...]:
        """New image: top-5, time and the heat-map of the top class (or a one-line error, and the page lives on)."""
        gr = self.gr
        if source is None:
            return HINT_HTML, gr.update(choices=[], value=None, visible=False), gr.update(value=None, visible=False)
        try:
            if isinstance(source, Exception):
                raise source
            analysis = self.model.analyse(source)
        except ResnextError as exc:
            hidden = gr.update(value=None, visible=False)
            return error_html(user_message(exc, source)), gr.update(choices=[], value=None, visible=False), hidden
        explainable = self.model.explainer is not None
        radio = gr.update(
            choices=self._choices(analysis.predictions), value=str(analysis.predictions[0].index), visible=explainable
        )
        heatmap = gr.update(value=analysis.overlay, visible=analysis.overlay is not None)
        return predictions_html(analysis), radio, heatmap

    def on_target(self, source: Any, target: str | None) -> Any:
        """A class picked from the top 5: its heat-map."""
        if source is None or isinstance(source, Exception) or target is None or self.model.explainer is None:
            return None
        try:
            image = load_image(source)
            return self.model.explain(image, int(target))[0]
        except (ResnextError, ValueError) as exc:
            self.gr.Warning(user_message(exc, source))
            return None


def build_app(model: DemoModel, *, title: str = "ResNeXt image classifier with Grad-CAM") -> Any:
    """The Gradio ``Blocks`` page for ``model`` (not started: see :func:`launch`)."""
    gr = import_gradio()
    page = Page(model, gr)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown(f"## {html.escape(title)}\n{html.escape(model.description)}", elem_id="rx-title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                image = gr.Image(
                    type="filepath",
                    sources=["upload", "clipboard"],
                    label="Image",
                    elem_id="rx-input",
                    height=340,
                    image_mode=None,
                    buttons=[],
                )
                # The handler gets the raw upload: Gradio's own Pillow decoding has no pixel limit and reports a
                # non-image only as a generic "Error". (Replaced on the instance: a gr.Image subclass would make
                # Gradio write a .pyi stub into this package's folder.)
                image.preprocess = raw_upload
                gr.Examples(
                    examples=[[p] for p in sample_images()], inputs=[image], label="Samples", examples_per_page=6
                )
            with gr.Column(scale=6):
                results = gr.HTML(HINT_HTML, elem_id="rx-results")
                target = gr.Radio(label="Explain class", choices=[], visible=False, elem_id="rx-target")
                heatmap = gr.Image(
                    label="Grad-CAM heat-map (on the model's center crop)",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="rx-heatmap",
                    height=300,
                    buttons=["download"],
                    visible=False,
                )
        image.change(
            page.on_image,
            inputs=[image],
            outputs=[results, target, heatmap],
            show_progress="minimal",
            api_name="classify",
        )
        target.input(
            page.on_target, inputs=[image, target], outputs=[heatmap], show_progress="minimal", api_name="explain"
        )
    return app


#: Gradio's launch settings that keep the demo private and local (see the module docstring)
_LAUNCH_SETTINGS: dict[str, Any] = {
    "share": False,  # no public gradio.live tunnel, whatever GRADIO_SHARE says
    "ssr_mode": False,  # no Node server-side rendering process
    "mcp_server": False,  # no MCP tools for agents, whatever GRADIO_MCP_SERVER says
    "enable_monitoring": False,  # Gradio serves a /monitoring page unless told not to
    "pwa": False,  # not an installable web app
    "footer_links": [],  # the page is the demo only: no links to the API docs or the settings
    "show_error": True,  # an unexpected failure shows its message, not a bare "Error"
    "inbrowser": False,  # never open a browser on the machine that serves
}


def launch(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    block: bool = True,
    max_file_size: int = MAX_IMAGE_BYTES,
    quiet: bool = False,
) -> str:
    """Serve ``app`` on ``host:port`` (loopback by default; no share link, no monitoring or MCP endpoints, no
    server-side rendering process). Returns the local URL; with ``block=False`` the server runs in a thread until
    ``app.close()``."""
    gr = import_gradio()
    theme = gr.themes.Soft(primary_hue="green", font=FONTS, font_mono=["ui-monospace", "monospace"])
    app.queue(default_concurrency_limit=1)  # one model run at a time: predictable memory and latency
    # Gradio's own wait loop is not used: Ctrl-C and SIGTERM (how services and containers stop) only set an event,
    # which this loop reads. Raising from the signal handler (KeyboardInterrupt) can land in a finalizer, where
    # Python drops the exception, or in Gradio's start-up, after the server is up but before it can close.
    server = {"server_name": host, "server_port": port, "prevent_thread_lock": True, "quiet": quiet}
    stop = threading.Event()
    stopping = (signal.SIGINT, signal.SIGTERM) if block else ()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in stopping}
    try:
        _, url, _ = app.launch(**server, max_file_size=max_file_size, theme=theme, css=CSS, **_LAUNCH_SETTINGS)
        if block:
            while app.is_running and not stop.wait(0.2):
                pass
            app.close()  # then the caller's cleanup (remove_uploads) runs
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return str(url)


# ---------------------------------------------------------------------------------------------------------------
# Building the model behind the page


class TritonLogits:
    """A backend that sends the preprocessed batch to the tensor model ``model_name`` of a Triton server
    (``resnext serve``) and returns its logits: the server runs the model, while decoding, preprocessing and
    top-k stay the package's own in this process."""

    name = "triton"
    precision = "fp32"  # of the batch and logits exchanged; the server runs the model in its own
    has_features = False

    def __init__(self, url: str, model_name: str, *, timeout_s: float = 30.0) -> None:
        import torch

        from .serve.client import TritonClient

        self.client = TritonClient(url, "http", timeout=timeout_s)
        self.model_name = self.client.pick_model(model_name)
        self.info = self.client.info(self.model_name)
        if self.info.input_type != "FP32":
            raise ResnextError(f"{self.model_name} on {url} takes {self.info.input_type}, not an FP32 image batch")
        self.num_classes = self.info.output_dims[-1]
        self.image_size: int | None = self.info.input_dims[-1]
        self.device = torch.device("cpu")  # the batch is sent from host memory
        self.metadata: dict[str, Any] = {}

    def __call__(self, batch: Tensor) -> Tensor:
        import torch

        data = batch.detach().float().cpu().numpy()
        reply = self.client.infer(self.model_name, [self.client.input(self.info.input_name, data, "FP32")])
        return torch.from_numpy(reply.as_numpy(self.info.output_names[0]).copy()).float()

    def features(self, batch: Tensor) -> Tensor:
        raise ResnextError(f"{self.model_name} on Triton gives logits only: embed with the local model")

    def expect(self, images: int) -> None:
        pass  # the server is running: nothing to prepare


def runtime_name(backend: Backend) -> str:
    """The registry name of a backend ("torch", "openvino", ...) for the page's subtitle."""
    return backend.name


@dataclass(frozen=True)
class DemoConfig:
    """Where the page is served and what it shows (the model is a :class:`resnext.bulk.engine.ModelSpec`)."""

    host: str = host_option()
    port: int = port_option(7860)
    triton_url: str | None = option(
        None,
        metavar="HOST:PORT",
        help="classify on a running `resnext serve` (HTTP endpoint); Grad-CAM still runs in-process from --weights",
    )
    explain: bool = option(True, flags=("--no-explain",), help="hide Grad-CAM heat-maps (faster on small CPUs)")

    def __post_init__(self) -> None:
        check_options(self)


def create_demo_model(
    arch: str | None = None,
    *,
    weights: Any = "DEFAULT",
    model_file: str | None = None,
    backend: str | None = None,
    device: str = "auto",
    precision: str | None = None,
    triton_url: str | None = None,
    explain: bool = True,
    calibration_dir: str | None = None,
) -> DemoModel:
    """The demo's model from the usual source arguments (``backend`` None/"auto": as ``resnext classify`` picks);
    ``triton_url`` classifies on a running ``resnext serve`` (its model ``arch``), with explanations from the
    in-process eager model of ``weights``. Grad-CAM always runs on the eager torch model."""
    if model_file is not None:
        predictor = Predictor.from_pretrained(
            arch, model_file=model_file, backend=backend, device=device, precision=precision
        )
        runtime = runtime_name(predictor.backend)
        description = f"{predictor.arch or 'model'} · {Path(model_file).name} · {runtime}"
        return DemoModel(predictor, explainer=None, description=description)
    from .model.sources import load_source

    source = load_source(weights, arch=arch)
    if triton_url:
        remote = TritonLogits(triton_url, source.arch)
        if remote.num_classes != source.num_classes:
            raise ResnextError(
                f"Triton's {source.arch} has {remote.num_classes} classes, the local weights "
                f"{source.num_classes}: give the --weights the server runs"
            )
        predictor = Predictor(
            remote, transforms=source.transforms, categories=source.categories, arch=source.arch, model=source.model
        )
        local = Predictor.from_source(source, backend="torch", device=device)
        where = f"Triton at {triton_url}"
    else:
        predictor = local = Predictor.from_source(
            source, backend=backend, device=device, precision=precision, calibration_dir=calibration_dir
        )
        where = f"{runtime_name(predictor.backend)} on {predictor.backend.device}"
    description = f"{source.arch} · weights: {Path(str(source.weights)).name} · {where}"
    return DemoModel(
        predictor, explainer=local if explain and local.model is not None else None, description=description
    )
