"""Issue 13 (training side): no wrong model with exit 0, one run per folder, truthful states.

Each test reproduces a failure seen before the fix: a diverged run published a NaN model
with exit 0, two runs shared one folder, a re-run left the old model in place, empty or
split classes were accepted, bad settings gave tracebacks, Ctrl+C and SIGTERM to the
process group ended as running/failed, and a killed run could not be resumed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from helpers import ROOT, TINY_TRAIN
from SSLSegmentLib.cli import main
from SSLSegmentLib.data.geometry import Geometry
from SSLSegmentLib.data.labels import ClassInfo, write_segmentation
from SSLSegmentLib.errors import InputError
from SSLSegmentLib.model_file import load_model
from SSLSegmentLib.training.run_folder import RunFolder

from helpers import train_in_process, write_two_labelled_cases, write_volume

TINY = ("--size", "tiny", "--device", "cpu", "--threads", "1")


@pytest.fixture
def data(tmp_path):
    """Two labelled cases (plain labelmaps, one class) and one unlabelled."""
    rng = np.random.default_rng(0)
    for name in ("alpha", "beta", "gamma"):
        write_volume(tmp_path / "images" / f"{name}.nrrd", rng.normal(size=(8, 16, 16)).astype(np.float32))
    for name in ("alpha", "beta"):
        label = np.zeros((8, 16, 16), np.uint8)
        label[2:6, 4:12, 4:12] = 1
        write_volume(tmp_path / "labels" / f"{name}.nrrd", label)
    return tmp_path


def _train(root, capsys, *extra, out=None):
    out = out or root / "run"
    code = main(["train", "--images", str(root / "images"), "--labels", str(root / "labels"), "--out", str(out),
                 "--iterations", "2", *TINY, *extra])
    return code, capsys.readouterr().err, out


def _refused(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


def _child(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "SSLSegmentLib", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _iteration(run: RunFolder) -> int:
    steps = [r["iteration"] for r in run.read_progress() if "iteration" in r]
    return steps[-1] if steps else 0


# --- 1. divergence -----------------------------------------------------------------------------

def test_a_diverged_run_fails_without_a_model(data, capsys):
    code, err, out = _train(data, capsys, "--lr", "1e8", "--iterations", "8", "--method", "supervised")
    assert code == 1, err
    status = RunFolder(out).read_status()
    assert status["state"] == "failed" and "diverged" in status["error"] and "--lr" in status["error"]
    assert "Traceback" not in err and "diverged" in err
    assert not (out / "model.pt").exists()


def test_predict_refuses_a_model_with_nan_weights(data, capsys, tmp_path):
    code, err, out = _train(data, capsys, "--method", "supervised")
    assert code == 0, err
    payload = torch.load(out / "model.pt", weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name].fill_(float("nan"))
    torch.save(payload, tmp_path / "nan.pt")
    with pytest.raises(InputError, match="NaN or infinite"):
        load_model(tmp_path / "nan.pt")
    code = main(["predict", "--model", str(tmp_path / "nan.pt"), "--images", str(data / "images"),
                 "--out", str(tmp_path / "pred"), "--device", "cpu"])
    # no prediction: only the status that tells the panel why
    assert code == 2 and [p.name for p in (tmp_path / "pred").glob("*")] == ["status.json"]
    code, err, _ = _train(data, capsys, "--init-model", str(tmp_path / "nan.pt"), out=tmp_path / "retrain")
    _refused(code, err, "nan.pt", "NaN or infinite")


# --- 3. one run per folder ---------------------------------------------------------------------

def test_a_finished_run_folder_is_not_reused_silently(data, capsys):
    code, err, out = _train(data, capsys, "--method", "supervised")
    assert code == 0, err
    code, err, _ = _train(data, capsys, "--method", "mean_teacher")
    _refused(code, err, "already holds a training run", "--overwrite", "--resume")
    assert json.loads((out / "config.json").read_text())["config"]["method"] == "supervised"
    # settings refused up front leave the folder as it was
    code, err, _ = _train(data, capsys, "--overwrite", "--method-option", "no_such_key=1")
    _refused(code, err, "no_such_key")
    assert RunFolder(out).read_status()["state"] == "done" and (out / "model.pt").exists()
    # --overwrite: the old model goes first, so a new run failing later leaves no model behind
    code, err, _ = _train(data, capsys, "--overwrite", "--patch-size", "8,64,64", "--dim", "2")
    _refused(code, err, "--patch-size")
    assert not (out / "model.pt").exists() and not list(out.glob("checkpoint_*.pt"))
    assert RunFolder(out).read_status()["state"] == "failed"


# --- 4, 5. classes ------------------------------------------------------------------------------

def test_labels_without_any_foreground_are_refused(data, capsys):
    for name in ("alpha", "beta"):
        write_volume(data / "labels" / f"{name}.nrrd", np.zeros((8, 16, 16), np.uint8))
    code, err, out = _train(data, capsys)
    _refused(code, err, "every label is empty")
    assert not (out / "model.pt").exists()


def _segmentations(root, masks_per_case: dict[str, dict[str, np.ndarray]]):
    geometry = Geometry((1.0, 1.0, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (16, 16, 8))
    for case, masks in masks_per_case.items():
        array = np.zeros((8, 16, 16), np.uint8)
        for value, mask in enumerate(masks.values(), start=1):
            array[mask] = value
        write_segmentation(root / "labels" / f"{case}.seg.nrrd", array, geometry,
                           [ClassInfo(name) for name in masks])
    for path in (root / "labels").glob("*.nrrd"):
        if not path.name.endswith(".seg.nrrd"):
            path.unlink()


def _box(z=slice(2, 6), y=slice(2, 8), x=slice(2, 8)):
    mask = np.zeros((8, 16, 16), bool)
    mask[z, y, x] = True
    return mask


def test_a_class_with_no_voxel_in_any_case_is_refused_by_name(data, capsys):
    empty = np.zeros((8, 16, 16), bool)
    _segmentations(data, {"alpha": {"heart": _box(), "tumour": empty}, "beta": {"heart": _box(), "tumour": empty}})
    code, err, _ = _train(data, capsys)
    _refused(code, err, "'tumour'", "no voxel")


def test_class_names_match_after_trimming_and_case_folding(data, capsys):
    lower = _box(y=slice(9, 14))
    _segmentations(data, {"alpha": {"RV": _box(), "Myo ": lower}, "beta": {"rv": _box(), "myo": lower}})
    code, err, out = _train(data, capsys, "--method", "supervised")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["classes"] == ["RV", "Myo"]


def test_a_named_class_missing_from_some_cases_is_refused_naming_them(data, capsys):
    _segmentations(data, {"alpha": {"RV": _box()}, "beta": {"RV": _box(), "Segment_1": _box(y=slice(9, 14))}})
    code, err, _ = _train(data, capsys)
    _refused(code, err, "'Segment_1'", "alpha")


def test_a_label_value_in_one_case_only_is_reported(data, capsys):
    label = np.zeros((8, 16, 16), np.uint8)
    label[2:6, 4:12, 4:12] = 1
    label[0, 0:2, 0:2] = 7
    write_volume(data / "labels" / "beta.nrrd", label)
    code, err, out = _train(data, capsys, "--method", "supervised")
    assert code == 0, err
    log = (out / "log.txt").read_text()
    assert "label_7" in log and "alpha" in log


# --- 10, 15, 16. settings ----------------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (("--lr", "-1"), ("--lr",)), (("--lr", "nan"), ("--lr",)), (("--lr", "inf"), ("--lr",)),
    (("--ct-window", "100", "-100", "--normalisation", "ct"), ("--ct-window", "LOW < HIGH")),
    (("--labelled-batch", "-1"), ("--labelled-batch",)), (("--labelled-batch", "0"), ("--labelled-batch",)),
    (("--consistency", "-100"), ("--consistency",)),
    (("--method", "fixmatch", "--method-option", "fixmatch_treshold=0.9"), ("fixmatch_treshold", "fixmatch_threshold")),
    (("--patch-size", "0,0", "--dim", "2"), ("--patch-size",)),
    (("--patch-size", "8,64,64", "--dim", "2"), ("--patch-size", "2D")),
    (("--patch-size", "32,32", "--dim", "3"), ("--patch-size", "3D")),
])
def test_bad_settings_are_refused_naming_them(data, capsys, extra, words):
    code, err, out = _train(data, capsys, *extra)
    _refused(code, err, *words)
    assert not (out / "model.pt").exists()


def test_a_rounded_patch_is_reported(data, capsys):
    code, err, out = _train(data, capsys, "--patch-size", "20,20", "--dim", "2", "--method", "supervised")
    assert code == 0, err
    assert "--patch-size (20, 20) became (16, 16)" in (out / "log.txt").read_text()


def test_out_that_is_a_file_or_lies_under_one(data, capsys):
    (data / "afile").write_text("x")
    code, err, _ = _train(data, capsys, out=data / "afile")
    _refused(code, err, "afile", "is a file")
    code, err, _ = _train(data, capsys, out=data / "afile" / "run")
    _refused(code, err, "lies under", "afile")


def test_unwritable_out(data, capsys, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere but in /proc
        target = "/proc/sslsegment-run"
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        target = tmp_path / "ro" / "run"
    code, err, _ = _train(data, capsys, out=target)
    _refused(code, err, "sslsegment-run" if os.geteuid() == 0 else "ro", "cannot write")


def test_spacing_in_micrometres_is_refused_before_allocating(data, capsys):
    write_volume(data / "images" / "gamma.nrrd", np.zeros((8, 16, 16), np.float32), spacing=(1000.0, 1000.0, 1500.0))
    code, err, _ = _train(data, capsys)
    _refused(code, err, "'gamma'", "millimetres")


def test_a_damaged_cache_entry_is_rebuilt(data, capsys, caplog, tmp_path):
    cache = tmp_path / "cache"
    code, err, _ = _train(data, capsys, "--method", "supervised", "--cache-dir", str(cache))
    assert code == 0, err
    for image in cache.glob("*/*/image.npy"):
        image.write_bytes(b"junk")
    code, err, out = _train(data, capsys, "--method", "supervised", "--cache-dir", str(cache),
                            out=tmp_path / "again")
    assert code == 0, err
    assert sum("is damaged" in r.getMessage() for r in caplog.records) == 3
    assert all(np.load(p).size > 1 for p in cache.glob("*/*/image.npy"))


# --- 2, 12, 13, 14. processes: lock, signals, kill and resume ----------------------------------

def _long_run(phantom_data, out, *extra, iterations=100000, **kwargs):
    return _child("train", "--images", phantom_data["images"], "--labels", phantom_data["labels"], "--out", out,
                  "--iterations", iterations, *TINY_TRAIN, "--threads", "1", *extra, **kwargs)


def _signal_when(run: RunFolder, iteration: int, send) -> threading.Thread:
    """A thread that calls ``send()`` once the run has done ``iteration`` steps."""
    def watch():
        _wait_for(lambda: _iteration(run) >= iteration)
        send()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_ctrl_c_ends_as_cancelled(data, capsys):
    run = RunFolder(data / "run")
    _signal_when(run, 1, lambda: os.kill(os.getpid(), signal.SIGINT))
    code, err, _ = _train(data, capsys, "--iterations", "100000")
    assert code == 3, err
    assert "Traceback" not in err
    assert run.read_status()["state"] == "cancelled"


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_ends_as_cancelled(data, capsys):
    """``timeout``, batch schedulers and Slicer's scene close signal the whole group: the
    loader workers get SIGTERM first here, as they did when the run ended as failed."""
    run = RunFolder(data / "run")

    def terminate_group():
        for worker in multiprocessing.active_children():
            os.kill(worker.pid, signal.SIGTERM)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    _signal_when(run, 2, terminate_group)
    code, err, _ = _train(data, capsys, "--iterations", "100000", "--num-workers", "2")
    assert code == 3, err
    assert run.read_status()["state"] == "cancelled"


@pytest.mark.slow
def test_a_killed_run_is_locked_while_alive_then_interrupted_then_resumed_to_the_same_model(phantom_data, tmp_path):
    common = ("--method", "mean_teacher", "--checkpoint-interval", "5", "--seed", "3", "--threads", "1")

    def train_here(out, *extra):
        return main(["train", "--images", str(phantom_data["images"]), "--labels", str(phantom_data["labels"]),
                     "--out", str(out), "--iterations", "30", *TINY_TRAIN, *common, *extra])

    assert train_here(tmp_path / "straight") == 0
    out = tmp_path / "killed"
    process = _long_run(phantom_data, out, *common, iterations=30)
    run = RunFolder(out)
    _wait_for(lambda: _iteration(run) >= 12 or process.poll() is not None)
    # item 2: a second run into the folder is refused while the first is alive, even with --overwrite
    assert train_here(out, "--overwrite") == 2
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()
    process.communicate(timeout=60)
    assert run.read_status()["state"] == "interrupted"  # item 14: not "running" forever
    assert (out / "checkpoint_resume.pt").exists() and not (out / "model.pt").exists()

    assert main(["train", "--resume", str(out), "--threads", "1"]) == 0
    assert run.read_status()["state"] == "done"
    assert any(r.get("event") == "resumed" and r["iteration"] >= 10 for r in run.read_progress())
    expected = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    actual = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    for name, tensor in expected.items():
        assert torch.allclose(tensor.float(), actual[name].float(), atol=1e-5), name


@pytest.mark.slow
def test_a_run_is_not_resumed_on_changed_data(data, capsys):
    """A label edited (or a case added) between the stop and ``--resume`` gave a run trained
    on two data sets under one name, its ``cases.json`` rewritten to the second: refused,
    naming the change, with the record kept; with the data put back it resumes."""
    run = RunFolder(data / "run")
    _signal_when(run, 6, lambda: os.kill(os.getpid(), signal.SIGINT))
    code, err, out = _train(data, capsys, "--iterations", "100000", "--checkpoint-interval", "2")
    assert code == 3 and (out / "checkpoint_resume.pt").exists(), err
    record = (out / "cases.json").read_bytes()
    label = data / "labels" / "beta.nrrd"
    original = label.read_bytes()
    edited = np.zeros((8, 16, 16), np.uint8)
    edited[1:7, 2:14, 2:14] = 1
    write_volume(label, edited)
    write_volume(data / "images" / "delta.nrrd", np.zeros((8, 16, 16), np.float32))

    # stops the resume below that goes on (and, without the check, this refused one)
    _signal_when(run, _iteration(run) + 4, lambda: os.kill(os.getpid(), signal.SIGINT))
    assert main(["train", "--resume", str(out), "--iterations", "100000", "--checkpoint-interval", "2"]) == 2
    _refused(2, capsys.readouterr().err, "the data changed since the run began", "the label of case beta changed",
             "unlabelled case delta is new", "--overwrite")
    assert (out / "cases.json").read_bytes() == record
    label.write_bytes(original)
    (data / "images" / "delta.nrrd").unlink()
    assert main(["train", "--resume", str(out), "--iterations", "100000", "--checkpoint-interval", "2"]) == 3
    assert any(r.get("event") == "resumed" for r in run.read_progress())


@pytest.mark.slow
def test_a_run_killed_while_predicting_resumes_with_its_model_to_the_missing_predictions(tmp_path):
    """After the loop the model is written and the resumable checkpoint deleted; a kill while
    the unlabelled cases are predicted used to leave a run that ``--resume`` refused ("no
    resumable checkpoint"), so the whole training was lost. It now predicts the unlabelled
    cases with the model it has, which stays the same file."""
    write_two_labelled_cases(tmp_path)
    rng = np.random.default_rng(1)
    unlabelled = ("u1", "u2", "u3")
    for name in unlabelled:  # large next to the patch: each takes a while to predict
        write_volume(tmp_path / "images" / f"{name}.nrrd", rng.normal(size=(48, 160, 160)).astype(np.float32))
    out = tmp_path / "run"
    process = _child("train", "--images", tmp_path / "images", "--labels", tmp_path / "labels", "--out", out,
                     "--iterations", 4, *TINY_TRAIN, "--spacing", "data", "--threads", "1", "--predict-unlabelled")
    run = RunFolder(out)
    predicting = lambda: any(r.get("phase") == "predicting" for r in run.read_progress())  # noqa: E731
    _wait_for(lambda: predicting() or process.poll() is not None, timeout=300)
    assert process.poll() is None, "the run ended before it could be killed while predicting"
    process.kill()
    process.communicate(timeout=60)
    assert run.read_status()["state"] == "interrupted"
    assert (out / "model.pt").exists() and not (out / "checkpoint_resume.pt").exists()
    model_bytes = (out / "model.pt").read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in (out / "predictions").glob("*.seg.nrrd")}
    assert 0 < len(before) < len(unlabelled)
    assert set(json.loads((out / "predictions" / "confidence.json").read_text())) == {n[:-9] for n in before}

    assert main(["train", "--resume", str(out), "--threads", "1"]) == 0
    assert run.read_status()["state"] == "done"
    assert (out / "model.pt").read_bytes() == model_bytes  # not trained again
    assert sorted(p.name for p in (out / "predictions").glob("*.seg.nrrd")) == [f"{n}.seg.nrrd" for n in unlabelled]
    # The cases predicted before the kill are kept, not predicted again; every score is there.
    assert {name: (out / "predictions" / name).stat().st_mtime_ns for name in before} == before
    assert set(json.loads((out / "predictions" / "confidence.json").read_text())) == set(unlabelled)
    records = run.read_progress()
    resumed = [i for i, r in enumerate(records) if r.get("event") == "resumed"]
    assert resumed and records[resumed[-1]] == {"event": "resumed", "iteration": 4, "training": "finished"}
    assert not [r for r in records[resumed[-1]:] if "elapsed_s" in r]  # no training step after it


def test_a_status_left_running_by_a_dead_process_reads_interrupted(tmp_path):
    from SSLSegmentLib import jobs
    from SSLSegmentLib.fileio import atomic_write_json
    from SSLSegmentLib.training.run_lock import RunLock

    folder = jobs.JobFolder(tmp_path / "job")
    run_dir = folder.round_dir(1)
    run_dir.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    atomic_write_json(run_dir / "status.json", {"state": "running", "pid": gone.pid})
    assert RunFolder(run_dir).read_status()["state"] == "interrupted"  # old run folders: no lock file
    lock = RunLock(run_dir)
    lock.acquire()  # a live process holds the run: running, whatever the pid says
    assert RunFolder(run_dir).read_status()["state"] == "running"
    assert folder.history()[0]["state"] == "running"
    (run_dir / "model.pt").write_bytes(b"trained")  # predicting, in another session
    assert not jobs.Job.from_past_round(folder, 1).resumable
    lock.release()
    assert RunFolder(run_dir).read_status()["state"] == "interrupted"
    assert folder.history()[0]["state"] == "interrupted"
    job = jobs.Job.from_past_round(folder, 1)
    assert job.state == jobs.FAILED and "--resume" in job.error and job.resumable


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_batch_stream_goes_on_with_the_same_batches(num_workers):
    """The resumed stream skips the batches already used: with a thread, and with loader
    workers (taken in turn, so worker w of the resumed run plays worker (w + skip) % n)."""
    from SSLSegmentLib.sampling import BatchStream, PatchSampler

    rng = np.random.default_rng(0)
    images = [rng.normal(size=(12, 20, 20)).astype(np.float32) for _ in range(2)]
    labels = [(image > 1).astype(np.uint8) for image in images]

    def stream(skip):
        sampler = PatchSampler(images, labels, (8, 8, 8), dim=3)
        unlabelled = PatchSampler(images, None, (8, 8, 8), dim=3)
        batches = BatchStream(sampler, unlabelled, (2, 1), seed=4, num_workers=num_workers)
        batches.skip = skip
        taken = []
        for item in batches:
            taken.append(np.asarray(item[0]["image"]).copy())
            if len(taken) == 7 - skip:
                break
        batches.close()
        return taken

    straight, resumed = stream(0), stream(3)
    for expected, actual in zip(straight[3:], resumed):
        assert np.array_equal(expected, actual)


def test_every_method_option_a_method_reads_is_declared():
    """``--method-option`` refuses keys a method does not declare in ``options``: a key read
    with ``extra(settings, "key", ...)`` but not declared could never be set."""
    import inspect
    import re

    from SSLSegmentLib.methods import available_methods

    for name, cls in available_methods().items():
        source = "".join(inspect.getsource(klass) for klass in cls.__mro__
                         if klass.__module__.startswith("SSLSegmentLib.methods"))
        read = set(re.findall(r"""extra(?:_choice)?\(\s*[\w.]+\s*,\s*["'](\w+)["']""", source))
        assert read <= set(cls.options), (name, sorted(read - set(cls.options)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_the_lock_is_not_kept_by_forked_workers(tmp_path):
    """Loader workers are forked with the lock file open: the lock must still end with the
    training process, not with its last worker."""
    from SSLSegmentLib.training.run_lock import RunLock, folder_in_use

    lock = RunLock(tmp_path)
    lock.acquire()
    context = multiprocessing.get_context("fork")
    started = context.Event()

    def work():  # the fork hooks have run once the target runs
        started.set()
        time.sleep(30)

    worker = context.Process(target=work, daemon=True)
    worker.start()
    try:
        assert started.wait(30)
        assert folder_in_use(tmp_path)
        lock.release()
        assert not folder_in_use(tmp_path)
    finally:
        worker.kill()
        worker.join()


def test_overwrite_removes_an_earlier_budgeted_runs_plan(tmp_path, capsys):
    """A run trained for a fixed count over a budgeted one must not keep the old ``budget.json``
    (a reader would take the old plan for the new run's)."""
    root = write_two_labelled_cases(tmp_path)
    code, _, run = train_in_process(root, capsys, "--method", "supervised")
    (run / "budget.json").write_text('{"minutes": 2.0, "iterations": 818}')  # as a budgeted run leaves it
    code, _, run = train_in_process(root, capsys, "--method", "supervised", "--overwrite")
    assert code == 0 and not (run / "budget.json").exists()
