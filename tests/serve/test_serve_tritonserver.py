"""Processes a Triton server leaves behind: Python-backend stubs run from the server's workspace, ignore SIGTERM
while they wait for their server, and outlive it when it goes first. The reaper finds them by that path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from resnext.serve.tritonserver import processes_started_from, reap_orphans, remove_workspace

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Triton runs on Linux)")

#: a stand-in for a stub: ignores SIGTERM and waits, as the real stub does while its server is alive
STUBBORN = "trap '' TERM; while :; do sleep 0.1; done"


def start_stub(folder: Path) -> subprocess.Popen:
    """``sh`` copied into ``folder`` and started from there, so its executable path lies inside ``folder``."""
    folder.mkdir(parents=True)
    stub = folder / "triton_python_backend_stub"
    shutil.copy2(shutil.which("sh") or "/bin/sh", stub)
    process = subprocess.Popen([str(stub), "-c", STUBBORN])
    deadline = time.monotonic() + 10
    while process.pid not in processes_started_from(f"{folder}{os.sep}"):
        assert time.monotonic() < deadline, "the stand-in stub did not appear in /proc"
        time.sleep(0.05)
    return process


def dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_remove_workspace_stops_a_stub_that_ignores_sigterm(tmp_path):
    process = start_stub(tmp_path / "ws" / "backends" / "python")
    try:
        process.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(0.5)  # it really ignores SIGTERM
        remove_workspace(tmp_path / "ws")
        assert process.wait(10) == -signal.SIGKILL
        assert processes_started_from(f"{tmp_path / 'ws'}{os.sep}") == {}
    finally:
        process.kill()
        process.wait()


def test_remove_workspace_leaves_other_folders_alone(tmp_path):
    process = start_stub(tmp_path / "other")
    try:
        remove_workspace(tmp_path / "ws")
        remove_workspace(tmp_path / "oth")  # a prefix of the folder name, not the folder
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_reap_orphans_stops_stubs_of_dead_servers_only(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    orphan = start_stub(tmp_path / f"resnext-serve-{dead_pid()}-abc" / "python")
    owned = start_stub(tmp_path / f"resnext-serve-{os.getpid()}-def" / "python")
    try:
        reap_orphans("resnext-serve-")
        assert orphan.wait(10) == -signal.SIGKILL
        assert owned.poll() is None  # its server (this process) still runs
    finally:
        for process in (orphan, owned):
            process.kill()
            process.wait()
