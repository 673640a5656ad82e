"""What this machine computes natively: the one place that reads CPU features (and a GPU's capability).

Speed, and whether a step finishes at all, depends on them: a CPU with AVX-512 BF16 or AMX runs a bf16 GEMM several
times faster than fp32, while an AVX2-only CPU emulates bf16 about 50x slower than fp32. Every decision by CPU
feature (which GEMM peaks to time at full size, what a benchmark record calls the machine) goes through
:func:`cpu_features` and :func:`native_precisions`, never through a printed CPU name.

``RESNEXT_CPU_FEATURES_MASK`` hides detected features, so a machine can be made to take another machine's paths:
comma-separated ``fnmatch`` patterns matched against the ``/proc/cpuinfo`` flag names, e.g. AVX2-only::

    RESNEXT_CPU_FEATURES_MASK='avx512*,amx*,avx_vnni*' ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 resnext ...

The mask changes this package's decisions only; ``ONEDNN_MAX_CPU_ISA`` and ``ATEN_CPU_CAPABILITY`` make oneDNN and
PyTorch's own kernels match (CI runs the quick test tier so).
"""

from __future__ import annotations

import fnmatch
import functools
import os
import platform
from pathlib import Path

import torch

FEATURES_MASK_ENV = "RESNEXT_CPU_FEATURES_MASK"

#: CPU features that decide which precisions have fast kernels (recorded with every benchmark result)
ISA_FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")

#: a precision runs natively on a CPU with any of these features (int8: dot-product instructions)
NATIVE_CPU_FEATURES = {
    "bf16": ("avx512_bf16", "amx_bf16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
}

#: a precision runs natively on a CUDA GPU of at least this compute capability (tensor cores)
NATIVE_CUDA_CAPABILITY = {"fp32": (0, 0), "fp16": (7, 0), "int8": (7, 5), "bf16": (8, 0)}


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(CPU model name, every flag) from ``/proc/cpuinfo``; no flags where it cannot be read (not Linux)."""
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, frozenset()
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = frozenset(line.split(":", 1)[1].split())
            break
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def features_mask() -> tuple[str, ...]:
    """The patterns of ``RESNEXT_CPU_FEATURES_MASK`` (lower case), empty when unset."""
    return tuple(p.strip().lower() for p in os.environ.get(FEATURES_MASK_ENV, "").split(",") if p.strip())


def cpu_features() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo`` names) minus those hidden by ``RESNEXT_CPU_FEATURES_MASK``."""
    mask = features_mask()
    return frozenset(f for f in _cpuinfo()[1] if not any(fnmatch.fnmatchcase(f, p) for p in mask))


def native_precisions(device: str | torch.device = "cpu") -> frozenset[str]:
    """The precisions ``device`` computes natively; the others are emulated (far slower) or unsupported.

    CPU: fp32 always; bf16 with AVX-512 BF16 or AMX-BF16; int8 with VNNI (AVX-512 or AVX) or AMX-INT8 dot products.
    CUDA: by compute capability (:data:`NATIVE_CUDA_CAPABILITY`).
    """
    device = torch.device(device)
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        return frozenset(p for p, least in NATIVE_CUDA_CAPABILITY.items() if capability >= least)
    features = cpu_features()
    return frozenset({"fp32"} | {p for p, needs in NATIVE_CPU_FEATURES.items() if features & set(needs)})
