"""Cross-Consistency Training (CCT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..networks.heads import AuxiliaryDecoders, UnperturbedOutputs
from .base import Method, register_method
from .helpers import INPUT_CHANNELS, extra, extra_choice, extra_flag, joined_images


@register_method
class CCT(Method):
    """Auxiliary decoders on perturbed features must agree with the main decoder.

    Ouali, Hudelot & Tami, "Semi-Supervised Semantic Segmentation with Cross-Consistency
    Training", CVPR 2020.

    The run's backbone is wrapped in :class:`~SSLSegmentLib.networks.heads.AuxiliaryDecoders`
    with K (default 3, ``settings.extra["cct_aux_decoders"]``) auxiliary decoders, each on
    its own perturbation (feature noise U(-0.3, 0.3), dropout 0.3, feature dropout) of a
    decoder feature map. Labelled: main output only, as the paper
    (``"cct_auxiliary_supervision": true`` supervises the auxiliary outputs too and averages
    the four losses, as SSL4MIS). Unlabelled: mean over decoders of the MSE between the
    auxiliary softmax and the main softmax, the main one DETACHED as in the paper
    (``"cct_main_target": "attached"`` back-propagates into the main decoder too, as SSL4MIS).
    Predicts with the bare backbone.
    """

    name = "cct"
    options = ("cct_aux_decoders", "cct_auxiliary_supervision", "cct_main_target")

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        num_aux = int(extra(settings, "cct_aux_decoders", 3))
        self.network = AuxiliaryDecoders(network_factory(), dim, INPUT_CHANNELS, num_classes, num_aux=num_aux)

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        main, *auxiliary = self.network(images)
        supervised_outputs = [main, *auxiliary] if extra_flag(self.settings, "cct_auxiliary_supervision", False) else [main]
        supervised = torch.stack([self.supervised_loss(o[:n_labelled], labelled["label"])
                                  for o in supervised_outputs]).mean()
        attached = extra_choice(self.settings, "cct_main_target", ("detached", "attached")) == "attached"
        target = (main if attached else main.detach())[n_labelled:].softmax(dim=1)
        consistency = torch.stack([F.mse_loss(a[n_labelled:].softmax(dim=1), target) for a in auxiliary]).mean()
        loss = supervised + step.consistency_weight * consistency
        return {"main": loss, "supervised": supervised.detach(), "consistency": consistency.detach()}

    def inference_network(self):
        return self.network.backbone

    def precision_probes(self):
        return {"decoders": UnperturbedOutputs(self.network)}
