"""``status.json`` for ``sslsegment predict``, so that whoever started it learns how it ended.

The Slicer panel runs ``predict`` in a child process and polls its output folder, as it
does for training (:mod:`SSLSegmentLib.run_protocol`): ``status.json`` says
``running``, then ``done``, ``failed`` (with the error) or ``cancelled``. A file named
``cancel`` in the output folder, or SIGTERM, stops the run as ``cancelled`` (exit 3).
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
from typing import Callable

from .errors import InputError
from .prediction_outputs import prepare_output_folder
from .run_protocol import CANCELLED, DONE, EXIT_CANCELLED, FAILED, RUNNING
from .training.run_folder import RunFolder

CANCEL_POLL_S = 0.5


class _CancelWatcher(threading.Thread):
    """Interrupts the main thread (KeyboardInterrupt) once the ``cancel`` file appears.

    It simulates SIGTERM, whose handler :func:`run_reporting_status` installs, not SIGINT: a
    process started in the background by a shell ignores SIGINT, and ``interrupt_main`` does
    nothing for an ignored signal, so the cancel file would go unnoticed."""

    def __init__(self, run: RunFolder):
        super().__init__(daemon=True, name="sslsegment-cancel-watcher")
        self.folder = run
        self.stopped = threading.Event()

    def run(self) -> None:  # noqa: D102  (threading.Thread API)
        while not self.stopped.wait(CANCEL_POLL_S):
            if self.folder.cancel_requested():
                _thread.interrupt_main(signal.SIGTERM)
                return


def run_reporting_status(out_dir: str | os.PathLike, predict: Callable[..., int], *args) -> int:
    """Run ``predict(*args)`` and keep ``out_dir/status.json`` true to how it goes.

    ``predict`` receives ``report_failure(message)``, to record why it ends with a non-zero
    code (e.g. the cases that failed). Exceptions are recorded (``failed`` with the message) and raised again, so the command
    line keeps its exit codes (2 for bad input, 1 for a crash); a non-zero return is
    ``failed`` too.
    """
    # A file in the way or a read-only folder is bad input (exit 2), named before anything runs.
    run = RunFolder(prepare_output_folder(out_dir))
    run.prepare()
    run.set_status(RUNNING)
    watcher = _CancelWatcher(run)
    previous_handler = _on_sigterm(_interrupt)
    watcher.start()
    try:
        code = predict(*args, report_failure=lambda message: run.set_status(FAILED, error=message))
    except KeyboardInterrupt:
        run.set_status(CANCELLED)
        return EXIT_CANCELLED
    except InputError as error:
        run.set_status(FAILED, error=str(error))
        raise
    except Exception as error:
        run.set_status(FAILED, error=f"{error.__class__.__name__}: {error}")
        raise
    finally:
        watcher.stopped.set()
        _on_sigterm(previous_handler)
    if code == 0:
        run.set_status(DONE)
    elif (run.read_status() or {}).get("state") == RUNNING:
        run.set_status(FAILED, error=f"predict ended with exit code {code}")
    return code


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt()


def _on_sigterm(handler):
    """Install ``handler`` for SIGTERM (main thread only); the previous handler, or None."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)
