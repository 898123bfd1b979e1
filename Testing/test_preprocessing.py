"""Plans, normalisation and resampling (back to the original grid exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures_data import ROTATED_DIRECTION, rotated_geometry, two_box_label
from SSLSegmentLib.data import Geometry
from SSLSegmentLib.preprocessing import (DEFAULT_CT_WINDOW, Plan, make_plan, normalise, preprocess,
                                         resample_image, resample_to_geometry, resampled_geometry)


def _geometry(spacing, size=(10, 10, 10)):
    return Geometry(spacing, (0.0, 0.0, 0.0), size=size)


def test_plan_uses_median_spacing_and_nnunet_anisotropy_rule():
    isotropic = make_plan([_geometry((1, 1, 1)), _geometry((1, 1, 2)), _geometry((2, 2, 2.5))])
    assert isotropic.target_spacing == (1.0, 1.0, 2.0) and isotropic.dim == 3
    thick = make_plan([_geometry((0.7, 0.7, 5.0)), _geometry((0.8, 0.8, 3.0)), _geometry((0.9, 0.9, 4.0))])
    assert thick.target_spacing == (0.8, 0.8, 4.0) and thick.dim == 2     # 4.0 / 0.8 = 5 > 3
    assert make_plan([_geometry((1, 1, 3.0))]).dim == 3                    # exactly 3 is not above it
    assert make_plan([_geometry((0.7, 0.7, 5.0))], dim=3).dim == 3


def test_plan_dict_round_trip_and_ct_default_window():
    plan = make_plan([_geometry((1, 1, 2))], normalisation="ct")
    assert plan.ct_window == DEFAULT_CT_WINDOW
    assert Plan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError):
        Plan(4, (1, 1, 1))


def test_zscore_per_case():
    image = np.random.default_rng(0).normal(50, 7, size=(8, 9, 10))
    out = normalise(image, Plan(3, (1, 1, 1)))
    assert out.dtype == np.float32 and abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4
    assert np.all(normalise(np.full((2, 2, 2), 5.0), Plan(3, (1, 1, 1))) == 0)


def test_ct_window_clips_then_scales_to_unit_range():
    plan = Plan(3, (1, 1, 1), normalisation="ct", ct_window=(-100, 300))
    out = normalise(np.array([[[-1000.0, -100.0, 100.0, 300.0, 2000.0]]]), plan)
    assert np.allclose(out, [[[0.0, 0.0, 0.5, 1.0, 1.0]]])


def test_resampled_grid_keeps_field_of_view_centre_and_direction():
    geometry = rotated_geometry(shape_zyx=(6, 8, 10), spacing=(0.8, 1.1, 2.5))
    target = resampled_geometry(geometry, (0.4, 2.2, 1.0))
    assert target.size == (20, 4, 15) and target.direction == geometry.direction
    centre = lambda g: g.ijk_to_lps() @ np.append((np.array(g.size) - 1) / 2, 1.0)  # noqa: E731
    assert np.allclose(centre(target), centre(geometry))


def test_linear_resampling_reproduces_a_linear_ramp():
    """Linear interpolation of a function linear in physical space is exact inside the volume."""
    geometry = rotated_geometry(shape_zyx=(8, 10, 12), spacing=(1.0, 1.5, 2.0))
    ramp = _physical_ramp(geometry)
    resampled, target = resample_image(ramp, geometry, (0.75, 0.75, 1.0))
    inner = (slice(2, -2),) * 3
    assert np.allclose(resampled[inner], _physical_ramp(target)[inner], atol=1e-3)


def _physical_ramp(geometry):
    z, y, x = np.meshgrid(*[np.arange(n) for n in geometry.shape_zyx], indexing="ij")
    points = np.stack([x, y, z, np.ones_like(x)]).reshape(4, -1)
    lps = (geometry.ijk_to_lps() @ points)[:3]
    return (0.5 * lps[0] - 0.25 * lps[1] + 0.1 * lps[2]).reshape(geometry.shape_zyx).astype(np.float32)


def test_label_resampling_is_nearest_and_returns_exactly_to_the_original_grid():
    geometry = rotated_geometry()
    label = two_box_label()
    fine, fine_geometry = resample_image(label, geometry, (0.4, 0.55, 1.25), is_label=True)
    assert set(np.unique(fine)) == {0, 1, 2} and fine.dtype == label.dtype
    back = resample_to_geometry(fine, fine_geometry, geometry, is_label=True)
    assert back.shape == geometry.shape_zyx and np.array_equal(back, label)


def test_probabilities_resampled_per_channel():
    geometry = rotated_geometry()
    coarse = resampled_geometry(geometry, (1.6, 2.2, 5.0))
    probabilities = np.random.default_rng(0).dirichlet([1, 1, 1], size=coarse.shape_zyx).transpose(3, 0, 1, 2)
    back = resample_to_geometry(probabilities.astype(np.float32), coarse, geometry, is_label=False)
    assert back.shape == (3,) + geometry.shape_zyx
    assert np.allclose(back.sum(axis=0), 1.0, atol=1e-5)  # linear interpolation keeps the sum


def test_preprocess_3d_and_2d():
    geometry = Geometry((0.5, 0.5, 4.0), (1.0, 2.0, 3.0), ROTATED_DIRECTION, (16, 16, 5))
    image = np.random.default_rng(0).normal(size=geometry.shape_zyx).astype(np.float32)
    label = np.zeros(geometry.shape_zyx, np.int64)
    label[1:4, 4:12, 4:12] = 1
    image_3d, label_3d, geometry_3d = preprocess(image, geometry, Plan(3, (1.0, 1.0, 2.0)), label)
    assert geometry_3d.spacing == (1.0, 1.0, 2.0) and image_3d.shape == label_3d.shape == (10, 8, 8)
    image_2d, label_2d, geometry_2d = preprocess(image, geometry, Plan(2, (1.0, 1.0, 2.0)), label)
    assert geometry_2d.spacing == (1.0, 1.0, 4.0) and image_2d.shape == (5, 8, 8)   # slices kept
    assert label_2d is not None and set(np.unique(label_2d)) == {0, 1}
    same, none, same_geometry = preprocess(image, geometry, Plan(3, geometry.spacing))
    assert none is None and same_geometry == geometry and abs(float(same.mean())) < 1e-5
