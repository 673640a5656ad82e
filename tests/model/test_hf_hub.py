"""``hf-hub:`` sources (resnext.model.hf_hub) through the real huggingface_hub client and a loopback Hub
(tests/_hf_hub.py): the cache, offline mode, revisions, hashes, size limits and the deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _hf_hub import commit_of
from _serve_util import stop_process
from conftest import SAMPLES, cli_env, closed_port, randomize_bn
from test_hf import export, top5

from resnext import create_model, load_source
from resnext.cli import main
from resnext.errors import WeightsError


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def second_folder(tmp_path_factory) -> Path:
    """Other weights for a second revision: a 3-class resnext_test."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("v2") / "v2.pth"
    torch.save(randomize_bn(create_model("resnext_test", num_classes=3), seed=7).state_dict(), path)
    return export(path, path.parent / "v2", "--format", "hf")


def test_hf_hub_downloads_then_reads_the_cache_with_the_server_stopped(
    loopback_hub, tiny_folder, small_checkpoint, monkeypatch
) -> None:
    hub = loopback_hub({"me/tiny": {"main": folder_files(tiny_folder)}})
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    expected = create_model("resnext_test", weights=str(small_checkpoint)).state_dict()
    source = load_source("hf-hub:me/tiny")
    assert source.arch == "resnext_test" and source.weights == "hf-hub:me/tiny"
    got = source.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    fetched = [(method, path) for method, path, _ in hub.state.requests]
    assert ("GET", "/me/tiny/resolve/main/model.safetensors") in fetched
    assert ("GET", "/me/tiny/resolve/main/config.json") in fetched
    heads = {auth for method, _, auth in hub.state.requests if method == "HEAD"}
    assert heads == {"Bearer hf_test_token"}  # HF_TOKEN went along with every metadata request
    cached = list((Path(os.environ["HF_HUB_CACHE"]) / "models--me--tiny" / "blobs").iterdir())
    assert len(cached) == 2

    hub.close()  # no server: the cache answers (huggingface_hub falls back to it when the Hub cannot be reached)
    again = load_source("hf-hub:me/tiny").model.state_dict()
    assert all(torch.equal(again[k], v) for k, v in expected.items())


def test_hf_hub_offline_mode_uses_the_cache_only(loopback_hub, tiny_folder, monkeypatch) -> None:
    import huggingface_hub.constants

    hub = loopback_hub({"me/tiny": {"main": folder_files(tiny_folder)}})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="could not get model.safetensors of hf-hub:me/tiny"):
        load_source("hf-hub:me/tiny")
    assert hub.state.requests == []  # offline: not even a HEAD
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    load_source("hf-hub:me/tiny")
    count = len(hub.state.requests)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert load_source("hf-hub:me/tiny").arch == "resnext_test"
    assert len(hub.state.requests) == count


def test_hf_hub_revision_is_pinned(loopback_hub, tiny_folder, second_folder) -> None:

    loopback_hub({"me/tiny": {"main": folder_files(tiny_folder), "v2": folder_files(second_folder)}})
    assert load_source("hf-hub:me/tiny").num_classes == 1000
    assert load_source("hf-hub:me/tiny@v2").num_classes == 3
    assert load_source(f"hf-hub:me/tiny@{commit_of('me/tiny', 'v2')}").num_classes == 3
    with pytest.raises(WeightsError, match="RevisionNotFoundError"):
        load_source("hf-hub:me/tiny@v9")


