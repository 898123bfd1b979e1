"""Training throughput of ``mean_teacher`` against the bare network work it cannot avoid.

Prints JSON: seconds per iteration of the real training loop (data sampling, bookkeeping,
logging, cancel checks included), seconds per iteration of the bare compute on the same
batch shape (student forward + backward + optimiser step on the whole batch, teacher
forward on the unlabelled half, data already in memory), and their ratio. Blocks of the
two alternate (ABAB...) so that a noisy shared machine affects both alike; the ratio
reported is the median of the per-pair ratios. Target: ratio <= 1.15 on CPU, 3D, LA, at the
default CPU preset.

``--ddp 1 2`` adds the data-parallel case: iterations per second of the real command under
``torchrun`` with 1 and 2 processes on the same total batch (the per-process batch is the
total divided by the processes; each process gets ``cores / processes`` threads), alternated
``--ddp-repeats`` times; the rate comes from ``progress.jsonl`` (setup and the first
iteration excluded).

``--precision-compare``: seconds per iteration of the real loop in fp32 and in bf16 autocast
(channels-last 3D; ``SSLSegmentLib/precision.py``), the two trainers alternated ``--pairs``
times on the same data and seed; prints the fp32 / bf16 ratio (the speed-up), in wall-clock
and in process CPU time (steadier on a shared machine). Measured (OMP_NUM_THREADS=1, AMX CPU
shared with other jobs, ``--labelled 2 --unlabelled 2 --iterations 6 --pairs 4``): fp32 0.59
and bf16 0.47 CPU-seconds per iteration, speed-up 1.28 in CPU time (pairs 1.27 to 1.69),
1.36 in wall-clock (0.80 to 1.98).

    .venv/bin/python bench/throughput.py [--data ../shared/data/LA/train] [--iterations 10] [--pairs 3]
                                         [--ddp 1 2] [--ddp-iterations 8] [--total-batch 4]
                                         [--precision-compare]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SSLSegmentLib.config import TrainConfig  # noqa: E402
from SSLSegmentLib.data.cases import Dataset, discover_dataset  # noqa: E402
from SSLSegmentLib.inference import autocast  # noqa: E402
from SSLSegmentLib.run_protocol import read_progress  # noqa: E402
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
    stream = trainer._batch_stream()
    stream.prefetch = 0
    labelled, unlabelled = stream.draw()
    labelled = to_tensors(labelled, trainer.device, trainer.memory_format)
    unlabelled = to_tensors(unlabelled, trainer.device, trainer.memory_format)
    images = torch.cat([labelled["image"], unlabelled["image"]])
    optimiser = torch.optim.SGD(method.student.parameters(), lr=1e-4, momentum=0.9)
    method.train()

    def step():  # in the loop's precision (bf16 autocast where it uses it)
        optimiser.zero_grad(set_to_none=True)
        with autocast(trainer.device, trainer.amp):
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


def la_folders(folder: Path, labelled: int, unlabelled: int, into: Path) -> tuple[Path, Path]:
    """``images``/``labels`` folders of symbolic links: the first cases labelled, the next unlabelled."""
    full = discover_dataset(folder / "images", folder / "labels")
    images, labels = into / "images", into / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for index, case in enumerate(full.labelled[:labelled + unlabelled]):
        (images / case.image.name).symlink_to(case.image.resolve())
        if index < labelled:
            (labels / case.label.name).symlink_to(case.label.resolve())
    return images, labels


def ddp_iterations_per_second(processes: int, images: Path, labels: Path, cache: Path, args) -> dict:
    """The real command under torchrun; the per-process batch is the total batch / processes."""
    per_process = args.total_batch // processes
    threads = args.threads or max(1, (os.cpu_count() or 1) // processes)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   "-m", "SSLSegmentLib", "train", "--images", str(images), "--labels", str(labels), "--out", str(out),
                   "--method", "mean_teacher", "--network", "unet", "--dim", "3", "--device", "cpu",
                   "--iterations", str(args.ddp_iterations), "--val-cases", "0", "--cache-dir", str(cache),
                   "--labelled-batch", str(per_process), "--unlabelled-batch", str(per_process)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        steps = [r for r in read_progress(out) if "iteration" in r]
    first, last = steps[0], steps[-1]
    rate = (last["iteration"] - first["iteration"]) / (last["elapsed_s"] - first["elapsed_s"])
    return {"processes": processes, "threads_per_process": threads, "batch_per_process": [per_process] * 2,
            "total_batch": [per_process * processes] * 2, "iterations_per_s": round(rate, 4),
            "samples_per_s": round(rate * 2 * per_process * processes, 3)}


def ddp_report(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = la_folders(args.data, args.labelled, args.unlabelled, Path(tmp) / "data")
        cache = Path(tmp) / "cache"
        runs = []
        for _ in range(args.ddp_repeats):
            for processes in args.ddp:
                runs.append(ddp_iterations_per_second(processes, images, labels, cache, args))
                print(json.dumps(runs[-1]), file=sys.stderr)
    median = {n: statistics.median(r["iterations_per_s"] for r in runs if r["processes"] == n) for n in args.ddp}
    base = median[min(args.ddp)]
    return {"case": "ddp", "backend": "gloo", "iterations": args.ddp_iterations, "runs": runs,
            "iterations_per_s": {str(n): v for n, v in median.items()},
            "speedup": {str(n): round(v / base, 3) for n, v in median.items()},
            "gpu": "none available to this benchmark run" if not torch.cuda.is_available() else "not measured"}


def precision_report(dataset: Dataset, args) -> dict:
    """fp32 against bf16 (autocast, channels-last 3D): the real loop, alternated."""
    from SSLSegmentLib.precision import cpu_supports_bf16  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for name in ("fp32", "bf16"):
            run = RunFolder(Path(tmp) / name)
            run.prepare()
            config = TrainConfig(method="mean_teacher", network="unet", dim="3", iterations=args.iterations,
                                 val_cases=0, device=args.device, precision=name, cache_dir=str(Path(tmp) / "cache"))
            trainers[name] = Trainer(config, dataset, run, logging.getLogger("bench"))
            trainers[name].setup()
            trainers[name].train()  # warm-up
        pairs = []
        for _ in range(args.pairs):
            seconds, cpu = {}, {}
            for name, trainer in trainers.items():
                cpu_started = time.process_time()
                seconds[name] = loop_seconds_per_iteration(trainer)
                cpu[name] = (time.process_time() - cpu_started) / args.iterations
            pairs.append({**{f"{k}_s": round(v, 4) for k, v in seconds.items()},
                          **{f"{k}_cpu_s": round(v, 4) for k, v in cpu.items()},
                          "speedup": round(seconds["fp32"] / seconds["bf16"], 4),
                          "cpu_speedup": round(cpu["fp32"] / cpu["bf16"], 4)})
            print(json.dumps(pairs[-1]), file=sys.stderr)
        trainer = trainers["bf16"]
        return {"case": "precision", "method": "mean_teacher", "network": "unet", "dim": 3,
                "preset": trainer.config.preset, "size": trainer.config.size, "patch": list(trainer.data.patch),
                "batch": list(trainer.batch_sizes), "spacing": list(trainer.data.plan.target_spacing),
                "torch_threads": torch.get_num_threads(), "cpu_native_bf16": cpu_supports_bf16(),
                "bf16_memory_format": str(trainer.memory_format), "pairs": pairs,
                "fp32_s_per_iteration": statistics.median(p["fp32_s"] for p in pairs),
                "bf16_s_per_iteration": statistics.median(p["bf16_s"] for p in pairs),
                "speedup": statistics.median(p["speedup"] for p in pairs),
                "cpu_speedup": statistics.median(p["cpu_speedup"] for p in pairs),
                "note": "wall-clock speed-up (fp32 / bf16 seconds per iteration) and the same in process CPU "
                        "time, which a machine shared with other jobs disturbs less"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "LA" / "train")
    parser.add_argument("--labelled", type=int, default=8)
    parser.add_argument("--unlabelled", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ddp", type=int, nargs="*", default=[], help="process counts for the DDP case, e.g. 1 2")
    parser.add_argument("--ddp-iterations", type=int, default=8)
    parser.add_argument("--ddp-repeats", type=int, default=2)
    parser.add_argument("--total-batch", type=int, default=4, help="labelled (= unlabelled) batch over all processes")
    parser.add_argument("--threads", type=int, help="threads per process in the DDP case (default: cores / processes)")
    parser.add_argument("--skip-loop", action="store_true", help="only the DDP case")
    parser.add_argument("--precision-compare", action="store_true", help="only fp32 against bf16 autocast")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.precision_compare:
        report = precision_report(la_dataset(args.data, args.labelled, args.unlabelled), args)
        print(json.dumps({"benchmark": "throughput", **report}, indent=2))
        return
    if args.skip_loop:
        print(json.dumps({"benchmark": "throughput", "ddp": ddp_report(args)}, indent=2))
        return
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
        "precision": "bf16 autocast" if trainer.amp else "fp32",
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "cpu_count": torch.get_num_threads(),
        "data": str(args.data), "cases": {"labelled": args.labelled, "unlabelled": args.unlabelled},
        "pairs": pairs,
        "loop_s_per_iteration": statistics.median(p["loop_s"] for p in pairs),
        "bare_s_per_iteration": statistics.median(p["bare_s"] for p in pairs),
        "ratio": statistics.median(p["ratio"] for p in pairs),
        "target_ratio": 1.15,
    }
    if args.ddp:
        report["ddp"] = ddp_report(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
