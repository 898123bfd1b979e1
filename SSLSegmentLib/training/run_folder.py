"""The run folder: the only channel between a training process and whoever watches it.

The training process writes; the command line, the Slicer logic and tests only read.
Every file is replaced atomically (progress is appended a whole line at a time), so a
reader polling at any moment sees complete records. A file named ``cancel`` written by
the watcher asks the run to stop at the next iteration.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..fileio import append_jsonl, atomic_write_json

STATES = ("running", "done", "failed", "cancelled")
INTERRUPTED = "interrupted"
"""What readers report for a status left at ``running`` by a process that is gone (SIGKILL,
power loss, full disk): never written, only read. ``train --resume`` goes on from it."""


class RunFolder:
    """``writer=False`` (the ranks other than 0 of a distributed run): every write is skipped,
    the cancel file and the reader side still work."""

    def __init__(self, path: str | os.PathLike, writer: bool = True):
        self.path = Path(path)
        self.writer = writer

    config = property(lambda self: self.path / "config.json")
    progress = property(lambda self: self.path / "progress.jsonl")
    status = property(lambda self: self.path / "status.json")
    log = property(lambda self: self.path / "log.txt")
    cancel_file = property(lambda self: self.path / "cancel")
    model = property(lambda self: self.path / "model.pt")
    predictions = property(lambda self: self.path / "predictions")

    def checkpoint(self, kind: str) -> Path:
        return self.path / f"checkpoint_{kind}.pt"

    # --- writer side ----------------------------------------------------------------------
    def prepare(self) -> None:
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if self.cancel_file.exists():
            self.cancel_file.unlink()

    def set_status(self, state: str, error: str | None = None, **extra: Any) -> None:
        assert state in STATES, state
        if not self.writer:
            return
        record = {"state": state, "error": error, "pid": os.getpid(),
                  "updated": datetime.datetime.now().isoformat(timespec="seconds"), **extra}
        atomic_write_json(self.status, record)

    def add_progress(self, record: dict) -> None:
        if not self.writer:
            return
        append_jsonl(self.progress, record)

    def cancel_requested(self) -> bool:
        return self.cancel_file.exists()

    def logger(self) -> logging.Logger:
        """A logger writing to ``log.txt`` (and to the console, by the CLI's own handler)."""
        logger = logging.getLogger(f"sslsegment.run.{self.path.resolve()}")
        logger.setLevel(logging.INFO)
        logger.propagate = True
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            if not self.log.exists():  # an earlier run's log, deleted by --overwrite: start the new one
                logger.removeHandler(handler)
                handler.close()
        if self.writer and not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
            handler = logging.FileHandler(self.log, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        return logger

    # --- reader side ----------------------------------------------------------------------
    def read_status(self) -> dict | None:
        """The status; ``running`` becomes ``interrupted`` when no live process holds the run."""
        return read_run_status(self.path)

    def read_progress(self) -> list[dict]:
        if not self.progress.exists():
            return []
        records = []
        for line in self.progress.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line still being written
        return records

    def request_cancel(self) -> None:
        self.cancel_file.write_text("cancel\n", encoding="utf-8")


def read_run_status(folder: str | os.PathLike) -> dict | None:
    """``status.json`` of a run folder, its state ``interrupted`` when it says ``running`` but
    the process is gone (the folder's lock is free; without a lock file, the pid is dead)."""
    from .run_lock import LOCK_NAME, folder_in_use  # noqa: PLC0415

    folder = Path(folder)
    try:
        status = json.loads((folder / "status.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(status, dict) or status.get("state") != "running":
        return status
    alive = folder_in_use(folder) if (folder / LOCK_NAME).exists() else _pid_alive(status.get("pid"))
    if not alive:
        status = {**status, "state": INTERRUPTED,
                  "error": status.get("error") or "the training process ended without a final status (killed?); "
                                                  f"go on with `sslsegment train --resume {folder}`"}
    return status


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate it there; without a lock file, assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
