"""Prepared GPU check: run once on a CUDA machine, paste its output into benchmarks/RESULTS.md.

    pip install --no-deps -e . && python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --only inference --cpu-smoke     # CPU: checks the inference section runs
    python benchmarks/gpu_check.py --only training --cpu-smoke      # CPU: checks the training section runs

Sections: training (AMP + channels_last img/s at the largest batch that fits) and inference (eager AMP
reference vs channels_last + torch.compile vs TensorRT when importable, each parity-checked).
"""

from __future__ import annotations

TRAINING_GOAL_IPS = 2500.0  # our goal on one H200; NVIDIA publishes 1,211 img/s AMP on one A100-80GB


def check_training(cpu_smoke: bool = False) -> bool | None:
    """Training img/s of resnext101_32x4d, AMP + channels_last, synthetic data, at the largest batch that fits.

    Tries batches 256, 192, 128, 64 with bf16 autocast (OOM -> next), then fp16 + GradScaler and bf16 +
    torch.compile at the batch found; prints a table and PASS/FAIL against 2,500 img/s. Returns whether the goal
    is met; None when skipped. ``cpu_smoke`` runs the same code with ``resnext_test`` at 32 px on the CPU.
    """
    import gc
    import time

    import torch

    from resnext.bench.training import SpeedSetting, Workload, measure_training_speed

    print("== training ==", flush=True)
    if not cpu_smoke and not torch.cuda.is_available():
        print("training: no CUDA GPU here: skipped (run with --cpu-smoke to check the script itself)")
        return None
    started = time.perf_counter()
    device = "cpu" if cpu_smoke else "cuda"
    arch, size, batches, warmup, steps = (
        ("resnext_test", 32, (4, 2), 1, 1) if cpu_smoke else ("resnext101_32x4d", 224, (256, 192, 128, 64), 5, 20)
    )
    goal = 0.01 if cpu_smoke else TRAINING_GOAL_IPS
    rows: list[tuple[str, int, str]] = []

    def attempt(setting: SpeedSetting, batch: int) -> dict | None:
        try:
            r = measure_training_speed(arch, setting, Workload(batch, size, warmup, steps, device))
        except torch.cuda.OutOfMemoryError:
            rows.append((setting.name, batch, "out of memory"))
            r = None
        except Exception as exc:  # e.g. compile unavailable: report, keep going
            rows.append((setting.name, batch, f"failed: {type(exc).__name__}: {str(exc)[:100]}"))
            r = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if r is not None:
            memory = f", peak {r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else ""
            rows.append(
                (
                    setting.name,
                    batch,
                    f"{r['img_per_s']:.1f} img/s ({r['ms_per_step']:.1f} ms/step{memory}, loss {r['final_loss']:.3f})",
                )
            )
            if r["final_loss"] != r["final_loss"]:  # NaN
                rows[-1] = (setting.name, batch, rows[-1][2] + " NaN LOSS")
                return None
        print(f"  {rows[-1][0]} batch {rows[-1][1]}: {rows[-1][2]}", flush=True)
        return r

    bf16 = SpeedSetting("bf16 autocast + channels_last", "bf16", "nhwc")
    best = None
    for batch in batches:
        best = attempt(bf16, batch)
        if best is not None:
            break
    results = [best] if best is not None else []
    if best is not None:
        batch = best["batch_size"]
        for setting in (
            SpeedSetting("fp16 + GradScaler + channels_last", "fp16", "nhwc"),
            SpeedSetting("bf16 + channels_last + compile", "bf16", "nhwc", compile=True),
        ):
            if setting.compile and cpu_smoke:
                continue  # inductor's C++ build takes minutes on 2 cores
            if time.perf_counter() - started > 120:
                rows.append((setting.name, batch, "skipped (time budget)"))
                continue
            r = attempt(setting, batch)
            if r is not None:
                results.append(r)
    print(f"{'setting':36} {'batch':>5}  result")
    for name, batch, text in rows:
        print(f"{name:36} {batch:5d}  {text}")
    top = max(results, key=lambda r: r["img_per_s"]) if results else None
    passed = top is not None and top["img_per_s"] >= goal
    device_name = "CPU smoke, numbers meaningless" if cpu_smoke else torch.cuda.get_device_name()
    best_text = f"{top['setting']} at batch {top['batch_size']}: {top['img_per_s']:.0f} img/s" if top else "nothing ran"
    print(
        f"{'PASS' if passed else 'FAIL'}: training {best_text} (goal >= {goal:g} img/s; NVIDIA 1x A100-80GB AMP: "
        f"1211 img/s) [{arch}, {size} px, synthetic data, {device_name}, {time.perf_counter() - started:.0f} s]"
    )
    return passed


