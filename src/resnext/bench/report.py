"""The regression harness: one record per run, appended to a history, compared with the last comparable record.

    resnext benchmark report --data LABELLED_DIR --weights best.pth      # appends to benchmarks/history.jsonl
    resnext benchmark compare                                            # exit 1 on a regression; history.png

A record holds the versions (package, torch, runtimes), the git revision, the machine (CPU model and ISA flags,
or the GPU), accuracy on the labelled folder when one is given, the inference rows of
:func:`resnext.bench.inference.run_inference_benchmark` (img/s, ratio to the same run's eager fp32, % of the row's
own precision's peak, top-1 agreement) and the training rows of :mod:`resnext.bench.training`.

Ratios, not img/s, are compared: they are measured against a reference row of the same run, so they hold on a
shared machine whose absolute speed varies with the load. A regression is accuracy down more than
:data:`ACCURACY_DROP` (0.1 point) or a ratio down more than :data:`RATIO_DROP` (10%) against the last earlier
record of the same machine class, architecture, image size, weights and data.
"""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResnextError
from ..util import call_with

logger = logging.getLogger(__name__)

DEFAULT_HISTORY = "benchmarks/history.jsonl"
DEFAULT_PLOT = "benchmarks/history.png"
ACCURACY_DROP = 0.001  # fraction: 0.1 point
RATIO_DROP = 0.10  # relative
SCHEMA = 1


@dataclass
class ReportConfig:
    data: str | None = None
    weights: str | None = None
    arch: str | None = None
    image_size: int = 224
    backends: Sequence[str] = ("torch", "onnxruntime", "openvino")
    precisions: Sequence[str] = ("fp32", "bf16", "int8")
    batch_sizes: Sequence[int] = (1, 16)
    threads: int | None = None
    warmup: int = 2
    min_iters: int = 3
    min_time: float = 2.0
    calibration_dir: str | None = None
    training_steps: int = 3
    training_batch: int = 16
    peak_size: int = 2048  # GEMM size of the peak measurement
    time_budget: float = 1800.0  # seconds for the inference part (BenchConfig.time_budget)
    quick: bool = False

    @classmethod
    def from_args(cls, args: Any) -> ReportConfig:
        from .inference import parse_list

        config = call_with(cls, args, backends=parse_list(args.backends), precisions=parse_list(args.precision))
        if args.quick:  # the harness on a small model: minutes become seconds; recorded as such
            config.arch = config.arch or "resnext_test"
            config.image_size = 64 if args.image_size == 224 else args.image_size
            config.training_batch = 8
        return config


# ---------------------------------------------------------------------------------------------------------------
# Making a record


def versions() -> dict[str, str | None]:
    """Versions of the package, Python and every runtime that changes the numbers (None: not installed)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    found: dict[str, str | None] = {"resnext": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "onnxruntime", "openvino", "nncf", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def git_revision(root: str | Path | None = None) -> str | None:
    """``<commit>`` (``+dirty`` with uncommitted changes) of the checkout holding this package, None outside one."""
    cwd = Path(root) if root else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_class(machine: dict[str, Any]) -> str:
    """What makes two records comparable: the GPU, else the CPU model, its speed-relevant ISA flags and cores."""
    if machine.get("cuda"):
        return f"gpu: {machine['cuda']}"
    return f"cpu: {machine.get('cpu')} [{' '.join(machine.get('isa') or [])}] x{machine.get('cores')}"


def folder_accuracy(model: Any, source: Any, root: str, image_size: int) -> dict[str, float]:
    """Eager fp32 top-1/top-5 (percent) on the labelled folder ``root``, through the package's evaluation."""
    from ..data import eval_loader, match_classes
    from ..evaluate import evaluate
    from ..runtimes import TorchBackend
    from ..transforms import eval_preset

    classes = match_classes(root, source.num_classes, source.classes)
    loader = eval_loader(
        root, image_size=image_size, batch_size=32, workers=0, classes=classes, transforms=eval_preset(image_size)
    )
    metrics = evaluate(TorchBackend(model, device="cpu"), loader, num_classes=source.num_classes)
    return {"top1": metrics["val.top1"], "top5": metrics["val.top5"], "count": metrics["val.count"]}


