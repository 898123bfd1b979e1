"""Dice and HD95 against hand-computed values, including the empty-mask convention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from SSLSegmentLib.metrics import dice_per_class, evaluate_case, hd95_per_class, summarise

SHAPE = (12, 10, 10)


def _cube(z0, y0=2, x0=2, side=6, value=1, shape=SHAPE):
    label = np.zeros(shape, np.int64)
    label[z0:z0 + side, y0:y0 + side, x0:x0 + side] = value
    return label


def test_results_are_keyed_by_class_index():
    truth = _cube(2) + _cube(8, side=2, value=2)
    assert list(dice_per_class(truth, truth, 3)) == [1, 2]
    assert list(hd95_per_class(truth, truth, 3, (1, 1, 1))) == [1, 2]


def test_dice_hand_computed():
    truth = np.zeros(SHAPE, np.int64)
    truth[2:6, 2:6, 2:6] = 1                      # 64 voxels
    pred = np.zeros(SHAPE, np.int64)
    pred[2:6, 2:6, 3:7] = 1                       # shifted by one along x: 48 shared
    assert dice_per_class(pred, truth, 2) == pytest.approx({1: 2 * 48 / 128})
    assert dice_per_class(truth, truth, 2) == {1: 1.0}


def test_hd95_scales_with_anisotropic_spacing():
    """Cubes 2 voxels apart along z: a quarter of the surface is 2 voxels away, so HD95 = 2 voxels."""
    truth, pred = _cube(2), _cube(4)
    assert hd95_per_class(pred, truth, 2, (1.0, 1.0, 1.0)) == pytest.approx({1: 2.0})
    assert hd95_per_class(pred, truth, 2, (3.0, 1.0, 1.0)) == pytest.approx({1: 6.0})
    shifted_in_x = _cube(2, x0=4)
    assert hd95_per_class(shifted_in_x, truth, 2, (3.0, 1.0, 1.0)) == pytest.approx({1: 2.0})
    assert hd95_per_class(truth, truth, 2, (3.0, 1.0, 1.0)) == {1: 0.0}


def test_empty_mask_convention():
    spacing = (3.0, 1.0, 1.0)
    diagonal = math.sqrt(36 ** 2 + 10 ** 2 + 10 ** 2)
    truth = _cube(2)                                  # class 1 present, class 2 absent from both
    empty = np.zeros(SHAPE, np.int64)
    assert dice_per_class(truth, truth, 3) == {1: 1.0, 2: 1.0}
    assert hd95_per_class(truth, truth, 3, spacing) == {1: 0.0, 2: 0.0}
    assert dice_per_class(empty, truth, 3) == {1: 0.0, 2: 1.0}         # missed class 1
    assert hd95_per_class(empty, truth, 3, spacing) == pytest.approx({1: diagonal, 2: 0.0})
    assert dice_per_class(truth, empty, 3) == {1: 0.0, 2: 1.0}         # class 1 predicted but absent
    assert hd95_per_class(truth, empty, 3, spacing) == pytest.approx({1: diagonal, 2: 0.0})


def test_evaluate_and_summarise():
    truth = _cube(2) + _cube(8, side=2, value=2)
    first = evaluate_case(truth, truth, 3, (1.0, 1.0, 1.0), ["organ", "lesion"])
    assert first == {"dice": {"organ": 1.0, "lesion": 1.0}, "hd95": {"organ": 0.0, "lesion": 0.0},
                     "mean_dice": 1.0, "mean_hd95": 0.0}
    second = evaluate_case(np.zeros(SHAPE, np.int64), truth, 3, (1.0, 1.0, 1.0), ["organ", "lesion"])
    assert second["dice"] == {"organ": 0.0, "lesion": 0.0}
    summary = summarise([first, second])
    assert summary["cases"] == 2 and summary["dice"] == {"organ": 0.5, "lesion": 0.5}
    assert summary["mean_dice"] == 0.5 and summary["dice_std"]["organ"] == 0.5
    assert all(np.isfinite(v) for v in summary["hd95"].values())
    assert summarise([])["cases"] == 0
    assert list(evaluate_case(truth, truth, 3, (1, 1, 1))["dice"]) == ["class_1", "class_2"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((2, 2, 2), np.int64), np.zeros((2, 2, 3), np.int64), 2)
    with pytest.raises(ValueError, match="outside"):
        dice_per_class(np.full((2, 2, 2), 3), np.zeros((2, 2, 2), np.int64), 2)
