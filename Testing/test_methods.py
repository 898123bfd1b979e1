"""The semi-supervised methods: one training step each in 2D and 3D, and one test of what
makes each method that method."""

import math

import pytest
import torch
import torch.nn.functional as F

from SSLSegmentLib.methods import MethodSettings, StepInfo, method_class
from SSLSegmentLib.methods.abd import bidirectional_displacement, cutout_strong_view, from_cells, to_cells
from SSLSegmentLib.methods.bcp import bidirectional_copy_paste, largest_component_labels
from SSLSegmentLib.methods.cps import cross_pseudo_loss
from SSLSegmentLib.methods.dct import adversarial_example
from SSLSegmentLib.methods.helpers import color_jitter, copy_paste_mask, random_flip_rot90
from SSLSegmentLib.methods.ict import mix_unlabelled
from SSLSegmentLib.methods.losses import (confident_pseudo_label_ce, normalised_entropy, soft_dice_loss, symmetric_kl,
                                          weighted_supervised_loss)
from SSLSegmentLib.methods.uamt import uncertainty_threshold
from SSLSegmentLib.methods.unimatch import cutmix, cutmix_boxes, random_blur
from SSLSegmentLib.networks import build_network

METHODS = ["entropy_minimization", "adversarial", "uamt", "ict", "urpc", "cps", "cct", "dct", "ctct",
           "fixmatch", "rdrop", "bcp", "unimatch", "abd"]
NUM_CLASSES = 3
EXTRA = {"discriminator_width": 4, "uamt_passes": 2}


def make_method(name, dim, num_classes=NUM_CLASSES, network="unet", **extra):
    def factory(name=None, out_channels=None):
        return build_network(name or network, dim, 1, out_channels or num_classes, size="tiny")

    settings = MethodSettings(extra={**EXTRA, **extra})
    return method_class(name)(settings, factory, num_classes, dim)


def make_batches(dim, name="unet", n=2):
    spatial = (32, 32) if dim == 2 else ((32, 32, 32) if name == "ctct" else (16, 16, 16))
    label = torch.randint(0, NUM_CLASSES, (n, 1, *spatial))
    labelled = {"image": torch.randn(n, 1, *spatial) + label, "label": label}
    return labelled, {"image": torch.randn(n, 1, *spatial)}


STEP = StepInfo(iteration=5, total=10, consistency_weight=0.5)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", METHODS)
def test_one_training_step(name, dim):
    torch.manual_seed(0)
    method = make_method(name, dim).train()
    labelled, unlabelled = make_batches(dim, name)
    losses = method.training_step(labelled, unlabelled, STEP)
    groups = method.parameter_groups()
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert sorted(id(p) for ps in groups.values() for p in ps) == sorted(trainable)
    for value in losses.values():
        assert torch.isfinite(value).all()
    for group, params in groups.items():  # as the trainer: one backward per group
        losses[group].backward(inputs=params)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params), group
    method.after_optimiser_step(STEP)
    network = method.inference_network().eval()
    with torch.no_grad():
        assert network(labelled["image"]).shape == (2, NUM_CLASSES, *labelled["image"].shape[2:])


def test_any_number_of_classes():
    for name in ("urpc", "uamt", "bcp"):
        torch.manual_seed(0)
        method = make_method(name, 2, num_classes=2)
        labelled = {"image": torch.randn(2, 1, 32, 32), "label": torch.randint(0, 2, (2, 1, 32, 32))}
        losses = method.training_step(labelled, {"image": torch.randn(2, 1, 32, 32)}, STEP)
        assert torch.isfinite(losses["main"])


# --- behaviour: what makes each method that method --------------------------------------------
@pytest.mark.parametrize("name", ["uamt", "ict", "bcp"])
def test_ema_teacher_follows_student(name):
    torch.manual_seed(0)
    method = make_method(name, 2)
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    step = StepInfo(iteration=1000, total=2000)
    method.after_optimiser_step(step)
    alpha = method.settings.ema_decay
    for t, old, s in zip(method.teacher.parameters(), teacher_before, method.student.parameters()):
        assert torch.allclose(t, alpha * old + (1 - alpha) * s, atol=1e-6)
        assert not t.requires_grad


def test_bcp_teacher_copies_the_student_while_pretraining():
    method = make_method("bcp", 2, bcp_pretrain_fraction=0.5)
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.after_optimiser_step(StepInfo(iteration=3, total=10))
    assert all(torch.equal(t, s) for t, s in zip(method.teacher.parameters(), method.student.parameters()))


