"""SSLSegmentLogic on a real MRML scene (slicer-core wheel), headless.

Quick tests use a stand-in process runner; ``test_whole_loop`` runs the real engine
(tiny network, few iterations, 16x32x32 phantoms): train, load, correct, retrain from the
previous model, cancel, export and read back with Slicer's storage node and slicerio.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import slicerio  # noqa: E402

from SSLSegmentLib import jobs  # noqa: E402
from SSLSegmentLib.errors import InputError  # noqa: E402
from SSLSegmentLib.headless import slicer_scene  # noqa: E402
from SSLSegmentLib.logic import (  # noqa: E402
    ATTR_CORRECTED, LABELLED, UNLABELLED, SSLSegmentLogic, readSegmentation, readVolume, referenceVolume,
)
from SSLSegmentLib.mrml import segmentationFromLabelArray, volumeFingerprint  # noqa: E402
from SSLSegmentLib.phantoms import PHANTOM_CLASSES, make_phantom  # noqa: E402

SHAPE = (16, 32, 32)  # z, y, x
SPACING = (1.0, 1.0, 1.5)  # x, y, z
ORIGIN = (-24.0, -30.5, 12.25)
TINY = dict(method="mean_teacher", network="unet", dim=3, iterations=20, device="cpu", size="tiny",
            extraArgs=["--patch-size", "16,32,32"])


# ------------------------------------------------------------------------------------------
# Scene building
# ------------------------------------------------------------------------------------------


def add_volume(scene, name, array, spacing=SPACING, origin=ORIGIN):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, array)
    volume.SetSpacing(*spacing)
    volume.SetOrigin(*origin)
    volume.CreateDefaultDisplayNodes()
    return volume


def add_segmentation(scene, volume, label, name=None, classes=PHANTOM_CLASSES):
    """A segmentation of ``volume`` with one named, coloured segment per class value."""
    return segmentationFromLabelArray(scene, volume, label, classes, name)


def phantom_case(scene, name, seed, labelled=True):
    image, label = make_phantom(SHAPE, SPACING, seed=seed)
    volume = add_volume(scene, name, image)
    return (volume, add_segmentation(scene, volume, label)) if labelled else volume


@pytest.fixture()
def scene():
    return slicer_scene()


class RecordingRunner:
    """A process runner that starts nothing: bad input must be refused before any start."""

    def __init__(self):
        self.calls = []

    def __call__(self, command, cwd, env, console_path):
        self.calls.append(command)
        raise AssertionError("no process may start")


def make_logic(scene, tmp_path, runner=jobs.start_process):
    return SSLSegmentLogic(scene, jobsRoot=tmp_path / "jobs", pythonCommand=[sys.executable], processRunner=runner)


def node_count(scene):
    return scene.GetNumberOfNodes()


# ------------------------------------------------------------------------------------------
# Bad input: a clear message before any process starts
# ------------------------------------------------------------------------------------------


def test_bad_input_is_refused_before_start(scene, tmp_path):
    runner = RecordingRunner()
    logic = make_logic(scene, tmp_path, runner)
    labelled = phantom_case(scene, "A", 1)
    other = phantom_case(scene, "B", 2, labelled=False)

    with pytest.raises(InputError, match="No labelled volume"):
        logic.startTraining(labeled=[], unlabeled=[other])

    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(InputError, match="has no segments"):
        logic.startTraining(labeled=[(labelled[0], empty)])

    small = add_volume(scene, "small", np.zeros((8, 16, 16), np.float32), spacing=(2, 2, 3))
    with pytest.raises(InputError, match="another geometry"):
        logic.startTraining(labeled=[(small, labelled[1])])

    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "4D")
    slicer.util.updateVolumeFromArray(vector, np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match="components per voxel"):
        logic.startTraining(labeled=[labelled], unlabeled=[vector])

    with pytest.raises(InputError, match="given twice"):
        logic.startTraining(labeled=[labelled], unlabeled=[labelled[0]])

    blank = add_volume(scene, "blank", np.zeros(SHAPE, np.float32))
    blank_seg = add_segmentation(scene, blank, np.zeros(SHAPE, np.uint8), name="blank labels")
    with pytest.raises(InputError, match="no labelled voxel"):
        logic.startTraining(labeled=[labelled, (blank, blank_seg)])

    assert runner.calls == []
    assert not any((tmp_path / "jobs").glob("*")), "refused input left a job folder behind"


# ------------------------------------------------------------------------------------------
# Export and read back
# ------------------------------------------------------------------------------------------


def test_export_seg_nrrd_and_labelmap_read_back(scene, tmp_path):
    logic = make_logic(scene, tmp_path)
    volume, segmentation = phantom_case(scene, "A", 3)
    _, truth = make_phantom(SHAPE, SPACING, seed=3)
    nodes_before = node_count(scene)

    seg_path = logic.exportSegmentation(segmentation, tmp_path / "out" / "A.seg.nrrd")
    map_path = logic.exportSegmentation(segmentation, tmp_path / "out" / "A.nrrd",
                                        classNames=["lesion", "organ"])  # values follow the given order
    assert node_count(scene) == nodes_before  # temporary nodes are gone

    assert_segmentation_file(scene, seg_path, volume, truth)
    labelmap = readVolume(scene, map_path, labelmap=True)
    array = slicer.util.arrayFromVolume(labelmap)
    assert array.shape == SHAPE
    np.testing.assert_allclose(labelmap.GetSpacing(), SPACING)
    np.testing.assert_allclose(labelmap.GetOrigin(), ORIGIN)
    assert np.array_equal(array == 2, truth == 1) and np.array_equal(array == 1, truth == 2)


def assert_segmentation_file(scene, path, volume, truth):
    """Read a .seg.nrrd with Slicer's storage node and with slicerio; compare with ``truth`` (zyx)."""
    names = [c.name for c in PHANTOM_CLASSES]
    node = readSegmentation(scene, path, referenceVolumeNode=volume)
    read_names = [node.GetSegmentation().GetNthSegment(i).GetName()
                  for i in range(node.GetSegmentation().GetNumberOfSegments())]
    assert read_names == names
    for value, name in enumerate(names, start=1):
        segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name)
        array = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume)
        assert np.array_equal(array > 0, truth == value), name

    segmentation = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in segmentation["segments"]] == names
    np.testing.assert_allclose(segmentation["segments"][0]["color"], PHANTOM_CLASSES[0].color, atol=1e-3)
    voxels = segmentation["voxels"]  # IJK order
    assert voxels.shape[:3] == SHAPE[::-1]
    assert list(segmentation.get("referenceImageExtentOffset", [0, 0, 0])) == [0, 0, 0]
    np.testing.assert_allclose(np.abs(np.diag(segmentation["ijkToLPS"])[:3]), SPACING)
    for value, segment in enumerate(segmentation["segments"], start=1):
        layer = voxels if voxels.ndim == 3 else voxels[..., segment["layer"]]
        mask = np.transpose(layer == segment["labelValue"], (2, 1, 0))  # back to zyx
        assert np.array_equal(mask, truth == value), segment["name"]


