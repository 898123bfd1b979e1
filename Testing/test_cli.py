"""The command line end to end, in real child processes, on tiny phantoms."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, run_cli

from SSLSegmentLib.data.io import read_image
from SSLSegmentLib.data.labels import read_label
from SSLSegmentLib.training.run_folder import RunFolder


@pytest.fixture(scope="module")
def trained_run(phantom_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mt"
    run_cli("train", "--images", phantom_data["images"], "--labels", phantom_data["labels"], "--method",
            "mean_teacher", "--iterations", 6, "--val-cases", 1, "--val-interval", 3, "--out", out,
            "--seed", 3, "--predict-unlabelled", *TINY_TRAIN, check=True)
    return out


def test_train_writes_the_run_folder(trained_run):
    run = RunFolder(trained_run)
    status = run.read_status()
    assert status["state"] == "done" and status["error"] is None
    records = [r for r in run.read_progress() if "iteration" in r]
    assert records[-1]["iteration"] == 6 and records[-1]["total"] == 6
    assert {"losses", "lr", "eta_s", "elapsed_s"} <= set(records[-1])
    assert any("val_dice" in r for r in records)
    assert np.isfinite(records[-1]["losses"]["main"])
    for name in ("config.json", "cases.json", "log.txt", "checkpoint_best.pt", "checkpoint_last.pt", "model.pt"):
        assert (trained_run / name).is_file(), name
    cases = json.loads((trained_run / "cases.json").read_text())
    assert len(cases["labelled"]) == 3 and len(cases["unlabelled"]) == 2
    assert all(len(c["label_sha256"]) == 64 for c in cases["labelled"])
    assert json.loads((trained_run / "config.json").read_text())["batch_streams"] == "paired"  # see sampling


def test_model_file_loads_without_running_code(trained_run):
    payload = torch.load(trained_run / "model.pt", weights_only=True)
    assert payload["network"]["name"] == "unet" and payload["plan"]["dim"] == 3
    assert [c["name"] for c in payload["classes"]] == ["organ", "lesion"]


def test_unlabelled_predictions_keep_each_image_geometry(trained_run, phantom_data):
    confidence = json.loads((trained_run / "predictions" / "confidence.json").read_text())
    assert len(confidence) == 2 and all(0 <= v <= 1 for v in confidence.values())
    for name in confidence:
        _, image_geometry = read_image(phantom_data["images"] / f"{name}.nrrd")
        prediction = read_label(trained_run / "predictions" / f"{name}.seg.nrrd")
        assert prediction.geometry.matches(image_geometry)
        assert [s.name for s in prediction.segments.values()] == ["organ", "lesion"]
        labelmap = read_label(trained_run / "predictions" / "labelmaps" / f"{name}.nrrd")
        assert np.array_equal(labelmap.array, prediction.array)


def test_predict_then_evaluate(trained_run, phantom_data, tmp_path):
    out = tmp_path / "pred"
    run_cli("predict", "--model", trained_run, "--images", phantom_data["test_images"], "--out", out,
            "--device", "cpu", check=True)
    report = tmp_path / "metrics.json"
    result = run_cli("evaluate", "--pred", out, "--labels", phantom_data["test_labels"], "--json", report, check=True)
    assert "HD95" in result.stdout
    metrics = json.loads(report.read_text())
    assert len(metrics["cases"]) == 2
    assert set(metrics["mean"]) == {"organ", "lesion", "all"}
    assert all(0.0 <= v["dice"] <= 1.0 and np.isfinite(v["hd95"]) for v in metrics["mean"].values())


def test_predict_can_keep_the_largest_component(trained_run, phantom_data, tmp_path):
    from scipy import ndimage

    out = tmp_path / "pred"
    run_cli("predict", "--model", trained_run, "--images", phantom_data["test_images"], "--out", out,
            "--device", "cpu", "--largest-component", check=True)
    for path in out.glob("*.seg.nrrd"):
        label = read_label(path).array
        for value in np.unique(label)[1:]:
            assert ndimage.label(label == value, structure=np.ones((3, 3, 3)))[1] == 1


def test_retrain_starts_from_the_previous_model(trained_run, phantom_data, tmp_path):
    out = tmp_path / "round2"
    run_cli("train", "--images", phantom_data["images"], "--labels", phantom_data["labels"], "--method", "supervised",
            "--iterations", 1, "--val-cases", 0, "--out", out, "--init-model", trained_run / "model.pt",
            "--optimiser", "sgd", "--lr", "1e-9", *TINY_TRAIN, check=True)
    before = torch.load(trained_run / "model.pt", weights_only=True)["state_dict"]
    after = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    # one step at a negligible learning rate: the weights are the previous model's
    weights = [k for k, v in before.items() if v.is_floating_point() and "running" not in k]
    assert all(torch.allclose(before[k], after[k], atol=1e-5) for k in weights)
    assert "initialised from" in (out / "log.txt").read_text()


def test_cancel_stops_the_run_cleanly(phantom_data, tmp_path):
    import subprocess
    import sys

    from helpers import ROOT

    out = tmp_path / "cancelled"
    process = subprocess.Popen([sys.executable, "-m", "SSLSegmentLib", "train", "--images", str(phantom_data["images"]),
                                "--labels", str(phantom_data["labels"]), "--iterations", "100000", "--out", str(out),
                                *TINY_TRAIN], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = RunFolder(out)
    deadline = time.monotonic() + 120
    while not run.read_progress() and time.monotonic() < deadline:
        time.sleep(0.2)
    run.request_cancel()
    assert process.wait(timeout=60) == 3
    assert run.read_status()["state"] == "cancelled"
    assert not (out / "model.pt").exists()
