"""``resnext benchmark compare``: the last record of the history against the last comparable one, and its plot.

Ratios, not img/s, are compared: they are measured against a reference row of the same run, so they hold on a
shared machine whose absolute speed varies with the load. A regression is accuracy down more than
:data:`ACCURACY_DROP` (0.1 point) or a ratio down more than :data:`RATIO_DROP` (10%) against the last earlier
record of the same machine class, architecture, image size, weights and data. A value that cannot be compared
(missing, NaN, a ratio without its reference row) is reported as unknown, never as "no regression"; a damaged
history line is reported by its number and skipped.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResnextError
from ..options import option
from .settings import DEFAULT_PLOT, history_option

logger = logging.getLogger(__name__)

ACCURACY_DROP = 0.001  # fraction: 0.1 point
RATIO_DROP = 0.10  # relative


def _damage(record: Any) -> str | None:
    """Why a history line cannot be used as a record, or None: what :func:`compare_latest` and the plot read must
    be there with the right types (a NaN ratio is a number: comparing it is reported as unknown, not skipped)."""
    if not isinstance(record, dict):
        return f"not a JSON object (a {type(record).__name__})"
    if not isinstance(record.get("time"), str):
        return "no 'time'"
    if not isinstance(record.get("machine"), dict) or not isinstance(record["machine"].get("class"), str):
        return "no 'machine' class"
    if not isinstance(record.get("model", {}), dict):
        return "'model' is not an object"
    accuracy = record.get("accuracy")
    if accuracy is not None and not (isinstance(accuracy, dict) and all(_number(v) for v in accuracy.values())):
        return "'accuracy' is not an object of numbers"
    for part, name, numbers in (("inference", "backend", ("ratio", "batch_size")), ("training", "setting", ("ratio",))):
        rows = record.get(part, [])
        if not isinstance(rows, list):
            return f"'{part}' is not a list"
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get(name), str):
                return f"{part} row {i} has no '{name}'"
            for key in numbers if "error" not in row else ():
                if key not in row:
                    return f"{part} row {i} has no '{key}'"
                if not _number(row[key]):
                    return f"{part} row {i}: '{key}' is not a number ({row[key]!r})"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_history(history: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(the usable records, one ``FILE:LINE: reason`` per damaged line skipped). A damaged line (not JSON, not
    UTF-8, not a record, a field missing or of the wrong type) is skipped, never fatal: the others still count."""
    path = Path(history)
    if not path.is_file():
        raise ResnextError(f"no history file at {path}: run `resnext benchmark report` first")
    records, skipped = [], []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(f"{path}:{number}: not UTF-8 text")
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped.append(f"{path}:{number}: not a JSON record ({exc.msg})")
            continue
        reason = _damage(record)
        if reason:
            skipped.append(f"{path}:{number}: {reason}")
        else:
            records.append(record)
    if not records:
        damaged = f" ({'; '.join(skipped[:3])}{'; ...' if len(skipped) > 3 else ''})" if skipped else ""
        raise ResnextError(f"{path} holds no usable records{damaged}: run `resnext benchmark report` first")
    return records, skipped


# ---------------------------------------------------------------------------------------------------------------
# Comparing


def comparable_key(record: dict[str, Any]) -> tuple[Any, ...]:
    model = record.get("model", {})
    return (
        record["machine"].get("class"),
        model.get("arch"),
        model.get("image_size"),
        model.get("weights"),
        record.get("data"),
    )


@dataclass
class Change:
    """One value of the latest record against the previous one; ``unknown`` says why they could not be compared
    (a value missing or NaN): the comparison then cannot say "no regression"."""

    what: str
    before: float | None
    after: float | None
    regression: bool
    unknown: str | None = None

    def line(self) -> str:
        if self.unknown is not None:
            return f"{'UNKNOWN':>10}  {self.what}: {self.unknown}"
        assert self.before is not None and self.after is not None
        flag = "REGRESSION" if self.regression else "ok"
        return f"{flag:>10}  {self.what}: {self.before:.4g} -> {self.after:.4g} ({self.after - self.before:+.4g})"