def training_rows(
    arch: str,
    *,
    batch_size: int,
    image_size: int,
    warmup: int,
    steps: int,
    precisions: set[str] | None = None,
    compile: bool = False,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """The training benchmark's rows (reference first) for the settings whose precision is in ``precisions``."""
    from .training import DEFAULT_SETTINGS, benchmark_training

    reference, *others = DEFAULT_SETTINGS
    settings = (reference,) + tuple(
        s for s in others if (precisions is None or s.precision in precisions) and (compile or not s.compile)
    )
    return benchmark_training(
        arch, batch_size=batch_size, image_size=image_size, warmup=warmup, steps=steps, settings=settings, device=device
    )


def make_record(config: ReportConfig) -> dict[str, Any]:
    """Measure everything once and return the record (not yet appended)."""
    from ..sources import load_source
    from .inference import BenchConfig, run_inference_benchmark, set_bn_statistics

    source = load_source(config.weights or "random", arch=config.arch)
    model = source.model
    assert model is not None
    if config.weights in (None, "random"):
        from ..export import preprocess
        from ..images import sample_images

        set_bn_statistics(model, preprocess(sample_images(), config.image_size))
    accuracy = folder_accuracy(model, source, config.data, config.image_size) if config.data else None
    bench = call_with(
        BenchConfig,
        config,
        arch=source.arch,
        calibration_dir=config.calibration_dir or config.data,
        agreement_dir=config.data,
        agreement_count=512,
    )
    result = run_inference_benchmark(bench, model=model)
    training = []
    if config.training_steps:
        training = training_rows(
            source.arch,
            batch_size=config.training_batch,
            image_size=config.image_size,
            warmup=1,
            steps=config.training_steps,
            precisions=set(config.precisions) - {"int8"},
            device="cpu",
        )
    machine = {**result.machine, "class": machine_class(result.machine)}
    return {
        "schema": SCHEMA,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "git": git_revision(),
        "machine": machine,
        "model": {
            "arch": source.arch,
            "image_size": config.image_size,
            "weights": Path(str(config.weights or "random")).name,  # a file's name: comparable across checkouts
            "gflop_per_image": result.model_gflop_per_image,
            "quick": config.quick,
        },
        "data": config.data and Path(config.data).name,
        "accuracy": accuracy,
        "peaks": result.peaks,
        "agreement_images": result.agreement_images,
        "inference": [asdict(r) for r in result.rows],
        "training": training,
        "notes": result.notes,
    }


def append_record(record: dict[str, Any], history: str | Path) -> None:
    """Append one JSON line to ``history``, rewriting the file atomically (a crash never leaves half a line)."""
    from ..util import atomic_open

    path = Path(history)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(old + json.dumps(record, default=str) + "\n")


def load_history(history: str | Path) -> list[dict[str, Any]]:
    path = Path(history)
    if not path.is_file():
        raise ResnextError(f"no history file at {path}: run `resnext benchmark report` first")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ResnextError(f"{path}:{number} is not a JSON record ({exc.msg})") from None
    if not records:
        raise ResnextError(f"{path} holds no records: run `resnext benchmark report` first")
    return records


def format_record(record: dict[str, Any]) -> str:
    """A short human summary of one record."""
    lines = [
        f"{record['time']}  resnext {record['versions']['resnext']}  git {record.get('git') or '-'}",
        f"machine: {record['machine']['class']}",
        f"model: {record['model']['arch']} at {record['model']['image_size']} px, weights {record['model']['weights']}",
    ]
    if record.get("accuracy"):
        acc = record["accuracy"]
        lines.append(
            f"accuracy on {record['data']}: top-1 {acc['top1']:.2f}%, top-5 {acc['top5']:.2f}% "
            f"({acc['count']:.0f} images)"
        )
    lines.append("peaks (GFLOP/s): " + ", ".join(f"{p} {v['gflops']:.0f}" for p, v in record["peaks"].items()))
    for r in record["inference"]:
        agree = "-" if r.get("agreement") is None else f"{100 * r['agreement']:.1f}%"
        peak = "  - " if r.get("peak_fraction") is None else f"{100 * r['peak_fraction']:3.0f}%"
        lines.append(
            f"  {r['backend']:>12} {r['precision']:>4} batch {r['batch_size']:>3}: {r['images_per_s']:8.2f} "
            f"img/s  x{r['ratio']:.2f}  {peak} peak  agreement {agree}"
        )
    for r in record["training"]:
        lines.append(
            f"  training {r['setting']:>24}: "
            + (r["error"] if "error" in r else f"{r['img_per_s']:.2f} img/s  x{r['ratio']:.2f}")
        )
    return "\n".join(lines)


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
    what: str
    before: float
    after: float
    regression: bool

    def line(self) -> str:
        flag = "REGRESSION" if self.regression else "ok"
        return f"{flag:>10}  {self.what}: {self.before:.4g} -> {self.after:.4g} ({self.after - self.before:+.4g})"


@dataclass
class Comparison:
    latest: dict[str, Any]
    previous: dict[str, Any] | None
    changes: list[Change] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]

    def table(self) -> str:
        head = f"latest: {self.latest['time']} git {self.latest.get('git') or '-'} on {self.latest['machine']['class']}"
        if self.previous is None:
            return (
                head
                + "\nno earlier comparable record (same machine class, model, weights and data): nothing to compare"
            )
        lines = [head, f"previous: {self.previous['time']} git {self.previous.get('git') or '-'}"]
        lines += [c.line() for c in self.changes]
        lines.append(f"{len(self.regressions)} regression(s)" if self.regressions else "no regression")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "latest": self.latest.get("time"),
            "previous": self.previous and self.previous.get("time"),
            "changes": [asdict(c) for c in self.changes],
            "regressions": len(self.regressions),
        }


