"""Training and fine-tuning: one readable loop (:class:`Trainer`) over the pieces below. The commands that drive it
(fine-tuning, NVIDIA's recipes under torchrun, resuming, evaluating only) are in README's "Training and evaluation".

``DATA_DIR`` holds ``train/<class>/*`` and ``val/<class>/*``; labels are the sorted folder names, written to
``<workspace>/labels.txt`` and into every checkpoint. One run per workspace: see :mod:`resnext.training.checkpoint`.
Options and their checks: :mod:`resnext.training.config`. Speed measurements: :mod:`resnext.bench.training`.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ResnextError
from ..model.factory import create_model
from ..runtime.backend import TorchBackend
from ..util import atomic_open, autocast_dtype
from .checkpoint import RunLog, prepare_workspace, read_training_checkpoint, rng_state, set_rng_state, write_checkpoint
from .config import TrainConfig
from .data import SyntheticData, _mix, build_train_data
from .distributed import Distributed, StopRequest, init_distributed, shutdown_distributed
from .evaluate import evaluate
from .optim import ModelEma, forward_backward, lr_at, mixup, optimizer_step, parameter_groups

logger = logging.getLogger("resnext")
#: what the one log line at the end of each epoch shows (every metric goes to the run log)
EPOCH_LINE_METRICS = ("train.epoch_loss", "train.skipped_images", "val.top1", "val.top5", "val.loss", "val_ema.top1")

__all__ = ["Status", "TrainResult", "Trainer", "TrainingDiverged", "build_model", "train"]


# ---------------------------------------------------------------------------------------------------------------
# The starting model, the result


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The starting model: ``--weights``/``--pretrained`` through :func:`resnext.model.sources.load_source` (a head of
    another size is re-initialised), else random (``--last-bn-0-init`` zeroes each block's bn3 gamma)."""
    from ..model.sources import load_source

    torch.manual_seed(cfg.seed)
    if cfg.weights or cfg.pretrained:
        model = load_source(cfg.weights or "DEFAULT", arch=cfg.arch, num_classes=num_classes).model
        assert model is not None
    else:
        model = create_model(cfg.arch, num_classes=num_classes, zero_init_residual=cfg.last_bn_0_init)
    if cfg.freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("fc."))
    return model


class TrainingDiverged(ResnextError):
    """The loss became NaN or infinite."""


class Status(enum.Enum):
    """How :meth:`Trainer.run` ended (the CLI maps it to an exit status)."""

    COMPLETED = "completed"  # every epoch of this invocation ran
    STOPPED = "stopped"  # SIGTERM/SIGINT: a checkpoint was written, continue with --resume auto
    EVALUATED = "evaluated"  # --evaluate: only validation ran


@dataclass
class TrainResult:
    status: Status
    epochs_done: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0  # the epoch of best.pth (0: none yet)
    metrics: dict[str, Any] = field(default_factory=dict)
    stopped_by: int | None = None  # the signal number, for Status.STOPPED
    checkpoint: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps done in the current epoch
    best_top1: float = -1.0
    best_epoch: int = 0


