"""The browser app: trame state and actions over the workspace, the views and the editor.

Every action runs in the server's event loop and is short: training runs in the logic's
child process, and an asyncio task polls its progress file twice a second (as the Slicer
panel's QTimer does), so the page stays live while a model trains.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import tempfile
import zipfile
from pathlib import Path

from trame.app import TrameApp
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import SegmentEditorLogic
from trame_slicer.core import SlicerApp

from .. import jobs
from ..config import AUTO_PRESET, TrainConfig
from ..errors import InputError
from ..headless import _set_slicer_globals
from ..logic import EXPORT_FORMAT_CHOICES, LABELLED, SSLSegmentLogic
from . import security, ui
from .views import Views
from .workspace import Limits, Workspace, image_name

log = logging.getLogger(__name__)
POLL_S = 0.5


class WebApp(TrameApp):
    """One server: one scene, one SSLSegmentLogic, one person at a time."""

    def __init__(self, options, server=None):
        super().__init__(server)
        self.options = options
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        self._set_globals()
        self.logic = SSLSegmentLogic(scene=self.slicer_app.scene, jobsRoot=options.jobs_dir)
        self.workspace = Workspace(self.slicer_app.scene, self.logic,
                                   Limits(options.max_volumes, options.max_upload_mb * 1024 * 1024),
                                   value_names=options.value_names)
        self.views = Views(self.slicer_app, self.server)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self._poller: asyncio.Task | None = None
        self._labels_mtime = 0
        self._init_state()
        self.layout = ui.build(self)
        self.editor_logic.set_ui(self.layout.segment_editor)
        security.install(self.server, options.secret)
        self.server.controller.on_server_ready.add(self._on_ready)
        self.server.controller.on_server_exited.add(lambda **_: self.logic.cleanup())

    def _set_globals(self) -> None:
        """``slicer.util`` helpers read ``slicer.mrmlScene`` and the module logics: point them here."""
        app = self.slicer_app
        _set_slicer_globals(app.scene, {"Colors": app.color_logic, "Volumes": app.volumes_logic,
                                        "Segmentations": app.segmentations_logic,
                                        "SubjectHierarchy": app.subject_hierarchy_logic})

    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "SSLSegment"
        s.update({"volumes": [], "results": [], "selected": None, "showing": "labels", "classes_text": "",
                  "message": "", "error": "", "method": self.options.method, "network": TrainConfig.network, "preset": AUTO_PRESET,
                  "iterations": self.options.iterations, "training": False, "train_fraction": 0,
                  "train_text": "No training yet", "train_state": "idle", "train_eta": "-", "train_loss": None,
                  "train_dice": None, "train_resumable": False, "export_format": "seg.nrrd", "export_folder": "", "show_3d": False,
                  "round": 0, "past_rounds": [], "tab": "data", "max_upload_bytes": self.workspace.limits.max_upload_bytes})
        s.change("show_3d")(self._on_show_3d)

    # ------------------------------------------------------------------ lifecycle
    def load_initial_data(self) -> None:
        if self.options.images:
            self.workspace.add_folder(self.options.images, self.options.labels)
        self._refresh_rows()
        self._refresh_past_rounds()
        if self.workspace.entries:
            self.select(next(iter(self.workspace.entries)))

    def _on_ready(self, **_):
        self._poller = asyncio.ensure_future(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                with self.state:
                    self._poll_once()
            except Exception:  # keep the page alive; the message says what failed
                log.exception("SSLSegment web: poll failed")

    def _poll_once(self) -> None:
        self.views.fit_if_resized()
        self._refresh_labels_if_painted()
        job = self.workspace.job
        if job is None or not self.state.training:
            return
        status = self.workspace.poll()
        self.state.update({"train_state": status["state"], "train_fraction": round(100 * status["fraction"], 1),
                           "train_text": status["text"], "train_eta": status["eta"], "train_loss": status["loss"],
                           "train_dice": status["dice"], "round": status["round"],
                           "train_resumable": status["resumable"]})
        if status["state"] in jobs.TERMINAL_STATES:
            self.state.training = False
            self._refresh_past_rounds()
            if status["state"] == jobs.DONE:
                self._run(self.load_results)
            elif status["error"]:
                self.state.error = f"Round {status['round']} {status['state']}: {status['error']}"

    def _refresh_labels_if_painted(self) -> None:
        node = self.slicer_app.segmentation_editor.active_segmentation_node
        if node is None:
            return
        mtime = node.GetSegmentation().GetMTime()
        if mtime != self._labels_mtime:
            self._labels_mtime = mtime
            self.workspace.refresh_roles()
            self._refresh_rows()

    # ------------------------------------------------------------------ helpers
    def _run(self, action, *args) -> bool:
        """Run an action; an InputError becomes the page's error message, not a crash."""
        self.state.error = ""
        try:
            action(*args)
            return True
        except InputError as error:
            self.state.error = str(error)
        except Exception as error:  # noqa: BLE001 - the page must say what failed
            log.exception("SSLSegment web: %s failed", getattr(action, "__name__", action))
            self.state.error = f"{type(error).__name__}: {error}"
        return False

    def _refresh_rows(self) -> None:
        self.state.volumes = self.workspace.rows()
        self.state.classes_text = ", ".join(c.name for c in self.workspace.classes()) or "none yet"
        if self.workspace.job is not None:
            self.state.results = self.workspace.result_rows()

    # ------------------------------------------------------------------ data and labels
    def select(self, volume_id: str, showing: str = "labels") -> None:
        """Show a volume with its labels (editable) or its prediction (editable: a correction)."""
        entry = self.workspace.entries[volume_id]
        if showing == "prediction" and entry.prediction is not None:
            node = entry.prediction
        else:
            showing, node = "labels", self.workspace.labels_for_editing(volume_id)
        editor = self.slicer_app.segmentation_editor
        editor.deactivate_effect()
        editor.set_active_segmentation(node, entry.volume)
        self.views.show(entry.volume, [node])
        self.editor_logic._on_segment_editor_changed()  # noqa: SLF001 - refresh its segment list
        self.state.selected, self.state.showing = volume_id, showing
        self._labels_mtime = node.GetSegmentation().GetMTime()
        self._refresh_rows()

    def on_select(self, volume_id: str, showing: str = "labels") -> None:
        self._run(self.select, volume_id, showing)

    def on_set_role(self, volume_id: str, role: str) -> None:
        if self._run(self.workspace.set_role, volume_id, role):
            self.state.message = f"{self.workspace.entries[volume_id].volume.GetName()}: {role}"
        self._refresh_rows()

    async def on_upload(self, files) -> None:
        self._run(self.upload, files or [])

    def upload(self, files: list[dict]) -> None:
        total = sum(int(f.get("size") or len(f.get("content") or b"")) for f in files)
        limit = self.workspace.limits.max_upload_bytes
        if total > limit:
            raise InputError(f"upload of {total / 2**20:.0f} MiB refused: at most {limit / 2**20:.0f} MiB at once "
                             "(serve --max-upload-mb), or start the server on the folder (--images)")
        with tempfile.TemporaryDirectory() as folder:
            added = []
            for f in files:
                path = Path(folder) / Path(f["name"]).name
                path.write_bytes(_content(f))
                added.append(self.workspace.add_volume(path))
        self._refresh_rows()
        self.state.message = f"{len(added)} volume(s) added"
        if added:
            self.select(added[0])

    # ------------------------------------------------------------------ training
    def _train_settings(self) -> dict:
        o = self.options
        extra = ["--patch-size", o.patch_size] if o.patch_size else []
        settings = {"device": o.device, "dim": o.dim}
        if o.size:
            settings["size"] = o.size
        return {"extra_args": extra, **settings}

    def on_train(self) -> None:
        def start():
            self.workspace.start_training(self.state.method, self.state.network, self.state.preset,
                                          int(self.state.iterations), **self._train_settings())
            self._training_started()
        self._run(start)

    def on_retrain(self) -> None:
        def start():
            self.workspace.retrain(iterations=int(self.state.iterations))
            self._training_started()
        self._run(start)

    def on_resume(self) -> None:
        def start():
            self.workspace.resume()
            self._training_started()
        self._run(start)

    def _training_started(self) -> None:
        self.state.update({"training": True, "train_fraction": 0, "train_state": jobs.RUNNING,
                           "train_text": "starting...", "tab": "train", "train_resumable": False})
        self._refresh_past_rounds()

    def _refresh_past_rounds(self) -> None:
        self.state.past_rounds = self.workspace.past_rounds()

    def open_round(self, folder: str) -> None:
        """A past round taken up again: its results loaded when it finished, else its state
        (and Resume round when it can go on)."""
        job = self.workspace.open_round(folder)
        status = self.workspace.poll()  # running: its process outlived the server that started it
        self.state.update({"training": status["state"] == jobs.RUNNING, "train_state": status["state"],
                           "train_text": status["text"],
                           "train_fraction": round(100 * status["fraction"], 1), "round": job.round,
                           "train_resumable": status["resumable"], "results": [], "tab": "train"})
        linked, cases = self.workspace.linked_cases()
        if job.state == jobs.DONE:
            self.load_results()
        missing = f"; {cases - linked} of its {cases} scans are not in this session" if linked < cases else ""
        self.state.message = f"Opened {job.folder.root.name}, round {job.round}: {status['state']}{missing}"

    def on_open_round(self, folder: str) -> None:
        self._run(self.open_round, folder)
        self._refresh_rows()

    def on_cancel(self) -> None:
        self._run(self.workspace.cancel)
        self.state.train_text = "cancelling..."

    # ------------------------------------------------------------------ results, correction, export
    def load_results(self) -> None:
        rows = self.workspace.load_results()
        self._refresh_rows()
        if rows:  # least confident first: the one to look at (and correct) first
            self.select(rows[0]["id"], "prediction")
        self.state.tab = "results"
        self.state.message = f"Round {self.workspace.job.round}: {len(rows)} prediction(s), least confident first"

    def on_mark_corrected(self, volume_id: str) -> None:
        if self._run(self.workspace.mark_corrected, volume_id, True):
            self.state.message = f"{self.workspace.entries[volume_id].volume.GetName()}: marked corrected"
        self._refresh_rows()

    def export(self) -> Path:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = self.workspace.job.folder.root / f"export-{stamp}" if self.workspace.job else None
        if folder is None:
            raise InputError("Nothing to export: train and load results first")
        manifest = self.workspace.export(folder, self.state.export_format)
        self.state.export_folder = str(folder)
        self.state.message = f"Exported to {folder}"
        return manifest.parent

    def on_export(self):
        """Export on the server, then hand the browser a zip of the folder."""
        folder = None

        def run():
            nonlocal folder
            folder = self.export()
        if not self._run(run):
            return None
        return self.server.protocol.addAttachment(_zip_folder(folder))

    def _on_show_3d(self, show_3d, **_):
        entry = self.workspace.entries.get(self.state.selected) if self.state.selected else None
        overlays = [entry.labels, entry.prediction] if entry else []
        self._run(self.views.set_3d, bool(show_3d), overlays)


def _content(file: dict) -> bytes:
    content = file.get("content")
    if isinstance(content, (bytes, bytearray)):
        return bytes(content)
    if isinstance(content, list):  # chunked by the client
        return b"".join(bytes(c) for c in content)
    raise InputError(f"{file.get('name')}: the upload came without content")


def _zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{folder.name}/{path.name}")
    return buffer.getvalue()


__all__ = ["WebApp", "EXPORT_FORMAT_CHOICES", "LABELLED", "image_name"]
