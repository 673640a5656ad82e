"""resnext.training.checkpoint: atomic checkpoint writes, safe reads, the resume checks and ``export_weights``.

A training checkpoint is built by hand here (a small ``resnext_test`` with random BN statistics, an SGD state,
EMA weights, class names and the RNG state), so these tests need no training run; tests/training/test_train.py
covers the files a real run writes.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_bn

from resnext import create_model, load_source
from resnext.errors import ResnextError, WeightsError
from resnext.model.weights import read_checkpoint
from resnext.training.checkpoint import (
    export_weights,
    prepare_workspace,
    read_training_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from resnext.util import TMP_PREFIX

CLASSES = ["ant", "bee", "cat"]
IMAGE_SIZE = 48
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # the smallest input the strides allow


def small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(create_model("resnext_test", num_classes=len(CLASSES)), seed=seed)


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the trained model, its EMA): two different networks, so exporting the wrong one shows."""
    return small_model(1), small_model(2)


def training_state(model: torch.nn.Module, ema: torch.nn.Module, global_batch: int = 32) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    torch.nn.functional.cross_entropy(model(X), torch.tensor([0, 2])).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return {
        "state_dict": model.state_dict(),
        "state_dict_ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "arch": "resnext_test",
        "classes": CLASSES,
        "image_size": IMAGE_SIZE,
        "config": {"batch_size": global_batch, "resolved": {"global_batch": global_batch}},
        "rng": rng_state(),
    }


@pytest.fixture(scope="module")
def trained(models, tmp_path_factory) -> Path:
    model, ema = small_model(1), models[1]
    path = tmp_path_factory.mktemp("ckpt") / "last.pth"
    state = training_state(model, ema)
    models[0].load_state_dict(state["state_dict"])  # the optimizer step changed it: keep the fixture in step
    save_checkpoint(state, path)
    return path


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes


def test_round_trip_through_a_weights_only_read(trained, models) -> None:
    checkpoint = read_checkpoint(trained)
    assert checkpoint["epoch"] == 3 and checkpoint["classes"] == CLASSES
    for key, value in models[0].state_dict().items():
        assert torch.equal(checkpoint["state_dict"][key], value), key
    assert checkpoint["optimizer"]["state"], "the momentum buffers were saved"
    assert temporaries(trained.parent) == []


def test_rng_state_survives_a_weights_only_round_trip(tmp_path: Path) -> None:
    def draws() -> tuple:
        return random.random(), float(np.random.random()), float(torch.rand(1))

    path = save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pth")
    expected = draws()
    draws()  # move every generator on
    set_rng_state(read_checkpoint(path)["rng"])
    assert draws() == expected


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint({"epoch": torch.tensor(1)}, tmp_path / "last.pth")
    before = path.read_bytes()

    def disk_full(obj, f) -> None:  # what torch's zip writer does on ENOSPC: some bytes, then RuntimeError
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed\nmore detail")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(ResnextError) as info:
        save_checkpoint({"epoch": torch.tensor(2)}, path)
    message = str(info.value)
    assert message.startswith(f"cannot write {path}") and "\n" not in message
    assert path.read_bytes() == before and temporaries(tmp_path) == []

    def interrupted(obj, f) -> None:
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": torch.tensor(3)}, path)
    assert path.read_bytes() == before and temporaries(tmp_path) == []


