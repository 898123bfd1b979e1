"""Bad inputs and faults, tried as a new user of the command line would, on tiny synthetic data.

Each case runs the real ``python -m SSLSegmentLib`` in a child process and is judged on:
- wrong: a wrong or unchecked result with exit 0 (e.g. a refusal was due, or the output is wrong);
- traceback: a Python traceback in the output (a promised exit 2 with a message is not one);
- lying status: ``status.json`` disagrees with the exit code, or says running after the process ended;
- lost: a file the user had was replaced or deleted.

Prints a markdown table and the counts (tried / wrong with exit 0 / traceback / lying status).
Run: ``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python bench/bad_inputs.py [--jobs 2] [--only NAME]``
(a few minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--size", "tiny", "--device", "cpu", "--threads", "1", "--patch-size", "16,16,16", "--val-cases", "0")
EXIT_STATE = {0: {"done"}, 1: {"failed"}, 2: {"failed", None}, 3: {"cancelled"}}
CASES = []


def case(expect: str):
    """Register a case; ``expect``: 'refuse' (exit 2), 'work' (exit 0), 'cancel' (exit 3) or 'either'
    (0 or 2, no traceback)."""
    def register(function):
        CASES.append((function.__name__, expect, function))
        return function
    return register


# --- data -------------------------------------------------------------------------------------

def write(path: Path, array, spacing=(1.0, 1.0, 1.5), origin=None, direction=None, vector=False):
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(spacing[:image.GetDimension()])
    if origin is not None:
        image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def box_case(shape=(12, 24, 24), seed=0):
    """A bright box on noise and its label: learnable in a few iterations."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(s // 4, s - s // 4) for s in shape)] = 1
    image[label > 0] += 3
    return image, label


def dataset(ws: Path, names=("a", "b"), unlabelled=("u",), shape=(12, 24, 24), ext=".nrrd", **geometry):
    for index, name in enumerate((*names, *unlabelled)):
        image, label = box_case(shape, index)
        write(ws / "images" / f"{name}{ext}", image, **geometry)
        if name in names:
            write(ws / "labels" / f"{name}{ext}", label, **geometry)
    return ws / "images", ws / "labels"


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- running ----------------------------------------------------------------------------------

def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli(ws: Path, *args, timeout=240):
    command = [sys.executable, "-m", "SSLSegmentLib", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env(), cwd=ws)
    return Result(args, result.returncode, result.stdout + result.stderr)