def test_detect_roles_and_classes(scene, tmp_path):
    logic = make_logic(scene, tmp_path)
    volume, segmentation = phantom_case(scene, "A", 1)
    unlabelled = phantom_case(scene, "B", 2, labelled=False)
    roles = {row["volume"].GetName(): row for row in logic.detectRoles()}
    assert roles["A"]["role"] == LABELLED and roles["A"]["segmentation"] is segmentation
    assert roles["B"]["role"] == UNLABELLED and unlabelled is roles["B"]["volume"]
    assert [c["name"] for c in logic.classesFromSegmentations([segmentation])] == ["organ", "lesion"]
    assert referenceVolume(segmentation) is volume


# ------------------------------------------------------------------------------------------
# Job folder written by startTraining (stand-in child)
# ------------------------------------------------------------------------------------------

FAKE_ENGINE = """
import json, os, sys
out = sys.argv[sys.argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
json.dump({"state": "failed", "error": "stand-in engine: nothing trained"}, open(os.path.join(out, "status.json"), "w"))
sys.exit(1)
"""


def fake_engine_runner(command, cwd, env, console_path):
    """Runs a stand-in that reads the real command line and fails like the engine would."""
    return jobs.start_process([sys.executable, "-c", FAKE_ENGINE, *command[1:]], cwd, env, console_path)


