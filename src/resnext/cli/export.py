"""`resnext export`."""

from __future__ import annotations

import argparse

from ..export.config import ExportConfig
from ..options import add_options, options_from
from .common import add_cli_flag, add_command, add_json


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Options of :class:`ExportConfig`; ``--batch-size-range MIN:MAX`` is parsed into its ``batch_range``."""
    from ..export.driver import FORMATS

    p = add_command(sub, "export", run_export)
    p.description += " Precisions per format: " + "; ".join(f"{f}: {', '.join(ps)}" for f, ps in FORMATS.items())
    add_options(p, ExportConfig)
    add_json(p, "print the export report as JSON")
    add_cli_flag(
        p, "--batch-size-range", default="1:256", metavar="MIN:MAX", help="dynamic batch range (default: %(default)s)"
    )


def run_export(args: argparse.Namespace) -> int:
    """Export to ONNX, torch.export, TorchScript, OpenVINO or TensorRT, parity-checked vs PyTorch.

    Write an exported model, reload it in its runtime and compare it with PyTorch fp32.
    """
    import json

    from ..export.config import parse_batch_range
    from ..export.driver import export_model

    config = options_from(ExportConfig, args, batch_range=parse_batch_range(args.batch_size_range))
    result = export_model(config)
    print(json.dumps(result.to_dict(), indent=1) if args.json else "\n".join(result.summary()))
    return 0


PARSERS = (add_export_parser,)
