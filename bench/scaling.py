"""Peak memory of a training run as the cohort grows: it must stay flat.

Each cohort size runs in a fresh child process (``mean_teacher``, 3D, the default CPU preset)
on the first N cases of ``../shared/data/LA``: a quarter labelled (one of them held out for
validation), the rest used as unlabelled. The children share one preprocessed-case cache,
first empty (``cold``: the run preprocesses every case, one at a time) then filled
(``warm``: the run only memory-maps). Each child reports, in MiB:

- ``peak_rss``: the process's peak resident set (``VmHWM``), including the pages of the
  memory-mapped cache that patches touched;
- ``peak_anon``: the peak of its anonymous memory (``RssAnon`` sampled every 20 ms), the
  part the kernel cannot drop;
- ``baseline_rss``: resident set after imports, before any data;
- ``in_memory_equivalent``: what holding the preprocessed cohort in memory would take
  (float32 images, int64 labels: the engine before the cache).

    .venv/bin/python bench/scaling.py [--data ../shared/data/LA/train] [--cases 10 40 80] [--iterations 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class AnonPeak(threading.Thread):
    """Samples ``RssAnon`` (what the kernel cannot reclaim) until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self._halt = 0, threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, _status_kib("RssAnon"))
            time.sleep(0.02)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return max(self.peak, _status_kib("RssAnon"))


def child(args) -> dict:
    """One training run on ``args.child`` cases; prints its memory figures as JSON."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from SSLSegmentLib.config import TrainConfig  # noqa: PLC0415
    from SSLSegmentLib.data.cases import Dataset, discover_dataset  # noqa: PLC0415
    from SSLSegmentLib.training.lifecycle import train_run  # noqa: PLC0415
    from SSLSegmentLib.training.run_folder import RunFolder  # noqa: PLC0415

    baseline = _status_kib("VmRSS")
    sampler = AnonPeak()
    sampler.start()
    full = discover_dataset(args.data / "images", args.data / "labels")
    cases = full.labelled[:args.child]
    n_labelled = max(3, len(cases) // 4)
    dataset = Dataset(labelled=cases[:n_labelled],
                      unlabelled=[type(c)(c.name, c.image, None) for c in cases[n_labelled:]], classes=full.classes)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunFolder(Path(tmp) / "run")
        config = TrainConfig(method="mean_teacher", network="unet", dim="3", iterations=args.iterations, val_cases=1,
                             val_interval=args.iterations, device="cpu", cache_dir=str(args.cache))
        started = time.perf_counter()
        trained = train_run(run, lambda: (config, dataset))  # status.json, progress, log.txt as `sslsegment train`
        setup_s = trained.setup_s
        train_s = time.perf_counter() - started - setup_s
    anon = sampler.stop()
    data = trained.data
    everything = data.train + data.validation + data.unlabelled
    in_memory = sum(int(np.prod(c.shape)) * (4 + (8 if c.labelled else 0)) for c in everything)
    return {"cases": len(cases), "labelled": n_labelled, "cache": data.cache, "patch": list(data.patch),
            "batch": list(trained.batch_sizes), "setup_s": round(setup_s, 1), "train_s": round(train_s, 1),
            "baseline_rss": round(baseline / 1024, 1), "peak_rss": round(_status_kib("VmHWM") / 1024, 1),
            "peak_anon": round(anon / 1024, 1), "in_memory_equivalent": round(in_memory / 2**20, 1),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "LA" / "train")
    parser.add_argument("--cases", type=int, nargs="+", default=[10, 40, 80])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for phase in ("cold", "warm"):
            for count in args.cases:
                command = [sys.executable, __file__, "--child", str(count), "--data", str(args.data), "--iterations",
                           str(args.iterations), "--cache", str(Path(cache) / f"n{count}")]
                result = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, check=False)
                if result.returncode != 0:
                    raise SystemExit(result.stderr[-3000:])
                row = {"phase": phase, **json.loads(result.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    warm = [r for r in rows if r["phase"] == "warm"]
    report = {
        "benchmark": "scaling", "machine": platform.machine(), "cpu_count": os.cpu_count(), "data": str(args.data),
        "iterations": args.iterations, "runs": rows,
        "peak_rss_growth_mib": round(warm[-1]["peak_rss"] - warm[0]["peak_rss"], 1),
        "peak_anon_growth_mib": round(warm[-1]["peak_anon"] - warm[0]["peak_anon"], 1),
        "in_memory_equivalent_growth_mib": round(warm[-1]["in_memory_equivalent"] - warm[0]["in_memory_equivalent"], 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
