"""`resnext prepare`: build the `--backend auto` cache ahead of time."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..model.sources import arch_option, weights_option
from ..options import (
    PRECISIONS,
    Precision,
    add_options,
    calibration_dir_option,
    check_options,
    image_size_option,
    options_from,
    precision_option,
    threads_option,
)
from ..runtime.backends import backend_option
from ..runtime.table import RUNTIMES
from .common import add_command

#: the runtimes `--backend auto` exports to (the others it runs eagerly or never picks)
_EXPORTED = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class PrepareConfig:
    """What to prepare: the model, and the runtime (auto's choice, or one it exports to) and precision."""

    arch: str | None = arch_option()
    weights: Any = weights_option()
    backend: str = backend_option(
        choices=("auto", *_EXPORTED),
        help="the runtime to export to: auto = the one `--backend auto` picks here (default: %(default)s)",
    )
    precision: Precision | None = precision_option(
        choices=tuple(p for p in PRECISIONS if any(p in RUNTIMES[r].precisions for r in _EXPORTED))
    )
    calibration_dir: str | None = calibration_dir_option()
    image_size: int | None = image_size_option()
    threads: int | None = threads_option()

    def __post_init__(self) -> None:
        check_options(self)


def add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    """Options of :class:`PrepareConfig`."""
    add_options(add_command(sub, "prepare", run_prepare), PrepareConfig)


def run_prepare(args: argparse.Namespace) -> int:
    """Build the --backend auto cache ahead of time.

    Export the model to the runtime `--backend auto` uses (checked against eager PyTorch) into the cache, so the
    first classify, embed, serve or demo of these weights loads it at once: for container images, CI and
    machines set up before use. Already cached: checked and reused. Prints the entry it holds.
    """
    import dataclasses

    from ..inference.auto import prepare
    from ..model.sources import load_source
    from ..transforms import eval_preset

    config = options_from(PrepareConfig, args)
    source = load_source(config.weights, arch=config.arch)
    if config.image_size and config.image_size != source.image_size:  # the export is made at the size it runs at
        source = dataclasses.replace(source, image_size=config.image_size, transforms=eval_preset(config.image_size))
    backend = prepare(
        source,
        precision=config.precision,
        runtime=None if config.backend == "auto" else config.backend,
        calibration_dir=config.calibration_dir,
        threads=config.threads,
    )
    choice = backend.auto
    if choice.path is None:
        print(f"resnext: nothing to prepare: {choice.reason}")
    else:
        print(f"resnext: {'already cached' if choice.reused else 'prepared'}: {choice.line()}")
    return 0


PARSERS = (add_prepare_parser,)