def check_inference(cpu_smoke: bool = False) -> bool | None:
    """Inference img/s at batch 1/64/256: eager AMP (reference) vs AMP + channels_last + torch.compile
    (mode "reduce-overhead": CUDA graphs) vs TensorRT fp16; each parity-checked against fp32 eager.

    Returns whether the goal (best >= 2x the reference at batch 256, every variant close to fp32) is met; None when
    skipped. The CPU smoke run's goal is every variant running and staying close to fp32 (speed is not checked).
    ``cpu_smoke`` runs the same code on the CPU with ``resnext_test`` at 32 px (bf16 autocast, compile with the
    tracing-only "eager" backend, no TensorRT) to prove the script works; its numbers mean nothing.
    The model has random weights (no network on GPU machines) with batch-norm statistics from the sample photos,
    so top-1 agreement is noisier than with trained weights: compare each row with the eager AMP row's.
    """
    import importlib.util
    import tempfile
    import time
    from pathlib import Path

    import torch

    from resnext.bench.inference import set_bn_statistics
    from resnext.export.driver import ExportConfig, _metadata, preprocess, write_onnx, write_tensorrt
    from resnext.images import sample_images
    from resnext.model.factory import create_model

    print("== inference ==", flush=True)
    if not cpu_smoke and not torch.cuda.is_available():
        print("inference: no CUDA GPU here: skipped (run with --cpu-smoke to check the script itself)")
        return None
    started = time.perf_counter()
    device = torch.device("cpu" if cpu_smoke else "cuda")
    arch, size, batch_sizes = ("resnext_test", 32, (1, 4)) if cpu_smoke else ("resnext101_32x4d", 224, (1, 64, 256))
    amp_dtype = torch.bfloat16 if cpu_smoke else torch.float16
    iters = 3 if cpu_smoke else 20
    goal_batch = batch_sizes[-1]

    images = preprocess(sample_images(), size)
    torch.manual_seed(0)  # the same random model every run, so the smoke run's parity check is repeatable
    model = create_model(arch)  # random weights: speed does not depend on them; BN statistics from real photos
    set_bn_statistics(model, images)
    model = model.eval().to(device)
    batches = {n: images.repeat(n // len(images) + 1, 1, 1, 1)[:n].to(device) for n in batch_sizes}
    torch.backends.cudnn.benchmark = True

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def reference_fp32(x: torch.Tensor) -> torch.Tensor:
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            return model(x).float()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    def amp(fn):
        @torch.inference_mode()
        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=amp_dtype):
                return fn(x).float()

        return run

    model_cl = create_model(arch).to(device, memory_format=torch.channels_last).eval()
    model_cl.load_state_dict(model.state_dict())
    # Batch 1 compiles a static graph, the next size a dynamic-batch one that the rest reuse (CUDA graphs are
    # recorded per shape). The smoke run only traces (backend "eager"): inductor's C++ build takes minutes on 2 cores.
    compiled = (
        torch.compile(model_cl, backend="eager") if cpu_smoke else torch.compile(model_cl, mode="reduce-overhead")
    )
    variants = {
        "eager AMP (reference)": amp(model),
        "AMP + channels_last + compile": amp(lambda x: compiled(x.contiguous(memory_format=torch.channels_last))),
    }
    notes = []
    if cpu_smoke:
        notes.append("TensorRT: skipped (cpu smoke)")
    elif importlib.util.find_spec("tensorrt") is None:
        notes.append("TensorRT: skipped (the tensorrt package is not importable here)")
    else:
        from resnext.runtime.backends import TensorRTBackend

        tmp = Path(tempfile.mkdtemp())
        config = ExportConfig(
            "tensorrt", str(tmp / "m.engine"), arch=arch, image_size=size, batch_range=(1, max(batch_sizes))
        )
        t0 = time.perf_counter()
        write_onnx(model.cpu(), tmp / "m.onnx", config, _metadata(config, model, "fp32"))
        model.to(device)
        write_tensorrt(tmp / "m.onnx", tmp / "m.engine", config, "fp16", _metadata(config, model, "fp16"))
        notes.append(f"TensorRT fp16 engine built in {time.perf_counter() - t0:.0f} s (profile 1..{max(batch_sizes)})")
        variants["TensorRT fp16"] = TensorRTBackend(tmp / "m.engine")

    rows = []
    for name, fn in variants.items():
        for n in batch_sizes:
            x = batches[n]
            t0 = time.perf_counter()
            out = fn(x)  # first call: compiles / records CUDA graphs
            for _ in range(2):
                out = fn(x)
            sync()
            warm = time.perf_counter() - t0
            ref = reference_fp32(x).cpu()
            out = out.float().cpu()
            agree = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
            diff = float((out - ref).abs().max())
            sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(x)
            sync()
            rows.append((name, n, n * iters / (time.perf_counter() - t0), agree, diff, warm))
            print(f"  {name} batch {n}: {rows[-1][2]:.0f} img/s (warm-up {warm:.1f} s)", flush=True)

    reference = {n: ips for name, n, ips, *_ in rows if name.startswith("eager")}
    print(f"{'variant':32} {'batch':>5} {'img/s':>9} {'x ref':>6} {'top-1 agree':>11} {'max abs diff':>12}")
    for name, n, ips, agree, diff, _ in rows:
        print(f"{name:32} {n:5d} {ips:9.1f} {ips / reference[n]:6.2f} {100 * agree:10.1f}% {diff:12.3e}")
    best_name, _, best, *_ = max((r for r in rows if r[1] == goal_batch), key=lambda r: r[2])
    ratio = best / reference[goal_batch]
    # Every variant must have run at every batch size with finite logits whose top-1 mostly agrees with fp32 (random
    # weights: near-ties may flip, so 2 of 3 photos; the logit diff is printed, not judged: bf16 on a random network
    # differs by up to ~40% of the logits' size). The CPU smoke run checks that and not speed (goal ratio 0).
    faithful = len(rows) == len(variants) * len(batch_sizes) and all(
        diff == diff and diff < float("inf") and agree >= 0.66 for *_, agree, diff, _ in rows
    )
    if not faithful:
        notes.append("a variant is missing, gave non-finite logits or agrees with fp32 on less than 2/3 of the photos")
    passed = faithful and ratio >= (0.0 if cpu_smoke else 2.0)
    device_name = "CPU smoke, numbers meaningless" if cpu_smoke else torch.cuda.get_device_name()
    for note in notes:
        print(f"note: {note}")
    print(
        f"{'PASS' if passed else 'FAIL'}: best at batch {goal_batch} is {best_name} with {ratio:.2f}x the eager AMP "
        f"reference (goal >= {'0x, smoke' if cpu_smoke else '2x'}; every variant finite and agreeing with fp32: "
        f"{faithful}) [{arch}, {size} px, {device_name}, {time.perf_counter() - started:.0f} s]"
    )
    return passed


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["training", "inference"], help="run one section")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run on the CPU with a tiny model: checks the script, measures nothing"
    )
    args = parser.parse_args(argv)
    if args.only != "inference":
        check_training(cpu_smoke=args.cpu_smoke)
    if args.only != "training":
        check_inference(cpu_smoke=args.cpu_smoke)


if __name__ == "__main__":
    main()
