"""`resnext classify` with default flags (``--backend auto``) vs eager PyTorch fp32, over 256 images, same run.

    python benchmarks/auto_classify.py                      # resnext101_32x4d, 224 px, 256 images: ~10 min on 2 cores
    python benchmarks/auto_classify.py --arch resnext_test --images 64 --rounds 1     # smoke
    python benchmarks/auto_classify.py --cold-start --sizes 3,256    # cold start: empty cache, auto vs torch

``--cold-start`` measures whole jobs, predictor construction included, each auto job on an empty cache of its
own: for each size, ``--backend torch`` then ``--backend auto`` (the order alternates between sizes); then the
cache is built once (``resnext prepare``'s :func:`resnext.auto.prepare`, timed: the export's own cost) and the
largest size runs again on the warm cache, auto vs torch. Each auto job must stay within 25% + 5 s of torch.

Both predictors run through :func:`resnext.predict.classify_sources`, the code path of ``resnext classify``
(batch 16, 2 decoding workers: the CLI defaults). The auto backend's one-time export happens before timing and
is reported separately (later runs load it from the cache). Passes alternate (eager, auto, eager, auto, ...) so
a change in the machine's load hits both; the table reports the median pass. Outputs are compared on every
image: the largest difference of the top-5 probabilities must stay within 1e-4.
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
    from resnext.export import preprocess
    from resnext.images import sample_images
    from resnext.predict import Predictor, classify_sources
    from resnext.sources import load_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnext101_32x4d")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="timed passes per predictor (default: %(default)s)")
    parser.add_argument("--cold-start", action="store_true", help="whole jobs on an empty cache, then a warm one")
    parser.add_argument("--sizes", default="3,256", help="--cold-start job sizes (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.cold_start:
        cold_start(args.arch, [int(n) for n in args.sizes.split(",")])
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


def cold_start(arch: str, sizes: list[int]) -> None:
    import logging
    import os

    import torch

    from resnext import auto
    from resnext.bench.inference import machine_info, set_bn_statistics
    from resnext.export import preprocess
    from resnext.images import sample_images
    from resnext.predict import Predictor, classify_sources
    from resnext.sources import load_source

    logging.basicConfig(level=logging.INFO, format="  resnext: %(message)s")
    os.environ.pop(auto.PIN_ENV, None)
    folder = Path(tempfile.mkdtemp(prefix="auto-cold-"))
    try:
        sources = _photos(folder, max(sizes))
        source = load_source("random", arch=arch)
        set_bn_statistics(source.model, preprocess(sample_images(), source.image_size))

        def job(backend: str, n: int, cache: Path) -> tuple[float, list, str]:
            os.environ[auto.CACHE_ENV] = str(cache)
            t0 = time.perf_counter()
            predictor = Predictor.from_source(source, backend=backend)
            results = list(classify_sources(predictor, sources[:n], topk=5, batch_size=16, workers=2, progress=False))
            seconds = time.perf_counter() - t0
            return seconds, results, getattr(predictor.backend, "auto", None) and predictor.backend.auto.line()

        def diff(a: list, b: list) -> float:
            return max(abs(p.probability - q.probability) for x, y in zip(a, b) for p, q in zip(x, y))

        rows = []
        for i, n in enumerate(sizes):
            runs = {}
            for backend in ("torch", "auto") if i % 2 == 0 else ("auto", "torch"):
                runs[backend] = job(backend, n, folder / f"cache-{n}-{backend}")  # each auto job: an empty cache
                print(f"  cold, {n} images, {backend}: {runs[backend][0]:.1f} s", flush=True)
            rows.append((f"empty cache, {n} images", n, runs))
        warm = folder / "cache-warm"
        os.environ[auto.CACHE_ENV] = str(warm)
        t0 = time.perf_counter()
        auto.prepare(source)
        export_seconds = time.perf_counter() - t0
        print(f"  prepare (export + parity check): {export_seconds:.1f} s", flush=True)
        n, runs = max(sizes), {}
        for backend in ("auto", "torch"):
            runs[backend] = job(backend, n, warm)
            print(f"  warm, {n} images, {backend}: {runs[backend][0]:.1f} s", flush=True)
        rows.append((f"warm cache, {n} images", n, runs))

        print("\n| job | torch s | auto s | auto / torch | bound 1.25 x torch + 5 s | auto ran | max top-5 diff |")
        print("|---|---|---|---|---|---|---|")
        for name, _n, runs in rows:
            (t, tr, _), (a, ar, line) = runs["torch"], runs["auto"]
            verdict = "PASS" if a <= 1.25 * t + 5 else "FAIL"
            ran = " ".join(line.removeprefix("backend auto: ").split()[:2]) if line else "?"
            print(f"| {name} | {t:.1f} | {a:.1f} | {a / t:.2f} | {verdict} | {ran} | {diff(tr, ar):.1e} |")
        machine = machine_info()
        print(
            f"\n{arch}, batch 16, 2 decoding workers, {machine['cpu']} [{' '.join(machine['isa'])}], "
            f"{torch.get_num_threads()} threads; export (prepare) {export_seconds:.1f} s"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
