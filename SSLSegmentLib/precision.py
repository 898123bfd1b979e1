"""Numeric precision of training: bf16 autocast where the hardware runs it natively.

On CUDA the trainer has used mixed precision from the start (bf16 where supported, fp16
with a gradient scaler otherwise). On a CPU with native bf16 (Intel AMX or AVX512-BF16),
``torch.autocast("cpu", dtype=torch.bfloat16)`` runs convolutions through oneDNN's bf16
kernels; in 3D they are fastest on channels-last tensors (``torch.channels_last_3d``).
Without native bf16 the CPU would emulate it, slower than fp32, so ``auto`` keeps fp32 there.
Normalisation, softmax and the losses stay in fp32 under autocast (its fp32 op list), and
the weights and optimiser state stay fp32: only the convolution inputs are rounded.

Measured on this project's CPU (AMX, one thread, a machine shared with other jobs):
``bench/throughput.py --precision-compare`` on LA (mean_teacher, small U-Net, fast-cpu preset:
1.865 mm, patch 32 x 48 x 64, batch 2 + 2): bf16 1.28 times faster in CPU time per iteration
(median of 4 alternated pairs, 1.27 to 1.69; wall-clock 1.36, noisier). Dice at the same
seed and iterations (the demo's phantoms, tiny U-Net, 150 iterations, seeds 7, 8, 9): fp32
and bf16 agree to the third decimal, 0.631 / 0.631 supervised-only and 0.692 / 0.692 BCP.
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
