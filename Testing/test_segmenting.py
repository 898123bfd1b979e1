"""Segment new scans with a trained round's model: headless, on the real MRML library
(slicer-core), with the real engine in child processes (tiny network, 16x32x32 phantoms)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from SSLSegmentLib import jobs, segmenting  # noqa: E402
from SSLSegmentLib.errors import InputError  # noqa: E402
from SSLSegmentLib.headless import slicer_scene  # noqa: E402
from SSLSegmentLib.logic import SSLSegmentLogic, geometryMismatch, readVolume, referenceVolume  # noqa: E402
from SSLSegmentLib.mrml import nodesByClass, segmentationFromLabelArray  # noqa: E402
from SSLSegmentLib.phantoms import PHANTOM_CLASSES, make_phantom  # noqa: E402
from SSLSegmentLib.predict_status import EXIT_CANCELLED, run_reporting_status  # noqa: E402

SHAPE, SPACING = (16, 32, 32), (1.0, 1.0, 1.5)
TINY = dict(method="supervised", network="unet", dim=3, iterations=10, device="cpu", size="tiny",
            extraArgs=["--patch-size", "16,32,32"])


def add_volume(scene, name, shape, spacing, origin, seed):
    image, label = make_phantom(shape, spacing, seed=seed)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, image)
    volume.SetSpacing(*spacing)
    volume.SetOrigin(*origin)
    volume.CreateDefaultDisplayNodes()
    return volume, label


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A scene and round 1 of a real (tiny) training job."""
    tmp = tmp_path_factory.mktemp("segmenting")
    scene = slicer_scene()
    logic = SSLSegmentLogic(scene, jobsRoot=tmp / "jobs", pythonCommand=[sys.executable])
    labelled = []
    for i in range(2):
        volume, label = add_volume(scene, f"L{i}", SHAPE, SPACING, (0.0, 0.0, 0.0), seed=10 + i)
        labelled.append((volume, segmentationFromLabelArray(scene, volume, label, PHANTOM_CLASSES)))
    unlabelled, _ = add_volume(scene, "U0", SHAPE, SPACING, (0.0, 0.0, 0.0), seed=20)
    job = logic.startTraining(labeled=labelled, unlabeled=[unlabelled], waitForCompletion=True, **TINY)
    assert job.state == jobs.DONE, f"{job.error}\n{job.log_tail()}"
    yield scene, logic, job
    logic.cleanup()


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the shared 2-core machine: see test_logic


def test_segment_two_new_volumes_with_round_1(trained):
    scene, logic, job = trained
    # Other sizes, spacings and origins than the training volumes: results must follow each volume.
    first, _ = add_volume(scene, "new scan A", (14, 36, 30), (0.9, 1.1, 1.6), (-20.0, 15.0, 3.0), seed=31)
    second, _ = add_volume(scene, "new scan B", (18, 28, 34), (1.2, 0.8, 1.4), (5.0, -7.5, -40.0), seed=32)
    nodes_before = scene.GetNumberOfNodes()

    run = logic.startSegmenting(logic.openJob(job.folder.root, 1), [first, second], device="cpu")
    assert scene.GetNumberOfNodes() == nodes_before  # exporting leaves the scene as it was
    while not run.finished:  # what the panel's timer does
        assert 0.0 <= run.fraction_done() <= 1.0
        assert segmenting.status_text(run).startswith("Segmenting")
        time.sleep(0.2)
    assert run.state == jobs.DONE, f"{run.error}\n{run.log_tail()}"
    assert run.fraction_done() == 1.0
    assert run.root.parent == job.folder.root / "segmenting"
    assert json.loads((run.run_dir / "status.json").read_text())["state"] == "done"

    results = logic.loadSegmentingResults(run)
    assert set(results) == {first.GetID(), second.GetID()}
    assert logic.loadSegmentingResults(run) == results  # loading again makes no copies
    sh = scene.GetSubjectHierarchyNode()
    for volume in (first, second):
        segmentation = results[volume.GetID()]
        assert segmentation.GetName() == f"{volume.GetName()} segmentation r1"
        names = {segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())}
        assert names and names <= {c.name for c in PHANTOM_CLASSES}
        assert referenceVolume(segmentation) is volume and geometryMismatch(segmentation, volume) is None
        assert sh.GetItemParent(sh.GetItemByDataNode(segmentation)) == sh.GetItemByDataNode(volume)
        # The segmentation, exported in the volume's grid, is voxel for voxel what the child wrote.
        case = next(c for c, e in run.cases.items() if e["volumeNodeID"] == volume.GetID())
        written = slicer.util.arrayFromVolume(readVolume(scene, run.run_dir / "labelmaps" / f"{case}.nrrd", True))
        exported = logic.exportSegmentation(segmentation, run.root.parent / f"check-{case}.nrrd",
                                            classNames=[c.name for c in PHANTOM_CLASSES])
        mine = slicer.util.arrayFromVolume(readVolume(scene, exported, labelmap=True))
        assert mine.shape == slicer.util.arrayFromVolume(volume).shape
        assert np.array_equal(mine, written)
    assert jobs.JobFolder(job.folder.root).rounds() == [1]  # segmenting adds no training round


