"""Data-parallel training with torchrun: 2 CPU processes (gloo), tiny networks and phantoms."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, TINY_TRAIN

from SSLSegmentLib.model_file import load_model
from SSLSegmentLib.training.distributed import DataParallelNetworks, DistributedContext, shard, state_checksum
from SSLSegmentLib.training.run_folder import RunFolder


def torchrun(nproc: int, *args, env_extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node N -m SSLSegmentLib ...`` on one machine."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", **(env_extra or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "SSLSegmentLib", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    return result


def _check_single_set_of_outputs(out, iterations: int) -> list[dict]:
    run = RunFolder(out)
    assert run.read_status()["state"] == "done"
    records = run.read_progress()
    steps = [r["iteration"] for r in records if "iteration" in r]
    assert steps == sorted(set(steps)) and steps[-1] == iterations  # one writer: no record twice
    ranks = [r for r in records if r.get("event") == "ranks"]
    assert len(ranks) == 1 and ranks[0]["world_size"] == 2
    checksums = ranks[0]["state_sha256"]
    assert len(checksums) == 2 and checksums[0] == checksums[1], checksums  # every network equal on every rank
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["cases.json", "checkpoint_best.pt", "checkpoint_last.pt", "command.json", "config.json", "log.txt",
         "model.pt", "progress.jsonl", "run.lock", "status.json"])
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert not any(key.startswith("module.") or ".module." in key for key in state)
    load_model(out / "model.pt", torch.device("cpu"))  # a bare backbone takes the weights
    return records


@pytest.mark.slow
def test_two_process_mean_teacher_trains_one_model(phantom_data, tmp_path):
    out = tmp_path / "mt"
    torchrun(2, "train", "--images", phantom_data["images"], "--labels", phantom_data["labels"], "--method",
             "mean_teacher", "--iterations", 4, "--val-cases", 1, "--val-interval", 2, "--out", out, *TINY_TRAIN)
    records = _check_single_set_of_outputs(out, 4)
    assert any("val_dice" in r for r in records)
    cache = [r for r in records if r.get("event") == "data_cache"]
    assert cache and cache[0]["built"] + cache[0]["reused"] == 5


@pytest.mark.slow
def test_two_process_cps_with_a_simulated_small_gpu(phantom_data, tmp_path):
    """CPS: two networks in two parameter groups (two backward passes per step). The
    simulated device only has room for batch 1 + 1: every rank probes before training and
    they agree on the smaller batch (a distributed step cannot be retried on one rank)."""
    out = tmp_path / "cps"
    torchrun(2, "train", "--images", phantom_data["images"], "--labels", phantom_data["labels"], "--method", "cps",
             "--iterations", 3, "--val-cases", 1, "--val-interval", 3, "--out", out, *TINY_TRAIN,
             env_extra={"SSLSEGMENT_SIMULATE_OOM_VOXELS": str(2 * 16 * 32 * 32)})
    records = _check_single_set_of_outputs(out, 3)
    fallback = [r for r in records if r.get("event") == "oom_fallback"]
    assert fallback and fallback[0]["phase"] == "probe" and fallback[0]["to"]["batch_sizes"] == [1, 1]
    assert json.loads((out / "config.json").read_text())["batch_sizes"] == [1, 1]


def test_shard_splits_cases_like_a_distributed_sampler():
    items = list(range(7))
    assert shard(items, DistributedContext()) == items
    parts = [shard(items, DistributedContext(rank=r, world_size=3)) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard([1], DistributedContext(rank=1, world_size=2)) == [1]  # fewer cases than ranks: all


def test_single_process_needs_no_wrappers_and_checksums_see_every_tensor():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    wrappers = DataParallelNetworks(net, torch.device("cpu"), DistributedContext())
    with wrappers.active():
        assert net[0].__class__ is torch.nn.Conv3d
    before = state_checksum(net)
    net[1].running_mean.add_(1.0)  # a buffer counts too
    assert state_checksum(net) != before
