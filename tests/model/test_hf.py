"""Weights that travel (resnext.model.hf): safetensors files and timm's Hub folder layout.

Judges: timm's own loader (``timm.create_model("local-dir:...")``) and timm's own writer (``save_for_hf``), the
``safetensors`` library reading our headers. ``hf-hub:`` sources: test_hf_hub.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import NGC_RESNEXT_FILE, SAMPLES, place_file, randomize_bn

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
