"""Numeric precision of training: bf16 autocast where the hardware runs it natively.

On CUDA the trainer has used mixed precision from the start (bf16 where supported, fp16
with a gradient scaler otherwise). On a CPU with native bf16 (Intel AMX or AVX512-BF16),
``torch.autocast("cpu", dtype=torch.bfloat16)`` runs convolutions through oneDNN's bf16
kernels; in 3D they are fastest on channels-last tensors (``torch.channels_last_3d``).
Without native bf16 the CPU would emulate it, slower than fp32, so ``auto`` keeps fp32 there.
Native is not enough: on an AMD EPYC with AVX512-BF16 (no AMX) oneDNN's bf16 convolutions gave
garbage gradients for the small spatial sizes at the bottom of a 3D U-Net, and every
budgeted 3D test run diverged. So the trainer uses bf16 on a CPU only after
:func:`bf16_disagreement` finds one pass of the run's own network and patch in agreement with
fp32 (``training.components.choose_precision``).
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


# --- a check of the bf16 kernels on the run's own network and patch ---------------------------
MIN_COSINE = 0.8
"""Each weight's gradient under bf16 autocast must point where its fp32 twin points, with a
random upstream gradient (the hardest case: its sums cancel, which magnifies rounding). With
correct kernels (oneDNN off) the lowest cosine over a network's weights was 0.88 (DynUNet 2D),
0.91 (ENet 3D, Attention U-Net 2D) and 0.97 to 0.98 (U-Net 2D and 3D, Swin-UNet 2D); with the
broken ones below, 0.00 to 0.09 for the 3D U-Net and 0.77 for ENet 3D."""
NEGLIGIBLE_GRADIENT = 1e-3
"""Weights whose fp32 gradient is below this share of the largest are not judged: their
rounding noise is all there is to compare. Only the output and the convolution and linear
weights (2 dimensions or more) are judged for direction: a bias or a norm's scale is a sum
over every voxel, which cancels to near zero (a bias just before an instance norm has a true
gradient of zero), so its direction is noise in either precision. Every gradient must be
finite."""


def bf16_disagreement(network: torch.nn.Module, example: torch.Tensor,
                      memory_format: torch.memory_format | None = None) -> str | None:
    """None when one forward and backward pass of ``network`` on ``example`` under CPU bf16
    autocast agrees with the fp32 pass; otherwise a sentence naming the worst tensor.

    Why: oneDNN's bf16 convolutions return garbage for small spatial sizes on some CPUs (seen
    on an AMD EPYC with AVX512-BF16, torch 2.13: weight gradients of 1e30 or NaN at 2 x 4 x 4
    voxels, the bottom of a U-Net on a 32 x 48 x 48 patch; pytorch/pytorch#163347). Training
    then diverges, or worse, learns from wrong gradients without a NaN. The pass costs about
    two training steps.
    """
    cosines = bf16_cosines(network, example, memory_format)
    broken = [name for name, cosine in cosines.items() if cosine != cosine]  # NaN: a non-finite value
    if broken:
        return f"bf16 gives non-finite values in {_what(broken[0])}"
    name, cosine = min(cosines.items(), key=lambda item: item[1], default=("logits", 1.0))
    if cosine < MIN_COSINE:
        return f"bf16 disagrees with fp32 in {_what(name)} (cosine {cosine:.2f}, expected {MIN_COSINE} or more)"
    return None


def first_bf16_disagreement(networks: dict[str, torch.nn.Module], example: torch.Tensor,
                            memory_format: torch.memory_format | None = None) -> str | None:
    """:func:`bf16_disagreement` over named networks (a method's ``precision_probes``): the
    first problem found, prefixed with its network's name, or None when every one agrees."""
    for name, network in networks.items():
        problem = bf16_disagreement(network, example, memory_format)
        if problem is not None:
            return f"{name}: {problem}"
    return None


def bf16_cosines(network: torch.nn.Module, example: torch.Tensor,
                 memory_format: torch.memory_format | None = None) -> dict[str, float]:
    """Cosine between the bf16-autocast and the fp32 pass of ``network`` on ``example``: for
    the output and each judged weight gradient (:data:`NEGLIGIBLE_GRADIENT`); NaN where the
    bf16 pass gave a non-finite value. Runs on a copy in eval mode (no dropout, so both passes
    compute the same function), with one seeded random upstream gradient."""
    import copy  # noqa: PLC0415

    probe = copy.deepcopy(network).eval()
    if memory_format is not None:
        probe, example = probe.to(memory_format=memory_format), example.to(memory_format=memory_format)
    upstream, results = None, {}
    for mixed in (False, True):
        probe.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            logits = probe(example).float()
        if upstream is None:
            upstream = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
        (logits * upstream).sum().backward()
        results[mixed] = {"logits": logits.detach(),
                          **{name: p.grad.detach().clone() for name, p in probe.named_parameters() if p.grad is not None}}
    largest = max((float(g.abs().max()) for name, g in results[False].items() if name != "logits"), default=0.0)
    cosines = {}
    for name, exact in results[False].items():
        mixed = results[True][name]
        if not torch.isfinite(mixed).all():
            cosines[name] = float("nan")
        elif name == "logits" or (exact.dim() >= 2 and float(exact.abs().max()) > NEGLIGIBLE_GRADIENT * largest):
            cosines[name] = float(torch.nn.functional.cosine_similarity(mixed.flatten(), exact.flatten(), dim=0))
    return cosines


def _what(name: str) -> str:
    return "the network's output" if name == "logits" else f"the gradient of {name}"
