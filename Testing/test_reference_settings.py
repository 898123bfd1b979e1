"""Issue 14, section 1: settings that follow the references (SSL4MIS, the official BCP code),
each with the reference's value as the default and the departure one option away."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from SSLSegmentLib.config import TrainConfig
from SSLSegmentLib.data.cases import discover_dataset
from SSLSegmentLib.errors import InputError
from SSLSegmentLib.methods import MethodSettings, StepInfo, method_class
from SSLSegmentLib.methods import bcp as bcp_module
from SSLSegmentLib.methods.base import consistency_weight, sigmoid_rampup
from SSLSegmentLib.methods.helpers import color_jitter, perturbation_noise
from SSLSegmentLib.methods.losses import confident_pseudo_label_loss, supervised_loss, symmetric_kl
from SSLSegmentLib.methods.uamt import masked_mse, uncertainty_threshold
from SSLSegmentLib.networks import build_network, supports_dropout
from SSLSegmentLib.training.run_folder import RunFolder
from SSLSegmentLib.training.trainer import Trainer, build_method

NUM_CLASSES = 4
STEP = StepInfo(iteration=5, total=10, consistency_weight=0.5)


def make_method(name, dim=2, dropout=0.0, **extra):
    def factory(name=None, out_channels=None):
        return build_network(name or "unet", dim, 1, out_channels or NUM_CLASSES, size="tiny",
                             dropout=dropout if name is None else 0.0)

    return method_class(name)(MethodSettings(extra={"discriminator_width": 4, "uamt_passes": 2, **extra}),
                              factory, NUM_CLASSES, dim)


def batches(n=2, size=32):
    label = torch.randint(0, NUM_CLASSES, (n, 1, size, size))
    return {"image": torch.randn(n, 1, size, size) + label, "label": label}, {"image": torch.randn(n, 1, size, size)}


def dropouts(network: nn.Module) -> list[nn.Module]:
    return [m for m in network.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


# --- ramp-up -----------------------------------------------------------------------------------
def test_rampup_spans_the_whole_run_as_ssl4mis():
    assert TrainConfig().rampup_fraction == 1.0 and MethodSettings().rampup_fraction == 1.0
    settings = MethodSettings(consistency=0.1)
    total = 30000  # SSL4MIS: 0.1 * sigmoid_rampup(iteration // 150, 200)
    for iteration in (0, 4500, 15000, 22500, 29850):
        reference = 0.1 * sigmoid_rampup(iteration // 150, 200)
        assert consistency_weight(settings, iteration, total) == pytest.approx(reference, rel=1e-9)
    assert consistency_weight(settings, 15000, total) == pytest.approx(0.1 * math.exp(-1.25))


# --- perturbation noise ------------------------------------------------------------------------
def test_teacher_noise_is_the_references_in_units_of_the_intensity_range():
    image = torch.randn(3, 1, 16, 16)
    settings = MethodSettings()
    torch.manual_seed(0)
    noise = perturbation_noise(image, settings) - image
    torch.manual_seed(0)
    rescaled = 7.0 * image + 3.0  # another normalisation of the same images: the same noise relative to them
    assert torch.allclose(perturbation_noise(rescaled, settings) - rescaled, 7.0 * noise, atol=1e-4)
    span = image.amax(dim=(1, 2, 3), keepdim=True) - image.amin(dim=(1, 2, 3), keepdim=True)
    assert (noise.abs() <= 0.2 * span + 1e-5).all()  # clamp(N(0, 0.1^2), -0.2, 0.2) in [0, 1] units
    assert 0.05 < float((noise / span).std()) < 0.1
    absolute = perturbation_noise(image, MethodSettings(extra={"noise_scale": "absolute"})) - image
    assert absolute.abs().max() <= 0.2 + 1e-6  # the earlier noise, in z-score units


@pytest.mark.parametrize("name", ["mean_teacher", "uamt"])
def test_teacher_sees_range_scaled_noise(name):
    torch.manual_seed(0)
    method = make_method(name).train()
    seen = []
    method.teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    labelled, unlabelled = batches()
    unlabelled["image"] = unlabelled["image"] * 10.0  # a wide intensity range: large noise
    method.training_step(labelled, unlabelled, StepInfo(5, 10, 0.1))
    assert seen and all((s - unlabelled["image"]).abs().max() > 0.5 for s in seen)


# --- UA-MT -------------------------------------------------------------------------------------
def test_uamt_threshold_uses_ln_2_as_the_reference():
    assert uncertainty_threshold(10, 10) == pytest.approx(math.log(2))
    assert uncertainty_threshold(0, 10) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert uncertainty_threshold(10, 10, NUM_CLASSES) == pytest.approx(math.log(NUM_CLASSES))


@pytest.mark.parametrize("option, certain", [("reference", 0.0), ("classes", 1.0)])
def test_uamt_mask_with_four_classes(option, certain):
    """An entropy of 1.0 nat is uncertain against ln 2 (0.69) but certain against ln 4 (1.39)."""
    torch.manual_seed(0)
    method = make_method("uamt", uamt_threshold_log=option)
    labelled, unlabelled = batches()
    target = torch.full((2, NUM_CLASSES, 32, 32), 1.0 / NUM_CLASSES)
    method.teacher_target = lambda images: (target, torch.full((2, 1, 32, 32), 1.0))
    losses = method.training_step(labelled, unlabelled, StepInfo(10, 10, 0.1))
    assert float(losses["certain_fraction"]) == certain


def test_uamt_mse_is_a_mean_over_classes_and_the_reference_divides_by_two():
    """SSL4MIS divides the masked squared error by 2 * sum(mask) on every data set; here by C."""
    student = torch.zeros(1, NUM_CLASSES, 2, 2)
    teacher = torch.full((1, NUM_CLASSES, 2, 2), 0.5)
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    squared_sum = NUM_CLASSES * 2 * 0.25  # two certain voxels, every class off by 0.5
    assert float(masked_mse(student, teacher, mask)) == pytest.approx(squared_sum / (NUM_CLASSES * 2))
    assert float(masked_mse(student, teacher, mask, "reference")) == pytest.approx(squared_sum / (2 * 2))
    torch.manual_seed(0)
    method = make_method("uamt", uamt_mse_denominator="reference")
    labelled, unlabelled = batches()
    method.teacher_target = lambda images: (torch.full((2, NUM_CLASSES, 32, 32), 1.0 / NUM_CLASSES),
                                            torch.zeros(2, 1, 32, 32))
    ours = make_method("uamt")
    ours.load_state_dict(method.state_dict())
    ours.teacher_target = method.teacher_target
    ratio = (method.training_step(labelled, unlabelled, StepInfo(10, 10, 0.1))["consistency"]
             / ours.training_step(labelled, unlabelled, StepInfo(10, 10, 0.1))["consistency"])
    assert float(ratio) == pytest.approx(NUM_CLASSES / 2, rel=1e-4)


# --- FixMatch ----------------------------------------------------------------------------------
def test_fixmatch_follows_ssl4mis():
    cls = method_class("fixmatch")
    assert cls.default_consistency == 0.1
    torch.manual_seed(0)
    method = make_method("fixmatch").train()
    calls = {"teacher": [], "student": []}
    for key in calls:
        getattr(method, key).register_forward_hook(
            lambda m, args, out, key=key: calls[key].append((args[0], torch.is_grad_enabled())))
    labelled, unlabelled = batches()
    losses = method.training_step(labelled, unlabelled, StepInfo(5, 10, 0.1))
    [(weak, grad)] = calls["teacher"]  # pseudo-labels from the EMA teacher on the weak view, no gradient
    assert not grad and weak.shape == unlabelled["image"].shape
    assert len(calls["student"]) == 2  # the labelled batch, then the strong view
    assert float(losses["confident_fraction"]) == 1.0  # threshold 0: every voxel, as the reference
    student_only = make_method("fixmatch", fixmatch_pseudo_labels="student")
    student_only.teacher.register_forward_hook(lambda *a: pytest.fail("teacher used"))
    student_only.training_step(labelled, unlabelled, StepInfo(5, 10, 0.1))


def test_fixmatch_loss_is_ce_plus_dice():
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 8, 8)
    target = torch.softmax(3 * torch.randn(2, NUM_CLASSES, 8, 8), dim=1)
    loss, mask = confident_pseudo_label_loss(logits, target, 0.0, NUM_CLASSES)
    pseudo = target.argmax(1, keepdim=True)
    assert mask.all() and loss.item() == pytest.approx(supervised_loss(logits, pseudo, NUM_CLASSES).item(), rel=1e-4)
    ce_only, _ = confident_pseudo_label_loss(logits, target, 0.0, NUM_CLASSES, with_dice=False)
    assert ce_only.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, pseudo[:, 0]).item(), rel=1e-5)


def test_strong_view_is_colour_jitter_from_0_2_to_1_8():
    torch.manual_seed(0)
    images = torch.rand(400, 1, 8, 8) * 0.5  # below half the range: x1.8 is not clamped
    images[:, :, 0, 0], images[:, :, 0, 1] = 0.0, 1.0  # min 0 and range 1 in every sample ([0, 1] units)
    brightened = color_jitter(images, brightness=0.8, contrast=0.0)
    factors = (brightened[:, :, 1:, :].mean((1, 2, 3)) / images[:, :, 1:, :].mean((1, 2, 3)))
    assert 0.2 <= factors.min() < 0.3 and 1.7 < factors.max() <= 1.8 + 1e-4
    contrasted = color_jitter(images, brightness=0.0, contrast=0.8)
    spread = contrasted.std((1, 2, 3)) / images.std((1, 2, 3))
    assert spread.min() < 0.35 and spread.max() > 1.4


# --- R-Drop ------------------------------------------------------------------------------------
def test_rdrop_kl_is_averaged_over_classes_as_the_reference():
    torch.manual_seed(0)
    a, b = torch.randn(2, NUM_CLASSES, 8, 8), torch.randn(2, NUM_CLASSES, 8, 8)
    assert symmetric_kl(a, b, "mean").item() == pytest.approx(symmetric_kl(a, b, "sum").item() / NUM_CLASSES)
    reference = 0.5 * (torch.nn.functional.kl_div(a.log_softmax(-1), b.softmax(-1), reduction="none").mean()
                       + torch.nn.functional.kl_div(b.log_softmax(-1), a.softmax(-1), reduction="none").mean())
    assert symmetric_kl(a, b, "mean", dim=-1).item() == pytest.approx(reference.item(), rel=1e-5)
    assert method_class("rdrop").default_consistency == 0.5 and method_class("rdrop").default_dropout == 0.1


def test_rdrop_sums_the_supervised_loss_of_the_two_passes():
    torch.manual_seed(0)
    method = make_method("rdrop", rdrop_dropout=0.0).train()  # no dropout: both passes equal
    labelled, unlabelled = batches()
    losses = method.training_step(labelled, unlabelled, StepInfo(5, 10, 0.1))
    single = supervised_loss(method.network(labelled["image"]), labelled["label"], NUM_CLASSES)
    assert losses["supervised"].item() == pytest.approx(2 * single.item(), rel=1e-4)
    mean = make_method("rdrop", rdrop_dropout=0.0, rdrop_supervised="mean").train()
    mean.load_state_dict(method.state_dict())
    assert mean.training_step(labelled, unlabelled, StepInfo(5, 10, 0.1))["supervised"].item() == pytest.approx(
        single.item(), rel=1e-4)


def test_rdrop_uses_the_backbones_dropout():
    torch.manual_seed(0)
    method = make_method("rdrop", dropout=0.1).train()
    assert method.network is method.inference_network() and dropouts(method.network)
    image = torch.randn(1, 1, 32, 32)
    assert not torch.equal(method.network(image), method.network(image))


# --- dropout -----------------------------------------------------------------------------------
def test_unet_offers_dropout_without_changing_its_weights():
    plain = build_network("unet", 2, 1, 3, "tiny")
    dropped = build_network("unet", 2, 1, 3, "tiny", dropout=0.2)
    assert not dropouts(plain) and all(m.p == 0.2 for m in dropouts(dropped))
    dropped.load_state_dict(plain.state_dict())  # model files load either way
    assert supports_dropout("unet") and not supports_dropout("swin_unet")
    with pytest.raises(InputError, match="offers no dropout"):
        build_network("swin_unet", 2, 1, 3, "tiny", dropout=0.1)


@pytest.mark.parametrize("method, configured, expected", [
    ("mean_teacher", None, 0.1), ("uamt", None, 0.1), ("rdrop", None, 0.1), ("supervised", None, 0.0),
    ("bcp", None, 0.0), ("mean_teacher", 0.0, 0.0), ("cps", 0.3, 0.3)])
def test_trainer_gives_the_methods_their_dropout(method, configured, expected):
    data = SimpleNamespace(plan=SimpleNamespace(dim=2), num_classes=3)
    built = build_method(TrainConfig(method=method, size="tiny", dropout=configured), data)
    found = {m.p for m in dropouts(built.inference_network())}
    assert found == ({expected} if expected else set())


# --- DAN ---------------------------------------------------------------------------------------
def test_dan_follows_ssl4mis():
    torch.manual_seed(0)
    method = make_method("adversarial").train()
    assert {m.p for m in dropouts(method.discriminator)} == {0.5}
    modes = []
    method.discriminator.register_forward_hook(lambda m, args, out: modes.append(m.training))
    losses = method.training_step(*batches(), StepInfo(5, 10, 0.1))
    assert modes == [False, True]  # fooling term without dropout; its own loss with
    assert 0.0 <= float(losses["discriminator_accuracy"]) <= 1.0
    late = StepInfo(9, 10)
    assert method.learning_rate_factor(late, "discriminator") == 1.0  # constant, as the reference
    assert method.learning_rate_factor(late, "main") < 0.2
    poly = make_method("adversarial", dan_discriminator_schedule="poly")
    assert poly.learning_rate_factor(late, "discriminator") == method.learning_rate_factor(late, "main")


@pytest.mark.parametrize("configured, expected", [(None, 0.01), (0.1, 0.1)])
def test_dan_weighs_its_fooling_term_a_tenth_of_the_reference_unless_asked(configured, expected):
    """lambda max 0.01 by default (a measured departure: the reference's 0.1 pulled the pool's
    predictions to the labelled patients' sizes); ``--consistency 0.1`` is SSL4MIS's."""
    data = SimpleNamespace(plan=SimpleNamespace(dim=2), num_classes=NUM_CLASSES)
    built = build_method(TrainConfig(method="adversarial", size="tiny", consistency=configured), data)
    assert built.settings.consistency == expected
    losses = built.training_step(*batches(), StepInfo(5, 10, built.settings.consistency))
    supervised, adversarial = (float(losses[k].detach()) for k in ("supervised", "adversarial"))
    assert float(losses["main"].detach()) == pytest.approx(supervised + expected * adversarial, rel=1e-5)


def test_dan_discriminator_has_the_references_depth():
    """Four strided convolutions to 8 times the width, a 2 x 2 grid pooled in 2D and a global pool
    in 3D, as SSL4MIS's FCDiscriminator and FC3DDiscriminator; three (stops 12 to 15) one option
    away, with the same weights' names as before; patches smaller than 16 are padded."""
    from SSLSegmentLib.networks.discriminator import Discriminator  # noqa: PLC0415

    def strided(module):
        return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]

    dan = make_method("adversarial", discriminator_sees_image=True).discriminator  # the references' inputs
    w = strided(dan)[0].out_channels  # the tests' width
    assert [c.out_channels for c in strided(dan)] == [w, w, 2 * w, 4 * w, 8 * w]
    assert dan.body[-1].in_features == 8 * w * 4
    three = make_method("adversarial", discriminator_layers=3, discriminator_sees_image=True).discriminator
    assert [c.out_channels for c in strided(three)] == [w, w, 2 * w, 4 * w] and three.body[-1].in_features == 4 * w
    assert [k for k in three.state_dict() if k.startswith("body")] == \
        ["body.2.weight", "body.2.bias", "body.5.weight", "body.5.bias", "body.9.weight", "body.9.bias"]
    in_3d = Discriminator(3, 2, width=8)
    assert in_3d.body[-1].in_features == 64
    logits = in_3d(torch.rand(2, 2, 8, 24, 24).softmax(dim=1), torch.rand(2, 1, 8, 24, 24))  # depth 8 < 16: padded
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    assert dan(torch.rand(3, 4, 32, 32).softmax(dim=1), torch.rand(3, 1, 32, 32)).shape == (3,)
    as_2d_reference = make_method("adversarial", discriminator_stem_activation=False,
                                  discriminator_sees_image=True).discriminator
    assert isinstance(as_2d_reference.body[0], nn.Conv2d) and isinstance(dan.body[0], nn.LeakyReLU)
    assert len(strided(as_2d_reference)) == 5
    with pytest.raises(ValueError, match="at least 2"):
        Discriminator(2, 2, layers=1)
    with pytest.raises(ValueError, match="'discriminator_stem_activation' must be true or false, got 'False'"):
        make_method("adversarial", discriminator_stem_activation="False")  # text, not JSON false


