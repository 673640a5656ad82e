"""Helpers for the serving tests: free loopback ports, the process tree (to prove no tritonserver is left), and
stopping a server process started by a test."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """``n`` distinct 127.0.0.1 ports that were free a moment ago (bound together, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(command name, state, parent pid) from /proc, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    state, ppid = text[text.rindex(")") + 2 :].split()[:2]
    return name, state, int(ppid)


def descendants(root: int) -> dict[int, str]:
    """{pid: command name} of every living (non-zombie) process below ``root``."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(int(entry))) and info[1] != "Z":
            children.setdefault(info[2], []).append(int(entry))
            names[int(entry)] = info[0]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = names[child]
            todo.append(child)
    return found


def triton_processes(root: int) -> dict[int, str]:
    """tritonserver and Python-backend stub processes below ``root``."""
    return {p: n for p, n in descendants(root).items() if n.startswith(("tritonserver", "triton_python"))}


def alive(pids: list[int]) -> list[int]:
    """The ``pids`` that still exist and are not zombies."""
    return [p for p in pids if (info := _stat(p)) is not None and info[1] != "Z"]


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited within ``timeout`` seconds; waits for it either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
