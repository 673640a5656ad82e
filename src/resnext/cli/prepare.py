"""`resnext prepare`: build the `--backend auto` cache ahead of time."""

from __future__ import annotations

import argparse

from .common import add_command, add_flags, add_model_args

#: what ``prepare --backend`` takes: what auto picks, or one of the runtimes it exports to
_CHOICES = ["auto", "onnxruntime", "openvino"]


def add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "prepare", run_prepare)
    add_model_args(p)
    add_flags(
        p,
        "backend",
        "precision",
        "calibration_dir",
        "image_size",
        "threads",
        backend={
            "choices": _CHOICES,
            "help": "the runtime to export to: auto = the one `--backend auto` picks here (default: %(default)s)",
        },
        precision={"choices": ["fp32", "bf16", "int8"]},
    )


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

    source = load_source(args.weights, arch=args.arch)
    if args.image_size and args.image_size != source.image_size:  # the export is made at the size it will run at
        source = dataclasses.replace(source, image_size=args.image_size, transforms=eval_preset(args.image_size))
    backend = prepare(
        source,
        precision=args.precision,
        runtime=None if args.backend == "auto" else args.backend,
        calibration_dir=args.calibration_dir,
        threads=args.threads,
    )
    choice = backend.auto
    if choice.path is None:
        print(f"resnext: nothing to prepare: {choice.reason}")
    else:
        print(f"resnext: {'already cached' if choice.reused else 'prepared'}: {choice.line()}")
    return 0


PARSERS = (add_prepare_parser,)
