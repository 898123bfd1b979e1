"""Regularized Dropout (R-Drop)."""

from __future__ import annotations

from ..networks.heads import WithDropout
from .base import Method, register_method
from .helpers import INPUT_CHANNELS, extra, joined_images
from .losses import symmetric_kl


@register_method
class RDrop(Method):
    """ONE network with dropout, run twice: the two predictions must agree.

    Wu et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021.

    The run's backbone gets ``nn.Dropout(p)`` (default 0.1, ``settings.extra["rdrop_dropout"]``)
    on its decoder feature maps (:class:`~SSLSegmentLib.networks.heads.WithDropout`), so two
    passes differ. Loss: mean of the two passes' ``0.5 (CE + Dice)`` on the labels + lambda *
    symmetric KL between the passes with softmax over the CLASS axis, on all images. As the
    paper, not the reference (which trains two networks and takes the softmax over the image
    width). Lambda max 4.0 as the reference (``default_consistency``). Predicts with the bare
    backbone (no dropout at inference).
    """

    name = "rdrop"
    description = "One network with dropout run twice, symmetric KL between the passes"
    reference = "Wu et al., NeurIPS 2021"
    options = ("rdrop_dropout",)
    default_consistency = 4.0

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        p = float(extra(settings, "rdrop_dropout", 0.1))
        self.network = WithDropout(network_factory(), dim, INPUT_CHANNELS, p=p)

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        first, second = self.network(images), self.network(images)
        supervised = 0.5 * sum(self.supervised_loss(out[:n_labelled], labelled["label"]) for out in (first, second))
        consistency = symmetric_kl(first, second)
        loss = supervised + step.consistency_weight * consistency
        return {"main": loss, "supervised": supervised.detach(), "consistency": consistency.detach()}

    def inference_network(self):
        return self.network.backbone
