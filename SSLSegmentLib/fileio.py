"""Atomic file writing: a reader never sees a half-written file.

Every output is written to a temporary name in the same folder and renamed into place,
so a crash or a cancel leaves either the previous file or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import OutputError

# Errors of the output location, not of the program: reported with the path and a fix.
_OUTPUT_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.EFBIG: "the file is too large for the file system",
                  errno.EIO: "input/output error", errno.ENOTDIR: "a file is in the way of the folder",
                  errno.EEXIST: "a file is in the way of the folder", errno.EISDIR: "a folder has that name"}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, verify: Callable[[Path], None] | None = None,
                allow_empty: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps the full suffix (``.seg.nrrd``, ``.nii.gz``) so that writers
    that pick a format from the extension still work. Before the rename, the file must be
    non-empty (unless ``allow_empty``) and pass ``verify`` (e.g. read it back): some writers
    (SimpleITK's) do not raise when the disk is full, and the rename would publish an empty
    or truncated file under the final name. Write failures of the location (full disk,
    read-only folder, no permission) become :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes) or ".tmp"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        check_written(tmp_path, path, verify, allow_empty)
        os.replace(tmp_path, path)
    except OutputError:
        raise
    except OSError as error:
        if error.errno not in _OUTPUT_ERRNOS:
            raise
        raise OutputError(f"{path}: could not write it ({_OUTPUT_ERRNOS[error.errno]}: {error.strerror}); "
                          "free space or choose a writable location") from error
    except Exception as error:  # writers that wrap ENOSPC in their own errors (torch.save, ITK)
        if not _disk_full(path.parent):
            raise
        raise OutputError(f"{path}: could not write it (the disk is full: {error.__class__.__name__}); free space "
                          "and run again") from error
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def check_written(tmp_path: Path, path: Path, verify: Callable[[Path], None] | None = None,
                  allow_empty: bool = False) -> None:
    """OutputError naming ``path`` when its temporary file is empty or fails ``verify``."""
    if not allow_empty and tmp_path.stat().st_size == 0:
        raise OutputError(f"{path}: the writer produced an empty file (is the disk full?); nothing was "
                          "replaced. Free space and run again")
    if verify is not None:
        try:
            verify(tmp_path)
        except Exception as error:  # any reader error means the bytes on disk are not the data
            raise OutputError(f"{path}: the file written does not read back ({error.__class__.__name__}: "
                              f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}); is the disk "
                              "full? Nothing was replaced. Free space and run again") from error


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path, allow_empty=not text) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it, so a polling reader sees whole records only."""
    line = json.dumps(record) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()



def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file; ``default`` when it is missing or half-written (never raises)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_json_object(path: str | os.PathLike) -> dict | None:
    """A JSON file holding an object; None when it is missing, half-written or not an object."""
    data = read_json(path)
    return data if isinstance(data, dict) else None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in chunks (volumes can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
