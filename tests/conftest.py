"""Shared fixtures: loopback HTTP servers, an isolated weights cache, reference checkpoints, sample images, and
the one tiny-dataset factory (:func:`make_image_folder` / :func:`make_tiny_dataset`) every test draws data from.

Nothing here touches the network: servers bind 127.0.0.1, and the weights mirror points at a closed local port
so any accidental fetch fails fast instead of reaching NGC.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import random
import shutil
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw
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


# ---------------------------------------------------------------------------------------------------------------
# The tiny-dataset factory: learnable ImageFolder trees of coloured shapes

#: class name -> (fill colour, shape); colour and shape both identify the class (sorted = label order)
TINY_CLASSES = {
    "blue_triangle": ((40, 60, 220), "triangle"),
    "green_square": ((40, 180, 60), "square"),
    "red_circle": ((220, 40, 40), "circle"),
    "yellow_cross": ((230, 210, 30), "cross"),
    "magenta_diamond": ((200, 50, 200), "diamond"),
}


def _draw(shape: str, colour: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    # A tinted, speckled background scattered with shapes of the class: any crop, at any of RandomResizedCrop's
    # scales or the evaluation's centre crop, holds similar evidence, so few steps learn it reliably.
    background = tuple(int(0.45 * c + 0.55 * rng.randint(90, 160)) for c in colour)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(size):
        draw.point((rng.randrange(size), rng.randrange(size)), fill=tuple(rng.randint(60, 200) for _ in range(3)))
    for _ in range(7):
        half = rng.uniform(0.09, 0.16) * size
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
        box = (cx - half, cy - half, cx + half, cy + half)
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
        elif shape == "diamond":
            draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
        else:
            w = half / 2.5
            draw.rectangle((cx - w, cy - half, cx + w, cy + half), fill=fill)
            draw.rectangle((cx - half, cy - w, cx + half, cy + w), fill=fill)
    return image


def tiny_classes(num_classes: int = 4) -> list[str]:
    """The class (folder) names of :func:`make_image_folder`, in label (sorted) order."""
    return sorted(list(TINY_CLASSES)[:num_classes])


def make_image_folder(
    root: Path,
    *,
    num_classes: int = 4,
    per_class: int = 8,
    size: int = 40,
    seed: int = 0,
    ext: str = "png",
) -> Path:
    """Write ``root/<class>/NNN.<ext>``: ``per_class`` images of ``size`` px per class; returns ``root``."""
    rng = random.Random(seed)
    for name in list(TINY_CLASSES)[:num_classes]:
        colour, shape = TINY_CLASSES[name]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _draw(shape, colour, size, rng).save(folder / f"{i:03d}.{ext}", quality=95)
    return root


def make_tiny_dataset(root: Path, *, train_per_class: int = 24, val_per_class: int = 8, **folder: Any) -> Path:
    """A training tree ``root/train/<class>/*.png`` + ``root/val/<class>/*.jpg``; returns ``root``. ``folder``:
    ``num_classes``, ``size`` and ``seed`` of :func:`make_image_folder` (val images use the next seed)."""
    seed = folder.pop("seed", 0)
    make_image_folder(root / "train", per_class=train_per_class, seed=seed, **folder)
    make_image_folder(root / "val", per_class=val_per_class, seed=seed + 1, ext="jpg", **folder)
    return root


def small_model_flags(checkpoint: Path, *more: str) -> list[str]:
    """CLI flags for the small trained model of ``small_checkpoint``, then ``more``."""
    return ["--arch", "resnext_test", "--weights", str(checkpoint), *more]


def load_labelled(root: Path, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder tree through the package's own decode + eval preset, with its label."""
    from resnext.images import find_images, load_image
    from resnext.transforms import eval_preset

    transforms = eval_preset(image_size)
    images, labels = [], []
    for index, name in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
        for path in find_images([root / name]):
            images.append(transforms(load_image(path)))
            labels.append(index)
    return torch.stack(images), torch.tensor(labels)


def train_tiny(
    train_dir: Path, *, image_size: int = 32, steps: int = 40, batch_size: int = 16, seed: int = 0
) -> nn.Module:
    """``resnext_test`` trained with a plain torch loop (AdamW, flips) on a tiny folder: confident logits in ~15 s,
    what int8 agreement checks need (a random network's near-tie logits flip with any rounding)."""
    from resnext.model.factory import create_model

    torch.manual_seed(seed)
    images, labels = load_labelled(train_dir, image_size)
    model = create_model("resnext_test", num_classes=int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        x, y = images[index], labels[index]
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def cli_env(extra: dict[str, str] | None = None, threads: int = 2) -> dict[str, str]:
    """Environment for a ``python -m resnext.cli`` subprocess: this checkout's sources, bounded threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    env.update(extra or {})
    return env


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


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, small_checkpoint) -> Path:
    """``resnext export-weights small_checkpoint DIR --format hf``: small_checkpoint in timm's Hub folder layout."""
    from resnext.cli import main

    folder = tmp_path_factory.mktemp("hf") / "tiny"
    assert main(["export-weights", str(small_checkpoint), str(folder), "--format", "hf"]) == 0
    return folder


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ISOLATED_ENV = "RESNEXT_TEST_ISOLATED"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Tests marked ``isolated`` run in a child pytest process of their own. The in-process inference benchmark
    (bf16/int8 kernels on AMX CPUs, torch.compile tracing) leaves the process in a state in which a later fork of
    DataLoader workers was seen to kill the whole test process with SIGSEGV; a child process keeps that out."""
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(ISOLATED_ENV):
        return None
    import subprocess

    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env={**os.environ, ISOLATED_ENV: "1"}, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    return True


@pytest.fixture(autouse=True)
def eager_by_default(monkeypatch, tmp_path_factory) -> None:
    """``--backend auto`` means eager PyTorch in tests (tests/inference/test_auto.py unsets this to test auto itself):
    the one-time export it would do is seconds per model, and each test's model is new. Any auto cache a test does
    write goes to a temporary folder, never to the user's."""
    monkeypatch.setenv("RESNEXT_AUTO", "torch")
    monkeypatch.setenv("RESNEXT_CACHE", str(tmp_path_factory.getbasetemp() / "resnext-auto-cache"))


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


@pytest.fixture
def loopback_hub(tmp_path, monkeypatch) -> Callable[..., Any]:
    """Factory: ``loopback_hub({"me/tiny": {"main": {"model.safetensors": b"..."}}}, bad_hash={...})`` (and the
    other :class:`_hf_hub.HubState` fields: declared_size, trickle) starts a :class:`_hf_hub.LoopbackHub` that
    ``huggingface_hub`` talks to, in this process (its endpoint constants) and in subprocesses (``HF_ENDPOINT``);
    its cache (``HF_HOME``/``HF_HUB_CACHE``) is a fresh folder, no token is set and offline mode is off. Every hub
    started is stopped afterwards."""
    constants = pytest.importorskip("huggingface_hub.constants")
    from _hf_hub import HubState, LoopbackHub

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    hubs: list[LoopbackHub] = []

    def start(repos: dict[str, dict[str, dict[str, bytes]]], bad_hash: set[str] | None = None, **state) -> LoopbackHub:
        hub = LoopbackHub(HubState(repos, set(bad_hash or ()), **state))
        hubs.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        return hub

    yield start
    for hub in hubs:
        hub.close()


def read_output(path: Path) -> list[dict]:
    """Rows of a classify output in any format, as dicts with path/error/labels/indices/probabilities."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            k = sum(c.startswith("label_") for c in r)
            present = [i for i in range(1, k + 1) if r[f"label_{i}"]]
            rows.append(
                {
                    "path": r["path"],
                    "error": r["error"] or None,
                    "labels": [r[f"label_{i}"] for i in present],
                    "indices": [int(r[f"index_{i}"]) for i in present],
                    "probabilities": [float(r[f"probability_{i}"]) for i in present],
                }
            )
    return rows
