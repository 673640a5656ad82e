"""The one weights loader: cache, download, checkpoint layouts, refusal of unsafe or damaged files, head reset."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest
import torch
from conftest import NGC_RESNEXT_FILE, place_file, randomize_bn, tv_resnext101_32x4d

import hubconf
from resnext import ResNeXt101_32X4D_Weights, create_model
from resnext.errors import WeightsError
from resnext.model.resnet import get_weights
from resnext.model.weights import (
    MIRROR_ENV,
    extract_state_dict,
    load_checkpoint_into,
    read_checkpoint,
    remap_state_dict,
)
from resnext.transforms import eval_preset

X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X64)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint layouts: all through hubconf.nvidia_resneXt(pretrained=False, pretrained_from_file=...)


def _layers_naming(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for n in range(1, 5):
            if key.startswith(f"layer{n}."):
                key = f"layers.{n - 1}." + key[len(f"layer{n}.") :]
        out[key] = value
    return out


# The flat NGC layout itself is tested in test_models.py::test_resnext101_matches_torchvision_resnet_with_groups.
@pytest.mark.parametrize("layout", ["layers.N", "module.", "_orig_mod.", "training", "training+ema"])
def test_every_checkpoint_layout_loads_and_matches_torchvision(layout, tv_reference, tmp_path) -> None:
    reference, _ = tv_reference
    state = reference.state_dict()
    expected = logits(reference)
    if layout == "layers.N":
        checkpoint = _layers_naming(state)
        assert "layers.2.22.conv2.weight" in checkpoint and "layer3.22.conv2.weight" not in checkpoint
    elif layout in ("module.", "_orig_mod."):
        checkpoint = {layout + k: v for k, v in _layers_naming(state).items()}
    else:  # NVIDIA's training checkpoint under DDP; the EMA copy holds different (here: other random) weights
        torch.manual_seed(9)
        ema_model = randomize_bn(tv_resnext101_32x4d(), seed=9)
        checkpoint = {
            "epoch": 90,
            "best_prec1": 79.5,
            "arch": "resnext101-32x4d",
            "state_dict": {"module." + k: v for k, v in state.items()},
            "state_dict_ema": {"module." + k: v for k, v in ema_model.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.875, "params": [0, 1]}]},
        }
        if layout == "training+ema":
            expected = logits(ema_model)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path)
    if layout == "training+ema":
        model = create_model("resnext101_32x4d")
        load_checkpoint_into(model, path, use_ema=True)
    else:
        model = hubconf.nvidia_resneXt(pretrained=False, pretrained_from_file=str(path))
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)


def test_ema_requested_but_absent_is_a_clear_error(small_checkpoint) -> None:
    with pytest.raises(WeightsError, match="no EMA weights"):
        load_checkpoint_into(create_model("resnext_test"), small_checkpoint, use_ema=True)


def test_remap_state_dict_key_names() -> None:
    t = torch.zeros(1)
    remapped = remap_state_dict({"module._orig_mod.layers.3.2.bn3.weight": t, "module.fc.bias": t, "conv1.weight": t})
    assert set(remapped) == {"layer4.2.bn3.weight", "fc.bias", "conv1.weight"}


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning head, wrong architecture


def test_other_num_classes_loads_all_but_fc_and_says_so_once(small_checkpoint, caplog) -> None:
    state = torch.load(small_checkpoint, weights_only=True)
    with caplog.at_level(logging.INFO, logger="resnext"):
        model = create_model("resnext_test", weights=str(small_checkpoint), num_classes=5)
    assert model.fc.weight.shape == (5, model.num_features)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))
    records = [r for r in caplog.records if r.name.startswith("resnext")]
    assert len(records) == 1 and "1000 classes" in records[0].getMessage() and "'fc'" in records[0].getMessage()
    assert logits(model).shape == (2, 5)


def test_fine_tuned_file_keeps_its_own_head_size(tmp_path) -> None:
    path = tmp_path / "five_classes.pth"
    torch.manual_seed(3)
    source = create_model("resnext_test", num_classes=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = create_model("resnext_test", weights=str(path))
    assert model.num_classes == 5
    assert torch.equal(logits(model), logits(source))


def test_wrong_architecture_error_names_the_architecture(tmp_path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(create_model("resnet50").state_dict(), path)
    with pytest.raises(WeightsError, match="does not match resnext_test"):
        create_model("resnext_test", weights=str(path))


def test_wrong_architecture_gives_summarised_key_mismatch(tmp_path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(create_model("resnet50").state_dict(), path)
    with pytest.raises(WeightsError) as info:
        create_model("se_resnext101_32x4d", weights=str(path))
    message = str(info.value)
    assert "missing keys" in message and "shape mismatches" in message and "more)" in message
    assert "\n" not in message and len(message) < 600


# ---------------------------------------------------------------------------------------------------------------
# Refusing unsafe, damaged and non-checkpoint files


_CALLED: list[str] = []


def _side_effect() -> str:
    _CALLED.append("ran")
    return "ran"


class _Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_pickled_python_object_is_refused_without_running_it(tmp_path, small_checkpoint) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": torch.load(small_checkpoint, weights_only=True), "hook": _Payload()}, path)
    _CALLED.clear()
    with pytest.raises(WeightsError, match=r"refused.*_side_effect.*not a tensor"):
        read_checkpoint(path)
    assert _CALLED == []


def test_truncated_checkpoint_is_a_clear_error(tmp_path, small_checkpoint) -> None:
    data = small_checkpoint.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        create_model("resnext_test", weights=str(path))


def test_tampered_tensor_data_is_detected(tmp_path, small_checkpoint) -> None:
    data = bytearray(small_checkpoint.read_bytes())
    middle = len(data) // 2  # inside some tensor's bytes, which torch.load alone would accept silently
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path = tmp_path / "tampered.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"this is a text file\n", "not a readable PyTorch checkpoint"),
        (b"", "not a readable PyTorch checkpoint"),
    ],
)
def test_non_checkpoint_files(tmp_path, content, match) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        read_checkpoint(path)


def test_checkpoint_without_tensors(tmp_path) -> None:
    path = tmp_path / "notes.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(WeightsError, match="no tensors"):
        extract_state_dict(read_checkpoint(path))
    torch.save(torch.zeros(3), path)
    with pytest.raises(WeightsError, match="expected a dict"):
        extract_state_dict(read_checkpoint(path))


def test_missing_file() -> None:
    with pytest.raises(WeightsError, match="not found"):
        create_model("resnext_test", weights="/nonexistent/weights.pth")


# ---------------------------------------------------------------------------------------------------------------
# Published weights: records, cache, download


def test_weights_record() -> None:
    w = ResNeXt101_32X4D_Weights.DEFAULT
    assert w is ResNeXt101_32X4D_Weights.IMAGENET1K_NVIDIA and get_weights("resnext101_32x4d") is w
    assert w.url.startswith("https://api.ngc.nvidia.com/") and w.file_name == NGC_RESNEXT_FILE
    assert w.transforms() == eval_preset(224) and (w.transforms().resize_size, w.transforms().crop_size) == (256, 224)
    meta = w.meta
    assert len(meta["categories"]) == 1000 and meta["categories"][0] == "tench, Tinca tinca"
    assert meta["metrics"] == {"top1": 80.43, "top5": 95.06} and "NVIDIA" in meta["metrics_note"]
    assert meta["gmacs"] > 7 and "Apache" in meta["license"]
    with pytest.raises(WeightsError, match="unknown weights"):
        ResNeXt101_32X4D_Weights.verify("IMAGENET22K")


def test_pretrained_uses_cached_file_without_network(offline_cache, tv_reference) -> None:
    reference, path = tv_reference
    place_file(path, offline_cache / NGC_RESNEXT_FILE)
    # The mirror is a closed port: any download attempt would raise, so success proves the cache was used.
    model = hubconf.nvidia_resneXt(pretrained=True)
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=0)
    assert os.listdir(offline_cache) == [NGC_RESNEXT_FILE]


def test_pretrained_downloads_into_the_cache_with_progress(
    offline_cache, tv_reference, http_server, monkeypatch, capsys
):
    reference, path = tv_reference
    base, requests = http_server({f"/mirror/{NGC_RESNEXT_FILE}": path.read_bytes()})
    monkeypatch.setenv(MIRROR_ENV, f"{base}/mirror/")
    model = create_model("resnext101_32x4d", weights="DEFAULT")
    assert requests == [f"/mirror/{NGC_RESNEXT_FILE}"]
    # the file under its published name, and the record of where it came from (the mirror) and its sha256
    assert sorted(os.listdir(offline_cache)) == [NGC_RESNEXT_FILE, NGC_RESNEXT_FILE + ".source.json"]
    record = json.loads((offline_cache / (NGC_RESNEXT_FILE + ".source.json")).read_text())
    assert record["url"] == f"{base}/mirror/{NGC_RESNEXT_FILE}"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (offline_cache / NGC_RESNEXT_FILE).read_bytes() == path.read_bytes()
    assert f"downloading {NGC_RESNEXT_FILE}" in capsys.readouterr().err  # the tqdm progress bar
    torch.testing.assert_close(logits(model), logits(reference), atol=1e-5, rtol=0)
    create_model("resnext101_32x4d", weights="DEFAULT")  # second time: from the cache
    assert len(requests) == 1


def test_interrupted_download_leaves_nothing_in_the_cache(offline_cache, small_checkpoint, http_server, monkeypatch):
    base, _ = http_server({f"/{NGC_RESNEXT_FILE}": small_checkpoint.read_bytes()}, mode="cut")
    monkeypatch.setenv(MIRROR_ENV, base)
    with pytest.raises(WeightsError) as info:
        create_model("resnext101_32x4d", weights="DEFAULT")
    message = str(info.value)
    assert f"{base}/{NGC_RESNEXT_FILE}" in message and "connection closed" in message
    assert str(offline_cache / NGC_RESNEXT_FILE) in message and ResNeXt101_32X4D_Weights.DEFAULT.url in message
    assert list(offline_cache.iterdir()) == []  # neither the file nor a .partial


def test_offline_error_names_url_and_cache_path(offline_cache) -> None:
    with pytest.raises(WeightsError) as info:
        create_model("resnext101_32x4d", weights="DEFAULT")
    message = str(info.value)
    assert os.environ[MIRROR_ENV] in message and ResNeXt101_32X4D_Weights.DEFAULT.url in message
    assert str(offline_cache / NGC_RESNEXT_FILE) in message and MIRROR_ENV in message
    assert not offline_cache.exists() or list(offline_cache.iterdir()) == []


def test_weights_url_is_cached_like_published_weights(offline_cache, small_checkpoint, http_server) -> None:
    base, requests = http_server({"/fine-tuned.pth": small_checkpoint.read_bytes()})
    model = create_model("resnext_test", weights=f"{base}/fine-tuned.pth")
    # cached under a name holding a hash of the full URL (see tests/test_hostile.py for why)
    cached = [p.name for p in offline_cache.iterdir() if not p.name.endswith(".source.json")]
    assert len(cached) == 1 and cached[0].endswith("-fine-tuned.pth") and requests == ["/fine-tuned.pth"]
    expected = create_model("resnext_test", weights=str(small_checkpoint))
    torch.testing.assert_close(logits(model), logits(expected))
