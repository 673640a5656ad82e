"""load_source, the one resolver of weights sources: what it tells apart, and the walk a value takes through it.

The walk of a weights value is the list of model-layer modules whose functions receive it (or what it resolves
to: its path, the published weights member or record), in call order, repeats in a row merged. Each time the walk
comes back to a module it already left, the value climbed back up a layer to be handed down again: a second
resolver asking the same question. Issue 18 counted 8 such climbs for ``--weights`` from
``Predictor.from_pretrained`` (which hands the value to ``load_source`` and to nothing else); at most 2 remain.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from resnext import ResNet50_Weights, ResNeXt101_32X4D_Weights, create_model, load_source
from resnext.errors import WeightsError
from resnext.model.sources import published_weights
from resnext.model.weights import Weights, WeightsEnum

MODEL_LAYER = {"sources", "factory", "resnet", "weights", "hf"}  # the modules of resnext.model


def walk(call: Callable[[], Any], value: Any) -> list[str]:
    """The model-layer modules whose functions receive ``value`` while ``call`` runs, repeats in a row merged."""
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None

    def carries(obj: Any) -> bool:
        if obj is value or isinstance(obj, (WeightsEnum, Weights)):
            return True
        return text is not None and isinstance(obj, (str, os.PathLike)) and os.fspath(obj) == text

    modules: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        parts = frame.f_globals.get("__name__", "").split(".")
        if event != "call" or parts[:2] != ["resnext", "model"] or len(parts) < 3 or parts[2] not in MODEL_LAYER:
            return
        code = frame.f_code
        arguments = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if any(carries(frame.f_locals.get(name)) for name in arguments) and modules[-1:] != [parts[2]]:
            modules.append(parts[2])

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return modules


def climbs(modules: list[str]) -> int:
    return sum(1 for i, module in enumerate(modules) if module in modules[:i])


def test_walk_counts_a_bounce() -> None:
    """The measure itself: a value handed back and forth is counted, a straight walk is not."""
    assert climbs(["sources", "weights", "hf"]) == 0
    assert climbs(["sources", "weights", "sources", "weights", "sources", "models", "weights", "sources"]) == 5


@pytest.mark.parametrize("arch", [None, "resnext_test"])
def test_a_weights_file_is_resolved_in_one_walk(small_checkpoint: Path, arch: str | None) -> None:
    path = str(small_checkpoint)
    modules = walk(lambda: load_source(path, arch=arch), path)
    assert modules[0] == "sources" and "weights" in modules  # read by the one reader, below the resolver
    assert climbs(modules) <= 2, modules


def test_create_model_hands_a_file_to_the_resolver(small_checkpoint: Path) -> None:
    path = str(small_checkpoint)
    modules = walk(lambda: create_model("resnext_test", weights=path), path)
    assert modules[:2] == ["factory", "sources"] and "weights" in modules
    assert climbs(modules) <= 2, modules


@pytest.mark.parametrize("value", ["DEFAULT", ResNet50_Weights.IMAGENET1K_NVIDIA])
def test_published_weights_are_resolved_in_one_walk(offline_cache: Path, value: Any) -> None:
    """Offline, the walk ends at the download (refused); the name was told from a file once, before it."""

    def resolve() -> None:
        with torch.device("meta"), pytest.raises(WeightsError, match="could not download"):
            load_source(value, arch="resnet50", progress=False)

    modules = walk(resolve, value)
    assert modules[0] == "sources" and "weights" in modules
    assert climbs(modules) <= 2, modules


def test_published_names_and_files_are_told_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    member = ResNeXt101_32X4D_Weights.IMAGENET1K_NVIDIA
    assert published_weights(None, "DEFAULT") is member
    assert published_weights("resnext101_32x4d", "ResNeXt101_32X4D_Weights.IMAGENET1K_NVIDIA") is member
    assert published_weights("resnet50", "IMAGENET1K_NVIDIA") is ResNet50_Weights.IMAGENET1K_NVIDIA
    assert published_weights("resnet50", member) is member  # a member is taken as it is; the builder checks it
    for source in ("https://example.com/DEFAULT", "hf-hub:owner/DEFAULT", "weights.pth", str(tmp_path / "DEFAULT")):
        assert published_weights(None, source) is None, source
    with pytest.raises(WeightsError, match="resnext_test has no published weights"):
        published_weights("resnext_test", "DEFAULT")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DEFAULT").write_bytes(b"")
    assert published_weights(None, "DEFAULT") is None  # an existing file always wins over a name


def test_a_member_without_arch_builds_its_own_architecture(offline_cache: Path) -> None:
    """The architecture of published weights comes from the builder that takes them (``get_model_weights``)."""
    from resnext.model.resnet import get_model_weights

    assert get_model_weights("resnet50") is ResNet50_Weights
    with torch.device("meta"), pytest.raises(WeightsError, match="nvidia_resnet50_200821"):
        load_source(ResNet50_Weights.IMAGENET1K_NVIDIA, progress=False)  # resnet50's file, not resnext101's


def test_an_enum_prefixed_name_names_its_own_architecture() -> None:
    """``ResNet50_Weights.IMAGENET1K_NVIDIA`` without ``--arch`` is resnet50's weights, never resnext101's member of
    the same name; with another ``--arch`` it is a one-line error instead of a silent swap."""
    assert published_weights(None, "ResNet50_Weights.IMAGENET1K_NVIDIA") is ResNet50_Weights.IMAGENET1K_NVIDIA
    assert published_weights(None, "resnext.ResNet50_Weights.DEFAULT") is ResNet50_Weights.IMAGENET1K_NVIDIA
    with pytest.raises(WeightsError, match="resnet50's weights, not resnext101_32x4d's"):
        published_weights("resnext101_32x4d", "ResNet50_Weights.IMAGENET1K_NVIDIA")
    assert published_weights(None, "model.pth") is None  # a dotted file name with no weights enum stays a file