@dataclass
class Comparison:
    latest: dict[str, Any]
    previous: dict[str, Any] | None
    changes: list[Change] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # damaged history lines, "FILE:LINE: reason"

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]

    @property
    def unknown(self) -> list[Change]:
        return [c for c in self.changes if c.unknown is not None]

    @property
    def exit_status(self) -> int:
        """0 only when everything was compared and nothing regressed; 1 on a regression or anything unknown."""
        return 1 if self.regressions or self.unknown else 0

    def table(self) -> str:
        head = f"latest: {self.latest['time']} git {self.latest.get('git') or '-'} on {self.latest['machine']['class']}"
        lines = [head] + [f"skipped damaged history line {s}" for s in self.skipped]
        if self.previous is not None:
            lines.append(f"previous: {self.previous['time']} git {self.previous.get('git') or '-'}")
        lines += [c.line() for c in self.changes]
        if self.previous is None and not self.unknown:
            lines.append(
                "no earlier comparable record (same machine class, model, weights and data): nothing to compare"
            )
        elif self.unknown:
            verdict = f"{len(self.regressions)} regression(s) and " if self.regressions else "cannot tell: "
            lines.append(f"{verdict}{len(self.unknown)} value(s) could not be compared (UNKNOWN above)")
        else:
            lines.append(f"{len(self.regressions)} regression(s)" if self.regressions else "no regression")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "latest": self.latest.get("time"),
            "previous": self.previous and self.previous.get("time"),
            "changes": [asdict(c) for c in self.changes],
            "regressions": len(self.regressions),
            "unknown": len(self.unknown),
            "skipped_lines": self.skipped,
        }


def _row_key(row: dict[str, Any]) -> str:
    return f"{row['backend']} {row['precision']} batch {row['batch_size']}"


def _change(what: str, before: Any, after: Any, drop: float, *, relative: bool) -> Change:
    """``after`` against ``before``: a regression when it fell by more than ``drop`` (a fraction of ``before``
    when ``relative``, else absolute); unknown when either is missing or not finite."""
    for value, where in ((before, "previous"), (after, "latest")):
        if value is None:
            return Change(what, before, after, False, f"missing in the {where} record")
        if not math.isfinite(value):
            return Change(what, before, after, False, f"{value} in the {where} record")
    threshold = (1 - drop) * before if relative else before - drop
    return Change(what, before, after, after < threshold)


def compare_records(previous: dict[str, Any], latest: dict[str, Any]) -> list[Change]:
    """Accuracy (record and per-row, points) and speed ratios (relative) of ``latest`` against ``previous``.

    Every value the previous record holds must be in the latest one: a missing row, a NaN, or a row whose ratio
    has no reference row in its own record is reported as unknown, never passed over."""
    from .inference import REFERENCE  # every inference ratio is relative to this row of its own batch size
    from .training import DEFAULT_SETTINGS

    changes: list[Change] = []
    before_acc, after_acc = previous.get("accuracy") or {}, latest.get("accuracy") or {}
    for name in ("top1", "top5"):  # percent
        if name in before_acc or name in after_acc:
            changes.append(
                _change(
                    f"accuracy {name} %", before_acc.get(name), after_acc.get(name), 100 * ACCURACY_DROP, relative=False
                )
            )
    rows = {_row_key(r): r for r in latest.get("inference", [])}
    old_rows = {_row_key(r): r for r in previous.get("inference", [])}
    for key in sorted(set(rows) - set(old_rows)):
        logger.info("%s: new in the latest record, nothing to compare it with", key)
    for key, old in old_rows.items():
        row = rows.get(key)
        if row is None:
            changes.append(Change(f"{key}", None, None, False, "row missing in the latest record"))
            continue
        if (row["backend"], row["precision"]) != REFERENCE:  # the reference is 1.0 by definition
            reference = f"{' '.join(REFERENCE)} batch {row['batch_size']}"
            if reference not in rows:
                changes.append(Change(f"{key} ratio", old["ratio"], None, False, f"no reference row ({reference})"))
            else:
                changes.append(_change(f"{key} ratio", old["ratio"], row["ratio"], RATIO_DROP, relative=True))
        if old.get("accuracy") is not None:
            changes.append(
                _change(f"{key} accuracy", old["accuracy"], row.get("accuracy"), ACCURACY_DROP, relative=False)
            )
    reference_setting = DEFAULT_SETTINGS[0].name
    training = {r["setting"]: r for r in latest.get("training", [])}
    for old in previous.get("training", []):
        name = old["setting"]
        if name == reference_setting or "error" in old:  # the reference is 1.0 by definition
            continue
        row = training.get(name)
        what = f"training {name} ratio"
        if row is None:
            changes.append(Change(what, old["ratio"], None, False, "row missing in the latest record"))
        elif "error" in row:
            changes.append(Change(what, old["ratio"], None, False, f"failed in the latest run: {row['error']}"))
        elif reference_setting not in training or "error" in training[reference_setting]:
            changes.append(Change(what, old["ratio"], None, False, f"no reference row ({reference_setting})"))
        else:
            changes.append(_change(what, old["ratio"], row["ratio"], RATIO_DROP, relative=True))
    return changes


