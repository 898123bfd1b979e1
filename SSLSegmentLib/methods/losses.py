"""Losses shared by the methods, built on MONAI where MONAI has them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

_dice_losses: dict[tuple[int, bool], DiceLoss] = {}


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Soft Dice over all classes (background included), ``target`` as class indices
    ``(B, 1, *spatial)``: MONAI's DiceLoss on probabilities."""
    key = (num_classes, True)
    if key not in _dice_losses:
        _dice_losses[key] = DiceLoss(to_onehot_y=True, softmax=False, include_background=True)
    return _dice_losses[key](probabilities, target)


def supervised_loss(logits: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``0.5 * (cross-entropy + soft Dice)``, the SSL4MIS supervised loss."""
    ce = F.cross_entropy(logits, label[:, 0].long())
    dice = soft_dice_loss(torch.softmax(logits, dim=1), label, num_classes)
    return 0.5 * (ce + dice)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the two softmax maps (Mean Teacher's consistency)."""
    return F.mse_loss(torch.softmax(student_logits, dim=1), torch.softmax(teacher_logits, dim=1))
