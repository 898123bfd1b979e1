"""The run folder as the training process writes it (the protocol, its file names, states
and readers, is :mod:`SSLSegmentLib.run_protocol`; this class only puts it to use).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .. import run_protocol as protocol
from ..fileio import read_json_object
from ..run_protocol import read_run_status


class RunFolder:
    """``writer=False`` (the ranks other than 0 of a distributed run): every write is skipped,
    the cancel file and the reader side still work."""

    def __init__(self, path: str | os.PathLike, writer: bool = True):
        self.path = Path(path)
        self.writer = writer

    config = property(lambda self: self.path / protocol.CONFIG_FILE)
    progress = property(lambda self: self.path / protocol.PROGRESS_FILE)
    status = property(lambda self: self.path / protocol.STATUS_FILE)
    log = property(lambda self: self.path / protocol.LOG_FILE)
    cancel_file = property(lambda self: self.path / protocol.CANCEL_FILE)
    model = property(lambda self: self.path / protocol.MODEL_FILE)
    predictions = property(lambda self: self.path / protocol.PREDICTIONS_DIR)
    cases = property(lambda self: self.path / protocol.CASES_FILE)
    budget = property(lambda self: self.path / protocol.BUDGET_FILE)

    def checkpoint(self, kind: str) -> Path:
        return self.path / protocol.checkpoint_name(kind)

    def read_cases(self) -> dict | None:
        """``cases.json``: what the run trained on; None when missing or unreadable."""
        return read_json_object(self.cases)

    # --- writer side ----------------------------------------------------------------------
    def prepare(self) -> None:
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if self.cancel_file.exists():
            self.cancel_file.unlink()

    def set_status(self, state: str, error: str | None = None, **extra: Any) -> None:
        if self.writer:
            protocol.write_status(self.path, state, error, **extra)

    def add_progress(self, record: dict) -> None:
        if self.writer:
            protocol.append_progress(self.path, record)

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
        """Every complete record; a corrupt line is skipped (:class:`run_protocol.ProgressReader`)."""
        return protocol.read_progress(self.path)

    def request_cancel(self) -> None:
        protocol.request_cancel(self.path)
