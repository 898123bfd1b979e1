"""``--spacing``: the training spacing as a setting, chosen by the preset (the CPU preset
coarsens until a case fits its patch, never finer than the data), with predictions still
on each image's own grid."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from SSLSegmentLib.cli import build_parser, config_from_args, main
from SSLSegmentLib.config import TrainConfig
from SSLSegmentLib.data.cases import discover_dataset
from SSLSegmentLib.data.geometry import Geometry
from SSLSegmentLib.data.io import read_image
from SSLSegmentLib.data.labels import read_label
from SSLSegmentLib.errors import InputError
from SSLSegmentLib.inference import predict_cases
from SSLSegmentLib.model_file import load_model
from SSLSegmentLib.spacing import parse_spacing, training_spacing
from SSLSegmentLib.training.run_folder import RunFolder
from SSLSegmentLib.training.trainer import Trainer

LA_LIKE = Geometry((0.625,) * 3, (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (183, 140, 88))
ACDC_LIKE = Geometry((1.5, 1.5, 10.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (256, 256, 10))


def test_fit_coarsens_until_the_median_case_fits_the_patch():
    # LA at the CPU preset's 64^3 patch: 114 mm along x -> about 1.8 mm isotropic (the bench used 2 mm)
    la = training_spacing("fit", [LA_LIKE], 3, (64, 64, 64), LA_LIKE.spacing)
    assert la == pytest.approx((1.787,) * 3, abs=1e-3)
    # ACDC in 2D at the CPU preset's 128^2 slice: 384 mm -> 3 mm in-plane (the bench's), slices kept
    assert training_spacing("fit", [ACDC_LIKE], 2, (128, 128), ACDC_LIKE.spacing) == (3.0, 3.0, 10.0)


def test_fit_is_never_finer_than_the_data():
    small = Geometry((2.0, 2.0, 5.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (20, 20, 8))
    assert training_spacing("fit", [small], 3, (64, 64, 64), small.spacing) == (2.0, 2.0, 5.0)
    # z (80 mm in a 32-voxel patch) sets the value; z's data spacing is coarser and stays
    flat = Geometry((0.5, 0.5, 4.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (256, 256, 20))
    assert training_spacing("fit", [flat], 3, (32, 64, 64), flat.spacing) == (2.5, 2.5, 4.0)


def test_explicit_and_data_rules():
    assert training_spacing("data", [LA_LIKE], 3, (64, 64, 64), LA_LIKE.spacing) == LA_LIKE.spacing
    assert training_spacing(2.0, [LA_LIKE], 3, (64, 64, 64), LA_LIKE.spacing) == (2.0, 2.0, 2.0)
    assert training_spacing(2.0, [ACDC_LIKE], 2, (128, 128), ACDC_LIKE.spacing) == (2.0, 2.0, 10.0)
    assert training_spacing("1,2,3", [LA_LIKE], 3, (64, 64, 64), LA_LIKE.spacing) == (1.0, 2.0, 3.0)
    for bad in ("abc", "0", "1,2", "-1", "nan"):
        with pytest.raises(InputError, match="spacing"):
            parse_spacing(bad)


def test_the_preset_chooses_the_rule_and_the_cli_overrides_it(tmp_path):
    assert TrainConfig().resolved("cpu").spacing_rule() == "fit"
    assert TrainConfig(preset="quality-gpu").resolved("cpu").spacing_rule() == "data"
    assert TrainConfig(spacing="data").resolved("cpu").spacing_rule() == "data"
    parse = build_parser().parse_args
    assert config_from_args(parse(["train", "--out", str(tmp_path), "--spacing", "1.5,1.5,3"])).spacing == (1.5, 1.5, 3)
    assert config_from_args(parse(["train", "--out", str(tmp_path), "--spacing", "fit"])).spacing == "fit"
    assert TrainConfig.from_dict(TrainConfig(spacing=(1.0, 2.0, 3.0)).resolved("cpu").to_dict()).spacing_rule() == \
        (1.0, 2.0, 3.0)


def test_bad_spacing_on_the_command_line_exits_2(phantom_data, tmp_path, capsys):
    code = main(["train", "--images", str(phantom_data["images"]), "--labels", str(phantom_data["labels"]),
                 "--out", str(tmp_path / "run"), "--spacing", "fine"])
    assert code == 2 and "spacing 'fine'" in capsys.readouterr().err
    assert RunFolder(tmp_path / "run").read_status() is None  # refused before the run folder is touched


def test_training_at_a_coarser_spacing_predicts_on_each_images_own_grid(phantom_data, tmp_path):
    run = RunFolder(tmp_path / "run")
    run.prepare()
    dataset = discover_dataset(phantom_data["images"], phantom_data["labels"])
    config = TrainConfig(method="supervised", size="tiny", dim="3", patch_size=(16, 32, 32), iterations=3, val_cases=0,
                         device="cpu", spacing=2.0, cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(config, dataset, run, logging.getLogger("test_spacing"))
    trainer.setup()
    assert trainer.data.plan.target_spacing == (2.0, 2.0, 2.0)
    # phantoms are 32 x 32 x 16 voxels at 1 x 1 x 1.5 mm: 16 x 16 x 12 at 2 mm
    assert trainer.data.train[0].shape == (12, 16, 16)
    trainer.train()
    model = load_model(run.model, trainer.device)
    assert tuple(model.plan.target_spacing) == (2.0, 2.0, 2.0)
    tests = discover_dataset(phantom_data["test_images"], phantom_data["test_labels"]).labelled
    predict_cases(model, tests, tmp_path / "predictions", trainer.device)
    for case in tests:
        image, geometry = read_image(case.image)
        predicted = read_label(tmp_path / "predictions" / f"{case.name}.seg.nrrd")
        assert predicted.array.shape == image.shape
        assert np.allclose(predicted.geometry.spacing, geometry.spacing)
        assert np.allclose(predicted.geometry.origin, geometry.origin)