def start(ws: Path, *args):
    return subprocess.Popen([sys.executable, "-m", "SSLSegmentLib", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env(), cwd=ws, start_new_session=True)


def wait_for(condition, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(0.2)
    return False


def finish(process, args, timeout=120):
    output, _ = process.communicate(timeout=timeout)
    return Result(args, process.returncode, output)


class Result:
    def __init__(self, args, code, output):
        self.args, self.code, self.output = args, code, output
        self.wrong = self.lost = False
        self.status_ok = True
        self.note = ""

    def status(self, folder: Path):
        """Check ``folder/status.json`` against the exit code."""
        path = folder / "status.json"
        state = json.loads(path.read_text())["state"] if path.exists() else None
        if state not in EXIT_STATE.get(self.code, {"failed"}):
            self.status_ok = False
            self.note += f" status {state} for exit {self.code};"
        return self

    def check(self, ok: bool, what: str):
        """A result check: when it fails on exit 0, the run gave a wrong result."""
        if not ok:
            self.wrong = self.wrong or self.code == 0
            self.note += f" {what};"
        return self

    def status_unchanged(self, folder: Path, before: str | None):
        """A refusal that concerns another run must leave that run's status as it was."""
        path = folder / "status.json"
        state = json.loads(path.read_text())["state"] if path.exists() else None
        if state != before:
            self.status_ok = False
            self.note += f" status changed {before} -> {state};"
        return self

    def keep(self, before: dict, after: dict, what="user files"):
        if any(after.get(name) != value for name, value in before.items()):
            self.lost = True
            self.note += f" {what} changed;"
        return self


def train(ws, *extra, images=None, labels=None, out="run", own_status=True):
    args = ["train", "--images", images or ws / "images", "--out", ws / out, "--iterations", "2", *TINY, *extra]
    if labels is not False:
        args[3:3] = ["--labels", labels or ws / "labels"]
    result = cli(ws, *args)
    return result.status(ws / out) if own_status else result


_TEMPLATE = {"lock": threading.Lock(), "run": None}


def trained(ws):
    """A finished tiny run in ws/run (model for predict cases): trained once, then copied."""
    dataset(ws)
    with _TEMPLATE["lock"]:
        if _TEMPLATE["run"] is None:
            template = Path(tempfile.mkdtemp(prefix="bad-template-"))
            dataset(template)
            result = train(template)
            assert result.code == 0, result.output
            _TEMPLATE["run"] = template / "run"
    shutil.copytree(_TEMPLATE["run"], ws / "run")
    return ws / "run"


def geometry_of(path):
    image = sitk.ReadImage(str(path))
    return image.GetSize(), np.round(image.GetSpacing(), 4).tolist(), np.round(image.GetOrigin(), 4).tolist(), \
        np.round(image.GetDirection(), 4).tolist()


# --- training data ----------------------------------------------------------------------------

@case("work")
def names_with_spaces_unicode_dots(ws):
    for name in ("case one", "fall-ä.ß", "v1.2.3"):
        image, label = box_case(seed=len(name))
        write(ws / "images" / f"{name}.nrrd", image)
        write(ws / "labels" / f"{name}.nrrd", label)
    result = train(ws)
    cases = json.loads((ws / "run" / "cases.json").read_text(encoding="utf-8")) if result.code == 0 else {}
    names = {entry["name"] for entry in cases.get("labelled", [])}
    return result.check(names == {"case one", "fall-ä.ß", "v1.2.3"}, f"case names not all kept: {names}")


@case("either")
def one_slice_images(ws):
    dataset(ws, shape=(1, 24, 24))
    return train(ws, "--dim", "auto", "--patch-size", "16,16")


@case("either")
def dim3_on_one_slice_images(ws):
    dataset(ws, shape=(1, 24, 24))
    return train(ws, "--dim", "3")


@case("either")
def true_2d_images(ws):
    for index, name in enumerate(("a", "b")):
        image, label = box_case((24, 24), index)
        write(ws / "images" / f"{name}.nrrd", image, spacing=(1.0, 1.0))
        write(ws / "labels" / f"{name}.nrrd", label, spacing=(1.0, 1.0))
    return train(ws, "--patch-size", "16,16")


@case("refuse")
def rgb_vector_image(ws):
    dataset(ws)
    image = np.stack([box_case()[0]] * 3, axis=-1)
    write(ws / "images" / "a.nrrd", image, vector=True)
    result = train(ws)
    return result.check("a" in result.output, "message does not name the case")


@case("work")
def int64_float64_images(ws):
    dataset(ws)
    image, label = box_case()
    write(ws / "images" / "a.nrrd", (image * 100).astype(np.int64))
    write(ws / "images" / "b.nrrd", image.astype(np.float64))
    return train(ws)


@case("work")
def bool_like_uint8_image_int64_label(ws):
    dataset(ws)
    image, label = box_case()
    write(ws / "images" / "a.nrrd", label.astype(np.uint8))
    write(ws / "labels" / "b.nrrd", label.astype(np.int64))
    return train(ws)


@case("either")
def huge_spacing(ws):
    dataset(ws, spacing=(1000.0, 1000.0, 1000.0))
    return train(ws)


@case("refuse")
def zero_spacing_header(ws):
    dataset(ws)
    path = ws / "images" / "a.nrrd"
    text = path.read_bytes()
    head, sep, body = text.partition(b"\n\n")
    head = b"\n".join(b"space directions: (0,0,0) (0,1,0) (0,0,1.5)" if line.startswith(b"space directions")
                      else line for line in head.split(b"\n"))
    path.write_bytes(head + sep + body)
    result = train(ws)
    return result.check("a" in result.output, "message does not name the case")


@case("either")
def non_orthogonal_direction(ws):
    shear = (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    dataset(ws, direction=shear)
    return train(ws)


@case("refuse")
def label_with_fractional_values(ws):
    dataset(ws)
    _, label = box_case()
    write(ws / "labels" / "a.nrrd", label.astype(np.float32) * 0.5)
    result = train(ws)
    return result.check("a" in result.output, "message does not name the case")


@case("refuse")
def label_with_negative_values(ws):
    dataset(ws)
    _, label = box_case()
    write(ws / "labels" / "a.nrrd", label.astype(np.int16) * -1)
    result = train(ws)
    return result.check("a" in result.output, "message does not name the case")


@case("either")
def label_other_size(ws):
    dataset(ws)
    write(ws / "labels" / "a.nrrd", box_case((12, 24, 20))[1])
    return train(ws)  # a smaller label on the same grid is a cropped label: placed by its geometry


@case("either")
def label_other_origin(ws):
    dataset(ws)
    write(ws / "labels" / "a.nrrd", box_case()[1], origin=(5.0, 0.0, 0.0))
    result = train(ws)
    return result.check(result.code != 0 or "origin" in result.output.lower() or "resampl" in result.output.lower(),
                        "a shifted label was used silently")


@case("refuse")
def duplicate_case_names_two_extensions(ws):
    dataset(ws)
    image, _ = box_case(seed=7)
    write(ws / "images" / "a.nii.gz", image)
    result = train(ws)
    return result.check("a" in result.output, "message does not name the case")


@case("work")
def symlinked_images(ws):
    dataset(ws, names=("a", "b"), unlabelled=())
    (ws / "linked").mkdir()
    for path in (ws / "images").iterdir():
        (ws / "linked" / path.name).symlink_to(path)
    return train(ws, images=ws / "linked")


@case("refuse")
def dataset_json_missing_files(ws):
    dataset(ws)
    (ws / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "box": 1}, "training": [
        {"image": "images/a.nrrd", "label": "labels/a.nrrd"}, {"image": "images/zz.nrrd", "label": "labels/zz.nrrd"}]}))
    result = cli(ws, "train", "--dataset", ws / "dataset.json", "--out", ws / "run", "--iterations", "2", *TINY)
    result.status(ws / "run")
    return result.check("zz" in result.output, "message does not name the missing file")


