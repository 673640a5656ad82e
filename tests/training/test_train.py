"""Training loop: learning, checkpoints, resume after SIGKILL, SIGTERM, fine-tuning, EMA, schedule, weight decay,
the workspace rule, failed saves, parse-time checks, --last-bn-0-init, and the trained model as a model source."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, cli_env, make_tiny_dataset
from torch import nn

from resnext import cli
from resnext.errors import ResnextError
from resnext.model.factory import create_model
from resnext.model.resnet import Bottleneck
from resnext.model.weights import read_checkpoint
from resnext.training.config import config_from_args
from resnext.training.optim import ModelEma, lr_at, parameter_groups
from resnext.training.trainer import Status, TrainingDiverged, build_model, train

FAST = {
    "arch": "resnext_test",
    "batch_size": 16,
    "image_size": 32,
    "lr": 0.4,
    "warmup": 1,
    "workers": 0,
    "progress": False,
    "seed": 0,
}
# one optimizer step on a fixed random batch: for what needs a real run but not real data
SYNTHETIC_TRAIN = ["train", "--data-backend", "synthetic", "--arch", "resnext_test"]  # argv of a quick run
SYNTHETIC = {
    "arch": "resnext_test",
    "data_backend": "synthetic",
    "num_classes": 3,
    "image_size": 32,
    "batch_size": 2,
    "prof": 1,
    "epochs": 1,
    "warmup": 0,
    "lr": 0.1,
    "workers": 0,
    "progress": False,
    "keep_last": 1,
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("shapes"), num_classes=4, train_per_class=32, val_per_class=8)


def run(data: Path | None, workspace: Path, **overrides):
    base = FAST if data is not None else SYNTHETIC
    return train(
        config_from_args({**base, "data": str(data) if data else None, "workspace": str(workspace), **overrides})
    )


def log_records(workspace: Path) -> list[dict]:
    return [json.loads(line) for line in (workspace / "log.jsonl").read_text().splitlines()]


def params(path: Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[key]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") and "tmp" in p.name]


# ---------------------------------------------------------------------------------------------------------------
# Learning


@pytest.mark.slow
def test_learns_coloured_shapes_fp32_and_writes_workspace(shapes: Path, tmp_path: Path) -> None:
    result = run(shapes, tmp_path, epochs=5, keep_last=2)
    assert result.status is Status.COMPLETED and result.epochs_done == 5
    assert result.metrics["val.top1"] >= 90.0, result.metrics

    # workspace: labels, config, JSON-lines log with NVIDIA's metric names, checkpoints with retention
    assert (tmp_path / "labels.txt").read_text().split() == sorted(p.name for p in (shapes / "train").iterdir())
    records = log_records(tmp_path)
    train_rec = next(r for r in records if "train.loss" in r)
    assert {"train.loss", "train.lr", "train.compute_ips", "train.total_ips", "train.grad_scale"} <= set(train_rec)
    val_rec = [r for r in records if "val.top1" in r]
    assert len(val_rec) == 5 and all(r["val.count"] == 32 for r in val_rec)
    assert {"val.top5", "val.loss", "val.compute_latency_at95", "val.compute_latency_at99"} <= set(val_rec[-1])
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pth")) == ["checkpoint-0004.pth", "checkpoint-0005.pth"]
    assert not temporaries(tmp_path), "temporary files left behind"
    last = read_checkpoint(tmp_path / "last.pth")  # weights_only=True
    assert {"state_dict", "optimizer", "scaler", "epoch", "rng", "config", "classes", "best_prec1"} <= set(last)
    assert last["epoch"] == 5 and last["config"]["resolved"]["global_batch"] == 16
    assert last["best_prec1"] == max(r["val.top1"] for r in val_rec) == result.best_top1
    assert read_checkpoint(tmp_path / "best.pth")["best_prec1"] == last["best_prec1"]
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
    # bf16 autocast is slow on AVX2-only CPUs (no native bf16): channels_last is the fastest layout for it
    result = run(shapes, tmp_path, epochs=4, precision="bf16", memory_format="nhwc", keep_last=0)
    assert result.metrics["val.top1"] >= 90.0, result.metrics


# ---------------------------------------------------------------------------------------------------------------
# Pure pieces: schedule, weight decay groups, EMA, recipes, --last-bn-0-init


def test_lr_schedule_warmup_cosine_linear_step_match_formula() -> None:
    base, per_epoch, epochs = 0.512, 10, 9
    total, warm = per_epoch * epochs, 2 * per_epoch
    kw = {"base_lr": base, "warmup_iters": warm, "total_iters": total, "iters_per_epoch": per_epoch, "epochs": epochs}
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
    for key in (
        "layer1.0.downsample.1.weight",
        "layer1.0.downsample.1.bias",
        "layer4.0.downsample.1.weight",
        "fc.bias",
    ):
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
    assert (plain.epochs, plain.mixup, plain.precision, plain.last_bn_0_init) == (90, 0.0, "fp32", False)


def test_no_augmentation_trains_on_the_evaluation_preprocessing(tmp_path: Path) -> None:
    # tiny, centred, not flip-invariant objects (digits) need training views that look like the evaluation crop
    from conftest import load_labelled

    from resnext.training.data import build_train_data
    from resnext.training.distributed import Distributed

    data = make_tiny_dataset(tmp_path, num_classes=2, train_per_class=4, val_per_class=1, size=48)
    expected, _ = load_labelled(data / "train", 32)
    seen = {}
    for flags in ([], ["--no-augmentation"]):
        cfg = config_from_args(
            cli.build_parser().parse_args(["train", str(data), "--image-size", "32", "-b", "8", "-j", "0", *flags])
        )
        loader = build_train_data(cfg, Distributed()).loader
        loader.sampler.set_epoch(0)
        images, _, _ = next(iter(loader))
        order = [index for index, _ in loader.sampler]
        seen[bool(flags)] = (images, expected[order])
    plain, augmented = seen[True], seen[False]
    assert torch.equal(plain[0], plain[1])  # exactly the eval preset's tensors, in the sampler's order
    assert not torch.allclose(augmented[0], augmented[1], atol=0.1)  # NVIDIA's random crops and flips by default


def test_data_loader_workers_default_to_the_usable_cpus_at_most_4() -> None:
    """train and evaluate start no more loader processes than CPUs this process may use (torch warns beyond them,
    twice per run on a 2-core machine with the old default of 4)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = cli.build_parser()
    assert config_from_args(parser.parse_args(["train", "/data"])).workers == min(4, cpus)
    assert parser.parse_args(["evaluate", "/data/val"]).workers == min(4, cpus)
    assert config_from_args(parser.parse_args(["train", "/data", "-j", "7"])).workers == 7  # asked for: as given


