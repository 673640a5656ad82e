"""``--backend auto``: an exact runtime when one is installed, exported once into the cache, reused, equal to eager
fp32 within 1e-4; a damaged entry, another model's entry, a link or a file in its place is rebuilt (issue 16.5, 16.12);
an unwritable cache runs eager with a warning; a cold cache exports only for a job big enough to repay it (issue 17.3);
``resnext prepare``; torch without runtimes; bf16/int8 only on request, with agreement.
CPU features: none required (exact runtimes are fp32 everywhere; bf16 falls back to fp32 without native bf16)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import small_model_flags

from resnext.cli import main
from resnext.errors import ResnextError
from resnext.images import sample_images
from resnext.inference import auto, auto_cache
from resnext.inference.predict import Predictor
from resnext.model.factory import create_model
from resnext.model.sources import load_source, source_from_model
from resnext.runtime.backend import TorchBackend
from resnext.runtime.table import RUNTIMES, Runtime
from resnext.transforms import eval_preset
from resnext.util import file_digest

SIZE = 32
EXACT = [name for name in auto.EXACT_ORDER if RUNTIMES[name].installed()]
needs_runtime = pytest.mark.skipif(not EXACT, reason="neither onnxruntime nor openvino is installed")


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
@needs_runtime
def test_auto_exports_once_reuses_matches_eager_and_rebuilds_damage(cache, source):
    first = Predictor.from_source(source)  # the default backend is auto
    assert isinstance(first.backend, auto.ColdStartBackend) and not cache.exists()  # nothing exported yet
    _assert_equals_eager(first, source.model)  # no job size announced (a plain API call): eager at once ...
    assert first.backend.auto.runtime == "torch"
    process = first.backend._background
    assert process is not None  # ... while the export runs in a background process
    first.backend.wait(600)
    assert process.poll() is not None and first.backend._background is None
    choice = first.backend.auto
    assert choice.runtime == EXACT[0] and RUNTIMES[choice.runtime].exact and not choice.reused
    assert choice.precision == "fp32" and choice.agreement is None  # exact: nothing approximate to report
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / auto_cache.MANIFEST).is_file()  # no staging folder left behind
    model_file = Path(choice.path)
    assert model_file.parent == entries[0]
    written = {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()}
    _assert_equals_eager(first, source.model)

    second = Predictor.from_source(source)  # a warm cache: the exported file at once
    assert second.backend.auto.reused and second.backend.auto.path == choice.path
    assert {p.name: p.stat().st_mtime_ns for p in entries[0].iterdir()} == written  # reused, not rewritten
    _assert_equals_eager(second, source.model)
    x = _inputs(second)
    with torch.no_grad():
        expected = source.model.forward_head(source.model.forward_features(x), pre_logits=True)
    assert torch.allclose(second.embed(x), expected, atol=1e-4 * float(expected.abs().max()))  # embed runs on it

    weights_file = next(p for p in entries[0].iterdir() if p.suffix in (".bin", ".onnx"))
    data = bytearray(weights_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    weights_file.write_bytes(bytes(data))
    rebuilt = auto.prepare(source)
    assert not rebuilt.auto.reused and [p for p in cache.iterdir() if p.is_dir()] == entries
    _assert_equals_eager(Predictor(rebuilt, transforms=first.transforms), source.model)
    manifest = json.loads((entries[0] / auto_cache.MANIFEST).read_text())
    assert manifest["files"][weights_file.name] == file_digest(weights_file)


@needs_runtime
def test_a_background_export_is_stopped_when_the_backend_closes(cache, source):
    predictor = Predictor.from_source(source)
    _assert_equals_eager(predictor, source.model)
    process = predictor.backend._background
    assert process is not None and process.poll() is None
    predictor.backend.close()
    assert process.poll() is not None  # stopped, not left running
    assert not any(cache.glob("*.pth"))  # the weights handed to it are removed
    assert not any(p.is_dir() and not p.name.startswith(".") for p in cache.iterdir())


def _entry(cache: Path, source) -> Path:
    key = auto.cache_key(source.model, arch=source.arch, image_size=SIZE, runtime=RUNTIMES[EXACT[0]], precision="fp32")
    return cache / key.folder


@pytest.mark.slow  # three exports of the small model: ~20 s on 2 loaded cores
@needs_runtime
def test_an_entry_holding_another_model_or_a_link_to_one_is_rebuilt_never_used(cache, source):
    torch.manual_seed(11)
    other = source_from_model(create_model("resnext_test").eval(), arch="resnext_test", image_size=SIZE)
    auto.prepare(other)
    theirs, ours = _entry(cache, other), _entry(cache, source)
    shutil.copytree(theirs, ours)  # every file matches its manifest's sha256, but the key is another model's
    backend = auto.prepare(source)
    assert not backend.auto.reused  # rebuilt: the manifest's key is not the one asked for
    assert (
        json.loads((ours / auto_cache.MANIFEST).read_text())["key"]
        == auto.cache_key(
            source.model, arch=source.arch, image_size=SIZE, runtime=RUNTIMES[EXACT[0]], precision="fp32"
        ).as_dict()
    )
    _assert_equals_eager(Predictor(backend, transforms=eval_preset(SIZE)), source.model)

    shutil.rmtree(ours)
    ours.symlink_to(theirs, target_is_directory=True)  # a link to a sound entry of another model
    backend = auto.prepare(source)
    assert not backend.auto.reused and ours.is_dir() and not ours.is_symlink()
    assert (theirs / auto_cache.MANIFEST).is_file()  # the link was removed, never what it pointed to
    _assert_equals_eager(Predictor(backend, transforms=eval_preset(SIZE)), source.model)
    assert auto.prepare(other).auto.reused  # the other model's entry is still sound


@pytest.mark.slow  # two exports of the small model: ~15 s on 2 quiet cores
@needs_runtime
def test_a_file_or_a_dangling_link_in_an_entrys_place_is_replaced(cache, source):
    ours = _entry(cache, source)
    cache.mkdir()
    ours.symlink_to(cache / "gone")
    backend = auto.prepare(source)
    assert not backend.auto.reused and ours.is_dir() and not ours.is_symlink()
    shutil.rmtree(ours)
    ours.write_text("not a cache entry")
    backend = auto.prepare(source)
    assert not backend.auto.reused and ours.is_dir()
    _assert_equals_eager(Predictor(backend, transforms=eval_preset(SIZE)), source.model)


@needs_runtime
def test_an_unwritable_cache_runs_eager_with_one_warning(tmp_path, monkeypatch, source, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(auto.CACHE_ENV, str(blocker / "cache"))  # cannot be created, even by root
    monkeypatch.delenv(auto.PIN_ENV, raising=False)
    predictor = Predictor.from_source(source)
    predictor.backend.expect(10**9)  # a job big enough to repay any export
    with caplog.at_level(logging.WARNING, logger="resnext"):
        _assert_equals_eager(predictor, source.model)
        _assert_equals_eager(predictor, source.model)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot write the auto cache" in warnings[0] and "\n" not in warnings[0]
    assert predictor.backend.auto.runtime == "torch"
    with pytest.raises(auto.CacheUnwritable, match="cannot write the auto cache"):
        auto.prepare(source)  # asked for explicitly: an error (resnext prepare: one line, exit 2)


def test_a_failed_export_leaves_the_job_running_eager_with_one_warning(cache, source, monkeypatch, caplog):
    def fail(plan):
        raise ResnextError("onnx export differs from PyTorch on real images")

    monkeypatch.setattr(auto, "_build", fail)
    monkeypatch.setattr(auto, "choose_runtime", lambda *a, **k: (RUNTIMES["onnxruntime"], "as if installed"))
    predictor = Predictor.from_source(source)
    predictor.backend.expect(10**9)
    with caplog.at_level(logging.WARNING, logger="resnext"):
        _assert_equals_eager(predictor, source.model)
        _assert_equals_eager(predictor, source.model)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "the export failed" in warnings[0]
    assert predictor.backend.auto.runtime == "torch"


def test_export_pays_off_only_for_a_job_that_repays_it_with_margin():
    # 1 s/image eager, a 2x runtime saves 0.5 s/image: a 100 s export needs >= 300 images (margin 1.5)
    assert auto.PAYBACK_MARGIN == 1.5
    assert not auto.export_pays_off(299, 1.0, 100.0, 2.0)
    assert auto.export_pays_off(300, 1.0, 100.0, 2.0)
    assert not auto.export_pays_off(10**9, 1.0, 100.0, 1.0)  # no speed-up: never
    assert not auto.export_pays_off(0, 1.0, 0.0001, 3.0)


@needs_runtime
def test_cold_cache_small_job_runs_eager_and_exports_nothing(cache, source, caplog):
    predictor = Predictor.from_source(source)
    with caplog.at_level(logging.INFO, logger="resnext"):
        results = predictor.classify(sample_images(), topk=3)
    assert not cache.exists() or not any(p.is_dir() for p in cache.iterdir())  # no export for 3 photos
    eager = Predictor.from_source(source, backend="torch").classify(sample_images(), topk=3)
    assert [[p.index for p in r] for r in results] == [[p.index for p in r] for r in eager]
    said = [r.getMessage() for r in caplog.records if "a job of 3 images runs eager" in r.getMessage()]
    assert len(said) == 1 and "resnext prepare" in said[0]


@needs_runtime
def test_cold_cache_big_job_switches_to_the_runtime_after_its_first_batch(cache, source, caplog):
    predictor = Predictor.from_source(source)
    backend = predictor.backend
    backend.expect(10**7)
    x = _inputs(predictor)
    with caplog.at_level(logging.INFO, logger="resnext"):
        first = backend(x)  # eager, timed: decides
        assert backend.auto.runtime == EXACT[0] and not backend.auto.reused
        later = [backend(x) for _ in range(2)]  # the runtime; the second one is timed for the speed-up
    assert any("exporting first pays" in r.getMessage() for r in caplog.records)
    for out in (first, *later):
        with torch.no_grad():
            expected = source.model(x)
        assert (out - expected).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))
    timings = json.loads((cache / auto_cache.TIMINGS).read_text())
    [measured] = timings.values()
    assert measured["export_seconds"] > 0 and measured["speedup"] > 0  # estimates for the next cold start


def test_random_weights_are_one_model_in_every_command_and_leave_the_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = (load_source("random", arch="resnext_test") for _ in range(2))
    assert auto_cache.weights_sha256(first.model) == auto_cache.weights_sha256(
        second.model
    )  # one auto cache entry, not one per start
    assert torch.equal(torch.get_rng_state(), state)
    from resnext.demo import create_demo_model

    demos = [create_demo_model("resnext_test", weights="random", backend="torch", explain=False) for _ in range(2)]
    assert auto_cache.weights_sha256(demos[0].predictor.model) == auto_cache.weights_sha256(first.model)
    assert auto_cache.weights_sha256(demos[1].predictor.model) == auto_cache.weights_sha256(first.model)


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
    assert isinstance(predictor.backend, auto.AutoBackend) and isinstance(predictor.backend.active, TorchBackend)
    assert predictor.backend.auto.runtime == "torch" and predictor.backend.name == "torch"
    assert "no onnxruntime or openvino installed" in predictor.backend.auto.reason
    monkeypatch.undo()
    monkeypatch.setenv(auto.PIN_ENV, "torch")
    pinned = Predictor.from_source(source).backend
    assert isinstance(pinned, auto.AutoBackend) and isinstance(pinned.active, TorchBackend)
    assert not cache.exists()  # nothing was exported


def test_cli_prepare_then_classify_default_is_auto_and_equals_eager(cache, small_checkpoint, capsys):
    flags = small_model_flags(small_checkpoint, "--image-size", str(SIZE))
    args = ["classify", *sample_images(), *flags, "--json", "--workers", "0", "--topk", "3"]
    assert main(args) == 0  # a cold cache and 3 photos: eager, nothing exported
    cold = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not cache.exists() or not any(p.is_dir() for p in cache.iterdir())
    assert main(["prepare", *flags]) == 0
    out = capsys.readouterr().out
    entries = [p for p in cache.iterdir() if p.is_dir()] if cache.exists() else []
    if EXACT:
        assert out.startswith("resnext: prepared: backend auto: ") and len(entries) == 1 and str(entries[0]) in out
        assert main(["prepare", *flags]) == 0
        assert capsys.readouterr().out.startswith("resnext: already cached: ")
    else:
        assert out.startswith("resnext: nothing to prepare: ") and entries == []
    assert main(args) == 0  # now from the cache
    default = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*args, "--backend", "torch"]) == 0
    eager = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for run in (cold, default):
        assert [[p["index"] for p in r["predictions"]] for r in run] == [
            [p["index"] for p in r["predictions"]] for r in eager
        ]
        for a, b in zip(run, eager):
            for p, q in zip(a["predictions"], b["predictions"]):
                assert p["probability"] == pytest.approx(q["probability"], abs=1e-4)


@needs_runtime
def test_cli_prepare_refuses_an_unwritable_cache_in_one_line(tmp_path, monkeypatch, small_checkpoint, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(auto.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.delenv(auto.PIN_ENV, raising=False)
    flags = small_model_flags(small_checkpoint, "--image-size", str(SIZE))
    assert main(["prepare", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnext: error: cannot write the auto cache") and "\n" not in err
    assert main(["classify", *sample_images(), *flags, "--workers", "0"]) == 0  # classify still runs
    assert main(["prepare", *flags, "--backend", "torch"]) == 2  # not a runtime prepare exports to
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow  # quantization + export: ~20 s on 2 quiet cores
def test_auto_int8_is_opt_in_and_reports_agreement(cache, source, tmp_path):
    if not any(RUNTIMES[n].installed() for n in auto.APPROXIMATE_ORDER["int8"]):
        pytest.skip("no int8 runtime installed")
    predictor = Predictor.from_source(source, precision="int8")  # no eager int8 to start with: exported at once
    choice = predictor.backend.auto
    assert choice.precision == "int8" and choice.runtime in auto.APPROXIMATE_ORDER["int8"]
    assert choice.agreement is not None and 0.0 <= choice.agreement <= 1.0 and "agreement" in choice.line()
    assert "calib-" in Path(choice.path).parent.name  # keyed by its calibration images too
    assert predictor.backend(_inputs(predictor)).isfinite().all()
