"""Images, labels and datasets: geometry kept exactly, classes matched by name, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from fixtures_data import rotated_geometry, slicer_scene, two_box_label, write_case  # noqa: F401 (fixture)
from SSLSegmentLib.data import (ClassInfo, Geometry, case_name, discover_dataset, list_image_cases, load_dataset_json,
                                load_labelled_case, read_image, read_label, write_image, write_labelmap,
                                write_segmentation)
from SSLSegmentLib.errors import InputError

FORMATS = [".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd"]


# --- geometry -------------------------------------------------------------------------------

@pytest.mark.parametrize("extension", FORMATS)
def test_image_round_trip_keeps_array_and_geometry(tmp_path, extension):
    geometry = rotated_geometry()
    array = np.random.default_rng(0).normal(size=geometry.shape_zyx).astype(np.float32)
    write_image(tmp_path / f"a{extension}", array, geometry)
    read_array, read_geometry = read_image(tmp_path / f"a{extension}")
    assert read_array.dtype == np.float32 and np.array_equal(read_array, array)
    # NIfTI stores its geometry in float32; the others in full double precision.
    tolerance = 1e-6 if ".nii" in extension else 1e-12
    assert read_geometry.size == geometry.size
    for field in ("spacing", "origin", "direction"):
        assert np.allclose(getattr(read_geometry, field), getattr(geometry, field), rtol=0, atol=tolerance), field
    assert read_geometry.matches(geometry, tol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_geometry_dict_round_trip_and_tolerance():
    geometry = rotated_geometry()
    assert Geometry.from_dict(json.loads(json.dumps(geometry.to_dict()))) == geometry
    nudged = Geometry(tuple(s * (1 + 1e-5) for s in geometry.spacing), geometry.origin, geometry.direction, geometry.size)
    assert geometry.matches(nudged)
    coarser = Geometry((0.8, 1.1, 2.6), geometry.origin, geometry.direction, geometry.size)
    assert not geometry.matches(coarser) and "spacing" in geometry.differences(coarser)[0]
    bigger = Geometry(geometry.spacing, geometry.origin, geometry.direction, (10, 8, 7))
    assert not geometry.matches(bigger)
    moved = Geometry(geometry.spacing, (3.0, -4.0, 10.5), geometry.direction, geometry.size)
    assert not geometry.matches(moved)


def test_ijk_to_lps_inverse():
    geometry = rotated_geometry()
    assert Geometry.from_ijk_to_lps(geometry.ijk_to_lps(), geometry.size).matches(geometry, tol=1e-12)


# --- bad images -----------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nothere.nrrd.*not found"):
        read_image(tmp_path / "nothere.nrrd")


def test_unreadable_file(tmp_path):
    (tmp_path / "broken.nrrd").write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="broken.nrrd.*unreadable"):
        read_image(tmp_path / "broken.nrrd")


def test_unsupported_extension(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"x")
    with pytest.raises(InputError, match="photo.png.*unsupported"):
        read_image(tmp_path / "photo.png")


def test_4d_image_rejected_but_single_frame_squeezed(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 4, 5, 6), np.float32), isVector=False), str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="t.nii.gz.*4D"):
        read_image(tmp_path / "t.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 4, 5, 6), np.float32), isVector=False), str(tmp_path / "one.nii.gz"))
    array, geometry = read_image(tmp_path / "one.nii.gz")
    assert array.shape == (4, 5, 6) and geometry.size == (6, 5, 4)


def test_vector_image_rejected(tmp_path):
    vector = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="rgb.nrrd.*multi-component"):
        read_image(tmp_path / "rgb.nrrd")


def test_nan_voxels_rejected(tmp_path):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    write_image(tmp_path / "nan.nrrd", array, Geometry.from_array_shape(array.shape))
    with pytest.raises(InputError, match="nan.nrrd.*1 voxels are NaN"):
        read_image(tmp_path / "nan.nrrd")


# --- labels ---------------------------------------------------------------------------------

def test_labelmap_names_values_or_uses_given_names(tmp_path):
    geometry = rotated_geometry()
    write_labelmap(tmp_path / "l.nii.gz", two_box_label(), geometry)
    label = read_label(tmp_path / "l.nii.gz")
    assert np.array_equal(label.array, two_box_label())
    assert [c.name for c in label.segments.values()] == ["label_1", "label_2"]
    named = read_label(tmp_path / "l.nii.gz", {1: "LV", 2: "RV"})
    assert {v: c.name for v, c in named.segments.items()} == {1: "LV", 2: "RV"}
    with pytest.raises(InputError, match=r"l.nii.gz.*\[2\].*not among the known classes"):
        read_label(tmp_path / "l.nii.gz", {1: "LV"})


def test_fractional_or_nan_labelmap_rejected(tmp_path):
    geometry = Geometry.from_array_shape((2, 3, 4))
    write_image(tmp_path / "f.nrrd", np.full((2, 3, 4), 0.5, np.float32), geometry)
    with pytest.raises(InputError, match="f.nrrd.*non-integer"):
        read_label(tmp_path / "f.nrrd")
    write_image(tmp_path / "n.nrrd", np.full((2, 3, 4), np.nan, np.float32), geometry)
    with pytest.raises(InputError, match="n.nrrd.*NaN"):
        read_label(tmp_path / "n.nrrd")


def test_segmentation_written_for_slicerio(tmp_path):
    geometry = rotated_geometry()
    classes = [ClassInfo("LV", (1.0, 0.0, 0.0)), ClassInfo("RV", (0.0, 0.5, 1.0))]
    write_segmentation(tmp_path / "s.seg.nrrd", two_box_label(), geometry, classes)
    segmentation = slicerio.read_segmentation(str(tmp_path / "s.seg.nrrd"))
    assert slicerio.segment_names(segmentation) == ["LV", "RV"]
    right = slicerio.segment_from_name(segmentation, "RV")
    assert right["color"] == [0.0, 0.5, 1.0] and right["terminology"]["type"][2] == "Tissue"
    # slicerio's voxels are (i, j, k) = (x, y, z)
    assert np.array_equal(slicerio.segment_mask(segmentation, "RV").transpose(2, 1, 0), two_box_label() == 2)
    back = read_label(tmp_path / "s.seg.nrrd")
    assert np.array_equal(back.array, two_box_label()) and back.geometry.matches(geometry, tol=1e-9)
    assert [(v, c.name, c.color) for v, c in back.segments.items()] == [(1, "LV", (1.0, 0.0, 0.0)), (2, "RV", (0.0, 0.5, 1.0))]


def test_segmentation_with_overlap_from_slicer_is_painted_in_order():
    """Slicer's own test file: 7 segments in layer 0 and an overlapping sphere in layer 1."""
    path = Path(slicerio.__file__).parent / "data" / "SegmentationOverlapping.seg.nrrd"
    if not path.is_file():
        pytest.skip("slicerio's test data is not installed")
    segmentation = slicerio.read_segmentation(str(path))
    label = read_label(path)
    names = [c.name for c in label.segments.values()]
    assert names == slicerio.segment_names(segmentation) and names[-1] == "overlapping sphere"
    sphere = slicerio.segment_mask(segmentation, "overlapping sphere").transpose(2, 1, 0)
    assert sphere.any() and np.all(label.array[sphere] == len(names))
    ribs = slicerio.segment_mask(segmentation, "ribs").transpose(2, 1, 0)
    assert np.all(label.array[ribs & ~sphere] == 1)
    assert label.geometry.size == tuple(segmentation["voxels"].shape[1:])


