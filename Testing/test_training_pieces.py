"""The small pieces of training every method relies on: ramp-up, EMA, poly schedule."""

import math

import pytest
import torch

from SSLSegmentLib.methods.base import MethodSettings, consistency_weight, ema_update, frozen_copy, sigmoid_rampup
from SSLSegmentLib.training.schedules import poly_lr


def test_sigmoid_rampup_matches_laine_and_aila():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(500, 100) == 1.0  # clipped after the ramp
    assert sigmoid_rampup(10, 0) == 1.0


def test_consistency_weight_ramps_to_lambda_max_over_the_fraction():
    settings = MethodSettings(consistency=0.1, rampup_fraction=0.5)
    assert consistency_weight(settings, 0, 1000) == pytest.approx(0.1 * math.exp(-5))
    assert consistency_weight(settings, 500, 1000) == pytest.approx(0.1)
    assert consistency_weight(settings, 250, 1000) < consistency_weight(settings, 400, 1000) < 0.1


def _constant_net(value: float) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return net


def test_ema_update_follows_the_student_early_then_averages():
    student = _constant_net(1.0)
    teacher = frozen_copy(_constant_net(0.0))
    ema_update(teacher, student, decay=0.99, iteration=0)  # alpha = min(1 - 1/1, 0.99) = 0
    assert all(torch.allclose(p, torch.ones_like(p)) for p in teacher.parameters())
    teacher = frozen_copy(_constant_net(0.0))
    ema_update(teacher, student, decay=0.99, iteration=1000)  # alpha = 0.99
    assert all(torch.allclose(p, torch.full_like(p, 0.01)) for p in teacher.parameters())
    ema_update(teacher, student, decay=0.99, iteration=3)  # alpha = min(1 - 1/4, 0.99) = 0.75
    expected = 0.75 * 0.01 + 0.25
    assert all(torch.allclose(p, torch.full_like(p, expected)) for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_ema_copies_batchnorm_statistics():
    student, teacher = _constant_net(1.0), frozen_copy(_constant_net(0.0))
    student[1].running_mean.fill_(3.0)
    ema_update(teacher, student, decay=0.99, iteration=50)
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)


def test_poly_lr():
    assert poly_lr(0.01, 0, 100) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 100, 100) == 0.0
