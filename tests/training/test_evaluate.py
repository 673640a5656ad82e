"""`resnext evaluate`: numbers against an independent computation, class matching, JSON output, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from resnext import cli
from resnext.errors import ResnextError
from resnext.model.factory import create_model
from resnext.training.evaluate import evaluate_folder, percentile
from resnext.transforms import IMAGENET_MEAN, IMAGENET_STD

CLASSES = [f"c{i}" for i in range(6)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A 6-class model (random weights, trained-like BN statistics) and a val folder lacking class c2."""
    root = tmp_path_factory.mktemp("eval")
    gen = torch.Generator().manual_seed(0)
    val = root / "val"
    for c, name in enumerate(CLASSES):
        if name == "c2":
            continue
        (val / name).mkdir(parents=True)
        for i in range(2 + c % 2):
            size = (40 + 7 * i, 33 + 5 * c)
            pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8).numpy()
            image = Image.fromarray(pixels)
            if i == 1:
                image = image.convert("L")  # greyscale input goes through the same RGB conversion
            image.save(val / name / f"{i}.png")
    torch.manual_seed(0)
    model = create_model("resnext_test", num_classes=6)
    with torch.no_grad():
        model.train()
        model(torch.randn(32, 3, 32, 32))  # non-trivial BN running statistics
        model.fc.weight.mul_(50)  # spread the logits so top-k has no near ties
    ckpt = root / "ckpt.pth"
    torch.save({"state_dict": model.state_dict(), "classes": CLASSES, "arch": "resnext_test", "epoch": 1}, ckpt)
    return val, ckpt, model.state_dict()


def independent(val: Path, state_dict: dict, crop: int = 32) -> dict:
    model = create_model("resnext_test", num_classes=6)
    model.load_state_dict(state_dict)
    model.eval()
    top1 = top5 = 0
    losses = []
    for folder in sorted(val.iterdir()):
        label = CLASSES.index(folder.name)
        for file in sorted(folder.iterdir()):
            image = TF.pil_to_tensor(Image.open(file).convert("RGB"))
            image = TF.resize(image, crop + 32, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
            image = TF.center_crop(image, crop).float() / 255
            x = TF.normalize(image, list(IMAGENET_MEAN), list(IMAGENET_STD)).unsqueeze(0)
            with torch.no_grad():
                logits = model(x)[0]
            order = logits.argsort(descending=True).tolist()
            top1 += order[0] == label
            top5 += label in order[:5]
            losses.append(F.cross_entropy(logits[None], torch.tensor([label])).item())
    n = len(losses)
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": sum(losses) / n, "count": n}


def test_evaluate_matches_independent_computation(tiny, tmp_path: Path) -> None:
    val, ckpt, state_dict = tiny
    expected = independent(val, state_dict)
    out = tmp_path / "eval.json"
    result = evaluate_folder(val, weights=str(ckpt), batch_size=4, image_size=32, workers=0, output=out, progress=False)
    assert result["arch"] == "resnext_test"  # taken from the checkpoint
    assert result["val.count"] == expected["count"] == 13
    assert result["val.top1"] == pytest.approx(expected["top1"])
    assert result["val.top5"] == pytest.approx(expected["top5"])
    assert 0 < expected["top5"] < 100  # the check can fail both ways
    assert result["val.loss"] == pytest.approx(expected["loss"], rel=1e-3)  # logits ~1e2: batched conv rounding
    assert json.loads(out.read_text())["val.top1"] == result["val.top1"]


def test_image_size_defaults_to_the_training_checkpoints(tiny, tmp_path: Path) -> None:
    val, ckpt, state_dict = tiny
    trained = tmp_path / "trained.pth"
    torch.save({**torch.load(ckpt, weights_only=True), "config": {"image_size": 32}}, trained)
    expected = independent(val, state_dict, crop=32)
    result = evaluate_folder(val, weights=str(trained), batch_size=4, workers=0, progress=False)
    assert result["image_size"] == 32
    assert result["val.top1"] == pytest.approx(expected["top1"])
    assert evaluate_folder(val, weights=str(ckpt), batch_size=4, workers=0, progress=False)["image_size"] == 224


def evaluate_cli(val: Path, ckpt: Path, out: Path, *extra: str) -> int:
    """``resnext evaluate`` in this process on the tiny set at 32 px, with no worker processes and no progress bar;
    ``extra`` flags come last, so they win."""
    quiet = ["--image-size", "32", "-j", "0", "--no-progress"]
    return cli.main(["evaluate", str(val), "--weights", str(ckpt), "-o", str(out), *quiet, *extra])


def test_evaluate_cli_prints_and_writes_json(tiny, tmp_path: Path, capsys) -> None:
    val, ckpt, _ = tiny
    out = tmp_path / "e.json"
    code = evaluate_cli(val, ckpt, out, "-b", "5")
    assert code == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert f"top-1 {data['val.top1']:.2f}%" in printed and data["val.count"] == 13
    assert {"val.top5", "val.loss", "val.compute_ips", "val.total_ips", "val.compute_latency_at99"} <= set(data)


def test_evaluate_prints_by_default_and_writes_a_file_only_when_asked(tiny, tmp_path: Path, monkeypatch, capsys):
    """No evaluation.json appears in the working folder; -o writes one, and an existing file is kept unless
    --overwrite (one line, exit 2)."""
    val, ckpt, _ = tiny
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    quiet = ["--image-size", "32", "-j", "0", "--no-progress"]
    assert cli.main(["evaluate", str(val), "--weights", str(ckpt), *quiet]) == 0
    assert "top-1" in capsys.readouterr().out
    assert list(here.iterdir()) == []

    out = tmp_path / "e.json"
    out.write_text("the user's notes\n")
    assert evaluate_cli(val, ckpt, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err, err
    assert out.read_text() == "the user's notes\n"
    assert evaluate_cli(val, ckpt, out, "--overwrite") == 0
    assert json.loads(out.read_text())["val.count"] == 13


def test_plain_weights_need_matching_folder_count(tiny, tmp_path: Path) -> None:
    val, _, state_dict = tiny
    plain = tmp_path / "plain.pth"
    torch.save(state_dict, plain)  # no class names: 5 folders cannot be matched to 6 outputs
    with pytest.raises(ResnextError, match="5 class folders but the model predicts 6"):
        evaluate_folder(val, arch="resnext_test", weights=str(plain), image_size=32, workers=0, progress=False)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0], 50) == 3.0


