import numpy as np

from SSLSegmentLib.postprocessing import keep_largest_component


def test_only_the_largest_component_of_each_class_stays():
    label = np.zeros((8, 16, 16), np.uint8)
    label[1:5, 1:6, 1:6] = 1  # class 1, large
    label[6, 14, 14] = 1  # class 1, a stray voxel
    label[2:4, 10:12, 10:12] = 2  # class 2, large
    label[7, 0, 0] = 2  # class 2, stray
    label[7, 15, 0] = 2  # class 2, stray
    cleaned = keep_largest_component(label)
    assert cleaned[6, 14, 14] == 0 and cleaned[7, 0, 0] == 0 and cleaned[7, 15, 0] == 0
    assert (cleaned == 1).sum() == 4 * 5 * 5 and (cleaned == 2).sum() == 2 * 2 * 2
    assert label[6, 14, 14] == 1  # the input is left as it was


def test_diagonal_neighbours_are_one_component():
    label = np.zeros((3, 3, 3), np.uint8)
    label[0, 0, 0] = label[1, 1, 1] = label[2, 2, 2] = 1
    assert (keep_largest_component(label) == 1).sum() == 3
