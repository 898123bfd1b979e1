"""Losses shared by the methods, built on MONAI where MONAI has them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

_dice_losses: dict[tuple[int, bool], DiceLoss] = {}

DICE_OVER = ("sample", "batch")
"""Where a soft Dice sums its voxels before the ratio (``--method-option dice_over=...``): per
image, then the mean over images and classes (``"sample"``, MONAI's default), or over the whole
batch at once (``"batch"``, SSL4MIS's and BCP's ``DiceLoss``: a class absent from one image
costs nothing there, and a few voxels of it predicted there cost little). Measured (stop 29 of
``bench/results/label_efficiency_after_reference_settings.md``, ACDC, the same labelled batches,
seeds 1337 and 1338): over the batch, supervised-only 0.642 and 0.682 (per image 0.700, 0.674),
BCP 0.741 and 0.738 (0.772, 0.781), fully supervised 0.821 and 0.811 (0.815, 0.819); so per
image stays the default."""


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, num_classes: int,
                   batch: bool = False) -> torch.Tensor:
    """Soft Dice over all classes (background included), ``target`` as class indices
    ``(B, 1, *spatial)``: MONAI's DiceLoss on probabilities, per image or over the batch
    (:data:`DICE_OVER`)."""
    key = (num_classes, batch)
    if key not in _dice_losses:
        _dice_losses[key] = DiceLoss(to_onehot_y=True, softmax=False, include_background=True, batch=batch)
    return _dice_losses[key](probabilities, target)


def supervised_loss(logits: torch.Tensor, label: torch.Tensor, num_classes: int, batch: bool = False) -> torch.Tensor:
    """``0.5 * (cross-entropy + soft Dice)``, the SSL4MIS supervised loss."""
    ce = F.cross_entropy(logits, label[:, 0].long())
    dice = soft_dice_loss(torch.softmax(logits, dim=1), label, num_classes, batch)
    return 0.5 * (ce + dice)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the two softmax maps (Mean Teacher's consistency)."""
    return F.mse_loss(torch.softmax(student_logits, dim=1), torch.softmax(teacher_logits, dim=1))


# --- entropy, divergences and pseudo-label losses of the semi-supervised methods ----------
def normalised_entropy(probabilities: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-voxel entropy over the class axis divided by ``ln C`` (0..1), shape ``(B, 1, *)``."""
    num_classes = probabilities.shape[1]
    entropy = -(probabilities * torch.log(probabilities + eps)).sum(dim=1, keepdim=True)
    return entropy / math.log(max(num_classes, 2))


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, reduction: str = "sum", dim: int = 1) -> torch.Tensor:
    """``0.5 * (KL(p_a || p_b) + KL(p_b || p_a))`` with softmax over the CLASS axis (``dim=1``),
    summed over classes and averaged over voxels (``reduction="sum"``, the KL between the two
    per-voxel distributions), or averaged over every element as R-Drop's code and SSL4MIS's
    ``compute_kl_loss`` do (``"mean"``: the sum divided by the number of classes). R-Drop, Wu et
    al. NeurIPS 2021. ``dim=-1`` is SSL4MIS's softmax over the image width (a defect, kept
    for comparison only)."""
    log_a, log_b = F.log_softmax(logits_a, dim=dim), F.log_softmax(logits_b, dim=dim)
    kl = 0.5 * (log_a.exp() * (log_a - log_b) + log_b.exp() * (log_b - log_a))
    if reduction == "mean":
        return kl.mean()
    if reduction == "sum":
        return kl.sum(dim=dim).mean()
    raise ValueError(f"reduction must be sum or mean, not {reduction!r}")


def js_divergence(probabilities_a: torch.Tensor, probabilities_b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Jensen-Shannon divergence ``H((p_a + p_b)/2) - (H(p_a) + H(p_b))/2`` over the class axis,
    averaged over voxels (Deep Co-Training's co-training loss, Qiao et al. ECCV 2018)."""

    def entropy(p):
        return -(p * torch.log(p + eps)).sum(dim=1)

    mean = 0.5 * (probabilities_a + probabilities_b)
    return (entropy(mean) - 0.5 * (entropy(probabilities_a) + entropy(probabilities_b))).mean()


def soft_cross_entropy(logits: torch.Tensor, target_probabilities: torch.Tensor) -> torch.Tensor:
    """``-sum_c q_c log p_c`` averaged over voxels, for soft targets ``q``."""
    return -(target_probabilities * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def confident_pseudo_label_ce(
    logits: torch.Tensor, target_probabilities: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unsupervised loss (Sohn et al. NeurIPS 2020): cross-entropy to the argmax of
    ``target_probabilities`` on voxels whose confidence ``max_c q_c >= threshold``; other voxels
    are IGNORED (contribute 0), not mapped to background. Normalised by all voxels as in the
    paper. Returns ``(loss, mask)``."""
    confidence, pseudo_label = target_probabilities.max(dim=1)
    mask = (confidence >= threshold).to(logits.dtype)
    ce = F.cross_entropy(logits, pseudo_label, reduction="none")
    return (ce * mask).mean(), mask


def confident_pseudo_label_loss(logits: torch.Tensor, target_probabilities: torch.Tensor, threshold: float,
                                num_classes: int, with_dice: bool = True,
                                batch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unsupervised loss against the argmax of ``target_probabilities``, on voxels
    whose confidence ``max_c q_c >= threshold`` (others IGNORED): ``0.5 * (CE + soft Dice)``
    (SSL4MIS) or, ``with_dice=False``, the cross-entropy alone (the paper). The cross-entropy is
    normalised by all voxels as in the paper; the Dice counts the confident voxels only.
    Returns ``(loss, mask)``."""
    ce, mask = confident_pseudo_label_ce(logits, target_probabilities, threshold)
    if not with_dice:
        return ce, mask
    pseudo_label = target_probabilities.argmax(dim=1, keepdim=True)
    dice = _masked_soft_dice(torch.softmax(logits, dim=1), pseudo_label, mask.unsqueeze(1), num_classes, batch)
    return 0.5 * (ce + dice), mask


def confident_pseudo_label_dice(logits: torch.Tensor, target_probabilities: torch.Tensor,
                                threshold: float, num_classes: int, batch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft Dice against the argmax of ``target_probabilities`` over the voxels whose confidence
    ``max_c q_c >= threshold`` (others IGNORED): UniMatch's unlabelled loss (its medical code's
    ``DiceLoss(..., ignore=conf < thresh)``). Returns ``(loss, mask)``."""
    confidence, pseudo_label = target_probabilities.max(dim=1, keepdim=True)
    mask = (confidence >= threshold).to(logits.dtype)
    return _masked_soft_dice(torch.softmax(logits, dim=1), pseudo_label, mask, num_classes, batch), mask[:, 0]


def _masked_soft_dice(probabilities, target, weights, num_classes, batch=False, smooth=1e-5) -> torch.Tensor:
    """``1 - mean_c Dice_c`` over the voxels weighted by ``weights`` (B, 1, *), per image or over
    the batch (:data:`DICE_OVER`)."""
    one_hot = F.one_hot(target[:, 0].long(), num_classes).movedim(-1, 1).to(probabilities.dtype)
    axes = (0, *range(2, probabilities.ndim)) if batch else tuple(range(2, probabilities.ndim))
    intersection = (probabilities * one_hot * weights).sum(axes)
    total = ((probabilities + one_hot) * weights).sum(axes)
    return 1.0 - ((2.0 * intersection + smooth) / (total + smooth)).mean()


def weighted_supervised_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, num_classes: int, eps: float = 1e-16,
    batch: bool = False,
) -> torch.Tensor:
    """``0.5 * (CE + soft Dice)`` restricted to voxels weighted by ``weights`` ``(B, 1, *)``
    (0..1), as BCP's mixed loss (Bai et al. CVPR 2023): weighted-mean CE and a Dice whose
    intersection and sums only count weighted voxels. ``target`` holds class indices
    ``(B, 1, *)``."""
    ce_map = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
    ce = (ce_map * weights[:, 0]).sum() / (weights.sum() + eps)
    dice = _masked_soft_dice(torch.softmax(logits, dim=1), target, weights, num_classes, batch)
    return 0.5 * (ce + dice)
