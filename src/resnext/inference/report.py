"""How ``resnext classify`` shows results: a table, JSON lines, or a PNG of images beside their top-k bars."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..download import is_url
from ..errors import ResnextError
from ..images import load_image
from ..util import atomic_path
from .predict import ClassifyResult


def printable(text: str) -> str:
    """``text`` safe for one line of a terminal: newlines, tabs, escape sequences and other control characters
    are written as Python escapes (``\\n``, ``\\x1b``), so a file named ``a\\nb.jpg`` cannot split or fake output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_table(result: ClassifyResult) -> str:
    """A readable block for one classified image: its name, then one ``rank  probability  class`` row per class."""
    assert result.predictions is not None
    rows = [printable(result.source)]
    for rank, p in enumerate(result.predictions, 1):
        rows.append(f"  {rank:>2}  {100 * p.probability:6.2f}%  {printable(p.label)}  [{p.index}]")
    return "\n".join(rows)


def format_json(result: ClassifyResult) -> str:
    """One JSON line: ``{"source", "predictions": [{"rank", "index", "label", "probability"}, ...]}``."""
    assert result.predictions is not None
    predictions = [
        {"rank": rank, "index": p.index, "label": p.label, "probability": round(p.probability, 6)}
        for rank, p in enumerate(result.predictions, 1)
    ]
    return json.dumps({"source": result.source, "predictions": predictions}, ensure_ascii=False)


#: Images drawn into one ``--plot`` figure at most; more would give an unreadably tall PNG.
MAX_PLOT_ROWS = 64


def plot_predictions(results: Sequence[ClassifyResult], path: str | os.PathLike[str]) -> Path:
    """Write one PNG: each image beside a horizontal bar chart of its top-k classes. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ResnextError("--plot needs matplotlib: pip install 'resnext[plot]'") from exc
    results = [r for r in results if r.predictions is not None][:MAX_PLOT_ROWS]
    if not results:
        raise ResnextError("nothing to plot: no image was classified")
    fig, axes = plt.subplots(
        len(results), 2, figsize=(10, 2.6 * len(results)), squeeze=False, gridspec_kw={"width_ratios": [1, 1.6]}
    )
    for (image_ax, bar_ax), result in zip(axes, results):
        image = load_image(result.source)
        image.thumbnail((320, 320))
        image_ax.imshow(image)
        image_ax.set_title(Path(result.source).name if not is_url(result.source) else result.source[-40:], fontsize=9)
        image_ax.axis("off")
        predictions = result.predictions or []
        labels = [p.label if len(p.label) <= 40 else p.label[:37] + "..." for p in predictions]
        values = [100 * p.probability for p in predictions]
        positions = range(len(predictions))[::-1]  # most probable on top
        bar_ax.barh(list(positions), values, color="tab:blue")
        bar_ax.set_yticks(list(positions), labels, fontsize=8)
        bar_ax.set_xlim(0, 100)
        bar_ax.set_xlabel("probability (%)", fontsize=8)
        for y, v in zip(positions, values):
            bar_ax.text(min(v + 1, 85), y, f"{v:.1f}%", va="center", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)
    return Path(path)
