"""Deep Adversarial Network (DAN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..networks.discriminator import Discriminator
from .base import Method, register_method
from .helpers import INPUT_CHANNELS, extra, joined_images


@register_method
class Adversarial(Method):
    """A segmentation network and a discriminator that judges (softmax map, image) pairs.

    Zhang, Yang, Chen, Fredericksen, Hughes & Chen, "Deep Adversarial Networks for Biomedical
    Image Segmentation Utilizing Unannotated Images", MICCAI 2017.

    Group ``"main"`` (segmentation network): labelled loss + lambda * BCE(D(unlabelled
    prediction), "labelled"), i.e. unlabelled predictions should look like labelled ones.
    Group ``"discriminator"``: BCE with labelled = 1, unlabelled = 0 on DETACHED predictions,
    so its loss gives no gradient to the segmentation network. The discriminator's optimiser
    is Adam (lr 1e-4, betas (0.9, 0.99)) as in SSL4MIS: :attr:`optimiser_overrides`.
    ``settings.extra["discriminator_width"]`` (default 64) sets its width.
    """

    name = "adversarial"
    description = "Segmentation net + discriminator on (softmax, image) pairs (DAN)"
    reference = "Zhang et al., MICCAI 2017"
    options = ("discriminator_width",)
    optimiser_overrides = {"discriminator": {"name": "adam", "lr": 1e-4, "betas": (0.9, 0.99)}}

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.student = network_factory()
        width = extra(settings, "discriminator_width", 64)
        self.discriminator = Discriminator(dim, num_classes, INPUT_CHANNELS, width)

    def parameter_groups(self):
        return {"main": list(self.student.parameters()), "discriminator": list(self.discriminator.parameters())}

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        logits = self.student(images)
        supervised = self.supervised_loss(logits[:n_labelled], labelled["label"])
        probabilities = logits.softmax(dim=1)
        fooling = self.discriminator_loss(probabilities[n_labelled:], images[n_labelled:], is_labelled=True)
        discriminator = self.discriminator_loss(probabilities.detach(), images, is_labelled=None, n_labelled=n_labelled)
        return {
            "main": supervised + step.consistency_weight * fooling,
            "discriminator": discriminator,
            "supervised": supervised.detach(),
            "adversarial": fooling.detach(),
        }

    def discriminator_loss(self, probabilities, images, is_labelled, n_labelled=None):
        """BCE of the discriminator's logits against "labelled" (``is_labelled=True``) or, with
        ``is_labelled=None``, against the truth: the first ``n_labelled`` are labelled."""
        logits = self.discriminator(probabilities, images)
        if is_labelled is None:
            target = torch.zeros_like(logits)
            target[:n_labelled] = 1.0
        else:
            target = torch.full_like(logits, float(is_labelled))
        return F.binary_cross_entropy_with_logits(logits, target)
