"""`resnext models`: architectures, published weights and the runtimes installed here."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_command, add_json


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    add_json(add_command(sub, "models", run_models))


def describe() -> dict[str, Any]:
    """Everything ``resnext models`` shows, as plain data (from the registries, so it cannot drift)."""
    from ..model.resnet import get_model_weights, list_models
    from ..runtime.table import RUNTIMES

    architectures = []
    for name in list_models():
        enum: Any = get_model_weights(name)
        weights = []
        for member_name, member in enum.__members__.items() if enum else []:
            if member_name == "DEFAULT":
                continue
            meta = member.meta
            weights.append(
                {
                    "name": f"{enum.__name__}.{member_name}",
                    "default": member is enum.DEFAULT,
                    "metrics": meta.get("metrics"),
                    "metrics_note": meta.get("metrics_note"),
                    "num_params": meta.get("num_params"),
                    "gmacs": meta.get("gmacs"),
                    "license": meta.get("license"),
                    "url": member.url,
                }
            )
        architectures.append({"arch": name, "weights": weights})
    runtimes = [
        {
            "name": r.name,
            "installed": r.installed(),
            "precisions": list(r.precisions),
            "suffixes": list(r.suffixes),
            "export_format": r.export_format,
            "exact": r.exact,
            "install": None if r.installed() else r.missing_reason(),
        }
        for r in RUNTIMES.values()
    ]
    return {"architectures": architectures, "runtimes": runtimes}


def run_models(args: argparse.Namespace) -> int:
    """List architectures, published weights and the runtimes installed here."""
    info = describe()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print("architectures and published weights:")
    for arch in info["architectures"]:
        if not arch["weights"]:
            print(f"  {arch['arch']:<22} (no published weights: train it, or --weights random)")
        for w in arch["weights"]:
            metrics = w["metrics"] or {}
            score = f"top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%" if metrics else w["metrics_note"]
            params = f"{w['num_params'] / 1e6:.1f}M params, {w['gmacs']} GMACs" if w["num_params"] else ""
            print(f"  {arch['arch']:<22} {w['name']}{' (default)' if w['default'] else ''}")
            print(f"  {'':<22} {params}; {score}; licence: {w['license']}")
    print("runtimes:")
    for r in info["runtimes"]:
        state = "installed" if r["installed"] else f"not installed: {r['install']}"
        print(f"  {r['name']:<13} {', '.join(r['precisions']):<16} {state}")
    return 0


PARSERS = (add_models_parser,)
