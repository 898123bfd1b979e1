"""The run-folder protocol: the only channel between a process that works in a folder
(``sslsegment train``, ``predict``, the demo) and whoever watches it (the command line,
the Slicer panel, the web UI, tests, benches). Written once, here; torch-free and light,
so every side imports its names from this module.

The working process writes; watchers only read, apart from the ``cancel`` file, which asks
the run to stop at its next iteration. Every file is replaced atomically and progress is
appended a whole line at a time, so a reader polling at any moment sees complete records:

    status.json     {"state": running|done|failed|cancelled, "error", "pid", "updated", ...}
    progress.jsonl  one JSON object a line: training steps, events, phases
    log.txt         the run's log
    config.json  cases.json  command.json  budget.json   what the run trained with
    model.pt  checkpoint_<kind>.pt  predictions/         what it made
    run.lock        held (flock) by the live training process
    cancel          written by a watcher

A status left at ``running`` by a process that is gone reads as ``interrupted``.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from .fileio import append_jsonl, atomic_write_json, read_json_object

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

# --- files ---------------------------------------------------------------------------------
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
PROGRESS_FILE = "progress.jsonl"
LOG_FILE = "log.txt"
CANCEL_FILE = "cancel"
MODEL_FILE = "model.pt"
PREDICTIONS_DIR = "predictions"
CASES_FILE = "cases.json"
COMMAND_FILE = "command.json"
BUDGET_FILE = "budget.json"
LOCK_FILE = "run.lock"
_CHECKPOINT_PREFIX, _CHECKPOINT_SUFFIX = "checkpoint_", ".pt"
RESUME_CHECKPOINT = "resume"
"""The kind of ``checkpoint_resume.pt``, what ``train --resume`` goes on from."""

RUN_FILES = (STATUS_FILE, CONFIG_FILE, CASES_FILE, COMMAND_FILE, BUDGET_FILE, PROGRESS_FILE, LOG_FILE, MODEL_FILE,
             CANCEL_FILE, PREDICTIONS_DIR)
"""What a training run writes into its folder (besides checkpoints); anything else (a Slicer
round's ``round.json`` and ``console.txt``) belongs to whoever put it there."""


def checkpoint_name(kind: str) -> str:
    return f"{_CHECKPOINT_PREFIX}{kind}{_CHECKPOINT_SUFFIX}"


def is_checkpoint(name: str) -> bool:
    return name.startswith(_CHECKPOINT_PREFIX) and name.endswith(_CHECKPOINT_SUFFIX)


# --- states --------------------------------------------------------------------------------
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
STATES = (RUNNING, DONE, FAILED, CANCELLED)
"""What a working process writes into ``status.json``."""
TERMINAL_STATES = (DONE, FAILED, CANCELLED)
INTERRUPTED = "interrupted"
"""What readers report for a status left at ``running`` by a process that is gone (SIGKILL,
power loss, full disk): never written, only read. ``train --resume`` goes on from it."""


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 3
"""The working process's exit code, which agrees with its final state: 0 done, 1 failed (a
crash, a diverged training), 2 failed on bad input (the error names the case, file or
setting), 3 cancelled."""


# --- writer side ---------------------------------------------------------------------------
def write_status(folder: str | os.PathLike, state: str, error: str | None = None, **extra: Any) -> None:
    """Replace ``status.json`` atomically with ``state`` (one of :data:`STATES`)."""
    if state not in STATES:
        raise ValueError(f"{state!r} is not a run state {STATES}")
    record = {"state": state, "error": error, "pid": os.getpid(),
              "updated": datetime.datetime.now().isoformat(timespec="seconds"), **extra}
    atomic_write_json(Path(folder) / STATUS_FILE, record)


def append_progress(folder: str | os.PathLike, record: dict) -> None:
    """Append one record to ``progress.jsonl`` as one whole, flushed line."""
    append_jsonl(Path(folder) / PROGRESS_FILE, record)


def request_cancel(folder: str | os.PathLike) -> None:
    """The watcher's one write: ask the run to stop at its next iteration."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    (Path(folder) / CANCEL_FILE).write_text(stamp + "\n", encoding="utf-8")


# --- reader side ---------------------------------------------------------------------------
class ProgressReader:
    """The records appended to ``progress.jsonl`` since the last call.

    Only whole lines are parsed, so a record still being written is picked up, complete,
    by a later call. A corrupt line (not a JSON object: a torn write after a crash, a
    stray edit) is skipped and counted in :attr:`skipped`: a watcher must go on showing
    the records after it, not stop at it. A file replaced or truncated under the reader
    (a run started again in the same folder with ``--overwrite``) is read again from its
    start, counted in :attr:`restarts`, instead of from the middle of a line.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.skipped = 0
        self.restarts = 0
        self._offset = 0
        self._identity: tuple[int, int] | None = None

    def read_new(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                self._follow(os.fstat(f.fileno()))
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        records = []
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # includes UnicodeDecodeError
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                self.skipped += 1
        return records

    def _follow(self, stat: os.stat_result) -> None:
        """Starts again at offset 0 when the file is another one or shorter than the offset."""
        identity = (stat.st_dev, stat.st_ino)
        replaced = self._identity is not None and identity != self._identity
        if replaced or stat.st_size < self._offset:
            self._offset = 0
            self.restarts += 1
        self._identity = identity


SHORT_RUN = "short_run"
"""The ``key`` of the progress events that warn of a run too short for its method."""


def current_warnings(records: list[dict]) -> list[str]:
    """The warnings a run stands by, from its progress records, in the order first given: a
    warning event with a ``key`` replaces the earlier one of that key (a time budget's new
    count), and one whose ``message`` is None withdraws it."""
    current: dict[str, str | None] = {}
    for record in records:
        if record.get("event") == "warning":
            current[record.get("key") or record.get("message") or ""] = record.get("message")
    return [message for message in current.values() if message]


def read_progress(folder: str | os.PathLike) -> list[dict]:
    """Every complete progress record of the run in ``folder`` (the reader's rule)."""
    return ProgressReader(Path(folder) / PROGRESS_FILE).read_new()


def read_status(folder: str | os.PathLike) -> dict | None:
    """``status.json`` as written; None when missing, half-written or not a JSON object."""
    return read_json_object(Path(folder) / STATUS_FILE)


def read_run_status(folder: str | os.PathLike) -> dict | None:
    """:func:`read_status`, its state ``interrupted`` when it says ``running`` but the
    process is gone (the folder's lock is free; without a lock file, the pid is dead)."""
    folder = Path(folder)
    status = read_status(folder)
    if status is None or status.get("state") != RUNNING:
        return status
    alive = folder_in_use(folder) if (folder / LOCK_FILE).exists() else _pid_alive(status.get("pid"))
    if not alive:
        status = {**status, "state": INTERRUPTED,
                  "error": status.get("error") or "the training process ended without a final status (killed?); "
                                                  f"go on with `sslsegment train --resume {folder}`"}
    return status


# --- the lock, as readers see it (held by training.run_lock) -------------------------------
def try_lock(handle) -> bool:
    """Take the advisory lock on the open file ``handle``; False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def folder_in_use(folder: str | os.PathLike) -> bool:
    """True while a live process holds the folder's lock (a reader's question: is the run
    whose status says ``running`` still alive?)."""
    path = Path(folder) / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115
    except OSError:
        return False
    try:
        return not try_lock(handle)
    finally:
        handle.close()


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
