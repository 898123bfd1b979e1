"""Cross Pseudo Supervision (CPS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import register_method
from .helpers import TwoNetworkMethod, joined_images


def cross_pseudo_loss(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one network's logits to the other's argmax (no gradient through it)."""
    return F.cross_entropy(logits, other_logits.detach().argmax(dim=1))


@register_method
class CPS(TwoNetworkMethod):
    """Two differently initialised networks; each learns from the other's hard pseudo-labels.

    Chen, Yuan, Zeng & Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo
    Supervision", CVPR 2021.

    Each network: ``0.5 (CE + Dice)`` on the labels + lambda * CE(its logits, argmax of the
    other's) on labelled AND unlabelled images (as the paper; the reference uses the
    unlabelled half only, with Dice). As a pseudo-label carries no gradient, each loss only
    reaches its own network: groups ``"main"`` (first network, predicts) and ``"second"``,
    two optimisers as in the reference (equivalent to one optimiser on the summed loss for
    SGD with the same settings).
    """

    name = "cps"

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.build_networks()

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        logits = [self.student(images), self.second(images)]
        return self.mutual_losses(logits, labelled, n_labelled, step.consistency_weight, cross_pseudo_loss, "pseudo")
