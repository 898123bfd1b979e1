"""Synthetic phantoms: deterministic, varied, fast, and written as a real dataset."""

from __future__ import annotations

import numpy as np

from SSLSegmentLib.data import discover_dataset, load_labelled_case, read_image, read_label
from SSLSegmentLib.phantoms import PHANTOM_CLASSES, PHANTOM_ORIGIN, PHANTOM_SPACING, make_phantom, write_phantom_dataset


def test_phantom_is_deterministic_with_two_classes():
    image, label = make_phantom(seed=3)
    again_image, again_label = make_phantom(seed=3)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape == (32, 48, 48)
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)
    assert set(np.unique(label)) == {0, 1, 2}
    # The organ is brighter than the background and the lesion, whatever the noise and bias.
    means = [image[label == k].mean() for k in range(3)]
    assert means[1] > means[2] > means[0]


def test_shapes_vary_between_seeds():
    labels = [make_phantom(shape=(16, 32, 32), seed=seed)[1] for seed in range(4)]
    centroids = [np.argwhere(label == 1).mean(axis=0) for label in labels]
    sizes = [int((label > 0).sum()) for label in labels]
    assert len(set(sizes)) == 4
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1:]) > 0.5
    assert all((label == 2).sum() > 20 for label in labels)


def test_written_dataset_is_discoverable_with_named_classes(tmp_path):
    folders = write_phantom_dataset(tmp_path, n_labelled=2, n_unlabelled=1, n_test=1, shape=(8, 16, 16), seed=1)
    dataset = discover_dataset(folders["images"], folders["labels"])
    assert [c.name for c in dataset.labelled] == ["case_000", "case_001"]
    assert [c.name for c in dataset.unlabelled] == ["case_002"]
    assert dataset.class_names == [c.name for c in PHANTOM_CLASSES] == ["organ", "lesion"]
    image, label, geometry = load_labelled_case(dataset.labelled[0], dataset.classes)
    assert geometry.spacing == PHANTOM_SPACING and geometry.origin == PHANTOM_ORIGIN
    assert image.shape == label.shape == (8, 16, 16)
    assert sorted(p.name for p in folders["test_labels"].iterdir()) == ["test_000.seg.nrrd"]
    assert read_image(folders["test_images"] / "test_000.nrrd")[1].spacing == PHANTOM_SPACING


def test_labelmap_format(tmp_path):
    folders = write_phantom_dataset(tmp_path, n_labelled=1, n_unlabelled=0, n_test=0, shape=(8, 16, 16),
                                    label_format="nii.gz")
    label = read_label(folders["labels"] / "case_000.nii.gz")
    assert set(label.segments) <= {1, 2} and label.geometry.spacing == PHANTOM_SPACING
