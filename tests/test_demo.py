"""The web demo: a real Gradio server on 127.0.0.1 driven by headless Chromium (Debian's package, through
Playwright), its handlers on hostile uploads, and the Space entry point ``demo/app.py`` in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _serve_util import stop_process
from conftest import REPO_ROOT, SAMPLES, closed_port
from PIL import Image

from resnext.inference.predict import Predictor

pytest.importorskip("gradio")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
UPLOAD_LIMIT = 1024 * 1024  # the test server's max_file_size


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def gradio_temp(tmp_path_factory):
    """Gradio's upload folder for this module (Gradio reads the variable when it is first imported)."""
    folder = tmp_path_factory.mktemp("gradio-uploads")
    saved = dict(os.environ)  # resnext.demo sets Gradio's offline variables; later test modules get them back
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    yield folder
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def served(gradio_temp, small_checkpoint):
    """The demo page for a random-weights resnext_test checkpoint, served in this process on a free port."""
    from resnext.demo import build_app, create_demo_model, launch

    model = create_demo_model("resnext_test", weights=str(small_checkpoint), backend="torch")
    app = build_app(model)
    port = closed_port()
    try:
        url = launch(app, host="127.0.0.1", port=port, block=False, quiet=True, max_file_size=UPLOAD_LIMIT)
        yield url, model, port
    finally:
        app.close()
    assert not port_open(port), "the demo server is still listening after close()"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    manager = sync_api.sync_playwright().start()
    try:
        try:
            chromium = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        except Exception as exc:  # noqa: BLE001 - no display libraries, sandbox refused, ...
            pytest.skip(f"headless Chromium cannot start here: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()
    finally:
        manager.stop()


@pytest.fixture
def page(browser, served):
    url = served[0]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    outside: list[str] = []
    page.on(
        "request",
        lambda r: (
            outside.append(r.url)
            if not r.url.startswith((url.rstrip("/"), "http://127.0.0.1", "data:", "blob:"))
            else None
        ),
    )
    page.goto(url)
    page.wait_for_selector("#rx-hint")
    yield page
    context.close()
    assert outside == [], f"the page reached outside the machine: {outside}"


def upload(page, path: Path) -> None:
    page.locator("#rx-input input[type=file]").set_input_files(str(path))


SHOWN_JS = """() => Array.from(document.querySelectorAll('#rx-predictions .rx-row')).map(
    r => [r.querySelector('.rx-name').innerText, r.querySelector('.rx-pct').innerText])"""


def wait_until_shown(page, expected: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Wait until the page shows ``expected`` (a previous image's bars may still be there), then return what is
    shown; on timeout the assertion that follows reports the difference."""
    try:
        page.wait_for_function(
            f"expected => JSON.stringify(({SHOWN_JS})()) === JSON.stringify(expected)",
            arg=[list(e) for e in expected],
            timeout=60_000,
        )
    except Exception:  # noqa: BLE001 - fall through to the comparison, which says what differs
        pass
    return [tuple(row) for row in page.evaluate(SHOWN_JS)]


def expected_predictions(checkpoint: Path, sample: Path) -> list[tuple[str, str]]:
    """In-process classification of the same image with the same weights: the independent reference."""
    predictor = Predictor.from_pretrained("resnext_test", weights=str(checkpoint), backend="torch")
    return [(p.label, f"{p.probability * 100:.1f}%") for p in predictor.classify([sample], topk=5)[0]]


def heatmap_width(page) -> int:
    image = page.locator("#rx-heatmap img").first
    image.wait_for()
    page.wait_for_function("document.querySelector('#rx-heatmap img').naturalWidth > 0")
    return int(image.evaluate("img => img.naturalWidth"))


def test_page_classifies_an_upload_like_classify(page, served, small_checkpoint, tmp_path):
    upload(page, SAMPLES[1])
    expected = expected_predictions(small_checkpoint, SAMPLES[1])
    shown = wait_until_shown(page, expected)
    assert shown == expected and len(shown) == 5
    percentages = [float(pct.rstrip("%")) for _, pct in shown]
    assert percentages == sorted(percentages, reverse=True)
    assert "ms" in page.locator("#rx-time").inner_text()
    assert heatmap_width(page) == 224
    page.screenshot(path=str(tmp_path / "demo-sample.png"), full_page=True)
    assert (tmp_path / "demo-sample.png").stat().st_size > 10_000
    # another class of the top 5 gives another heat-map
    first = page.locator("#rx-heatmap img").first.get_attribute("src")
    page.locator("#rx-target label").nth(2).click()
    page.wait_for_function(
        "src => document.querySelector('#rx-heatmap img') && document.querySelector('#rx-heatmap img').src !== src",
        arg=first,
    )


def test_sample_click_then_next_image(page, small_checkpoint):
    page.locator(".gallery button, button.gallery-item").nth(2).click()  # the third bundled sample
    expected = expected_predictions(small_checkpoint, SAMPLES[2])
    assert wait_until_shown(page, expected) == expected
    upload(page, SAMPLES[0])  # several images in a row, no reload
    expected = expected_predictions(small_checkpoint, SAMPLES[0])
    assert wait_until_shown(page, expected) == expected


def test_bad_upload_shows_error_then_good_upload_works(page, small_checkpoint, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is a text file, not a picture\n" * 10)
    upload(page, bad)
    error = page.wait_for_selector("#rx-error")
    assert "notes.png: not an image file" in error.inner_text()
    assert str(tmp_path) not in error.inner_text()  # named by the user's file name, not a server path
    assert not page.locator("#rx-heatmap img").count() or not page.locator("#rx-heatmap").is_visible()
    page.screenshot(path=str(tmp_path / "demo-error.png"), full_page=True)
    upload(page, SAMPLES[0])
    expected = expected_predictions(small_checkpoint, SAMPLES[0])
    assert wait_until_shown(page, expected) == expected
    assert page.locator("#rx-error").count() == 0


def test_oversized_file_is_refused_and_the_server_keeps_serving(page, small_checkpoint, tmp_path, gradio_temp):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(UPLOAD_LIMIT + 1000))
    before = {p.name for p in gradio_temp.rglob("*")}
    upload(page, big)
    page.wait_for_function("document.body.innerText.toLowerCase().includes('exceed')")
    assert not any(
        p.stat().st_size > UPLOAD_LIMIT for p in gradio_temp.rglob("*") if p.is_file() and p.name not in before
    )
    upload(page, SAMPLES[2])
    expected = expected_predictions(small_checkpoint, SAMPLES[2])
    assert wait_until_shown(page, expected) == expected


def hostile_uploads(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected words of the message)."""
    data = SAMPLES[0].read_bytes()
    files = {
        "empty": (b"", "not an image"),
        "truncated": (data[: len(data) // 3], "truncated"),
        "text": (b"hello", "not an image"),
    }
    out = {}
    for name, (body, words) in files.items():
        (folder / f"{name}.jpg").write_bytes(body)
        out[name] = (folder / f"{name}.jpg", words)
    huge = folder / "huge.png"  # 100 megapixels, a few hundred kB compressed
    Image.new("L", (10_000, 10_000)).save(huge, optimize=False, compress_level=9)
    out["100 megapixels"] = (huge, "exceeds the limit")
    return out


def test_handler_turns_every_bad_upload_into_one_line(served, tmp_path):
    """The page's own handler (what the server calls) on each kind of bad upload; the next call still works."""
    import gradio as gr

    from resnext.demo import Page

    _, model, _ = served
    handler = Page(model, gr)
    for name, (path, words) in hostile_uploads(tmp_path).items():
        html_text, radio, heatmap = handler.on_image(str(path))
        assert 'id="rx-error"' in html_text and words in html_text, name
        assert str(tmp_path) not in html_text and heatmap["visible"] is False, name
        good, _, heat = handler.on_image(str(SAMPLES[0]))
        assert good.count('class="rx-row"') == 5 and heat["value"] is not None, name
    empty, _, _ = handler.on_image(None)
    assert 'id="rx-hint"' in empty
    import resnext.demo

    assert not Path(resnext.demo.__file__).with_suffix(".pyi").exists()  # nothing written into the package


@pytest.mark.slow
def test_space_app_answers_a_request(tmp_path, small_checkpoint):
    """``python demo/app.py`` as a Space runs it, answering one classification through gradio_client."""
    from gradio_client import Client, handle_file

    port = closed_port()
    env = {
        **os.environ,
        "RESNEXT_DEMO_ARCH": "resnext_test",
        "RESNEXT_DEMO_WEIGHTS": str(small_checkpoint),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(tmp_path),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = open(tmp_path / "app.log", "wb")  # noqa: SIM115 - the server's output, closed in the finally below
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "demo" / "app.py")], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):
            assert process.poll() is None, (tmp_path / "app.log").read_text()
            assert time.monotonic() < deadline, "demo/app.py did not start within 120 s"
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
            assert reply.status == 200 and b"ResNeXt image classifier" in reply.read()
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        html_text, radio, heatmap = client.predict(handle_file(str(SAMPLES[0])), api_name="/classify")
        expected = expected_predictions(small_checkpoint, SAMPLES[0])
        for label, pct in expected:
            assert label in html_text and pct in html_text
        assert heatmap is not None
    finally:
        stop_process(process)
        log.close()
    assert not port_open(port)


def test_demo_cli_reports_a_taken_port(capsys):
    """One line, exit 2, when the port is taken (the page is never half-started)."""
    from resnext.cli import main

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        code = main(["demo", "--arch", "resnext_test", "--weights", "random", "--port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot serve on 127.0.0.1" in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_classifies_through_triton(small_checkpoint):
    """``--triton-url``: logits from a real Triton server (``resnext serve``), ranked here; Grad-CAM in-process."""
    pytest.importorskip("pytriton")
    from resnext.demo import create_demo_model
    from resnext.serve.server import ResnextServer, ServeConfig

    predictor = Predictor.from_pretrained("resnext_test", weights=str(small_checkpoint), backend="torch")
    sockets = [socket.socket() for _ in range(3)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    config = ServeConfig(http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])
    with ResnextServer(predictor, config) as server:
        model = create_demo_model("resnext_test", weights=str(small_checkpoint), triton_url=server.http_url)
        assert model.predictor.model is not None and model.explainer is not None
        assert "Triton" in model.description
        analysis = model.analyse(str(SAMPLES[1]))
        expected = predictor.classify([SAMPLES[1]], topk=5)[0]
        assert [p.index for p in analysis.predictions] == [p.index for p in expected]
        for got, want in zip(analysis.predictions, expected):
            assert got.probability == pytest.approx(want.probability, abs=1e-5)
        assert analysis.overlay is not None and analysis.overlay.size == (224, 224)
    assert not any(port_open(p) for p in ports)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_demo_removes_its_uploads_on_sigterm_and_sweeps_dead_demos(tmp_path, stop):
    """SIGTERM (how services and containers stop) and Ctrl-C clean up and exit 0, even sent the moment the port
    opens (Gradio is still starting); a killed demo's folder is swept by the next start, while a running demo's
    folder is left alone."""
    from resnext.util import _alive

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    assert not _alive(dead_pid)
    stale = tmp_path / f"resnext-demo-{dead_pid}-x1"
    (stale / "upload").mkdir(parents=True)
    (stale / "upload" / "photo.jpg").write_bytes(b"left behind by a killed demo")
    live = tmp_path / f"resnext-demo-{os.getpid()}-x2"  # this process runs: its folder is not ours to remove
    live.mkdir()
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    env.update(TMPDIR=str(tmp_path), RESNEXT_CACHE=str(tmp_path / "cache"))
    args = ["demo", "--arch", "resnext_test", "--weights", "random", "--backend", "torch", "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "resnext", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "resnext demo did not start within 120 s"
            time.sleep(0.3)
        own = list(tmp_path.glob(f"resnext-demo-{process.pid}-*"))
        assert len(own) == 1 and own[0].is_dir()
        (own[0] / "upload.png").write_bytes(b"an upload")
        assert not stale.exists() and live.is_dir()
        process.send_signal(stop)
        assert process.wait(timeout=60) == 0, process.stdout.read().decode() if process.stdout else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert not own[0].exists(), "the upload folder outlived a SIGTERM"
    assert live.is_dir() and not port_open(port)
