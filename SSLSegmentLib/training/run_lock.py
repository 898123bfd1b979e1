"""One run per run folder: a lock held for the life of the training process, and the rule
that a folder's files belong to one run.

The lock is an advisory lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on
``run.lock`` inside the folder, held through an open file: the kernel releases it when the
process ends in any way, SIGKILL included, so a dead run never blocks the folder, and a
live one always does. The process id written into the file only serves the message.
Under ``torchrun`` rank 0 takes the lock for all ranks (they share the folder).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import InputError
from ..run_protocol import (  # noqa: F401  (folder_in_use: re-exported beside the lock)
    CANCELLED, FAILED, LOCK_FILE, MODEL_FILE, PREDICTIONS_DIR, PROGRESS_FILE, RUN_FILES, folder_in_use, is_checkpoint,
    read_status, try_lock,
)

_HELD: list = []
"""Lock files this process holds open."""


def _forget_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the inherited lock files, so that the
    lock lives exactly as long as the training process (a worker outliving a SIGKILLed
    parent by a few seconds must not keep the folder locked). Closing without unlocking
    leaves the parent's lock in place."""
    for handle in _HELD:
        try:
            handle.close()
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


class RunFolderBusy(InputError):
    """Another live process trains into this folder."""


class RunLock:
    """The lock of one run folder, held from :meth:`acquire` until the process ends (or
    :meth:`release`)."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_FILE
        self._handle = None

    def acquire(self) -> None:
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the life of the run
        if not try_lock(handle):
            try:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
            except OSError:  # Windows: the locked byte cannot be read
                holder = "unknown"
            handle.close()
            raise RunFolderBusy(f"{self.path.parent}: another training run (process {holder}) is writing into this "
                                "run folder; wait for it to end, cancel it, or give another --out")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        _HELD.append(handle)

    def release(self) -> None:
        if self._handle is not None:
            _HELD.remove(self._handle)
            self._handle.close()  # closing the file releases the lock
            self._handle = None


def run_files(folder: Path) -> list[Path]:
    """The files of an earlier run in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name in RUN_FILES or
                  is_checkpoint(p.name))


def create_run_folder(folder: Path) -> None:
    """``folder`` created (with its parents), or InputError naming what stands in the way."""
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == folder else f"lies under {parent}, which is"
            raise InputError(f"--out {folder} {where} a file, not a folder; give a folder for the run")
        if parent.exists():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or error.__class__.__name__
        raise InputError(f"--out {folder}: cannot write the run folder ({reason}); give a folder you can write to"
                         ) from error


def claim_run_folder(folder: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Create and lock ``folder`` for a new run (or for resuming the run in it).

    A folder holding an earlier run is refused unless ``resume`` (go on with it) or
    ``overwrite`` (its run files are deleted first, so no stale ``model.pt`` can outlive a
    failed new run). Returns the held lock.
    """
    folder = Path(folder)
    create_run_folder(folder)
    lock = RunLock(folder)
    try:
        lock.acquire()
    except OSError as error:
        raise InputError(f"--out {folder}: cannot create {LOCK_FILE} ({error.strerror or error})") from error
    try:
        _check_previous_run(folder, resume, overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def _nothing_to_keep(folder: Path, previous: list[Path]) -> bool:
    """An earlier attempt that failed or was cancelled before it trained anything (no model,
    checkpoint, progress or prediction): a rerun after fixing the input may replace it."""
    trained = {MODEL_FILE, PROGRESS_FILE, PREDICTIONS_DIR}
    if any(p.name in trained or is_checkpoint(p.name) for p in previous):
        return False
    return (read_status(folder) or {}).get("state") in (FAILED, CANCELLED)


def _check_previous_run(folder: Path, resume: bool, overwrite: bool) -> None:
    previous = run_files(folder)
    if resume:
        return
    if previous and not overwrite and not _nothing_to_keep(folder, previous):
        names = ", ".join(p.name for p in previous[:5]) + (", ..." if len(previous) > 5 else "")
        raise InputError(f"--out {folder} already holds a training run ({names}); give --resume {folder} to go on "
                         "with it, --overwrite to replace it, or another --out")
    for path in previous:  # --overwrite: nothing of the old run may pass for the new one's
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