@case("refuse")
def dataset_json_not_json(ws):
    dataset(ws)
    (ws / "dataset.json").write_text("{training: [")
    return cli(ws, "train", "--dataset", ws / "dataset.json", "--out", ws / "run", *TINY).status(ws / "run")


@case("either")
def out_equal_to_images(ws):
    images, _ = dataset(ws)
    before = digest(images)
    result = train(ws, out="images")
    return result.keep(before, digest(images), "images")


@case("either")
def out_inside_labels(ws):
    _, labels = dataset(ws)
    before = digest(labels)
    result = train(ws, out="labels/run")
    result.keep(before, digest(labels), "labels")
    return result


@case("refuse")
def iterations_zero(ws):
    dataset(ws)
    return train(ws, "--iterations", "0")


@case("work")
def iterations_one(ws):
    dataset(ws)
    return train(ws, "--iterations", "1")


@case("either")
def seed_minus_one(ws):
    dataset(ws)
    return train(ws, "--seed", "-1")


@case("refuse")
def device_cuda_without_gpu(ws):
    import torch
    dataset(ws)
    if torch.cuda.is_available():
        return Result((), 2, "skipped: a GPU is present")
    args = [a if a != "cpu" else "cuda" for a in TINY]
    return cli(ws, "train", "--images", ws / "images", "--labels", ws / "labels", "--out", ws / "run",
               "--iterations", "2", *args).status(ws / "run")


@case("refuse")
def network_unknown(ws):
    dataset(ws)
    result = train(ws, "--network", "resnet9000")
    return result.check("unet" in result.output.lower(), "message does not list the networks")


@case("refuse")
def preset_unknown(ws):
    dataset(ws)
    return train(ws, "--preset", "turbo")


@case("refuse")
def patch_size_words(ws):
    dataset(ws)
    return train(ws, "--patch-size", "big")


@case("refuse")
def val_cases_more_than_labelled(ws):
    dataset(ws)
    return train(ws, "--val-cases", "5")


@case("refuse")
def threads_zero(ws):
    dataset(ws)
    return train(ws, "--threads", "0")


@case("refuse")
def lr_infinite(ws):
    dataset(ws)
    return train(ws, "--lr", "inf")


@case("refuse")
def num_workers_negative(ws):
    dataset(ws)
    return train(ws, "--num-workers", "-1")


@case("refuse")
def val_interval_zero(ws):
    dataset(ws)
    return train(ws, "--val-cases", "1", "--val-interval", "0")


@case("refuse")
def checkpoint_interval_zero(ws):
    dataset(ws)
    return train(ws, "--checkpoint-interval", "0")


