"""Datasets, samplers and loaders for training and evaluation.

* :class:`ImageFolder` reads ``<root>/<class>/*`` (labels = sorted folder names). It is the package's one
  error-tolerant dataset (:class:`resnext.images.ImageDataset`) with labels: files are found by
  :func:`resnext.images.walk_images` and decoded by :func:`resnext.images.load_image`, as for inference; a file
  that cannot be decoded or preprocessed comes back as an error, logged with its path by the training loop and
  skipped, never a crash.
* :class:`TrainSampler` makes the data order and each sample's augmentation a pure function of
  ``(seed, epoch, index)``: a resumed run sees exactly the batches an uninterrupted run would, and
  ``torchrun --nproc_per_node W`` with gradient accumulation ``A`` sees the same micro-batches as any other
  split of ``W * A`` (DDP on 2 processes == one process accumulating the same two half-batches).
* :class:`ShardSampler` splits evaluation without padding, so every sample is counted exactly once.
* ``--data-backend synthetic`` is a fixed random batch, for speed measurements.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from ..errors import ResnextError
from ..images import IMAGE_EXTENSIONS, ImageDataset, collate_images, find_classes, match_classes, walk_images
from ..transforms import eval_preset, train_preset
from .distributed import Distributed

if TYPE_CHECKING:
    from .config import TrainConfig

logger = logging.getLogger("resnext")

__all__ = [
    "ImageFolder",
    "TrainSampler",
    "ShardSampler",
    "SyntheticData",
    "collate_labelled",
    "find_classes",
    "match_classes",
    "train_loader",
    "eval_loader",
    "TrainData",
    "build_train_data",
]


class ImageFolder(ImageDataset):
    """``<root>/<class>/<image>`` -> ``(index, tensor | None, error | None)`` items; ``targets[index]`` is the label.

    ``classes`` fixes the label order (e.g. the training set's, or a checkpoint's); folders not in it are an error.
    Items may be an index or an ``(index, seed)`` pair (seeded augmentation, see :class:`ImageDataset`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Any], Tensor],
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        found = find_classes(root)
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise ResnextError(f"{root} has class folders the model does not know: {', '.join(unknown[:5])}")
        index = {name: i for i, name in enumerate(self.classes)}
        samples = [(path, index[name]) for name in found for path in walk_images(self.root / name)]
        if not samples:
            raise ResnextError(f"no images found under {root} (extensions: {' '.join(IMAGE_EXTENSIONS)})")
        super().__init__([path for path, _ in samples], transform)
        self.targets = [label for _, label in samples]

    @property
    def samples(self) -> list[tuple[str, int]]:
        return [(str(path), target) for path, target in zip(self.sources, self.targets)]


def collate_labelled(
    items: list[tuple[int, Tensor | None, str | None]], targets: Sequence[int]
) -> tuple[Tensor | None, Tensor, list[str]]:
    """:func:`resnext.images.collate_images` plus labels: ``(images | None, labels, ["path: reason", ...])``."""
    indices, images, errors = collate_images(items)
    return images, torch.tensor([targets[i] for i in indices], dtype=torch.long), [reason for _, reason in errors]


def _mix(*values: int) -> int:
    """A well-spread 63-bit seed from a few integers (splitmix64), so nearby epochs/indices don't correlate."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


class TrainSampler(Sampler):
    """Shuffled, sharded training order yielding ``(index, augmentation seed)`` pairs.

    Each epoch's permutation depends on ``(seed, epoch)`` only. It is cut into global batches of
    ``batch_size * world_size * accumulation`` samples (an incomplete last one is dropped, so every process runs
    the same number of steps); inside a global batch, micro-batch ``m`` of process ``r`` is chunk
    ``m * world_size + r``. ``start_step`` skips optimizer steps already done (resume within an epoch).
    """

    def __init__(
        self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1, accumulation: int = 1, seed: int = 0
    ) -> None:
        self.size, self.batch_size = size, batch_size
        self.rank, self.world_size, self.accumulation = rank, world_size, accumulation
        self.seed, self.epoch, self.start_step = seed, 0, 0
        self.global_batch = batch_size * world_size * accumulation
        if size < self.global_batch:
            raise ResnextError(
                f"the training set has {size} images, fewer than one global batch of {self.global_batch} "
                f"(batch size {batch_size} x {world_size} processes x {accumulation} accumulation steps)"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.size // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulation * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        b = self.batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            for micro in range(self.accumulation):
                chunk = (step * self.world_size * self.accumulation) + micro * self.world_size + self.rank
                for index in order[chunk * b : (chunk + 1) * b]:
                    yield index, _mix(self.seed, self.epoch, index, 1)


class ShardSampler(Sampler):
    """Process ``rank`` takes indices ``rank, rank + world_size, ...``: no padding, no duplicates."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


