"""`resnext embed`, and the bulk options (`--output`, `--resume`, `--from-list`, `--engine ray`, ...) that
`resnext classify` shares with it."""

from __future__ import annotations

import argparse
import sys

from ..bulk.engine import BulkJob, ModelSpec
from ..bulk.ray_engine import RayOptions
from ..errors import ResnextError
from ..options import add_options, options_from
from .common import add_cli_flag, add_command, add_inputs, model_spec

_OUTPUT_HELP = (
    "write one row per input to FILE, incrementally (classify: .jsonl, .csv or .parquet; embed: .jsonl, .parquet "
    "or .npy + .index.csv)"
)
_ENGINE_HELP = "local: this process with background decoding; ray: a Ray Data pipeline (default: %(default)s)"


def add_bulk_args(p: argparse.ArgumentParser) -> None:
    """The output file, list files, the engine (the CLI's own flags: where rows go and which engine runs) and
    the :class:`RayOptions`: what ``classify`` and ``embed`` share for collections."""
    add_cli_flag(p, "--output", metavar="FILE", help=_OUTPUT_HELP)
    add_cli_flag(p, "--from-list", metavar="FILE", help="also read inputs from FILE, one path or URL per line")
    add_cli_flag(p, "--engine", choices=["local", "ray"], default="local", help=_ENGINE_HELP)
    add_options(p.add_argument_group("Ray Data engine (--engine ray; pip install 'resnext[ray]')"), RayOptions)


def add_embed_parser(sub: argparse._SubParsersAction) -> None:
    """Options of :class:`ModelSpec`, :class:`BulkJob` (no ``--topk``) and ``RayOptions``."""
    p = add_command(sub, "embed", run_embed)
    add_inputs(p)
    add_options(p, ModelSpec)
    add_options(p, BulkJob, skip=("topk",))
    add_bulk_args(p)
    p.set_defaults(topk=1, labels=None)  # embed takes no --topk or --labels: the values its jobs always had


def run_embed(args: argparse.Namespace) -> int:
    """Write pooled penultimate features (2048-d for ResNeXt101) of many images to a file.

    Embeddings = forward_head(forward_features(x), pre_logits=True). Exit status 1 if any input could not be read
    (its row holds the error).
    """
    return run_bulk(args, "embed")


def run_bulk(args: argparse.Namespace, task: str) -> int:
    """``classify``/``embed`` over a collection into ``--output``, on the local or the Ray engine."""
    from ..bulk.engine import list_inputs, open_output, run_local
    from ..images import sample_images
    from ..labels import read_label_file
    from ..runtime.table import require

    if args.engine == "ray":
        if args.address is None:  # before Ray is imported
            from ..bulk.ray_engine import quiet_private_ray

            quiet_private_ray()
        require("ray.data", "ray")  # before any work: one line naming the extra
    if not args.output:
        raise ResnextError(f"{task} {'--engine ray ' if task == 'classify' else ''}needs --output FILE")
    sources = list_inputs(args.inputs, from_list=args.from_list) if args.inputs or args.from_list else sample_images()
    if not sources:
        raise ResnextError("no images found in the inputs given")
    categories = read_label_file(args.labels) if getattr(args, "labels", None) else None
    spec = model_spec(args, categories=categories)
    job = options_from(BulkJob, args, task=task, sources=sources, output=args.output)
    writer = open_output(job, spec)  # suffix, folder, lock, resume identity: all before the model loads
    try:
        if args.engine == "ray":
            from ..bulk.ray_engine import run_ray

            summary = run_ray(job, spec, options_from(RayOptions, args), writer=writer)
        else:
            if getattr(args, "threads", None):
                import torch

                torch.set_num_threads(args.threads)
            predictor = spec.predictor()
            if task == "embed":
                predictor.check_embeddable()  # before the progress bar: one line naming `resnext export --features`
            summary = run_local(job, predictor, writer=writer, spec=spec)
    except BaseException:
        writer.abort()
        raise
    print(f"resnext: {summary.line()}", file=sys.stderr)
    if summary.failed:
        print(
            f"resnext: {summary.failed} of {summary.written} inputs could not be read (see their error rows)",
            file=sys.stderr,
        )
    return 1 if summary.failed else 0


PARSERS = (add_embed_parser,)
