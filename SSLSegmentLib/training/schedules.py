"""Learning-rate schedules."""

from __future__ import annotations


def poly_lr(base_lr: float, iteration: int, total: int, power: float = 0.9) -> float:
    """``base * (1 - t / T) ** 0.9``, the poly schedule of DeepLab and nnU-Net (SSL4MIS)."""
    return base_lr * (1.0 - min(iteration, total) / max(total, 1)) ** power

