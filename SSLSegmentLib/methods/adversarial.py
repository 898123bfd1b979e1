"""Deep Adversarial Network (DAN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..networks.discriminator import Discriminator
from .base import Method, register_method
from .helpers import INPUT_CHANNELS, extra, extra_choice, extra_flag, joined_images


@register_method
class Adversarial(Method):
    """A segmentation network and a discriminator that judges (softmax map, image) pairs.

    Zhang, Yang, Chen, Fredericksen, Hughes & Chen, "Deep Adversarial Networks for Biomedical
    Image Segmentation Utilizing Unannotated Images", MICCAI 2017; settings of SSL4MIS's
    ``train_adversarial_network_2D.py``:

    - group ``"main"`` (segmentation network): labelled loss + lambda * BCE(D(unlabelled
      prediction), "labelled"), with the discriminator in EVAL mode (no dropout), i.e. the
      unlabelled predictions should look like labelled ones to the discriminator as it is;
    - group ``"discriminator"``: BCE with labelled = 1, unlabelled = 0, in TRAIN mode (its
      dropout 0.5, ``"discriminator_dropout"``), on predictions made without gradient by the
      segmentation network in eval mode. The reference makes them after the segmentation
      network's update on the same batch; here they come before it, from the weights that
      step updates (the same weights the reference uses one step later, on another batch), so
      the discriminator's loss gives no gradient to the segmentation network.
      ``"dan_discriminator_inputs": "train"`` reuses the student's training-mode predictions
      (detached) instead, without the extra forward pass;
    - the discriminator's optimiser is Adam (lr 1e-4, betas (0.9, 0.99)) at a CONSTANT learning
      rate as in the reference (:meth:`learning_rate_factor`; ``"dan_discriminator_schedule":
      "poly"`` follows the segmentation network's decay);
    - ``discriminator_accuracy`` is logged: near 0.5 the discriminator cannot tell the two apart;
    - labelled patches are drawn uniformly, as the unlabelled ones and as the reference draws
      both (:meth:`labelled_foreground_fraction`): with the product's foreground oversampling of
      the labelled patches, their larger share of foreground would let the discriminator tell
      the streams apart without judging the segmentation. ``"dan_labelled_sampling":
      "oversampled"`` keeps the oversampling.

    What the bench measured (ACDC, CPU preset, seed 1337): DAN stays far below supervised-only.
    With the first 7 patients by number labelled (all dilated hearts: the split of the tables
    before stop 17), the three-layer discriminator gave 0.416 against 0.542 (0.390 with
    oversampling), drawing the right ventricle as a second left ventricle ringed by myocardium.
    With SSL4MIS's seven labelled patients and the four-layer discriminator, 0.483 against
    0.700: every class over-segmented (median predicted volume 1.86, 1.52 and 1.72 times the
    truth for RV, myocardium and LV; supervised-only 0.70, 0.98 and 1.05), the discriminator's
    accuracy rising to 0.72 by the end. On images alone (``bench/dan_image_shortcut.py``) the
    discriminator already tells the labelled patients' patches from unlabelled ones: it calls 69 %
    of the trained-on labelled patches and 67 % of a held-out labelled patient's "labelled",
    against 29 % of unlabelled ones (SSL4MIS's split), so its verdict is not only about the
    segmentation. Without the image (``"discriminator_sees_image": false``, stop 20) DAN gave
    0.553, still far below, with the myocardium and LV over-segmented (median predicted volume
    1.53 and 1.25 times the truth, against 0.97 and 1.07 for supervised-only;
    ``bench/split_sizes.py --runs``): the map alone gives the streams apart by size, since
    SSL4MIS's seven labelled patients have a myocardium 1.31 times and an LV 1.20 times the
    unlabelled pool's mean volume, and the fooling term pulls the unlabelled predictions
    towards them. With a few labelled patients, their structures' sizes are a sample that
    DAN's objective asks the whole pool to match.

    **The fooling term's weight is a measured departure**: lambda max is 0.01
    (``default_consistency``), a tenth of SSL4MIS's 0.1 (``--consistency 0.1`` restores it). At
    the bench's CPU preset (ACDC with SSL4MIS's seven labelled patients) the reference's weight
    gave 0.483 Dice at seed 1337; a tenth of it gave 0.682, 0.645 and 0.678 at seeds 1337 to
    1339, each run on supervised-only's labelled batches, against supervised-only's 0.700, 0.674
    and 0.711. On LA (seed 1337) it gave 0.757, against 0.774 at 0.1 and 0.789 for
    supervised-only (stop 23 of ``bench/results/label_efficiency_after_reference_settings.md``).
    The lower weight limits the harm on ACDC and costs little on LA; at neither weight does DAN
    gain. The discriminator still learns to tell the streams apart: on ACDC its accuracy rises
    from about 0.5 to 0.8 and the fooling loss from 0.7 to 1.6; on LA to 0.96 and 6.6, where the
    weighted fooling term (0.066) ends three times the supervised loss even at 0.01.

    **The discriminator judges the softmax map alone: a measured departure** (stop 28;
    ``"discriminator_sees_image": true`` restores the references', which give it the image
    too). With the image it tells the labelled patches from the unlabelled ones by the images
    themselves (above; on LA it memorises the 8 labelled volumes: accuracy 0.96), and the
    fooling term then pushes the unlabelled predictions by a verdict that is not about them. At
    weight 0.01, the same labelled batches, seeds 1337 to 1339, the map alone against the map
    and image:

    - LA: 0.794, 0.785, 0.794 against 0.757, 0.762, 0.775 (supervised-only 0.789, 0.768,
      0.796): 7 % of the gap closed against 21 % lost. The discriminator stays at chance
      (accuracy 0.49 to 0.55 over the run): the maps of the two streams do not differ, and DAN
      neither gains nor harms there.
    - ACDC: 0.690, 0.693, 0.725 against 0.682, 0.645, 0.678 (supervised-only 0.700, 0.674,
      0.711): 5 % of the gap closed against 18 % lost. Its accuracy rises to about 0.6, judging
      the structures' sizes.

    ``"discriminator_width"`` (default 64) sets its width, ``"discriminator_layers"`` its number
    of strided convolutions: 4 as the reference since stop 16 (3 before it:
    :class:`~SSLSegmentLib.networks.discriminator.Discriminator`).
    ``"discriminator_stem_activation": false`` drops the activation after the map and image
    features are added, as the 2D reference.
    """

    name = "adversarial"
    options = ("discriminator_width", "discriminator_dropout", "dan_discriminator_schedule", "dan_discriminator_inputs",
               "dan_labelled_sampling", "discriminator_layers",
               "discriminator_stem_activation", "discriminator_sees_image")
    default_consistency = 0.01
    optimiser_overrides = {"discriminator": {"name": "adam", "lr": 1e-4, "betas": (0.9, 0.99)}}

    def __init__(self, settings, network_factory, num_classes, dim):
        super().__init__(settings, network_factory, num_classes, dim)
        self.student = network_factory()
        width = extra(settings, "discriminator_width", 64)
        dropout = float(extra(settings, "discriminator_dropout", 0.5))
        layers = int(extra(settings, "discriminator_layers", 4))
        stem_activation = extra_flag(settings, "discriminator_stem_activation", True)
        sees_image = extra_flag(settings, "discriminator_sees_image", False)  # a measured departure (above)
        self.discriminator = Discriminator(dim, num_classes, INPUT_CHANNELS, width, dropout, layers, stem_activation,
                                           sees_image)

    def parameter_groups(self):
        return {"main": list(self.student.parameters()), "discriminator": list(self.discriminator.parameters())}

    def learning_rate_factor(self, step, group="main"):
        if group == "discriminator" and extra(self.settings, "dan_discriminator_schedule", "constant") == "constant":
            return 1.0
        return super().learning_rate_factor(step, group)

    def labelled_foreground_fraction(self, run_fraction):
        """0 (uniform, the reference's): the discriminator must not tell the labelled patches
        by their share of foreground; ``"dan_labelled_sampling": "oversampled"``: the run's."""
        if extra_choice(self.settings, "dan_labelled_sampling", ("uniform", "oversampled")) == "uniform":
            return 0.0
        return run_fraction

    def training_step(self, labelled, unlabelled, step):
        images, n_labelled = joined_images(labelled, unlabelled)
        logits = self.student(images)
        supervised = self.supervised_loss(logits[:n_labelled], labelled["label"])
        probabilities = logits.softmax(dim=1)
        self.discriminator.eval()
        fooling = self.discriminator_loss(probabilities[n_labelled:], images[n_labelled:], is_labelled=True)[0]
        self.discriminator.train()
        judged = self.judged_predictions(images, probabilities)
        discriminator, accuracy = self.discriminator_loss(judged, images, is_labelled=None, n_labelled=n_labelled)
        return {
            "main": supervised + step.consistency_weight * fooling,
            "discriminator": discriminator,
            "supervised": supervised.detach(),
            "adversarial": fooling.detach(),
            "discriminator_accuracy": accuracy,
        }

    def precision_probes(self):
        return {**super().precision_probes(), "discriminator": DiscriminatorProbe(self.discriminator, self.num_classes)}

    def judged_predictions(self, images, probabilities):
        """What the discriminator learns from: the segmentation network's eval-mode softmax
        (reference) or its training-mode one, without gradient either way."""
        if extra(self.settings, "dan_discriminator_inputs", "eval") == "train":
            return probabilities.detach()
        self.student.eval()
        with torch.no_grad():
            judged = self.student(images).softmax(dim=1)
        self.student.train()
        return judged

    def discriminator_loss(self, probabilities, images, is_labelled, n_labelled=None):
        """BCE of the discriminator's logits against "labelled" (``is_labelled=True``) or, with
        ``is_labelled=None``, against the truth: the first ``n_labelled`` are labelled. Returns
        ``(loss, accuracy)`` (accuracy detached)."""
        logits = self.discriminator(probabilities, images)
        if is_labelled is None:
            target = torch.zeros_like(logits)
            target[:n_labelled] = 1.0
        else:
            target = torch.full_like(logits, float(is_labelled))
        accuracy = ((logits.detach() > 0).to(target.dtype) == target).to(logits.dtype).mean()
        return F.binary_cross_entropy_with_logits(logits, target), accuracy


class DiscriminatorProbe(torch.nn.Module):
    """The discriminator fed from an image batch alone, for the bf16 check: a softmax map made
    from the image (channel ``k`` is the image times ``k + 1``) and the image itself. Its
    strided convolutions reach the small sizes where some CPUs' bf16 kernels fail."""

    def __init__(self, discriminator: Discriminator, num_classes: int):
        super().__init__()
        self.discriminator = discriminator
        self.num_classes = num_classes

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        scales = torch.arange(1, self.num_classes + 1, dtype=image.dtype, device=image.device)
        shape = (1, self.num_classes) + (1,) * (image.dim() - 2)
        probabilities = (image * scales.view(shape)).softmax(dim=1)
        return self.discriminator(probabilities, image)
