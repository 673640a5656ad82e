"""The ``tritonserver`` binary bundled with ``nvidia-pytriton``: environment, readiness, and running it directly.

PyTriton's wheel ships Triton Inference Server (2.51) with its Python backend only. Two facts make it work here:

- it needs ``numpy<2`` (with numpy 2 it returned wrong outputs without an error), checked by :func:`require_serving`;
- the Python-backend stub embeds the running interpreter and must find that interpreter's own ``libpython``:
  ``sys.base_prefix/lib`` goes first on ``LD_LIBRARY_PATH`` of the server process, otherwise models fail to load
  with an RLock error (:func:`server_environment`).

:class:`TritonProcess` runs the binary on a model repository written by ``resnext triton-repo --format python``
(the Python backend is the only backend inside the wheel); ``resnext serve --repository`` and the tests use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ResnextError
from ..runtime.table import require
from ..util import sweep_stale_temporaries
from . import SERVE_EXTRA


def require_serving() -> Any:
    """Import PyTriton (and check its numpy constraint), or fail in one line naming the extra to install."""
    pytriton = require("pytriton", SERVE_EXTRA)
    require("tritonclient.http", SERVE_EXTRA)
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise ResnextError(
            f"the bundled Triton server needs numpy<2 (numpy {numpy.__version__} is installed; it returns wrong "
            f"outputs with numpy 2): pip install 'resnext[{SERVE_EXTRA}]'"
        )
    return pytriton


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with this interpreter's ``libpython`` folder first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    first = os.path.join(sys.base_prefix, "lib")
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != first]
    env["LD_LIBRARY_PATH"] = ":".join([first, *rest])
    return env


def bundled_paths() -> tuple[Path, Path, Path]:
    """(tritonserver binary, its shared-library folder, the Python-backend stub for this Python version)."""
    from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path

    root = Path(get_root_module_path()) / "tritonserver"
    stub = Path(get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}"))
    if not stub.is_file():
        raise ResnextError(
            f"nvidia-pytriton has no Python-backend stub for Python {sys.version_info[0]}.{sys.version_info[1]}"
        )
    return root / "bin" / "tritonserver", Path(get_libs_path()), stub


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM to it when this process dies (no orphans)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def processes_started_from(prefix: str) -> dict[int, str]:
    """Processes (any owner we can see) whose executable path starts with ``prefix``: pid -> that path.

    Triton's Python-backend stubs run from the server's copy in its workspace, so a workspace path names them.
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if argv0.startswith(prefix):
                found[int(entry.name)] = argv0
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_processes(pids: Sequence[int], grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL what still runs after ``grace_s`` (the stubs ignore SIGTERM while they wait for
    their server, so without this an orphaned stub would hold its shared memory forever)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = [pid for pid in pids if _running(pid)]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)


def new_workspace(prefix: str) -> Path:
    """A fresh ``<tmp>/<prefix><pid>-*`` folder for a server's copy of Triton (~30 MB), after stopping the stubs
    and removing the folders of servers that no longer run (killed with SIGKILL)."""
    reap_orphans(prefix)
    sweep_stale_temporaries(tempfile.gettempdir(), prefix=prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def remove_workspace(workspace: Path) -> None:
    """Stop every process started from ``workspace``, then delete it: PyTriton's stop (and a SIGKILLed
    tritonserver) can leave Python-backend stubs running after the server is gone."""
    kill_processes(list(processes_started_from(f"{workspace}{os.sep}")))
    shutil.rmtree(workspace, ignore_errors=True)


def reap_orphans(prefix: str) -> None:
    """Stop processes started from ``<tmp>/<prefix><pid>-*`` workspaces whose owner ``pid`` no longer runs."""
    start = os.path.join(tempfile.gettempdir(), prefix)
    owners = {pid: argv0[len(start) :].split("-", 1)[0] for pid, argv0 in processes_started_from(start).items()}
    kill_processes([pid for pid, owner in owners.items() if owner.isdigit() and not _running(int(owner))])


def wait_ready(url: str, timeout: float, process: subprocess.Popen | None = None, models: Sequence[str] = ()) -> None:
    """Poll Triton's readiness (``/v2/health/ready``, then ``/v2/models/<name>/ready`` for each of ``models``:
    models loaded after start-up, as PyTriton does, are not covered by the server's own readiness) until all
    answer 200; fail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    paths = ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in models)]
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ResnextError(f"tritonserver exited with status {process.returncode} before it was ready")
        try:
            for path in paths:
                with urllib.request.urlopen(f"http://{url}{path}", timeout=2) as response:
                    if response.status != 200:
                        raise OSError(path)
            return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise ResnextError(f"Triton at {url} was not ready within {timeout:.0f} s")


class TritonProcess:
    """The bundled ``tritonserver`` serving a model repository on loopback ports; a context manager."""

    def __init__(
        self,
        repository: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        exit_timeout_s: int = 10,
    ) -> None:
        self.repository = Path(repository)
        if not self.repository.is_dir():
            raise ResnextError(f"model repository not found: {self.repository}")
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.exit_timeout_s = exit_timeout_s
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def _backends(self, workdir: Path) -> Path:
        """A backend folder holding the Python backend with the stub matching this interpreter."""
        binary, _, stub = bundled_paths()
        backends = workdir / "backends"
        shutil.copytree(binary.parent.parent / "backends", backends)
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        return backends

    def start(self, timeout: float = 120.0) -> TritonProcess:
        require_serving()
        binary, libs, _ = bundled_paths()
        self.workdir = new_workspace("resnext-triton-")
        env = server_environment()
        env["LD_LIBRARY_PATH"] += f":{libs}"
        args = [
            str(binary),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self._backends(self.workdir)}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--strict-readiness=true",
        ]
        self.log_path = self.workdir / "tritonserver.log"
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                args,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        try:
            wait_ready(self.http_url, timeout, self.process)
        except ResnextError as exc:
            tail = self.log_tail()
            self.stop()
            raise ResnextError(f"{exc}; last log line: {tail}") from exc
        return self

    def log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        errors = [ln for ln in lines if ln.startswith("E")]
        return (errors or lines or [""])[-1][:400]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT (Triton finishes in-flight requests within its exit timeout), then SIGKILL if it hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.workdir is not None:
            remove_workspace(self.workdir)
            self.workdir = None

    def __enter__(self) -> TritonProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
