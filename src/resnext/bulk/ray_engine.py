"""The Ray Data engine for ``resnext classify|embed --engine ray``: the same rows, over many machines.

    resnext classify 's3://bucket/photos/*.jpg' --from-list more.txt --engine ray --ray-address auto \\
        --actors 8 --gpus-per-actor 1 --batch-size 64 --output preds.parquet

Pipeline (one Ray Data dataset, streamed):

1. list inputs on the driver (:func:`resnext.bulk.engine.list_inputs`), minus those already in the output
(``--resume``);
2. read bytes and decode + preprocess in CPU tasks (:func:`decode_batch`): local paths and http(s) URLs through
   :func:`resnext.images.load_image`, other URIs (``s3://``, ``gs://``, ``hdfs://``, ...) read by pyarrow's
   filesystems (or fsspec) and decoded from bytes by the same function, so there is one decode path;
   an unreadable input becomes an error row, never a failed task (Ray Data may fuse this step into the actors
   when their resources match; it then runs in the actor processes, still before the model);
3. the model in an actor pool (``map_batches`` with :class:`ModelActor`; each actor builds its predictor once from
   a :class:`resnext.bulk.engine.ModelSpec`, so any runtime of the registry works);
4. the driver streams the result blocks into the same writers as the local engine (:mod:`resnext.bulk.writers`).

Fault tolerance: Ray Data's actor pools restart an actor that dies (``max_restarts=-1``) and retry its batch
(``max_task_retries=-1``), its defaults, checked by the tests; a block reaches the driver once, and the writer
drops any input it already holds, so the output has every input exactly once. A driver crash is recovered with
``--resume``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..download import is_url
from ..errors import ImageError, first_line
from ..options import at_least, check_options, greater_than, option
from ..runtime.table import require
from .engine import BulkJob, BulkSummary, ModelSpec, is_remote, open_output, row_settings, write_rows
from .writers import OutputWriter, classify_row, embed_row, rows_to_table

logger = logging.getLogger(__name__)


def actors_option(default: int = 2) -> Any:
    return option(default, help="Ray model replicas (actors)", check=at_least(1), metavar="N")


def cpus_per_actor_option() -> Any:
    return option(1.0, help="CPUs Ray reserves per actor", check=greater_than(0.0), metavar="CPUS")


@dataclass(frozen=True)
class RayOptions:
    address: str | None = option(  # None: start a private Ray instance on this machine
        None,
        flags=("--ray-address",),
        metavar="auto|HOST:PORT",
        help="cluster to join (default: a private one here)",
    )
    actors: int = actors_option()
    cpus_per_actor: float = cpus_per_actor_option()
    gpus_per_actor: float = option(0.0, help="", check=at_least(0.0))
    object_store_memory: int | None = None  # bytes, for the private instance (default: Ray's own)

    def __post_init__(self) -> None:
        check_options(self)


# ---------------------------------------------------------------------------------------------------------------
# Reading and decoding (CPU tasks)


def read_bytes(uri: str, max_bytes: int) -> bytes:
    """The bytes of an object-store / remote-filesystem URI, bounded; :class:`ImageError` when unreadable."""
    try:
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        stream = filesystem.open_input_stream(path)
    except Exception:  # noqa: BLE001 - a scheme pyarrow does not know: try fsspec, which knows more
        try:
            import fsspec

            stream = fsspec.open(uri, "rb").open()
        except Exception as exc:  # noqa: BLE001 - missing driver package, credentials, no such object, ...
            raise ImageError(f"{uri}: cannot read ({type(exc).__name__}: {first_line(exc)})") from exc
    try:
        data = stream.read(max_bytes + 1)
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{uri}: cannot read ({type(exc).__name__}: {first_line(exc)})") from exc
    finally:
        stream.close()
    if len(data) > max_bytes:
        raise ImageError(f"{uri}: file is larger than {max_bytes} bytes")
    return bytes(data)


def decode_batch(batch: dict[str, np.ndarray], transforms: Any) -> dict[str, np.ndarray]:
    """``{"path"}`` -> ``{"path", "pixels" [n, 3, S, S] float32, "error"}``; failed items get zeros and their error,
    the others an empty error (``None`` would not survive Ray's block conversions: it may come back as NaN)."""
    from ..download import MAX_IMAGE_BYTES
    from ..images import ImageDataset

    paths = [str(p) for p in batch["path"]]
    sources = [read_or_error(p, MAX_IMAGE_BYTES) if is_remote(p) and not is_url(p) else p for p in paths]
    dataset = ImageDataset(sources, transforms)  # type: ignore[arg-type]  # the one error-tolerant decoder
    size = transforms.crop_size
    pixels = np.zeros((len(paths), 3, size, size), dtype=np.float32)
    errors: list[str] = []
    for i, source in enumerate(sources):
        if isinstance(source, ImageError):
            errors.append(str(source))
            continue
        _, tensor, error = dataset[i]
        if tensor is not None:
            pixels[i] = tensor.numpy()
        if error and isinstance(source, bytes):  # name the URI, not "<123 bytes>"
            error = error.replace(f"<{len(source)} bytes>", paths[i], 1)
        errors.append(error or "")
    return {"path": np.array(paths, dtype=object), "pixels": pixels, "error": np.array(errors, dtype=object)}


def read_or_error(uri: str, max_bytes: int) -> bytes | ImageError:
    try:
        return read_bytes(uri, max_bytes)
    except ImageError as exc:
        return exc


# ---------------------------------------------------------------------------------------------------------------
# The model (actor pool)


class ModelActor:
    """One model replica: builds its predictor once, then turns decoded batches into output rows."""

    def __init__(self, spec: ModelSpec, task: str, topk: int, normalize: bool, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.predictor = spec.predictor()
        self.task, self.topk, self.normalize = task, topk, normalize

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import torch

        from ..inference.predict import NON_FINITE

        paths, errors = [str(p) for p in batch["path"]], [str(e) or None for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if e is None]
        results: dict[int, Any] = {}
        if ok:
            x = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            if self.task == "classify":
                outputs = self.predictor.top_k_batch(x, self.topk)
                for i, predictions in zip(ok, outputs):
                    if predictions is None:
                        errors[i] = f"{paths[i]}: {NON_FINITE}"
            else:
                outputs = list(self.predictor.embed(x, normalize=self.normalize).numpy())
            results = dict(zip(ok, outputs))
        make = classify_row if self.task == "classify" else embed_row
        rows = [make(p, results.get(i), errors[i]) for i, p in enumerate(paths)]
        return rows_to_table(self.task, rows)


# ---------------------------------------------------------------------------------------------------------------
# Driver


#: after ``ray.shutdown()``, a private instance's processes get this long to exit before they are killed
RAY_EXIT_GRACE_S = 10.0


def run_ray(
    job: BulkJob, spec: ModelSpec, options: RayOptions = RayOptions(), *, writer: OutputWriter | None = None
) -> BulkSummary:
    """Run ``job`` as a Ray Data pipeline; joins ``options.address`` or an already initialised Ray, else starts
    (and afterwards stops, see :func:`ray_instance`) a private instance on this machine. ``writer``: the output
    :func:`resnext.bulk.engine.open_output` opened for it (default: opened here). The driver holds the output's lock and
    writes every row."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if options.address is None:
        quiet_private_ray()
    ray = require("ray", "ray")
    require("ray.data", "ray")
    writer = writer or open_output(job, spec)
    pending = [s for s in job.sources if s not in writer.done]
    transforms = None
    if pending:
        # The driver builds the predictor once before any actor: a bad model source fails here in one line, the
        # preset (crop size, normalisation) the CPU tasks need comes from the model itself, and a resumed output
        # is checked against the settings of the rows it would get.
        try:
            predictor = spec.predictor(device="cpu")
            writer.confirm(row_settings(job, predictor, spec))
        except BaseException:
            writer.abort()
            raise
        transforms = predictor.transforms
    try:
        with ray_instance(ray, options):
            rows = _stream(job, spec, options, pending, transforms) if pending else iter(())
            return write_rows(job, writer, rows, skipped=len(job.sources) - len(pending), total=len(job.sources))
    except BaseException:
        writer.abort()  # releases the output (write_rows already did, if it started)
        raise


def quiet_private_ray() -> None:
    """Before Ray is imported (it reads this then): a private instance is given 127.0.0.1 as its node address, and
    this makes Ray keep it instead of "resolving" loopback to the address of the route to 8.8.8.8:53 (a probe of
    an outside address, with a warning where it fails). A value the user set in the environment wins."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's switch: loopback stays loopback


#: Ray's notice on every new local instance that it enabled token authentication (its default, which we keep)
_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def ray_instance(ray: Any, options: RayOptions) -> Iterator[None]:
    """Ray for one run: an already initialised one as it is, ``options.address`` joined (and left), or a private
    instance on 127.0.0.1 sized for the actor pool. A private instance is shut down on leaving, and the run returns
    only once every process it started has exited (those left after :data:`RAY_EXIT_GRACE_S` are killed): a
    model actor busy with a batch would otherwise outlive the command. Call :func:`quiet_private_ray` before Ray
    is imported, or Ray probes an outside address for this node's."""
    if ray.is_initialized():
        yield
        return
    if options.address is not None:
        ray.init(address=options.address, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    import psutil  # Ray ships it (ray/thirdparty_files, on sys.path once Ray is imported)

    driver = psutil.Process()
    before = set(driver.children(recursive=True))
    # Enough logical CPUs for the actors plus the decoding tasks, or the pool would starve the decoders.
    need = int(options.actors * options.cpus_per_actor + 1.999)
    notices = logging.getLogger(_TOKEN_NOTICE_LOGGER)
    level = notices.level
    if not logger.isEnabledFor(logging.DEBUG):  # shown with --verbose
        notices.setLevel(logging.ERROR)
    try:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, need),
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=options.object_store_memory,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )
    finally:
        notices.setLevel(level)
    try:
        yield
    finally:
        started = [p for p in driver.children(recursive=True) if p not in before]
        ray.shutdown()
        left = stop_processes(started, RAY_EXIT_GRACE_S)
        if left:
            logger.warning("Ray processes still running after shutdown: %s", ", ".join(map(str, left)))


def stop_processes(processes: list[Any], grace: float) -> list[int]:
    """Wait up to ``grace`` seconds for ``processes`` (psutil) to exit, kill those left, wait for them (bounded);
    the pids still running. Zombies count as exited (their parent, or init, reaps them)."""
    import psutil

    def running(process: Any) -> bool:
        try:
            return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    for limit, kill in ((grace, False), (5.0, True)):
        if kill:
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.kill()
        deadline = time.monotonic() + limit
        while (processes := [p for p in processes if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not processes:
            return []
        if not kill:
            logger.debug("killing %d Ray processes still running %.0f s after shutdown", len(processes), grace)
    return [p.pid for p in processes]


def _stream(job: BulkJob, spec: ModelSpec, options: RayOptions, pending: list[str], transforms: Any) -> Iterator[dict]:
    import ray.data
    from tqdm.auto import tqdm

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours below counts written rows, with img/s and ETA
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    blocks = max(1, min(len(pending) // job.batch_size, 10_000))
    ds: Any = ray.data.from_items([{"path": p} for p in pending], override_num_blocks=blocks)
    ds = ds.map_batches(
        decode_batch, fn_kwargs={"transforms": transforms}, batch_size=job.batch_size, batch_format="numpy", num_cpus=1
    )
    threads = max(1, int(options.cpus_per_actor)) if options.gpus_per_actor == 0 else None
    ds = ds.map_batches(
        ModelActor,
        fn_constructor_kwargs={
            "spec": spec,
            "task": job.task,
            "topk": job.topk,
            "normalize": job.normalize,
            "threads": threads,
        },
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        batch_size=job.batch_size,
        batch_format="numpy",
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor,
    )  # Ray Data's actor pools restart dead actors and retry their batch (max_restarts/max_task_retries -1)
    with tqdm(
        total=len(pending), unit="img", desc=f"{job.task} (ray)", disable=not job.progress, file=sys.stderr
    ) as bar:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = table.to_pylist()
            yield from rows
            bar.update(len(rows))