@case("refuse")
def labels_folder_is_images_folder(ws):
    dataset(ws)
    return train(ws, labels=ws / "images")


@case("refuse")
def init_model_is_not_a_model(ws):
    dataset(ws)
    (ws / "junk.pt").write_bytes(b"not a model")
    return train(ws, "--init-model", ws / "junk.pt")


# --- runs: resume, overwrite, cancel ----------------------------------------------------------

@case("either")
def resume_finished_run(ws):
    run = trained(ws)
    before = digest(run)
    result = cli(ws, "train", "--resume", run).status_unchanged(run, "done")
    return result.keep({k: v for k, v in before.items() if k.endswith(".pt")}, digest(run), "model")


def killed_run(ws):
    """A run SIGKILLed after its first resumable checkpoint."""
    dataset(ws)
    process = start(ws, "train", "--images", ws / "images", "--labels", ws / "labels", "--out", ws / "run",
                    "--iterations", "60", "--checkpoint-interval", "1", *TINY)
    wait_for(lambda: any((ws / "run").glob("checkpoint*")) if (ws / "run").is_dir() else False)
    process.kill()
    process.communicate()
    return ws / "run"


@case("either")
def resume_with_changed_settings(ws):
    run = killed_run(ws)
    before = (run / "config.json").read_text()
    result = cli(ws, "train", "--resume", run, "--iterations", "3", "--lr", "0.5", *TINY)
    # refused: the killed run's file stays as it was (readers show it as interrupted)
    result.status(run) if result.code != 2 else result.status_unchanged(run, "running")
    if result.code == 0:  # accepted: it must say that the given settings were not used
        result.check(before == (run / "config.json").read_text() and "--lr" in result.output,
                     "changed settings were taken silently or ignored silently")
    return result


@case("work")
def sigkill_then_status_then_resume(ws):
    run = killed_run(ws)
    sys.path.insert(0, str(ROOT))
    from SSLSegmentLib.run_protocol import read_run_status  # noqa: PLC0415
    state = (read_run_status(run) or {}).get("state")
    result = cli(ws, "train", "--resume", run).status(run)
    return result.check(state == "interrupted", f"a killed run reads as {state}")


@case("refuse")
def resume_folder_without_run(ws):
    (ws / "empty").mkdir()
    return cli(ws, "train", "--resume", ws / "empty")


@case("refuse")
def overwrite_on_a_running_folder(ws):
    dataset(ws)
    first = start(ws, "train", "--images", ws / "images", "--labels", ws / "labels", "--out", ws / "run",
                  "--iterations", "100000", *TINY)
    try:
        wait_for(lambda: (ws / "run" / "progress.jsonl").exists() and (ws / "run" / "progress.jsonl").stat().st_size)
        result = train(ws, "--overwrite", own_status=False).status_unchanged(ws / "run", "running")
        alive = first.poll() is None
        result.check(alive, "the first run died")
    finally:
        first.send_signal(signal.SIGTERM)
        first_result = finish(first, ())
    result.check(first_result.code == 3, f"first run ended {first_result.code}")
    return result


@case("cancel")
def cancel_file_during_data_loading(ws):
    dataset(ws, names=("a", "b", "c", "d"), unlabelled=("u1", "u2", "u3"), shape=(24, 48, 48))
    process = start(ws, "train", "--images", ws / "images", "--labels", ws / "labels", "--out", ws / "run",
                    "--iterations", "100000", *TINY)
    wait_for(lambda: (ws / "run").is_dir(), 60)
    (ws / "run" / "cancel").write_text("cancel")
    result = finish(process, ("train", "... then cancel file at once"))
    result.check(result.code == 3, "not reported as cancelled")
    return result.status(ws / "run")


# --- predict ----------------------------------------------------------------------------------

@case("either")
def predict_images_is_a_single_file(ws):
    run = trained(ws)
    result = cli(ws, "predict", "--model", run, "--images", ws / "images" / "u.nrrd", "--out", ws / "pred",
                 "--device", "cpu", "--threads", "1").status(ws / "pred")
    if result.code == 0:
        result.check(any((ws / "pred").glob("u*")), "no prediction for the file")
    return result


@case("refuse")
def predict_model_missing(ws):
    dataset(ws)
    return cli(ws, "predict", "--model", ws / "nope", "--images", ws / "images", "--out", ws / "pred").status(ws / "pred")