class Trainer:
    """One training run: ``resume()``, then ``run()`` (``train_epoch`` / ``validate`` / ``save`` per epoch)."""

    def __init__(self, cfg: TrainConfig, di: Distributed, stop: StopRequest) -> None:
        self.cfg, self.di, self.stop, self.device = cfg, di, stop, di.device
        self.workspace = Path(cfg.workspace)
        self.amp_dtype = autocast_dtype(cfg.precision)
        self.memory_format = torch.channels_last if cfg.memory_format == "nhwc" else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            mode = "tf32" if cfg.precision == "tf32" else "ieee"
            torch.backends.cuda.matmul.fp32_precision = mode
            torch.backends.cudnn.conv.fp32_precision = mode  # type: ignore[attr-defined]
        self.data = build_train_data(cfg, di)
        self.num_classes = len(self.data.classes)
        self.model = build_model(cfg, self.num_classes).to(self.device).to(memory_format=self.memory_format)
        self.train_model: nn.Module = self.model  # DDP / torch.compile wrappers, set by start()
        self.base_lr = cfg.lr if cfg.no_lr_scaling else cfg.lr * self.data.global_batch / 256
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.model, cfg.weight_decay),
            lr=self.base_lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=128.0, enabled=cfg.precision == "fp16")
        self.ema = ModelEma(self.model, cfg.use_ema) if cfg.use_ema else None
        self.state = TrainState()
        self.log = RunLog(self.workspace, enabled=False)
        self.skipped, self.bar = 0, cast(Any, None)  # the epoch's tqdm bar
        cfg.resolved = {
            "world_size": di.world_size,
            "accumulation": self.data.accumulation,
            "global_batch": self.data.global_batch,
            "base_lr": self.base_lr,
            "steps_per_epoch": self.data.steps_per_epoch,
            "num_classes": self.num_classes,
            "device": str(self.device),
        }

    def resume(self) -> None:
        """Load model, optimizer, scaler, EMA, position and RNG state from ``--resume`` (``auto``: last.pth)."""
        path = self.cfg.resume
        if path == "auto":
            last = self.workspace / "last.pth"
            path = str(last) if last.is_file() else None
            if path is None and self.di.is_main:
                logger.info("--resume auto: no %s yet, starting from scratch", last)
        if not path:
            return
        batch = None if self.cfg.evaluate else self.data.global_batch  # evaluating only: any batch size
        ckpt = read_training_checkpoint(path, arch=self.cfg.arch, classes=self.data.classes, global_batch=batch)
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt.get("state_dict_ema", ckpt["state_dict"]))
        best = float(ckpt["best_prec1"]), int(ckpt.get("best_epoch", 0))
        self.state = TrainState(int(ckpt["epoch"]), int(ckpt.get("step", 0)), *best)
        set_rng_state(ckpt["rng"])
        if self.di.is_main:
            logger.info("resumed from %s at epoch %d, step %d", path, self.state.epoch + 1, self.state.step)

    def start(self) -> None:
        """Wrap the model for DDP / torch.compile; open the log; write labels.txt and config.json (rank 0)."""
        if self.di.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.cfg.compile:
            self.train_model = cast(nn.Module, torch.compile(self.train_model))
        if self.di.is_main:
            self.log = RunLog(self.workspace, enabled=True)
            with atomic_open(self.workspace / "labels.txt", encoding="utf-8") as f:
                f.write("\n".join(self.data.classes) + "\n")
            with atomic_open(self.workspace / "config.json", encoding="utf-8") as f:
                f.write(json.dumps(asdict(self.cfg), indent=2) + "\n")
            self.log.event("start", config=asdict(self.cfg))
            c, d = self.cfg, self.data
            logger.info(
                f"training {c.arch} on {self.num_classes} classes: {self.di.world_size} process(es) x batch "
                f"{c.batch_size} x {d.accumulation} accumulation = global batch {d.global_batch}, "
                f"lr {self.base_lr:.4g}, {d.steps_per_epoch} steps/epoch, {c.precision}, {c.memory_format}"
            )

    def run(self) -> TrainResult:
        """Train from the current state to ``--epochs`` (or ``--run-epochs`` more); ``--evaluate``: validate only."""
        cfg, s = self.cfg, self.state
        if cfg.evaluate:
            return TrainResult(Status.EVALUATED, s.epoch, s.best_top1, s.best_epoch, self.validate())
        self.start()
        end_epoch = cfg.epochs if cfg.run_epochs is None else min(cfg.epochs, s.epoch + cfg.run_epochs)
        result = TrainResult(Status.COMPLETED, s.epoch, s.best_top1, s.best_epoch)
        while s.epoch < end_epoch:
            if self.train_epoch() is Status.STOPPED:
                return self._stopped(result, self.save(end_of_epoch=False, is_best=False))
            result.metrics = self.finish_epoch()
            result.epochs_done, result.best_top1, result.best_epoch = s.epoch, s.best_top1, s.best_epoch
            if self.stop.signum is not None:  # arrived during validation: the epoch checkpoint is already written
                return self._stopped(result, self.workspace / "last.pth")
        return result

    def _stopped(self, result: TrainResult, path: Path | None) -> TrainResult:
        signum = self.stop.signum or signal.SIGTERM  # another process got the signal
        name = signal.Signals(signum).name
        if self.di.is_main:
            where = f"epoch {self.state.epoch + 1}, iteration {self.state.step}"
            logger.warning(f"stopped by {name} at {where}; checkpoint {path} (continue with --resume auto)")
            self.log.event("stopped", signal=name, epoch=self.state.epoch + 1, iteration=self.state.step)
        result.status, result.stopped_by, result.checkpoint = Status.STOPPED, int(signum), str(path) if path else None
        return result

    def train_epoch(self) -> Status:
        """Optimizer steps from ``state.step`` to the end of the epoch; STOPPED after a step when asked to stop."""
        from tqdm import tqdm

        cfg, s, d = self.cfg, self.state, self.data
        self.train_model.train()
        if cfg.freeze_backbone:  # frozen BN layers keep their running statistics
            self.train_model.eval()
            cast(nn.Module, self.model.fc).train()  # the wrappers share this module
        batches = self._batches()
        self.bar = tqdm(
            total=d.steps_per_epoch,
            initial=s.step,
            desc=f"epoch {s.epoch + 1}/{cfg.epochs}",
            unit="it",
            disable=not (self.di.is_main and cfg.progress),
            dynamic_ncols=True,
            leave=False,
        )
        self.epoch_loss = self.epoch_images = 0.0
        self.skipped = 0
        self.log.window.reset()
        try:
            for step in range(s.step, d.steps_per_epoch):
                loss_total, images_total, stop, lr = self._step(step, batches)
                self._check_finite(loss_total / max(images_total, 1), step, lr)
                s.step = step + 1
                self.epoch_loss += loss_total
                self.epoch_images += images_total
                self.log.window.add(images_total, loss_total)
                self.bar.update(1)
                if s.step % cfg.print_freq == 0 or s.step == d.steps_per_epoch or stop:
                    self._log_window(lr)
                if stop:
                    return Status.STOPPED
        finally:
            self.bar.close()
        return Status.COMPLETED

    def _batches(self) -> Iterator[tuple[Tensor | None, Tensor, list[str]]]:
        cfg, s, d = self.cfg, self.state, self.data
        if d.loader is None:
            steps = (d.steps_per_epoch - s.step) * d.accumulation
            return iter(SyntheticData(cfg.batch_size, cfg.image_size, self.num_classes, steps, cfg.seed))
        d.loader.sampler.set_epoch(s.epoch, s.step)
        return iter(d.loader)

    def _step(self, step: int, batches: Iterator) -> tuple[float, float, bool, float]:
        """One optimizer step over ``accumulation`` micro-batches; returns the summed loss and image count over
        every process, whether any process must stop, and the learning rate used."""
        cfg, d = self.cfg, self.data
        lr = lr_at(
            self.state.epoch * d.steps_per_epoch + step,
            base_lr=self.base_lr,
            schedule=cfg.lr_schedule,
            warmup_iters=int(round(cfg.warmup * d.steps_per_epoch)),
            total_iters=cfg.epochs * d.steps_per_epoch,
            iters_per_epoch=d.steps_per_epoch,
            epochs=cfg.epochs,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum, images = torch.zeros((), device=self.device), 0
        for micro in range(d.accumulation):
            t0 = time.perf_counter()
            batch = next(batches)
            self.log.window.data += time.perf_counter() - t0
            loss, count = self._micro_batch(batch, step, micro)
            loss_sum, images = loss_sum + loss, images + count
        optimizer_step(self.optimizer, self.scaler)
        if self.ema is not None:
            self.ema.update(self.model)
        # one small all_reduce per step: the loss for the log, and whether any process must stop
        flag = float(self.stop.signum is not None)
        stats = torch.cat([loss_sum.reshape(1), torch.tensor([float(images), flag], device=self.device)]).double()
        if self.di.enabled:
            dist.all_reduce(stats)
        loss_total, images_total, stop = stats.tolist()
        return loss_total, images_total, bool(stop), lr

    def _micro_batch(self, batch: tuple[Tensor | None, Tensor, list[str]], step: int, micro: int) -> tuple[Tensor, int]:
        cfg = self.cfg
        images, labels, errors = batch
        for error in errors:
            logger.warning("skipped unreadable training image: %s", error)
        self.skipped += len(errors)
        placeholder = images is None
        if images is None:
            if not self.di.enabled:
                return torch.zeros((), device=self.device), 0
            # every DDP process must join every gradient all-reduce, or the others wait forever: stand in with two
            # blank images whose loss is scaled by 0 (a zero gradient from this process)
            images, labels = torch.zeros(2, 3, cfg.image_size, cfg.image_size), torch.zeros(2, dtype=torch.long)
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        targets = labels
        if cfg.mixup > 0 and not placeholder:
            n = self.num_classes
            soft = F.one_hot(labels, n).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / n
            images, targets = mixup(
                images, soft, cfg.mixup, _mix(cfg.seed, self.state.epoch, step, micro, self.di.rank)
            )
        last = micro == self.data.accumulation - 1
        sync = cast(Any, self.train_model).no_sync() if self.di.enabled and not last else contextlib.nullcontext()
        scale = 0.0 if placeholder else 1.0 / self.data.accumulation
        with sync:
            loss = forward_backward(
                self.train_model,
                images,
                targets,
                criterion=self.criterion,
                amp_dtype=self.amp_dtype,
                scaler=self.scaler,
                scale=scale,
            )
        if placeholder:
            return torch.zeros((), device=self.device), 0
        return loss.float() * len(labels), len(labels)

    def criterion(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.cfg.mixup > 0:  # soft targets already carry the label smoothing
            return F.cross_entropy(logits, target)
        return F.cross_entropy(logits, target, label_smoothing=self.cfg.label_smoothing)

    def _check_finite(self, loss: float, step: int, lr: float) -> None:
        if math.isfinite(loss):
            return
        last = self.workspace / "last.pth"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"
        self.log.event("diverged", epoch=self.state.epoch + 1, iteration=step + 1, loss=loss)
        raise TrainingDiverged(
            f"loss became {loss} at epoch {self.state.epoch + 1}, iteration {step + 1} (lr {lr:.4g}); stopped "
            f"without saving: {kept}. Lower --lr or use --precision fp32/bf16, then --resume it"
        )

    def _log_window(self, lr: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        s, scale = self.state, float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        metrics = self.log.window.metrics(lr, scale)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{metrics['train.loss']:.4f}", lr=f"{lr:.3g}", ips=f"{metrics['train.total_ips']:.1f}"
            )
        self.log(s.epoch + 1, s.step, metrics, s.epoch * self.data.steps_per_epoch + s.step)
        self.log.window.reset()

    def validate(self) -> dict[str, float]:
        """val.* (and val_ema.*) metrics over the validation folder, every sample counted once across processes."""
        if self.data.val_loader is None:
            return {}
        if self.di.enabled:  # every process evaluates the same weights and statistics: rank 0's
            for buffer in self.model.buffers():
                dist.broadcast(buffer, 0)
        precision = self.cfg.precision if self.amp_dtype is not None else "fp32"
        out: dict[str, float] = {}
        for prefix, net in [("val", self.model)] + ([("val_ema", self.ema.module)] if self.ema else []):
            backend = TorchBackend(
                net, device=str(self.device), precision=precision, channels_last=self.cfg.memory_format == "nhwc"
            )
            metrics = evaluate(
                backend, self.data.val_loader, num_classes=self.num_classes, dist_info=self.di, max_steps=self.cfg.prof
            )
            out.update({k.replace("val.", prefix + "."): v for k, v in metrics.items()})
        return out

    def finish_epoch(self) -> dict[str, Any]:
        """Validate, count skipped images over all processes, write the epoch checkpoint and log line."""
        s = self.state
        val = self.validate()
        top1 = val.get("val.top1", -1.0)
        is_best = top1 >= s.best_top1 if val else True
        s.best_top1 = max(s.best_top1, top1)
        skipped = torch.tensor(float(self.skipped), device=self.device)
        if self.di.enabled:
            dist.all_reduce(skipped)
        metrics = {
            "train.epoch_loss": self.epoch_loss / max(self.epoch_images, 1),
            "train.skipped_images": int(skipped.item()),
            **val,
        }
        s.epoch, s.step = s.epoch + 1, 0
        if is_best:
            s.best_epoch = s.epoch
        path = self.save(end_of_epoch=True, is_best=is_best)
        if self.di.is_main:
            self.log(s.epoch, None, metrics, s.epoch * self.data.steps_per_epoch)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in EPOCH_LINE_METRICS)
            logger.info("epoch %d/%d: %s; checkpoint %s", s.epoch, self.cfg.epochs, shown, path)
        return metrics

    def save(self, *, end_of_epoch: bool, is_best: bool) -> Path | None:
        """Rank 0 writes the training state (atomically; a failed write keeps the previous checkpoint)."""
        if not self.di.is_main:
            return None
        s, cfg = self.state, self.cfg
        state = {
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": s.epoch,
            "step": s.step,
            "best_prec1": s.best_top1,
            "best_epoch": s.best_epoch,
            "arch": cfg.arch,
            "classes": self.data.classes,
            "image_size": cfg.image_size,
            "config": asdict(cfg),
            "rng": rng_state(),
        }
        if self.ema is not None:
            state["state_dict_ema"] = self.ema.module.state_dict()
        return write_checkpoint(
            state, self.workspace, epoch=s.epoch, end_of_epoch=end_of_epoch, is_best=is_best, keep_last=cfg.keep_last
        )


def train(cfg: TrainConfig) -> TrainResult:
    """Run training (or ``cfg.evaluate``) as configured. Rank 0 writes into ``cfg.workspace``, which must be new,
    empty of earlier runs, or continued with ``--resume`` (``--overwrite`` deletes an earlier run first).

    Raises :class:`TrainingDiverged` on a NaN/inf loss (the last good checkpoint is kept), and
    :class:`ResnextError` for anything the user can fix (one line).
    """
    cfg.validate()
    di = init_distributed(cfg.device)
    trainer: Trainer | None = None
    try:
        if di.is_main and not cfg.evaluate:
            prepare_workspace(cfg.workspace, resume=cfg.resume, overwrite=cfg.overwrite)
        with StopRequest() as stop:
            trainer = Trainer(cfg, di, stop)
            trainer.resume()
            return trainer.run()
    finally:
        if trainer is not None:
            trainer.log.close()
        shutdown_distributed(di)
