"""The regression harness: one record per run, appended to a history, compared with the last comparable record.

    resnext benchmark report --data LABELLED_DIR --weights best.pth      # appends to benchmarks/history.jsonl
    resnext benchmark compare                                            # exit 1 on a regression; history.png

A record holds the versions (package, torch, runtimes), the git revision, the machine (CPU model and ISA flags,
or the GPU), accuracy on the labelled folder when one is given, the inference rows of
:func:`resnext.bench.inference.run_inference_benchmark` (img/s, ratio to the same run's eager fp32, % of the row's
own precision's peak, top-1 agreement) and the training rows of :mod:`resnext.bench.training`.

Comparing records and plotting the history: :mod:`resnext.bench.compare`.
"""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..model.sources import arch_option, weights_option
from ..options import at_least, calibration_dir_option, check_options, image_size_option, option, options_from
from .settings import (
    backends_option,
    batch_sizes_option,
    history_option,
    min_iters_option,
    min_time_option,
    precisions_option,
    threads_option_for_peaks,
    time_budget_option,
    warmup_option,
)

logger = logging.getLogger(__name__)

SCHEMA = 1


@dataclass
class ReportConfig:
    data: str | None = option(
        None,
        metavar="LABELLED_DIR",
        help="labelled images (class sub-folders): top-1/top-5 accuracy, and agreement of every runtime",
    )
    arch: str | None = arch_option()
    weights: str | None = weights_option(None)
    history: str = history_option()
    backends: Sequence[str] = backends_option()
    precisions: Sequence[str] = precisions_option(("fp32", "bf16", "int8"))
    batch_sizes: Sequence[int] = batch_sizes_option((1, 16))
    warmup: int = warmup_option()
    calibration_dir: str | None = calibration_dir_option()
    image_size: int = image_size_option(224)
    threads: int | None = threads_option_for_peaks()
    min_iters: int = min_iters_option()
    min_time: float = min_time_option()
    time_budget: float = time_budget_option()  # seconds for the inference part (BenchConfig.time_budget)
    training_steps: int = option(3, check=at_least(0), help="timed training steps per setting; 0 skips training rows")
    quick: bool = option(
        False,
        help="resnext_test at 64 px unless --arch/--image-size say otherwise: checks the harness, not the model "
        "(recorded as such)",
    )
    append: bool = option(True, flags=("--no-append",), help="print the record without appending it to the history")
    training_batch: int = 16
    peak_size: int = 2048  # GEMM size of the peak measurement

    def __post_init__(self) -> None:
        check_options(self)

    @classmethod
    def from_args(cls, args: Any) -> ReportConfig:
        config = options_from(cls, args)
        if config.quick:  # the harness on a small model: minutes become seconds; recorded as such
            config.arch = config.arch or "resnext_test"
            config.image_size = 64 if config.image_size == 224 else config.image_size
            config.training_batch = 8
        return config


# ---------------------------------------------------------------------------------------------------------------
# Making a record


def versions() -> dict[str, str | None]:
    """Versions of the package, Python and every runtime that changes the numbers (None: not installed)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from ..version import __version__

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
    from ..runtime.backend import TorchBackend
    from ..training.data import eval_loader, match_classes
    from ..training.evaluate import evaluate
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
    from ..model.sources import load_source
    from .inference import BenchConfig, run_inference_benchmark, set_bn_statistics

    source = load_source(config.weights or "random", arch=config.arch)
    model = source.model
    assert model is not None
    if config.weights in (None, "random"):
        from ..export.driver import preprocess
        from ..images import sample_images

        set_bn_statistics(model, preprocess(sample_images(), config.image_size))
    accuracy = folder_accuracy(model, source, config.data, config.image_size) if config.data else None
    bench = BenchConfig(
        arch=source.arch,
        weights=config.weights,
        backends=config.backends,
        precisions=config.precisions,
        batch_sizes=config.batch_sizes,
        warmup=config.warmup,
        calibration_dir=config.calibration_dir or config.data,
        image_size=config.image_size,
        threads=config.threads,
        min_iters=config.min_iters,
        min_time=config.min_time,
        time_budget=config.time_budget,
        agreement_dir=config.data,
        agreement_count=512,
        peak_size=config.peak_size,
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