@case("refuse")
def predict_model_is_json(ws):
    run = trained(ws)
    return cli(ws, "predict", "--model", run / "config.json", "--images", ws / "images", "--out", ws / "pred",
               "--device", "cpu").status(ws / "pred")


@case("either")
def predict_out_equal_to_images(ws):
    run = trained(ws)
    before = digest(ws / "images")
    result = cli(ws, "predict", "--model", run, "--images", ws / "images", "--out", ws / "images",
                 "--device", "cpu", "--threads", "1").status(ws / "images")
    return result.keep(before, digest(ws / "images"), "images")


@case("either")
def predict_one_slice_image_with_3d_model(ws):
    run = trained(ws)
    write(ws / "flat" / "f.nrrd", box_case((1, 24, 24))[0])
    return cli(ws, "predict", "--model", run, "--images", ws / "flat", "--out", ws / "pred",
               "--device", "cpu", "--threads", "1").status(ws / "pred")


@case("work")
def predict_keeps_odd_geometry(ws):
    run = trained(ws)
    shear = (1.0, 0.2, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    write(ws / "odd" / "o.nrrd", box_case((10, 20, 28))[0], spacing=(0.7, 1.3, 2.0), origin=(5, -3, 8),
          direction=shear)
    result = cli(ws, "predict", "--model", run, "--images", ws / "odd", "--out", ws / "pred",
                 "--device", "cpu", "--threads", "1").status(ws / "pred")
    outputs = [p for p in (ws / "pred").glob("o*.nrrd")]
    return result.check(len(outputs) == 1 and geometry_of(outputs[0]) == geometry_of(ws / "odd" / "o.nrrd"),
                        "prediction geometry differs from the image")


@case("cancel")
def predict_sigterm(ws):
    run = trained(ws)
    for index in range(12):
        write(ws / "many" / f"m{index}.nrrd", box_case((24, 64, 64), index)[0])
    process = start(ws, "predict", "--model", run, "--images", ws / "many", "--out", ws / "pred", "--device", "cpu",
                    "--threads", "1")
    wait_for(lambda: (ws / "pred" / "status.json").exists(), 60)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    result = finish(process, ("predict", "... SIGTERM"))
    return result.status(ws / "pred")


@case("work")
def predict_sigkill_then_rerun(ws):
    run = trained(ws)
    for index in range(12):
        write(ws / "many" / f"m{index}.nrrd", box_case((24, 64, 64), index)[0])
    process = start(ws, "predict", "--model", run, "--images", ws / "many", "--out", ws / "pred", "--device", "cpu",
                    "--threads", "1")
    wait_for(lambda: any((ws / "pred").glob("m*.nrrd")) if (ws / "pred").is_dir() else False, 90)
    process.kill()
    process.communicate()
    result = cli(ws, "predict", "--model", run, "--images", ws / "many", "--out", ws / "pred", "--device", "cpu",
                 "--threads", "1").status(ws / "pred")
    leftovers = [p.name for p in (ws / "pred").iterdir() if "tmp" in p.name or p.name.startswith(".tmp")]
    return result.check(not leftovers and len(list((ws / "pred").glob("m*.nrrd"))) == 12,
                        f"after rerun: leftovers {leftovers}")


# --- evaluate ---------------------------------------------------------------------------------

@case("refuse")
def evaluate_size_mismatch(ws):
    _, labels = dataset(ws, unlabelled=())
    write(ws / "pred" / "a.nrrd", box_case((12, 24, 20))[1])
    write(ws / "pred" / "b.nrrd", box_case()[1])
    result = cli(ws, "evaluate", "--pred", ws / "pred", "--labels", labels)
    return result.check("a" in result.output, "message does not name the case")


@case("refuse")
def evaluate_origin_mismatch(ws):
    _, labels = dataset(ws, unlabelled=())
    write(ws / "pred" / "a.nrrd", box_case()[1], origin=(30.0, 0.0, 0.0))
    write(ws / "pred" / "b.nrrd", box_case()[1])
    return cli(ws, "evaluate", "--pred", ws / "pred", "--labels", labels)


@case("either")
def evaluate_different_class_names(ws):
    from SSLSegmentLib.data.labels import ClassInfo, write_segmentation  # noqa: PLC0415
    from SSLSegmentLib.data.geometry import Geometry  # noqa: PLC0415
    geometry = Geometry.from_array_shape((12, 24, 24), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0))
    label = box_case()[1]
    write_segmentation(ws / "labels" / "a.seg.nrrd", label, geometry, [ClassInfo("liver")])
    write_segmentation(ws / "pred" / "a.seg.nrrd", label, geometry, [ClassInfo("spleen")])
    result = cli(ws, "evaluate", "--pred", ws / "pred", "--labels", ws / "labels")
    return result.check("liver" in result.output and "spleen" in result.output,
                        "a Dice across different class names without saying so")