def test_start_training_writes_the_job_folder_and_leaves_the_scene(scene, tmp_path):
    logic = make_logic(scene, tmp_path, fake_engine_runner)
    labelled = [phantom_case(scene, "case A", 1), phantom_case(scene, "case/A", 2)]
    unlabelled = [phantom_case(scene, "U", 3, labelled=False)]
    nodes_before = node_count(scene)
    job = logic.startTraining(labeled=labelled, unlabeled=unlabelled, waitForCompletion=True, **TINY)
    assert node_count(scene) == nodes_before
    assert job.state == jobs.FAILED and "stand-in" in job.error  # the failure reaches the caller

    folder = job.folder
    info = folder.read_job()
    assert sorted(info["cases"]) == ["U", "case_A", "case_A_2"]  # sanitized, unique
    assert [c["name"] for c in info["classes"]] == ["organ", "lesion"]
    assert sorted(p.name for p in folder.images_dir.iterdir()) == ["U.nrrd", "case_A.nrrd", "case_A_2.nrrd"]
    assert sorted(p.name for p in folder.labels_dir(1).iterdir()) == ["case_A.seg.nrrd", "case_A_2.seg.nrrd"]
    round_info = folder.read_round(1)
    assert round_info["unlabelled"] == ["U"] and round_info["previousRound"] is None
    case = round_info["cases"]["case_A"]
    assert case["labelSha256"] == jobs.file_sha256(folder.root / case["label"])
    assert "--predict-unlabelled" in round_info["command"]


def test_closing_the_scene_kills_the_child(scene, tmp_path):
    def sleeper(command, cwd, env, console_path):
        return jobs.start_process([sys.executable, "-c", "import time; time.sleep(60)"], cwd, env, console_path)

    logic = make_logic(scene, tmp_path, sleeper)
    job = logic.startTraining(labeled=[phantom_case(scene, "A", 1)], **TINY)
    assert job.state == jobs.RUNNING
    scene.Clear(0)  # what File > Close scene does
    assert job.state == jobs.CANCELLED
    assert job.process.poll() is not None


# ------------------------------------------------------------------------------------------
# The whole loop with the real engine
# ------------------------------------------------------------------------------------------


def poll_until_finished(job, timeout_s=240):
    """What the GUI timer does: poll without blocking until the job ends."""
    deadline = time.monotonic() + timeout_s
    seen_running = False
    while not job.finished:
        seen_running = seen_running or job.state == jobs.RUNNING
        assert time.monotonic() < deadline, job.log_tail()
        time.sleep(0.25)
    return seen_running


