"""`resnext classify` with default flags (``--backend auto``) vs eager PyTorch fp32, over 256 images, same run.

    python benchmarks/auto_classify.py                      # resnext101_32x4d, 224 px, 256 images: ~10 min on 2 cores
    python benchmarks/auto_classify.py --arch resnext_test --images 64 --rounds 1     # smoke
    python benchmarks/auto_classify.py --cold-start --small 3 --large 400 --warm 96   # ~25 min on 2 loaded cores

``--cold-start`` measures whole jobs, predictor construction included, ``--backend auto`` against
``--backend torch`` on the same images: a small job on an empty cache (nothing known about exports here); the
cache built once (``resnext prepare``'s :func:`resnext.inference.auto.prepare`, timed: the export's own cost); a large
job on an empty cache that knows that export time (a second model on this machine); a job on the warm cache. Each auto
job must stay within 25% + 5 s of torch.

Both predictors run through :func:`resnext.inference.predict.classify_sources`, the code path of ``resnext classify``
(batch 16, 2 decoding workers: the CLI defaults). The auto backend's one-time export is built first (``resnext
prepare``), before timing, and reported separately as setup (later runs load it from the cache). Passes alternate
(eager, auto, eager, auto, ...) so a change in the machine's load hits both; the table reports the median pass. Outputs
are compared on every image: the largest difference of the top-5 probabilities must stay within 1e-4.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import torch

    from resnext.bench.inference import machine_info, set_bn_statistics
    from resnext.export.driver import preprocess
    from resnext.images import sample_images
    from resnext.inference.auto import prepare
    from resnext.inference.predict import Predictor, classify_sources
    from resnext.model.sources import load_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnext101_32x4d")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="timed passes per predictor (default: %(default)s)")
    parser.add_argument("--cold-start", action="store_true", help="whole jobs on an empty cache, then a warm one")
    parser.add_argument("--small", type=int, default=3, help="--cold-start small job (default: %(default)s)")
    parser.add_argument("--large", type=int, default=400, help="--cold-start large job (default: %(default)s)")
    parser.add_argument("--warm", type=int, default=96, help="--cold-start warm-cache job (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.cold_start:
        cold_start(args.arch, args.small, args.large, args.warm)
        return

    folder = Path(tempfile.mkdtemp(prefix="auto-classify-"))
    try:
        photos = sample_images()
        for i in range(args.images):  # copies of the bundled photos: decoding cost like real JPEGs
            shutil.copyfile(photos[i % len(photos)], folder / f"{i:04d}{Path(photos[i % len(photos)]).suffix}")
        sources = sorted(str(p) for p in folder.iterdir())
        source = load_source("random", arch=args.arch)
        set_bn_statistics(source.model, preprocess(photos, source.image_size))
        started = time.perf_counter()
        prepare(source)  # the cache entry `resnext prepare` builds; without it auto starts eager (see --cold-start)
        auto = Predictor.from_source(source)  # the default: backend "auto"
        setup = time.perf_counter() - started
        eager = Predictor.from_source(source, backend="torch")
        print(f"auto chose: {auto.backend.auto.line()} (setup {setup:.0f} s)", flush=True)

        def run(predictor: Predictor) -> tuple[float, list]:
            t0 = time.perf_counter()
            results = list(classify_sources(predictor, sources, topk=5, batch_size=16, workers=2, progress=False))
            return time.perf_counter() - t0, results

        times: dict[str, list[float]] = {"eager fp32 (reference)": [], "auto (default)": []}
        outputs = {}
        for r in range(args.rounds):
            for name, predictor in (("eager fp32 (reference)", eager), ("auto (default)", auto)):
                seconds, outputs[name] = run(predictor)
                times[name].append(seconds)
                print(f"  round {r + 1} {name}: {len(sources) / seconds:.2f} img/s", flush=True)
        diff = max(
            abs(p.probability - q.probability)
            for a, b in zip(*outputs.values())
            for p, q in zip(a.predictions, b.predictions)
        )
        same_top1 = all(a.predictions[0].index == b.predictions[0].index for a, b in zip(*outputs.values()))
        reference = len(sources) / statistics.median(times["eager fp32 (reference)"])
        print(f"\n| predictor | img/s (median of {args.rounds}) | x eager |")
        print("|---|---|---|")
        for name, t in times.items():
            ips = len(sources) / statistics.median(t)
            print(f"| {name} | {ips:.2f} | {ips / reference:.2f} |")
        machine = machine_info()
        print(
            f"\n{args.arch}, {args.images} images, batch 16, 2 workers, {machine['cpu']} "
            f"[{' '.join(machine['isa'])}], {torch.get_num_threads()} threads; max top-5 probability difference "
            f"{diff:.2e} (limit 1e-4): {'PASS' if diff <= 1e-4 and same_top1 else 'FAIL'}"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _photos(folder: Path, count: int) -> list[str]:
    """``count`` copies of the bundled photos in ``folder``: decoding cost like real JPEGs."""
    from resnext.images import sample_images

    photos = sample_images()
    for i in range(count):
        shutil.copyfile(photos[i % len(photos)], folder / f"{i:04d}{Path(photos[i % len(photos)]).suffix}")
    return sorted(str(p) for p in folder.iterdir())


def cold_start(arch: str, small: int, large: int, warm_size: int) -> None:
    import logging
    import os

    import torch

    from resnext.bench.inference import machine_info, set_bn_statistics
    from resnext.export.driver import preprocess
    from resnext.images import sample_images
    from resnext.inference import auto, auto_cache
    from resnext.inference.predict import Predictor, classify_sources
    from resnext.model.sources import load_source

    logging.basicConfig(level=logging.INFO, format="  resnext: %(message)s")
    os.environ.pop(auto.PIN_ENV, None)
    folder = Path(tempfile.mkdtemp(prefix="auto-cold-"))
    try:
        sources = _photos(folder, max(small, large, warm_size))
        source = load_source("random", arch=arch)
        set_bn_statistics(source.model, preprocess(sample_images(), source.image_size))

        def job(backend: str, n: int, cache: Path) -> tuple[float, list, str]:
            os.environ[auto.CACHE_ENV] = str(cache)
            t0 = time.perf_counter()
            predictor = Predictor.from_source(source, backend=backend)
            results = list(classify_sources(predictor, sources[:n], topk=5, batch_size=16, workers=2, progress=False))
            seconds = time.perf_counter() - t0
            chosen = predictor.backend.auto.line() if isinstance(predictor.backend, auto.AutoBackend) else ""
            return seconds, results, chosen

        def pair(name: str, n: int, cache: Path, order: tuple[str, str]) -> tuple[str, dict]:
            runs = {}
            for backend in order:
                runs[backend] = job(backend, n, cache)
                print(f"  {name}, {backend}: {runs[backend][0]:.1f} s", flush=True)
            return name, runs

        rows = [pair(f"empty cache, {small} images", small, folder / "cache-small", ("torch", "auto"))]
        built = folder / "cache-built"
        os.environ[auto.CACHE_ENV] = str(built)
        t0 = time.perf_counter()
        auto.prepare(source)
        export_seconds = time.perf_counter() - t0
        print(f"  prepare (export + parity check): {export_seconds:.1f} s", flush=True)
        cold = folder / "cache-large"  # no entry, but this machine's export time is known (from prepare above)
        cold.mkdir()
        shutil.copyfile(built / auto_cache.TIMINGS, cold / auto_cache.TIMINGS)
        rows.append(pair(f"empty cache (export time known), {large} images", large, cold, ("auto", "torch")))
        rows.append(pair(f"warm cache, {warm_size} images", warm_size, built, ("torch", "auto")))

        print("\n| job | torch s | auto s | auto / torch | within 1.25 x torch + 5 s | auto ran | max top-5 diff |")
        print("|---|---|---|---|---|---|---|")
        for name, runs in rows:
            (t, tr, _), (a, ar, line) = runs["torch"], runs["auto"]
            verdict = "PASS" if a <= 1.25 * t + 5 else "FAIL"
            ran = " ".join(line.removeprefix("backend auto: ").split()[:2]).rstrip(";") if line else "?"
            diff = max(abs(p.probability - q.probability) for x, y in zip(tr, ar) for p, q in zip(x, y))
            print(f"| {name} | {t:.1f} | {a:.1f} | {a / t:.2f} | {verdict} | {ran} | {diff:.1e} |")
        machine = machine_info()
        print(
            f"\n{arch}, batch 16, 2 decoding workers, {machine['cpu']} [{' '.join(machine['isa'])}], "
            f"{torch.get_num_threads()} threads; export (prepare) {export_seconds:.1f} s"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