@case("refuse")
def evaluate_empty_pred_folder(ws):
    _, labels = dataset(ws, unlabelled=())
    (ws / "pred").mkdir()
    return cli(ws, "evaluate", "--pred", ws / "pred", "--labels", labels)


@case("refuse")
def evaluate_json_is_a_folder(ws):
    _, labels = dataset(ws, unlabelled=())
    shutil.copytree(labels, ws / "pred")
    (ws / "out.json").mkdir()
    return cli(ws, "evaluate", "--pred", ws / "pred", "--labels", labels, "--json", ws / "out.json")


@case("refuse")
def method_option_without_equals(ws):
    dataset(ws)
    return train(ws, "--method-option", "ema_decay")


@case("refuse")
def images_folder_of_junk_files(ws):
    (ws / "images").mkdir()
    (ws / "images" / "notes.txt").write_text("hello")
    (ws / "images" / "scan.nrrd").write_bytes(b"")
    dataset(ws, names=("a",), unlabelled=())
    shutil.rmtree(ws / "images")
    (ws / "images").mkdir()
    (ws / "images" / "a.nrrd").write_bytes(b"NRRD0004\njunk")
    result = train(ws)
    return result.check("a.nrrd" in result.output, "message does not name the file")


@case("refuse")
def predict_model_truncated(ws):
    run = trained(ws)
    model = run / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return cli(ws, "predict", "--model", run, "--images", ws / "images", "--out", ws / "pred",
               "--device", "cpu").status(ws / "pred")


@case("refuse")
def predict_out_is_a_file(ws):
    run = trained(ws)
    (ws / "pred").write_text("a person's notes")
    result = cli(ws, "predict", "--model", run, "--images", ws / "images", "--out", ws / "pred", "--device", "cpu")
    return result.check((ws / "pred").read_text() == "a person's notes", "the file was replaced")


@case("refuse")
def evaluate_labels_are_float_images(ws):
    images, labels = dataset(ws, unlabelled=())
    return cli(ws, "evaluate", "--pred", labels, "--labels", images)


# --- headless Slicer logic (slicer-core), each in its own child process ------------------------

SLICER_PRELUDE = """
import sys, time, traceback
sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + '/Testing')
import numpy as np
from pathlib import Path
from test_logic import add_volume, add_segmentation, phantom_case, make_logic, SHAPE, TINY
from SSLSegmentLib.errors import InputError
from SSLSegmentLib.headless import slicer_scene
from SSLSegmentLib.phantoms import make_phantom
import slicer
scene = slicer_scene()
logic = make_logic(scene, Path({ws!r}))
settings = dict(TINY, iterations=3)
try:
{body}
except InputError as error:
    print('refused:', error); sys.exit(2)
"""


def slicer_script(ws, body: str, timeout=240):
    code = SLICER_PRELUDE.format(root=str(ROOT), ws=str(ws), body="\n".join("    " + line for line in body.splitlines()))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env(),
                            cwd=ws)
    return Result(("slicer logic:", body.splitlines()[-1][:80]), result.returncode, result.stdout + result.stderr)


@case("refuse")
def slicer_segmentation_without_segments(ws):
    return slicer_script(ws, """a, sa = phantom_case(scene, 'a', 0)
b = phantom_case(scene, 'b', 1, labelled=False)
empty = scene.AddNewNodeByClass('vtkMRMLSegmentationNode', 'nothing drawn')
empty.SetReferenceImageGeometryParameterFromVolumeNode(b)
logic.startTraining([(a, sa), (b, empty)], **settings)""")


@case("either")
def slicer_labelmap_node_as_segmentation(ws):
    return slicer_script(ws, """a, sa = phantom_case(scene, 'a', 0)
image, label = make_phantom(SHAPE, (1.0, 1.0, 1.5), seed=1)
b = add_volume(scene, 'b', image)
labelmap = scene.AddNewNodeByClass('vtkMRMLLabelMapVolumeNode', 'b-label')
slicer.util.updateVolumeFromArray(labelmap, label.astype(np.uint8)); labelmap.CopyOrientation(b)
job = logic.startTraining([(a, sa), (b, labelmap)], **settings)
print('state', job.wait(200))""")


