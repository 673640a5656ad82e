"""`resnext embed`, and the bulk options (`--output`, `--resume`, `--from-list`, `--engine ray`, ...) that
`resnext classify` shares with it."""

from __future__ import annotations

import argparse
import sys

from ..errors import ResnextError
from .common import add_model_args, add_runtime_args, model_spec


def add_bulk_args(p: argparse.ArgumentParser) -> None:
    """Output file, resume, list files and the engine: what ``classify`` and ``embed`` share for collections."""
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write one row per input to FILE (.jsonl, .csv or .parquet; "
        "embed: .jsonl, .parquet or .npy + .index.csv), incrementally",
    )
    p.add_argument("--from-list", metavar="FILE", help="also read inputs from FILE, one path or URL per line")
    p.add_argument("--resume", action="store_true", help="skip the inputs already in --output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process with background decoding; ray: a Ray Data pipeline (default: %(default)s)",
    )
    ray = p.add_argument_group("Ray Data engine (--engine ray; pip install 'resnext[ray]')")
    ray.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        default=None,
        help="cluster to join; default: start a private Ray instance on this machine",
    )
    ray.add_argument("--actors", type=int, default=2, help="model replicas (actors) (default: %(default)s)")
    ray.add_argument("--cpus-per-actor", type=float, default=1.0, help="(default: %(default)s)")
    ray.add_argument("--gpus-per-actor", type=float, default=0.0, help="(default: %(default)s)")


def add_embed_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="write pooled penultimate features (2048-d for ResNeXt101) of many images to a file",
        description="Embeddings = forward_head(forward_features(x), pre_logits=True). Exit status 1 if any input "
        "could not be read (its row holds the error).",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="PATH|URL|DIR|GLOB",
        help="image files, folders (recursive), quoted globs or URLs; default: the bundled sample photos",
    )
    add_model_args(p)
    add_runtime_args(p)
    p.add_argument("--normalize", action="store_true", help="scale each vector to unit L2 norm")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="run the model in NHWC memory format")
    p.add_argument("--image-size", type=int, default=None, help="center-crop size (default: the model's own)")
    p.add_argument("--workers", type=int, default=2, help="background decoding processes (default: %(default)s)")
    add_bulk_args(p)
    p.set_defaults(func=lambda args: run_bulk(args, "embed"), topk=1, labels=None)


def run_bulk(args: argparse.Namespace, task: str) -> int:
    """``classify``/``embed`` over a collection into ``--output``, on the local or the Ray engine."""
    from ..bulk import BulkJob, list_inputs, run_local
    from ..images import sample_images
    from ..labels import read_label_file
    from ..runtimes import require

    if args.engine == "ray":
        require("ray.data", "ray")  # before any work: one line naming the extra
    if not args.output:
        raise ResnextError(f"{task} {'--engine ray ' if task == 'classify' else ''}needs --output FILE")
    sources = list_inputs(args.inputs, from_list=args.from_list) if args.inputs or args.from_list else sample_images()
    if not sources:
        raise ResnextError("no images found in the inputs given")
    categories = read_label_file(args.labels) if getattr(args, "labels", None) else None
    spec = model_spec(args, categories=categories)
    job = BulkJob(
        task,
        sources,
        args.output,
        topk=args.topk,
        normalize=getattr(args, "normalize", False),
        batch_size=args.batch_size,
        workers=args.workers,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if args.engine == "ray":
        from ..bulk_ray import RayOptions, run_ray

        options = RayOptions(
            address=args.ray_address,
            actors=args.actors,
            cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=args.gpus_per_actor,
        )
        summary = run_ray(job, spec, options)
    else:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        summary = run_local(job, spec.predictor())
    print(f"resnext: {summary.line()}", file=sys.stderr)
    if summary.failed:
        print(
            f"resnext: {summary.failed} of {summary.written} inputs could not be read (see their error rows)",
            file=sys.stderr,
        )
    return 1 if summary.failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    add_embed_parser(sub)


def add_benchmark_bulk_parser(kinds: argparse._SubParsersAction) -> None:
    """``resnext benchmark bulk`` (registered in :data:`resnext.cli.benchmark.BENCHMARK_PARSERS`)."""
    from ..models import list_models

    p = kinds.add_parser(
        "bulk",
        help="end-to-end img/s of the local and Ray engines vs model-only throughput",
        description="Read -> decode -> model -> write over DIR, for each engine, against the model alone on the "
        "same runtime and precision (same run). Goals: local >= 90%% of model only, Ray >= 80%% of local.",
    )
    p.add_argument("folder", metavar="DIR", help="images to run over")
    p.add_argument("--engine", default="local", help="comma-separated: local,ray (default: %(default)s)")
    p.add_argument("--task", choices=["classify", "embed"], default="classify", help="(default: %(default)s)")
    p.add_argument("--arch", default="resnext101_32x4d", choices=list_models(), help="(default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="FILE|URL", help="default: random weights")
    add_runtime_args(p)
    p.add_argument("--image-size", type=int, default=None, help="center-crop size (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="local engine decoding processes (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--actors", type=int, default=1, help="Ray model actors (default: %(default)s)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="(default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.set_defaults(func=run_benchmark_bulk)


def run_benchmark_bulk(args: argparse.Namespace) -> int:
    from ..bench.bulk import BulkBenchConfig, run_bulk_benchmark

    config = BulkBenchConfig(
        folder=args.folder,
        engines=[e.strip() for e in args.engine.split(",") if e.strip()],
        task=args.task,
        arch=args.arch,
        weights=args.weights,
        backend=args.backend or "torch",
        model_file=args.model_file,
        precision=args.precision,
        image_size=args.image_size,
        batch_size=args.batch_size,
        workers=args.workers,
        limit=args.limit,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        json_path=args.json,
    )
    print(run_bulk_benchmark(config).table())
    return 0