def test_hf_hub_missing_repo_or_file_is_one_line(loopback_hub, tiny_folder, capsys) -> None:
    files = folder_files(tiny_folder)
    loopback_hub({"me/tiny": {"main": files}, "me/empty": {"main": {"config.json": files["config.json"]}}})
    for weights, wanted in (
        ("hf-hub:me/empty", "has no model.safetensors or pytorch_model.bin"),
        ("hf-hub:me/nothing", "RepositoryNotFoundError"),
        ("hf-hub:not a repo", "is not a Hub model id"),
    ):
        assert main(["classify", str(SAMPLES[0]), "--weights", weights]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and wanted in err, err


def test_hf_hub_file_with_the_wrong_hash_is_refused_and_not_kept(loopback_hub, tiny_folder) -> None:
    loopback_hub({"me/tiny": {"main": folder_files(tiny_folder)}}, bad_hash={"model.safetensors"})
    with pytest.raises(WeightsError, match="does not match the hash the Hub announced"):
        load_source("hf-hub:me/tiny")
    blobs = Path(os.environ["HF_HUB_CACHE"]) / "models--me--tiny" / "blobs"
    assert not [p for p in blobs.iterdir() if p.stat().st_size > 1_000_000]  # the damaged weights are gone
    snapshot = next((Path(os.environ["HF_HUB_CACHE"]) / "models--me--tiny" / "snapshots").iterdir())
    assert not (snapshot / "model.safetensors").exists()


@pytest.mark.slow
def test_cli_classifies_from_hf_hub_then_offline_from_the_cache(loopback_hub, tiny_folder, small_checkpoint, capsys):
    """The real environment variables (HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE) in fresh processes."""
    hub = loopback_hub({"me/tiny": {"main": folder_files(tiny_folder)}})

    def classify(weights: str, **env: str) -> str:
        command = [sys.executable, "-m", "resnext.cli", "classify", str(SAMPLES[0]), "--weights", weights]
        done = subprocess.run(command, env=cli_env(env), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    expected = top5(capsys, small_checkpoint)
    assert classify("hf-hub:me/tiny") == expected
    hub.close()
    assert classify("hf-hub:me/tiny", HF_HUB_OFFLINE="1") == expected


def test_hf_hub_file_declared_over_the_download_limit_is_refused_before_the_download(loopback_hub, tiny_folder):
    from resnext.download import MAX_WEIGHTS_BYTES

    too_big = {"model.safetensors": MAX_WEIGHTS_BYTES + 1}
    hub = loopback_hub({"me/tiny": {"main": folder_files(tiny_folder)}}, declared_size=too_big)
    with pytest.raises(WeightsError, match=f"model.safetensors of hf-hub:me/tiny is {MAX_WEIGHTS_BYTES + 1:,} bytes"):
        load_source("hf-hub:me/tiny")
    files = [(method, path) for method, path, _ in hub.state.requests if "/resolve/" in path]
    assert files == [("HEAD", "/me/tiny/resolve/main/model.safetensors")]  # its metadata only, never its body


def test_hf_hub_download_from_a_trickling_server_stops_at_the_deadline(loopback_hub, tiny_folder, monkeypatch):
    """huggingface_hub's own time-outs are per read: a byte every 50 ms never trips them; our deadline does."""
    import threading
    import time

    hub = loopback_hub({"me/tiny": {"main": folder_files(tiny_folder)}}, trickle={"model.safetensors"})
    monkeypatch.setenv("RESNEXT_DOWNLOAD_DEADLINE", "1")
    safety = threading.Timer(10, hub.state.stopped.set)  # without a deadline the whole file would take days
    safety.start()
    try:
        start = time.monotonic()
        with pytest.raises(WeightsError, match=r"hf-hub:me/tiny: download did not finish within 1 s"):
            load_source("hf-hub:me/tiny")
        assert time.monotonic() - start < 5
    finally:
        safety.cancel()
        hub.state.stopped.set()  # the abandoned download ends with its connection
    for worker in [t for t in threading.enumerate() if t.name == "resnext fetch hf-hub:me/tiny"]:
        worker.join(timeout=30)
        assert not worker.is_alive()
    snapshots = Path(os.environ["HF_HUB_CACHE"]) / "models--me--tiny" / "snapshots"
    assert not list(snapshots.glob("*/model.safetensors"))  # no partial file became a cache entry


@pytest.mark.slow
def test_demo_downloads_hf_hub_weights_before_gradio_switches_the_hub_offline(loopback_hub, tiny_folder, tmp_path):
    """``resnext demo --weights hf-hub:...`` with an empty cache: importing Gradio sets HF_HUB_OFFLINE, so the
    weights must be fetched first. A fresh process, as huggingface_hub reads that variable when first imported."""
    import time

    pytest.importorskip("gradio")
    hub = loopback_hub({"me/tiny": {"main": folder_files(tiny_folder)}})
    port, log = closed_port(), tmp_path / "demo.log"
    command = [sys.executable, "-m", "resnext.cli", "demo", "--weights", "hf-hub:me/tiny", "--port", str(port)]
    command += ["--backend", "torch", "--device", "cpu", "--no-explain"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=cli_env({"GRADIO_TEMP_DIR": str(tmp_path)}), stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 120
            while b"serving the demo" not in log.read_bytes():  # printed once the model is loaded
                assert process.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the demo did not load its model within 120 s"
                time.sleep(0.2)
        finally:
            stop_process(process)
    assert ("GET", "/me/tiny/resolve/main/model.safetensors") in [(m, p) for m, p, _ in hub.state.requests]
