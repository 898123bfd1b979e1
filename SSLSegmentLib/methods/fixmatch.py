"""FixMatch."""

from __future__ import annotations

import torch

from .base import Method, register_method
from .helpers import extra, intensity_jitter, random_flip_rot90
from .losses import confident_pseudo_label_ce


@register_method
class FixMatch(Method):
    """Pseudo-labels from a weakly augmented view supervise a strongly augmented one, only
    where the prediction is confident.

    Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
    Confidence", NeurIPS 2020.

    Weak view: random flips and rot90 over the spatial axes (any of the 2 or 3). Strong view:
    the SAME weak view plus intensity jitter (contrast, brightness) and Gaussian noise, so the
    pseudo-labels stay aligned. Unsupervised loss: cross-entropy to the weak view's argmax on
    voxels with confidence >= threshold (0.95, ``settings.extra["fixmatch_threshold"]``),
    IGNORING the others as the paper does (the reference maps them to background, a defect),
    normalised by all voxels. Lambda max 1.0 as the paper's lambda_u (``default_consistency``).
    """

    name = "fixmatch"
    description = "Confident weak-view pseudo-labels supervise a strong view"
    reference = "Sohn et al., NeurIPS 2020"
    options = ("fixmatch_threshold",)
    default_consistency = 1.0

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.student = network_factory()

    def training_step(self, labelled, unlabelled, step):
        supervised = self.supervised_loss(self.student(labelled["image"]), labelled["label"])
        weak = random_flip_rot90(unlabelled["image"])
        strong = intensity_jitter(weak)
        with torch.no_grad():
            weak_probabilities = self.student(weak).softmax(dim=1)
        threshold = float(extra(self.settings, "fixmatch_threshold", 0.95))
        unsupervised, mask = confident_pseudo_label_ce(self.student(strong), weak_probabilities, threshold)
        loss = supervised + step.consistency_weight * unsupervised
        return {"main": loss, "supervised": supervised.detach(), "unsupervised": unsupervised.detach(),
                "confident_fraction": mask.mean()}
