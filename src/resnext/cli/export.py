"""`resnext export`."""

from __future__ import annotations

import argparse

from .common import add_model_args


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    from ..export import FORMATS

    p = sub.add_parser(
        "export",
        help="export to ONNX, torch.export, TorchScript, OpenVINO or TensorRT, parity-checked vs PyTorch",
        description="Write an exported model, reload it in its runtime and compare it with PyTorch fp32. "
        "Precisions per format: " + "; ".join(f"{f}: {', '.join(p)}" for f, p in FORMATS.items()) + ".",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="onnx, export (.pt2), torchscript, openvino (.xml IR), tensorrt (.engine, GPU only)",
    )
    p.add_argument("--output", required=True, metavar="PATH", help="file to write")
    add_model_args(p)
    p.add_argument(
        "--batch-size-range", default="1:256", metavar="MIN:MAX", help="dynamic batch range (default: %(default)s)"
    )
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], help="default: fp32 (fp16 for tensorrt)")
    p.add_argument(
        "--calibration-dir", metavar="DIR", help="images for int8 calibration (class sub-folders: accuracy too)"
    )
    p.add_argument(
        "--eval-dir", metavar="DIR", help="images for the agreement/accuracy report (default: calibration dir)"
    )
    p.add_argument("--calibration-count", type=int, default=256, help="max calibration images (default: %(default)s)")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input crop size (default: the checkpoint's training size, else 224)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: %(default)s)")
    p.add_argument(
        "--tolerance",
        type=float,
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
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    import json

    from ..export import ExportConfig, export_model
    from ..export_config import parse_batch_range

    config = ExportConfig(
        format=args.format,
        output=args.output,
        arch=args.arch,
        weights=args.weights,
        batch_range=parse_batch_range(args.batch_size_range),
        precision=args.precision,
        calibration_dir=args.calibration_dir,
        eval_dir=args.eval_dir,
        calibration_count=args.calibration_count,
        image_size=args.image_size,
        opset=args.opset,
        tolerance=args.tolerance,
        min_agreement=args.min_agreement,
        features=args.features,
    )
    result = export_model(config)
    print(json.dumps(result.to_dict(), indent=1) if args.json else "\n".join(result.summary()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    add_export_parser(sub)
