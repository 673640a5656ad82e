"""Weights that travel (resnext.model.hf): safetensors files, timm's Hub folder layout, hf-hub: sources.

Judges: timm's own loader (``timm.create_model("local-dir:...")``) and timm's own writer (``save_for_hf``), the
``safetensors`` library reading our headers, and the real ``huggingface_hub`` client against a loopback Hub
(tests/_hf_hub.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _serve_util import stop_process
from conftest import NGC_RESNEXT_FILE, SAMPLES, cli_env, closed_port, place_file, randomize_bn

from resnext import create_model, load_source
from resnext.cli import main
from resnext.errors import WeightsError
from resnext.labels import imagenet_wnids

safetensors = pytest.importorskip("safetensors")


def export(src: Path | str, out: Path, *flags: str) -> Path:
    assert main(["export-weights", str(src), str(out), *flags]) == 0
    return out


def top5(capsys, weights: Path | str, *flags: str) -> str:
    capsys.readouterr()
    assert main(["classify", str(SAMPLES[0]), "--weights", str(weights), "--top", "5", *flags]) == 0
    return capsys.readouterr().out


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".resnext-tmp-")]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, small_checkpoint) -> Path:
    """``resnext export-weights small_checkpoint DIR --format hf`` (random-weights resnext_test, 1000 classes)."""
    return export(small_checkpoint, tmp_path_factory.mktemp("hf") / "tiny", "--format", "hf")


# ---------------------------------------------------------------------------------------------------------------
# Writing: timm loads what we write


def test_hf_folder_is_timms_layout_and_timm_gives_the_same_logits(tiny_folder, small_checkpoint) -> None:
    timm = pytest.importorskip("timm")
    assert sorted(p.name for p in tiny_folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tiny_folder / "config.json").read_text())
    assert (config["architecture"], config["model_args"]) == ("resnext50_32x4d", {"layers": [1, 1, 1, 1]})
    assert (config["num_classes"], config["num_features"], config["label_names"]) == (1000, 2048, imagenet_wnids())
    cfg = config["pretrained_cfg"]
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == ([3, 224, 224], 224 / 256, "bilinear")
    assert (cfg["mean"], cfg["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

    theirs = timm.create_model(f"local-dir:{tiny_folder}", pretrained=True)
    ours = create_model("resnext_test", weights=str(small_checkpoint))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = logits(ours, x)
    assert torch.allclose(logits(theirs, x), expected, rtol=0, atol=1e-5 * max(1.0, expected.abs().max().item()))
    # timm's data config is ours: the same preprocessing numbers
    data = timm.data.resolve_data_config({}, model=theirs)
    assert (tuple(data["input_size"]), data["interpolation"], data["crop_pct"]) == ((3, 224, 224), "bilinear", 0.875)


def test_model_card_says_what_is_known_and_how_to_load(tiny_folder) -> None:
    card = (tiny_folder / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: timm" in front and "- imagenet-1k" in front and "license:" not in front  # random weights
    for snippet in ("--weights hf-hub:", 'load_source("hf-hub:', 'timm.create_model("hf-hub:', "hf upload"):
        assert snippet in card, snippet


@pytest.mark.slow
def test_published_resnext101_folder_gives_timm_the_logits_of_torchvision(tv_reference, offline_cache, tmp_path):
    """The published architecture by name (its NGC file in the cache), timm out; torchvision is the reference."""
    timm = pytest.importorskip("timm")
    reference, path = tv_reference
    place_file(path, offline_cache / NGC_RESNEXT_FILE)
    out = export("DEFAULT", tmp_path / "r101", "--format", "hf")
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    expected = logits(reference, x)
    diff = (logits(theirs, x) - expected).abs().max().item()
    assert diff <= 1e-5 * max(1.0, expected.abs().max().item()), diff
    front = (out / "README.md").read_text().split("---")[1]
    assert "license: apache-2.0" in front and "- accuracy" in front and "- imagenet-1k" in front
    assert "top-1 80.43%" in (out / "README.md").read_text()


@pytest.mark.slow
def test_resnet50_folder_loads_in_timm_and_in_the_torch_hub_entry_point(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    import hubconf

    torch.manual_seed(5)
    model = randomize_bn(create_model("resnet50"), seed=5)
    torch.save(model.state_dict(), tmp_path / "r50.pth")
    out = export(tmp_path / "r50.pth", tmp_path / "r50", "--format", "hf")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = logits(model, x)
    tolerance = 1e-5 * max(1.0, expected.abs().max().item())
    assert (logits(timm.create_model(f"local-dir:{out}", pretrained=True), x) - expected).abs().max() <= tolerance
    assert torch.equal(logits(hubconf.nvidia_resnet50(pretrained_from_file=str(out)), x), expected)


def test_an_architecture_timm_lacks_is_written_with_a_warning(tmp_path, caplog) -> None:
    from resnext.model.hf import save_hf_folder
    from resnext.transforms import eval_preset

    state = {"fc.weight": torch.zeros(3, 8), "fc.bias": torch.zeros(3)}
    meta = {"arch": "se_resnext101_32x4d", "classes": ["a", "b", "c"], "image_size": 224}
    meta["preprocessing"] = eval_preset(224).config()
    with caplog.at_level("WARNING", logger="resnext"):
        save_hf_folder(state, tmp_path / "se", meta)
    assert "timm.create_model cannot build it" in caplog.text
    card = (tmp_path / "se" / "README.md").read_text()
    assert "library_name: resnext" in card and "timm.create_model" not in card
    assert json.loads((tmp_path / "se" / "config.json").read_text())["architecture"] == "se_resnext101_32x4d"


def test_safetensors_header_carries_arch_classes_size_and_preprocessing(tmp_path) -> None:
    from safetensors import safe_open

    from resnext.model.sources import with_metadata

    torch.manual_seed(3)
    trained = tmp_path / "trained.pth"
    model = randomize_bn(create_model("resnext_test", num_classes=3))
    torch.save(with_metadata(model.state_dict(), arch="resnext_test", classes=["a", "b", "c"], image_size=64), trained)
    out = export(trained, tmp_path / "w.safetensors")
    with safe_open(str(out), framework="pt") as f:  # read by the library alone, not by our reader
        header = f.metadata()
        assert torch.equal(f.get_tensor("fc.weight"), model.state_dict()["fc.weight"])
    assert (header["arch"], json.loads(header["classes"]), json.loads(header["image_size"])) == (
        "resnext_test",
        ["a", "b", "c"],
        64,
    )
    assert json.loads(header["preprocessing"])["resize_size"] == 96
    source = load_source(str(out))
    assert (source.arch, source.categories, source.image_size) == ("resnext_test", ["a", "b", "c"], 64)
    assert source.transforms.resize_size == 96


def test_an_existing_output_is_refused_unless_overwrite(tmp_path, small_checkpoint, capsys) -> None:
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"mine")
    assert main(["export-weights", str(small_checkpoint), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and out.read_bytes() == b"mine"

    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert main(["export-weights", str(small_checkpoint), str(folder), "--format", "hf"]) == 2
    assert [p.name for p in folder.iterdir()] == [".gitattributes"]
    export(small_checkpoint, folder, "--format", "hf", "--overwrite")
    assert sorted(p.name for p in folder.iterdir()) == [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert (folder / ".gitattributes").read_text() == "*.safetensors filter=lfs\n"  # not ours: untouched
    export(small_checkpoint, out, "--overwrite")
    assert load_source(str(out)).arch == "resnext_test" and no_temporaries(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Reading: every form gives the same model


def test_classify_gives_the_same_top5_from_pth_folder_and_safetensors(tiny_folder, small_checkpoint, capsys) -> None:
    expected = top5(capsys, small_checkpoint)
    assert "%" in expected
    for weights in (tiny_folder, tiny_folder / "model.safetensors"):
        assert top5(capsys, weights) == expected, weights


def test_create_model_reads_a_folder_and_a_safetensors_file(tiny_folder, small_checkpoint) -> None:
    expected = create_model("resnext_test", weights=str(small_checkpoint)).state_dict()
    for weights in (tiny_folder, tiny_folder / "model.safetensors"):
        got = create_model("resnext_test", weights=str(weights)).state_dict()
        assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_safetensors_sources_never_unpickle(tiny_folder, monkeypatch) -> None:
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert load_source(str(tiny_folder)).arch == "resnext_test"


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pickle"])
def test_a_folder_written_by_timm_loads_with_its_preprocessing(tmp_path, safe) -> None:
    timm = pytest.importorskip("timm")
    theirs = randomize_bn(timm.create_model("resnext50_32x4d", layers=[1, 1, 1, 1], num_classes=5))
    timm.models.save_for_hf(theirs, str(tmp_path / "timm"), safe_serialization=safe)
    source = load_source(str(tmp_path / "timm"))
    assert (source.arch, source.num_classes) == ("resnext_test", 5)
    # timm's own data config for that model: bicubic, crop_pct 0.95
    assert (source.transforms.interpolation.value, source.transforms.resize_size) == ("bicubic", round(224 / 0.95))
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(logits(source.model, x), logits(theirs, x), rtol=0, atol=1e-5)


def raw_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def hostile_files(tiny_folder: Path) -> dict[str, bytes]:
    valid = (tiny_folder / "model.safetensors").read_bytes()
    f32 = lambda shape, start, end: {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}  # noqa: E731
    return {
        "huge-shape": raw_safetensors({"fc.weight": f32([10**12, 2048], 0, 16)}, bytes(16)),
        "overlapping": raw_safetensors({"a": f32([4], 0, 16), "b": f32([4], 8, 24)}, bytes(24)),
        "past-the-end": raw_safetensors({"a": f32([1024], 0, 4096)}, bytes(16)),
        "truncated": valid[: len(valid) // 2],
        "header-cut": valid[:4000],
    }


@pytest.mark.parametrize("case", ["huge-shape", "overlapping", "past-the-end", "truncated", "header-cut"])
def test_hostile_safetensors_are_refused_in_one_line(tiny_folder, tmp_path, capsys, case) -> None:
    bad = tmp_path / f"{case}.safetensors"
    bad.write_bytes(hostile_files(tiny_folder)[case])
    capsys.readouterr()
    assert main(["classify", str(SAMPLES[0]), "--weights", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err, err
    with pytest.raises(WeightsError):
        load_source(str(bad))


# ---------------------------------------------------------------------------------------------------------------
# hf-hub: through the real huggingface_hub client and a loopback Hub


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
    from _hf_hub import commit_of

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


def test_a_declared_shape_over_the_bound_is_refused_before_it_is_read(tiny_folder) -> None:
    from resnext.model.hf import read_safetensors

    with pytest.raises(WeightsError, match=r"declares shape \(\d+(, \d+)*\), over the bound"):
        read_safetensors(tiny_folder / "model.safetensors", max_elements=1000)


@pytest.mark.slow
def test_an_export_of_a_timm_folder_records_its_own_preprocessing(tmp_path) -> None:
    """An ONNX file made from timm weights (bicubic, crop_pct 0.95) says so in its metadata, not our default."""
    timm = pytest.importorskip("timm")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from resnext.export.driver import ExportConfig, export_model

    theirs = randomize_bn(timm.create_model("resnext50_32x4d", layers=[1, 1, 1, 1], num_classes=5))
    timm.models.save_for_hf(theirs, str(tmp_path / "timm"))
    source = load_source(str(tmp_path / "timm"))
    out = tmp_path / "timm.onnx"
    export_model(ExportConfig("onnx", str(out), weights=str(tmp_path / "timm")))
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["resnext"])
    assert meta["preprocessing"] == source.transforms.describe()
    assert "bicubic" in meta["preprocessing"] and f"resize shorter side to {round(224 / 0.95)}" in meta["preprocessing"]


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