def test_entropy_is_normalised_by_number_of_classes():
    uniform = torch.full((1, 4, 2, 2), 0.25)
    one_hot = F.one_hot(torch.zeros(1, 2, 2, dtype=torch.long), 4).movedim(-1, 1).float()
    assert torch.allclose(normalised_entropy(uniform), torch.ones(1, 1, 2, 2), atol=1e-4)
    assert normalised_entropy(one_hot).max() < 1e-4


def test_discriminator_is_trained_on_detached_predictions():
    torch.manual_seed(0)
    method = make_method("adversarial", 2)
    losses = method.training_step(*make_batches(2), STEP)
    seg_params = list(method.student.parameters())
    grads = torch.autograd.grad(losses["discriminator"], seg_params, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)
    fooling = torch.autograd.grad(losses["main"], seg_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in fooling)
    assert method.optimiser_overrides["discriminator"]["name"] == "adam"


def test_uamt_mask_shrinks_as_threshold_falls():
    num_classes = 4
    assert uncertainty_threshold(10, 10) == pytest.approx(math.log(2))
    uncertainty = torch.rand(1000) * math.log(num_classes)
    fractions = [(uncertainty < uncertainty_threshold(i, 10)).float().mean() for i in (0, 5, 10)]
    assert fractions[0] < fractions[1] < fractions[2]


def test_ict_mixes_inputs_and_targets_with_the_same_lambda():
    torch.manual_seed(0)
    images = torch.rand(4, 2, 8, 8)
    permutation = torch.tensor([2, 0, 3, 1])
    mixed, mixed_targets = mix_unlabelled(images, images.clone(), 0.3, permutation)
    assert torch.equal(mixed, mixed_targets)
    assert torch.allclose(mixed, 0.3 * images + 0.7 * images[permutation])


def test_urpc_has_four_scales():
    torch.manual_seed(0)
    method = make_method("urpc", 2).train()
    outputs = method.network(torch.randn(2, 1, 32, 32))
    assert len(outputs) == 4 and all(o.shape == (2, NUM_CLASSES, 32, 32) for o in outputs)
    assert len(set(method.network.feature_channels)) == 3  # levels 1/2, 1/4, 1/8


def test_cps_uses_each_networks_argmax_as_the_others_target():
    torch.manual_seed(0)
    method = make_method("cps", 2)
    labelled, unlabelled = make_batches(2)
    losses = method.training_step(labelled, unlabelled, STEP)
    images = torch.cat([labelled["image"], unlabelled["image"]])
    with torch.no_grad():
        first, second = method.student(images), method.second(images)
    assert losses["main_pseudo"] == pytest.approx(F.cross_entropy(first, second.argmax(1)).item(), rel=1e-4)
    assert losses["second_pseudo"] == pytest.approx(F.cross_entropy(second, first.argmax(1)).item(), rel=1e-4)
    assert not any(p1 is p2 for p1, p2 in zip(method.student.parameters(), method.second.parameters()))
    assert cross_pseudo_loss(first, first) < cross_pseudo_loss(first, second)


def test_cct_auxiliary_decoders_see_perturbed_features():
    torch.manual_seed(0)
    method = make_method("cct", 2).train()
    seen = []
    for perturbation in method.network.perturbations:
        perturbation.register_forward_hook(lambda m, inputs, output: seen.append((inputs[0], output)))
    method.network(torch.randn(2, 1, 32, 32))
    assert len(seen) == 3
    assert all(inputs is seen[0][0] for inputs, _ in seen)  # one shared feature map
    assert all(not torch.equal(inputs, output) for inputs, output in seen)


def test_dct_feeds_each_network_the_others_adversarial_view():
    torch.manual_seed(0)
    method = make_method("dct", 2, dct_epsilon=0.05)
    labelled, unlabelled = make_batches(2)
    clean = torch.cat([labelled["image"], unlabelled["image"]])
    inputs = {"student": [], "second": []}
    for key in inputs:
        getattr(method, key).register_forward_pre_hook(lambda m, args, key=key: inputs[key].append(args[0].detach()))
    method.training_step(labelled, unlabelled, STEP)
    for key in inputs:
        first, adversarial = inputs[key]
        assert torch.equal(first, clean)
        assert torch.allclose((adversarial - clean).abs().max(), torch.tensor(0.05))
    image = clean.clone().requires_grad_(True)
    logits = method.student(image)
    target = logits.argmax(1)
    worse = adversarial_example(image, logits, target, 0.05)
    with torch.no_grad():
        assert F.cross_entropy(method.student(worse), target) > F.cross_entropy(logits, target)


