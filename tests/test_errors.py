"""Library errors keep their cause (``raise ... from exc``) and quote third-party errors by their first line."""

from __future__ import annotations

import pytest
import torch

from resnext.errors import ImageError, ResnextError, WeightsError, first_line
from resnext.images import load_image
from resnext.model.weights import read_checkpoint
from resnext.util import resolve_device


def test_first_line_of_a_multi_line_error() -> None:
    error = RuntimeError("\n  Exception from src/core.cpp:12:\nCheck 'rank' failed\n    at frame 3\n")
    assert first_line(error) == "Exception from src/core.cpp:12:"
    assert first_line(ValueError("x" * 500)) == "x" * 200
    assert first_line(ValueError("x" * 500), 20) == "x" * 20


def test_first_line_of_an_error_without_message_is_its_type() -> None:
    assert first_line(TimeoutError()) == "TimeoutError"
    assert first_line(KeyError("")) == "''"  # str() of a KeyError quotes its key: a message, kept as is


def _truncated_checkpoint(tmp_path, small_checkpoint):
    data = small_checkpoint.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_corrupt_checkpoint_error_keeps_torchs_error_as_its_cause(tmp_path, small_checkpoint) -> None:
    path = _truncated_checkpoint(tmp_path, small_checkpoint)
    with pytest.raises(WeightsError, match="truncated or corrupt") as info:
        read_checkpoint(path)
    cause = info.value.__cause__
    assert cause is not None and not isinstance(cause, ResnextError)
    with pytest.raises(type(cause)) as direct:  # the cause is what torch itself raises for this file
        torch.load(path, map_location="cpu", weights_only=True)
    assert str(direct.value) == str(cause)
    assert "\n" not in str(info.value)


def test_a_non_image_error_keeps_pillows_error_as_its_cause() -> None:
    with pytest.raises(ImageError, match="not an image file") as info:
        load_image(b"this is text, not an image")
    assert type(info.value.__cause__).__name__ == "UnidentifiedImageError"


def test_an_unknown_device_keeps_torchs_error_as_its_cause() -> None:
    with pytest.raises(ResnextError, match="unknown device") as info:
        resolve_device("warp-drive")
    assert isinstance(info.value.__cause__, RuntimeError)
