"""Shared fixtures: loopback HTTP servers, an isolated weights cache, reference checkpoints, sample images.

Nothing here touches the network: servers bind 127.0.0.1, and the weights mirror points at a closed local port
so any accidental fetch fails fast instead of reaching NGC.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from resnext.images import sample_images

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # hubconf.py lives at the repository root
    sys.path.insert(0, str(REPO_ROOT))

SAMPLES = [Path(p) for p in sample_images()]
NGC_RESNEXT_FILE = "nvidia_resnext101-32x4d_200821.pth.tar"


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics, so a wrong BN mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model.eval()


def tv_resnext101_32x4d() -> nn.Module:
    """torchvision's generic ResNet configured as ResNeXt101-32x4d: the independent reference."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)


@pytest.fixture(scope="session")
def tv_reference(tmp_path_factory) -> tuple[nn.Module, Path]:
    """(torchvision ResNeXt101-32x4d with random weights and BN statistics, its flat NGC-style state_dict file)."""
    torch.manual_seed(0)
    model = randomize_bn(tv_resnext101_32x4d())
    path = tmp_path_factory.mktemp("reference") / NGC_RESNEXT_FILE
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A random-weights ``resnext_test`` checkpoint (1000 classes, flat state_dict)."""
    from resnext import create_model

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("small") / "resnext_test.pth"
    torch.save(randomize_bn(create_model("resnext_test"), seed=1).state_dict(), path)
    return path


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """Empty ``$TORCH_HOME``; the weights mirror is a closed loopback port, so no fetch can succeed or leave."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("RESNEXT_WEIGHTS_MIRROR", f"http://127.0.0.1:{closed_port()}/weights")
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert Path(torch.hub.get_dir()) / "checkpoints" == checkpoints
    return checkpoints


def place_file(src: Path, dst: Path) -> Path:
    """Put ``src`` at ``dst`` cheaply (hard link when possible; these files are up to 177 MB)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    mode = "normal"  # normal | cut (dies half-way) | no-length (no Content-Length header)
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(self.path)
        body = self.files.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404, "not found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.mode != "no-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.mode == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        for start in range(0, len(body), 1 << 20):
            self.wfile.write(body[start : start + (1 << 20)])
        self.close_connection = self.mode == "no-length"

    def log_message(self, *args) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (size-limit tests) are expected here


@pytest.fixture
def http_server() -> Callable[..., tuple[str, list[str]]]:
    """Factory: ``serve({"/a.bin": b"..."}, mode="normal")`` -> (base URL on 127.0.0.1, list of requested paths)."""
    servers = []

    def serve(files: dict[str, bytes], mode: str = "normal") -> tuple[str, list[str]]:
        handler = type("Handler", (_Handler,), {"files": files, "mode": mode, "requests": []})
        server = _QuietServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", handler.requests

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
