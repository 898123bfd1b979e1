"""The browser UI's parts that need no browser: the workspace (volumes, roles, labels,
bounds) on a real MRML scene, who may connect, and `serve`'s refusals."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from helpers import run_cli  # noqa: E402
from SSLSegmentLib.errors import InputError  # noqa: E402
from SSLSegmentLib.headless import slicer_scene  # noqa: E402
from SSLSegmentLib.logic import EXCLUDED, LABELLED, UNLABELLED, SSLSegmentLogic  # noqa: E402
from SSLSegmentLib.web import security  # noqa: E402
from SSLSegmentLib.web.workspace import Limits, Workspace, image_name  # noqa: E402


@pytest.fixture()
def workspace(tmp_path):
    scene = slicer_scene()
    return Workspace(scene, SSLSegmentLogic(scene=scene, jobsRoot=tmp_path / "jobs"))


def test_folder_with_labels_gives_roles_and_classes(workspace, phantom_data):
    ids = workspace.add_folder(phantom_data["images"], phantom_data["labels"])
    rows = {row["name"]: row for row in workspace.rows()}
    assert len(ids) == 5 and [c.name for c in workspace.classes()] == ["organ", "lesion"]
    assert [rows[f"case_{i:03d}"]["role"] for i in range(5)] == [LABELLED] * 3 + [UNLABELLED] * 2
    assert rows["case_000"]["labelled_voxels"] > 0 and rows["case_003"]["labelled_voxels"] == 0


def test_roles_editing_and_labels_made_with_the_known_classes(workspace, phantom_data):
    workspace.add_folder(phantom_data["images"], phantom_data["labels"])
    by_name = {row["name"]: row["id"] for row in workspace.rows()}
    workspace.set_role(by_name["case_000"], EXCLUDED)
    workspace.refresh_roles()  # a person's exclusion survives the refresh after painting
    assert workspace.entries[by_name["case_000"]].role == EXCLUDED
    with pytest.raises(InputError, match="no labelled voxel"):
        workspace.set_role(by_name["case_004"], LABELLED)
    labels = workspace.labels_for_editing(by_name["case_004"])
    names = [labels.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(labels.GetSegmentation().GetNumberOfSegments())]
    assert names == ["organ", "lesion"]
    assert workspace.labels_for_editing(by_name["case_004"]) is labels  # the same node, not a new one
    # Paint one voxel of 'organ' as the editor would: the volume becomes labelled.
    volume = workspace.entries[by_name["case_004"]].volume
    segment_id = labels.GetSegmentation().GetSegmentIdBySegmentName("organ")
    mask = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=np.uint8)
    mask[3, 4, 5] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, labels, segment_id, volume)
    workspace.refresh_roles()
    assert workspace.entries[by_name["case_004"]].role == LABELLED
    assert workspace.labelled_voxels(by_name["case_004"]) == 1


def test_bounds_and_bad_input_say_what_is_wrong(workspace, phantom_data, tmp_path):
    with pytest.raises(InputError, match="at most 4 volumes"):
        Workspace(workspace.scene, workspace.logic, Limits(max_volumes=4)).add_folder(phantom_data["images"])
    with pytest.raises(InputError, match="no image"):
        Workspace(workspace.scene, workspace.logic).add_folder(tmp_path)
    with pytest.raises(InputError, match="Train a model first"):
        workspace.retrain()
    with pytest.raises(InputError, match="No unlabelled volume"):
        fresh = Workspace(workspace.scene, workspace.logic)
        fresh.add_volume(phantom_data["images"] / "case_000.nrrd", phantom_data["labels"] / "case_000.seg.nrrd")
        fresh.start_training("supervised", "unet", "auto", 2)
    assert image_name(phantom_data["labels"] / "case_000.seg.nrrd") == "case_000"


def test_who_may_connect():
    assert security.is_loopback("127.0.0.1") and security.is_loopback("localhost") and security.is_loopback("::1")
    assert not security.is_loopback("0.0.0.0")
    assert security.access_secret("127.0.0.1", False, None) is None
    with pytest.raises(InputError, match="--allow-remote"):
        security.access_secret("0.0.0.0", False, None)
    first, second = (security.access_secret("0.0.0.0", True, None) for _ in range(2))
    assert len(first) >= 24 and first != second  # random, not a default
    with pytest.raises(InputError, match="at least 16"):
        security.access_secret("0.0.0.0", True, "short")


def test_serve_refuses_a_remote_address_without_the_flag(tmp_path):
    result = run_cli("serve", "--host", "0.0.0.0", "--images", str(tmp_path), timeout=120)
    assert result.returncode == 2 and "--allow-remote" in result.stderr


@pytest.mark.slow
def test_a_cancelled_round_resumes_from_its_checkpoint_after_a_server_restart(workspace, phantom_data, monkeypatch,
                                                                            tmp_path):
    """Cancel; the server restarts; the round, opened from the past rounds, resumes from its
    checkpoint to its results on the volumes loaded again."""
    import time  # noqa: PLC0415

    from SSLSegmentLib import jobs  # noqa: PLC0415

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    workspace.add_folder(phantom_data["images"], phantom_data["labels"])
    assert workspace.poll()["resumable"] is False
    with pytest.raises(InputError, match="No round to resume"):
        workspace.resume()
    job = workspace.start_training("mean_teacher", "unet", "auto", 300, device="cpu", size="tiny", dim=3,
                                   extra_args=["--patch-size", "16,32,32", "--checkpoint-interval", "10"])
    deadline = time.monotonic() + 240
    while (job.training_progress or {}).get("iteration", 0) < 20:
        assert workspace.poll()["state"] == jobs.RUNNING and time.monotonic() < deadline, job.log_tail()
        time.sleep(0.1)
    workspace.cancel()
    job.wait(timeout_s=60)
    status = workspace.poll()
    assert status["state"] == jobs.CANCELLED and status["resumable"] is True
    # The server restarts: a new scene, the same scans loaded again, the round opened from the list.
    scene = slicer_scene()
    restarted = Workspace(scene, SSLSegmentLogic(scene=scene, jobsRoot=workspace.logic.jobsRoot))
    ids = restarted.add_folder(phantom_data["images"], phantom_data["labels"])
    listed = restarted.past_rounds()
    assert [(r["round"], r["method"], r["state"], r["resumable"], r["cases"]) for r in listed] == [
        (1, "mean_teacher", jobs.CANCELLED, True, 5)]
    for elsewhere in (tmp_path, tmp_path / "jobs" / ".." / "jobs"):  # not a job of the jobs folder
        with pytest.raises(InputError, match="not a job of the jobs folder"):
            restarted.open_round(elsewhere)
    assert restarted.open_round(listed[0]["folder"]).round == 1
    assert restarted.poll()["resumable"] is True and restarted.linked_cases() == (5, 5)
    resumed = restarted.resume()
    assert resumed.round == 1 and resumed.wait(timeout_s=240) == jobs.DONE, resumed.log_tail()
    assert restarted.poll()["resumable"] is False and resumed.training_progress["iteration"] == 300
    rows = restarted.load_results()
    assert sorted(r["id"] for r in rows) == sorted(ids[3:])  # the two unlabelled phantoms, in this scene
    assert restarted.past_rounds()[0]["state"] == jobs.DONE