@dataclass(frozen=True)
class CompareConfig:
    """Which history ``benchmark compare`` reads, and where its plot goes."""

    history: str = history_option()
    plot: str = option(DEFAULT_PLOT, metavar="PNG", help="history plot (default: %(default)s; '' to skip)")


def compare_latest(history: str | Path) -> Comparison:
    """The last record against the last earlier record with the same :func:`comparable_key`. Damaged lines are
    skipped (and listed); a latest record that measured nothing is unknown, whatever came before."""
    records, skipped = read_history(history)
    for line in skipped:
        logger.warning("skipped damaged history line %s", line)
    latest = records[-1]
    previous = next((r for r in reversed(records[:-1]) if comparable_key(r) == comparable_key(latest)), None)
    changes = compare_records(previous, latest) if previous else []
    if not latest.get("inference") and not latest.get("training") and not latest.get("accuracy"):
        changes.insert(
            0, Change("latest record", None, None, False, "no inference rows, no training rows, no accuracy")
        )
    return Comparison(latest, previous, changes, skipped)


def plot_history(history: str | Path, output: str | Path) -> Path:
    """Ratios (largest batch) and accuracy over time for the latest record's machine class and model."""
    from ..util import atomic_path

    records, _ = read_history(history)
    fig = history_figure(records)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Path(output)


def history_figure(records: list[dict[str, Any]]) -> Any:
    """The history plot (a matplotlib ``Figure``) of the records comparable with the last one."""
    import textwrap

    from ..runtime.table import require

    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = comparable_key(records[-1])
    series = [r for r in records if comparable_key(r) == key]
    # constrained layout keeps the (wrapped, never cut) title and both panels inside the figure
    fig, (speed, acc) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, layout="constrained")
    fig.suptitle(textwrap.fill(f"{key[1]} {key[2]} px on {key[0]}", 100), fontsize=9)
    ratios: dict[str, list[tuple[int, float]]] = {}
    for i, record in enumerate(series):
        largest = max((r["batch_size"] for r in record["inference"]), default=0)
        for row in record["inference"]:
            if row["batch_size"] == largest:
                ratios.setdefault(f"{row['backend']} {row['precision']}", []).append((i, row["ratio"]))
    for name, points in sorted(ratios.items()):
        speed.plot(*zip(*points), marker="o", label=name)
    speed.set_ylabel("img/s ratio to eager fp32 (largest batch)")
    speed.legend(fontsize=7, ncol=2)
    points = [(i, r["accuracy"]["top1"]) for i, r in enumerate(series) if r.get("accuracy")]
    if points:
        acc.plot(*zip(*points), marker="o", color="black", label="eager fp32 top-1")
    for name in sorted({_row_key(row).rsplit(" batch", 1)[0] for r in series for row in r["inference"]}):
        row_points = [
            (i, 100 * row["accuracy"])
            for i, r in enumerate(series)
            for row in r["inference"]
            if row.get("accuracy") is not None
            and _row_key(row).startswith(name + " batch")
            and row["batch_size"] == r["inference"][0]["batch_size"]
        ]
        if row_points and not name.startswith("torch fp32"):
            acc.plot(*zip(*row_points), marker=".", linestyle=":", label=name)
    acc.set_ylabel("top-1 accuracy %")
    if acc.get_legend_handles_labels()[0]:
        acc.legend(fontsize=7, ncol=2)
    acc.set_xticks(range(len(series)), [f"{r['time'][:10]}\n{(r.get('git') or '-')[:7]}" for r in series], fontsize=7)
    return fig
