"""Numeric precision of training: bf16 autocast where the hardware runs it natively.

On CUDA the trainer has used mixed precision from the start (bf16 where supported, fp16
with a gradient scaler otherwise). On a CPU with native bf16 (Intel AMX or AVX512-BF16),
``torch.autocast("cpu", dtype=torch.bfloat16)`` runs convolutions through oneDNN's bf16
kernels; in 3D they are fastest on channels-last tensors (``torch.channels_last_3d``).
Without native bf16 the CPU would emulate it, slower than fp32, so ``auto`` keeps fp32 there.
Normalisation, softmax and the losses stay in fp32 under autocast (its fp32 op list), and
the weights and optimiser state stay fp32: only the convolution inputs are rounded.

``bench/throughput.py --precision`` measures the speed-up; the Dice at the same seed and
budget is in its docstring.
"""

from __future__ import annotations

import functools
import platform

import torch

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AMX-BF16 or AVX512-BF16, from
    ``/proc/cpuinfo``; torch's ``get_cpu_capability()`` reports AVX512 for both)."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BF16_CPU_FLAGS)
    except OSError:
        return False
    return False


def mixed_precision(precision: str, amp: bool, device: torch.device) -> bool:
    """Whether training autocasts: ``auto`` -> on CUDA when ``amp``, on CPU where bf16 is
    native; ``bf16`` -> always (bf16 autocast on CPU even if emulated); ``fp32`` -> never."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    return amp if device.type == "cuda" else cpu_supports_bf16()
