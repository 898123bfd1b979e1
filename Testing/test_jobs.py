"""The job folder and the child process life cycle, with dummy child scripts (no engine)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import psutil
import pytest

from SSLSegmentLib import jobs

# A stand-in for `python -m SSLSegmentLib train`: logs progress, obeys the cancel file.
FAKE_TRAINER = textwrap.dedent("""
    import json, os, sys, time
    run = sys.argv[1]; iterations = int(sys.argv[2]); mode = sys.argv[3]
    os.makedirs(run, exist_ok=True)
    def status(state, error=None):
        tmp = os.path.join(run, "status.tmp")
        with open(tmp, "w") as f:
            json.dump({"state": state, "error": error, "pid": os.getpid()}, f)
        os.replace(tmp, os.path.join(run, "status.json"))
    status("running")
    if mode == "grandchild":  # a worker that would survive a kill of the launcher only
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open(os.path.join(run, "grandchild.pid"), "w").write(str(child.pid))
    for i in range(1, iterations + 1):
        if mode == "restart" and i == 4:  # the run started again in its folder: a new, empty file
            open(os.path.join(run, "progress.new"), "w").close()
            os.replace(os.path.join(run, "progress.new"), os.path.join(run, "progress.jsonl"))
        if os.path.exists(os.path.join(run, "cancel")) and mode != "stubborn":
            status("cancelled"); sys.exit(0)
        with open(os.path.join(run, "progress.jsonl"), "a") as f:
            f.write(json.dumps({"iteration": i, "total": iterations, "losses": {"loss": 1.0 / i},
                                "eta_s": 0.01 * (iterations - i)}) + "\\n")
        if mode == "crash" and i == 2:
            print("Traceback: something broke", flush=True); status("failed", "something broke"); sys.exit(1)
        time.sleep(0.02 if mode == "quick" else 0.2)
    open(os.path.join(run, "model.pt"), "w").write("weights")
    status("done")
