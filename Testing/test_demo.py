"""The demo: supervised-only against the default method on phantoms whose unlabelled and
held-out scans are shifted in appearance; writes the run life cycle's status.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SSLSegmentLib import demo
from SSLSegmentLib.data.io import read_image
from SSLSegmentLib.data.labels import read_label
from SSLSegmentLib.errors import InputError
from SSLSegmentLib.phantoms import STANDARD, make_phantom, shifted_appearance, write_phantom_dataset
from SSLSegmentLib.training.run_folder import RunFolder


def contrast_to_noise(image, label) -> float:
    organ, background = image[label == 1], image[label == 0]
    return float((organ.mean() - background.mean()) / background.std())


def test_shifted_scans_have_less_contrast_and_the_labelled_ones_keep_the_standard_look(tmp_path):
    standard, label = make_phantom((16, 32, 32), seed=1)
    shifted, same_label = make_phantom((16, 32, 32), seed=1, appearance=shifted_appearance(1.0))
    assert np.array_equal(label, same_label)  # the anatomy is the seed's, the look the scanner's
    assert contrast_to_noise(shifted, label) < 0.5 * contrast_to_noise(standard, label)
    assert shifted_appearance(0.0) == STANDARD
    folders = write_phantom_dataset(tmp_path, n_labelled=1, n_unlabelled=3, n_test=2, shape=(8, 16, 16), seed=2,
                                    appearance_shift=1.0)
    plain = write_phantom_dataset(tmp_path / "plain", n_labelled=1, n_unlabelled=3, n_test=2, shape=(8, 16, 16), seed=2)
    image, _ = read_image(folders["images"] / "case_000.nrrd")
    assert np.array_equal(image, read_image(plain["images"] / "case_000.nrrd")[0])  # labelled: standard
    shifted_pool = [read_image(folders["images"] / f"case_{i:03d}.nrrd")[0] for i in (1, 2, 3)]
    plain_pool = [read_image(plain["images"] / f"case_{i:03d}.nrrd")[0] for i in (1, 2, 3)]
    assert any(not np.array_equal(a, b) for a, b in zip(shifted_pool, plain_pool))


def test_demo_compares_the_default_method_with_supervised_and_reports_done(tmp_path, capsys):
    out = tmp_path / "demo"
    results = demo.run_demo(out, iterations=3, seed=1, shape=(16, 32, 32), patch=(16, 32, 32), size="tiny")
    assert list(results) == ["supervised", demo.DEFAULT_METHOD] and demo.DEFAULT_METHOD != "supervised"
    status = RunFolder(out).read_status()
    assert status["state"] == "done" and status["error"] is None
    assert set(status["mean_dice"]) == set(results)
    assert json.loads((out / "results.json").read_text())["supervised"]["mean"]["all"]["dice"] == \
        results["supervised"]["mean"]["all"]["dice"]
    assert (out / "demo.png").stat().st_size > 1000
    for method in results:  # each run started through the life cycle of `sslsegment train`
        run = RunFolder(out / "runs" / method)
        run_status = run.read_status()
        assert run_status["state"] == "done" and run_status["model"] == str(run.model)
        assert "best_val_dice" in run_status and run.model.exists()
        assert "done:" in run.log.read_text() and any("iteration" in r for r in run.read_progress())
        assert len(list((out / "predictions" / method).glob("*.seg.nrrd"))) == demo.N_TEST
        prediction = read_label(out / "predictions" / method / "test_000.seg.nrrd")
        assert prediction.array.shape == (16, 32, 32)
    assert "| supervised |" in capsys.readouterr().out


def test_demo_failure_is_reported_in_status(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(InputError, match="nonsense"):
        demo.run_demo(out, iterations=1, shape=(16, 32, 32), patch=(16, 32, 32), size="tiny", methods=("nonsense",))
    status = RunFolder(out).read_status()
    assert status["state"] == "failed" and "nonsense" in status["error"]


def test_the_figure_shows_the_case_of_median_gain():
    def scores(dice):
        return {"cases": {name: {"organ": {"dice": d}, "lesion": {"dice": d}} for name, d in dice.items()}}

    results = {"supervised": scores({"a": 0.5, "b": 0.5, "c": 0.5}), "bcp": scores({"a": 0.9, "b": 0.6, "c": 0.4})}
    assert demo.representative_case(results, ["a", "b", "c"]) == "b"