def test_a_failure_in_the_child_names_the_volume(trained, tmp_path):
    scene, logic, job = trained
    good, _ = add_volume(scene, "good scan", SHAPE, SPACING, (0.0, 0.0, 0.0), seed=41)
    broken, _ = add_volume(scene, "broken scan", SHAPE, SPACING, (0.0, 0.0, 0.0), seed=42)

    def corrupting_runner(command, cwd, env, console_path):  # a disk error after the export
        images = Path(command[command.index("--images") + 1])
        (images / "broken_scan.nrrd").write_bytes(b"NRRD0004\ntype: nonsense\n\n")
        return jobs.start_process(command, cwd, env, console_path)

    logic.processRunner = corrupting_runner
    try:
        run = logic.startSegmenting(job, [good, broken], device="cpu", waitForCompletion=True)
    finally:
        logic.processRunner = jobs.start_process
    assert run.state == jobs.FAILED
    assert run.error.startswith("segmenting volume 'broken scan' failed:"), run.error
    assert json.loads((run.run_dir / "status.json").read_text())["state"] == "failed"
    loaded = logic.loadSegmentingResults(run)  # what did get segmented still loads
    assert broken.GetID() not in loaded and set(loaded) <= {good.GetID()}
    assert "'broken scan'" in segmenting.SegmentingRun.from_folder(run.root).error  # reopened: same truth


def test_bad_input_is_refused_before_start(trained, tmp_path):
    scene, logic, job = trained
    with pytest.raises(InputError, match="No volume to segment"):
        logic.startSegmenting(job, [])
    with pytest.raises(InputError, match="no model file"):
        logic.startSegmenting(tmp_path / "nowhere", [scene.GetFirstNodeByName("L0")])
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    with pytest.raises(InputError, match="not a scalar image volume"):
        logic.startSegmenting(job, [labelmap])
    assert not (tmp_path / "jobs").exists()


def cancelled_after(out: Path, seconds: float = 0.3):
    """A stand-in prediction that runs 10 s; the cancel file appears in ``out`` after ``seconds``."""
    def predict(report_failure):
        threading.Timer(seconds, lambda: (out / "cancel").write_text("x")).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return 0
    return predict


