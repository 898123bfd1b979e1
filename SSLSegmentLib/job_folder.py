"""The job folder's files: paths, ``job.json`` and ``round.json``, case checksums, round summaries
(layout in :mod:`SSLSegmentLib.jobs`). Generic: imports neither ``slicer`` nor ``qt``."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from .fileio import atomic_write_json, file_sha256, read_json
from .run_protocol import MODEL_FILE, PROGRESS_FILE, ProgressReader, read_run_status

#: Seconds a cancelled child gets to stop cleanly before its process tree is killed.
CANCEL_GRACE_S = 5.0


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")



class JobFolder:
    """Paths and bookkeeping files of one job folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def job_file(self) -> Path:
        return self.root / "job.json"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def labels_dir(self, round_number: int) -> Path:
        return self.root / "labels" / f"{round_number:03d}"

    def round_dir(self, round_number: int) -> Path:
        return self.root / "rounds" / f"{round_number:03d}"

    def rounds(self) -> list[int]:
        """Round numbers that exist, ascending."""
        rounds_dir = self.root / "rounds"
        if not rounds_dir.is_dir():
            return []
        return sorted(int(p.name) for p in rounds_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def next_round(self) -> int:
        existing = self.rounds()
        return existing[-1] + 1 if existing else 1

    def read_job(self) -> dict:
        return read_json(self.job_file, default={"classes": [], "cases": {}})

    def write_job(self, job: dict) -> None:
        atomic_write_json(self.job_file, job)

    def read_round(self, round_number: int) -> dict:
        return read_json(self.round_dir(round_number) / "round.json", default={})

    def write_round(self, round_number: int, info: dict) -> None:
        atomic_write_json(self.round_dir(round_number) / "round.json", info)

    def history(self) -> list[dict]:
        """One summary per round: state, previous round, label set size, last metrics."""
        return [round_summary(self.round_dir(n), self.read_round(n)) for n in self.rounds()]


def case_manifest(folder: JobFolder, cases: dict[str, dict]) -> dict[str, dict]:
    """Add SHA-256 checksums of each case's image and label files (paths relative to the job)."""
    manifest = {}
    for name, case in cases.items():
        entry = dict(case)
        for key in ("image", "label"):
            if entry.get(key):
                entry[key + "Sha256"] = file_sha256(folder.root / entry[key])
        manifest[name] = entry
    return manifest


def round_summary(run_dir: Path, info: dict) -> dict:
    """What the history view shows for one round."""
    status = read_run_status(run_dir) or {}  # "interrupted" when its process is gone
    records = ProgressReader(run_dir / PROGRESS_FILE).read_new()
    dice = [r["val_dice"] for r in records if r.get("val_dice") is not None]
    steps = [r for r in records if "iteration" in r]
    cases = info.get("cases", {})
    return {
        "round": info.get("round"),
        "previousRound": info.get("previousRound"),
        "state": status.get("state", "unknown"),
        "started": info.get("started"),
        "labelled": sorted(n for n, c in cases.items() if c.get("label")),
        "corrected": sorted(n for n, c in cases.items() if c.get("corrected")),
        "settings": info.get("settings", {}),
        "iterations": steps[-1]["iteration"] if steps else 0,
        "valDice": dice[-1] if dice else None,
        "bestValDice": status.get("best_val_dice"),
        "warnings": status.get("warnings", []),
        "model": str(run_dir / MODEL_FILE) if (run_dir / MODEL_FILE).exists() else None,
    }
