"""Issue 13 in Slicer's logic, on a real MRML scene (slicer-core, headless).

- A segmentation without reference geometry that does not lie on its volume's grid is refused
  before any process starts, naming the node (it used to export one voxel off the volume and
  fail in the child with job-internal paths).
- A prediction outside the training domain comes first in "least confident first".
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import torch  # noqa: E402
import vtk  # noqa: E402
from test_logic import SHAPE, SPACING, RecordingRunner, add_volume, make_logic, phantom_case  # noqa: E402

from SSLSegmentLib import jobs  # noqa: E402
from SSLSegmentLib.batch_prediction import predict_to_folder  # noqa: E402
from SSLSegmentLib.data.cases import Case  # noqa: E402
from SSLSegmentLib.data.labels import write_segmentation  # noqa: E402
from SSLSegmentLib.domain import image_statistics, summarise  # noqa: E402
from SSLSegmentLib.errors import InputError  # noqa: E402
from SSLSegmentLib.headless import slicer_scene  # noqa: E402
from SSLSegmentLib.logic import readSegmentation, writeVolume  # noqa: E402
from SSLSegmentLib.data.io import read_image  # noqa: E402
from SSLSegmentLib.model_file import Model  # noqa: E402
from SSLSegmentLib.networks import build_network  # noqa: E402
from SSLSegmentLib.phantoms import PHANTOM_CLASSES, make_phantom  # noqa: E402
from SSLSegmentLib.preprocessing import Plan  # noqa: E402


@pytest.fixture()
def scene():
    return slicer_scene()


def test_segmentation_without_reference_geometry_is_refused_before_start(scene, tmp_path):
    runner = RecordingRunner()
    logic = make_logic(scene, tmp_path, runner)
    volume, _ = phantom_case(scene, "A", 1)
    surface = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn as a surface")
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(-20, -20, 20)
    sphere.SetRadius(5)
    sphere.Update()
    surface.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "organ", [1, 0, 0])
    with pytest.raises(InputError, match="'drawn as a surface' of volume 'A' has no reference geometry"):
        logic.startTraining(labeled=[(volume, surface)])
    assert runner.calls == [] and not any((tmp_path / "jobs").glob("*"))


def test_a_segmentation_file_of_the_volume_needs_no_reference_geometry(scene, tmp_path):
    """A .seg.nrrd written for the volume by another tool (no reference geometry in its header)
    lies on the volume's grid: it passes the checks and reaches the process start."""
    runner = RecordingRunner()
    logic = make_logic(scene, tmp_path, runner)
    image, label = make_phantom(SHAPE, SPACING, seed=2)
    volume = add_volume(scene, "B", image)
    writeVolume(volume, tmp_path / "B.nrrd")
    write_segmentation(tmp_path / "B.seg.nrrd", label, read_image(tmp_path / "B.nrrd")[1], PHANTOM_CLASSES)
    loaded = readSegmentation(scene, tmp_path / "B.seg.nrrd")
    with pytest.raises(AssertionError, match="no process may start"):  # all checks passed
        logic.startTraining(labeled=[(volume, loaded)])


def test_an_out_of_domain_prediction_is_suggested_first(scene, tmp_path):
    logic = make_logic(scene, tmp_path)
    folder = jobs.JobFolder(tmp_path / "job")
    volumes, cases = {}, []
    for name, spacing in (("in_domain", SPACING), ("in_metres", tuple(s / 1000 for s in SPACING))):
        image, _ = make_phantom(SHAPE, SPACING, seed=3)
        volumes[name] = add_volume(scene, name, image, spacing=spacing)
        writeVolume(volumes[name], tmp_path / f"{name}.nrrd")
        cases.append(Case(name, tmp_path / f"{name}.nrrd"))
    folder.write_job({"version": 1, "classes": [], "cases": {
        name: {"volumeNodeID": v.GetID(), "volumeName": name} for name, v in volumes.items()}})
    folder.write_round(1, {"round": 1, "command": [], "unlabelled": list(volumes)})
    job = jobs.Job(folder, 1, [])
    torch.manual_seed(0)
    network = build_network("unet", 3, 1, len(PHANTOM_CLASSES) + 1, "tiny")
    domain = summarise([image_statistics(*read_image(cases[0].image))])
    model = Model(network.eval(), PHANTOM_CLASSES, Plan(3, (1.0, 1.0, 1.5)), (16, 32, 32), {"domain": domain})
    report = predict_to_folder(model, cases, job.predictions_dir, torch.device("cpu"))
    assert list(report.out_of_domain) == ["in_metres"]
    confidence = logic.predictionConfidence(job)
    assert confidence[volumes["in_metres"].GetID()] < confidence[volumes["in_domain"].GetID()]
    assert logic.suggestVolumeToCorrect(job) == volumes["in_metres"].GetID()
    assert np.isfinite(report.out_of_domain["in_metres"]["confidence_before"])
    # loaded into the scene, the reason stands next to the confidence in the Results rows
    (job.run_dir / "status.json").write_text('{"state": "done"}')
    logic.loadPredictions(jobs.Job.from_past_round(folder, 1))
    rows = {row["case"]: row for row in logic.resultRows(job)}
    assert rows["in_metres"]["confidence"] == 0.0 and "wrong units" in rows["in_metres"]["outOfDomain"]
    assert rows["in_domain"]["outOfDomain"] is None