def test_segmentation_written_by_slicer_core_is_read(tmp_path, slicer_scene):
    geometry = rotated_geometry()
    lv = np.zeros(geometry.shape_zyx, bool)
    lv[1:4, 2:6, 2:7] = True
    rv = np.zeros(geometry.shape_zyx, bool)
    rv[2:5, 3:7, 4:9] = True  # overlaps lv: Slicer stores it in a second layer
    slicer_scene.write_segmentation(tmp_path / "slicer.seg.nrrd", {"LV": lv, "RV": rv}, geometry)
    assert slicerio.read_segmentation(str(tmp_path / "slicer.seg.nrrd"))["voxels"].ndim == 4
    label = read_label(tmp_path / "slicer.seg.nrrd")
    assert [c.name for c in label.segments.values()] == ["LV", "RV"]
    assert label.geometry.matches(geometry, tol=1e-9)
    assert np.array_equal(label.array == 2, rv) and np.array_equal(label.array == 1, lv & ~rv)


def test_our_segmentation_loads_in_slicer_core(tmp_path, slicer_scene):
    classes = [ClassInfo("LV", (1.0, 0.0, 0.0)), ClassInfo("RV", (0.0, 0.5, 1.0))]
    write_segmentation(tmp_path / "ours.seg.nrrd", two_box_label(), rotated_geometry(), classes)
    segments = slicer_scene.read_segmentation(tmp_path / "ours.seg.nrrd")
    counts = np.bincount(two_box_label().ravel())
    assert {name: s[0] for name, s in segments.items()} == {"LV": counts[1], "RV": counts[2]}
    assert segments["RV"][1] == (0.0, 0.5, 1.0) and "Tissue" in segments["RV"][2]