# ---------------------------------------------------------------------------------------------------------------
# Bad values and outputs: one line, exit 2, before any work; results written atomically


@pytest.mark.parametrize(
    "flag, value, shown",
    [("-b", "0", "--batch-size/-b"), ("-j", "-1", "--workers/-j"), ("--image-size", "-5", "--image-size")]
    + [("--image-size", "5000", "--image-size")],
)
def test_bad_evaluate_flag_is_one_line_exit_2(tiny, flag: str, value: str, shown: str, tmp_path: Path, capsys) -> None:
    val, ckpt, _ = tiny
    out = tmp_path / "e.json"
    code = evaluate_cli(val, ckpt, out, flag, value)
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"resnext: error: argument {shown}: must be an integer"), line
    assert not out.exists()


def test_output_that_is_a_directory_fails_before_the_work(tiny, tmp_path: Path, capsys) -> None:
    val, ckpt, _ = tiny
    assert evaluate_cli(val, ckpt, tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a directory" in err, err
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing half-written


def test_evaluate_json_on_stdout_and_no_temporaries(tiny, tmp_path: Path, capsys) -> None:
    val, ckpt, _ = tiny
    out = tmp_path / "e.json"
    assert evaluate_cli(val, ckpt, out, "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and printed["val.count"] == 13
    assert [p.name for p in tmp_path.iterdir()] == ["e.json"]


def test_evaluate_resolves_weights_through_the_one_model_source(tiny, tmp_path: Path) -> None:
    """A plain state_dict of another architecture is named as such (load_source's error), not a traceback."""
    val, _, _ = tiny
    other = tmp_path / "resnet50.pth"
    torch.save(create_model("resnet50", num_classes=5).state_dict(), other)  # 5 folders, no class names
    with pytest.raises(ResnextError, match="--arch resnet50"):
        evaluate_folder(val, arch="resnext_test", weights=str(other), image_size=32, workers=0, progress=False)