def test_predict_status_tells_how_it_ended(tmp_path):
    assert run_reporting_status(tmp_path / "ok", lambda report_failure: 0) == 0
    assert json.loads((tmp_path / "ok" / "status.json").read_text())["state"] == "done"

    def refuse(report_failure):
        raise InputError("case X: image is 4D")

    with pytest.raises(InputError):
        run_reporting_status(tmp_path / "bad", refuse)
    status = json.loads((tmp_path / "bad" / "status.json").read_text())
    assert status["state"] == "failed" and "case X" in status["error"]

    assert run_reporting_status(tmp_path / "partly", lambda report_failure: 1) == 1
    assert json.loads((tmp_path / "partly" / "status.json").read_text())["state"] == "failed"

    def two_cases_failed(report_failure):
        report_failure("2 of 5 cases failed: a: 0 bytes; b: not an image")
        return 2

    assert run_reporting_status(tmp_path / "named", two_cases_failed) == 2
    status = json.loads((tmp_path / "named" / "status.json").read_text())
    assert status["state"] == "failed" and "a: 0 bytes" in status["error"]

    assert run_reporting_status(tmp_path / "cancelled", cancelled_after(tmp_path / "cancelled")) == EXIT_CANCELLED
    assert json.loads((tmp_path / "cancelled" / "status.json").read_text())["state"] == "cancelled"


def test_the_cancel_file_stops_a_prediction_started_with_sigint_ignored(tmp_path):
    """A shell starts a background process with SIGINT ignored (``sslsegment predict ... &``):
    the cancel file must still end it as cancelled, not let it run on to "done"."""
    out = tmp_path / "background"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = run_reporting_status(out, cancelled_after(out))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == EXIT_CANCELLED
    assert json.loads((out / "status.json").read_text())["state"] == "cancelled"


def save_scene(scene, folder: Path) -> Path:
    """What File > Save does: each storable node writes its file, then the scene its .mrml."""
    folder.mkdir(parents=True, exist_ok=True)
    for node in nodesByClass(scene, "vtkMRMLStorableNode"):
        if node.GetHideFromEditors() and not node.IsA("vtkMRMLVolumeNode"):
            continue
        node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        storage.SetFileName(str(folder / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), node.GetID()
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()
    return folder / "scene.mrml"


def test_a_reopened_scene_shows_its_job_again(trained, tmp_path):
    """The panel stores the job folder and round in its parameter node; reopened, the logic
    must find that round's predictions and the new scans' segmentations in the scene."""
    scene, logic, job = trained
    predictions = logic.loadPredictions(job)
    new_scan, _ = add_volume(scene, "reopened scan", SHAPE, SPACING, (0.0, 0.0, 0.0), seed=51)
    run = logic.startSegmenting(job, [new_scan], device="cpu", waitForCompletion=True)
    assert run.state == jobs.DONE, run.error
    segmented = logic.loadSegmentingResults(run)

    reopened = slicer_scene(set_globals=False)
    reopened.SetURL(str(save_scene(scene, tmp_path / "saved")))
    assert reopened.Connect()
    other = SSLSegmentLogic(reopened, jobsRoot=tmp_path / "jobs", pythonCommand=[sys.executable])
    try:
        rows = other.resultRows(other.openJob(job.folder.root, job.round))
        assert {row["volume"].GetName(): row["segmentation"].GetName() for row in rows} == \
            {scene.GetNodeByID(v).GetName(): p.GetName() for v, p in predictions.items()}
        assert all(row["segmentation"].GetSegmentation().GetNumberOfSegments() for row in rows)
        again = other.loadSegmentingResults(segmenting.SegmentingRun.from_folder(run.root))
        assert [n.GetName() for n in again.values()] == [n.GetName() for n in segmented.values()]
        assert reopened.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == \
            scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")  # found, not loaded twice
    finally:
        other.cleanup()


def test_the_command_line_predict_writes_its_status(tmp_path):
    """`sslsegment predict` itself (a real child): bad input is exit 2 and a failed status."""
    from helpers import run_cli

    (tmp_path / "images").mkdir()
    result = run_cli("predict", "--model", tmp_path / "no-model", "--images", tmp_path / "images",
                     "--out", tmp_path / "out", "--device", "cpu", timeout=120)
    assert result.returncode == 2, result.stderr
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["state"] == "failed" and "no-model" in status["error"]
