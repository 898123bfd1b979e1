"""Resume after SIGKILL against an uninterrupted run: same weights, same Dice.

Writes a phantom dataset (or uses ``--images/--labels/--test-images/--test-labels``), trains
it twice with the same seed through the real command line: once straight through, once
killed with SIGKILL after ``--kill-at`` iterations and then continued with ``--resume``.
Both models predict the test cases; prints JSON with the iteration the run was killed at,
the largest weight difference, and each run's mean foreground Dice. Target (issue 13): the
Dice within 0.01. Measured on this project's 2-core CPU machine (phantoms 32x48x48,
``--iterations 100 --kill-at 50 --size tiny --checkpoint-interval 10``): killed at
iteration 50, status read back as ``interrupted``, resumed weights bit-identical to the
straight run (largest difference 0.0), Dice 0.4639 both, 262 s in all.

    .venv/bin/python bench/resume_check.py [--iterations 200] [--kill-at 100] [--method mean_teacher]
                                           [--size small] [--checkpoint-interval 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SSLSegmentLib.evaluation import evaluate_folders  # noqa: E402
from SSLSegmentLib.phantoms import write_phantom_dataset  # noqa: E402
from SSLSegmentLib.training.run_folder import RunFolder  # noqa: E402


def cli(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "SSLSegmentLib", *map(str, args)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"exit {process.returncode}: {err[-2000:]}")


def last_iteration(run: RunFolder) -> int:
    steps = [r["iteration"] for r in run.read_progress() if "iteration" in r]
    return steps[-1] if steps else 0


def mean_dice(model: Path, test_images: Path, test_labels: Path, out: Path) -> float:
    finish(cli("predict", "--model", model, "--images", test_images, "--out", out, "--device", "cpu",
               "--threads", "1"))
    return evaluate_folders(out, test_labels)["mean"]["all"]["dice"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--kill-at", type=int, default=100)
    parser.add_argument("--method", default="mean_teacher")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--checkpoint-interval", type=int, default=20)
    for name in ("images", "labels", "test-images", "test-labels"):
        parser.add_argument(f"--{name}", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sslsegment-resume-"))
    if args.images is None:
        data = write_phantom_dataset(work / "data", n_labelled=3, n_unlabelled=4, n_test=3, shape=(32, 48, 48))
        args.images, args.labels = data["images"], data["labels"]
        args.test_images, args.test_labels = data["test_images"], data["test_labels"]
    common = ["train", "--images", args.images, "--labels", args.labels, "--iterations", args.iterations,
              "--method", args.method, "--size", args.size, "--device", "cpu", "--threads", "1", "--seed", "5",
              "--checkpoint-interval", args.checkpoint_interval]
    started = time.monotonic()
    finish(cli(*common, "--out", work / "straight"))
    killed = cli(*common, "--out", work / "killed")
    run = RunFolder(work / "killed")
    while last_iteration(run) < args.kill_at and killed.poll() is None:
        time.sleep(0.05)
    killed_at = last_iteration(run)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    state_after_kill = run.read_status()["state"]
    finish(cli("train", "--resume", work / "killed", "--threads", "1"))
    straight = torch.load(work / "straight" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(work / "killed" / "model.pt", weights_only=True)["state_dict"]
    difference = max(float((straight[k].float() - resumed[k].float()).abs().max()) for k in straight)
    dice = {name: mean_dice(work / name / "model.pt", args.test_images, args.test_labels, work / f"pred-{name}")
            for name in ("straight", "killed")}
    print(json.dumps({"method": args.method, "iterations": args.iterations, "killed_at_iteration": killed_at,
                      "state_after_kill": state_after_kill, "max_weight_difference": difference,
                      "dice_straight": round(dice["straight"], 4), "dice_resumed": round(dice["killed"], 4),
                      "dice_difference": round(abs(dice["straight"] - dice["killed"]), 4),
                      "seconds": round(time.monotonic() - started, 1), "work": str(work)}, indent=2))


if __name__ == "__main__":
    main()
