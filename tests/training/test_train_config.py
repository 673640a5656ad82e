"""Training options through their stable public faces: ``TrainConfig(...)`` and ``resnext train ...``.

The defaults are NVIDIA's ResNeXt101-32x4d recipe (DeepLearningExamples ConvNets README: SGD momentum 0.875 without
Nesterov, lr 0.256 per 256 images, cosine with 8 warmup epochs, weight decay 1/16384 = 6.103515625e-05, label
smoothing 0.1, no mixup for 90 epochs and 0.2 for 250, 128 images per GPU, 224 px; AMP and NHWC only in the
recipe). The CLI's precedence (defaults < --recipe < starting checkpoint < explicit flags) is observed by
catching the config ``resnext train`` hands to the trainer; bad values must be one stderr line and exit 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnext import create_model
from resnext.cli import main
from resnext.training import trainer
from resnext.training.config import TrainConfig

#: NVIDIA's published values (see the module docstring), written as the reference states them
NVIDIA_90E = {
    "arch": "resnext101_32x4d",
    "epochs": 90,
    "batch_size": 128,
    "lr": 0.256,
    "lr_schedule": "cosine",
    "warmup": 8,
    "momentum": 0.875,
    "nesterov": False,
    "weight_decay": 6.103515625e-05,
    "label_smoothing": 0.1,
    "mixup": 0.0,
    "image_size": 224,
}
NVIDIA_AMP = {"precision": "fp16", "memory_format": "nhwc"}


def values(cfg: TrainConfig, names) -> dict:
    return {name: getattr(cfg, name) for name in names}


def test_defaults_are_nvidias_90_epoch_recipe_in_fp32() -> None:
    cfg = TrainConfig()
    assert values(cfg, NVIDIA_90E) == NVIDIA_90E
    assert (cfg.precision, cfg.memory_format) == ("fp32", "nchw")  # AMP/NHWC are GPU choices: only by --recipe
    assert not (cfg.last_bn_0_init or cfg.pretrained or cfg.use_ema)  # NVIDIA: zero-init of the last BN is off


def test_keywords_set_fields_and_nothing_is_shared_between_configs() -> None:
    cfg = TrainConfig(data="/d", epochs=3, lr=0.1, classes=["a", "b"])
    assert (cfg.data, cfg.epochs, cfg.lr, cfg.classes) == ("/d", 3, 0.1, ["a", "b"])
    cfg.resolved["global_batch"] = 7
    assert TrainConfig().resolved == {}  # a default_factory, not one dict for every config
    with pytest.raises(TypeError):
        TrainConfig(learning_rate=0.1)  # a misspelled option is an error, never ignored


@pytest.fixture
def handed_to_trainer(monkeypatch) -> list[TrainConfig]:
    """The configs ``resnext train`` passes to the trainer (which does not run)."""
    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig) -> trainer.TrainResult:
        seen.append(cfg)
        return trainer.TrainResult(trainer.Status.COMPLETED)

    monkeypatch.setattr(trainer, "train", fake_train)
    return seen


def train_config(folder: Path, *flags: str, seen: list[TrainConfig]) -> TrainConfig:
    assert main(["train", str(folder), "--workspace", str(folder / "ws"), *flags]) == 0
    return seen.pop()


@pytest.mark.parametrize(("recipe", "epochs", "mixup"), [("nvidia-90e", 90, 0.0), ("nvidia-250e", 250, 0.2)])
def test_recipe_sets_nvidias_values(tmp_path, handed_to_trainer, capsys, recipe, epochs, mixup) -> None:
    cfg = train_config(tmp_path, "--recipe", recipe, seen=handed_to_trainer)
    assert values(cfg, NVIDIA_90E) == {**NVIDIA_90E, "epochs": epochs, "mixup": mixup}
    assert values(cfg, NVIDIA_AMP) == NVIDIA_AMP


def test_no_recipe_is_the_dataclass_defaults(tmp_path, handed_to_trainer, capsys) -> None:
    cfg = train_config(tmp_path, seen=handed_to_trainer)
    assert values(cfg, NVIDIA_90E) == NVIDIA_90E and cfg.precision == "fp32" and cfg.data == str(tmp_path)


def test_explicit_flags_beat_the_recipe_in_any_order(tmp_path, handed_to_trainer, capsys) -> None:
    flags = ["--epochs", "3", "--mixup", "0", "--precision", "bf16", "-b", "16", "--lr", "0.1", "--wd", "0"]
    before = train_config(tmp_path, *flags, "--recipe", "nvidia-250e", seen=handed_to_trainer)
    after = train_config(tmp_path, "--recipe", "nvidia-250e", *flags, seen=handed_to_trainer)
    for cfg in (before, after):
        assert (cfg.epochs, cfg.mixup, cfg.precision, cfg.batch_size, cfg.lr, cfg.weight_decay) == (
            3,
            0.0,
            "bf16",
            16,
            0.1,
            0.0,
        )
        assert (cfg.momentum, cfg.memory_format, cfg.warmup) == (0.875, "nhwc", 8)  # the rest still the recipe's


def test_a_starting_checkpoint_beats_the_recipe_and_flags_beat_both(tmp_path, handed_to_trainer, capsys) -> None:
    weights = tmp_path / "start.pth"
    model = create_model("resnext_test", num_classes=2)
    torch.save({"state_dict": model.state_dict(), "arch": "resnext_test", "image_size": 48}, weights)
    cfg = train_config(tmp_path, "--recipe", "nvidia-90e", "--weights", str(weights), seen=handed_to_trainer)
    assert (cfg.arch, cfg.image_size, cfg.epochs) == ("resnext_test", 48, 90)
    cfg = train_config(
        tmp_path, "--recipe", "nvidia-90e", "--weights", str(weights), "--image-size", "64", seen=handed_to_trainer
    )
    assert (cfg.arch, cfg.image_size) == ("resnext_test", 64)


# ---------------------------------------------------------------------------------------------------------------
# Bad values: one line naming the flag, exit 2, before the trainer is called


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "abc"], "--epochs"),
        (["-b", "0"], "--batch-size"),
        (["--num-classes", "0"], "--num-classes"),
        (["--lr", "0"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--momentum", "1"], "--momentum"),
        (["--mixup", "-0.1"], "--mixup"),
        (["--use-ema", "0"], "--use-ema"),
        (["--use-ema", "1"], "--use-ema"),
        (["--image-size", "31"], "--image-size"),
        (["--image-size", "1025"], "--image-size"),
        (["--prof", "0"], "--prof"),
        (["--precision", "int8"], "--precision"),
        (["--recipe", "nvidia-9000e"], "--recipe"),
        (["--arch", "resnext9000"], "--arch"),
        (["--lr-schedule", "exponential"], "--lr-schedule"),
        (["--pretrained", "--weights", "w.pth"], "--weights"),
        (["--arch", "resnext_test", "--pretrained"], "--pretrained"),
        (["--last-bn-0-init", "--pretrained"], "--last-bn-0-init"),
        (["--overwrite", "--resume", "auto"], "--resume"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag(tmp_path, handed_to_trainer, capsys, flags, named) -> None:
    assert main(["train", str(tmp_path), "--workspace", str(tmp_path / "ws"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("resnext: error:") and named in err, err
    assert handed_to_trainer == [] and not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--epochs", "1"],
        ["--label-smoothing", "0"],
        ["--momentum", "0"],
        ["--warmup", "0"],
        ["--mixup", "0"],
        ["--use-ema", "0.9999"],
        ["--image-size", "32"],
        ["--image-size", "1024"],
        ["--keep-last", "0"],
    ],
)
def test_the_limits_themselves_are_accepted(tmp_path, handed_to_trainer, capsys, flags) -> None:
    """The other side of every refusal above: the bounds are where the docs put them, not one off."""
    cfg = train_config(tmp_path, *flags, seen=handed_to_trainer)
    field = flags[0].lstrip("-").replace("-", "_")
    assert getattr(cfg, field) == type(getattr(cfg, field))(flags[1])


def test_data_dir_is_required_unless_the_data_is_synthetic(tmp_path, handed_to_trainer, capsys) -> None:
    assert main(["train", "--workspace", str(tmp_path / "ws")]) == 2
    assert "DATA_DIR is required" in capsys.readouterr().err
    assert main(["train", "--data-backend", "synthetic", "--workspace", str(tmp_path / "ws")]) == 0
    assert handed_to_trainer[-1].data is None and handed_to_trainer[-1].data_backend == "synthetic"