def test_a_killed_write_keeps_the_old_file_and_its_temporary_is_swept(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    last = save_checkpoint({"epoch": torch.tensor(1)}, workspace / "last.pth")
    before = last.read_bytes()
    pid = os.fork()  # a child that dies by SIGKILL half-way through writing, as an OOM kill would
    if pid == 0:
        try:

            def dying_save(obj, f) -> None:
                f.write(b"PK\x03\x04" + bytes(100_000))
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            torch.save = dying_save
            save_checkpoint({"epoch": torch.tensor(2)}, last)
        finally:
            os._exit(1)  # never return into pytest
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert last.read_bytes() == before
    assert [name.startswith(f"{TMP_PREFIX}{pid}-") for name in temporaries(workspace)] == [True]
    prepare_workspace(workspace, resume="auto", overwrite=False)
    assert temporaries(workspace) == [] and last.read_bytes() == before


# ---------------------------------------------------------------------------------------------------------------
# Safe reads


def test_truncated_and_tampered_checkpoints_are_refused_in_one_line(trained, tmp_path: Path) -> None:
    data = trained.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    tampered = tmp_path / "tampered.pth"
    # change one byte inside the stored data of fc.weight (its first 16 float32 values, found in the archive)
    needle = read_checkpoint(trained)["state_dict"]["fc.weight"].flatten()[:16].numpy().tobytes()
    where = data.find(needle)
    assert where > 0
    tampered.write_bytes(data[:where] + bytes([data[where] ^ 0x40]) + data[where + 1 :])
    for path, reason in ((cut, "truncated|damaged|corrupt"), (tampered, "checksum .* does not match")):
        with pytest.raises(WeightsError, match=reason) as info:
            read_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(ResnextError):
            read_training_checkpoint(str(path), arch="resnext_test", classes=CLASSES, global_batch=None)


class Payload:
    """Unpickling this creates ``marker``: the side effect a malicious checkpoint would have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_custom_object_is_refused_and_never_run(trained, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    state = {**read_checkpoint(trained), "config": Payload(marker)}
    evil = save_checkpoint(state, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="not loaded for safety") as info:
        read_training_checkpoint(str(evil), arch="resnext_test", classes=CLASSES, global_batch=None)
    assert "\n" not in str(info.value) and not marker.exists()
    torch.load(evil, weights_only=False).get("config").close()  # an unsafe load would have run it
    assert marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# Resuming: the checkpoint must belong to this run


def test_read_training_checkpoint_accepts_its_own_run_and_refuses_others(trained, tmp_path: Path) -> None:
    ckpt = read_training_checkpoint(str(trained), arch="resnext_test", classes=CLASSES, global_batch=32)
    assert ckpt["epoch"] == 3
    assert read_training_checkpoint(str(trained), arch="resnext_test", classes=CLASSES, global_batch=None)
    refusals = {
        "is a resnext_test checkpoint; resume it with --arch resnext_test": {"arch": "resnet50"},
        "trained on other classes": {"classes": ["ant", "bee"]},
        "global batch of 32 images per step": {"global_batch": 64},
    }
    for message, change in refusals.items():
        kwargs = {"arch": "resnext_test", "classes": CLASSES, "global_batch": 32, **change}
        with pytest.raises(ResnextError, match=message):
            read_training_checkpoint(str(trained), **kwargs)
    plain = tmp_path / "plain.pth"
    torch.save(read_checkpoint(trained)["state_dict"], plain)
    with pytest.raises(ResnextError, match="not a training checkpoint"):
        read_training_checkpoint(str(plain), arch="resnext_test", classes=CLASSES, global_batch=None)


# ---------------------------------------------------------------------------------------------------------------
# export_weights


@pytest.fixture(scope="module")
def expected_logits(trained, models) -> dict[bool, torch.Tensor]:
    """{ema: logits} of the model and of its EMA; they differ, so exporting the wrong one shows."""
    found = {False: logits(models[0]), True: logits(models[1])}
    assert not torch.equal(found[False], found[True])
    return found


@pytest.mark.parametrize(
    ("fmt", "name", "ema"),
    [(None, "w.pth", False), (None, "w.safetensors", False), ("hf", "hub-folder", False), (None, "ema.pth", True)],
)
def test_exported_weights_load_back_with_identical_logits(trained, expected_logits, tmp_path, fmt, name, ema) -> None:
    out = export_weights(str(trained), tmp_path / name, format=fmt, ema=ema)
    if fmt == "hf":
        assert out.is_dir() and (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    else:
        assert out.is_file() and (out.suffix == ".safetensors") == name.endswith(".safetensors")
    assert temporaries(tmp_path) == []
    source = load_source(str(out))  # no --arch, no classes, no size given: the file carries them
    assert source.arch == "resnext_test" and source.classes == CLASSES and source.image_size == IMAGE_SIZE
    assert torch.equal(logits(source.model), expected_logits[ema])


def test_export_weights_refuses_to_replace_or_guess(trained, tmp_path: Path) -> None:
    out = tmp_path / "w.pth"
    out.write_bytes(b"a user's file")
    with pytest.raises(ResnextError, match="exists: pass --overwrite"):
        export_weights(str(trained), out)
    assert out.read_bytes() == b"a user's file"
    assert export_weights(str(trained), out, overwrite=True) == out
    assert read_checkpoint(out)["arch"] == "resnext_test"
    with pytest.raises(ResnextError, match="unknown weights format 'onnx'"):
        export_weights(str(trained), tmp_path / "x.onnx", format="onnx")
    with pytest.raises(ResnextError, match="--format hf writes a folder"):
        export_weights(str(trained), out, format="hf", overwrite=True)
    plain = tmp_path / "plain.pth"
    torch.save(read_checkpoint(trained)["state_dict"], plain)
    with pytest.raises(WeightsError, match="no EMA weights"):
        export_weights(str(plain), tmp_path / "e.pth", ema=True)
    assert not (tmp_path / "e.pth").exists()
