"""``--precision``: bf16 autocast on CPUs with native bf16, channels-last in 3D; every method
trains under it with finite losses and fp32 weights."""

from __future__ import annotations

import logging

import pytest
import torch
from test_methods import METHODS, make_batches, make_method

from SSLSegmentLib import precision
from SSLSegmentLib.config import TrainConfig
from SSLSegmentLib.data.cases import discover_dataset
from SSLSegmentLib.errors import InputError
from SSLSegmentLib.inference import autocast
from SSLSegmentLib.methods import StepInfo
from SSLSegmentLib.training.run_folder import RunFolder
from SSLSegmentLib.training.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert precision.mixed_precision("auto", True, CPU)
    assert not precision.mixed_precision("fp32", True, CPU)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert not precision.mixed_precision("auto", True, CPU)
    assert precision.mixed_precision("bf16", True, CPU)  # asked for: emulated if need be
    assert precision.mixed_precision("auto", True, CUDA) and not precision.mixed_precision("auto", False, CUDA)
    with pytest.raises(InputError, match="precision"):
        TrainConfig(precision="fp8").resolved("cpu")


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = next((line.split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    precision.cpu_supports_bf16.cache_clear()
    assert precision.cpu_supports_bf16() == any(f in flags for f in ("amx_bf16", "avx512_bf16"))


@pytest.mark.parametrize("name", ["supervised", "mean_teacher", *METHODS])
def test_every_method_trains_under_cpu_bf16_channels_last(name):
    torch.manual_seed(0)
    method = make_method(name, 3).train().to(memory_format=torch.channels_last_3d)
    labelled, unlabelled = make_batches(3, name)
    labelled["image"] = labelled["image"].contiguous(memory_format=torch.channels_last_3d)
    unlabelled["image"] = unlabelled["image"].contiguous(memory_format=torch.channels_last_3d)
    with autocast(CPU, True):
        losses = method.training_step(labelled, unlabelled, StepInfo(iteration=5, total=10, consistency_weight=0.5))
    for group, params in method.parameter_groups().items():
        assert torch.isfinite(losses[group]).all(), group
        losses[group].backward(inputs=params)
        assert all(p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all() for p in params)


@pytest.mark.parametrize("wanted, mixed, layout", [("bf16", True, torch.channels_last_3d), ("fp32", False, None)])
def test_trainer_follows_the_precision_setting(phantom_data, tmp_path, wanted, mixed, layout):
    run = RunFolder(tmp_path / "run")
    run.prepare()
    dataset = discover_dataset(phantom_data["images"], phantom_data["labels"])
    config = TrainConfig(method="mean_teacher", size="tiny", dim="3", patch_size=(16, 32, 32), iterations=3,
                         val_cases=1, device="cpu", precision=wanted, cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(config, dataset, run, logging.getLogger("test_precision"))
    trainer.setup()
    assert trainer.amp is mixed and trainer.memory_format == layout
    result = trainer.train()
    assert result.best_dice is not None and 0.0 <= result.best_dice <= 1.0
    steps = [r for r in run.read_progress() if "iteration" in r]
    assert all(torch.isfinite(torch.tensor(v)) for r in steps for v in r["losses"].values())
    payload = torch.load(run.model, weights_only=True)
    assert all(t.dtype == torch.float32 for t in payload["state_dict"].values() if t.is_floating_point())
