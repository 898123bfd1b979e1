"""Issue 13, items 4 and 5 in Slicer: class names matched after trimming and case folding,
classes missing from some cases or drawn in none refused before any process starts."""

from __future__ import annotations

import sys

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from SSLSegmentLib import jobs  # noqa: E402
from SSLSegmentLib.data.labels import ClassInfo  # noqa: E402
from SSLSegmentLib.errors import InputError  # noqa: E402
from SSLSegmentLib.headless import slicer_scene  # noqa: E402
from SSLSegmentLib.logic import SSLSegmentLogic  # noqa: E402
from SSLSegmentLib.mrml import segmentationFromLabelArray  # noqa: E402

SHAPE = (8, 16, 16)


class NoStart:
    def __init__(self):
        self.calls = []

    def __call__(self, command, cwd, env, console_path):
        self.calls.append(command)
        raise AssertionError("no process may start")


def _case(scene, name, names, drawn=None):
    """A volume and a segmentation with one segment per name; ``drawn``: the names with voxels."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    volume.CreateDefaultDisplayNodes()
    label = np.zeros(SHAPE, np.uint8)
    for value, class_name in enumerate(names, start=1):
        if drawn is None or class_name in drawn:
            label[2:6, 2 * value:2 * value + 2, 4:12] = value
    segmentation = segmentationFromLabelArray(scene, volume, label, [ClassInfo(n) for n in names], f"{name} labels")
    return volume, segmentation


def _logic(scene, tmp_path, runner):
    return SSLSegmentLogic(scene, jobsRoot=tmp_path / "jobs", pythonCommand=[sys.executable], processRunner=runner)


def test_spellings_of_one_class_are_one_class(tmp_path):
    scene = slicer_scene()
    logic = _logic(scene, tmp_path, NoStart())
    first = _case(scene, "A", ["RV", "Myo "])
    second = _case(scene, "B", ["rv", "myo"])
    classes = logic.classesFromSegmentations([first[1], second[1]])
    assert [c["name"] for c in classes] == ["RV", "Myo"]


def test_a_class_missing_from_a_case_is_refused_naming_it(tmp_path):
    scene = slicer_scene()
    runner = NoStart()
    logic = _logic(scene, tmp_path, runner)
    with pytest.raises(InputError, match=r"'Segment_1' is missing from 1 of 2 labelled cases \(volume 'A'\)"):
        logic.startTraining(labeled=[_case(scene, "A", ["RV"]), _case(scene, "B", ["RV", "Segment_1"])])
    assert runner.calls == [] and not any((tmp_path / "jobs").glob("*"))


def test_a_class_drawn_in_no_case_is_refused_naming_it(tmp_path):
    scene = slicer_scene()
    runner = NoStart()
    logic = _logic(scene, tmp_path, runner)
    cases = [_case(scene, name, ["heart", "tumour"], drawn={"heart"}) for name in ("A", "B")]
    with pytest.raises(InputError, match="'tumour' have no voxel"):
        logic.startTraining(labeled=cases)
    assert runner.calls == [] and not any((tmp_path / "jobs").glob("*"))


@pytest.mark.parametrize("extra, message", [(["--lr", "-1"], "--lr"), (["--labelled-batch", "0"], "--labelled-batch"),
                                            (["--patch-size", "0,0"], "--patch-size"),
                                            (["--no-such-flag"], "not understood")])
def test_bad_settings_are_refused_before_start(tmp_path, extra, message):
    scene = slicer_scene()
    runner = NoStart()
    logic = _logic(scene, tmp_path, runner)
    with pytest.raises(InputError, match=message):
        logic.startTraining(labeled=[_case(scene, "A", ["RV"])], extraArgs=extra)
    assert runner.calls == [] and not any((tmp_path / "jobs").glob("*"))