def test_last_bn_0_init_zeroes_exactly_each_blocks_bn3_gamma() -> None:
    args = ["train", "/data", "--arch", "resnext101_32x4d", "--num-classes", "10"]
    cfg_on = config_from_args(cli.build_parser().parse_args([*args, "--last-bn-0-init"]))
    cfg_off = config_from_args(cli.build_parser().parse_args(args))
    assert cfg_on.last_bn_0_init and not cfg_off.last_bn_0_init
    on, off = build_model(cfg_on, 10), build_model(cfg_off, 10)
    bn3 = {f"{name}.bn3.weight" for name, m in on.named_modules() if isinstance(m, Bottleneck)}
    assert len(bn3) == 3 + 4 + 23 + 3  # every block of ResNeXt101
    on_sd, off_sd = on.state_dict(), off.state_dict()
    for key, value in on_sd.items():
        if key in bn3:
            assert torch.count_nonzero(value) == 0 and torch.count_nonzero(off_sd[key]) == value.numel(), key
        else:  # everything else, stem BN, bn1/bn2, the downsample BNs and their biases included, is untouched
            assert torch.equal(value, off_sd[key]), key
    downsample_bn = [k for k in on_sd if ".downsample.1.weight" in k]
    assert len(downsample_bn) == 4 and all(torch.all(on_sd[k] == 1) for k in downsample_bn)
    with pytest.raises(ResnextError, match="from scratch"):
        config_from_args({**SYNTHETIC, "last_bn_0_init": True, "weights": "some.pth"})