def test_dan_discriminator_can_judge_the_map_alone():
    """With the image (both references) the verdict changes with the image; with
    ``discriminator_sees_image: false``, the default since stop 28, it depends on the map alone."""
    torch.manual_seed(0)
    maps, image = torch.rand(2, 4, 32, 32).softmax(dim=1), torch.rand(2, 1, 32, 32)
    for sees_image in (True, False):
        judge = make_method("adversarial", discriminator_sees_image=sees_image).discriminator.eval()
        moved = not torch.equal(judge(maps, image), judge(maps, image + 1.0))
        assert moved == sees_image
        assert not torch.equal(judge(maps, image), judge(maps.flip(-1), image))
    assert make_method("adversarial").discriminator.image_conv is None  # the measured default
    assert make_method("adversarial", discriminator_sees_image=True).discriminator.image_conv is not None


def test_dan_discriminator_learns_from_eval_mode_predictions_without_gradient():
    torch.manual_seed(0)
    method = make_method("adversarial", dropout=0.5).train()
    student_modes = []
    method.student.register_forward_hook(lambda m, args, out: student_modes.append(m.training))
    losses = method.training_step(*batches(), StepInfo(5, 10, 0.1))
    assert student_modes == [True, False] and method.student.training
    grads = torch.autograd.grad(losses["discriminator"], list(method.student.parameters()), allow_unused=True)
    assert all(g is None for g in grads)


