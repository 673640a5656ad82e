"""Training loop: learning, checkpoints, resume after SIGKILL, SIGTERM, fine-tuning, EMA, schedule, weight decay."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from resnext import cli
from resnext.models import create_model
from resnext.train import (
    TrainingDiverged,
    ModelEma,
    config_from_args,
    lr_at,
    parameter_groups,
    train,
)
from resnext.weights import read_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from _train_data import REPO, cli_env, make_shapes_dataset  # noqa: E402

FAST = dict(arch="resnext_test", batch_size=16, image_size=32, lr=0.4, warmup=1, workers=0, progress=False, seed=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_classes=4, train_per_class=32, val_per_class=8)


def run(data: Path, workspace: Path, **overrides) -> dict:
    return train(config_from_args({**FAST, "data": str(data), "workspace": str(workspace), **overrides}))


def log_records(workspace: Path) -> list[dict]:
    return [json.loads(line) for line in (workspace / "log.jsonl").read_text().splitlines()]


def params(path: Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[key]


# ---------------------------------------------------------------------------------------------------------------
# Learning


def test_learns_coloured_shapes_fp32_and_writes_workspace(shapes: Path, tmp_path: Path) -> None:
    summary = run(shapes, tmp_path, epochs=5, keep_last=2)
    assert summary["exit_code"] == 0 and summary["epochs_done"] == 5
    assert summary["metrics"]["val.top1"] >= 90.0, summary["metrics"]

    # workspace: labels, config, JSON-lines log with NVIDIA's metric names, checkpoints with retention
    assert (tmp_path / "labels.txt").read_text().split() == sorted(p.name for p in (shapes / "train").iterdir())
    records = log_records(tmp_path)
    train_rec = next(r for r in records if "train.loss" in r)
    assert {"train.loss", "train.lr", "train.compute_ips", "train.total_ips", "train.grad_scale"} <= set(train_rec)
    val_rec = [r for r in records if "val.top1" in r]
    assert len(val_rec) == 5 and all(r["val.count"] == 32 for r in val_rec)
    assert {"val.top5", "val.loss", "val.compute_latency_at95", "val.compute_latency_at99"} <= set(val_rec[-1])
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pth")) == ["checkpoint-0004.pth", "checkpoint-0005.pth"]
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"
    last = read_checkpoint(tmp_path / "last.pth")  # weights_only=True
    assert {"state_dict", "optimizer", "scaler", "epoch", "rng", "config", "classes", "best_prec1"} <= set(last)
    assert last["epoch"] == 5 and last["config"]["resolved"]["global_batch"] == 16
    assert last["best_prec1"] == max(r["val.top1"] for r in val_rec)
    assert read_checkpoint(tmp_path / "best.pth")["best_prec1"] == last["best_prec1"]
    # the checkpoint is readable by the model loader (state_dict key)
    model = create_model("resnext_test", weights=str(tmp_path / "best.pth"), num_classes=4)
    assert model.num_classes == 4

    # TensorBoard scalars mirror the JSON log (tensorboard is in the test extra; the run works without it)
    pytest.importorskip("tensorboard", reason="tensorboard not installed (extra [tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    top1 = [e.value for e in events.Scalars("val/top1")]
    assert top1 == pytest.approx([r["val.top1"] for r in val_rec])
    assert {"train/loss", "train/lr", "val/loss"} <= set(events.Tags()["scalars"])


@pytest.mark.slow
def test_learns_coloured_shapes_bf16(shapes: Path, tmp_path: Path) -> None:
    # bf16 autocast is slow on this AVX2-only CPU (no native bf16): channels_last is the fastest layout for it
    summary = run(shapes, tmp_path, epochs=4, precision="bf16", memory_format="nhwc", keep_last=0)
    assert summary["metrics"]["val.top1"] >= 90.0, summary["metrics"]


# ---------------------------------------------------------------------------------------------------------------
# Pure pieces: schedule, weight decay groups, EMA, recipes


def test_lr_schedule_warmup_cosine_linear_step_match_formula() -> None:
    base, per_epoch, epochs = 0.512, 10, 9
    total, warm = per_epoch * epochs, 2 * per_epoch
    kw = dict(base_lr=base, warmup_iters=warm, total_iters=total, iters_per_epoch=per_epoch, epochs=epochs)
    for it in (0, 7, 19):
        assert lr_at(it, schedule="cosine", **kw) == pytest.approx(base * (it + 1) / warm)
    for it in (20, 33, 55, 89):
        expected = 0.5 * (1 + math.cos(math.pi * (it - warm) / (total - warm))) * base
        assert lr_at(it, schedule="cosine", **kw) == pytest.approx(expected)
        assert lr_at(it, schedule="linear", **kw) == pytest.approx(base * (1 - (it - warm) / (total - warm)))
    assert lr_at(20, schedule="cosine", **kw) == pytest.approx(base)  # first step after warmup: the peak
    # step: x0.1 at epochs 3, 6, 8 of 9 (NVIDIA's 30/60/80 of 90, scaled)
    assert lr_at(29, schedule="step", **kw) == pytest.approx(base)
    assert lr_at(30, schedule="step", **kw) == pytest.approx(base * 0.1)
    assert lr_at(60, schedule="step", **kw) == pytest.approx(base * 0.01)
    assert lr_at(85, schedule="step", **kw) == pytest.approx(base * 0.001)


def test_weight_decay_never_on_batchnorm_or_bias() -> None:
    model = create_model("resnext_test", num_classes=10)
    groups = parameter_groups(model, 1e-4)
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(decay_of) == len(list(model.parameters()))
    names = dict(model.named_parameters())
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}"
            if isinstance(module, nn.BatchNorm2d) or pname == "bias":
                assert decay_of[id(param)] == 0.0, full
            else:
                assert decay_of[id(param)] == 1e-4, full
    for key in ("layer1.0.downsample.1.weight", "layer1.0.downsample.1.bias", "layer4.0.downsample.1.weight", "fc.bias"):
        assert decay_of[id(names[key])] == 0.0
    assert decay_of[id(names["layer1.0.downsample.0.weight"])] == 1e-4


def test_ema_update_follows_formula() -> None:
    model = create_model("resnext_test", num_classes=3)
    ema = ModelEma(model, decay=0.75)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.bn1.running_mean.add_(2.0)
        model.bn1.num_batches_tracked.add_(5)
    ema.update(model)
    after, src = ema.module.state_dict(), model.state_dict()
    for key in ("conv1.weight", "fc.bias", "bn1.running_mean"):
        assert torch.allclose(after[key], 0.75 * before[key] + 0.25 * src[key], atol=1e-6)
    assert int(after["bn1.num_batches_tracked"]) == 5


def test_recipe_sets_nvidia_values_and_explicit_flags_override() -> None:
    args = cli.build_parser().parse_args(["train", "/data", "--recipe", "nvidia-250e", "--lr", "0.1", "-b", "64"])
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.mixup, cfg.momentum, cfg.label_smoothing) == (250, 0.2, 0.875, 0.1)
    assert (cfg.weight_decay, cfg.warmup, cfg.lr_schedule) == (1 / 16384, 8, "cosine")
    assert (cfg.precision, cfg.memory_format) == ("fp16", "nhwc")
    assert (cfg.lr, cfg.batch_size, cfg.data) == (0.1, 64, "/data")
    plain = config_from_args(cli.build_parser().parse_args(["train", "/data"]))
    assert (plain.epochs, plain.mixup, plain.precision) == (90, 0.0, "fp32")


# ---------------------------------------------------------------------------------------------------------------
# Resume, signals, divergence


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.returncode}\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training subprocess")
        time.sleep(0.02)


def _train_cmd(data: Path, workspace: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "resnext.cli", "train", str(data), "--arch", "resnext_test", "-b", "16",
            "--image-size", "32", "--lr", "0.4", "--warmup", "1", "--seed", "0", "--no-progress",
            "--workspace", str(workspace), *extra]


def test_sigkill_then_resume_auto_equals_uninterrupted_run(shapes: Path, tmp_path: Path) -> None:
    epochs = 3
    reference = tmp_path / "reference"
    run(shapes, reference, epochs=epochs)

    # a separate process with 2 loader workers (augmentation is seeded per sample, so workers don't matter)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(shapes, killed, "--epochs", str(epochs), "-j", "2"), env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (killed / "log.jsonl").is_file() and any("val.top1" in r for r in log_records(killed)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = read_checkpoint(killed / "last.pth")["epoch"]
    assert 1 <= interrupted_at < epochs

    summary = run(shapes, killed, epochs=epochs, resume="auto", workers=1)
    assert summary["epochs_done"] == epochs
    ref, resumed = read_checkpoint(reference / "last.pth"), read_checkpoint(killed / "last.pth")
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for a, b in zip(ref["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_sigterm_checkpoints_mid_epoch_and_resumes(shapes: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(_train_cmd(shapes, tmp_path, "--epochs", "2", "-p", "1", "-j", "0"), env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (tmp_path / "log.jsonl").is_file() and any("train.loss" in r for r in log_records(tmp_path)), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr
    ckpt = read_checkpoint(tmp_path / "last.pth")
    assert ckpt["epoch"] == 0 and 1 <= ckpt["step"] <= 8
    assert any(r.get("event") == "stopped" for r in log_records(tmp_path))
    summary = run(shapes, tmp_path, epochs=2, resume="auto")
    assert summary["epochs_done"] == 2 and read_checkpoint(tmp_path / "last.pth")["epoch"] == 2


def test_nan_loss_stops_cleanly_and_keeps_last_good_checkpoint(shapes: Path, tmp_path: Path) -> None:
    run(shapes, tmp_path, epochs=2, run_epochs=1, keep_last=0)
    good = (tmp_path / "last.pth").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"loss became nan.*last good checkpoint"):
        run(shapes, tmp_path, epochs=2, resume="auto", lr=1e30, keep_last=0)
    assert (tmp_path / "last.pth").read_bytes() == good
    weights = read_checkpoint(tmp_path / "last.pth")["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert any(r.get("event") == "diverged" for r in log_records(tmp_path))


def test_corrupt_training_image_is_logged_skipped_and_counted(shapes: Path, tmp_path: Path, caplog) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    bad_text = data / "train" / "red_circle" / "not_an_image.png"
    bad_text.write_text("this is not a PNG")
    truncated = data / "train" / "green_square" / "truncated.png"
    truncated.write_bytes((data / "train" / "green_square" / "000.png").read_bytes()[:60])
    with caplog.at_level("WARNING", logger="resnext"):
        summary = run(data, tmp_path / "ws", epochs=1, keep_last=0)
    assert summary["exit_code"] == 0
    assert summary["metrics"]["train.skipped_images"] >= 1  # 130 images, 128 used per epoch: one may be dropped
    assert str(bad_text) in caplog.text or str(truncated) in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning and weight export


def test_finetune_1000_class_file_with_frozen_backbone_changes_only_fc(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "five", num_classes=5, train_per_class=8, val_per_class=2)
    torch.manual_seed(123)
    pretrained = create_model("resnext_test")  # 1000 classes, random weights, random BN statistics
    for m in pretrained.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    file = tmp_path / "imagenet.pth"
    torch.save(pretrained.state_dict(), file)
    original = pretrained.state_dict()

    run(data, tmp_path / "frozen", epochs=1, weights=str(file), num_classes=5, freeze_backbone=True, lr=1.0,
        keep_last=0)
    tuned = params(tmp_path / "frozen" / "last.pth")
    assert tuned["fc.weight"].shape == (5, 2048)
    changed = [k for k in tuned if not k.startswith("fc.") and not torch.equal(tuned[k], original[k])]
    assert changed == [], changed

    run(data, tmp_path / "full", epochs=1, weights=str(file), num_classes=5, keep_last=0)
    full = params(tmp_path / "full" / "last.pth")
    fresh = create_model("resnext_test", num_classes=5).state_dict()
    moved = (full["layer2.0.conv2.weight"] - original["layer2.0.conv2.weight"]).norm()
    assert 0 < moved < 0.5 * (fresh["layer2.0.conv2.weight"] - original["layer2.0.conv2.weight"]).norm()


def test_ema_export_round_trips_into_create_model(shapes: Path, tmp_path: Path) -> None:
    run(shapes, tmp_path, epochs=1, use_ema=0.9, keep_last=0, prof=3)
    ckpt = read_checkpoint(tmp_path / "last.pth")
    for flag, key in (["--ema"], "state_dict_ema"), ([], "state_dict"):
        out = tmp_path / f"export-{key}.pth"
        assert cli.main(["export-weights", str(tmp_path / "last.pth"), str(out), *flag]) == 0
        model = create_model("resnext_test", weights=str(out), num_classes=4)
        for name, value in model.state_dict().items():
            assert torch.equal(value, ckpt[key][name]), name
    assert not torch.equal(ckpt["state_dict_ema"]["fc.weight"], ckpt["state_dict"]["fc.weight"])
    exported = torch.load(tmp_path / "export-state_dict_ema.pth", weights_only=True)
    assert set(exported) == set(ckpt["state_dict"])  # flat state_dict, nothing but tensors


def test_synthetic_backend_with_mixup_fp16_accumulation_and_ema(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args([
        "train", "--data-backend", "synthetic", "--arch", "resnext_test", "--num-classes", "10", "--image-size", "32",
        "-b", "4", "--optimizer-batch-size", "8", "--prof", "2", "--epochs", "2", "--mixup", "0.2", "--precision",
        "fp16", "--memory-format", "nhwc", "--use-ema", "0.99", "--lr-schedule", "step", "--workspace", str(tmp_path),
        "--no-progress", "-p", "1",
    ])
    summary = train(config_from_args(args))
    assert summary["exit_code"] == 0 and summary["epochs_done"] == 2
    records = log_records(tmp_path)
    steps = [r for r in records if "train.grad_scale" in r]
    assert len(steps) == 4 and steps[0]["train.grad_scale"] == 128.0  # dynamic scaling starts at 128
    assert all(math.isfinite(r["train.loss"]) for r in steps)
    ckpt = read_checkpoint(tmp_path / "last.pth")
    assert ckpt["scaler"]["scale"] > 0 and "state_dict_ema" in ckpt
    assert ckpt["config"]["resolved"]["accumulation"] == 2


# ---------------------------------------------------------------------------------------------------------------
# The prepared GPU check, on its CPU smoke path


def test_gpu_check_training_cpu_smoke(capsys) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    ok = gpu_check.check_training(cpu_smoke=True)
    out = capsys.readouterr().out
    assert ok is True
    assert "img/s" in out and "PASS" in out


def test_train_cli_bad_data_dir_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert cli.main(["train", str(tmp_path / "missing"), "--arch", "resnext_test", "--workspace", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no train/ folder" in err and "Traceback" not in err
