"""`resnext export`."""

from __future__ import annotations

import argparse

from .common import add_command, add_flags, add_model_args, positive_float, positive_int


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    from ..export.driver import FORMATS

    p = add_command(sub, "export", run_export)
    p.description += " Precisions per format: " + "; ".join(f"{f}: {', '.join(ps)}" for f, ps in FORMATS.items())
    p.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="onnx, export (.pt2), torchscript, openvino (.xml IR), tensorrt (.engine, GPU only)",
    )
    p.add_argument("--output", required=True, metavar="PATH", help="file to write")
    add_model_args(p)
    add_flags(
        p, "image_size", "calibration_dir", precision={"help": "numeric precision (default: fp32; fp16 for tensorrt)"}
    )
    add_flags(p, json={"help": "print the export report as JSON"})
    p.add_argument(
        "--batch-size-range", default="1:256", metavar="MIN:MAX", help="dynamic batch range (default: %(default)s)"
    )
    p.add_argument(
        "--eval-dir", metavar="DIR", help="images for the agreement/accuracy report (default: calibration dir)"
    )
    p.add_argument(
        "--calibration-count", type=positive_int, default=256, help="max calibration images (default: %(default)s)"
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: %(default)s)")
    p.add_argument(
        "--tolerance",
        type=positive_float,
        default=1e-4,
        help="fp32 parity: max abs diff <= TOL x max(1, max |logit|) (default: %(default)s)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        metavar="FRACTION",
        help="bf16/fp16/int8: fail when top-1 agreement with fp32 is below this (e.g. 0.99)",
    )
    p.add_argument(
        "--features",
        action="store_true",
        help="also output the pooled penultimate features as a second output named 'features' (for resnext embed)",
    )


def run_export(args: argparse.Namespace) -> int:
    """Export to ONNX, torch.export, TorchScript, OpenVINO or TensorRT, parity-checked vs PyTorch.

    Write an exported model, reload it in its runtime and compare it with PyTorch fp32.
    """
    import json

    from ..export.config import parse_batch_range
    from ..export.driver import ExportConfig, export_model
    from ..util import call_with

    config = call_with(ExportConfig, args, batch_range=parse_batch_range(args.batch_size_range))
    result = export_model(config)
    print(json.dumps(result.to_dict(), indent=1) if args.json else "\n".join(result.summary()))
    return 0


PARSERS = (add_export_parser,)
