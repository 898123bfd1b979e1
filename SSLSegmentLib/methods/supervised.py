"""Supervised baseline: the labelled cases only."""

from __future__ import annotations

from .base import Method, register_method


@register_method
class Supervised(Method):
    """Trains one network on the labelled cases only; the unlabelled pool is ignored.

    The lower bound every semi-supervised method is compared with.
    """

    name = "supervised"
    uses_unlabelled = False

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.student = network_factory()

    def training_step(self, labelled, unlabelled, step):
        loss = self.supervised_loss(self.student(labelled["image"]), labelled["label"])
        return {"main": loss, "supervised": loss.detach()}
