"""Training throughput of ``mean_teacher`` against the bare network work it cannot avoid.

Prints JSON: seconds per iteration of the real training loop (data sampling, bookkeeping,
logging, cancel checks included), seconds per iteration of the bare compute on the same
batch shape (student forward + backward + optimiser step on the whole batch, teacher
forward on the unlabelled half, data already in memory), and their ratio. Blocks of the
two alternate (ABAB...) so that a noisy shared machine affects both alike; the ratio
reported is the median of the per-pair ratios. Target: ratio <= 1.15 on CPU, 3D, LA, at the
default CPU preset.

    .venv/bin/python bench/throughput.py [--data ../shared/data/LA/train] [--iterations 10] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SSLSegmentLib.config import TrainConfig  # noqa: E402
from SSLSegmentLib.data.cases import Dataset, discover_dataset  # noqa: E402
from SSLSegmentLib.sampling import to_tensors  # noqa: E402
from SSLSegmentLib.training.run_folder import RunFolder  # noqa: E402
from SSLSegmentLib.training.trainer import Trainer  # noqa: E402


def la_dataset(folder: Path, labelled: int, unlabelled: int) -> Dataset:
    full = discover_dataset(folder / "images", folder / "labels")
    cases = full.labelled
    pool = [type(c)(c.name, c.image, None) for c in cases[labelled:labelled + unlabelled]]
    return Dataset(labelled=cases[:labelled], unlabelled=pool, classes=full.classes)


def loop_seconds_per_iteration(trainer: Trainer) -> float:
    """The real loop: ``Trainer.train`` writes elapsed time with its last progress record."""
    trainer.run.progress.unlink(missing_ok=True)
    trainer.train()
    last = [r for r in trainer.run.read_progress() if "iteration" in r][-1]
    return last["elapsed_s"] / last["iteration"]


def bare_seconds_per_iteration(trainer: Trainer, iterations: int) -> float:
    """Student forward+backward+step on the whole batch, teacher forward on the unlabelled half."""
    method = trainer.method
    labelled, unlabelled = next(iter(trainer.stream))
    labelled, unlabelled = to_tensors(labelled, trainer.device), to_tensors(unlabelled, trainer.device)
    images = torch.cat([labelled["image"], unlabelled["image"]])
    optimiser = torch.optim.SGD(method.student.parameters(), lr=1e-4, momentum=0.9)
    method.train()

    def step():
        optimiser.zero_grad(set_to_none=True)
        logits = method.student(images)
        with torch.no_grad():
            method.teacher(unlabelled["image"])
        logits.float().square().mean().backward()
        optimiser.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - started) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "LA" / "train")
    parser.add_argument("--labelled", type=int, default=8)
    parser.add_argument("--unlabelled", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dataset = la_dataset(args.data, args.labelled, args.unlabelled)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunFolder(tmp)
        run.prepare()
        config = TrainConfig(method="mean_teacher", network="unet", dim="3", iterations=args.iterations,
                             val_cases=0, device=args.device)
        trainer = Trainer(config, dataset, run, logging.getLogger("bench"))
        trainer.setup()
        trainer.train()  # warm-up: allocator, thread pools
        pairs = []
        for _ in range(args.pairs):
            loop = loop_seconds_per_iteration(trainer)
            bare = bare_seconds_per_iteration(trainer, args.iterations)
            pairs.append({"loop_s": round(loop, 4), "bare_s": round(bare, 4), "ratio": round(loop / bare, 4)})
    report = {
        "benchmark": "throughput", "method": "mean_teacher", "network": "unet", "dim": 3,
        "preset": trainer.config.preset, "size": trainer.config.size, "patch": list(trainer.data.patch),
        "batch": list(trainer.config.batch_sizes(3)), "device": str(trainer.device),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "cpu_count": torch.get_num_threads(),
        "data": str(args.data), "cases": {"labelled": args.labelled, "unlabelled": args.unlabelled},
        "pairs": pairs,
        "loop_s_per_iteration": statistics.median(p["loop_s"] for p in pairs),
        "bare_s_per_iteration": statistics.median(p["bare_s"] for p in pairs),
        "ratio": statistics.median(p["ratio"] for p in pairs),
        "target_ratio": 1.15,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
