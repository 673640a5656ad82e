"""``--backend auto``: an exact runtime when one is installed, exported once into the cache, reused, equal to eager
fp32 within 1e-4; a damaged entry is rebuilt; torch without runtimes; bf16/int8 only on request, with agreement.
CPU features: none required (exact runtimes are fp32 everywhere; bf16 falls back to fp32 without native bf16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import small_model_flags

from resnext import auto
from resnext.cli import main
from resnext.images import sample_images
from resnext.models import create_model
from resnext.predict import Predictor
from resnext.runtimes import RUNTIMES, Runtime, TorchBackend
from resnext.sources import source_from_model

SIZE = 32


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty auto cache; nothing pins the choice (the suite may pin RESNEXT_AUTO=torch elsewhere)."""
    monkeypatch.setenv(auto.CACHE_ENV, str(tmp_path / "auto-cache"))
    monkeypatch.delenv(auto.PIN_ENV, raising=False)
    return tmp_path / "auto-cache"


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(3)
    model = create_model("resnext_test").eval()
    return source_from_model(model, arch="resnext_test", image_size=SIZE)


def _inputs(predictor: Predictor) -> torch.Tensor:
    photos = torch.stack([predictor.preprocess(p) for p in sample_images()])
    return torch.cat([photos, torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))])


def _assert_equals_eager(predictor: Predictor, model: torch.nn.Module) -> None:
    x = _inputs(predictor)
    with torch.no_grad():
        expected = model(x)
    got = predictor.backend(x)
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))


@pytest.mark.slow  # two exports with parity checks: ~25 s on 2 quiet cores
def test_auto_exports_once_reuses_matches_eager_and_rebuilds_damage(cache, source):
    exact = [name for name in auto.EXACT_ORDER if RUNTIMES[name].installed()]
    if not exact:
        pytest.skip("neither onnxruntime nor openvino is installed")
    first = Predictor.from_source(source)  # the default backend is auto
    choice = first.backend.auto
    assert choice.runtime == exact[0] and RUNTIMES[choice.runtime].exact and not choice.reused
    assert choice.precision == "fp32" and choice.agreement is None  # exact: nothing approximate to report
    entries = list(cache.iterdir())
    assert len(entries) == 1 and (entries[0] / auto.MANIFEST).is_file()  # no staging folder left behind
    model_file = Path(choice.path)
    assert model_file.parent == entries[0]
    written = {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()}
    _assert_equals_eager(first, source.model)

    second = Predictor.from_source(source)
    assert second.backend.auto.reused and second.backend.auto.path == choice.path
    assert {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()} == written  # reused, not rewritten
    _assert_equals_eager(second, source.model)

    weights_file = next(p for p in entries[0].iterdir() if p.suffix in (".bin", ".onnx"))
    data = bytearray(weights_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    weights_file.write_bytes(bytes(data))
    rebuilt = Predictor.from_source(source)
    assert not rebuilt.backend.auto.reused and list(cache.iterdir()) == entries
    _assert_equals_eager(rebuilt, source.model)
    manifest = json.loads((entries[0] / auto.MANIFEST).read_text())
    assert manifest["files"][weights_file.name] == auto.file_sha256(weights_file)


def test_cache_key_follows_weights_size_runtime_and_precision(source):
    runtime = RUNTIMES["onnxruntime"]
    key = auto.cache_key(source.model, arch="resnext_test", image_size=SIZE, runtime=runtime, precision="fp32")
    other = create_model("resnext_test")
    assert key == auto.cache_key(source.model, arch="resnext_test", image_size=SIZE, runtime=runtime, precision="fp32")
    assert (
        len(
            {
                key,
                auto.cache_key(other, arch="resnext_test", image_size=SIZE, runtime=runtime, precision="fp32"),
                auto.cache_key(source.model, arch="resnext_test", image_size=64, runtime=runtime, precision="fp32"),
                auto.cache_key(
                    source.model, arch="resnext_test", image_size=SIZE, runtime=RUNTIMES["openvino"], precision="fp32"
                ),
                auto.cache_key(source.model, arch="resnext_test", image_size=SIZE, runtime=runtime, precision="int8"),
            }
        )
        == 5
    )


def test_auto_runs_torch_without_runtimes_and_when_pinned(cache, source, monkeypatch):
    monkeypatch.setattr(Runtime, "installed", lambda self: self.module is None)  # as if no runtime extra
    predictor = Predictor.from_source(source)
    assert isinstance(predictor.backend, TorchBackend) and predictor.backend.auto.runtime == "torch"
    assert "no onnxruntime or openvino installed" in predictor.backend.auto.reason
    monkeypatch.undo()
    monkeypatch.setenv(auto.PIN_ENV, "torch")
    assert isinstance(Predictor.from_source(source).backend, TorchBackend)
    assert not cache.exists()  # nothing was exported


def test_cli_classify_default_is_auto_and_equals_eager(cache, small_checkpoint, capsys):
    flags = small_model_flags(small_checkpoint, "--json", "--workers", "0", "--image-size", str(SIZE), "--topk", "3")
    args = ["classify", *sample_images(), *flags]
    assert main(args) == 0
    default = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(list(cache.iterdir())) == (1 if any(RUNTIMES[n].installed() for n in auto.EXACT_ORDER) else 0)
    assert main([*args, "--backend", "torch"]) == 0
    eager = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[p["index"] for p in r["predictions"]] for r in default] == [
        [p["index"] for p in r["predictions"]] for r in eager
    ]
    for a, b in zip(default, eager):
        for p, q in zip(a["predictions"], b["predictions"]):
            assert p["probability"] == pytest.approx(q["probability"], abs=1e-4)


@pytest.mark.slow  # quantization + export: ~20 s on 2 quiet cores
def test_auto_int8_is_opt_in_and_reports_agreement(cache, source, tmp_path):
    if not any(RUNTIMES[n].installed() for n in auto.APPROXIMATE_ORDER["int8"]):
        pytest.skip("no int8 runtime installed")
    predictor = Predictor.from_source(source, precision="int8")
    choice = predictor.backend.auto
    assert choice.precision == "int8" and choice.runtime in auto.APPROXIMATE_ORDER["int8"]
    assert choice.agreement is not None and 0.0 <= choice.agreement <= 1.0 and "agreement" in choice.line()
    assert "calib-" in Path(choice.path).parent.name  # keyed by its calibration images too
    assert predictor.backend(_inputs(predictor)).isfinite().all()