# ---------------------------------------------------------------------------------------------------------------
# Flags checked before any work: one line, exit 2


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "-1"),
        ("--label-smoothing", "2"),
        ("--workers", "-1"),
        ("-p", "0"),
        ("--optimizer-batch-size", "-4"),
        ("--run-epochs", "0"),
        ("--warmup", "-5"),
        ("--weight-decay", "-1"),
        ("--image-size", "100000"),
        ("--lr", "nan"),
        ("--momentum", "1.5"),
        ("--keep-last", "-1"),
    ],
)
def test_bad_training_flag_is_one_line_exit_2_before_any_work(flag: str, value: str, tmp_path: Path, capsys) -> None:
    workspace = tmp_path / "ws"
    argv = [
        *SYNTHETIC_TRAIN,
        "--num-classes",
        "2",
        "--prof",
        "1",
        "--epochs",
        "1",
        "-b",
        "2",
        "--image-size",
        "32",
        "--no-progress",
        "--workspace",
        str(workspace),
    ]
    assert cli.main([*argv, flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: argument " in err and flag in err and "must be" in err, err
    assert not workspace.exists(), "the check must come before anything is written"


def test_resume_with_another_arch_or_batch_is_one_line_error(tmp_path: Path, capsys) -> None:
    run(None, tmp_path, epochs=2, run_epochs=1)
    capsys.readouterr()
    base = [
        "train",
        "--data-backend",
        "synthetic",
        "--num-classes",
        "3",
        "--prof",
        "1",
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--no-progress",
        "--workspace",
        str(tmp_path),
        "--resume",
        "auto",
        "-j",
        "0",
    ]
    before = (tmp_path / "last.pth").read_bytes()
    assert cli.main([*base, "--arch", "resnet50", "-b", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resnext_test checkpoint" in err and "--arch resnext_test" in err, err
    assert cli.main([*base, "--arch", "resnext_test", "-b", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "global batch of 2" in err and "has 4" in err, err
    assert (tmp_path / "last.pth").read_bytes() == before


# ---------------------------------------------------------------------------------------------------------------
# The workspace: one run per folder, atomic checkpoints, stale temporaries


def test_non_empty_workspace_needs_resume_or_overwrite(tmp_path: Path, caplog) -> None:
    run(None, tmp_path)
    best, log = (tmp_path / "best.pth").read_bytes(), (tmp_path / "log.jsonl").read_text()
    with pytest.raises(ResnextError, match=r"already holds a training run .*--resume auto.*--overwrite"):
        run(None, tmp_path, seed=1)
    assert (tmp_path / "best.pth").read_bytes() == best and (tmp_path / "log.jsonl").read_text() == log
    with pytest.raises(ResnextError, match="give only one"):
        run(None, tmp_path, overwrite=True, resume="auto")

    (tmp_path / "checkpoint-0019.pth").write_bytes(b"stale checkpoint of the earlier run")
    with caplog.at_level("WARNING", logger="resnext"):
        result = run(None, tmp_path, seed=1, overwrite=True)
    assert result.status is Status.COMPLETED
    assert "deleting the earlier run" in caplog.text and "checkpoint-0019.pth" in caplog.text
    assert not (tmp_path / "checkpoint-0019.pth").exists()
    assert [r["event"] for r in log_records(tmp_path) if "event" in r] == ["start"]  # a new log, not appended
    assert (tmp_path / "best.pth").read_bytes() != best


def test_failed_checkpoint_write_leaves_no_temporary_and_keeps_the_previous(tmp_path: Path) -> None:
    run(None, tmp_path, epochs=2, run_epochs=1)
    before = (tmp_path / "last.pth").read_bytes()
    # a real failing write: the kernel refuses to grow any file past 1 MB (EFBIG, as a full disk gives ENOSPC)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(ResnextError) as info:
            run(None, tmp_path, epochs=2, resume="auto")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    message = str(info.value)
    assert message.startswith("cannot write") and "checkpoint-0002.pth" in message and "\n" not in message
    assert not temporaries(tmp_path), temporaries(tmp_path)
    assert (tmp_path / "last.pth").read_bytes() == before
    assert read_checkpoint(tmp_path / "last.pth")["epoch"] == 1


def test_stale_temporaries_of_dead_processes_are_swept_at_start(tmp_path: Path, caplog) -> None:
    run(None, tmp_path, epochs=2, run_epochs=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [
        tmp_path / f".resnext-tmp-{dead.pid}-x1y2-checkpoint-0002.pth",
        tmp_path / f".checkpoint-0002.pth.tmp-{dead.pid}",
    ]  # the name versions before atomic_path used
    live = tmp_path / f".resnext-tmp-{os.getpid()}-z3-last.pth"  # a live process: kept
    for path in [*stale, live]:
        path.write_bytes(b"x" * 1000)
    with caplog.at_level("WARNING", logger="resnext"):
        run(None, tmp_path, epochs=2, resume="auto")
    assert not any(p.exists() for p in stale) and live.exists()
    assert all(p.name in caplog.text for p in stale)


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
    return [
        sys.executable,
        "-m",
        "resnext.cli",
        "train",
        str(data),
        "--arch",
        "resnext_test",
        "-b",
        "16",
        "--image-size",
        "32",
        "--lr",
        "0.4",
        "--warmup",
        "1",
        "--seed",
        "0",
        "--no-progress",
        "--workspace",
        str(workspace),
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_resume_auto_equals_uninterrupted_run(shapes: Path, tmp_path: Path) -> None:
    epochs = 3
    reference = tmp_path / "reference"
    run(shapes, reference, epochs=epochs)

    # a separate process with 2 loader workers (augmentation is seeded per sample, so workers don't matter)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(shapes, killed, "--epochs", str(epochs), "-j", "2"),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: (killed / "log.jsonl").is_file() and any("val.top1" in r for r in log_records(killed)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = read_checkpoint(killed / "last.pth")["epoch"]
    assert 1 <= interrupted_at < epochs

    result = run(shapes, killed, epochs=epochs, resume="auto", workers=1)
    assert result.epochs_done == epochs
    ref, resumed = read_checkpoint(reference / "last.pth"), read_checkpoint(killed / "last.pth")
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for a, b in zip(ref["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


@pytest.mark.slow
def test_sigterm_checkpoints_mid_epoch_and_resumes(shapes: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _train_cmd(shapes, tmp_path, "--epochs", "2", "-p", "1", "-j", "0"),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(
        lambda: (tmp_path / "log.jsonl").is_file() and any("train.loss" in r for r in log_records(tmp_path)), proc
    )
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr
    ckpt = read_checkpoint(tmp_path / "last.pth")
    assert ckpt["epoch"] == 0 and 1 <= ckpt["step"] <= 8
    assert any(r.get("event") == "stopped" for r in log_records(tmp_path))
    result = run(shapes, tmp_path, epochs=2, resume="auto")
    assert result.epochs_done == 2 and read_checkpoint(tmp_path / "last.pth")["epoch"] == 2


def test_nan_loss_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    run(None, tmp_path, epochs=2, run_epochs=1, keep_last=0, prof=3)
    good = (tmp_path / "last.pth").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"loss became nan.*last good checkpoint"):
        run(None, tmp_path, epochs=2, resume="auto", lr=1e30, keep_last=0, prof=3)
    assert (tmp_path / "last.pth").read_bytes() == good
    weights = read_checkpoint(tmp_path / "last.pth")["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert any(r.get("event") == "diverged" for r in log_records(tmp_path))


def test_corrupt_training_image_is_logged_skipped_and_counted(tmp_path: Path, caplog) -> None:
    data = make_tiny_dataset(tmp_path / "data", num_classes=2, train_per_class=8, val_per_class=2)
    bad_text = data / "train" / "blue_triangle" / "not_an_image.png"
    bad_text.write_text("this is not a PNG")
    truncated = data / "train" / "green_square" / "truncated.png"
    truncated.write_bytes((data / "train" / "green_square" / "000.png").read_bytes()[:60])
    with caplog.at_level("WARNING", logger="resnext"):
        result = run(data, tmp_path / "ws", epochs=1, keep_last=0, batch_size=6)  # 18 images: 3 steps, all used
    assert result.status is Status.COMPLETED
    assert result.metrics["train.skipped_images"] == 2
    assert str(bad_text) in caplog.text and str(truncated) in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# --evaluate, fine-tuning and weight export


def test_finished_run_prints_its_best_epoch_top1_and_best_pth(tmp_path: Path, capsys) -> None:
    data = make_tiny_dataset(tmp_path / "data", num_classes=2, train_per_class=4, val_per_class=3)
    workspace = tmp_path / "ws"
    flags = ["--arch", "resnext_test", "--image-size", "32", "-b", "4", "-j", "0", "--no-progress"]
    assert cli.main(["train", str(data), *flags, "--epochs", "2", "--workspace", str(workspace)]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"trained 2/2 epochs: best val top-1 (\S+)% at epoch (\d), weights in (\S+)", last_line)
    assert match, last_line
    best = read_checkpoint(workspace / "best.pth")
    assert match.group(3) == str(workspace / "best.pth")
    assert float(match.group(1)) == pytest.approx(best["best_prec1"], abs=0.005)
    assert int(match.group(2)) == best["best_epoch"] == best["epoch"]  # best.pth is that epoch's checkpoint
    top1 = {r["epoch"]: r["val.top1"] for r in log_records(workspace) if "val.top1" in r}
    assert top1[best["best_epoch"]] == max(top1.values()) == best["best_prec1"]


def test_train_evaluate_prints_result_without_a_full_training_batch(tmp_path: Path, capsys) -> None:
    data = make_tiny_dataset(tmp_path / "data", num_classes=2, train_per_class=1, val_per_class=3)
    workspace = tmp_path / "ws"
    code = cli.main(
        [
            "train",
            str(data),
            "--arch",
            "resnext_test",
            "--image-size",
            "32",
            "-b",
            "16",
            "-j",
            "0",
            "--evaluate",
            "--no-progress",
            "--workspace",
            str(workspace),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "resnext_test on" in out and "top-1" in out and "(6 images, 0 unreadable)" in out, out
    assert not workspace.exists() or not any(workspace.iterdir())  # nothing written


def test_finetune_1000_class_file_with_frozen_backbone_changes_only_fc(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "five", num_classes=5, train_per_class=8, val_per_class=2)
    torch.manual_seed(123)
    pretrained = create_model("resnext_test")  # 1000 classes, random weights, random BN statistics
    for m in pretrained.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    file = tmp_path / "imagenet.pth"
    torch.save(pretrained.state_dict(), file)
    original = pretrained.state_dict()

    run(
        data, tmp_path / "frozen", epochs=1, weights=str(file), num_classes=5, freeze_backbone=True, lr=1.0, keep_last=0
    )
    tuned = params(tmp_path / "frozen" / "last.pth")
    assert tuned["fc.weight"].shape == (5, 2048)
    changed = [k for k in tuned if not k.startswith("fc.") and not torch.equal(tuned[k], original[k])]
    assert changed == [], changed

    run(data, tmp_path / "full", epochs=1, weights=str(file), num_classes=5, keep_last=0)
    full = params(tmp_path / "full" / "last.pth")
    fresh = create_model("resnext_test", num_classes=5).state_dict()
    moved = (full["layer2.0.conv2.weight"] - original["layer2.0.conv2.weight"]).norm()
    assert 0 < moved < 0.5 * (fresh["layer2.0.conv2.weight"] - original["layer2.0.conv2.weight"]).norm()


def test_ema_export_round_trips_into_create_model(tmp_path: Path) -> None:
    run(None, tmp_path, use_ema=0.9, prof=3)
    ckpt = read_checkpoint(tmp_path / "last.pth")
    for flag, key in (["--ema"], "state_dict_ema"), ([], "state_dict"):
        out = tmp_path / f"export-{key}.pth"
        assert cli.main(["export-weights", str(tmp_path / "last.pth"), str(out), *flag]) == 0
        model = create_model("resnext_test", weights=str(out), num_classes=3)
        for name, value in model.state_dict().items():
            assert torch.equal(value, ckpt[key][name]), name
    assert not torch.equal(ckpt["state_dict_ema"]["fc.weight"], ckpt["state_dict"]["fc.weight"])
    exported = torch.load(tmp_path / "export-state_dict_ema.pth", weights_only=True)
    assert set(exported["state_dict"]) == set(ckpt["state_dict"])  # tensors, plus the metadata below
    assert (exported["arch"], exported["classes"], exported["image_size"]) == ("resnext_test", ckpt["classes"], 32)
    assert not temporaries(tmp_path)


@pytest.fixture(scope="module")
def trained_abc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``resnext_test`` trained at 64 px on class folders a/b/c; its best.pth and an export-weights copy."""
    root = tmp_path_factory.mktemp("abc")
    data = make_tiny_dataset(root / "data", num_classes=3, train_per_class=8, val_per_class=4, size=72)
    for split in ("train", "val"):
        for old, new in zip(sorted((data / split).iterdir()), "abc"):
            old.rename(data / split / new)
    workspace = root / "ws"
    run(data, workspace, epochs=1, image_size=64, batch_size=8, keep_last=0)
    exported = root / "exported.pth"
    assert cli.main(["export-weights", str(workspace / "best.pth"), str(exported)]) == 0
    return {"data": data, "best": workspace / "best.pth", "exported": exported}


@pytest.mark.parametrize("which", ["best", "exported"])
def test_trained_weights_classify_with_their_names_and_size_without_arch(trained_abc, which, capsys) -> None:
    from resnext.inference.predict import Predictor

    weights = str(trained_abc[which])
    predictor = Predictor.from_pretrained(weights=weights, backend="torch", device="cpu")
    assert (predictor.arch, predictor.categories, predictor.image_size) == ("resnext_test", ["a", "b", "c"], 64)
    image = next((trained_abc["data"] / "val" / "b").iterdir())
    assert (
        cli.main(
            [
                "classify",
                str(image),
                "--weights",
                weights,
                "--json",
                "--topk",
                "3",
                "--workers",
                "0",
                "--backend",
                "torch",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    labels = {p["label"] for line in out.splitlines() if line.startswith("{") for p in json.loads(line)["predictions"]}
    assert labels == {"a", "b", "c"}, out


def test_evaluate_gives_the_same_result_from_best_and_from_export_weights(trained_abc) -> None:
    from resnext.training.evaluate import evaluate_folder

    val = trained_abc["data"] / "val"
    common = {"batch_size": 4, "workers": 0, "progress": False, "device": "cpu"}
    best = evaluate_folder(val, weights=str(trained_abc["best"]), **common)
    exported = evaluate_folder(val, weights=str(trained_abc["exported"]), **common)
    assert best["arch"] == exported["arch"] == "resnext_test"
    assert best["image_size"] == exported["image_size"] == 64
    for key in ("val.top1", "val.top5", "val.count"):
        assert best[key] == exported[key], key
    assert best["val.loss"] == pytest.approx(exported["val.loss"], rel=1e-6)
    assert best["val.top1"] == read_checkpoint(trained_abc["best"])["best_prec1"]  # what training measured


def test_train_evaluate_takes_arch_classes_and_size_from_the_checkpoint(trained_abc, tmp_path: Path, capsys) -> None:
    """`train DATA --resume best.pth --evaluate` with no --arch/--image-size evaluates the checkpoint as
    `resnext evaluate` does: its architecture, its 64 px, its class names (a val/ lacking a class included)."""
    common = ["-j", "0", "--no-progress", "--workspace", str(tmp_path / "ws")]
    expected = cli.main(["evaluate", str(trained_abc["data"] / "val"), "--weights", str(trained_abc["best"]), "--json"])
    assert expected == 0
    wanted = json.loads(capsys.readouterr().out)
    assert wanted["image_size"] == 64 and wanted["arch"] == "resnext_test"

    resume = ["--resume", str(trained_abc["best"]), "--evaluate", *common]
    assert cli.main(["train", str(trained_abc["data"]), *resume]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnext_test on ") and " at 64 px: " in out, out
    assert f"top-1 {wanted['val.top1']:.2f}%" in out and f"loss {wanted['val.loss']:.4f}" in out, (out, wanted)

    # val/ without class "a" and no train/: still the checkpoint's label order, so b is b
    partial = tmp_path / "partial"
    shutil.copytree(trained_abc["data"] / "val" / "b", partial / "val" / "b")
    shutil.copytree(trained_abc["data"] / "val" / "c", partial / "val" / "c")
    assert cli.main(["train", str(partial), *resume]) == 0
    assert "(8 images, 0 unreadable)" in capsys.readouterr().out


@pytest.mark.slow
def test_synthetic_backend_with_mixup_fp16_accumulation_and_ema(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        [
            *SYNTHETIC_TRAIN,
            "--num-classes",
            "10",
            "--image-size",
            "32",
            "-b",
            "4",
            "--optimizer-batch-size",
            "8",
            "--prof",
            "2",
            "--epochs",
            "2",
            "--mixup",
            "0.2",
            "--precision",
            "fp16",
            "--memory-format",
            "nhwc",
            "--use-ema",
            "0.99",
            "--lr-schedule",
            "step",
            "--workspace",
            str(tmp_path),
            "--no-progress",
            "-p",
            "1",
        ]
    )
    result = train(config_from_args(args))
    assert result.status is Status.COMPLETED and result.epochs_done == 2
    steps = [r for r in log_records(tmp_path) if "train.grad_scale" in r]
    assert len(steps) == 4 and steps[0]["train.grad_scale"] == 128.0  # dynamic scaling starts at 128
    assert all(math.isfinite(r["train.loss"]) for r in steps)
    ckpt = read_checkpoint(tmp_path / "last.pth")
    assert ckpt["scaler"]["scale"] > 0 and "state_dict_ema" in ckpt
    assert ckpt["config"]["resolved"]["accumulation"] == 2


# ---------------------------------------------------------------------------------------------------------------
# The prepared GPU check, on its CPU smoke path; CLI errors


def test_gpu_check_training_cpu_smoke(capsys) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
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
