"""Training checkpoint files: atomic writes, retention, the workspace rule, RNG state, weight export.

Files a run writes into its workspace (rank 0 only): ``log.jsonl``, ``config.json``, ``labels.txt``, ``last.pth``,
``best.pth`` (by val top-1) and the last ``--keep-last`` ``checkpoint-NNNN.pth``. Every checkpoint is written
through :func:`resnext.util.atomic_path`: a failed write (full disk, killed process) leaves the previous file
intact and no temporary behind; temporaries of processes that died hard are swept when the next run starts.

A workspace that already holds a run is refused unless ``--resume`` continues it or ``--overwrite`` deletes it
(logged): nothing from an earlier run is replaced or pruned silently.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ResnextError, first_line
from ..model.sources import checkpoint_metadata, with_metadata
from ..model.weights import read_checkpoint
from ..util import _alive, atomic_open, atomic_path, check_writable, sweep_stale_temporaries

logger = logging.getLogger("resnext")

__all__ = [
    "RUN_FILES",
    "RunLog",
    "prepare_workspace",
    "save_checkpoint",
    "write_checkpoint",
    "read_training_checkpoint",
    "rng_state",
    "set_rng_state",
    "export_weights",
]

#: What a training run writes into its workspace (globs); any of them present means the workspace holds a run.
RUN_FILES = ("log.jsonl", "config.json", "labels.txt", "last.pth", "best.pth", "checkpoint-[0-9]*.pth", "tensorboard")
_LEGACY_TMP = re.compile(r"^\..+\.tmp-(\d+)$")  # ".checkpoint-0002.pth.tmp-PID" of versions before atomic_path


def run_files(workspace: Path) -> list[Path]:
    return sorted({p for pattern in RUN_FILES for p in workspace.glob(pattern)})


def prepare_workspace(workspace: str | os.PathLike[str], *, resume: str | None, overwrite: bool) -> Path:
    """Create ``workspace``, sweep stale temporaries of dead processes, and apply the one-run-per-folder rule."""
    workspace = Path(workspace)
    if workspace.exists() and not workspace.is_dir():
        raise ResnextError(f"--workspace {workspace} is a file, not a folder")
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResnextError(f"cannot create --workspace {workspace}: {exc.strerror or exc}") from exc
    if not os.access(workspace, os.W_OK | os.X_OK):
        raise ResnextError(f"--workspace {workspace} is not writable")
    for path in sweep_stale_temporaries(workspace) + _sweep_legacy_temporaries(workspace):
        logger.warning("removed %s, a temporary file left by a process that no longer runs", path)
    existing = run_files(workspace)
    if not existing or resume:
        return workspace
    names = ", ".join(p.name for p in existing[:6]) + (", ..." if len(existing) > 6 else "")
    if not overwrite:
        raise ResnextError(
            f"--workspace {workspace} already holds a training run ({names}); continue it with "
            "--resume auto, choose another --workspace, or pass --overwrite to delete it and start over"
        )
    logger.warning("--overwrite: deleting the earlier run in %s: %s", workspace, names)
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return workspace


def _sweep_legacy_temporaries(folder: Path) -> list[Path]:
    removed = []
    for entry in folder.iterdir():
        match = _LEGACY_TMP.match(entry.name)
        if match and entry.is_file() and not _alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through a temporary file, flushed to disk, then renamed over ``path``."""
    with atomic_open(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:  # torch's zip writer reports a full disk as RuntimeError: make it an OSError
            raise OSError(first_line(exc)) from exc
    return Path(path)


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes the same file as ``src`` (hard link, or a copy where links are not supported), atomically."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def write_checkpoint(
    state: dict[str, Any], workspace: Path, *, epoch: int, end_of_epoch: bool, is_best: bool, keep_last: int
) -> Path:
    """Write ``last.pth`` (and ``checkpoint-NNNN.pth`` at the end of an epoch, ``best.pth`` when best); prune
    numbered checkpoints beyond ``keep_last``. Returns the path of ``last.pth``."""
    last = workspace / "last.pth"
    if end_of_epoch and keep_last > 0:
        numbered = save_checkpoint(state, workspace / f"checkpoint-{epoch:04d}.pth")
        _link(numbered, last)
        for old in sorted(workspace.glob("checkpoint-[0-9]*.pth"))[:-keep_last]:
            old.unlink()
    else:
        save_checkpoint(state, last)
    if is_best:
        _link(last, workspace / "best.pth")
    return last