@dataclass
class SyntheticData:
    """A fixed random batch served ``steps`` times (NVIDIA's synthetic backend): measures compute, not I/O."""

    batch_size: int
    image_size: int
    num_classes: int
    steps: int
    seed: int = 0

    def __post_init__(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.images = torch.randn(self.batch_size, 3, self.image_size, self.image_size, generator=generator)
        self.labels = torch.randint(0, self.num_classes, (self.batch_size,), generator=generator)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, list[str]]]:
        for _ in range(self.steps):
            yield self.images, self.labels, []


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the training process handles it (finish the step, checkpoint);
    # loader workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: the default ``process`` of the loaders: a run of one process on the CPU
_ONE_PROCESS = Distributed()


def _loader_kwargs(dataset: ImageFolder, workers: int, process: Distributed) -> dict[str, Any]:
    collate = functools.partial(collate_labelled, targets=dataset.targets)
    pin_memory = process.device.type == "cuda"  # page-locked batches copy to the GPU asynchronously
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory, "collate_fn": collate}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_ignore_sigint)
    return kwargs


def train_loader(
    root: str | os.PathLike,
    *,
    image_size: int,
    batch_size: int,
    workers: int,
    process: Distributed = _ONE_PROCESS,
    accumulation: int = 1,
    seed: int = 0,
    augment: bool = True,
) -> DataLoader:
    """Loader over ``root`` with NVIDIA's training augmentation (``augment=False``: the evaluation preset);
    ``loader.sampler`` is the :class:`TrainSampler`.

    ``process`` is this process's place in the run: its rank picks its share of each batch, and a CUDA device
    gets pinned memory.
    """
    dataset = ImageFolder(root, train_preset(image_size) if augment else eval_preset(image_size))
    sampler = TrainSampler(
        len(dataset), batch_size, rank=process.rank, world_size=process.world_size, accumulation=accumulation, seed=seed
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **_loader_kwargs(dataset, workers, process))


def eval_loader(
    root: str | os.PathLike,
    *,
    image_size: int,
    batch_size: int,
    workers: int,
    classes: Sequence[str] | None = None,
    process: Distributed = _ONE_PROCESS,
    transforms: Callable[[Any], Tensor] | None = None,
) -> DataLoader:
    """Loader over ``root`` with the evaluation preset (``transforms``, default
    :func:`resnext.transforms.eval_preset` at ``image_size``), unpadded shards (one per rank of ``process``)."""
    dataset = ImageFolder(root, transforms or eval_preset(image_size), classes=classes)
    sampler = ShardSampler(len(dataset), rank=process.rank, world_size=process.world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **_loader_kwargs(dataset, workers, process))


@dataclass
class TrainData:
    """What the training loop reads: class names, batch geometry and the loaders of one run."""

    classes: list[str]
    steps_per_epoch: int
    accumulation: int
    global_batch: int
    loader: Any = None  # None: synthetic data (or --evaluate)
    val_loader: Any = None


def build_train_data(cfg: TrainConfig, di: Distributed) -> TrainData:
    """Loaders and batch geometry. ``--evaluate`` builds only the validation loader (no full batch needed)."""
    per_step = cfg.batch_size * di.world_size
    if cfg.optimizer_batch_size and cfg.optimizer_batch_size % per_step:
        raise ResnextError(
            f"--optimizer-batch-size {cfg.optimizer_batch_size} is not a multiple of --batch-size x "
            f"processes = {per_step}"
        )
    accumulation = cfg.optimizer_batch_size // per_step if cfg.optimizer_batch_size else 1
    if cfg.data_backend == "synthetic":
        classes = [f"class_{i}" for i in range(cfg.num_classes or 1000)]
        return TrainData(classes, cfg.prof or 100, accumulation, per_step * accumulation)
    data = Path(str(cfg.data))
    train_dir, val_dir = data / "train", data / "val"
    if not train_dir.is_dir() and not (cfg.evaluate and val_dir.is_dir()):
        raise ResnextError(f"{data} has no train/ folder; expected {data}/train/<class>/* and {data}/val/<class>/*")
    classes = cfg.classes or find_classes(train_dir if train_dir.is_dir() else val_dir)
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise ResnextError(f"--num-classes {cfg.num_classes} but {data} has {len(classes)} class folders")
    out = TrainData(classes, 0, accumulation, per_step * accumulation)
    # both loaders read the same crops, batches and workers, split over this run's processes
    shared: dict[str, Any] = {
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "workers": cfg.workers,
        "process": di,
    }
    if not cfg.evaluate:
        out.loader = train_loader(
            train_dir, accumulation=accumulation, seed=cfg.seed, augment=not cfg.no_augmentation, **shared
        )
        out.steps_per_epoch = min(out.loader.sampler.steps_per_epoch, cfg.prof or out.loader.sampler.steps_per_epoch)
    if val_dir.is_dir():
        out.val_loader = eval_loader(val_dir, classes=classes, **shared)
    elif cfg.evaluate:
        raise ResnextError(f"--evaluate needs {val_dir}/<class>/* to evaluate on")
    else:
        logger.warning("%s has no val/ folder: no validation, best.pth follows last.pth", data)
    return out
