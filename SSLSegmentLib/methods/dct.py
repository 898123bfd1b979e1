"""Deep Co-Training (DCT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import register_method
from .helpers import TwoNetworkMethod, extra, joined_images
from .losses import js_divergence, soft_cross_entropy


def adversarial_example(images, logits, targets, epsilon: float):
    """FGSM (Goodfellow et al., ICLR 2015): ``x + eps * sign(grad_x CE(logits, targets))``,
    detached. ``images`` must require a gradient and ``logits`` come from them; the graph is
    kept for the caller's backward."""
    loss = F.cross_entropy(logits, targets)
    (gradient,) = torch.autograd.grad(loss, images, retain_graph=True)
    return (images + epsilon * gradient.sign()).detach()


@register_method
class DCT(TwoNetworkMethod):
    """Two networks are two views that must agree on unlabelled images and yet differ.

    Qiao, Shen, Zhang, Wang & Yuille, "Deep Co-Training for Semi-Supervised Image
    Recognition", ECCV 2018, for segmentation (per voxel). As the paper (not the reference,
    which trains ONE network with a rotation consistency):
    - two networks, each supervised on the labelled images;
    - co-training loss ``L_cot``: Jensen-Shannon divergence of their predictions on the
      unlabelled images;
    - view-difference loss ``L_dif``: each network must predict on the OTHER network's FGSM
      adversarial examples what that network predicts on the clean image,
      ``H(p1(x), p2(g1(x))) + H(p2(x), p1(g2(x)))`` on all images (FGSM target: the label
      on labelled images, the network's own argmax on unlabelled ones; the soft target
      ``p_i(x)`` is detached). This keeps the views different.
    Loss ``sup + lambda (L_cot + r L_dif)`` with ``r = lambda_dif / lambda_cot = 0.05`` as in the
    paper (``settings.extra["dct_difference_ratio"]``), FGSM ``epsilon = 0.02``
    (``"dct_epsilon"``). Both networks are in one group, ``"main"``: the losses couple them.
    """

    name = "dct"
    options = ("dct_difference_ratio", "dct_epsilon")
    separate_optimisers = False

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.build_networks()

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        images = images.detach().requires_grad_(True)
        networks = (self.student, self.second)
        logits = [network(images) for network in networks]
        supervised = sum(self.supervised_loss(out[:n_labelled], labelled["label"]) for out in logits)
        co_training = js_divergence(*(out[n_labelled:].softmax(dim=1) for out in logits))
        adversarial = [self.adversarial_images(images, out, labelled["label"], n_labelled) for out in logits]
        difference = sum(
            soft_cross_entropy(networks[1 - i](adversarial[i]), logits[i].detach().softmax(dim=1)) for i in range(2)
        )
        ratio = float(extra(self.settings, "dct_difference_ratio", 0.05))
        loss = supervised + step.consistency_weight * (co_training + ratio * difference)
        return {"main": loss, "supervised": supervised.detach(), "co_training": co_training.detach(),
                "view_difference": difference.detach()}

    def adversarial_images(self, images, logits, label, n_labelled):
        """One network's FGSM examples for every image of the batch (see the class doc)."""
        targets = torch.cat([label[:, 0].long(), logits[n_labelled:].detach().argmax(dim=1)])
        return adversarial_example(images, logits, targets, float(extra(self.settings, "dct_epsilon", 0.02)))