def read_training_checkpoint(path: str, *, arch: str, classes: list[str], global_batch: int | None) -> dict[str, Any]:
    """A checkpoint to resume from, checked against this run: a one-line error when it cannot continue it.
    ``global_batch`` None: any (evaluation only)."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or not {"optimizer", "state_dict", "epoch", "rng"} <= set(ckpt):
        raise ResnextError(f"{path} is not a training checkpoint (use --weights for plain weights)")
    stored_arch = checkpoint_metadata(ckpt).get("arch")
    if stored_arch not in (None, arch):
        raise ResnextError(f"{path} is a {stored_arch} checkpoint; resume it with --arch {stored_arch}, not {arch}")
    if ckpt.get("classes") != classes:
        raise ResnextError(f"{path} was trained on other classes than this data")
    config = ckpt.get("config")
    config = config if isinstance(config, dict) else {}
    stored_batch = (config.get("resolved") or {}).get("global_batch")
    if None not in (stored_batch, global_batch) and stored_batch != global_batch:
        raise ResnextError(
            f"{path} was trained with a global batch of {stored_batch} images per step "
            f"(-b {config.get('batch_size')}); "
            f"this run has {global_batch}: resume with the same -b / --optimizer-batch-size"
        )
    return ckpt


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, in a form ``torch.load(weights_only=True)`` reads."""
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).astype("int64")), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


#: ``export-weights`` output formats: a ``.pth`` pickle (``torch.load(weights_only=True)``), a ``.safetensors``
#: file, or a folder in timm's Hugging Face Hub layout (:mod:`resnext.model.hf`)
WEIGHTS_FORMATS = ("pth", "safetensors", "hf")


def export_weights(
    source: Any,
    output: str | os.PathLike[str],
    *,
    ema: bool = False,
    arch: str | None = None,
    format: str | None = None,  # noqa: A002 - the CLI flag's name
    overwrite: bool = False,
) -> Path:
    """Write the weights of any source (published name, training checkpoint, file, URL, Hub folder, ``hf-hub:``)
    with their architecture, class names, image size and preprocessing, atomically.

    ``format`` is ``pth`` (default), ``safetensors`` (default for an ``OUT`` ending in ``.safetensors``) or ``hf``
    (a folder: ``model.safetensors``, ``config.json``, ``README.md``). An existing ``output`` is refused unless
    ``overwrite``. The result loads anywhere a weights source does (``--weights``, ``create_model(arch,
    weights=OUT)``, the hub's ``pretrained_from_file``) and classifies with the trained names at the trained size
    without ``--arch``; the ``hf`` folder also loads with ``timm.create_model("local-dir:OUT", pretrained=True)``.
    """
    from ..model.hf import describe_weights, save_hf_folder, save_safetensors
    from ..model.sources import load_source

    output = Path(output)
    format = format or ("safetensors" if output.suffix == ".safetensors" else "pth")
    if format not in WEIGHTS_FORMATS:
        raise ResnextError(f"unknown weights format {format!r}; choose one of {', '.join(WEIGHTS_FORMATS)}")
    if format == "hf":
        if output.exists() and not output.is_dir():
            raise ResnextError(f"export-weights output {output} is a file; --format hf writes a folder")
        if output.is_dir() and any(output.iterdir()) and not overwrite:
            raise ResnextError(f"{output} exists and is not empty: pass --overwrite to replace the weights in it")
        check_writable(output / "model.safetensors", "export-weights output")
    else:
        check_writable(output, "export-weights output")
        if output.exists() and not overwrite:
            raise ResnextError(f"{output} exists: pass --overwrite to replace it")
    resolved = load_source(source, arch=arch, use_ema=ema)
    assert resolved.model is not None
    state_dict = {k: v.detach().contiguous() for k, v in resolved.model.state_dict().items()}
    metadata = describe_weights(resolved.arch, resolved.classes, resolved.transforms, resolved.num_classes)
    if format == "hf":
        meta = dict(resolved.published.meta) if resolved.published is not None else None
        return save_hf_folder(state_dict, output, metadata, published=meta, overwrite=overwrite)
    if format == "safetensors":
        return save_safetensors(state_dict, output, metadata)
    return save_checkpoint(with_metadata(state_dict, **metadata), output)


class LogWindow:
    """Images, loss and data-loading time since the last log line, turned into NVIDIA's train.* metrics."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.images = self.data = self.loss = 0.0
        self.start = time.perf_counter()

    def add(self, images: float, loss: float) -> None:
        self.images += images
        self.loss += loss

    def metrics(self, lr: float, grad_scale: float) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        return {
            "train.loss": self.loss / max(self.images, 1),
            "train.lr": lr,
            "train.total_ips": self.images / elapsed,
            "train.compute_ips": self.images / max(elapsed - self.data, 1e-9),
            "train.data_time": self.data,
            "train.grad_scale": grad_scale,
        }


class RunLog:
    """``log.jsonl`` (JSON lines with NVIDIA's metric names) and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, workspace: Path, enabled: bool) -> None:
        self.enabled, self.window = enabled, LogWindow()
        # kept open for the whole run (appended to after every log window); closed by close()
        self.file = open(workspace / "log.jsonl", "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(workspace / "tensorboard"))
            except ImportError:
                logger.debug("tensorboard is not installed: no TensorBoard scalars")

    def __call__(self, epoch: int, iteration: int | None, metrics: dict[str, Any], global_step: int) -> None:
        self._write({"epoch": epoch, "iteration": iteration, **metrics})
        if self.tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key.replace(".", "/"), value, global_step)

    def event(self, message: str, **extra: Any) -> None:
        self._write({"event": message, **extra})

    def _write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
