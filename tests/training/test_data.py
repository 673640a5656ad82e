"""Samplers and datasets for training/evaluation: order, sharding, reproducible augmentation, corrupt files,
the one discovery walker (no escaping the root through symlinks, no folder twice), any decoder failure skipped."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from resnext.errors import ResnextError
from resnext.images import ImageDataset, collate_images, find_images, walk_images
from resnext.training.data import ImageFolder, ShardSampler, TrainSampler, collate_labelled, train_loader
from resnext.transforms import eval_preset, train_preset


def batches(sampler: TrainSampler) -> list[list[int]]:
    items = [i for i, _ in sampler]
    b = sampler.batch_size
    return [items[k : k + b] for k in range(0, len(items), b)]


def test_train_sampler_ddp_split_equals_accumulation_split() -> None:
    size, b = 103, 4
    single = TrainSampler(size, b, accumulation=2, seed=7)
    ranks = [TrainSampler(size, b, rank=r, world_size=2, seed=7) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(3)
    micro = batches(single)
    per_rank = [batches(s) for s in ranks]
    assert single.steps_per_epoch == ranks[0].steps_per_epoch == size // 8
    for step in range(single.steps_per_epoch):
        assert micro[2 * step] == per_rank[0][step]
        assert micro[2 * step + 1] == per_rank[1][step]
    # a global batch never repeats a sample, an epoch is a permutation (minus the dropped tail)
    seen = [i for batch in micro for i in batch]
    assert len(seen) == len(set(seen)) == 96


def test_train_sampler_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch() -> None:
    a, b = TrainSampler(50, 5, seed=1), TrainSampler(50, 5, seed=1)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    full = list(a)
    a.set_epoch(2, start_step=4)
    assert list(a) == full[4 * 5 :] and len(a) == len(full) - 20
    with pytest.raises(ResnextError, match="fewer than one global batch"):
        TrainSampler(7, 4, world_size=2)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_sampler_counts_every_sample_once(world_size: int) -> None:
    shards = [list(ShardSampler(11, rank=r, world_size=world_size)) for r in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for name, colour in (("b", (0, 0, 255)), ("a", (255, 0, 0))):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "a" / "notes.txt").write_text("ignored: not an image extension")
    return tmp_path


def test_image_folder_labels_sorted_and_corrupt_file_returned_as_error(folder: Path) -> None:
    ds = ImageFolder(folder, train_preset(32))
    assert isinstance(ds, ImageDataset)  # the one error-tolerant dataset, with labels
    assert ds.classes == ["a", "b"] and len(ds) == 7
    items = [ds[i] for i in range(len(ds))]
    errors = [item for item in items if item[2] is not None]
    assert len(errors) == 1 and ds.sources[errors[0][0]].endswith("broken.jpg") and "broken.jpg" in errors[0][2]
    images, labels, skipped = collate_labelled(items, ds.targets)
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1] and len(skipped) == 1
    assert "broken.jpg" in skipped[0]
    with pytest.raises(ResnextError, match="does not know"):
        ImageFolder(folder, train_preset(32), classes=["a"])


def test_augmentation_is_reproducible_per_sample_seed(folder: Path) -> None:
    Image.effect_noise((64, 48), 60).convert("RGB").save(folder / "b" / "noise.png")
    ds = ImageFolder(folder, train_preset(32))
    index = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("noise.png"))
    x1, x2, x3 = ds[(index, 11)][1], ds[(index, 11)][1], ds[(index, 12)][1]
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    # the same through loaders with and without worker processes
    (folder / "a" / "broken.jpg").unlink()
    seen = []
    for workers in (0, 2):
        loader = train_loader(folder, image_size=32, batch_size=2, workers=workers, seed=5)
        loader.sampler.set_epoch(1)
        seen.append(torch.cat([x for x, _, _ in loader]))
    assert torch.equal(seen[0], seen[1])


# ---------------------------------------------------------------------------------------------------------------
# Any failure to decode or preprocess one image is that image skipped, whatever its exception type


class _Flaky:
    """The eval preset, except that images of one width raise what Pillow's decoders raise on damaged files."""

    def __init__(self, exc: BaseException, width: int) -> None:
        self.exc, self.width, self.preset = exc, width, eval_preset(32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.width == self.width:
            raise self.exc
        return self.preset(image)


@pytest.mark.parametrize(
    "exc",
    [
        struct.error("unpack requires a buffer of 4 bytes"),
        TypeError("bad EXIF tag"),
        OverflowError("int too large"),
        NotImplementedError("unsupported mode"),
        ZeroDivisionError("division by zero"),
        MemoryError(),
    ],
)
def test_any_decode_or_preprocess_failure_becomes_a_skipped_item(tmp_path: Path, exc: BaseException) -> None:
    root = make_image_folder(tmp_path / "data", num_classes=2, per_class=3, size=40)
    odd = root / "green_square" / "odd.png"
    Image.new("RGB", (41, 40), (40, 180, 60)).save(odd)
    ds = ImageFolder(root, _Flaky(exc, width=41))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=lambda items: collate_labelled(items, ds.targets))
    got = list(loader)
    assert sum(len(images) for images, _, _ in got if images is not None) == 6
    reasons = [reason for _, _, errors in got for reason in errors]
    assert len(reasons) == 1 and str(odd) in reasons[0] and type(exc).__name__ in reasons[0]
    # the classify path uses the same dataset and collate
    indices, batch, errors = collate_images([ImageDataset([odd, ds.sources[0]], _Flaky(exc, 41))[i] for i in (0, 1)])
    assert indices == [1] and batch.shape[0] == 1 and errors[0][0] == 0


# ---------------------------------------------------------------------------------------------------------------
# Discovery: one walker, never outside the root, never a folder twice


def test_symlinked_folders_never_leave_the_root_nor_repeat(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "train", num_classes=2, per_class=3, size=32)
    outside = make_image_folder(tmp_path / "elsewhere", num_classes=1, per_class=4, size=32)
    a, b = sorted(root.iterdir())
    (a / "up").symlink_to("..", target_is_directory=True)  # train/a/up -> train: 6 images again, labelled a
    (a / "loop").symlink_to(".", target_is_directory=True)  # a cycle
    (a / "out").symlink_to(outside, target_is_directory=True)  # leaves the root
    (b / "nested").mkdir()
    Image.new("RGB", (32, 32)).save(b / "nested" / "deep.png")
    (b / "alias").symlink_to(b / "nested", target_is_directory=True)  # the same folder under a second name

    ds = ImageFolder(root, eval_preset(32))
    assert len(ds) == 7 and sorted(ds.targets) == [0, 0, 0, 1, 1, 1, 1]
    assert sum(p.endswith("deep.png") for p in ds.sources) == 1
    assert not any("/up/" in p or "/loop/" in p or "/out/" in p for p in ds.sources)
    # classify's discovery follows the same rule
    assert find_images([root]) == walk_images(root) == sorted(ds.sources)
    assert len(walk_images(a)) == 3


def test_a_symlinked_root_is_walked(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    real = make_image_folder(tmp_path / "store", num_classes=1, per_class=2, size=32)
    root.mkdir()
    os.symlink(real, root / "linked_root")  # the folder given may itself be a link
    linked = find_images([root / "linked_root"])
    assert len(linked) == 2 and all(p.startswith(str(root / "linked_root")) for p in linked)
