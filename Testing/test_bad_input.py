"""Each kind of bad input gets a clear error naming the case, exit code 2, and no output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from SSLSegmentLib.cli import main
from SSLSegmentLib.training.run_folder import RunFolder

from helpers import train_in_process, write_two_labelled_cases, write_volume


@pytest.fixture
def good(tmp_path):
    """Two labelled cases of plain labelmaps; tests spoil one thing each."""
    return write_two_labelled_cases(tmp_path)


_train = train_in_process  # (exit code, stderr, run folder)


def _assert_rejected(code, err, out, *words):
    assert code == 2, err
    for word in words:
        assert word in err, (word, err)
    status = RunFolder(out).read_status()
    assert status is None or status["state"] == "failed"
    assert not (out / "model.pt").exists() and not (out / "checkpoint_last.pt").exists()


def test_missing_folder(good, capsys):
    shutil.rmtree(good / "images")
    code, err, out = _train(good, capsys)
    _assert_rejected(code, err, out, "images")


def test_no_labelled_case(good, capsys):
    for f in (good / "labels").iterdir():
        f.unlink()
    code, err, out = _train(good, capsys)
    _assert_rejected(code, err, out, "labelled")


def test_geometry_disagrees(good, capsys):
    label = np.zeros((8, 16, 16), np.uint8)
    label[1, 1, 1] = 1
    write_volume(good / "labels" / "beta.nrrd", label, spacing=(2.0, 1.0, 1.5))
    code, err, out = _train(good, capsys)
    _assert_rejected(code, err, out, "beta", "geometry")


def test_unknown_label_value(good, capsys):
    label = np.zeros((8, 16, 16), np.uint8)
    label[2:4, 2:4, 2:4] = 7
    write_volume(good / "labels" / "beta.nrrd", label)
    dataset = {"labels": {"background": 0, "organ": 1},
               "training": [{"image": f"images/{n}.nrrd", "label": f"labels/{n}.nrrd"} for n in ("alpha", "beta")]}
    (good / "dataset.json").write_text(json.dumps(dataset))
    out = good / "run"
    code = main(["train", "--dataset", str(good / "dataset.json"), "--out", str(out), "--iterations", "1",
                 "--size", "tiny", "--device", "cpu"])
    _assert_rejected(code, capsys.readouterr().err, out, "beta", "7")


def test_4d_image(good, capsys):
    vector = sitk.GetImageFromArray(np.zeros((8, 16, 16, 2), np.float32), isVector=True)
    sitk.WriteImage(vector, str(good / "images" / "alpha.nrrd"))
    code, err, out = _train(good, capsys)
    _assert_rejected(code, err, out, "alpha")


def test_unreadable_file(good, capsys):
    (good / "images" / "alpha.nrrd").write_bytes(b"this is not an image")
    code, err, out = _train(good, capsys)
    _assert_rejected(code, err, out, "alpha")


def test_nan_voxels(good, capsys):
    image = np.zeros((8, 16, 16), np.float32)
    image[3, 3, 3] = np.nan
    write_volume(good / "images" / "beta.nrrd", image)
    code, err, out = _train(good, capsys)
    _assert_rejected(code, err, out, "beta", "NaN")


def test_predict_rejects_a_file_that_is_not_a_model(tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a model")
    (tmp_path / "images").mkdir()
    code = main(["predict", "--model", str(bogus), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "o")])
    assert code == 2 and "model" in capsys.readouterr().err
