"""Cross Teaching between CNN and Transformer (CTCT)."""

from __future__ import annotations

from functools import partial

from ..catalogue import DEFAULT_NETWORK
from .base import register_method
from .helpers import TwoNetworkMethod, joined_images
from .losses import soft_dice_loss


@register_method
class CTCT(TwoNetworkMethod):
    """A CNN and a transformer teach each other with their hard predictions.

    Luo, Hu, Song, Liao, Wang & Zhang, "Semi-Supervised Medical Image Segmentation via Cross
    Teaching between CNN and Transformer", MIDL 2022.

    The CNN is the run's network (``unet`` by default; the default network if the run asked for
    the transformer itself) and predicts; the transformer is the catalogue's ``networks`` entry,
    ``swin_unet`` (MONAI SwinUNETR, no
    pretrained weights, patch sizes divisible by 32). Each: ``0.5 (CE + Dice)`` on the labels
    + lambda * Dice(its softmax on unlabelled images, the other's argmax). Groups ``"main"``
    (CNN) and ``"second"`` (transformer): separate optimisers as the reference.
    """

    name = "ctct"

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        (transformer,) = self.extra_networks
        self.student = network_factory()
        if self.student.registry_name == transformer:
            self.student = network_factory(name=DEFAULT_NETWORK)
        self.second = network_factory(name=transformer)

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        logits = [self.student(images), self.second(images)]
        cross_teaching = partial(self.cross_teaching_loss, n_labelled=n_labelled)
        return self.mutual_losses(logits, labelled, n_labelled, step.consistency_weight, cross_teaching, "teaching")

    def cross_teaching_loss(self, logits, other_logits, n_labelled):
        """Dice of one network's unlabelled softmax to the other's argmax."""
        pseudo_label = other_logits[n_labelled:].argmax(dim=1, keepdim=True)
        return soft_dice_loss(logits[n_labelled:].softmax(dim=1), pseudo_label, self.num_classes, self.dice_batch)

    def backbones(self):
        return [self.student]
