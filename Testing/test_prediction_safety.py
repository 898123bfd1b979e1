"""Issue 13, predict / evaluate side: never a silent wrong result, never a lost file.

A tiny model is trained once (in-process, 2 iterations); each test then spoils one thing:
a person's file in --out, a bad case among good ones, an image in metres, a missing
prediction, an unwritable --out or --json, a tampered or foreign model file.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SSLSegmentLib.cli import main
from SSLSegmentLib.data.labels import read_label


@pytest.fixture(scope="module")
def model_run(phantom_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    code = main(["train", "--images", str(phantom_data["images"]), "--labels", str(phantom_data["labels"]),
                 "--out", str(out), "--iterations", "2", "--method", "supervised", "--val-cases", "0",
                 "--size", "tiny", "--device", "cpu", "--patch-size", "16,32,32", "--dim", "3"])
    assert code == 0
    return out


@pytest.fixture
def test_images(phantom_data, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(phantom_data["test_images"], folder)
    return folder


def _predict(model, images, out, capsys, *extra):
    code = main(["predict", "--model", str(model), "--images", str(images), "--out", str(out), "--device", "cpu",
                 *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --- 6: never overwrite a file this tool did not write for the same model ----------------------

def test_predict_refuses_to_replace_a_persons_segmentation(model_run, test_images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    person = out / "test_000.seg.nrrd"
    person.write_bytes(b"a person's own segmentation")
    code, text = _predict(model_run, test_images, out, capsys)
    assert code == 2 and "test_000.seg.nrrd" in text and "--overwrite" in text
    assert person.read_bytes() == b"a person's own segmentation"
    assert not (out / "test_001.seg.nrrd").exists() and not (out / "confidence.json").exists()
    code, _ = _predict(model_run, test_images, out, capsys, "--overwrite")
    assert code == 0 and read_label(person).segments


def test_predict_replaces_its_own_outputs_of_the_same_model_only(model_run, test_images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(model_run, test_images, out, capsys)[0] == 0
    assert _predict(model_run, test_images, out, capsys)[0] == 0  # same model: its own files
    edited = out / "labelmaps" / "test_001.nrrd"
    edited.write_bytes(edited.read_bytes() + b" ")  # a person changed it since
    code, text = _predict(model_run, test_images, out, capsys)
    assert code == 2 and "test_001.nrrd" in text and "test_000" not in text.split("were not written")[-1]
    other = tmp_path / "other.pt"
    payload = torch.load(model_run / "model.pt", weights_only=True)
    first = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][first] = payload["state_dict"][first] + 0.01
    torch.save(payload, other)
    code, text = _predict(other, test_images, out, capsys, )
    assert code == 2 and "test_000.seg.nrrd" in text  # another model's outputs are not replaced silently


# --- 8: every case is tried, every failure is reported ---------------------------------------

def test_predict_goes_on_past_bad_cases_and_names_each(model_run, test_images, tmp_path, capsys):
    (test_images / "empty.nrrd").write_bytes(b"")
    (test_images / "junk.nrrd").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    code, text = _predict(model_run, test_images, out, capsys)
    assert code == 2
    assert "empty: " in text and "0 bytes" in text and "junk: " in text and "2 of 4" in text
    assert "ImageIO" not in text and "unreadable image: its content is not" in text
    assert sorted(json.loads((out / "confidence.json").read_text())) == ["test_000", "test_001"]
    assert (out / "test_000.seg.nrrd").is_file() and not (out / "junk.seg.nrrd").exists()
    status = json.loads((out / "status.json").read_text())  # what the Slicer panel reads
    assert status["state"] == "failed" and "empty: " in status["error"] and "junk: " in status["error"]


def test_evaluate_names_missing_predictions_and_fails_unless_allowed(model_run, test_images, phantom_data,
                                                                      tmp_path, capsys):
    (test_images / "test_001.nrrd").unlink()
    out = tmp_path / "out"
    assert _predict(model_run, test_images, out, capsys)[0] == 0
    report = tmp_path / "metrics.json"
    code = main(["evaluate", "--pred", str(out), "--labels", str(phantom_data["test_labels"]), "--json", str(report)])
    err = capsys.readouterr().err
    assert code == 2 and "test_001" in err and "--allow-missing" in err
    assert json.loads(report.read_text())["missing_predictions"] == ["test_001"]
    code = main(["evaluate", "--pred", str(out), "--labels", str(phantom_data["test_labels"]), "--allow-missing"])
    assert code == 0 and "test_001" in capsys.readouterr().err


# --- 7: a foreign domain is reported and ranked least confident -------------------------------

def test_metres_spacing_is_reported_and_not_confident(model_run, test_images, tmp_path, capsys):
    image = sitk.ReadImage(str(test_images / "test_001.nrrd"))
    image.SetSpacing([s / 1000 for s in image.GetSpacing()])  # the same image, spacing in metres
    sitk.WriteImage(image, str(test_images / "test_001.nrrd"))
    out = tmp_path / "out"
    code, text = _predict(model_run, test_images, out, capsys)
    assert code == 0
    assert "test_001" in text and "outside the training domain" in text and "spacing" in text
    confidence = json.loads((out / "confidence.json").read_text())
    assert confidence["test_001"] == 0.0 < confidence["test_000"]
    report = json.loads((out / "out_of_domain.json").read_text())
    assert list(report) == ["test_001"] and any("wrong units" in p for p in report["test_001"]["problems"])


def test_model_records_the_training_domain(model_run, phantom_data):
    domain = torch.load(model_run / "model.pt", weights_only=True)["domain"]
    assert domain["cases"] == 5 and domain["spacing_min"] == pytest.approx([1.0, 1.0, 1.5])
    assert domain["spread_min"] > 0 and domain["p50_min"] <= domain["p50_max"]


def test_intensity_of_another_modality_is_reported():
    from SSLSegmentLib.domain import domain_problems

    domain = {"spacing_min": [1, 1, 1], "spacing_max": [1, 1, 2], "p50_min": 100.0, "p50_max": 120.0,
              "spread_min": 500.0, "spread_max": 700.0}
    same = {"spacing": [1, 1, 1.5], "p01": 0.0, "p50": 110.0, "p99": 600.0}
    assert domain_problems(same, domain) == []
    assert domain_problems(same, None) == []  # a model file from before domains were recorded
    ct = {"spacing": [1, 1, 1.5], "p01": -1000.0, "p50": -700.0, "p99": 2000.0}
    problems = domain_problems(ct, domain)
    assert any("spread" in p for p in problems) and any("median" in p for p in problems)


# --- 15, 17: unwritable outputs and damaged model files: exit 2 and a message -----------------

def test_predict_out_that_is_a_file_or_under_one(model_run, test_images, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        code, text = _predict(model_run, test_images, out, capsys)
        assert code == 2 and str(blocker) in text and "--out" in text and "Traceback" not in text


def test_evaluate_json_that_cannot_be_written(model_run, test_images, phantom_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(model_run, test_images, out, capsys)[0] == 0
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for target in (blocker / "metrics.json", tmp_path):
        code = main(["evaluate", "--pred", str(out), "--labels", str(phantom_data["test_labels"]),
                     "--json", str(target)])
        err = capsys.readouterr().err
        assert code == 2 and "--json" in err, err


@pytest.mark.parametrize("damage", ["no classes", "class count", "network name", "weights", "patch", "plan"])
def test_tampered_model_metadata_is_refused(model_run, test_images, tmp_path, capsys, damage):
    payload = torch.load(model_run / "model.pt", weights_only=True)
    if damage == "no classes":
        del payload["classes"]
    elif damage == "class count":
        payload["classes"].append({"name": "extra", "color": [1.0, 0.0, 0.0]})
    elif damage == "network name":
        payload["network"]["name"] = "no_such_network"
    elif damage == "weights":
        payload["state_dict"].pop(next(iter(payload["state_dict"])))
    elif damage == "patch":
        payload["patch_size"] = [16, 32]
    else:
        payload["plan"]["target_spacing"] = [0, 1, 1]
    tampered = tmp_path / "model.pt"
    torch.save(payload, tampered)
    code, text = _predict(tampered, test_images, tmp_path / "out", capsys)
    assert code == 2 and str(tampered) in text and "Traceback" not in text, text
    # Only the status that tells the panel why (predict_status), no prediction.
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["status.json"]
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


class _Payload:  # anything that is not plain data: torch.load(weights_only=True) refuses it
    pass


@pytest.mark.parametrize("content", ["pickle", "garbage", "truncated", "empty"])
def test_unloadable_model_says_what_the_file_is_not(model_run, test_images, tmp_path, capsys, content):
    bad = tmp_path / "model.pt"
    if content == "pickle":
        torch.save({"format": "sslsegment-model", "object": _Payload()}, bad)
    elif content == "garbage":
        bad.write_bytes(b"\x00not a model" * 10)
    elif content == "truncated":
        data = (model_run / "model.pt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(b"")
    code, text = _predict(bad, test_images, tmp_path / "out", capsys)
    assert code == 2 and str(bad) in text and "weights_only" not in text, text
    assert "SSLSegment model file" in text or "truncated" in text


# --- 18: messages --------------------------------------------------------------------------

def test_empty_or_junk_images_folder_is_named_as_such(phantom_data, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for contents, expected in (([], "the folder is empty"), (["notes.txt", "scan.jpg"], "notes.txt")):
        for name in contents:
            (images / name).write_text("x")
        code = main(["train", "--images", str(images), "--labels", str(phantom_data["labels"]),
                     "--out", str(tmp_path / f"run{len(contents)}"), "--iterations", "1", "--size", "tiny",
                     "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and "without an image" not in err and "no image" in err and expected in err, err


def test_an_error_is_printed_once(tmp_path):
    from helpers import run_cli

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.nrrd").write_bytes(b"")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 8, 8), np.uint8)), str(tmp_path / "labels" / "a.nrrd"))
    result = run_cli("train", "--images", tmp_path / "images", "--labels", tmp_path / "labels", "--out",
                     tmp_path / "run", "--iterations", "1", "--size", "tiny", "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.count("0 bytes") == 1, result.stderr


# --- 9, 15: predict into a full or read-only file system (a private tmpfs) ---------------------

def test_predict_into_a_read_only_or_full_disk(model_run, test_images, tmp_path):
    from test_full_disk import _in_tiny_filesystem

    result = _in_tiny_filesystem(f"""
        from SSLSegmentLib.cli import main
        for out in ({str(tmp_path / 'read_only')!r}, {str(tmp_path / 'disk' / 'out')!r}):
            code = main(["predict", "--model", {str(model_run)!r}, "--images", {str(test_images)!r},
                         "--out", out, "--device", "cpu"])
            print("exit", code, file=sys.stderr)
    """, tmp_path, options="size=12k", more={"read_only": "ro,size=64k"})
    errors = result.stderr.split("exit ")
    assert result.returncode == 0 and len(errors) == 3, result.stderr
    read_only, full = errors[0], errors[1]
    assert full.startswith("2") and errors[2].startswith("2"), result.stderr
    assert str(tmp_path / "read_only") in read_only and "read-only" in read_only.lower(), read_only
    assert str(tmp_path / "disk" / "out") in full and "full" in full, full
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 2


# --- 11: predictions never become training data by accident -----------------------------------

def test_predictions_in_the_image_folder_are_not_labels_or_images(model_run, phantom_data, tmp_path, caplog):
    from SSLSegmentLib.data.cases import discover_dataset, list_image_cases

    images = tmp_path / "images"
    shutil.copytree(phantom_data["images"], images)
    for label in phantom_data["labels"].iterdir():  # labels beside the images, as Slicer saves them
        shutil.copy(label, images / label.name)
    before = discover_dataset(images, images)
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for case in before.unlabelled:
        shutil.copy(case.image, unlabelled / case.image.name)
    assert main(["predict", "--model", str(model_run), "--images", str(unlabelled), "--out", str(images),
                 "--device", "cpu"]) == 0
    predicted = sorted(p.name for p in images.glob("*.seg.nrrd"))
    assert len(predicted) == 5  # the 2 unlabelled cases now have a .seg.nrrd beside their image
    after = discover_dataset(images, images)
    assert [c.name for c in after.labelled] == [c.name for c in before.labelled]
    assert [c.label for c in after.labelled] == [c.label for c in before.labelled]
    assert len(after.unlabelled) == len(before.unlabelled) == 2
    assert "prediction written by `sslsegment predict`" in caplog.text
    # a copy elsewhere (no manifest) is still recognised by the marker in its header
    copied = tmp_path / "copied"
    copied.mkdir()
    shutil.copy(images / "labelmaps" / f"{after.unlabelled[0].name}.nrrd", copied / "x.nrrd")
    shutil.copy(phantom_data["test_images"] / "test_000.nrrd", copied / "y.nrrd")
    assert [c.name for c in list_image_cases(copied)] == ["y"]


def test_training_on_a_predictions_folder_as_labels_is_refused(model_run, phantom_data, tmp_path, caplog, capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_run), "--images", str(phantom_data["test_images"]),
                 "--out", str(out), "--device", "cpu"]) == 0
    code = main(["train", "--images", str(phantom_data["test_images"]), "--labels", str(out), "--out",
                 str(tmp_path / "run"), "--iterations", "1", "--size", "tiny", "--device", "cpu"])
    assert code == 2 and "No labelled case" in capsys.readouterr().err and "skipped as a label" in caplog.text


def test_slicer_labelmaps_are_not_predicted_as_images(model_run, test_images, tmp_path, capsys, caplog):
    shutil.copy(test_images / "test_000.nrrd", test_images / "test_000-label.nrrd")
    code, text = _predict(model_run, test_images, tmp_path / "out", capsys)
    assert code == 0 and "test_000-label.nrrd" in caplog.text
    assert sorted(json.loads((tmp_path / "out" / "confidence.json").read_text())) == ["test_000", "test_001"]


def test_non_finite_probabilities_are_a_failure_not_a_score(model_run, test_images, tmp_path, capsys):
    payload = torch.load(model_run / "model.pt", weights_only=True)
    for value in payload["state_dict"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    broken = tmp_path / "nan.pt"
    torch.save(payload, broken)
    code, text = _predict(broken, test_images, tmp_path / "out", capsys)
    # exit 1 here; exit 2 once the model loader itself refuses non-finite weights (the training side)
    assert code in (1, 2) and ("test_000" in text or "finite" in text), text
    assert not (tmp_path / "out" / "test_000.seg.nrrd").exists()


def test_a_training_case_in_metres_is_named(phantom_data, tmp_path, caplog):
    from SSLSegmentLib.domain import spacing_outliers

    images = tmp_path / "images"
    shutil.copytree(phantom_data["images"], images)
    image = sitk.ReadImage(str(images / "case_001.nrrd"))
    image.SetSpacing([s / 1000 for s in image.GetSpacing()])
    sitk.WriteImage(image, str(images / "case_001.nrrd"))
    main(["train", "--images", str(images), "--labels", str(phantom_data["labels"]), "--out", str(tmp_path / "run"),
          "--iterations", "1", "--size", "tiny", "--device", "cpu", "--patch-size", "16,32,32", "--dim", "3",
          "--method", "supervised", "--val-cases", "0"])
    assert "case 'case_001': spacing (0.001, 0.001, 0.0015) mm is far from" in caplog.text
    assert spacing_outliers({"a": (1, 1, 1), "b": (0.5, 0.5, 5)}) == []  # ordinary variation