# --- datasets -------------------------------------------------------------------------------

def test_case_name():
    assert case_name("a.seg.nrrd") == "a" and case_name("/x/b.nii.gz") == "b" and case_name("c_0000.mha") == "c_0000"


def _folders(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    return images, labels


def test_classes_are_matched_by_name_not_value(tmp_path):
    images, labels = _folders(tmp_path)
    geometry = rotated_geometry()
    write_case(images, labels, "a", geometry, classes=[ClassInfo("LV"), ClassInfo("RV")])
    write_case(images, labels, "b", geometry, classes=[ClassInfo("RV"), ClassInfo("LV")])
    write_case(images, None, "c", geometry)
    dataset = discover_dataset(images, labels)
    assert [c.name for c in dataset.labelled] == ["a", "b"] and [c.name for c in dataset.unlabelled] == ["c"]
    assert dataset.class_names == ["LV", "RV"]
    _, label_a, geometry_a = load_labelled_case(dataset.labelled[0], dataset.classes)
    _, label_b, _ = load_labelled_case(dataset.labelled[1], dataset.classes)
    assert label_a.dtype == np.int64 and geometry_a.matches(geometry)
    assert np.array_equal(label_a, two_box_label())
    # b stored RV as value 1 and LV as value 2: loaded, the classes are swapped back.
    assert np.array_equal(label_b, np.choose(two_box_label(), [0, 2, 1]))


def test_plain_labelmaps_get_generated_class_names(tmp_path):
    images, labels = _folders(tmp_path)
    geometry = rotated_geometry()
    only_two = np.where(two_box_label() == 2, 2, 0).astype(np.uint8)
    write_case(images, labels, "a", geometry, label=only_two, label_ext=".nii.gz")
    write_case(images, labels, "b", geometry, label_ext=".nii.gz")
    dataset = discover_dataset(images, labels)
    assert dataset.class_names == ["label_1", "label_2"]
    assert np.array_equal(load_labelled_case(dataset.labelled[0], dataset.classes)[1], only_two)


def test_labels_beside_images_and_nnunet_channel_suffix(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    geometry = rotated_geometry()
    write_case(folder, folder, "a", geometry)                                   # a.nrrd + a.seg.nrrd
    write_image(folder / "b.nrrd", np.zeros(geometry.shape_zyx, np.float32), geometry)
    write_labelmap(folder / "b-label.nrrd", two_box_label(), geometry)        # Slicer's labelmap naming
    write_image(folder / "u.nrrd", np.zeros(geometry.shape_zyx, np.float32), geometry)
    # paired, but a's named segments and b's label values are different classes (issue 13.5)
    with pytest.raises(InputError, match=r"'LV' is missing from 1 of 2 labelled cases \(b\)"):
        discover_dataset(folder, folder)
    (folder / "a.seg.nrrd").unlink()
    write_labelmap(folder / "a-label.nrrd", two_box_label(), geometry)
    dataset = discover_dataset(folder, folder)
    assert [(c.name, c.label.name) for c in dataset.labelled] == [("a", "a-label.nrrd"), ("b", "b-label.nrrd")]
    assert [c.name for c in dataset.unlabelled] == ["u"]
    images, labels = _folders(tmp_path)
    write_case(images, None, "x_0000", geometry)
    write_labelmap(labels / "x.nii.gz", two_box_label(), geometry)
    assert [(c.name, c.image.name) for c in discover_dataset(images, labels).labelled] == [("x", "x_0000.nrrd")]


def test_list_image_cases_for_prediction(tmp_path):
    images, labels = _folders(tmp_path)
    write_case(images, labels, "b_0000", rotated_geometry())
    write_case(images, None, "a", rotated_geometry(), image_ext=".nii.gz")
    assert [(c.name, c.image.name, c.label) for c in list_image_cases(images)] == [
        ("a", "a.nii.gz", None), ("b", "b_0000.nrrd", None)]
    with pytest.raises(InputError, match="no image"):
        list_image_cases(labels)


def test_missing_folders(tmp_path):
    with pytest.raises(InputError, match="nope.*image folder not found"):
        discover_dataset(tmp_path / "nope", tmp_path)
    images, _ = _folders(tmp_path)
    with pytest.raises(InputError, match="gone.*label folder not found"):
        discover_dataset(images, tmp_path / "gone")


def test_no_labelled_case(tmp_path):
    images, labels = _folders(tmp_path)
    write_case(images, None, "a", rotated_geometry())
    with pytest.raises(InputError, match="No labelled case"):
        discover_dataset(images, labels)
    assert [c.name for c in discover_dataset(images, labels, require_labelled=False).unlabelled] == ["a"]


def test_label_without_image(tmp_path):
    images, labels = _folders(tmp_path)
    write_case(images, labels, "a", rotated_geometry())
    write_labelmap(labels / "orphan.nrrd", two_box_label(), rotated_geometry())
    with pytest.raises(InputError, match="without an image.*orphan.nrrd"):
        discover_dataset(images, labels)


def test_duplicate_case_names(tmp_path):
    images, labels = _folders(tmp_path)
    write_case(images, labels, "a", rotated_geometry())
    write_case(images, None, "a", rotated_geometry(), image_ext=".nii.gz")
    with pytest.raises(InputError, match="Duplicate case name 'a'"):
        discover_dataset(images, labels)


@pytest.mark.parametrize("label_geometry, accepted", [
    (rotated_geometry(spacing=(0.8 * (1 + 1e-5), 1.1, 2.5)), True),       # rounding
    (rotated_geometry(spacing=(0.8, 1.1, 2.6)), False),
    (rotated_geometry(origin=(3.0, -4.0, 11.0)), False),
    (rotated_geometry(shape_zyx=(7, 8, 10)), False),
    (Geometry.from_array_shape((6, 8, 10), (0.8, 1.1, 2.5), (3.0, -4.0, 10.0)), False),  # other direction
])
def test_label_geometry_must_match_image(tmp_path, label_geometry, accepted):
    images, labels = _folders(tmp_path)
    write_case(images, None, "a", rotated_geometry())
    write_labelmap(labels / "a.nrrd", two_box_label(label_geometry.shape_zyx), label_geometry)
    case = discover_dataset(images, labels).labelled[0]
    classes = [ClassInfo("label_1"), ClassInfo("label_2")]
    if accepted:
        assert load_labelled_case(case, classes)[1].shape == (6, 8, 10)
    else:
        with pytest.raises(InputError, match="Case 'a'.*different geometry"):
            load_labelled_case(case, classes)


def test_label_cropped_to_a_sub_grid_is_padded(tmp_path):
    """Slicer may save a segmentation cropped to its content: same axes, shifted origin."""
    images, labels = _folders(tmp_path)
    geometry = rotated_geometry()
    write_case(images, None, "a", geometry)
    offset = geometry.ijk_to_lps() @ np.array([2, 1, 1, 1.0])  # voxel (x=2, y=1, z=1)
    cropped = Geometry(geometry.spacing, tuple(offset[:3]), geometry.direction, (4, 3, 2))
    write_segmentation(labels / "a.seg.nrrd", np.ones((2, 3, 4), np.uint8), cropped, [ClassInfo("LV")])
    _, label, _ = load_labelled_case(discover_dataset(images, labels).labelled[0], [ClassInfo("LV")])
    expected = np.zeros(geometry.shape_zyx, np.int64)
    expected[1:3, 1:4, 2:6] = 1
    assert np.array_equal(label, expected)


def test_unknown_class_rejected(tmp_path):
    images, labels = _folders(tmp_path)
    write_case(images, labels, "a", rotated_geometry(), classes=[ClassInfo("LV"), ClassInfo("Tumour")])
    case = discover_dataset(images, labels).labelled[0]
    with pytest.raises(InputError, match="a.seg.nrrd.*'Tumour'.*not among the dataset classes"):
        load_labelled_case(case, [ClassInfo("LV"), ClassInfo("RV")])


def test_labelled_case_without_label():
    from SSLSegmentLib.data import Case
    with pytest.raises(InputError, match="'u'.*no label"):
        load_labelled_case(Case("u", Path("u.nrrd")), [])


# --- dataset.json ---------------------------------------------------------------------------

def _msd_layout(tmp_path, labels_map, label=None):
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    write_case(images, labels, "a", rotated_geometry(), label=label, label_ext=".nii.gz", image_ext=".nii.gz")
    (tmp_path / "imagesTs").mkdir()
    write_case(tmp_path / "imagesTs", None, "b", rotated_geometry(), image_ext=".nii.gz")
    data = {"labels": labels_map, "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
            "test": ["./imagesTs/b.nii.gz"]}
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    return tmp_path / "dataset.json"


@pytest.mark.parametrize("labels_map", [{"background": 0, "LV": 1, "RV": 2}, {"0": "background", "1": "LV", "2": "RV"}])
def test_dataset_json_msd_style(tmp_path, labels_map):
    dataset = load_dataset_json(_msd_layout(tmp_path, labels_map))
    assert dataset.class_names == ["LV", "RV"]
    assert [c.name for c in dataset.labelled] == ["a"] and [c.name for c in dataset.unlabelled] == ["b"]
    _, label, _ = load_labelled_case(dataset.labelled[0], dataset.classes)
    assert np.array_equal(label, two_box_label())


def test_dataset_json_names_unknown_label_value(tmp_path):
    label = two_box_label()
    label[0, 0, 0] = 7
    dataset = load_dataset_json(_msd_layout(tmp_path, {"background": 0, "LV": 1, "RV": 2}, label=label))
    with pytest.raises(InputError, match=r"a.nii.gz.*\[7\].*not among the known classes"):
        load_labelled_case(dataset.labelled[0], dataset.classes)


def test_dataset_json_nnunet_v2_folders(tmp_path):
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    write_case(images, None, "a_0000", rotated_geometry(), image_ext=".nii.gz")
    write_labelmap(labels / "a.nii.gz", two_box_label(), rotated_geometry())
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "LV": 1, "RV": 2}, "numTraining": 1,
         "file_ending": ".nii.gz"}))
    dataset = load_dataset_json(tmp_path / "dataset.json")
    assert [(c.name, c.label.name) for c in dataset.labelled] == [("a", "a.nii.gz")]
    assert np.array_equal(load_labelled_case(dataset.labelled[0], dataset.classes)[1], two_box_label())


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"labels": {"background": 0, "tumour": [1, 2]}, "training": []}), "region-based"),
    (json.dumps({"labels": {"background": 0, "LV": 1},
                 "training": [{"image": "./imagesTr/missing.nii.gz", "label": "./labelsTr/a.nii.gz"}]}),
     "missing.nii.gz not found"),
    (json.dumps({"labels": {"background": 0, "LV": 1}}), "imagesTr/labelsTr"),
])
def test_dataset_json_errors(tmp_path, content, message):
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(InputError, match=message):
        load_dataset_json(tmp_path / "dataset.json")
