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
        if self.writer and not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
            handler = logging.FileHandler(self.log, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        return logger

    # --- reader side ----------------------------------------------------------------------
    def read_status(self) -> dict | None:
        try:
            return json.loads(self.status.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

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
