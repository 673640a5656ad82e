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
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ResnextError
from ..model.resnet import get_model_weights
from ..model.sources import arch_option
from ..options import (
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    PRECISIONS,
    Precision,
    at_least,
    between,
    check_options,
    device_option,
    greater_than,
    option,
    precisions,
)
from ..util import loader_workers

__all__ = ["RECIPES", "PRECISIONS", "MAX_IMAGE_SIZE", "MIN_IMAGE_SIZE", "TrainConfig", "config_from_args"]

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

_FRACTION = between(0.0, 1.0, high_open=True)  # 0 <= x < 1


@dataclass
class TrainConfig:
    """Every training option; each field is the command-line flag of NVIDIA's name (``-`` for ``_``)."""

    data: str | None = option(
        None,
        flags=("data",),
        nargs="?",
        metavar="DATA_DIR",
        help="folder with train/<class>/* and val/<class>/* (not needed with --data-backend synthetic)",
    )
    recipe: str | None = option(
        None, choices=sorted(RECIPES), help="NVIDIA's hyper-parameters at once; explicit flags override them"
    )
    arch: str = arch_option("resnext101_32x4d", flags=("-a", "--arch"))
    epochs: int = option(90, check=at_least(1), help="total epochs of the schedule")
    run_epochs: int | None = option(
        None, check=at_least(1), help="stop after this many epochs in this invocation (staged runs; resume later)"
    )
    batch_size: int = option(128, flags=("-b", "--batch-size"), check=at_least(1), help="images per process per step")
    optimizer_batch_size: int | None = option(
        None, check=at_least(1), help="global batch per optimizer step, reached by gradient accumulation"
    )
    lr: float = option(
        0.256, check=greater_than(0.0), help="learning rate per 256 images (scaled by global batch / 256)"
    )
    no_lr_scaling: bool = option(False, help="use --lr as given, not scaled by global batch / 256")
    lr_schedule: str = option(
        "cosine",
        choices=("cosine", "step", "linear"),
        help="after warmup: cosine to 0, step (x0.1 at 1/3, 2/3, 8/9 of the epochs) or linear to 0",
    )
    warmup: float = option(8, check=at_least(0.0), help="linear warmup length in epochs, applied per iteration")
    label_smoothing: float = option(0.1, check=_FRACTION, help="label smoothing, 0 <= x < 1")
    mixup: float = option(0.0, check=at_least(0.0), help="mixup alpha (0 = off)")
    momentum: float = option(0.875, check=_FRACTION, help="SGD momentum")
    nesterov: bool = option(False, help="Nesterov momentum")
    weight_decay: float = option(
        1 / 16384,
        flags=("--wd", "--weight-decay"),
        check=at_least(0.0),
        help="weight decay (never applied to BN or bias parameters)",
    )
    use_ema: float | None = option(
        None,
        check=between(0.0, 1.0, low_open=True, high_open=True),
        metavar="DECAY",
        help="keep an exponential moving average of the weights with this decay",
    )
    last_bn_0_init: bool = option(
        False,
        help="zero-initialise the gamma of each block's last BatchNorm (bn3), as NVIDIA's flag: every residual block "
        "starts as the identity (helps short runs from scratch)",
    )
    no_augmentation: bool = option(
        False,
        help="train on the evaluation preprocessing (resize to --image-size + 32, centre crop) instead of NVIDIA's "
        "random-resized crop (8-100%% of the area) and horizontal flip: for small data sets of tiny, centred or not "
        "flip-invariant objects (digits)",
    )
    precision: Precision = option(
        "fp32",
        choices=precisions("int8"),
        help="fp32, tf32 (CUDA), fp16 (autocast + dynamic loss scaling) or bf16 (autocast)",
    )
    memory_format: str = option("nchw", choices=("nchw", "nhwc"), help="nhwc = channels_last")
    compile: bool = option(False, help="torch.compile the model")
    image_size: int = option(
        224,
        check=between(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        help=f"training crop and evaluation crop, {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} (evaluation resizes to size + "
        "32 first)",
    )
    workers: int = option(  # 4, or one per usable CPU when fewer
        loader_workers(),
        flags=("-j", "--workers"),
        check=at_least(0),
        help="data loading processes per training process",
    )
    data_backend: str = option(
        "pytorch",
        choices=("pytorch", "synthetic"),
        help="pytorch (ImageFolder) or synthetic (a fixed random batch)",
    )
    seed: int = option(0, help="seed for initialisation, data order and augmentation")
    workspace: str = option("runs/train", help="output folder: logs, labels, checkpoints (one run per folder)")
    resume: str | None = option(
        None, metavar="PATH|auto", help="checkpoint to resume from, or 'auto' for <workspace>/last.pth when present"
    )
    overwrite: bool = option(
        False,
        help="start a new run in a workspace that holds an earlier one, deleting its checkpoints, logs and "
        "TensorBoard files first (without it such a workspace is refused)",
    )
    pretrained: bool = option(False, help="start from the published weights of --arch")
    weights: str | None = option(
        None, metavar="FILE|URL", help="start from this weights file or URL (any layout the loader reads)"
    )
    num_classes: int | None = option(
        None,
        check=at_least(1),
        help="classes of the head (default: the number of class folders); a pretrained head of another size is "
        "re-initialised",
    )
    freeze_backbone: bool = option(
        False, help="train only the classifier head (backbone weights and BN statistics stay fixed)"
    )
    prof: int | None = option(
        None,
        check=at_least(1),
        help="run only N iterations per epoch (and N validation batches): for speed measurements",
    )
    evaluate: bool = option(
        False,
        help="only evaluate the starting weights (--resume, --weights or --pretrained) on val/ and print the result; "
        "writes nothing into the workspace",
    )
    device: str = device_option("auto, cpu or cuda")
    keep_last: int = option(2, check=at_least(0), help="per-epoch checkpoints to keep besides last/best")
    print_freq: int = option(10, flags=("-p", "--print-freq"), check=at_least(1), help="log every N iterations")
    progress: bool = option(True, flags=("--no-progress",), help="no progress bar")
    #: label order; None: the sorted train/ folders. config_from_args takes it from a checkpoint that is resumed
    #: or evaluated, so an evaluated val/ may lack some classes
    classes: list[str] | None = None
    # resolved at start-up (recorded in checkpoints and config.json)
    resolved: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_options(self)

    def validate(self) -> None:
        """Raise a one-line :class:`ResnextError` for any combination that cannot work (before anything is
        loaded); each value alone was checked when the config was built."""
        check_options(self)
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