def test_ctct_pairs_two_architectures():
    method = make_method("ctct", 2)
    assert type(method.student).__name__ == "UNet" and type(method.second).__name__ == "SwinUNETR"
    assert make_method("ctct", 2, network="swin_unet").student.__class__.__name__ == "UNet"


def test_fixmatch_ignores_low_confidence_voxels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 3, 4, 4), 0.05)
    target[:, 1] = 0.9  # not confident (< 0.95) ...
    target[:, :, :2] = torch.tensor([0.01, 0.01, 0.98]).view(1, 3, 1, 1)  # ... but the top half is
    loss, mask = confident_pseudo_label_ce(logits, target, 0.95)
    assert mask[:, :2].all() and not mask[:, 2:].any()
    loss.backward()
    assert logits.grad[:, :, 2:].abs().sum() == 0 and logits.grad[:, :, :2].abs().sum() > 0
    expected = F.cross_entropy(logits[:, :, :2], torch.full((1, 2, 4), 2)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fixmatch_augmentations():
    torch.manual_seed(0)
    for shape in ((2, 1, 8, 8), (2, 1, 4, 8, 8)):
        images = torch.randn(*shape)
        weak = random_flip_rot90(images)
        assert weak.shape == images.shape
        assert torch.allclose(weak.sort(dim=-1)[0].sum(), images.sort(dim=-1)[0].sum(), atol=1e-4)
        assert not torch.equal(color_jitter(weak), weak)


def test_rdrop_kl_is_over_classes():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    assert symmetric_kl(logits, logits) == pytest.approx(0.0, abs=1e-7)
    # a per-class offset leaves the softmax over the WIDTH unchanged but changes the class one
    shifted = logits + torch.tensor([0.0, 1.0, -1.0]).view(1, 3, 1, 1)
    assert symmetric_kl(logits, shifted) > 0.05
    p, q = logits.softmax(1), shifted.softmax(1)
    manual = 0.5 * ((p * (p / q).log()).sum(1) + (q * (q / p).log()).sum(1)).mean()
    assert symmetric_kl(logits, shifted) == pytest.approx(manual.item(), rel=1e-5)


def test_rdrop_network_has_dropout():
    torch.manual_seed(0)
    method = make_method("rdrop", 2).train()
    image = torch.randn(1, 1, 32, 32)
    assert not torch.equal(method.network(image), method.network(image))
    assert method.default_consistency == 0.5  # the reference's 4.0 at its KL's scale (test_reference_settings)


def test_bcp_copy_pastes_images_and_labels_both_ways():
    torch.manual_seed(0)
    shape = (2, 1, 12, 12)
    mask = copy_paste_mask(torch.zeros(shape))
    assert mask.sum() == 8 * 8
    l_img, u_img = torch.ones(shape), torch.full(shape, 2.0)
    labels, pseudo = torch.ones(shape, dtype=torch.long), torch.full(shape, 2, dtype=torch.long)
    images_in, labels_in, images_out, labels_out = bidirectional_copy_paste(l_img, labels, u_img, pseudo, mask)
    inside = mask.bool().expand(shape)
    assert (images_in[inside] == 1).all() and (images_in[~inside] == 2).all()
    assert (labels_in[inside] == 1).all() and (labels_in[~inside] == 2).all()
    assert (images_out[inside] == 2).all() and (images_out[~inside] == 1).all()
    assert (labels_out[inside] == 2).all() and (labels_out[~inside] == 1).all()


def test_bcp_pseudo_label_clean_up_keeps_each_class_largest_component():
    labels = torch.zeros(2, 1, 10, 10, dtype=torch.long)
    labels[0, 0, 1:5, 1:5] = 1  # 16 voxels: kept
    labels[0, 0, 8, 8] = 1  # a stray voxel of the same class: removed
    labels[0, 0, 7:9, 1:3] = 2  # the only component of class 2: kept
    labels[1, 0, 0, 0] = 1  # each image is cleaned on its own: kept
    cleaned = largest_component_labels(labels)
    expected = labels.clone()
    expected[0, 0, 8, 8] = 0
    assert torch.equal(cleaned, expected)


def test_bcp_trains_with_the_pseudo_label_clean_up():
    torch.manual_seed(0)
    method = make_method("bcp", 3, bcp_pretrain_fraction=0.0, bcp_largest_component=True)
    losses = method.training_step(*make_batches(3), StepInfo(iteration=5, total=10))
    assert set(losses) == {"main", "inward", "outward"} and torch.isfinite(losses["main"])


def test_bcp_pretraining_stage_is_supervised_copy_paste():
    torch.manual_seed(0)
    method = make_method("bcp", 2, bcp_pretrain_fraction=0.5)
    losses = method.training_step(*make_batches(2), StepInfo(iteration=1, total=10))
    assert set(losses) == {"main", "supervised"}


def test_unimatch_cutmix_boxes_follow_the_reference():
    torch.manual_seed(0)
    for spatial in ((64, 64), (32, 48, 48)):
        images = torch.zeros(400, 1, *spatial)
        boxes = cutmix_boxes(images)
        fractions = boxes.flatten(1).mean(1)
        assert 0.35 < (fractions > 0).float().mean() < 0.65  # probability 0.5
        drawn = fractions[fractions > 0]
        assert drawn.min() > 0.005 and drawn.max() < 0.5  # 2 % to 40 % of the image, rounded
        for box in boxes[fractions > 0][:20]:  # one solid box
            sides = [int(box.flatten(0, 0).amax(dim=tuple(a for a in range(1, box.ndim) if a != axis)).sum())
                     for axis in range(1, box.ndim)]
            assert math.prod(sides) == int(box.sum())


def test_unimatch_pseudo_labels_follow_the_pasted_box():
    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    probabilities = torch.zeros(3, 2, 4, 4)
    probabilities[:, 0] = torch.arange(3.0).view(3, 1, 1)
    boxes = torch.zeros(3, 1, 4, 4)
    boxes[0, :, :2, :2] = 1
    mixed, mixed_probabilities = cutmix(images, probabilities, boxes)
    assert mixed[0, 0, 0, 0] == 2 and mixed[0, 0, 3, 3] == 0  # image 0 holds image 2's box (rolled by one)
    assert torch.equal(mixed_probabilities[:, :1], mixed) and torch.equal(mixed[1:], images[1:])


def test_unimatch_strong_views_and_feature_perturbation():
    torch.manual_seed(0)
    images = torch.randn(6, 1, 16, 16)
    assert not torch.equal(random_blur(images, p=1.0), images) and torch.equal(random_blur(images, p=0.0), images)
    method = make_method("unimatch", 2).train()
    image = torch.randn(1, 1, 32, 32)
    assert not torch.equal(method.network(image), method.network(image))  # channel dropout
    assert torch.equal(method.network.backbone(image), method.network.backbone(image))  # the clean pass
    assert any(isinstance(m, torch.nn.Dropout2d) and m.p == 0.5 for m in method.network.modules())
    labelled, unlabelled = make_batches(2)
    losses = method.training_step(labelled, unlabelled, STEP)
    assert losses["main"].item() == pytest.approx(
        (losses["supervised"] + 0.5 * losses["strong"] + 0.5 * losses["feature_perturbed"]).item() / 2, rel=1e-5)
    certain = make_method("unimatch", 2, unimatch_threshold=0.0)  # every voxel counts
    assert certain.training_step(labelled, unlabelled, STEP)["confident_fraction"] == 1.0


def test_abd_cells_cut_and_join_images_in_2d_and_3d():
    images = torch.arange(2 * 8 * 12.0).view(2, 1, 8, 12)
    cells = to_cells(images, 4)
    assert cells.shape == (2, 16, 1, 2, 3)
    assert torch.equal(cells[0, 1, 0], images[0, 0, 0:2, 3:6])  # row-major: the second cell of the first row
    assert torch.equal(cells[1, 4, 0], images[1, 0, 2:4, 0:3])
    volumes = torch.randn(2, 3, 8, 4, 12)
    assert torch.equal(from_cells(to_cells(volumes, 2), 2), volumes)
    assert torch.equal(to_cells(volumes, 2)[1, 7], volumes[1, :, 4:, 2:, 6:])
    with pytest.raises(ValueError, match="abd_grid=3 must divide"):
        to_cells(images, 3)


def _confident_logits(confidence_per_cell, classes_per_cell, grid, size):
    """Logits (1, 2, size, size) whose cells have the given top-class probability and class."""
    logits = torch.zeros(1, 2, size, size)
    cell = size // grid
    for index, (p, k) in enumerate(zip(confidence_per_cell, classes_per_cell)):
        row, col = divmod(index, grid)
        logit = math.log(p / (1 - p))
        logits[0, k, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = logit
    return logits


def test_abd_displacement_moves_a_confident_cell_of_the_other_view_into_the_least_confident():
    grid, size = 2, 4
    view_1 = to_cells(torch.zeros(1, 1, size, size), grid)
    view_1[0, :, 0] = torch.tensor([10.0, 11.0, 12.0, 13.0]).view(4, 1, 1)
    view_2 = to_cells(torch.zeros(1, 1, size, size), grid)
    view_2[0, :, 0] = torch.tensor([20.0, 21.0, 22.0, 23.0]).view(4, 1, 1)
    view_1, view_2 = from_cells(view_1, grid), from_cells(view_2, grid)
    # view 1: cell 2 least confident (predicting class 1); view 2: cell 0 most confident (class 0),
    # cell 3 nearly as confident and predicting class 1, as view 1's least confident cell does
    logits_1 = _confident_logits([0.9, 0.95, 0.6, 0.8], [0, 0, 1, 0], grid, size)
    logits_2 = _confident_logits([0.99, 0.7, 0.75, 0.97], [0, 0, 0, 1], grid, size)
    most_confident = to_cells(bidirectional_displacement(view_1, view_2, logits_1, logits_2, grid, top=2,
                                                         kl_probability=0.0), grid)
    assert most_confident[0, :, 0, 0, 0].tolist() == [10, 11, 20, 13]  # view 2's most confident cell
    assert most_confident[1, :, 0, 0, 0].tolist() == [20, 11, 22, 23]  # view 1's most confident into cell 1
    closest = to_cells(bidirectional_displacement(view_1, view_2, logits_1, logits_2, grid, top=2,
                                                  kl_probability=1.0), grid)
    assert closest[0, :, 0, 0, 0].tolist() == [10, 11, 23, 13]  # of view 2's two most confident, the class-1 one
    assert closest[1, :, 0, 0, 0].tolist() == [20, 10, 22, 23]  # view 1's cell 0 is closer to (0.7, 0.3) than cell 1


def test_abd_strong_view_erases_a_box_and_its_labels():
    torch.manual_seed(0)
    images = torch.randn(64, 1, 16, 16)
    labels = torch.ones(64, 1, 16, 16, dtype=torch.long)
    strong, strong_labels = cutout_strong_view(images, labels)
    erased = (strong_labels == 0).flatten(1).any(1)
    assert 0.3 < erased.float().mean() < 0.7  # half the images, as the reference's p=0.5
    assert not torch.equal(strong, images) and strong_labels.dtype == labels.dtype
    inside = strong_labels[erased] == 0
    assert 0.01 < inside.float().mean() < 0.45


def test_abd_second_network_starts_self_training_from_the_pretrained_one():
    torch.manual_seed(0)
    method = make_method("abd", 2, bcp_pretrain_fraction=0.5)
    losses = method.training_step(*make_batches(2), StepInfo(iteration=1, total=10))
    losses["main"].backward()
    assert all(p.grad is None for p in method.second.parameters())  # waits out the pre-training
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.after_optimiser_step(StepInfo(iteration=4, total=10))
    for network in (method.second, method.teacher):
        assert all(torch.equal(a, b) for a, b in zip(network.parameters(), method.student.parameters()))
    losses = method.training_step(*make_batches(2), StepInfo(iteration=6, total=10))
    assert set(losses) == {"main", "bcp", "cross_mixed", "cross_displaced"}
    losses["main"].backward()
    assert all(p.grad is not None for p in method.second.parameters())


def test_batch_dice_forgives_a_few_voxels_of_a_class_absent_from_one_image():
    """SSL4MIS's DiceLoss sums over the batch: a class missing from one image's target costs
    that image nothing, where the per-image Dice (MONAI's default) takes it as a total miss."""
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[0, 0, :4] = 1  # class 1 in the first image only
    probabilities = F.one_hot(target[:, 0], 2).movedim(-1, 1).float()
    probabilities[1, :, 0, 0] = torch.tensor([0.0, 1.0])  # one voxel of class 1 in the second image
    per_image, over_batch = soft_dice_loss(probabilities, target, 2), soft_dice_loss(probabilities, target, 2, batch=True)
    assert per_image > 0.24 and over_batch < 0.03
    weights = torch.ones(2, 1, 8, 8)
    assert torch.isclose(weighted_supervised_loss(probabilities.log().clamp_min(-30), target, weights, 2, batch=True),
                         0.5 * (F.cross_entropy(probabilities.log().clamp_min(-30), target[:, 0]) + over_batch), atol=1e-3)


def test_every_method_takes_the_dice_reduction_and_refuses_another():
    for name in ("supervised", "bcp", "abd", "cps"):
        assert "dice_over" in method_class(name).all_options()
        assert make_method(name, 2, dice_over="batch").dice_batch
        assert not make_method(name, 2).dice_batch
    with pytest.raises(ValueError, match="dice_over must be sample or batch"):
        make_method("supervised", 2, dice_over="image")
