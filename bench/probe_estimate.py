"""What the references' budget (``label_efficiency.py --preset ssl4mis``: 30,000 iterations) would
take, from a short probe of the same runs side by side (``bench/device_run.sh``).

    python bench/probe_estimate.py SCRATCH [ITERATIONS]

Reads every run's ``bench_result.json`` under SCRATCH and prints, per run, the training loop's
seconds per iteration (``loop_s_per_iteration``: no start-up, caching or prediction) and the
loop time at ITERATIONS (default 30,000). The runs shared the GPU as the full preset would, so
the slowest of them estimates the wall time of the whole preset (plus a minute or two of
start-up and prediction).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    scratch, iterations = Path(argv[0]), int(argv[1]) if len(argv) > 1 else 30000
    rows = []
    for result_file in sorted(scratch.glob("runs/*/*/seed*/bench_result.json")):
        result = json.loads(result_file.read_text())
        per_iteration = result.get("loop_s_per_iteration")
        if per_iteration:
            rows.append((result_file.parent.parent.name, per_iteration))
    if not rows:
        print(f"{scratch}: no finished probe run")
        return 0
    for method, per_iteration in rows:
        print(f"probe {method}: {per_iteration:.4f} s/it in the loop -> {per_iteration * iterations / 60:.1f} min "
              f"for {iterations} iterations")
    slowest = max(per for _, per in rows)
    print(f"probe estimate: the {len(rows)} runs side by side at {iterations} iterations take about "
          f"{slowest * iterations / 60:.0f} min of training (the slowest run), plus start-up and prediction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
