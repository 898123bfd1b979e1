"""GPU memory safety, exercised on the CPU with a simulated device: the out-of-memory
fallback, the shrinking rule, and the choice of patch and batch from the free memory."""

from __future__ import annotations

import logging

import pytest
import torch

from SSLSegmentLib.config import TrainConfig
from SSLSegmentLib.data.cases import discover_dataset
from SSLSegmentLib.training import memory
from SSLSegmentLib.training.run_folder import RunFolder
from SSLSegmentLib.training.trainer import Trainer


def test_shrink_halves_the_batch_then_the_patch_on_the_divisor():
    assert memory.shrink((4, 3), (64, 64, 64), 16) == ((2, 1), (64, 64, 64))
    assert memory.shrink((1, 1), (64, 96, 32), 16) == ((1, 1), (48, 64, 16))
    assert memory.shrink((1, 1), (32, 16), 16) == ((1, 1), (16, 16))
    assert memory.shrink((1, 1), (16, 16, 16), 16) is None


def test_out_of_memory_errors_are_recognised():
    assert memory.is_out_of_memory(memory.SimulatedOutOfMemory("x"))
    assert memory.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert memory.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not memory.is_out_of_memory(ValueError("out of memory"))
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))


def test_more_free_memory_never_gives_a_smaller_patch_or_batch():
    fit = lambda patch: patch  # noqa: E731 - data larger than every candidate
    per_voxel, fixed = 800.0, 200 * 2**20
    choices = [memory.choose_patch_and_batch(gib * 2**30, per_voxel, fixed, 3, fit) for gib in (1, 4, 12, 40, 80)]
    sizes = [(torch.Size(p).numel(), b) for p, b in choices]
    assert sizes == sorted(sizes)
    assert torch.Size(choices[0][0]).numel() <= 64 ** 3
    assert choices[-1][0] == memory.PATCH_LADDER[3][0] and choices[-1][1] >= 2
    for (patch, batch), gib in zip(choices, (1, 4, 12, 40, 80)):
        if batch > 1 or patch != memory.PATCH_LADDER[3][-1]:
            assert per_voxel * torch.Size(patch).numel() * 2 * batch <= memory.HEADROOM * gib * 2**30 - fixed
    # the data bounds the patch: a small cohort gets its own size and a larger batch
    small = memory.choose_patch_and_batch(80 * 2**30, per_voxel, fixed, 3, lambda p: tuple(min(a, 48) for a in p))
    assert small == ((48, 48, 48), memory.BATCH_MAX[3])


def test_activation_bytes_are_measured_on_the_real_step():
    from SSLSegmentLib.methods import MethodSettings, method_class
    from SSLSegmentLib.networks import build_network

    method = method_class("mean_teacher")(MethodSettings(), lambda **_: build_network("unet", 3, 1, 3, "tiny"), 3, 3)
    per_voxel = memory.bytes_per_sample_voxel(method, 3, (16, 16, 16), 3, torch.device("cpu"),
                                              torch.autocast("cpu", enabled=False))
    assert 50 < per_voxel < 50_000
    assert all(p.grad is None for p in method.parameters())


def _trainer(phantom_data, tmp_path, fault, iterations=3):
    run = RunFolder(tmp_path / "run")
    run.prepare()
    dataset = discover_dataset(phantom_data["images"], phantom_data["labels"])
    config = TrainConfig(method="mean_teacher", size="tiny", dim="3", patch_size=(16, 32, 32), iterations=iterations,
                         val_cases=1, val_interval=iterations, device="cpu", cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(config, dataset, run, logging.getLogger("test_memory"))
    trainer.check_memory = fault
    trainer.setup()
    return trainer


@pytest.mark.slow
def test_simulated_out_of_memory_shrinks_batch_then_patch_and_training_goes_on(phantom_data, tmp_path):
    # the preset batch (2 + 2) of 16x32x32 patches is 65536 voxels; the "device" holds 10000
    trainer = _trainer(phantom_data, tmp_path, memory.FaultInjector(10_000))
    result = trainer.train()
    records = trainer.run.read_progress()
    fallbacks = [r for r in records if r.get("event") == "oom_fallback"]
    assert [f["to"] for f in fallbacks] == [{"batch_sizes": [1, 1], "patch": [16, 32, 32]},
                                            {"batch_sizes": [1, 1], "patch": [16, 16, 16]}]
    assert all(f["iteration"] == 0 and "simulated out of memory" in f["error"] for f in fallbacks)
    assert [r["iteration"] for r in records if "iteration" in r][-1] == 3 and result.iterations == 3
    model = torch.load(trainer.run.model, weights_only=True)
    assert model["patch_size"] == [16, 16, 16]  # predictions use the patch that fitted


def test_out_of_memory_with_nothing_left_to_shrink_is_raised(phantom_data, tmp_path):
    trainer = _trainer(phantom_data, tmp_path, memory.FaultInjector(100), iterations=1)
    with pytest.raises(memory.SimulatedOutOfMemory):
        trainer.train()


def test_other_errors_are_not_taken_for_out_of_memory(phantom_data, tmp_path):
    def broken(batch_sizes, patch):
        raise RuntimeError("something else")

    trainer = _trainer(phantom_data, tmp_path, broken, iterations=1)
    with pytest.raises(RuntimeError, match="something else"):
        trainer.train()
    assert not any(r.get("event") == "oom_fallback" for r in trainer.run.read_progress())


def test_auto_preset_is_for_cuda_and_cpu_defaults_to_no_worker_processes():
    cpu = TrainConfig().resolved("cpu")
    assert cpu.preset == "fast-cpu" and cpu.num_workers == 0 and not cpu.sizes_from_free_memory()
    assert TrainConfig(preset="auto").resolved("cpu").preset == "fast-cpu"
    cuda = TrainConfig().resolved("cuda")
    assert cuda.preset == "auto" and cuda.sizes_from_free_memory() and cuda.num_workers == 4