def test_dan_draws_its_labelled_patches_as_the_unlabelled_ones():
    """Uniformly, as SSL4MIS: with foreground oversampling the discriminator could tell the
    labelled patches by their share of foreground, and the fooling term would grow every class."""
    assert make_method("adversarial").labelled_foreground_fraction(0.33) == 0.0
    oversampled = make_method("adversarial", dan_labelled_sampling="oversampled")
    assert oversampled.labelled_foreground_fraction(0.33) == 0.33
    assert make_method("mean_teacher").labelled_foreground_fraction(0.33) == 0.33
    with pytest.raises(ValueError, match="dan_labelled_sampling"):
        make_method("adversarial", dan_labelled_sampling="sometimes").labelled_foreground_fraction(0.33)


@pytest.mark.parametrize("method, fraction", [("adversarial", 0.0), ("supervised", TrainConfig.foreground_fraction)])
def test_trainer_samples_labelled_patches_as_the_method_asks(phantom_data, tmp_path, method, fraction):
    run = RunFolder(tmp_path / "run")
    run.prepare()
    config = TrainConfig(method=method, size="tiny", dim="2", patch_size=(32, 32), iterations=1, val_cases=0,
                         device="cpu", cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(config, discover_dataset(phantom_data["images"], phantom_data["labels"]), run,
                      logging.getLogger("test_reference_settings"))
    trainer.setup()
    assert trainer.stream.labelled.foreground_fraction == fraction


# --- BCP ---------------------------------------------------------------------------------------
def test_bcp_restarts_the_learning_rate_for_self_training():
    method = make_method("bcp")  # pre-training: the first 20 % of the run
    assert method.learning_rate_factor(StepInfo(0, 100)) == 1.0
    assert method.learning_rate_factor(StepInfo(19, 100)) < 0.1
    assert method.learning_rate_factor(StepInfo(20, 100)) == 1.0  # self-training starts at the full rate
    assert method.learning_rate_factor(StepInfo(60, 100)) == pytest.approx(0.5 ** 0.9)
    whole = make_method("bcp", bcp_lr_schedule="whole")
    assert whole.learning_rate_factor(StepInfo(20, 100)) == pytest.approx(0.8 ** 0.9)


def test_bcp_cleans_pseudo_labels_by_default(monkeypatch):
    calls = []
    original = bcp_module.largest_component_labels
    monkeypatch.setattr(bcp_module, "largest_component_labels", lambda labels: calls.append(1) or original(labels))
    torch.manual_seed(0)
    make_method("bcp", bcp_pretrain_fraction=0.0).training_step(*batches(), StepInfo(5, 10))
    assert calls == [1]
    make_method("bcp", bcp_pretrain_fraction=0.0, bcp_largest_component=False).training_step(*batches(), StepInfo(5, 10))
    assert calls == [1]


def test_trainer_sets_each_groups_learning_rate_from_the_method(phantom_data, tmp_path):
    """DAN through the real trainer: the discriminator's rate stays at Adam's 1e-4 while the
    segmentation network's decays."""
    from SSLSegmentLib.data.cases import discover_dataset  # noqa: PLC0415
    from SSLSegmentLib.training.run_folder import RunFolder  # noqa: PLC0415
    from SSLSegmentLib.training.trainer import Trainer  # noqa: PLC0415

    run = RunFolder(tmp_path / "run")
    run.prepare()
    config = TrainConfig(method="adversarial", size="tiny", dim="2", patch_size=(32, 32), iterations=3, val_cases=0,
                         device="cpu", cache_dir=str(tmp_path / "cache"), method_options={"discriminator_width": 4})
    trainer = Trainer(config, discover_dataset(phantom_data["images"], phantom_data["labels"]), run,
                      logging.getLogger("test_reference_settings"))
    trainer.setup()
    trainer.train()
    assert trainer.optimisers["discriminator"].param_groups[0]["lr"] == pytest.approx(1e-4)
    assert trainer.optimisers["main"].param_groups[0]["lr"] < 0.01 * 0.5
    records = [r for r in run.read_progress() if "iteration" in r]
    assert "discriminator_accuracy" in records[-1]["losses"]


# --- departures from SSL4MIS that follow the papers: the reference one option away -----------
def test_entropy_minimisation_on_the_unlabelled_images_or_the_whole_batch():
    from SSLSegmentLib.methods.losses import normalised_entropy  # noqa: PLC0415

    torch.manual_seed(0)
    labelled, unlabelled = batches()
    for option, first in (("unlabelled", 2), ("all", 0)):
        method = make_method("entropy_minimization", em_images=option).train()
        torch.manual_seed(1)
        entropy = method.training_step(labelled, unlabelled, STEP)["entropy"]
        with torch.no_grad():
            logits = method.student(torch.cat([labelled["image"], unlabelled["image"]]))
        assert entropy.item() == pytest.approx(normalised_entropy(logits[first:].softmax(dim=1)).mean().item(), rel=1e-5)


def test_cps_pseudo_loss_of_the_paper_or_ssl4mis():
    from SSLSegmentLib.methods.cps import cross_pseudo_loss  # noqa: PLC0415
    from SSLSegmentLib.methods.losses import soft_dice_loss  # noqa: PLC0415

    torch.manual_seed(0)
    labelled, unlabelled = batches()
    images = torch.cat([labelled["image"], unlabelled["image"]])
    for option in ("ce_all", "dice_unlabelled"):
        method = make_method("cps", cps_pseudo_loss=option).train()
        losses = method.training_step(labelled, unlabelled, STEP)
        with torch.no_grad():
            first, second = method.student(images), method.second(images)
        if option == "ce_all":
            expected = cross_pseudo_loss(first, second)
        else:
            expected = soft_dice_loss(first[2:].softmax(dim=1), second[2:].argmax(dim=1, keepdim=True), NUM_CLASSES)
        assert losses["main_pseudo"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="cps_pseudo_loss"):
        make_method("cps", cps_pseudo_loss="dice").training_step(labelled, unlabelled, STEP)


@pytest.mark.parametrize("supervise_auxiliary, target", [(False, "detached"), (True, "attached")])
def test_cct_as_the_paper_or_ssl4mis(supervise_auxiliary, target):
    torch.manual_seed(0)
    labelled, unlabelled = batches()
    method = make_method("cct", cct_auxiliary_supervision=supervise_auxiliary, cct_main_target=target).train()
    state = torch.random.get_rng_state()
    losses = method.training_step(labelled, unlabelled, STEP)
    torch.random.set_rng_state(state)  # the same perturbations
    main, *auxiliary = method.network(torch.cat([labelled["image"], unlabelled["image"]]))
    outputs = [main, *auxiliary] if supervise_auxiliary else [main]
    expected = sum(supervised_loss(o[:2], labelled["label"], NUM_CLASSES) for o in outputs) / len(outputs)
    assert losses["supervised"].item() == pytest.approx(expected.item(), rel=1e-4)
    # the consistency reaches the layers after the tapped feature map only when attached (SSL4MIS)
    last = list(method.network.backbone.parameters())[-1]
    gradients = []
    for weight in (0.0, 1.0):
        torch.random.set_rng_state(state)
        loss = method.training_step(labelled, unlabelled, StepInfo(iteration=5, total=10, consistency_weight=weight))["main"]
        gradients.append(torch.autograd.grad(loss, last)[0])
    assert (not torch.allclose(gradients[0], gradients[1])) == (target == "attached")


def test_ict_draws_one_lambda_per_image_as_ssl4mis_when_asked(monkeypatch):
    from SSLSegmentLib.methods import ict as ict_module  # noqa: PLC0415

    seen = []
    original = ict_module.mix_unlabelled
    monkeypatch.setattr(ict_module, "mix_unlabelled", lambda *a: seen.append(a[2]) or original(*a))
    labelled, unlabelled = batches(n=4)
    for option in ("batch", "sample"):
        make_method("ict", ict_lambda=option).train().training_step(labelled, unlabelled, STEP)
    assert isinstance(seen[0], float)
    assert seen[1].shape == (4, 1, 1, 1) and len(set(seen[1].flatten().tolist())) == 4


@pytest.mark.parametrize("name, key", [("bcp", "bcp_optimiser"), ("cct", "cct_main_target"), ("cps", "cps_pseudo_loss"),
                                       ("entropy_minimization", "em_images"), ("ict", "ict_lambda"),
                                       ("mean_teacher", "noise_scale")])
def test_a_choice_option_with_another_value_is_an_error_naming_it(name, key):
    labelled, unlabelled = batches()
    method = make_method(name, **{key: "sometimes"}).train()
    step = StepInfo(iteration=5, total=10, consistency_weight=0.5)
    with pytest.raises(ValueError, match=f"{key} must be .* not 'sometimes'"):
        method.restarts_optimiser(step)  # what the trainer asks before each step (BCP reads it here)
        method.training_step(labelled, unlabelled, step)


def test_urpc_weighs_its_scales_equally_as_the_reference_or_halving_from_the_main_output():
    """The supervised loss over URPC's four outputs: their mean (reference), or halving weights
    8/15, 4/15, 2/15, 1/15 from the full-resolution output down."""
    from SSLSegmentLib.methods.urpc import scale_weights  # noqa: PLC0415

    assert torch.allclose(scale_weights(4, "equal"), torch.full((4,), 0.25))
    assert torch.allclose(scale_weights(4, "halving"), torch.tensor([8.0, 4.0, 2.0, 1.0]) / 15)
    assert torch.equal(scale_weights(3, "main"), torch.tensor([1.0, 0.0, 0.0]))
    labelled, unlabelled = batches()
    for kind, weights in (("equal", [0.25] * 4), ("halving", [8 / 15, 4 / 15, 2 / 15, 1 / 15]),
                          ("main", [1.0, 0.0, 0.0, 0.0])):
        torch.manual_seed(0)
        method = make_method("urpc", urpc_scale_weights=kind).train()
        state = {k: v.clone() for k, v in method.state_dict().items()}
        torch.manual_seed(1)
        losses = method.training_step(labelled, unlabelled, STEP)
        method.load_state_dict(state)
        torch.manual_seed(1)  # the same perturbations of the same features
        scales = method.network(torch.cat([labelled["image"], unlabelled["image"]]))
        per_scale = [float(supervised_loss(s[:2], labelled["label"], NUM_CLASSES).detach()) for s in scales]
        assert float(losses["supervised"]) == pytest.approx(sum(w * l for w, l in zip(weights, per_scale)))
    with pytest.raises(ValueError, match="urpc_scale_weights must be equal or halving or main"):
        make_method("urpc", urpc_scale_weights="nnunet")


def test_urpc_can_leave_out_its_coarsest_heads():
    """``urpc_scales``: 4 outputs as the reference (main, 1/2, 1/4, 1/8), or 3 without the 1/8
    head; the supervised loss and the consistency are over the outputs there are."""
    labelled, unlabelled = batches()
    images = torch.cat([labelled["image"], unlabelled["image"]])
    for scales in (4, 3, 2):
        torch.manual_seed(0)
        method = make_method("urpc", urpc_scales=scales).train()
        assert len(method.network(images)) == scales
        torch.manual_seed(1)
        losses = method.training_step(labelled, unlabelled, STEP)
        assert torch.isfinite(losses["main"]) and float(losses["consistency"]) > 0
    three, four = make_method("urpc", urpc_scales=3), make_method("urpc")
    assert len(three.network.heads) == 2 and len(four.network.heads) == 3
    with pytest.raises(ValueError, match="urpc_scales must be 4, 3, 2, not 5"):
        make_method("urpc", urpc_scales=5)


def test_urpc_can_keep_its_heads_gradient_off_the_backbone():
    """``urpc_head_gradient=detached``: the heads' losses train the heads alone; the backbone
    learns through its main output, whose supervised loss weighs 1 as in supervised-only."""
    labelled, unlabelled = batches()
    images = torch.cat([labelled["image"], unlabelled["image"]])
    for gradient, reaches_backbone in (("backbone", True), ("detached", False)):
        torch.manual_seed(0)
        method = make_method("urpc", urpc_head_gradient=gradient).train()
        heads_only = sum(output.square().mean() for output in method.network(images)[1:])
        heads_only.backward()
        backbone_gradients = [p.grad for p in method.network.backbone.parameters()]
        touched = any(g is not None and bool(g.abs().sum() > 0) for g in backbone_gradients)
        assert touched is reaches_backbone, gradient
        assert all(p.grad is not None for p in method.network.heads.parameters())
    torch.manual_seed(0)
    method = make_method("urpc", urpc_head_gradient="detached").train()
    state = {k: v.clone() for k, v in method.state_dict().items()}
    torch.manual_seed(1)
    losses = method.training_step(labelled, unlabelled, STEP)
    method.load_state_dict(state)
    torch.manual_seed(1)
    scales = method.network(images)
    per_scale = [float(supervised_loss(s[:2], labelled["label"], NUM_CLASSES).detach()) for s in scales]
    assert float(losses["supervised"]) == pytest.approx(sum(per_scale))
    with pytest.raises(ValueError, match="cannot take urpc_scale_weights=halving"):
        make_method("urpc", urpc_head_gradient="detached", urpc_scale_weights="halving")
    with pytest.raises(ValueError, match="urpc_head_gradient must be backbone or detached"):
        make_method("urpc", urpc_head_gradient="frozen")
