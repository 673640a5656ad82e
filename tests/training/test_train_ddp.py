"""DDP under torchrun (gloo, 2 CPU processes): same weights as gradient accumulation; unpadded validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_env, make_tiny_dataset

from resnext.model.weights import read_checkpoint
from resnext.training.config import config_from_args
from resnext.training.evaluate import evaluate_folder
from resnext.training.trainer import train

COMMON = [
    "--arch",
    "resnext_test",
    "--image-size",
    "32",
    "--lr",
    "0.4",
    "--warmup",
    "0",
    "--epochs",
    "1",
    "--seed",
    "3",
    "-j",
    "0",
    "--no-progress",
    "-b",
    "8",
]


def torchrun(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "resnext.cli",
        *args,
    ]
    # one thread per process: two processes share the two cores
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env(threads=1))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_tiny_dataset(tmp_path_factory.mktemp("ddp"), num_classes=4, train_per_class=12, val_per_class=4)
    (root / "val" / "red_circle" / "003.jpg").unlink()  # 15 validation images: odd, so padding would show
    return root


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process_gradient_accumulation(data: Path, tmp_path: Path) -> None:
    ddp_ws = tmp_path / "ddp"
    proc = torchrun("train", str(data), *COMMON, "--workspace", str(ddp_ws))
    assert proc.returncode == 0, proc.stderr[-3000:]

    def single(workspace: Path, **extra) -> dict:
        args = {
            "arch": "resnext_test",
            "image_size": 32,
            "lr": 0.4,
            "warmup": 0,
            "epochs": 1,
            "seed": 3,
            "workers": 0,
            "progress": False,
            "batch_size": 8,
            "data": str(data),
            "workspace": str(workspace),
        }
        args.update(extra)
        # the same thread count as each DDP process: CPU kernels then round identically
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return train(config_from_args(args))
        finally:
            torch.set_num_threads(threads)

    single(tmp_path / "accum", optimizer_batch_size=16)  # the same two half-batches, one after the other
    ddp = read_checkpoint(ddp_ws / "last.pth")
    accum = read_checkpoint(tmp_path / "accum" / "last.pth")
    assert ddp["config"]["resolved"]["world_size"] == 2 and accum["config"]["resolved"]["accumulation"] == 2
    assert ddp["config"]["resolved"]["steps_per_epoch"] == accum["config"]["resolved"]["steps_per_epoch"] == 3
    # Parameters match. BN running statistics do not, by design: each DDP process normalises and tracks its own
    # half-batch (rank 0's are kept), while accumulation updates the statistics once per half-batch.
    params = [k for k in accum["state_dict"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for key in params:
        torch.testing.assert_close(ddp["state_dict"][key], accum["state_dict"][key], atol=1e-6, rtol=1e-5, msg=key)

    # sanity: one process with the full batch of 16 normalises BN over 16 images: a different run
    single(tmp_path / "full", batch_size=16)
    full = read_checkpoint(tmp_path / "full" / "last.pth")
    assert max((full["state_dict"][k] - accum["state_dict"][k]).abs().max().item() for k in params) > 1e-4

    # validation under DDP counted each of the 15 images exactly once
    val = [json.loads(line) for line in (ddp_ws / "log.jsonl").read_text().splitlines()]
    assert [r["val.count"] for r in val if "val.count" in r] == [15]

    # `resnext evaluate` under torchrun: same numbers as one process
    out = tmp_path / "ddp-eval.json"
    proc = torchrun(
        "evaluate",
        str(data / "val"),
        "--weights",
        str(ddp_ws / "last.pth"),
        "--image-size",
        "32",
        "-j",
        "0",
        "--no-progress",
        "-b",
        "4",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    distributed = json.loads(out.read_text())
    local = evaluate_folder(
        data / "val", weights=str(ddp_ws / "last.pth"), image_size=32, workers=0, batch_size=4, progress=False
    )
    assert distributed["world_size"] == 2 and distributed["val.count"] == local["val.count"] == 15
    assert distributed["val.top1"] == pytest.approx(local["val.top1"])
    assert distributed["val.top5"] == pytest.approx(local["val.top5"])
    assert distributed["val.loss"] == pytest.approx(local["val.loss"], rel=1e-4)


@pytest.mark.slow
def test_ddp_survives_a_process_whose_micro_batch_is_all_unreadable(tmp_path: Path) -> None:
    """Batch 1 per process and one corrupt image: one process has nothing to train on for a step. It must still
    join the gradient all-reduce (a zero gradient), or the other process waits forever."""
    root = make_tiny_dataset(tmp_path / "data", num_classes=2, train_per_class=2, val_per_class=1)
    broken = sorted((root / "train").rglob("*.png"))[0]
    broken.write_bytes(b"not an image")
    workspace = tmp_path / "ws"
    # batch 1 needs 64 px: at 32 px the last stage is 1x1 and BatchNorm cannot train on a single value
    args = [*COMMON, "--image-size", "64", "-b", "1", "--workspace", str(workspace)]  # the last value wins
    proc = torchrun("train", str(root), *args, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert broken.name in proc.stderr
    epochs = [json.loads(line) for line in (workspace / "log.jsonl").read_text().splitlines()]
    assert [r["train.skipped_images"] for r in epochs if "train.skipped_images" in r] == [1]
    state = read_checkpoint(workspace / "last.pth")["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