def _row_key(row: dict[str, Any]) -> str:
    return f"{row['backend']} {row['precision']} batch {row['batch_size']}"


def compare_records(previous: dict[str, Any], latest: dict[str, Any]) -> list[Change]:
    """Accuracy (record and per-row, points) and speed ratios (relative) of ``latest`` against ``previous``."""
    changes: list[Change] = []
    for name in ("top1", "top5"):  # percent
        before, after = (previous.get("accuracy") or {}).get(name), (latest.get("accuracy") or {}).get(name)
        if before is not None and after is not None:
            changes.append(Change(f"accuracy {name} %", before, after, after < before - 100 * ACCURACY_DROP))
    old_rows = {_row_key(r): r for r in previous.get("inference", [])}
    for row in latest.get("inference", []):
        old = old_rows.get(_row_key(row))
        if old is None:
            continue
        if row["backend"] != "torch" or row["precision"] != "fp32":  # the reference is 1.0 by definition
            changes.append(
                Change(
                    f"{_row_key(row)} ratio", old["ratio"], row["ratio"], row["ratio"] < (1 - RATIO_DROP) * old["ratio"]
                )
            )
        if old.get("accuracy") is not None and row.get("accuracy") is not None:
            changes.append(
                Change(
                    f"{_row_key(row)} accuracy",
                    old["accuracy"],
                    row["accuracy"],
                    row["accuracy"] < old["accuracy"] - ACCURACY_DROP,
                )
            )
    old_training = {r["setting"]: r for r in previous.get("training", []) if "error" not in r}
    for row in latest.get("training", [])[1:]:  # the first is the reference
        old = old_training.get(row["setting"])
        if old is not None and "error" not in row:
            changes.append(
                Change(
                    f"training {row['setting']} ratio",
                    old["ratio"],
                    row["ratio"],
                    row["ratio"] < (1 - RATIO_DROP) * old["ratio"],
                )
            )
    return changes


def compare_latest(history: str | Path) -> Comparison:
    """The last record against the last earlier record with the same :func:`comparable_key`."""
    records = load_history(history)
    latest = records[-1]
    previous = next((r for r in reversed(records[:-1]) if comparable_key(r) == comparable_key(latest)), None)
    return Comparison(latest, previous, compare_records(previous, latest) if previous else [])


def plot_history(history: str | Path, output: str | Path) -> Path:
    """Ratios (largest batch) and accuracy over time for the latest record's machine class and model."""
    from ..runtimes import require
    from ..util import atomic_path

    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load_history(history)
    key = comparable_key(records[-1])
    series = [r for r in records if comparable_key(r) == key]
    fig, (speed, acc) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
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
    speed.set_title(f"{key[1]} {key[2]} px on {key[0]}"[:110], fontsize=9)
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
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(output)
