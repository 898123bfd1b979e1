"""``--precision``: bf16 autocast on CPUs with native bf16, channels-last in 3D; every method
trains under it with finite losses and fp32 weights; bf16 is used only where a pass of the
run's network agrees with fp32 (some CPUs' bf16 kernels are wrong for small shapes)."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
import torch
from helpers import ROOT
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
    broken = precision.first_bf16_disagreement(method.precision_probes(), labelled["image"], torch.channels_last_3d)
    if broken:  # the trainer would fall back to fp32 here (tested below)
        pytest.skip(f"this CPU's bf16 kernels are wrong for these tiny shapes: {broken}")
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
    if wanted == "bf16" and _bf16_broken_here():
        with pytest.raises(InputError, match="--precision bf16: this CPU's bf16 kernels give wrong results"):
            trainer.setup()  # asked for bf16 on kernels that are wrong: refused, not trained on wrong gradients
        return
    trainer.setup()
    assert trainer.amp is mixed and trainer.memory_format == layout
    result = trainer.train()
    assert result.best_dice is not None and 0.0 <= result.best_dice <= 1.0
    steps = [r for r in run.read_progress() if "iteration" in r]
    assert all(torch.isfinite(torch.tensor(v)) for r in steps for v in r["losses"].values())
    payload = torch.load(run.model, weights_only=True)
    assert all(t.dtype == torch.float32 for t in payload["state_dict"].values() if t.is_floating_point())


@pytest.mark.parametrize("name", ["supervised", "mean_teacher", *METHODS])
def test_the_check_sees_every_network_a_method_trains(name):
    """Every trainable parameter lies in a network the bf16 check passes (or in one of the
    same architecture: CPS's second U-Net), and each probe runs on an image batch."""
    torch.manual_seed(0)
    method = make_method(name, 3)
    probes = method.precision_probes()
    covered = {id(p) for probe in probes.values() for p in probe.parameters()}
    covered |= {id(p) for module in method.modules() if getattr(module, "registry_name", None) in probes
                for p in module.parameters()}
    trainable = [p for group in method.parameter_groups().values() for p in group]
    assert all(id(p) in covered for p in trainable), name
    image = make_batches(3, name)[0]["image"]
    for probe_name, probe in probes.items():
        assert "logits" in precision.bf16_cosines(probe, image), probe_name


def _bf16_broken_here() -> bool:
    """The check on this machine, for the trainer test's network and patch."""
    from SSLSegmentLib.networks import build_network  # noqa: PLC0415

    torch.manual_seed(0)
    network = build_network("unet", 3, 1, 3, size="tiny")
    return precision.bf16_disagreement(network, torch.randn(4, 1, 16, 32, 32), torch.channels_last_3d) is not None


class ChannelsSwappedUnderBf16(torch.nn.Module):
    """A network whose bf16 path is wrong, as some CPUs' kernels are for small shapes: under
    autocast its output channels come out swapped."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.flip(1) if torch.is_autocast_cpu_enabled() else y


class _InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


class GradientBrokenUnderBf16(torch.nn.Module):
    """Right output, non-finite weight gradient under autocast (seen: 1e30 and NaN)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return _InfiniteGradient.apply(y) if torch.is_autocast_cpu_enabled() else y


def test_the_bf16_check_names_the_disagreement():
    torch.manual_seed(0)
    example = torch.randn(2, 1, 32, 32)
    swapped = precision.bf16_disagreement(ChannelsSwappedUnderBf16(), example)
    # the swap reaches the output and the weight gradient; the message names the lower cosine
    assert re.fullmatch(r"bf16 disagrees with fp32 in (the network's output|the gradient of conv\.weight) "
                        r"\(cosine -?[0-9.]+, expected 0\.8 or more\)", swapped), swapped
    assert precision.bf16_disagreement(GradientBrokenUnderBf16(), example) == (
        "bf16 gives non-finite values in the gradient of conv.weight")
    correct = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.InstanceNorm2d(8, affine=True),
                                  torch.nn.PReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
    assert precision.bf16_disagreement(correct, example) is None  # a scalar PReLU and a bias before a norm: not judged


def test_auto_falls_back_to_fp32_where_the_check_fails(phantom_data, tmp_path, monkeypatch, caplog):
    """On a CPU with native bf16 whose kernels fail the check, ``auto`` trains in fp32 (no
    channels-last) and says so; config.json records what was used."""
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "bf16_disagreement", lambda *_: "bf16 disagrees with fp32 in the gradient of w")
    run = RunFolder(tmp_path / "run")
    run.prepare()
    config = TrainConfig(method="supervised", size="tiny", dim="3", patch_size=(16, 32, 32), iterations=2,
                         val_cases=0, device="cpu", cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(config, discover_dataset(phantom_data["images"], phantom_data["labels"]), run,
                      logging.getLogger("test_precision"))
    with caplog.at_level(logging.WARNING):
        trainer.setup()
    assert trainer.amp is False and trainer.memory_format is None
    assert "bf16 kernels give wrong results at patch (16, 32, 32) (unet: bf16 disagrees" in caplog.text
    assert "the gradient of w" in caplog.text and "training in fp32" in caplog.text
    trainer.train()
    assert json.loads(run.config.read_text())["mixed_precision"] is False


def test_the_check_covers_every_network_the_method_trains(phantom_data, tmp_path, monkeypatch, caplog):
    """CTCT trains a CNN and a transformer: a transformer whose bf16 pass is wrong turns bf16
    off as a wrong CNN would, and the warning names it."""
    checked = []

    def swin_is_wrong(network, *_):
        checked.append(network.registry_name)
        return "bf16 disagrees with fp32 in the network's output" if network.registry_name == "swin_unet" else None

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "bf16_disagreement", swin_is_wrong)
    run = RunFolder(tmp_path / "run")
    run.prepare()
    config = TrainConfig(method="ctct", size="tiny", dim="2", patch_size=(32, 32), iterations=2, val_cases=0,
                         device="cpu", cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(config, discover_dataset(phantom_data["images"], phantom_data["labels"]), run,
                      logging.getLogger("test_precision"))
    with caplog.at_level(logging.WARNING):
        trainer.setup()
    assert checked == ["unet", "swin_unet"] and trainer.amp is False
    assert "(swin_unet: bf16 disagrees with fp32 in the network's output): training in fp32" in caplog.text


def test_the_bf16_bench_reports_what_the_trainer_would_decide(tmp_path, monkeypatch):
    """``bench/bf16_check.py`` on one small case: the verdict is the trainer's rule applied to
    the lowest cosine it prints, and the report names the CPU."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bf16_check  # noqa: PLC0415

    monkeypatch.setattr(bf16_check, "PATCHES", {2: [(32, 32)], 3: [(16, 32, 32)]})
    assert bf16_check.main(["--networks", "unet", "--results", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("bf16_check_*.json")).read_text())
    assert report["cpu"] and report["min_cosine"] == precision.MIN_COSINE and len(report["rows"]) == 2
    for row in report["rows"]:
        lowest = row["lowest_cosine"]
        assert row["agrees"] == (lowest is not None and lowest >= precision.MIN_COSINE)
    table = next(tmp_path.glob("bf16_check_*.md")).read_text()
    assert "| unet | 16 x 32 x 32 | oneDNN |" in table
