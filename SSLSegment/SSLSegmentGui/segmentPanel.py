"""The "Segment new scans" section: a trained round's model, the ticked volumes, Segment /
Cancel, progress; the results arrive as segmentations under each volume.

The work is :meth:`SSLSegmentLib.logic.SSLSegmentLogic.startSegmenting` (a child process
running ``sslsegment predict``); this class only polls it with a timer, as training is polled.
"""

import qt
import slicer
from slicer.i18n import tr as _

from SSLSegmentLib import jobs, segmenting
from SSLSegmentLib.errors import InputError


class SegmentPanel:
    def __init__(self, widget):
        self.widget = widget
        self.ui = widget.ui
        self.run = None
        self.timer = qt.QTimer()
        self.timer.setInterval(500)
        self.timer.timeout.connect(self.onTimer)
        self.ui.segmentVolumesSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentButton.clicked.connect(self.onSegmentOrCancel)

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.finished

    def modelRound(self):
        """The round selected in the history, else the current one (None without a job)."""
        job = self.widget.job
        if job is None:
            return None
        items = self.ui.historyTable.selectedItems()
        if items:
            number = int(self.ui.historyTable.item(items[0].row(), 0).text())
            if number != job.round:
                return self.widget.logic.openJob(job.folder.root, number)
        return job

    def update(self, trainingBusy: bool) -> None:
        """Model label and button state (called whenever the panel's buttons are updated)."""
        job = self.widget.job
        if job is None:
            self.ui.segmentModelLabel.text = _("- (train a model or open a job folder)")
        else:
            items = self.ui.historyTable.selectedItems()
            number = int(self.ui.historyTable.item(items[0].row(), 0).text()) if items else job.round
            self.ui.segmentModelLabel.text = _("{job}, round {round}").format(job=job.folder.root.name, round=number)
        self.ui.segmentButton.text = _("Cancel") if self.running else _("Segment")
        self.ui.segmentButton.enabled = self.running or (job is not None and not trainingBusy)
        self.ui.segmentVolumesSelector.enabled = not self.running

    def onSegmentOrCancel(self) -> None:
        if self.running:
            self.run.cancel()
            self.ui.segmentStatusLabel.text = segmenting.status_text(self.run)
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start segmenting."), waitCursor=True):
            if not self.widget.ensureDependencies():
                return
            model = self.modelRound()
            if model is None:
                raise InputError(_("No trained model: train a model or open a job folder first."))
            volumes = list(self.ui.segmentVolumesSelector.checkedNodes())
            self.run = self.widget.logic.startSegmenting(model, volumes, device=self.widget._parameterNode.device)
            self.ui.segmentProgressBar.value = 0
            self.timer.start()
        self.widget.updateButtons()

    def onTimer(self) -> None:
        if self.run is None:
            self.timer.stop()
            return
        state = self.run.poll()
        self.ui.segmentProgressBar.value = int(100 * self.run.fraction_done())
        self.ui.segmentStatusLabel.text = segmenting.status_text(self.run)
        if state == jobs.RUNNING:
            return
        self.timer.stop()
        self.widget.updateButtons()
        loaded = {}
        if state in (jobs.DONE, jobs.FAILED):  # after a failure, what was segmented still loads
            with slicer.util.tryWithErrorDisplay(_("Could not load the segmentations."), waitCursor=True):
                loaded = self.widget.logic.loadSegmentingResults(self.run)
        if loaded:
            self.widget.showInSliceViews(next(iter(loaded.values())))
        if state == jobs.FAILED:
            slicer.util.errorDisplay(_("Segmenting failed: {error}").format(error=self.run.error),
                                     detailedText=self.run.log_tail(60))

    def stop(self) -> None:
        """Scene closed or module cleaned up (the logic kills the process itself)."""
        self.timer.stop()
        self.run = None
