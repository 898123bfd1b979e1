"""Move a method's runs out of the label-efficiency tables after its default weight changed.

A table's budget folder is named by the bench options (``label_efficiency.runs_root``), not by
each method's own defaults. When a method's default unsupervised weight changes (DAN's from
SSL4MIS's 0.1 to 0.01 at stop 23), its runs in the main tables were made at the old weight:
they would be reported as the method's figure, and ``--resume`` would skip training it again.
This moves them to the folder the bench gives ``--consistency OLD`` (with the table's other
options), registered as the side table ``<table>/<tag>``, with the table's baselines copied
beside them (the same runs). The main table no longer plans the method, and its note says
where the runs went; a table left with only its baselines is no longer reported. Nothing is
deleted, and a folder that already holds the method's runs stops the move before anything is
written.

    python bench/move_runs.py --scratch /root/sslbench --method adversarial --consistency 0.1 \\
        --tag dan-weight0.1 --tables acdc/cpu,acdc/cpu/ssl4mis-split,la/cpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_efficiency as le  # noqa: E402
from restore_runs import REPORT_ONLY_KEYS, settings_of  # noqa: E402

from SSLSegmentLib.fileio import atomic_write_json  # noqa: E402


def side_folder(table: str, meta: dict, consistency: float) -> str:
    """The budget folder ``label_efficiency.py`` uses for the table's options plus ``--consistency``."""
    settings = settings_of(table, meta)
    settings.consistency = consistency
    return le.runs_root(table.split("/")[0], settings).name


def move(scratch: Path, table: str, method: str, consistency: float, tag: str) -> str:
    """Move ``method``'s runs of ``table`` to its side table; returns the side table's name."""
    folder = scratch / "runs" / le.load_tables(scratch)[table]
    meta = json.loads((folder / "meta.json").read_text())
    if not (folder / method).is_dir():
        raise SystemExit(f"{table}: no {method} runs in {folder}")
    side = scratch / "runs" / side_folder(table, meta, consistency)
    if (side / method).exists():
        raise SystemExit(f"{table}: {side / method} exists already; nothing moved")
    side_table = f"{table}/{tag}"
    side.mkdir(parents=True, exist_ok=True)
    for baseline in le.BASELINES:
        if (folder / baseline).is_dir():
            shutil.copytree(folder / baseline, side / baseline, dirs_exist_ok=True)
    budget = {**meta["budget"], "method_consistency": consistency}
    moved_note = f"{method}'s runs at --consistency {consistency:g}, moved here from table {table} when its default changed"
    atomic_write_json(side / "meta.json", {
        **{k: v for k, v in meta.items() if k not in REPORT_ONLY_KEYS}, "budget": budget,
        "planned": [*le.BASELINES, method], "folder": side.name,
        "note": f"{moved_note}; the baselines are that table's (the same runs). {meta.get('note', '')}".strip()})
    (folder / method).rename(side / method)
    atomic_write_json(folder / "meta.json", {
        **meta, "planned": [m for m in meta["planned"] if m != method],
        "note": f"{meta.get('note', '')} {method}'s runs here were at --consistency {consistency:g}; "
                f"since its default changed they are in table {side_table}.".strip()})
    le.register_table(side_table, side.name, scratch)
    if set(meta["planned"]) - {method} <= set(le.BASELINES):  # nothing left but the baselines' copies
        le.register_table(table, None, scratch)
    return side_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=le.SCRATCH, help="the bench's scratch folder")
    parser.add_argument("--method", required=True)
    parser.add_argument("--consistency", type=float, required=True, help="the weight the runs were made at")
    parser.add_argument("--tag", required=True, help="the side tables' name, e.g. dan-weight0.1")
    parser.add_argument("--tables", required=True, help="comma-separated tables, e.g. acdc/cpu,la/cpu")
    args = parser.parse_args(argv)
    for table in args.tables.split(","):
        print(f"{table}: {args.method} -> {move(args.scratch.resolve(), table, args.method, args.consistency, args.tag)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