@case("work")
def slicer_two_volumes_same_name(ws):
    result = slicer_script(ws, """a, sa = phantom_case(scene, 'heart', 0)
b, sb = phantom_case(scene, 'heart', 1)
job = logic.startTraining([(a, sa), (b, sb)], **settings)
print('state', job.wait(200), job.error)
print('cases', sorted(logic.loadPredictions(job)) if hasattr(logic, 'loadPredictions') else '')""")
    return result.check("state done" in result.output, "two volumes of one name did not train")


@case("either")
def slicer_volume_removed_while_training(ws):
    result = slicer_script(ws, """a, sa = phantom_case(scene, 'a', 0)
b, sb = phantom_case(scene, 'b', 1)
u = phantom_case(scene, 'u', 2, labelled=False)
job = logic.startTraining([(a, sa), (b, sb)], [u], **dict(settings, extraArgs=TINY['extraArgs'] + ['--predict-unlabelled']))
scene.RemoveNode(u); scene.RemoveNode(a)
print('state', job.wait(200), job.error)
print('loaded', logic.loadPredictions(job))""")
    return result.check("state done" in result.output or result.code == 2, "the job did not finish")


@case("refuse")
def slicer_segmentation_of_another_volume_size(ws):
    return slicer_script(ws, """a, sa = phantom_case(scene, 'a', 0)
image, label = make_phantom((8, 16, 16), (1.0, 1.0, 1.5), seed=1)
small = add_volume(scene, 'small', image)
b = phantom_case(scene, 'b', 2, labelled=False)
sb = add_segmentation(scene, small, label)
logic.startTraining([(a, sa), (b, sb)], **settings)""")


# --- table ------------------------------------------------------------------------------------

def judge(name, expect, function):
    with tempfile.TemporaryDirectory(prefix=f"bad-{name}-") as folder:
        started = time.time()
        try:
            result = function(Path(folder))
        except Exception as error:  # the harness itself failed: count it, never hide it
            result = Result((), -1, f"harness: {error.__class__.__name__}: {error}")
            result.note = "harness error"
        result.seconds = time.time() - started
    result.traceback = "Traceback (most recent call last)" in result.output
    if expect == "refuse" and result.code == 0:
        result.wrong = True
        result.note += " accepted (a refusal was due);"
    if expect == "work" and result.code != 0:
        result.note += " refused (it should work);"
    result.expected_code = result.code == {"refuse": 2, "work": 0, "cancel": 3}.get(
        expect, result.code if result.code in (0, 2) else 0)
    return name, expect, result


def message(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip() and "WARN|" not in line]
    text = next((line for line in reversed(lines) if "rror" in line or "refus" in line.lower()), lines[-1] if lines else "")
    return text.replace("|", "\\|")[:160]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--show", action="store_true", help="print each case's full output")
    args = parser.parse_args()
    chosen = [c for c in CASES if not args.only or c[0] in args.only]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: judge(*c), chosen))
    if _TEMPLATE["run"] is not None:
        shutil.rmtree(_TEMPLATE["run"].parent, ignore_errors=True)
    print("| # | case | expected | exit | traceback | status true | wrong, exit 0 | lost | message / note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for index, (name, expect, r) in enumerate(results, 1):
        flag = "" if r.expected_code else " (!)"
        print(f"| {index} | {name} | {expect} | {r.code}{flag} | {'YES' if r.traceback else 'no'} | "
              f"{'yes' if r.status_ok else 'NO'} | {'YES' if r.wrong else 'no'} | {'YES' if r.lost else 'no'} | "
              f"{message(r.output)}{' —' + r.note if r.note else ''} |")
    for name, _, r in results if args.show else ():
        print(f"\n### {name}\n```\n{' '.join(map(str, r.args))}\n{r.output}\n```")
    counts = {"tried": len(results), "wrong_exit_0": sum(r.wrong for *_, r in results),
              "traceback": sum(r.traceback for *_, r in results), "lying_status": sum(not r.status_ok for *_, r in results),
              "lost": sum(r.lost for *_, r in results), "unexpected_exit": sum(not r.expected_code for *_, r in results)}
    print("\n" + json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
