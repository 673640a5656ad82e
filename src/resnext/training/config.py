"""Training options: one dataclass whose fields are the command-line flags (NVIDIA's names), its recipes, and the
checks that run before any work (a bad value is one line and exit status 2, never a traceback mid-run).

    resnext train /data/imagenet --recipe nvidia-90e --workspace runs/r101          # NVIDIA's 90-epoch recipe
    resnext train /data/flowers --pretrained --num-classes 5 --freeze-backbone --epochs 10 --lr 0.1 --warmup 0
    resnext train /data/small --arch resnext_test --image-size 32 --last-bn-0-init --lr 0.4 -b 16 --warmup 1 --epochs 5

Precedence: dataclass defaults, then ``--recipe``, then the architecture, image size (and, resumed or only
evaluated, class names) of the starting checkpoint, then the flags given explicitly.
"""

from __future__ import annotations

import argparse
import math
import operator
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ResnextError
from ..model.factory import get_model_weights, list_models
from ..util import AUTOCAST_DTYPES, loader_workers

__all__ = ["RECIPES", "PRECISIONS", "MAX_IMAGE_SIZE", "TrainConfig", "add_train_arguments", "config_from_args"]

#: NVIDIA's published hyper-parameters for resnext101-32x4d (DeepLearningExamples ConvNets, 8 GPUs x 128).
RECIPES: dict[str, dict[str, Any]] = {
    "nvidia-90e": {
        "epochs": 90,
        "batch_size": 128,
        "lr": 0.256,
        "lr_schedule": "cosine",
        "warmup": 8,
        "label_smoothing": 0.1,
        "mixup": 0.0,
        "momentum": 0.875,
        "nesterov": False,
        "weight_decay": 1 / 16384,
        "precision": "fp16",
        "memory_format": "nhwc",
        "image_size": 224,
    },
}
RECIPES["nvidia-250e"] = {**RECIPES["nvidia-90e"], "epochs": 250, "mixup": 0.2}

PRECISIONS = tuple(AUTOCAST_DTYPES)  # fp32, tf32, bf16, fp16: the package's one precision table
#: Largest training/evaluation crop accepted: 1024 px already needs ~21x the activations of 224 px.
MAX_IMAGE_SIZE = 1024
MIN_IMAGE_SIZE = 32  # smaller crops break the network's strides


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
    last_bn_0_init: bool = False
    no_augmentation: bool = False
    precision: str = "fp32"
    memory_format: str = "nchw"
    compile: bool = False
    image_size: int = 224
    workers: int = loader_workers()  # 4, or one per usable CPU when fewer
    data_backend: str = "pytorch"
    seed: int = 0
    workspace: str = "runs/train"
    resume: str | None = None
    overwrite: bool = False
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
    #: label order; None: the sorted train/ folders. config_from_args takes it from a checkpoint that is resumed
    #: or evaluated, so an evaluated val/ may lack some classes
    classes: list[str] | None = None
    # resolved at start-up (recorded in checkpoints and config.json)
    resolved: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise a one-line :class:`ResnextError` for any value that cannot work (before anything is loaded)."""
        _check_choices(self)
        _check_numbers(self)
        if self.data_backend == "pytorch" and not self.data:
            raise ResnextError("DATA_DIR is required (a folder with train/<class>/* and val/<class>/*)")
        if self.pretrained and self.weights:
            raise ResnextError("use either --pretrained (published weights) or --weights FILE, not both")
        if self.pretrained and get_model_weights(self.arch) is None:
            raise ResnextError(f"{self.arch} has no published weights; drop --pretrained or pass --weights FILE")
        if self.last_bn_0_init and (self.pretrained or self.weights):
            raise ResnextError(
                "--last-bn-0-init initialises a model trained from scratch; loaded weights would "
                "replace it: drop it, or drop --pretrained/--weights"
            )
        if self.overwrite and self.resume:
            raise ResnextError("--overwrite starts a new run and --resume continues one: give only one of them")


def _check_choices(cfg: TrainConfig) -> None:
    for name, value, allowed in (
        ("arch", cfg.arch, list_models()),
        ("recipe", cfg.recipe, [None, *RECIPES]),
        ("precision", cfg.precision, PRECISIONS),
        ("memory-format", cfg.memory_format, ("nchw", "nhwc")),
        ("lr-schedule", cfg.lr_schedule, ("cosine", "step", "linear")),
        ("data-backend", cfg.data_backend, ("pytorch", "synthetic")),
    ):
        if value not in allowed:
            raise ResnextError(f"unknown --{name} {value!r}; choose one of {', '.join(a for a in allowed if a)}")


@dataclass(frozen=True)
class Interval:
    """Where a flag's value must lie; ``None`` leaves that side open."""

    low: float | None
    high: float | None = None
    low_included: bool = True
    high_included: bool = False

    def conditions(self) -> list[tuple[str, float]]:
        """``[(">=", 0), ("<", 1)]``: what a value must meet (the error message lists the same)."""
        low = [(">=" if self.low_included else ">", self.low)] if self.low is not None else []
        return low + ([("<=" if self.high_included else "<", self.high)] if self.high is not None else [])


_COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
CROP_SIZES = Interval(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, high_included=True)

#: interval -> the flags whose values must lie in it
_RANGES: dict[Interval, tuple[str, ...]] = {
    Interval(1): ("epochs", "run_epochs", "batch_size", "optimizer_batch_size", "num_classes", "prof", "print_freq"),
    Interval(0): ("warmup", "mixup", "weight_decay", "workers", "keep_last"),
    Interval(0, low_included=False): ("lr",),
    Interval(0, 1): ("label_smoothing", "momentum"),
    Interval(0, 1, low_included=False): ("use_ema",),
    CROP_SIZES: ("image_size",),
}


def check_range(name: str, value: float | None, interval: Interval) -> None:
    """One line naming the flag when ``value`` (None: not given) is not a finite number inside ``interval``."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ResnextError(f"{_flag(name)} must be a finite number, not {value}")
    conditions = interval.conditions()
    if not all(_COMPARISONS[op](value, limit) for op, limit in conditions):
        bounds = " and ".join(f"{op} {limit}" for op, limit in conditions)
        raise ResnextError(f"{_flag(name)} {value} is out of range: it must be {bounds}")


def _check_numbers(cfg: TrainConfig) -> None:
    for interval, names in _RANGES.items():
        for name in names:
            check_range(name, getattr(cfg, name), interval)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training flags (NVIDIA's names). Defaults come from :class:`TrainConfig`, then ``--recipe``."""
    d = {f.name: f.default for f in fields(TrainConfig)}

    def add(name: str, help: str, *aliases: str, **kwargs: Any) -> None:
        shown = f" (default: {d[name]})" if kwargs.get("action") != "store_true" else ""
        parser.add_argument(*aliases, _flag(name), dest=name, default=argparse.SUPPRESS, help=help + shown, **kwargs)

    _add_recipe_flags(parser, add)
    _add_run_flags(parser, add)


def _add_recipe_flags(parser: argparse.ArgumentParser, add: Any) -> None:
    """Data, model and the optimisation recipe."""
    parser.add_argument(
        "data",
        nargs="?",
        default=argparse.SUPPRESS,
        metavar="DATA_DIR",
        help="folder with train/<class>/* and val/<class>/* (not needed with --data-backend synthetic)",
    )
    add("recipe", "NVIDIA's hyper-parameters at once; explicit flags override them", choices=sorted(RECIPES))
    add("arch", "architecture", "-a", choices=list_models())
    add("epochs", "total epochs of the schedule", type=int)
    add("run_epochs", "stop after this many epochs in this invocation (staged runs; resume later)", type=int)
    add("batch_size", "images per process per step", "-b", type=int)
    add("optimizer_batch_size", "global batch per optimizer step, reached by gradient accumulation", type=int)
    add("lr", "learning rate per 256 images (scaled by global batch / 256)", type=float)
    add("no_lr_scaling", "use --lr as given, not scaled by global batch / 256", action="store_true")
    add(
        "lr_schedule",
        "after warmup: cosine to 0, step (x0.1 at 1/3, 2/3, 8/9 of the epochs) or linear to 0",
        choices=["cosine", "step", "linear"],
    )
    add("warmup", "linear warmup length in epochs, applied per iteration", type=float)
    add("label_smoothing", "label smoothing, 0 <= x < 1", type=float)
    add("mixup", "mixup alpha (0 = off)", type=float)
    add("momentum", "SGD momentum", type=float)
    add("nesterov", "Nesterov momentum", action="store_true")
    add("weight_decay", "weight decay (never applied to BN or bias parameters)", "--wd", type=float)
    add("use_ema", "keep an exponential moving average of the weights with this decay", type=float, metavar="DECAY")
    add(
        "last_bn_0_init",
        "zero-initialise the gamma of each block's last BatchNorm (bn3), as NVIDIA's flag: "
        "every residual block starts as the identity (helps short runs from scratch)",
        action="store_true",
    )
    add(
        "no_augmentation",
        "train on the evaluation preprocessing (resize to --image-size + 32, centre crop) instead of NVIDIA's "
        "random-resized crop (8-100%% of the area) and horizontal flip: for small data sets of tiny, centred or "
        "not flip-invariant objects (digits)",
        action="store_true",
    )


