"""ImageNet-1k class names, shipped with the package (no download at run time).

``assets/imagenet_classes.tsv`` holds one ``wnid<TAB>names`` line per class in sorted-wnid order, the order
NVIDIA's checkpoints were trained with (index 0 = "tench, Tinca tinca"). The names are WordNet lemmas.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path


@lru_cache(maxsize=1)
def _rows() -> tuple[tuple[str, str], ...]:
    text = resources.files("resnext").joinpath("assets/imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line.strip())
    if len(rows) != 1000:
        raise RuntimeError(f"packaged label file is damaged: {len(rows)} classes instead of 1000")
    return rows  # type: ignore[return-value]


def imagenet_categories() -> list[str]:
    """The 1000 human-readable class names, index = model output index."""
    return [name for _, name in _rows()]


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids (``n01440764`` ...), the folder names of an ImageNet ``train/``/``val/`` tree."""
    return [wnid for wnid, _ in _rows()]


def read_label_file(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file, one per line in output-index order (for fine-tuned models)."""
    from .errors import ResnextError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ResnextError(f"cannot read label file {path}: {exc}") from exc
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ResnextError(f"label file {path} holds no class names")
    return names
