"""Helpers of the browser tests: a real `sslsegment serve` child process and Debian's Chromium
driven by playwright (``executable_path``: playwright cannot download its own browsers here)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    given = os.environ.get("SSLSEGMENT_CHROMIUM")
    if given and Path(given).exists():
        return given
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_browser_reason() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    for module, extra in (("trame_slicer", "web"), ("playwright", "test")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[{extra}]')"
    if chromium_path() is None:
        return "no Chromium (Debian: apt-get install chromium; or set SSLSEGMENT_CHROMIUM)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m SSLSegmentLib serve ...` in its own process group; ``url`` once it listens."""

    def __init__(self, *args: str, cwd: Path, timeout_s: float = 90):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "OMP_NUM_THREADS": "1"}
        self.log_path = Path(cwd) / f"serve-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "SSLSegmentLib", "serve", "--port", str(self.port),
                                         *args], cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.url = self._wait_for_announce(timeout_s)

    def _wait_for_announce(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if "browser UI on http" in line:
                    return line.split(" on ", 1)[1].strip().replace("<this machine's address>", "127.0.0.1")
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise AssertionError(f"serve did not announce itself in {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(line for line in text if "vtkImageReslice" not in line)[-6000:]

    def crash(self) -> None:
        """SIGKILL the server (its group): what a crash leaves. Training processes, in their own
        sessions, live on."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()


def image_stats(png: bytes, chroma_threshold: int = 40) -> dict:
    """Brightness spread and share of coloured pixels of a screenshot (the scans are grey,
    so coloured pixels are the label or prediction overlay)."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    h, w = rgb.shape[:2]
    rgb = rgb[h // 10: h - h // 10, w // 10: w - w // 10]  # not the view's buttons and slider
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    grey = rgb.mean(axis=2)
    return {"std": float(grey.std()), "coloured": float((chroma > chroma_threshold).mean()), "mean": float(grey.mean())}
