"""Training and fine-tuning: one readable loop, its config, checkpoints and resume.

    # NVIDIA's 90-epoch recipe (AMP, channels_last), 8 GPUs; lr scaled by global batch / 256:
    torchrun --nproc_per_node 8 -m resnext.cli train /data/imagenet --recipe nvidia-90e --workspace runs/r101
    # the same, resumed after an interruption (picks up runs/r101/last.pth):
    torchrun --nproc_per_node 8 -m resnext.cli train /data/imagenet --recipe nvidia-90e --workspace runs/r101 --resume auto
    # fine-tune the published weights on a 5-class folder, training only the head:
    resnext train /data/flowers --pretrained --num-classes 5 --freeze-backbone --epochs 10 --lr 0.1 --warmup 0
    # speed: synthetic data, 100 iterations per epoch
    resnext train --data-backend synthetic --prof 100 --epochs 1 --precision bf16 --memory-format nhwc
    # plain weights (or EMA weights) out of a checkpoint, loadable by create_model(..., weights=OUT):
    resnext export-weights runs/r101/best.pth r101.pth [--ema]

``DATA_DIR`` holds ``train/<class>/*`` and ``val/<class>/*``; labels are the sorted folder names, written to
``<workspace>/labels.txt`` and into every checkpoint. Files written by rank 0 into the workspace: ``log.jsonl``
(NVIDIA's metric names), ``config.json``, ``labels.txt``, ``last.pth``, ``best.pth`` (by val top-1) and the last
``--keep-last`` ``checkpoint-NNNN.pth``, all written atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .data import SyntheticData, _mix, eval_loader, find_classes, train_loader
from .errors import ResnextError
from .evaluate import Distributed, evaluate, init_distributed
from .models import create_model, list_models
from .runtimes import TorchBackend
from .weights import WEIGHTS_BY_MODEL, extract_state_dict, read_checkpoint, remap_state_dict

logger = logging.getLogger("resnext")

__all__ = [
    "RECIPES",
    "TrainConfig",
    "TrainingDiverged",
    "ModelEma",
    "add_train_arguments",
    "config_from_args",
    "lr_at",
    "parameter_groups",
    "train",
    "export_weights",
    "benchmark_training",
]

# ---------------------------------------------------------------------------------------------------------------
# Configuration

#: NVIDIA's published hyper-parameters for resnext101-32x4d (DeepLearningExamples ConvNets, 8 GPUs x 128).
RECIPES: dict[str, dict[str, Any]] = {
    "nvidia-90e": dict(
        epochs=90, batch_size=128, lr=0.256, lr_schedule="cosine", warmup=8, label_smoothing=0.1, mixup=0.0,
        momentum=0.875, nesterov=False, weight_decay=1 / 16384, precision="fp16", memory_format="nhwc", image_size=224,
    ),
}
RECIPES["nvidia-250e"] = {**RECIPES["nvidia-90e"], "epochs": 250, "mixup": 0.2}

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Every training option; field names are the command-line flags with ``-`` for ``_``."""

    data: str | None = None
    arch: str = "resnext101_32x4d"
    recipe: str | None = None
    epochs: int = 90
    run_epochs: int | None = None
    batch_size: int = 128
    optimizer_batch_size: int | None = None
    lr: float = 0.256
    no_lr_scaling: bool = False
    lr_schedule: str = "cosine"
    warmup: float = 8
    label_smoothing: float = 0.1
    mixup: float = 0.0
    momentum: float = 0.875
    nesterov: bool = False
    weight_decay: float = 1 / 16384
    use_ema: float | None = None
    precision: str = "fp32"
    memory_format: str = "nchw"
    compile: bool = False
    image_size: int = 224
    workers: int = 4
    data_backend: str = "pytorch"
    seed: int = 0
    workspace: str = "runs/train"
    resume: str | None = None
    pretrained: bool = False
    weights: str | None = None
    num_classes: int | None = None
    freeze_backbone: bool = False
    prof: int | None = None
    evaluate: bool = False
    device: str = "auto"
    keep_last: int = 2
    print_freq: int = 10
    progress: bool = True
    # resolved at start-up (recorded in checkpoints and config.json)
    resolved: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.arch not in list_models():
            raise ResnextError(f"unknown --arch {self.arch!r}; choose one of {', '.join(list_models())}")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ResnextError(f"unknown --recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.precision not in PRECISIONS:
            raise ResnextError(f"unknown --precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.memory_format not in ("nchw", "nhwc"):
            raise ResnextError("--memory-format must be nchw or nhwc")
        if self.lr_schedule not in ("cosine", "step", "linear"):
            raise ResnextError("--lr-schedule must be cosine, step or linear")
        if self.data_backend not in ("pytorch", "synthetic"):
            raise ResnextError("--data-backend must be pytorch or synthetic")
        if self.data_backend == "pytorch" and not self.data:
            raise ResnextError("DATA_DIR is required (a folder with train/<class>/* and val/<class>/*)")
        if self.batch_size < 1 or self.epochs < 1 or self.image_size < 32:
            raise ResnextError("--batch-size and --epochs must be >= 1 and --image-size >= 32")
        if self.use_ema is not None and not 0.0 < self.use_ema < 1.0:
            raise ResnextError("--use-ema takes a decay between 0 and 1, e.g. 0.9999")
        if self.pretrained and self.weights:
            raise ResnextError("use either --pretrained (published weights) or --weights FILE, not both")
        if self.pretrained and self.arch not in WEIGHTS_BY_MODEL:
            raise ResnextError(f"{self.arch} has no published weights; drop --pretrained or pass --weights FILE")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training flags (NVIDIA's names). Defaults come from :class:`TrainConfig`, then ``--recipe``."""
    d = {f.name: f.default for f in fields(TrainConfig)}

    def add(name: str, help: str, *aliases: str, **kwargs: Any) -> None:
        shown = f" (default: {d[name]})" if kwargs.get("action") != "store_true" else ""
        parser.add_argument(*aliases, _flag(name), dest=name, default=argparse.SUPPRESS, help=help + shown, **kwargs)

    parser.add_argument("data", nargs="?", default=argparse.SUPPRESS, metavar="DATA_DIR",
                        help="folder with train/<class>/* and val/<class>/* (not needed with --data-backend synthetic)")
    add("recipe", "NVIDIA's hyper-parameters at once; explicit flags override them", choices=sorted(RECIPES))
    add("arch", "architecture", "-a", choices=list_models())
    add("epochs", "total epochs of the schedule", type=int)
    add("run_epochs", "stop after this many epochs in this invocation (staged runs; resume later)", type=int)
    add("batch_size", "images per process per step", "-b", type=int)
    add("optimizer_batch_size", "global batch per optimizer step, reached by gradient accumulation", type=int)
    add("lr", "learning rate per 256 images (scaled by global batch / 256)", type=float)
    add("no_lr_scaling", "use --lr as given, not scaled by global batch / 256", action="store_true")
    add("lr_schedule", "after warmup: cosine to 0, step (x0.1 at 1/3, 2/3, 8/9 of the epochs) or linear to 0",
        choices=["cosine", "step", "linear"])
    add("warmup", "linear warmup length in epochs, applied per iteration", type=float)
    add("label_smoothing", "label smoothing", type=float)
    add("mixup", "mixup alpha (0 = off)", type=float)
    add("momentum", "SGD momentum", type=float)
    add("nesterov", "Nesterov momentum", action="store_true")
    add("weight_decay", "weight decay (never applied to BN or bias parameters)", "--wd", type=float)
    add("use_ema", "keep an exponential moving average of the weights with this decay", type=float, metavar="DECAY")
    add("precision", "fp32, tf32 (CUDA), fp16 (autocast + dynamic loss scaling) or bf16 (autocast)",
        choices=list(PRECISIONS))
    add("memory_format", "nhwc = channels_last", choices=["nchw", "nhwc"])
    add("compile", "torch.compile the model", action="store_true")
    add("image_size", "training crop and evaluation crop (evaluation resizes to size + 32 first)", type=int)
    add("workers", "data loading processes per training process", "-j", type=int)
    add("data_backend", "pytorch (ImageFolder) or synthetic (a fixed random batch)", choices=["pytorch", "synthetic"])
    add("seed", "seed for initialisation, data order and augmentation", type=int)
    add("workspace", "output folder: logs, labels, checkpoints")
    add("resume", "checkpoint to resume from, or 'auto' for <workspace>/last.pth when present", metavar="PATH|auto")
    add("pretrained", "start from the published weights of --arch", action="store_true")
    add("weights", "start from this weights file (any layout the loader reads)", metavar="FILE")
    add("num_classes", "classes of the head (default: the number of class folders); "
        "a pretrained head of another size is re-initialised", type=int)
    add("freeze_backbone", "train only the classifier head (backbone weights and BN statistics stay fixed)",
        action="store_true")
    add("prof", "run only N iterations per epoch (and N validation batches): for speed measurements", type=int)
    add("evaluate", "only evaluate the starting weights on val/", action="store_true")
    add("device", "auto, cpu or cuda")
    add("keep_last", "per-epoch checkpoints to keep besides last/best", type=int)
    add("print_freq", "log every N iterations", "-p", type=int)
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                        help="no progress bar")


def config_from_args(args: argparse.Namespace | dict[str, Any]) -> TrainConfig:
    """Dataclass defaults, then the ``--recipe`` values, then the flags given explicitly."""
    given = {k: v for k, v in (vars(args) if isinstance(args, argparse.Namespace) else args).items()
             if k in {f.name for f in fields(TrainConfig)}}
    recipe = given.get("recipe")
    if recipe is not None and recipe not in RECIPES:
        raise ResnextError(f"unknown --recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    cfg = TrainConfig(**{**RECIPES.get(recipe, {}), **given})
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Pieces of the loop (kept separate so tests and benchmarks use the same code)


def lr_at(
    iteration: int, *, base_lr: float, schedule: str, warmup_iters: int, total_iters: int, iters_per_epoch: int,
    epochs: int,
) -> float:
    """Learning rate at ``iteration`` (0-based, counted in optimizer steps over the whole run).

    Warmup: ``base_lr * (iteration + 1) / warmup_iters``. Then, with ``e`` iterations past warmup out of
    ``es = total_iters - warmup_iters``: cosine ``base_lr * (1 + cos(pi * e / es)) / 2``; linear
    ``base_lr * (1 - e / es)``; step ``base_lr * 0.1 ** k`` with ``k`` the number of milestones (1/3, 2/3 and
    8/9 of the epochs, NVIDIA's 30/60/80 for 90 epochs) already passed.
    """
    if iteration < warmup_iters:
        return base_lr * (iteration + 1) / warmup_iters
    e, es = iteration - warmup_iters, max(1, total_iters - warmup_iters)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr
    if schedule == "linear":
        return base_lr * (1 - e / es)
    if schedule == "step":
        epoch = iteration // iters_per_epoch
        milestones = [round(epochs * f) for f in (1 / 3, 2 / 3, 8 / 9)]
        return base_lr * 0.1 ** sum(epoch >= m for m in milestones)
    raise ValueError(f"unknown lr schedule {schedule!r}")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: conv/linear weights decay; every BN parameter and bias (ndim <= 1) does not.

    Going by shape rather than by module name covers the BN inside ``downsample`` too (NVIDIA decays it).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ModelEma:
    """Exponential moving average of every floating-point entry of the state_dict (weights and BN statistics)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema, src = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ema.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema[k] for k in floats], [src[k].detach() for k in floats], 1.0 - self.decay)
        for k, v in ema.items():
            if not v.is_floating_point():
                v.copy_(src[k])


def forward_backward(
    model: nn.Module, images: Tensor, targets: Tensor, *, criterion: Callable[[Tensor, Tensor], Tensor],
    amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler, scale: float = 1.0,
) -> Tensor:
    """One micro-batch: forward under autocast, backward of ``loss * scale`` through the grad scaler."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = criterion(model(images), targets)
    scaler.scale(loss * scale).backward()
    return loss.detach()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    scaler.step(optimizer)  # skips the update when fp16 gradients overflowed, then lowers the scale
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def mixup(images: Tensor, soft_targets: Tensor, alpha: float, seed: int) -> tuple[Tensor, Tensor]:
    """Blend each sample with a partner from the same batch; ``lambda ~ Beta(alpha, alpha)`` drawn from ``seed``."""
    rng = random.Random(seed)
    lam = rng.betavariate(alpha, alpha)
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed)).to(images.device)
    return images.mul(lam).add_(images[perm], alpha=1 - lam), soft_targets.mul(lam).add_(soft_targets[perm], alpha=1 - lam)


class TrainingDiverged(ResnextError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_link(src: Path, dst: Path) -> None:
    """``dst`` becomes the same file as ``src`` (hard link, or a copy where links are not supported)."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _rng_state() -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def export_weights(checkpoint: str | os.PathLike, output: str | os.PathLike, *, ema: bool = False) -> Path:
    """Write the plain (or EMA) weights of a training checkpoint as a flat state_dict, atomically.

    The result loads with ``create_model(arch, weights=OUTPUT, num_classes=...)`` and the hub's
    ``pretrained_from_file``.
    """
    state_dict = remap_state_dict(extract_state_dict(read_checkpoint(checkpoint), use_ema=ema))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({k: v.contiguous() for k, v in state_dict.items()}, output)
    return output


# ---------------------------------------------------------------------------------------------------------------
# Logging: JSON lines with NVIDIA's metric names, TensorBoard when installed


class RunLog:
    def __init__(self, workspace: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.file = open(workspace / "log.jsonl", "a", encoding="utf-8") if enabled else None
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(workspace / "tensorboard"))
            except ImportError:
                logger.debug("tensorboard is not installed: no TensorBoard scalars")

    def __call__(self, epoch: int, iteration: int | None, metrics: dict[str, Any], global_step: int) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "epoch": epoch, "iteration": iteration, **metrics}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key.replace(".", "/"), value, global_step)

    def event(self, message: str, **extra: Any) -> None:
        if self.enabled:
            self.file.write(json.dumps({"time": round(time.time(), 3), "event": message, **extra}) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------------------------------------------
# The loop


class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, writes a checkpoint and returns. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: finishing the current step, then writing a checkpoint", signal.Signals(signum).name)

    def __enter__(self) -> _StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: signals stay with the caller
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _set_train_mode(model: nn.Module, freeze_backbone: bool) -> None:
    model.train()
    if freeze_backbone:  # frozen BN layers keep their running statistics
        model.eval()
        _unwrap(model).fc.train()


def _build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    torch.manual_seed(cfg.seed)
    weights = cfg.weights or ("DEFAULT" if cfg.pretrained else None)
    model = create_model(cfg.arch, weights=weights, num_classes=num_classes)
    if cfg.freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("fc."))
    return model


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training (or ``cfg.evaluate``) as configured; returns a summary. Rank 0 writes into ``cfg.workspace``.

    Raises :class:`TrainingDiverged` on a NaN/inf loss (the last good checkpoint is kept).
    The summary's ``exit_code`` is 0, or ``128 + signal`` when SIGTERM/SIGINT stopped the run after a checkpoint.
    """
    cfg.validate()
    dist_info = init_distributed(cfg.device)
    try:
        with _StopRequest() as stop:
            return _train(cfg, dist_info, stop)
    finally:
        if dist_info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, di: Distributed, stop: _StopRequest) -> dict[str, Any]:
    device = di.device
    workspace = Path(cfg.workspace)
    if di.is_main:
        workspace.mkdir(parents=True, exist_ok=True)
    amp_dtype = _AMP_DTYPES.get(cfg.precision)
    memory_format = torch.channels_last if cfg.memory_format == "nhwc" else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        mode = "tf32" if cfg.precision == "tf32" else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode

    # -- data -----------------------------------------------------------------------------------------------
    per_step = cfg.batch_size * di.world_size
    if cfg.optimizer_batch_size and cfg.optimizer_batch_size % per_step:
        raise ResnextError(
            f"--optimizer-batch-size {cfg.optimizer_batch_size} is not a multiple of --batch-size x processes = {per_step}"
        )
    accumulation = cfg.optimizer_batch_size // per_step if cfg.optimizer_batch_size else 1
    global_batch = per_step * accumulation
    pin = device.type == "cuda"
    val_dir = None
    if cfg.data_backend == "synthetic":
        classes = [f"class_{i}" for i in range(cfg.num_classes or 1000)]
        steps_per_epoch = cfg.prof or 100
        loader = None
    else:
        data = Path(cfg.data)
        if not (data / "train").is_dir():
            raise ResnextError(f"{data} has no train/ folder; expected {data}/train/<class>/* and {data}/val/<class>/*")
        classes = find_classes(data / "train")
        if cfg.num_classes is not None and cfg.num_classes != len(classes):
            raise ResnextError(f"--num-classes {cfg.num_classes} but {data / 'train'} has {len(classes)} class folders")
        loader = train_loader(
            data / "train", image_size=cfg.image_size, batch_size=cfg.batch_size, workers=cfg.workers,
            rank=di.rank, world_size=di.world_size, accumulation=accumulation, seed=cfg.seed, pin_memory=pin,
        )
        steps_per_epoch = min(loader.sampler.steps_per_epoch, cfg.prof or loader.sampler.steps_per_epoch)
        val_dir = data / "val" if (data / "val").is_dir() else None
        if val_dir is None:
            logger.warning("%s has no val/ folder: no validation, best.pth follows last.pth", data)
    num_classes = len(classes)
    val_loader = None
    if val_dir is not None:
        val_loader = eval_loader(
            val_dir, image_size=cfg.image_size, batch_size=cfg.batch_size, workers=cfg.workers, classes=classes,
            rank=di.rank, world_size=di.world_size, pin_memory=pin,
        )

    # -- model, optimizer ------------------------------------------------------------------------------------
    model = _build_model(cfg, num_classes).to(device, memory_format=memory_format)
    base_lr = cfg.lr if cfg.no_lr_scaling else cfg.lr * global_batch / 256
    optimizer = torch.optim.SGD(
        parameter_groups(model, cfg.weight_decay), lr=base_lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )
    scaler = torch.amp.GradScaler(device.type, init_scale=128.0, enabled=cfg.precision == "fp16")
    ema = ModelEma(model, cfg.use_ema) if cfg.use_ema else None
    cfg.resolved = {
        "world_size": di.world_size, "accumulation": accumulation, "global_batch": global_batch, "base_lr": base_lr,
        "steps_per_epoch": steps_per_epoch, "num_classes": num_classes, "device": str(device),
    }

    start_epoch, start_step, best_top1 = 0, 0, -1.0
    resume = cfg.resume
    if resume == "auto":
        resume = str(workspace / "last.pth") if (workspace / "last.pth").is_file() else None
        if resume is None and di.is_main:
            logger.info("--resume auto: no %s yet, starting from scratch", workspace / "last.pth")
    if resume:
        ckpt = read_checkpoint(resume)
        if not isinstance(ckpt, dict) or "optimizer" not in ckpt:
            raise ResnextError(f"{resume} is not a training checkpoint (use --weights for plain weights)")
        if ckpt.get("classes") != classes:
            raise ResnextError(f"{resume} was trained on other classes than {cfg.data}")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.module.load_state_dict(ckpt.get("state_dict_ema", ckpt["state_dict"]))
        start_epoch, start_step, best_top1 = int(ckpt["epoch"]), int(ckpt.get("step", 0)), float(ckpt["best_prec1"])
        _set_rng_state(ckpt["rng"])
        if di.is_main:
            logger.info("resumed from %s at epoch %d, step %d", resume, start_epoch + 1, start_step)

    train_model: nn.Module = model
    if di.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    run_log = RunLog(workspace, di.is_main)
    if di.is_main:
        (workspace / "labels.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
        (workspace / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
        run_log.event("start", config=asdict(cfg))

    def validate(epoch: int) -> dict[str, float]:
        if val_loader is None:
            return {}
        if di.enabled:  # every process evaluates the same weights and statistics: rank 0's
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        precision = cfg.precision if cfg.precision in _AMP_DTYPES else "fp32"
        out = {}
        for prefix, net in [("val", model)] + ([("val_ema", ema.module)] if ema else []):
            backend = TorchBackend(net, device=str(device), precision=precision, channels_last=cfg.memory_format == "nhwc")
            metrics = evaluate(backend, val_loader, num_classes=num_classes, dist_info=di, max_steps=cfg.prof)
            out.update({k.replace("val.", prefix + "."): v for k, v in metrics.items()})
        return out

    def checkpoint(epoch: int, step: int, end_of_epoch: bool, is_best: bool) -> Path | None:
        if not di.is_main:
            return None
        state = {
            "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch, "step": step, "best_prec1": best_top1, "arch": cfg.arch, "classes": classes,
            "config": asdict(cfg), "rng": _rng_state(),
        }
        if ema is not None:
            state["state_dict_ema"] = ema.module.state_dict()
        last = workspace / "last.pth"
        if end_of_epoch and cfg.keep_last > 0:
            numbered = workspace / f"checkpoint-{epoch:04d}.pth"
            _atomic_save(state, numbered)
            _atomic_link(numbered, last)
            for old in sorted(workspace.glob("checkpoint-[0-9]*.pth"))[:-cfg.keep_last]:
                old.unlink()
        else:
            _atomic_save(state, last)
        if is_best:
            _atomic_link(last, workspace / "best.pth")
        return last

    if cfg.evaluate:
        metrics = validate(start_epoch)
        if di.is_main:
            run_log(start_epoch, None, metrics, start_epoch * steps_per_epoch)
            run_log.close()
        return {"metrics": metrics, "exit_code": 0, "epochs_done": start_epoch}

    # -- training --------------------------------------------------------------------------------------------
    criterion: Callable[[Tensor, Tensor], Tensor] = (
        (lambda logits, target: F.cross_entropy(logits, target)) if cfg.mixup > 0
        else (lambda logits, target: F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing))
    )
    total_iters = cfg.epochs * steps_per_epoch
    warmup_iters = int(round(cfg.warmup * steps_per_epoch))
    end_epoch = cfg.epochs if cfg.run_epochs is None else min(cfg.epochs, start_epoch + cfg.run_epochs)
    summary: dict[str, Any] = {"exit_code": 0, "epochs_done": start_epoch, "best_top1": best_top1, "metrics": {}}
    if di.is_main:
        logger.info(
            "training %s on %d classes: %d process(es) x batch %d x %d accumulation = global batch %d, lr %.4g, "
            "%d steps/epoch, %s, %s", cfg.arch, num_classes, di.world_size, cfg.batch_size, accumulation,
            global_batch, base_lr, steps_per_epoch, cfg.precision, cfg.memory_format,
        )

    from tqdm import tqdm

    for epoch in range(start_epoch, end_epoch):
        _set_train_mode(train_model, cfg.freeze_backbone)
        micro_batches = (steps_per_epoch - start_step) * accumulation
        if loader is None:
            batches: Iterator = iter(SyntheticData(cfg.batch_size, cfg.image_size, num_classes, micro_batches, cfg.seed))
        else:
            loader.sampler.set_epoch(epoch, start_step)
            batches = iter(loader)
        bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="it",
                   disable=not (di.is_main and cfg.progress), dynamic_ncols=True, leave=False)
        epoch_loss = epoch_images = skipped = 0.0
        window = {"images": 0.0, "data": 0.0, "start": time.perf_counter(), "loss": 0.0}
        step = start_step
        for step in range(start_step, steps_per_epoch):
            iteration = epoch * steps_per_epoch + step
            lr = lr_at(iteration, base_lr=base_lr, schedule=cfg.lr_schedule, warmup_iters=warmup_iters,
                       total_iters=total_iters, iters_per_epoch=steps_per_epoch, epochs=cfg.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            images_in_step = 0
            for micro in range(accumulation):
                t0 = time.perf_counter()
                images, labels, errors = next(batches)
                window["data"] += time.perf_counter() - t0
                for error in errors:
                    logger.warning("skipped unreadable training image: %s", error)
                skipped += len(errors)
                placeholder = images is None
                if placeholder:
                    if not di.enabled:
                        continue
                    # every DDP process must join every gradient all-reduce, or the others wait forever: stand in
                    # with two blank images whose loss is scaled by 0 (a zero gradient from this process)
                    images = torch.zeros(2, 3, cfg.image_size, cfg.image_size)
                    labels = torch.zeros(2, dtype=torch.long)
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                labels = labels.to(device, non_blocking=True)
                targets: Tensor = labels
                if cfg.mixup > 0 and not placeholder:
                    soft = F.one_hot(labels, num_classes).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / num_classes
                    images, targets = mixup(images, soft, cfg.mixup, _mix(cfg.seed, epoch, step, micro, di.rank))
                sync = train_model.no_sync() if di.enabled and micro < accumulation - 1 else contextlib.nullcontext()
                with sync:
                    loss = forward_backward(train_model, images, targets, criterion=criterion, amp_dtype=amp_dtype,
                                            scaler=scaler, scale=0.0 if placeholder else 1.0 / accumulation)
                if not placeholder:
                    loss_sum += loss.float() * len(labels)
                    images_in_step += len(labels)
            optimizer_step(optimizer, scaler)
            if ema is not None:
                ema.update(model)

            # one small all_reduce per step: the mean loss for the log, and whether any process must stop
            stats = torch.stack([loss_sum, torch.tensor(float(images_in_step), device=device),
                                 torch.tensor(float(stop.signum is not None), device=device)]).double()
            if di.enabled:
                dist.all_reduce(stats)
            loss_total, images_total, stop_signal = stats.tolist()
            step_loss = loss_total / max(images_total, 1)
            if not math.isfinite(step_loss):
                bar.close()
                last = workspace / "last.pth"
                kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"
                run_log.event("diverged", epoch=epoch + 1, iteration=step + 1, loss=step_loss)
                run_log.close()
                raise TrainingDiverged(
                    f"loss became {step_loss} at epoch {epoch + 1}, iteration {step + 1} (lr {lr:.4g}); stopped "
                    f"without saving: {kept}. Lower --lr or use --precision fp32/bf16, then --resume it"
                )
            epoch_loss += loss_total
            epoch_images += images_total
            window["images"] += images_total
            window["loss"] += loss_total
            bar.update(1)
            if (step + 1) % cfg.print_freq == 0 or step + 1 == steps_per_epoch or stop_signal:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - window["start"]
                metrics = {
                    "train.loss": window["loss"] / max(window["images"], 1), "train.lr": lr,
                    "train.total_ips": window["images"] / elapsed,
                    "train.compute_ips": window["images"] / max(elapsed - window["data"], 1e-9),
                    "train.data_time": window["data"], "train.grad_scale": float(scaler.get_scale()) if scaler.is_enabled() else 1.0,
                }
                bar.set_postfix(loss=f"{metrics['train.loss']:.4f}", lr=f"{lr:.3g}", ips=f"{metrics['train.total_ips']:.1f}")
                run_log(epoch + 1, step + 1, metrics, iteration + 1)
                window = {"images": 0.0, "data": 0.0, "start": time.perf_counter(), "loss": 0.0}
            if stop_signal:
                signum = stop.signum or signal.SIGTERM  # another process got the signal
                bar.close()
                path = checkpoint(epoch, step + 1, end_of_epoch=False, is_best=False)
                if di.is_main:
                    logger.warning("stopped by %s at epoch %d, iteration %d; checkpoint %s (continue with --resume auto)",
                                   signal.Signals(signum).name, epoch + 1, step + 1, path)
                    run_log.event("stopped", signal=signal.Signals(signum).name, epoch=epoch + 1, iteration=step + 1)
                    run_log.close()
                summary.update(exit_code=128 + signum, stopped_by=signal.Signals(signum).name, checkpoint=str(path))
                return summary
        bar.close()
        start_step = 0

        val = validate(epoch)
        top1 = val.get("val.top1", -1.0)
        is_best = top1 >= best_top1 if val else True
        best_top1 = max(best_top1, top1)
        skipped_total = torch.tensor(float(skipped), device=device)
        if di.enabled:
            dist.all_reduce(skipped_total)
        epoch_metrics = {"train.epoch_loss": epoch_loss / max(epoch_images, 1), "train.skipped_images": int(skipped_total.item()),
                         **val}
        path = checkpoint(epoch + 1, 0, end_of_epoch=True, is_best=is_best)
        if di.is_main:
            run_log(epoch + 1, None, epoch_metrics, (epoch + 1) * steps_per_epoch)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in epoch_metrics.items()
                              if k in ("train.epoch_loss", "train.skipped_images", "val.top1", "val.top5", "val.loss", "val_ema.top1"))
            logger.info("epoch %d/%d: %s; checkpoint %s", epoch + 1, cfg.epochs, shown, path)
        summary.update(epochs_done=epoch + 1, best_top1=best_top1, metrics=epoch_metrics)
        if stop.signum is not None:  # arrived during validation: the epoch checkpoint is already written
            summary.update(exit_code=128 + stop.signum, stopped_by=signal.Signals(stop.signum).name)
            break
    run_log.close()
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Speed measurement (benchmarks/train.py, `resnext benchmark training`, benchmarks/gpu_check.py)


@dataclass(frozen=True)
class SpeedSetting:
    name: str
    precision: str = "fp32"
    memory_format: str = "nchw"
    compile: bool = False


DEFAULT_SETTINGS = (
    SpeedSetting("fp32 nchw (reference)"),
    SpeedSetting("fp32 nhwc", memory_format="nhwc"),
    SpeedSetting("bf16 nhwc", "bf16", "nhwc"),
    SpeedSetting("fp32 nhwc compile", memory_format="nhwc", compile=True),
    SpeedSetting("bf16 nhwc compile", "bf16", "nhwc", compile=True),
)


def measure_training_speed(
    arch: str, setting: SpeedSetting, *, batch_size: int, image_size: int = 224, warmup: int = 2, steps: int = 5,
    device: str = "auto", num_classes: int = 1000,
) -> dict[str, Any]:
    """Training img/s of one setting on a fixed synthetic batch (SGD step included); raises on OOM/errors."""
    dev = torch.device(device) if device != "auto" else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    memory_format = torch.channels_last if setting.memory_format == "nhwc" else torch.contiguous_format
    model = create_model(arch, num_classes=num_classes).to(dev, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(parameter_groups(model, 1 / 16384), lr=0.01, momentum=0.875)
    scaler = torch.amp.GradScaler(dev.type, init_scale=128.0, enabled=setting.precision == "fp16")
    net = torch.compile(model) if setting.compile else model
    data = SyntheticData(batch_size, image_size, num_classes, 1)
    images = data.images.to(dev, memory_format=memory_format)
    labels = data.labels.to(dev)
    amp_dtype = _AMP_DTYPES.get(setting.precision)

    def criterion(logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, label_smoothing=0.1)

    def run(n: int) -> tuple[Tensor, float]:
        """``n`` training steps; returns the last loss and the wall time, GPU work included."""
        t0 = time.perf_counter()
        loss = torch.zeros(())
        for _ in range(n):
            loss = forward_backward(net, images, labels, criterion=criterion, amp_dtype=amp_dtype, scaler=scaler)
            optimizer_step(optimizer, scaler)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return loss, time.perf_counter() - t0

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _, warmup_s = run(warmup)
    loss, elapsed = run(steps)
    result = {
        "setting": setting.name, "precision": setting.precision, "memory_format": setting.memory_format,
        "compile": setting.compile, "batch_size": batch_size, "image_size": image_size, "steps": steps,
        "img_per_s": batch_size * steps / elapsed, "ms_per_step": 1000 * elapsed / steps, "warmup_s": warmup_s,
        "final_loss": float(loss), "device": str(dev),
    }
    if dev.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return result


def benchmark_training(
    arch: str = "resnext101_32x4d", *, batch_size: int = 16, image_size: int = 224, warmup: int = 2, steps: int = 5,
    settings: tuple[SpeedSetting, ...] = DEFAULT_SETTINGS, device: str = "auto",
) -> list[dict[str, Any]]:
    """Measure each setting in the same run; the first is the reference row for the ``ratio`` column."""
    rows: list[dict[str, Any]] = []
    for setting in settings:
        try:
            row = measure_training_speed(arch, setting, batch_size=batch_size, image_size=image_size, warmup=warmup,
                                         steps=steps, device=device)
        except Exception as exc:  # one failing setting (e.g. compile without a compiler) must not hide the rest
            row = {"setting": setting.name, "img_per_s": float("nan"), "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows.append(row)
        logger.info("%s: %s", setting.name, f"{row['img_per_s']:.2f} img/s" if "error" not in row else row["error"])
    reference = rows[0]["img_per_s"]
    for row in rows:
        row["ratio"] = row["img_per_s"] / reference if reference == reference and reference > 0 else float("nan")
    return rows


def format_speed_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'setting':<26} {'img/s':>9} {'ms/step':>10} {'ratio':>7}  note", "-" * 64]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['setting']:<26} {'-':>9} {'-':>10} {'-':>7}  {row['error']}")
        else:
            lines.append(f"{row['setting']:<26} {row['img_per_s']:>9.2f} {row['ms_per_step']:>10.1f} "
                         f"{row['ratio']:>6.2f}x  warm-up {row['warmup_s']:.1f} s")
    return "\n".join(lines)
