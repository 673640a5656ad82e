"""``--backend auto`` (the default): the fastest exact runtime installed, exported once into a cache and reused.

Rule, from the measurements in ``benchmarks/RESULTS.md`` (batch 16, ResNeXt101-32x4d, 2 cores, same run):

* On a CPU, fp32 (the default precision): the first installed runtime of :data:`EXACT_ORDER`, i.e. the exact
  runtime that was fastest at batch 16 on the machines measured; eager PyTorch when neither is installed.
* ``precision="bf16"`` or ``"int8"`` opt into approximate runtimes (:data:`APPROXIMATE_ORDER`), calibrated on
  ``calibration_dir`` or the bundled sample photos; their top-1 agreement with eager fp32 is logged and kept in
  the cache entry's manifest. Without any runtime, bf16 runs in eager PyTorch under autocast.
* On a GPU (``device`` resolving to CUDA), and for fp16: eager PyTorch (TensorRT stays an explicit choice).
* ``$RESNEXT_AUTO`` pins the choice: ``torch`` (never export) or ``onnxruntime``/``openvino``.

Cold start. With the entry in the cache, the exported file is loaded at once. Without it, the backend
(:class:`ColdStartBackend`) runs eager PyTorch and exports only when that pays: a job that announces its size
(:meth:`ColdStartBackend.expect`; ``classify``/``embed`` do, through :func:`resnext.inference.predict.decoded_batches`)
runs its first batch eagerly, then exports only if the time the runtime would save on the remaining images is at least
1.5 times the export's cost (:func:`export_pays_off`, from the eager time just measured, the export time and speedup
measured by earlier exports on this machine, else conservative estimates). One log line says which it chose and
why. A caller that announces nothing (the Python API, a server, the demo, a Ray replica) runs eager at once while
``resnext prepare`` builds the entry in a background process of lower priority, and switches to it when it is
ready. ``resnext prepare`` (:func:`prepare`) builds the entry ahead of time.

The entry lives in :func:`cache_dir` under a folder named from its :class:`CacheKey`: the weights' sha256 (over the
tensors, so random, in-memory and file weights are all keyed by content), the architecture, image size, precision,
runtime and its version, the package and torch versions (plus the calibration images for int8). It is written by
:func:`resnext.export.driver.export_model` (so it passed the export's parity check against eager fp32: logits within
1e-4 x max |logit| for fp32) into a staging folder that is renamed into place only when complete, together with a
manifest holding the full key and the sha256 of each file. Every load checks both against the request: an entry
holding another key, a damaged or incomplete one, a symbolic link (never followed) or a file in the entry's place
is rebuilt, never used. One process exports an entry at a time (a lock file beside it). A cache that cannot be
written costs the speed-up, not the run: eager PyTorch, with a one-line warning.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ResnextError
from ..runtime.backend import TorchBackend
from ..runtime.backends import create_backend
from ..runtime.table import RUNTIMES, Runtime
from ..util import TMP_PREFIX, resolve_device
from .auto_cache import (
    CACHE_ENV,
    CacheKey,
    CacheUnwritable,
    build_entry,
    cache_dir,
    cache_key,
    read_entry,
    record_timing,
    timing_name,
    timings,
)
from .auto_choice import AutoBackend, AutoChoice

logger = logging.getLogger(__name__)

#: exact runtimes, preferred first (see the module docstring and benchmarks/RESULTS.md for the measurements)
EXACT_ORDER = ("onnxruntime", "openvino")
#: approximate precision -> runtimes that run it, preferred first
APPROXIMATE_ORDER = {"bf16": ("openvino",), "int8": ("openvino", "onnxruntime")}
#: pins what auto picks: "torch" (no export; what the test suite uses outside the auto tests) or a runtime name
PIN_ENV = "RESNEXT_AUTO"


def choose_runtime(precision: str, device: torch.device, pinned: str | None = None) -> tuple[Runtime | None, str]:
    """The runtime auto uses for ``precision`` on ``device`` (None: eager PyTorch), and why; ``pinned`` (else
    ``$RESNEXT_AUTO``) names the runtime to use."""
    if device.type != "cpu":
        return None, f"{device.type} device: eager PyTorch (pass --backend tensorrt for TensorRT)"
    if precision == "fp16":
        return None, "fp16 runs in eager PyTorch"
    order = EXACT_ORDER if precision == "fp32" else APPROXIMATE_ORDER.get(precision, ())
    pinned = pinned or os.environ.get(PIN_ENV, "").strip()
    if pinned == "torch" and precision != "int8":
        return None, f"{PIN_ENV}=torch: eager PyTorch"
    if pinned:
        if pinned not in order:
            raise ResnextError(f"{PIN_ENV}={pinned!r} cannot run {precision}; choose one of torch, {', '.join(order)}")
        order = (pinned,)
    for name in order:
        if RUNTIMES[name].installed():
            kind = "fastest exact runtime installed" if precision == "fp32" else f"{precision} runtime"
            return RUNTIMES[name], f"{kind} (order: {', '.join(order)})"
    if precision == "int8":
        raise ResnextError("--precision int8 needs OpenVINO or ONNX Runtime: pip install 'resnext[openvino]'")
    return None, f"no {' or '.join(order)} installed: eager PyTorch (pip install 'resnext[onnx]' for speed)"


# ---------------------------------------------------------------------------------------------------------------
# Cold start: what an export costs and saves


#: Before an export was measured on this machine its cost is estimated as the larger of these (measured quiet: ~190
#: eager images for both ResNeXt101 at 224 px and resnext_test at 32 px; ~1 s per million parameters, the trace and
#: the file's size, which dominate at small image sizes)
EXPORT_COST_IN_EAGER_IMAGES = 250
EXPORT_SECONDS_PER_MILLION_PARAMETERS = 1.2
#: speed-up of an exact runtime over eager fp32 assumed before one was measured here: the warm-cache goal on
#: AVX-512 (measured 2.4-3.0x there, 2.6x on AVX2: benchmarks/RESULTS.md)
ASSUMED_SPEEDUP = 1.8
#: an export is started only when it saves at least this many times its own estimated cost: with the assumed
#: speed-up, an export up to ~2x slower than estimated still keeps the job within 25% of eager
PAYBACK_MARGIN = 1.5


def export_pays_off(remaining: int, eager_seconds_per_image: float, export_seconds: float, speedup: float) -> bool:
    """Whether exporting before ``remaining`` images saves at least :data:`PAYBACK_MARGIN` times its cost."""
    saved = remaining * eager_seconds_per_image * (1.0 - 1.0 / max(speedup, 1.0))
    return saved >= PAYBACK_MARGIN * export_seconds


def _estimates(key: CacheKey, eager_seconds_per_image: float, parameters: int) -> tuple[float, float, str]:
    """Export seconds and speed-up for ``key``: measured earlier on this machine, else the assumptions above."""
    found = timings().get(timing_name(key))
    measured = found if isinstance(found, dict) else {}

    def number(name: str) -> float | None:
        value = measured.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            return float(value)
        return None

    export, speedup = number("export_seconds"), number("speedup")
    if export is None:
        estimate = max(
            EXPORT_COST_IN_EAGER_IMAGES * eager_seconds_per_image,
            EXPORT_SECONDS_PER_MILLION_PARAMETERS * parameters / 1e6,
        )
        return estimate, speedup or ASSUMED_SPEEDUP, "estimated"
    return export, speedup or ASSUMED_SPEEDUP, "measured earlier"


# ---------------------------------------------------------------------------------------------------------------
# Backends


def _load_entry(
    entry: Path, manifest: dict[str, Any], key: CacheKey, reused: bool, reason: str, threads: int | None
) -> AutoBackend:
    path = entry / manifest["model_file"]
    backend = create_backend(key.runtime, model_file=str(path), precision=key.precision, threads=threads)
    approximate = key.precision != "fp32" or not RUNTIMES[key.runtime].exact
    choice = AutoChoice(
        key.runtime,
        key.precision,
        str(path),
        reused,
        reason,
        manifest.get("parity", []),
        manifest.get("agreement") if approximate else None,
    )
    (logger.info if approximate or not reused else logger.debug)(choice.line())
    return AutoBackend(backend, choice)


@dataclass
class _Plan:
    """What the backend needs to build its entry later (a cold start)."""

    source: Any
    runtime: Runtime
    key: CacheKey
    entry: Path
    reason: str
    calibration_dir: str | None
    threads: int | None


def _plan(
    source: Any,
    precision: str,
    device: torch.device,
    calibration_dir: str | None,
    threads: int | None,
    pinned: str | None = None,
) -> _Plan | None:
    """The cache entry ``source`` runs from on this machine; None when auto runs eager PyTorch."""
    runtime, reason = choose_runtime(precision, device, pinned)
    if runtime is None:
        return None
    key = cache_key(
        source.model,
        arch=source.arch,
        image_size=source.image_size,
        runtime=runtime,
        precision=precision,
        calibration_dir=calibration_dir,
    )
    return _Plan(source, runtime, key, cache_dir() / key.folder, reason, calibration_dir, threads)


def _build(plan: _Plan) -> AutoBackend:
    manifest, reused = build_entry(plan.entry, plan.key, plan.source, plan.runtime, plan.calibration_dir, plan.threads)
    return _load_entry(plan.entry, manifest, plan.key, reused, plan.reason, plan.threads)


class ColdStartBackend(AutoBackend):
    """``--backend auto`` before its cache entry exists: eager PyTorch, switching to the exported runtime once an
    export pays for itself, or (no job size announced) once a background export is ready (see the module
    docstring). ``auto`` describes what runs now."""

    def __init__(self, plan: _Plan, eager: TorchBackend) -> None:
        reason = f"{plan.runtime.name} not in the cache yet"
        super().__init__(eager, AutoChoice("torch", plan.key.precision, reason=reason))
        self.plan, self.eager = plan, eager
        self._planned: int | None = None  # images the announced job still has to run
        self._decided = False
        self._eager_per_image: float | None = None  # measured on the batch that decided
        self._timed_after_switch = 0
        self._background: subprocess.Popen[bytes] | None = None
        self._stop: weakref.finalize | None = None
        self._lock = threading.Lock()  # a server calls from several threads: one decision, one switch

    def expect(self, images: int) -> None:
        """A job of ``images`` images starts: run eager unless exporting first pays (decided after its first
        batch, from that batch's measured time)."""
        if self.active is self.eager and not self._decided:
            self._planned = images

    def __call__(self, batch: Tensor) -> Tensor:
        return self._run(batch, lambda backend, x: backend(x))

    @property
    def name(self) -> str:
        return "auto"  # not settled: what runs may change between calls

    @property
    def device(self) -> torch.device:
        return self.eager.device

    @property
    def has_features(self) -> bool:
        return self.eager.has_features

    def features(self, batch: Tensor) -> Tensor:
        """Pooled features from the eager model: the cached file has none, so ``embed`` never waits for an export."""
        return self.eager.features(batch)

    def _run(self, batch: Tensor, run: Any) -> Tensor:
        with self._lock:
            if self.active is self.eager and not self._decided and self._planned is None:
                self._export_in_background()
            if self._background is not None and self._background.poll() is not None:
                self._adopt_background()
            active = self.active
        started = time.perf_counter()
        out = run(active, batch)
        seconds = time.perf_counter() - started
        with self._lock:
            if active is self.eager:
                if not self._decided and self._planned is not None:
                    self._decide(batch.shape[0], seconds)
            elif self._eager_per_image is not None and self._timed_after_switch < 2:
                self._timed_after_switch += 1  # the runtime's first batch warms it up: the second one is timed
                if self._timed_after_switch == 2:
                    record_timing(self.plan.key, speedup=self._eager_per_image / max(seconds / batch.shape[0], 1e-9))
        return out

    def _decide(self, done: int, seconds: float) -> None:
        self._decided = True
        assert self._planned is not None
        remaining, per_image = self._planned - done, seconds / max(done, 1)
        self._eager_per_image = per_image
        parameters = sum(p.numel() for p in self.eager.model.parameters())
        export, speedup, how = _estimates(self.plan.key, per_image, parameters)
        eager_left = remaining * per_image
        if export_pays_off(remaining, per_image, export, speedup):
            self._switch(
                f"a job of {self._planned} images: exporting first pays (eager ~{eager_left:.0f} s for the rest; "
                f"{how} export ~{export:.0f} s, runtime ~{speedup:.1f}x eager)"
            )
        else:
            self.auto.reason = (
                f"a job of {self._planned} images runs eager PyTorch: too small to repay the export to "
                f"{self.plan.runtime.name} ({how} ~{export:.0f} s; eager ~{eager_left:.0f} s for the rest); "
                "`resnext prepare` builds the cache ahead of time"
            )
            logger.info(self.auto.line())

    def _export_in_background(self) -> None:
        """No job size: run eager at once while ``resnext prepare`` builds the entry in a lower-priority process."""
        self._decided = True
        plan = self.plan
        try:
            plan.entry.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=plan.entry.parent, prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=".pth")
            with open(fd, "wb") as f:
                torch.save(self.eager.model.state_dict(), f)
        except OSError as exc:
            self.auto.reason = (
                f"cannot write the auto cache {plan.entry.parent}: {exc.strerror or exc}: running eager PyTorch "
                f"uncached (set ${CACHE_ENV} to a writable folder)"
            )
            logger.warning(self.auto.line())
            return
        command = [sys.executable, "-m", "resnext", "prepare", "--arch", plan.key.arch, "--weights", name]
        command += ["--image-size", str(plan.key.image_size), "--precision", plan.key.precision]
        command += ["--backend", plan.runtime.name]
        command += ["--calibration-dir", plan.calibration_dir] if plan.calibration_dir else []
        command += ["--threads", str(plan.threads)] if plan.threads else []
        env = {**os.environ, CACHE_ENV: str(plan.entry.parent)}
        self._background = subprocess.Popen(  # noqa: S603 - this interpreter, this package, our own arguments
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            preexec_fn=lambda: os.nice(10),  # noqa: PLW1509 - lower priority than the inference it runs beside
        )
        self._stop = weakref.finalize(self, _stop_background, self._background, Path(name))
        self.auto.reason = f"runs eager PyTorch while {plan.runtime.name} is exported in the background"
        logger.info("backend auto: no job size announced: %s (pid %d)", self.auto.reason, self._background.pid)

    def _adopt_background(self) -> None:
        assert self._background is not None and self._stop is not None
        code = self._background.returncode
        self._background = None
        self._stop()
        manifest = read_entry(self.plan.entry, self.plan.key) if code == 0 else None
        if manifest is None:
            self.auto.reason = f"the background export failed (exit status {code}): running eager PyTorch"
            logger.warning(self.auto.line())
            return
        loaded = _load_entry(self.plan.entry, manifest, self.plan.key, False, self.plan.reason, self.plan.threads)
        self.active, self.auto = loaded.active, loaded.auto

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a background export and switch to it (for callers that want the runtime from now on)."""
        process = self._background
        if process is not None:
            process.wait(timeout)
            with self._lock:
                if self._background is not None:
                    self._adopt_background()

    def close(self) -> None:
        """Stop a background export that is still running (also done when the backend is collected or at exit)."""
        if self._stop is not None:
            self._stop()

    def _switch(self, why: str) -> None:
        self._decided = True
        logger.info("backend auto: %s", why)
        try:
            backend = _build(self.plan)
        except CacheUnwritable as exc:
            self.auto.reason = f"{exc}: running eager PyTorch uncached (set ${CACHE_ENV} to a writable folder)"
            logger.warning(self.auto.line())
            return
        except ResnextError as exc:  # the export failed its parity check: the job goes on, eager
            self.auto.reason = f"the export failed ({exc}): running eager PyTorch"
            logger.warning(self.auto.line())
            return
        self.active, self.auto = backend.active, backend.auto


def _stop_background(process: subprocess.Popen[bytes], weights: Path) -> None:
    if process.poll() is None:
        process.terminate()  # its staging folder is swept by the next build (its process is gone)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    weights.unlink(missing_ok=True)


def prepare(
    source: Any,
    *,
    precision: str | None = None,
    runtime: str | None = None,
    device: str = "cpu",
    calibration_dir: str | None = None,
    threads: int | None = None,
) -> AutoBackend:
    """Build (or check) the cache entry ``--backend auto`` runs ``source`` from, now (``runtime`` names the runtime
    instead of auto's choice); return its backend (with ``auto``). Eager PyTorch (nothing to build) where auto
    does not export. Raises :class:`CacheUnwritable` when the cache cannot be written."""
    precision = precision or "fp32"
    plan = _plan(source, precision, resolve_device(device), calibration_dir, threads, runtime)
    if plan is None:
        reason = choose_runtime(precision, resolve_device(device), runtime)[1]
        eager = TorchBackend(source.model, device=device, precision=precision)
        return AutoBackend(eager, AutoChoice("torch", precision, reason=reason))
    manifest = read_entry(plan.entry, plan.key)
    if manifest is not None:
        return _load_entry(plan.entry, manifest, plan.key, True, plan.reason, threads)
    return _build(plan)


def auto_backend(
    model: torch.nn.Module | None = None,
    *,
    source: Any = None,
    device: str = "auto",
    precision: str | None = None,
    channels_last: bool = False,
    calibration_dir: str | None = None,
    threads: int | None = None,
) -> AutoBackend:
    """The backend ``--backend auto`` runs for ``source`` (a :class:`resnext.model.sources.ModelSource`; or ``model``,
    wrapped at 224 px): the cached export when the cache holds it, else a :class:`ColdStartBackend`, else eager
    PyTorch; its ``auto`` (:class:`AutoChoice`) says which and why."""
    from ..model.sources import source_from_model

    if source is None:
        if model is None:
            raise ResnextError("backend auto needs a model (weights) or --model-file")
        source = source_from_model(model)
    precision = precision or "fp32"
    dev = resolve_device(device)
    plan = _plan(source, precision, dev, calibration_dir, threads)
    if plan is not None and precision not in RUNTIMES["torch"].precisions:  # int8: no eager model to start with
        manifest = read_entry(plan.entry, plan.key)
        return _load_entry(plan.entry, manifest, plan.key, True, plan.reason, threads) if manifest else _build(plan)
    eager = TorchBackend(source.model, device=str(dev), precision=precision, channels_last=channels_last)
    if plan is None:
        choice = AutoChoice("torch", precision, reason=choose_runtime(precision, dev)[1])
        logger.debug(choice.line())
        return AutoBackend(eager, choice)
    manifest = read_entry(plan.entry, plan.key)
    if manifest is not None:
        return _load_entry(plan.entry, manifest, plan.key, True, plan.reason, threads)
    return ColdStartBackend(plan, eager)
