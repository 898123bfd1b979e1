"""The training child process: its environment, its start in a group of its own, and the kill
of its whole process tree (pattern from SlicerMONAIAuto3DSeg and MONAI Label)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from .config import TrainConfig


def child_threads() -> int:
    """CPU threads for the training child: every core but one, which stays with Slicer's
    GUI. Torch's default (one per core) stalls when a core is busy: each step waits for
    the thread that is not running."""
    return max(1, (os.cpu_count() or 2) - 1)


def child_environment(package_parent: str | os.PathLike, device: str = TrainConfig.device) -> dict[str, str]:
    """Environment of the child: finds ``SSLSegmentLib``; no GPU when the CPU is asked for."""
    env = dict(os.environ)
    paths = [str(package_parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"  # the log tail must be current when the child crashes
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


class ProcessHandle(Protocol):
    pid: int

    def poll(self) -> int | None: ...


class ProcessRunner(Protocol):
    """Starts a child process; injected into :class:`Job` so tests can replace it."""

    def __call__(self, command: list[str], cwd: Path, env: dict[str, str],
                 console_path: Path) -> ProcessHandle: ...


def start_process(command: list[str], cwd: Path, env: dict[str, str], console_path: Path) -> subprocess.Popen:
    """Start ``command`` in its own process group, stdout and stderr into ``console_path``.

    Its own group/session so that a kill reaches the child's children (data loader
    workers) and so that Ctrl+C in Slicer's terminal does not reach it.
    """
    console_path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True
    with open(console_path, "ab") as console:
        return subprocess.Popen(command, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                                stdout=console, stderr=subprocess.STDOUT, **kwargs)


def kill_process_tree(pid: int, timeout_s: float = 3.0) -> None:
    """Terminate a process and all its descendants; kill whatever is left after ``timeout_s``."""
    import psutil  # here: Slicer installs it with the other requirements, on first use

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    try:
        processes = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        processes = [parent]
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)
    kill_process_group(pid)


def kill_process_group(pgid: int) -> None:
    """Kill what is left of the child's process group (POSIX).

    Workers whose launcher already exited are no longer its children for psutil, but they
    are still in the group that :func:`start_process` created.
    """
    if sys.platform == "win32" or not hasattr(os, "killpg"):
        return
    try:
        if os.getpgid(pgid) != pgid:
            return  # the group leader's pid was reused: not our group
    except ProcessLookupError:
        pass  # leader gone; its group may still have members
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
