"""Divergence: a run whose losses or weights stop being finite must fail, never publish a model.

The losses are checked whenever the trainer writes a progress record (they are summed on
the device anyway, so the check costs no extra GPU synchronisation; at most 50 steps pass
between two checks), the weights before every checkpoint and before ``model.pt``.
"""

from __future__ import annotations

import math

import torch


class Diverged(RuntimeError):
    """Training produced NaN or infinite losses or weights; the message says what to try."""


def _advice(config) -> str:
    tips = [f"a lower learning rate (--lr {config.lr:g} now; try {config.lr / 10:g})"]
    if config.optimiser == "sgd":
        tips.append("--optimiser adamw")
    tips.append("a smaller --consistency")
    if config.amp:
        tips.append("--no-amp (on CUDA)")
    return "Try " + ", ".join(tips) + "."


def check_losses(losses: dict, iteration: int, config) -> None:
    """Raise :class:`Diverged` when a (summed) loss is NaN or infinite."""
    bad = [name for name, value in losses.items() if not math.isfinite(float(value))]
    if bad:
        raise Diverged(f"training diverged by iteration {iteration}: the loss {', '.join(map(repr, bad))} became "
                       f"{float(losses[bad[0]])} (not a finite number); no model was saved. {_advice(config)}")


def non_finite_tensors(state: dict) -> list[str]:
    """Names of floating-point tensors of ``state`` holding NaN or infinity."""
    return [name for name, tensor in state.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def check_weights(module: torch.nn.Module, iteration: int, config) -> None:
    """Raise :class:`Diverged` when a weight or buffer of ``module`` is NaN or infinite."""
    bad = non_finite_tensors(module.state_dict())
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise Diverged(f"training diverged by iteration {iteration}: weights {names} are NaN or infinite; "
                       f"no model was saved. {_advice(config)}")
