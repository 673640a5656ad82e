"""The shared helpers: atomic writes, stale-temporary sweeping, output checks, device and precision tables."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from resnext.errors import ResnextError
from resnext.util import (
    TMP_PREFIX,
    atomic_open,
    atomic_path,
    autocast_dtype,
    check_writable,
    resolve_device,
    sweep_stale_temporaries,
)


def test_atomic_open_replaces_in_one_step_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_open(target) as f:
        f.write("new")
        assert not target.exists()  # readers never see a half-written file
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_sweep_removes_temporaries_of_dead_processes_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{TMP_PREFIX}{dead_pid}-x-out.pth"
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}-y-out.pth"
    other = tmp_path / "keep.pth"
    for path in (stale, live, other):
        path.write_text("x")
    assert sweep_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_check_writable_refuses_directories_and_read_only_folders(tmp_path):
    with pytest.raises(ResnextError, match="is a directory"):
        check_writable(tmp_path)
    assert check_writable(tmp_path / "new" / "file.json") == tmp_path / "new" / "file.json"
    if os.geteuid() != 0:  # root may write anywhere
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o555)
        with pytest.raises(ResnextError, match="not a writable folder"):
            check_writable(read_only / "out.json")


def test_device_and_precision_tables():
    assert resolve_device("cpu") == torch.device("cpu")
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp32") is None
    with pytest.raises(ResnextError, match="unknown precision"):
        autocast_dtype("fp8")
    with pytest.raises(ResnextError, match="unknown device"):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(ResnextError, match="no CUDA GPU"):
            resolve_device("cuda")
