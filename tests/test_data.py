"""Samplers and datasets for training/evaluation: order, sharding, reproducible augmentation, corrupt files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from resnext.data import ImageFolder, ShardSampler, TrainSampler, collate_skip_errors, train_loader
from resnext.errors import ResnextError
from resnext.transforms import train_preset


def batches(sampler: TrainSampler) -> list[list[int]]:
    items = [i for i, _ in sampler]
    b = sampler.batch_size
    return [items[k:k + b] for k in range(0, len(items), b)]


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
    assert list(a) == full[4 * 5:] and len(a) == len(full) - 20
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
    assert ds.classes == ["a", "b"] and len(ds) == 7
    items = [ds[i] for i in range(len(ds))]
    errors = [item for item in items if item[3] is not None]
    assert len(errors) == 1 and errors[0][2].endswith("broken.jpg") and "broken.jpg" in errors[0][3]
    images, labels, skipped = collate_skip_errors(items)
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1] and len(skipped) == 1
    with pytest.raises(ResnextError, match="does not know"):
        ImageFolder(folder, train_preset(32), classes=["a"])


def test_augmentation_is_reproducible_per_sample_seed(folder: Path) -> None:
    Image.effect_noise((64, 48), 60).convert("RGB").save(folder / "b" / "noise.png")
    ds = ImageFolder(folder, train_preset(32))
    index = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("noise.png"))
    x1, x2, x3 = ds[(index, 11)][0], ds[(index, 11)][0], ds[(index, 12)][0]
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    # the same through loaders with and without worker processes
    (folder / "a" / "broken.jpg").unlink()
    seen = []
    for workers in (0, 2):
        loader = train_loader(folder, image_size=32, batch_size=2, workers=workers, seed=5)
        loader.sampler.set_epoch(1)
        seen.append(torch.cat([x for x, _, _ in loader]))
    assert torch.equal(seen[0], seen[1])