""")


def make_job(tmp_path, mode: str, iterations: int = 5, grace_s: float = 1.0) -> jobs.Job:
    folder = jobs.JobFolder(tmp_path / "job")
    round_number = folder.next_round()
    run_dir = folder.round_dir(round_number)
    command = [sys.executable, "-c", FAKE_TRAINER, str(run_dir), str(iterations), mode]
    return jobs.Job(folder, round_number, command, cancel_grace_s=grace_s).start()


def test_job_runs_to_done_and_reports_progress(tmp_path):
    job = make_job(tmp_path, "quick")
    assert job.state in (jobs.RUNNING, jobs.DONE)  # polling never blocks
    assert job.wait(timeout_s=30) == jobs.DONE
    assert job.error is None
    assert job.progress["iteration"] == 5 and len(job.history) == 5
    assert job.fraction_done() == 1.0
    assert job.model_path.exists()


def test_crash_gives_failed_with_error_and_log_tail(tmp_path):
    job = make_job(tmp_path, "crash")
    assert job.wait(timeout_s=30) == jobs.FAILED
    assert job.error == "something broke"
    assert "Traceback" in job.log_tail()


def test_process_that_cannot_start_fails_cleanly(tmp_path):
    folder = jobs.JobFolder(tmp_path / "job")
    job = jobs.Job(folder, 1, [str(tmp_path / "no-such-python")]).start()
    assert job.state == jobs.FAILED and "could not start" in job.error


def test_cancel_stops_cleanly(tmp_path):
    job = make_job(tmp_path, "slow", iterations=200)
    time.sleep(0.5)
    job.cancel()
    assert job.wait(timeout_s=30) == jobs.CANCELLED
    assert (job.run_dir / "cancel").exists()


def test_cancel_kills_the_whole_tree_of_a_stubborn_child(tmp_path):
    job = make_job(tmp_path, "grandchild", iterations=200, grace_s=0.5)
    pid_file = job.run_dir / "grandchild.pid"
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert psutil.pid_exists(grandchild)
    job.cancel()  # the launcher stops cleanly; its worker must not outlive it
    assert job.wait(timeout_s=30) == jobs.CANCELLED
    time.sleep(0.3)
    assert not _alive(grandchild)


def test_stubborn_child_is_killed_after_grace(tmp_path):
    job = make_job(tmp_path, "stubborn", iterations=500, grace_s=0.5)
    time.sleep(0.5)
    started = time.monotonic()
    job.cancel()
    assert job.wait(timeout_s=30) == jobs.CANCELLED
    assert time.monotonic() - started < 10
    assert not _alive(job.process.pid)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_progress_file_started_again_replaces_the_history(tmp_path):
    job = make_job(tmp_path, "restart", iterations=7)
    while job.poll() == jobs.RUNNING and len(job.history) < 2:
        time.sleep(0.05)
    assert job.wait(timeout_s=30) == jobs.DONE
    assert [r["iteration"] for r in job.history] == [4, 5, 6, 7]  # not 1, 2, 3 from the file it replaced
    assert job.progress["iteration"] == 7


def test_progress_reader_skips_partial_and_corrupt_lines(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"iteration": 1}\nnot json\n{"iteration": 2')
    reader = jobs.ProgressReader(path)
    assert reader.read_new() == [{"iteration": 1}]
    with open(path, "a") as f:
        f.write(', "total": 3}\n')
    assert reader.read_new() == [{"iteration": 2, "total": 3}]
    assert reader.read_new() == []


def test_folder_rounds_manifest_and_history(tmp_path):
    folder = jobs.JobFolder(tmp_path / "job")
    assert folder.rounds() == [] and folder.next_round() == 1
    folder.images_dir.mkdir(parents=True)
    (folder.images_dir / "a.nrrd").write_bytes(b"image")
    folder.labels_dir(1).mkdir(parents=True)
    (folder.labels_dir(1) / "a.seg.nrrd").write_bytes(b"label")
    cases = {"a": {"image": "images/a.nrrd", "label": "labels/001/a.seg.nrrd", "corrected": False}}
    manifest = jobs.case_manifest(folder, cases)
    assert manifest["a"]["imageSha256"] == jobs.file_sha256(folder.images_dir / "a.nrrd")
    folder.write_round(1, {"round": 1, "previousRound": None, "cases": manifest,
                           "settings": {"method": "mean_teacher"}})
    run = folder.round_dir(1)
    (run / "status.json").write_text(json.dumps({"state": "done"}))
    (run / "progress.jsonl").write_text(json.dumps({"iteration": 3, "val_dice": 0.8}) + "\n")
    (run / "model.pt").write_text("w")
    assert folder.next_round() == 2
    [summary] = folder.history()
    assert summary["state"] == "done" and summary["valDice"] == 0.8
    assert summary["labelled"] == ["a"] and summary["corrected"] == []
    assert summary["model"].endswith("model.pt")


def test_train_command_and_environment(tmp_path):
    folder = jobs.JobFolder(tmp_path)
    settings = jobs.TrainSettings(iterations=20, size="tiny", device="cpu")
    command = jobs.train_command(["py"], folder, 2, settings, init_model=folder.round_dir(1) / "model.pt")
    assert command[:4] == ["py", "-m", "SSLSegmentLib", "train"]
    assert command[command.index("--out") + 1] == str(folder.round_dir(2))
    assert command[command.index("--labels") + 1] == str(folder.labels_dir(2))
    assert command[command.index("--init-model") + 1].endswith("001/model.pt")
    assert "--predict-unlabelled" in command and command[command.index("--size") + 1] == "tiny"
    env = jobs.child_environment("/some/where", device="cpu")
    assert env["PYTHONPATH"].split(":")[0] == "/some/where"
    assert env["CUDA_VISIBLE_DEVICES"] == "-1"


@pytest.mark.parametrize("missing", ["status.json", "progress.jsonl"])
def test_reading_missing_files_never_raises(tmp_path, missing):
    assert jobs.read_json(tmp_path / missing, default={}) == {}
    assert jobs.tail(tmp_path / missing) == ""


def test_status_text_and_fraction_follow_the_phases(tmp_path):
    folder = jobs.JobFolder(tmp_path / "job")
    job = jobs.Job(folder, 1, [sys.executable, "-c", "import time; time.sleep(30)"]).start()
    try:
        assert "starting" in jobs.status_text(job)
        progress = job.run_dir / "progress.jsonl"
        progress.write_text(json.dumps({"iteration": 5, "total": 10, "losses": {"main": 0.5}, "eta_s": 65,
                                        "val_dice": 0.7}) + "\n")
        text = jobs.status_text(job)
        assert "iteration 5/10" in text and "ETA 1:05" in text and "loss 0.5000" in text and "Dice 0.700" in text
        assert job.fraction_done() == pytest.approx(0.45)
        with open(progress, "a") as f:
            f.write(json.dumps({"phase": "predicting", "case": "U0", "done": 1, "total": 2}) + "\n")
        assert "predicting U0 (1/2)" in jobs.status_text(job)
        assert job.fraction_done() == pytest.approx(0.95)
        assert job.training_progress["iteration"] == 5 and job.latest_val_dice() == 0.7
    finally:
        job.kill()
    assert job.wait(timeout_s=10) == jobs.CANCELLED
    assert "cancelled" in jobs.status_text(job)


def test_past_round_is_reopened_from_its_files(tmp_path):
    folder = jobs.JobFolder(tmp_path / "job")
    run = folder.round_dir(1)
    run.mkdir(parents=True)
    (run / "progress.jsonl").write_text(json.dumps({"iteration": 3, "total": 3}) + "\n")
    (run / "status.json").write_text(json.dumps({"state": "done"}))
    job = jobs.Job.from_past_round(folder, 1)
    assert job.state == jobs.DONE and job.error is None and job.progress["iteration"] == 3
    (run / "status.json").write_text(json.dumps({"state": "running"}))
    assert jobs.Job.from_past_round(folder, 1).state == jobs.FAILED  # died without a final status


def test_training_child_leaves_a_core_to_the_gui(tmp_path):
    folder = jobs.JobFolder(tmp_path)
    command = jobs.train_command(["python"], folder, 1, jobs.TrainSettings())
    threads = int(command[command.index("--threads") + 1])
    assert threads == max(1, (os.cpu_count() or 2) - 1)


def test_a_time_budget_replaces_the_iteration_count_in_the_command(tmp_path):
    folder = jobs.JobFolder(tmp_path)
    budgeted = jobs.train_command(["py"], folder, 1, jobs.TrainSettings(iterations=20, time_budget=5))
    assert budgeted[budgeted.index("--time-budget") + 1] == "5.0" and "--iterations" not in budgeted
    counted = jobs.train_command(["py"], folder, 1, jobs.TrainSettings(iterations=20))
    assert counted[counted.index("--iterations") + 1] == "20" and "--time-budget" not in counted


def test_status_text_says_when_the_budget_is_still_measuring(tmp_path):
    from SSLSegmentLib.config import PROVISIONAL_ITERATIONS

    job = jobs.Job(jobs.JobFolder(tmp_path / "job"), 1, [sys.executable, "-c", "import time; time.sleep(30)"]).start()
    try:
        progress = job.run_dir / "progress.jsonl"
        progress.write_text(json.dumps({"iteration": 3, "total": PROVISIONAL_ITERATIONS, "losses": {}, "eta_s": 9e5})
                            + "\n")
        assert "measuring the speed for the time budget" in jobs.status_text(job)
        with open(progress, "a") as f:
            f.write(json.dumps({"iteration": 10, "total": 400, "losses": {"main": 0.5}, "eta_s": 60}) + "\n")
        assert "iteration 10/400" in jobs.status_text(job)
    finally:
        job.kill()


def test_past_rounds_lists_each_jobs_latest_round_newest_first(tmp_path):
    """What a restarted session can open: the latest round of each job folder, newest job
    first; a folder without rounds, or without job.json, is not a job."""
    from SSLSegmentLib.run_protocol import write_status  # noqa: PLC0415

    def job(name, rounds, started, state, model=False):
        folder = jobs.JobFolder(tmp_path / name)
        folder.root.mkdir()
        folder.write_job({"classes": [], "cases": {"a": {}, "b": {}}})
        for number in rounds:
            folder.write_round(number, {"round": number, "started": started, "settings": {"method": "bcp"}})
            write_status(folder.round_dir(number), state)
        if model:
            (folder.round_dir(rounds[-1]) / jobs.MODEL_FILE).write_bytes(b"model")
        used = time.time() - (100 if name == "older" else 0)  # the newer job was used last
        os.utime(folder.job_file, (used, used))
        return folder

    job("older", [1, 2], "2026-12-01T10:00:00", jobs.DONE, model=True)
    job("newer", [1], "2026-12-02T10:00:00", jobs.FAILED, model=True)
    job("empty", [], "", jobs.DONE)
    (tmp_path / "notes").mkdir()
    listed = jobs.past_rounds(tmp_path)
    assert [(r["name"], r["round"], r["method"], r["state"], r["cases"], r["resumable"]) for r in listed] == [
        ("newer", 1, "bcp", jobs.FAILED, 2, True), ("older", 2, "bcp", jobs.DONE, 2, False)]
    assert jobs.past_rounds(tmp_path, limit=1)[0]["name"] == "newer"
    assert jobs.past_rounds(tmp_path / "missing") == []


def _when(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_round_still_training_from_another_session_is_watched_to_its_end_or_cancelled(tmp_path):
    """The process outlived the session (Slicer, the web server) that started it: opened again,
    the round is running, not failed; the job follows it to done, and Cancel stops it."""
    started = make_job(tmp_path, "slow", iterations=25)
    _when(lambda: (started.poll(), started.training_progress)[1] is not None)
    watched = jobs.Job.from_past_round(started.folder, started.round)
    assert watched.state == jobs.RUNNING and not watched.resumable and watched.error is None
    assert watched.wait(timeout_s=30) == jobs.DONE and watched.training_progress["iteration"] == 25
    assert started.wait(timeout_s=30) == jobs.DONE

    stubborn = make_job(tmp_path, "stubborn", iterations=500)
    _when(lambda: (stubborn.poll(), stubborn.training_progress)[1] is not None)
    watched = jobs.Job.from_past_round(stubborn.folder, stubborn.round)
    watched.cancel_grace_s = 0.5
    watched.cancel()  # the child ignores the cancel file: its tree is killed after the grace
    assert watched.wait(timeout_s=30) == jobs.CANCELLED
    assert stubborn.wait(timeout_s=30) != jobs.RUNNING and not _alive(stubborn.process.pid)