def _add_run_flags(parser: argparse.ArgumentParser, add: Any) -> None:
    """Precision, data loading, workspace, starting weights, logging."""
    add(
        "precision",
        "fp32, tf32 (CUDA), fp16 (autocast + dynamic loss scaling) or bf16 (autocast)",
        choices=list(PRECISIONS),
    )
    add("memory_format", "nhwc = channels_last", choices=["nchw", "nhwc"])
    add("compile", "torch.compile the model", action="store_true")
    add(
        "image_size",
        f"training crop and evaluation crop, 32..{MAX_IMAGE_SIZE} (evaluation resizes to size + 32 first)",
        type=int,
    )
    add("workers", "data loading processes per training process", "-j", type=int)
    add("data_backend", "pytorch (ImageFolder) or synthetic (a fixed random batch)", choices=["pytorch", "synthetic"])
    add("seed", "seed for initialisation, data order and augmentation", type=int)
    add("workspace", "output folder: logs, labels, checkpoints (one run per folder)")
    add("resume", "checkpoint to resume from, or 'auto' for <workspace>/last.pth when present", metavar="PATH|auto")
    add(
        "overwrite",
        "start a new run in a workspace that holds an earlier one, deleting its checkpoints, logs and "
        "TensorBoard files first (without it such a workspace is refused)",
        action="store_true",
    )
    add("pretrained", "start from the published weights of --arch", action="store_true")
    add("weights", "start from this weights file or URL (any layout the loader reads)", metavar="FILE|URL")
    add(
        "num_classes",
        "classes of the head (default: the number of class folders); "
        "a pretrained head of another size is re-initialised",
        type=int,
    )
    add(
        "freeze_backbone",
        "train only the classifier head (backbone weights and BN statistics stay fixed)",
        action="store_true",
    )
    add("prof", "run only N iterations per epoch (and N validation batches): for speed measurements", type=int)
    add(
        "evaluate",
        "only evaluate the starting weights (--resume, --weights or --pretrained) on val/ and print "
        "the result; writes nothing into the workspace",
        action="store_true",
    )
    add("device", "auto, cpu or cuda")
    add("keep_last", "per-epoch checkpoints to keep besides last/best", type=int)
    add("print_freq", "log every N iterations", "-p", type=int)
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS, help="no progress bar"
    )


def config_from_args(args: argparse.Namespace | dict[str, Any]) -> TrainConfig:
    """Dataclass defaults, then the ``--recipe`` values, then what the starting checkpoint records
    (:func:`starting_checkpoint_values`), then the flags given explicitly; validated."""
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in (vars(args) if isinstance(args, argparse.Namespace) else args).items() if k in names}
    recipe = given.get("recipe")
    if recipe is not None and recipe not in RECIPES:
        raise ResnextError(f"unknown --recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    cfg = TrainConfig(**{**RECIPES.get(recipe or "", {}), **starting_checkpoint_values(given), **given})
    cfg.validate()
    return cfg


def starting_checkpoint_values(given: dict[str, Any]) -> dict[str, Any]:
    """``arch`` and ``image_size`` of the checkpoint a run starts from (``--resume``, ``auto`` meaning
    ``<workspace>/last.pth``; else a ``--weights`` file), read as every command reads them
    (:func:`resnext.model.sources.checkpoint_metadata`); plus its ``classes`` when the run continues or only evaluates
    it (fine-tuning with ``--weights`` trains on the data's own classes)."""
    from pathlib import Path

    from ..model.sources import checkpoint_metadata
    from ..model.weights import read_checkpoint

    path = given.get("resume")
    if path == "auto":
        last = Path(given.get("workspace", TrainConfig.workspace)) / "last.pth"
        path = str(last) if last.is_file() else None
    keeps_classes = bool(path or given.get("evaluate"))
    weights = given.get("weights")
    path = path or (weights if weights and Path(weights).is_file() else None)
    if path is None:
        return {}
    values = checkpoint_metadata(read_checkpoint(path, progress=False))
    if not keeps_classes:
        values.pop("classes", None)
    return values
