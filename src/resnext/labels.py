"""ImageNet-1k class names, shipped with the package (no download at run time).

``assets/imagenet_classes.tsv`` holds one ``wnid<TAB>names`` line per class in sorted-wnid order, the order
NVIDIA's checkpoints were trained with (index 0 = "tench, Tinca tinca"). The names are WordNet lemmas.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


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
