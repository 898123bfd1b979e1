"""Rebuild the label-efficiency bench's run folders from a committed report, so a fresh
machine can go on with the tables instead of training their runs again.

The run folders live in a scratch folder that does not travel between machines. The report
that ``label_efficiency.py`` writes (``label_efficiency*.json`` in ``bench/results``) keeps,
for every table, the budget folder's ``meta.json`` and every finished run's
``bench_result.json``. This writes them back:

    <scratch>/runs/<budget folder>/meta.json
    <scratch>/runs/<budget folder>/<method>/seed<N>/bench_result.json
    <scratch>/tables.json                      (each table -> its budget folder)

After it, ``label_efficiency.py --resume`` at the same settings skips every restored run
(the baselines included) and trains only what is missing, and ``--report-only`` rewrites the
same tables. The models, predictions and logs are not in the report and are not restored.
A run that already holds the same result is left as it is; one that holds another result
(a later run, or another report's table of the same folder) stops the restore with an error
naming it, before anything is written for its table. An existing meta.json gains the
report's planned methods.

    python bench/restore_runs.py --report bench/results/label_efficiency_after_reference_settings.json \\
        --scratch /root/sslbench
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_efficiency as le  # noqa: E402

from SSLSegmentLib.fileio import atomic_write_json  # noqa: E402

REPORT_ONLY_KEYS = ("results", "runs", "wall_s", "key")
"""What ``collect_report`` adds to a folder's meta.json; not part of the folder."""


def settings_of(table: str, meta: dict) -> argparse.Namespace:
    """The bench options that gave the table's budget folder (the inverse of ``budget_of``),
    for reports written before meta.json named its folder."""
    key, device = table.split("/")[:2]
    budget = meta["budget"]
    spacing = float(re.match(r"[\d.]+", meta["spacing"]).group())
    val_cases = re.search(r"--val-cases (\d+)", budget.get("validation", ""))
    iterations = budget["iterations"]
    return argparse.Namespace(
        iterations=iterations, la_iterations=iterations, acdc_spacing=spacing, la_spacing=spacing,
        acdc_patch=budget["patch"], la_patch=budget["patch"],
        acdc_batch=budget["labelled_batch"], la_batch=budget["labelled_batch"], size="small",
        optimiser=budget["optimiser"], lr=budget["lr"], device=device,
        amp=budget.get("precision", "fp32") != "fp32", method_option=budget.get("method_options", []),
        dropout=budget.get("method_dropout"), consistency=budget.get("method_consistency"), val_cases=int(val_cases.group(1)) if val_cases else 0,
        batch_streams=meta.get("batch_streams") or "interleaved",
        acdc_labelled="ssl4mis" if meta.get("split", {}).get("labelled_by", "").startswith("SSL4MIS") else "first")


def folder_of(table: str, meta: dict) -> str:
    """The budget folder's name: as meta.json recorded it, else derived from its settings."""
    return meta.get("folder") or le.runs_root(table.split("/")[0], settings_of(table, meta)).name


def restore(report: dict, scratch: Path) -> dict[str, int]:
    """Write the report's folders and runs under ``scratch``; ``{table: runs restored}``."""
    restored = {}
    for table, meta in report["tables"].items():
        folder = scratch / "runs" / folder_of(table, meta)
        results = {folder / method / f"seed{seed}" / "bench_result.json": result
                   for method, per_seed in meta.get("runs", {}).items() for seed, result in per_seed.items()}
        differing = [str(f) for f, result in results.items() if f.exists() and json.loads(f.read_text()) != result]
        if differing:
            raise SystemExit(f"{table}: {len(differing)} run(s) on disk differ from the report's, e.g. "
                             f"{differing[0]}; restore into another --scratch")
        write_meta(folder, {k: v for k, v in meta.items() if k not in REPORT_ONLY_KEYS})
        missing = {f: result for f, result in results.items() if not f.exists()}
        for result_file, result in missing.items():
            result_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(result_file, result)
        le.register_table(table, folder.name, scratch)
        restored[table] = len(missing)
    return restored


def write_meta(folder: Path, meta: dict) -> None:
    """The folder's meta.json: the report's, or an existing one with the report's planned
    methods added (as ``label_efficiency.start_table`` merges a later command's)."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "meta.json"
    if file.exists():
        earlier = json.loads(file.read_text())
        meta = {**earlier, "planned": le.merged_planned(earlier["planned"], meta["planned"])}
    atomic_write_json(file, meta)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, action="append", required=True,
                        help="a label_efficiency*.json report (repeat for several)")
    parser.add_argument("--scratch", type=Path, default=le.SCRATCH, help="the bench's scratch folder")
    args = parser.parse_args(argv)
    for report in args.report:
        for table, count in restore(json.loads(report.read_text()), args.scratch.resolve()).items():
            print(f"{report.name}: {table}: {count} run(s) restored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
