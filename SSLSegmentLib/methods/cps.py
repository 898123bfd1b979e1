"""Cross Pseudo Supervision (CPS)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .base import register_method
from .helpers import TwoNetworkMethod, extra_choice, joined_images
from .losses import soft_dice_loss


def cross_pseudo_loss(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one network's logits to the other's argmax (no gradient through it)."""
    return F.cross_entropy(logits, other_logits.detach().argmax(dim=1))


def dice_to_argmax(logits, other_logits, num_classes: int, batch: bool = False) -> torch.Tensor:
    """Soft Dice of one network's softmax to the other's argmax (no gradient through it)."""
    target = other_logits.detach().argmax(dim=1, keepdim=True)
    return soft_dice_loss(logits.softmax(dim=1), target, num_classes, batch)


def unlabelled_dice_to_argmax(logits, other_logits, n_labelled: int, num_classes: int, batch: bool = False) -> torch.Tensor:
    """:func:`dice_to_argmax` on the unlabelled images only (SSL4MIS's cross pseudo supervision)."""
    return dice_to_argmax(logits[n_labelled:], other_logits[n_labelled:], num_classes, batch)


@register_method
class CPS(TwoNetworkMethod):
    """Two differently initialised networks; each learns from the other's hard pseudo-labels.

    Chen, Yuan, Zeng & Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo
    Supervision", CVPR 2021.

    Each network: ``0.5 (CE + Dice)`` on the labels + lambda * CE(its logits, argmax of the
    other's) on labelled AND unlabelled images, as the paper (``"cps_pseudo_loss":
    "dice_unlabelled"`` is SSL4MIS's: soft Dice to the other's argmax on the unlabelled half
    only). As a pseudo-label carries no gradient, each loss only
    reaches its own network: groups ``"main"`` (first network, predicts) and ``"second"``,
    two optimisers as in the reference (equivalent to one optimiser on the summed loss for
    SGD with the same settings).
    """

    name = "cps"
    options = ("cps_pseudo_loss",)

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.build_networks()

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        logits = [self.student(images), self.second(images)]
        if extra_choice(self.settings, "cps_pseudo_loss", ("ce_all", "dice_unlabelled")) == "ce_all":
            pseudo_loss = cross_pseudo_loss
        else:
            pseudo_loss = partial(unlabelled_dice_to_argmax, n_labelled=n_labelled, num_classes=self.num_classes,
                                   batch=self.dice_batch)
        return self.mutual_losses(logits, labelled, n_labelled, step.consistency_weight, pseudo_loss, "pseudo")
