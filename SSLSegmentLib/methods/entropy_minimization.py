"""Entropy minimisation."""

from __future__ import annotations

from .base import Method, register_method
from .helpers import extra_choice, joined_images
from .losses import normalised_entropy


@register_method
class EntropyMinimization(Method):
    """One network; the labelled loss plus the mean normalised entropy of its predictions on
    the unlabelled images (confident predictions are favoured).

    Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NeurIPS 2004
    (for segmentation: Vu et al., ADVENT, CVPR 2019). Entropy ``-sum p log p / ln C`` over the
    class axis, so it is in [0, 1] for any number of classes C. Applied to the unlabelled
    images, as the paper does (``"em_images": "all"`` averages it over the whole batch,
    labelled images included, as SSL4MIS's ``train_entropy_minimization_2D.py``).
    """

    name = "entropy_minimization"
    options = ("em_images",)

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.student = network_factory()

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        logits = self.student(images)
        supervised = self.supervised_loss(logits[:n_labelled], labelled["label"])
        first = n_labelled if extra_choice(self.settings, "em_images", ("unlabelled", "all")) == "unlabelled" else 0
        entropy = normalised_entropy(logits[first:].softmax(dim=1)).mean()
        loss = supervised + step.consistency_weight * entropy
        return {"main": loss, "supervised": supervised.detach(), "entropy": entropy.detach()}