def test_whole_loop(scene, tmp_path, monkeypatch):
    # One thread per child: on a shared 2-core machine torch's default threads oversubscribe
    # the cores and a tiny run takes minutes instead of seconds (measured: 105 s vs 22 s).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    logic = make_logic(scene, tmp_path)
    labelled = [phantom_case(scene, f"L{i}", seed=10 + i) for i in range(2)]
    unlabelled = [phantom_case(scene, f"U{i}", seed=20 + i, labelled=False) for i in range(2)]
    label_arrays_before = [slicer.util.arrayFromSegmentBinaryLabelmap(s, s.GetSegmentation().GetNthSegmentID(0), v)
                           .copy() for v, s in labelled]

    # 1. Train in the background and poll.
    job = logic.startTraining(labeled=labelled, unlabeled=unlabelled, **TINY)
    assert poll_until_finished(job)
    assert job.state == jobs.DONE, f"{job.error}\n{job.log_tail()}"
    assert job.training_progress["iteration"] == job.training_progress["total"] == TINY["iterations"]
    assert job.fraction_done() == 1.0

    # 2. Predictions: new nodes, named after the volume, class segments, geometry, hierarchy.
    predictions = logic.loadPredictions(job)
    assert set(predictions) == {v.GetID() for v in unlabelled}
    assert logic.loadPredictions(job) == predictions  # loading again makes no copies
    sh = scene.GetSubjectHierarchyNode()
    for volume in unlabelled:
        prediction = predictions[volume.GetID()]
        assert prediction.GetName().startswith(volume.GetName())
        names = [prediction.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(prediction.GetSegmentation().GetNumberOfSegments())]
        assert set(names) <= {"organ", "lesion"} and names
        assert referenceVolume(prediction) is volume
        assert sh.GetItemParent(sh.GetItemByDataNode(prediction)) == sh.GetItemByDataNode(volume)
        organ = prediction.GetSegmentation().GetSegmentIdBySegmentName("organ")
        if organ:
            assert slicer.util.arrayFromSegmentBinaryLabelmap(prediction, organ, volume).shape == SHAPE
        assert prediction.GetAttribute(ATTR_CORRECTED) == "false"
    for (volume, segmentation), before in zip(labelled, label_arrays_before):  # a person's labels untouched
        after = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentation.GetSegmentation()
                                                           .GetNthSegmentID(0), volume)
        assert np.array_equal(before, after)
    suggestion = logic.suggestVolumeToCorrect(job)
    assert suggestion in predictions

    # 3. Correct one prediction (edit its array) and retrain from the previous model.
    corrected_volume = scene.GetNodeByID(suggestion)
    corrected = predictions[suggestion]
    _, truth = make_phantom(SHAPE, SPACING, seed=20 + unlabelled.index(corrected_volume))
    for value, info in enumerate(PHANTOM_CLASSES, start=1):
        segment_id = corrected.GetSegmentation().GetSegmentIdBySegmentName(info.name)
        if not segment_id:
            segment_id = corrected.GetSegmentation().AddEmptySegment("", info.name, list(info.color))
        slicer.util.updateSegmentBinaryLabelmapFromArray((truth == value).astype(np.uint8), corrected, segment_id,
                                                        corrected_volume)
    logic.setCorrected(corrected)
    round2 = logic.retrain(job, corrected=[(corrected_volume, corrected)], iterations=10)
    assert poll_until_finished(round2)
    assert round2.state == jobs.DONE, f"{round2.error}\n{round2.log_tail()}"
    info2 = round2.folder.read_round(2)
    assert info2["previousRound"] == 1 and info2["initModel"] == str(job.model_path)
    assert info2["cases"][_case(job, suggestion)]["corrected"] is True
    assert sorted(info2["unlabelled"]) == sorted(set(info2["cases"]) - {c for c, e in info2["cases"].items()
                                                                          if e.get("label")})
    config = json.loads((round2.run_dir / "config.json").read_text())
    assert config.get("config", config).get("init_model") == str(job.model_path)  # the engine started from round 1's model
    history = logic.roundHistory(round2)
    assert [h["round"] for h in history] == [1, 2] and history[1]["corrected"] == [_case(job, suggestion)]
    assert all(h["model"] for h in history)  # every round keeps its model
    predictions2 = logic.loadPredictions(round2)
    assert set(predictions2) == {v.GetID() for v in unlabelled} - {suggestion}

    # 4. Cancel a run.
    round3 = logic.retrain(round2, iterations=5000)
    time.sleep(1.0)
    round3.cancel()
    assert round3.wait(timeout_s=60) == jobs.CANCELLED
    assert round3.process.poll() is not None

    # 5. Export all results, and one prediction in both formats; read back.
    manifest = json.loads(logic.exportResults(round2, tmp_path / "export").read_text())
    rows = {row["case"]: row for row in manifest["cases"]}
    assert rows[_case(job, suggestion)]["corrected"] is True and rows[_case(job, suggestion)]["modelRound"] == 1
    assert all(r["modelRound"] == 2 for c, r in rows.items() if c != _case(job, suggestion))
    assert_segmentation_file(scene, tmp_path / "export" / rows[_case(job, suggestion)]["file"], corrected_volume,
                             truth)
    path = logic.exportSegmentation(corrected, tmp_path / "export" / "corrected.nrrd",
                                    classNames=["organ", "lesion"])
    assert np.array_equal(slicer.util.arrayFromVolume(readVolume(scene, path, labelmap=True)), truth)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="kills a process group")
