"""``--validation``: hold labelled cases out (best checkpoint) or train on every label (last
weights); ``auto`` holds out only once there are enough labels."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from SSLSegmentLib.cli import build_parser, config_from_args
from SSLSegmentLib.config import TrainConfig
from SSLSegmentLib.data.cases import Case, discover_dataset
from SSLSegmentLib.errors import InputError
from SSLSegmentLib.training.data_setup import HOLDOUT_MIN_LABELLED, validation_split
from SSLSegmentLib.training.run_folder import RunFolder
from SSLSegmentLib.training.trainer import Trainer


def cases(count: int) -> list[Case]:
    return [Case(f"c{i}", Path(f"c{i}.nrrd"), Path(f"c{i}.seg.nrrd")) for i in range(count)]


def test_modes_choose_how_many_cases_are_held_out():
    assert validation_split(cases(6), None, 0, "auto") == set()  # 6 labels: all train
    assert len(validation_split(cases(6), None, 0, "holdout")) == 1
    assert len(validation_split(cases(HOLDOUT_MIN_LABELLED), None, 0, "auto")) == HOLDOUT_MIN_LABELLED // 5
    assert validation_split(cases(30), None, 0, "none") == set()
    assert len(validation_split(cases(6), 2, 0, "none")) == 2  # an explicit count wins
    assert len(validation_split(cases(2), None, 0, "holdout")) == 1  # never every case
    with pytest.raises(InputError, match="at least one must be left for training"):
        validation_split(cases(2), 5, 0, "holdout")  # an explicit count is refused, never cut silently
    with pytest.raises(InputError, match="validation"):
        TrainConfig(validation="sometimes").resolved("cpu")


def test_cli_flag(tmp_path):
    parse = build_parser().parse_args
    assert config_from_args(parse(["train", "--out", str(tmp_path), "--validation", "holdout"])).validation == "holdout"
    assert config_from_args(parse(["train", "--out", str(tmp_path)])).validation == "auto"


@pytest.mark.parametrize("mode, source", [("holdout", "best"), ("none", "last")])
def test_holdout_keeps_the_best_checkpoint_and_none_the_last_weights(phantom_data, tmp_path, mode, source):
    run = RunFolder(tmp_path / "run")
    run.prepare()
    dataset = discover_dataset(phantom_data["images"], phantom_data["labels"])
    config = TrainConfig(method="supervised", size="tiny", dim="3", patch_size=(16, 32, 32), iterations=2,
                         validation=mode, device="cpu", precision="fp32", cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(config, dataset, run, logging.getLogger("test_validation"))
    trainer.setup()
    assert len(trainer.data.validation) == (1 if mode == "holdout" else 0)
    assert len(trainer.data.train) == 3 - len(trainer.data.validation)
    assert trainer.train().model_source == source
