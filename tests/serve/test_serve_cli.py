"""``resnext serve`` as users run it: a process that prints its endpoints, answers, and stops on SIGTERM/SIGINT
without leaving a tritonserver behind; and the one-line error when the serve extra is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from _serve_util import alive, free_ports, triton_processes
from conftest import SAMPLES

from resnext.cli import main
from resnext.util import sweep_stale_temporaries


def test_serve_without_extra_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytriton", None)  # makes `import pytriton` fail, as when it is not installed
    assert main(["serve", "--arch", "resnext_test", "--weights", "random"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'resnext[serve]'" in err


def test_benchmark_serving_without_extra_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytriton", None)
    assert main(["benchmark", "serving", "--arch", "resnext_test"]) == 2
    assert "pip install 'resnext[serve]'" in capsys.readouterr().err


def test_client_without_server_is_one_line(capsys):
    pytest.importorskip("tritonclient.http")
    (port,) = free_ports(1)
    assert main(["client", str(SAMPLES[0]), "--url", f"127.0.0.1:{port}", "--timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Triton server answers" in err


def test_client_lists_inputs_as_classify_does_each_file_once(tmp_path, monkeypatch, capsys):
    """A file named alone and again inside its folder is sent once, like `classify` (no server needed: the
    client class is replaced by one that records what it is asked to classify)."""
    import shutil

    import resnext.serve.client as client_module
    from resnext.bulk.engine import list_inputs
    from resnext.inference.predict import ClassifyResult, Prediction

    folder = tmp_path / "photos"
    folder.mkdir()
    for sample in SAMPLES[:2]:
        shutil.copy(sample, folder / sample.name)
    asked: list[str] = []

    class RecordingClient:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def classify(self, sources, *, model=None, topk=5):
            for source in sources:
                asked.append(source)
                yield ClassifyResult(str(source), predictions=[Prediction(0, "x", 1.0)])

    monkeypatch.setattr(client_module, "TritonClient", RecordingClient)
    inputs = [str(folder / SAMPLES[0].name), str(folder)]
    assert main(["client", *inputs, "--json"]) == 0
    assert sorted(asked) == sorted(str(folder / s.name) for s in SAMPLES[:2]), asked
    assert asked == list_inputs(inputs)  # the same listing, in the same order, as classify
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_serve_process_stops_cleanly(sig, tmp_path):
    """SIGTERM: a clean stop (exit 0); SIGINT goes to the whole process group, as Ctrl-C in a terminal does (so
    tritonserver gets it too); SIGKILL: the kernel's parent-death signal still ends tritonserver."""
    pytest.importorskip("pytriton")
    from resnext.bench.serving import serve_flags
    from resnext.bulk.engine import ModelSpec
    from resnext.serve.tritonserver import wait_ready

    http, grpc, metrics = free_ports(3)
    out = tmp_path / "out.txt"
    model = ModelSpec("resnext_test", "random", "torch", image_size=32)  # the flags benchmark serving writes
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    with open(out, "w") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "resnext", "serve", *serve_flags(model), *ports],
            stdout=stdout,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    children: list[int] = []
    try:
        wait_ready(f"127.0.0.1:{http}", 120, process, models=["resnext_test", "resnext_test_image"])
        deadline = time.monotonic() + 60  # Triton answers before serve has warmed the models and printed its summary
        while "curl" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        children = list(triton_processes(process.pid))
        assert any(triton_processes(process.pid).values()), "tritonserver should run below resnext serve"
        assert main(["client", str(SAMPLES[0]), "--url", f"127.0.0.1:{http}", "--topk", "2"]) == 0
        if sig == signal.SIGINT:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        assert process.wait(60) == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    deadline = time.monotonic() + 30  # after SIGKILL, Triton's own exit timeout (10 s) applies
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(children), f"left behind: {children}"
    text = out.read_text()
    assert f"http://127.0.0.1:{http}" in text and "curl" in text and "resnext_test_image/infer" in text
    left = list(Path(tempfile.gettempdir()).glob(f"resnext-serve-{process.pid}-*"))
    if sig != signal.SIGKILL:
        assert "stopped" in process.stderr.read().decode()
        assert not left
    else:  # a killed server leaves its workspace; the next start (or this sweep) removes it
        assert left
        sweep_stale_temporaries(tempfile.gettempdir(), prefix="resnext-serve-")
        assert not any(p.exists() for p in left)


@pytest.mark.parametrize("name", ["../x", "/tmp/x", ".."])
def test_serve_refuses_a_model_name_that_is_not_one_folder(capsys, name):
    pytest.importorskip("pytriton")
    assert main(["serve", "--arch", "resnext_test", "--weights", "random", "--name", name]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a model name" in err