def test_a_round_killed_mid_training_is_resumed_to_its_predictions(scene, tmp_path, monkeypatch):
    """Slicer crashed, or the machine restarted, while a round trained: the reopened round
    said "go on with `sslsegment train --resume`", a command line that a panel user has no
    use for, and retraining lost everything. ``resumeRound`` goes on from its checkpoint.
    Opened by another session while it still trains, the round is followed as running."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    logic = make_logic(scene, tmp_path)
    labelled = [phantom_case(scene, f"L{i}", seed=10 + i) for i in range(2)]
    unlabelled = [phantom_case(scene, "U0", seed=20, labelled=False)]
    settings = {**TINY, "iterations": 300, "extraArgs": [*TINY["extraArgs"], "--checkpoint-interval", "10"]}
    job = logic.startTraining(labeled=labelled, unlabeled=unlabelled, **settings)
    deadline = time.monotonic() + 240
    while (job.training_progress or {}).get("iteration", 0) < 20 or not (job.run_dir / "checkpoint_resume.pt").exists():
        assert job.state == jobs.RUNNING and time.monotonic() < deadline, job.log_tail()
        time.sleep(0.1)
    # Opened from another session while its process trains: running (followed), not failed.
    watching = make_logic(scene, tmp_path)
    followed = watching.openJob(job.folder.root)
    assert followed.state == jobs.RUNNING and not followed.resumable and followed in watching.jobs
    os.killpg(job.process.pid, signal.SIGKILL)  # what a crash or a power cut leaves
    job.process.wait()
    assert followed.wait(timeout_s=30) == jobs.FAILED and followed.resumable  # the kill is seen

    reopened = logic.openJob(job.folder.root)  # the next session
    assert reopened.state == jobs.FAILED and "--resume" in reopened.error and reopened.resumable
    resumed = logic.resumeRound(reopened, waitForCompletion=True)
    assert resumed.state == jobs.DONE, f"{resumed.error}\n{resumed.log_tail()}"
    assert resumed.round == 1 and job.folder.rounds() == [1] and len(job.folder.read_round(1)["resumed"]) == 1
    starts = [r["iteration"] for r in resumed.history if r.get("event") == "resumed"]
    assert starts and starts[0] >= 10  # from its checkpoint, not from the start
    assert resumed.training_progress["iteration"] == 300
    assert set(logic.loadPredictions(resumed)) == {unlabelled[0].GetID()}
    assert not resumed.resumable
    with pytest.raises(InputError, match="cannot be resumed"):
        logic.resumeRound(resumed)


@pytest.mark.slow
def test_a_job_reopened_after_the_scans_were_loaded_again_finds_its_volumes(scene, tmp_path, monkeypatch):
    """Slicer restarted without saving the scene: the scans are loaded again, in another order,
    so ``job.json``'s node IDs name other volumes or none, and no prediction could be loaded.
    Opening the job links each case to the volume of its name with the job's voxels (a
    same-named volume with other voxels is left alone), and remembers the new IDs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    logic = make_logic(scene, tmp_path)
    labelled = [phantom_case(scene, f"L{i}", seed=10 + i) for i in range(2)]
    unlabelled = [phantom_case(scene, f"U{i}", seed=20 + i, labelled=False) for i in range(2)]
    job = logic.startTraining(labeled=labelled, unlabeled=unlabelled, waitForCompletion=True,
                              **{**TINY, "iterations": 4})
    assert job.state == jobs.DONE, job.log_tail()

    scene.Clear(0)  # the next session: the same scans, loaded in another order, and a decoy
    decoy = add_volume(scene, "U1", make_phantom(SHAPE, SPACING, seed=99)[0])
    again = {name: phantom_case(scene, name, seed, labelled=False) for name, seed in (("U1", 21), ("U0", 20))}
    info = job.folder.read_job()
    info["cases"]["U1"]["volumeNodeID"] = decoy.GetID()  # another scan got U1's old ID and name
    info["cases"]["U0"]["volumeNodeID"] = "vtkMRMLScalarVolumeNode999"  # U0's old ID is nobody's
    del info["cases"]["U0"]["volumeFingerprint"]  # as a job written before fingerprints
    job.folder.write_job(info)
    relinked = make_logic(scene, tmp_path).openJob(job.folder.root)
    reopened = make_logic(scene, tmp_path)
    predictions = reopened.loadPredictions(relinked)
    assert set(predictions) == {again["U0"].GetID(), again["U1"].GetID()} and decoy.GetID() not in predictions
    cases = relinked.folder.read_job()["cases"]
    assert (cases["U0"]["volumeNodeID"], cases["U1"]["volumeNodeID"]) == (again["U0"].GetID(), again["U1"].GetID())
    assert cases["U0"]["volumeFingerprint"] == volumeFingerprint(again["U0"])  # read from the job's copy
    assert cases["L0"]["volumeNodeID"] is None  # its scan was not loaded again: linked to none
    assert reopened.suggestVolumeToCorrect(relinked) in predictions


def test_a_round_that_failed_before_training_is_not_resumable(scene, tmp_path):
    logic = make_logic(scene, tmp_path, fake_engine_runner)
    job = logic.startTraining(labeled=[phantom_case(scene, "A", 1)], waitForCompletion=True, **TINY)
    assert job.state == jobs.FAILED and not job.resumable  # it would fail the same way again
    with pytest.raises(InputError, match="round 1 cannot be resumed"):
        logic.resumeRound(job)


def _case(job, volume_id):
    return next(n for n, c in job.folder.read_job()["cases"].items() if c["volumeNodeID"] == volume_id)


FAKE_DONE_ENGINE = """
import json, os, sys
out = sys.argv[sys.argv.index("--out") + 1]
open(os.path.join(out, "model.pt"), "w").write("weights")
json.dump({"state": "done"}, open(os.path.join(out, "status.json"), "w"))
"""


def test_retrain_refuses_new_classes_and_unfinished_rounds(scene, tmp_path):
    def done_runner(command, cwd, env, console_path):
        return jobs.start_process([sys.executable, "-c", FAKE_DONE_ENGINE, *command[1:]], cwd, env, console_path)

    logic = make_logic(scene, tmp_path, done_runner)
    job = logic.startTraining(labeled=[phantom_case(scene, "A", 1)], waitForCompletion=True, **TINY)
    assert job.state == jobs.DONE
    volume, segmentation = phantom_case(scene, "B", 2)
    segmentation.GetSegmentation().GetNthSegment(0).SetName("tumour")
    with pytest.raises(InputError, match="not classes of this job"):
        logic.retrain(job, corrected=[(volume, segmentation)])
    with pytest.raises(InputError, match="unknown training settings"):
        logic.retrain(job, learningRate=3)
    assert job.folder.rounds() == [1] and not job.folder.labels_dir(2).exists()

    (job.run_dir / "status.json").write_text(json.dumps({"state": "failed", "error": "x"}))
    failed = jobs.Job.from_past_round(job.folder, 1)
    with pytest.raises(InputError, match="no trained model"):
        logic.retrain(failed)
    assert logic.openJob(job.folder.root).round == 1


def test_time_budget_and_spacing_reach_the_command(scene, tmp_path):
    from SSLSegmentLib.logic import _roundSettings, _withIterations

    logic = make_logic(scene, tmp_path, fake_engine_runner)
    labelled = [phantom_case(scene, "A", 1)]
    job = logic.startTraining(labeled=labelled, waitForCompletion=True, timeBudget=3, **TINY)
    round_info = job.folder.read_round(1)
    command = round_info["command"]
    assert command[command.index("--time-budget") + 1] == "3.0" and "--iterations" not in command
    assert round_info["settings"]["time_budget"] == 3.0
    previous = {**round_info["settings"]}
    assert _roundSettings(previous, _withIterations(500, {})).time_budget is None
    assert _roundSettings(previous, _withIterations(None, {"timeBudget": 2})).time_budget == 2
    assert _roundSettings(previous, _withIterations(500, {"timeBudget": 2})).time_budget == 2
    with pytest.raises(InputError, match="time budget"):
        logic.startTraining(labeled=labelled, timeBudget=-1, **TINY)
    spaced = logic.startTraining(labeled=labelled, spacing="fit", waitForCompletion=True, **TINY)
    command = spaced.folder.read_round(1)["command"]
    assert command[command.index("--spacing") + 1] == "fit"
    with pytest.raises(InputError, match="spacing"):
        logic.startTraining(labeled=labelled, spacing="fine", **TINY)


def test_a_volume_fingerprint_is_kept_until_its_voxels_or_geometry_change(scene):
    """Opening a job (or going back to a round) hashes each case's scan; the hash is kept on
    the node and computed again only after a voxel edit or a geometry change."""
    import hashlib  # noqa: PLC0415

    import vtk  # noqa: PLC0415

    from SSLSegmentLib.mrml import FINGERPRINT_ATTRIBUTE  # noqa: PLC0415

    volume = phantom_case(scene, "F0", seed=3, labelled=False)
    voxels = slicer.util.arrayFromVolume(volume)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    geometry = np.round([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)], 4) + 0.0
    digest = hashlib.sha256(f"{voxels.dtype.str} {voxels.shape} {geometry.tolist()}".encode())
    digest.update(voxels.tobytes())
    first = volumeFingerprint(volume)
    assert first == digest.hexdigest()  # the definition jobs already store
    kept = volume.GetAttribute(FINGERPRINT_ATTRIBUTE)
    volume.SetAttribute(FINGERPRINT_ATTRIBUTE, kept.rsplit(" ", 1)[0] + " kept")
    assert volumeFingerprint(volume) == "kept"  # not hashed again while nothing changed
    voxels[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(volume)
    edited = volumeFingerprint(volume)
    assert edited not in ("kept", first)
    volume.SetSpacing(2.0, 2.0, 2.0)
    assert volumeFingerprint(volume) not in ("kept", first, edited)
