"""The Train section of the panel: start or cancel a round, follow it with the timer, show its log."""

import pathlib

import slicer

from SSLSegmentLib import jobs

from . import settings
from .panelCommon import FAILED, IDLE, LOADING, STARTING, TRAINING, _


class TrainingSectionMixin:
    """Part of :class:`SSLSegment.SSLSegmentWidget` (uses its ``ui``, ``logic``, ``job`` and timer)."""

    # -- Train / Cancel -------------------------------------------------------------------
    def onTrainOrCancel(self):
        if self.state in (STARTING, TRAINING):
            self.onCancel()
        else:
            self.onTrain()

    def startJob(self, failureMessage, start):
        """``start()`` returns the started round, or None when the user declined; an error is
        shown with ``failureMessage``. The panel goes back to idle unless a round started."""
        job = None
        try:
            with slicer.util.tryWithErrorDisplay(failureMessage, waitCursor=True):
                job = start()
        finally:
            if job is None:  # refused (message shown) or not confirmed: back to idle
                self.setState(IDLE)
        if job is not None:
            self.job = job
            self.onJobStarted()

    def onTrain(self):
        def start():
            if not self.ensureDependencies():
                return None
            labeled, unlabeled = self.selectedCases()
            p = self._parameterNode
            settings.save(p)  # the last method, network, preset, device and jobs folder
            self.setState(STARTING)
            slicer.app.processEvents()
            self.logic.jobsRoot = pathlib.Path(p.jobsDirectory)
            return self.logic.startTraining(
                labeled=labeled, unlabeled=unlabeled, method=p.method, network=p.network, dim=p.dim,
                iterations=p.iterations, device=p.device, seed=p.seed, preset=p.preset,
                size=None if p.size == "preset" else p.size, timeBudget=p.trainMinutes or None,
                spacing=None if p.spacing == "preset" else p.spacing)
        self.startJob(_("Could not start training."), start)

    def onResume(self):
        """Go on with the shown round where it stopped (its checkpoint, or its predictions)."""
        def start():
            self.setState(STARTING)
            return self.logic.resumeRound(self.job)
        self.startJob(_("Could not resume the round."), start)

    def showStatus(self):
        """The round's one line; a round that stopped before its end says it can go on."""
        text = jobs.status_text(self.job)
        if self.job.resumable:  # finished, and stopped before its end
            text = _("Round {round} stopped before its end; Resume round goes on where it stopped.").format(
                round=self.job.round)
        self.ui.trainingStatusLabel.text = text

    def onJobStarted(self):
        self._parameterNode.jobFolder = str(self.job.folder.root)
        self._parameterNode.jobRound = self.job.round
        self._shownLog = ""
        self.ui.logTextEdit.setPlainText("")
        self.setState(TRAINING)
        self.timer.start()
        self.onTimer()

    def onCancel(self):
        if self.job is not None:
            self.job.cancel()
            self.ui.trainingStatusLabel.text = jobs.status_text(self.job)

    def onTimer(self):
        """Poll the job (non-blocking): progress, ETA, loss, Dice, log; act when it ends."""
        if self.job is None:
            self.timer.stop()
            return
        state = self.job.poll()
        self.ui.progressBar.value = int(100 * self.job.fraction_done())
        self.showStatus()
        self.showLog()
        if state == jobs.RUNNING:
            return
        self.timer.stop()
        if state == jobs.DONE:
            self.onJobDone()
        elif state == jobs.FAILED:
            self.setState(FAILED)
            resumable = _("\n\nResume round goes on where it stopped.") if self.job.resumable else ""
            slicer.util.errorDisplay(_("Training failed: {error}").format(error=self.job.error) + resumable,
                                     detailedText=self.job.log_tail(60))
        else:
            self.setState(IDLE)
        self.updateHistory()

    def onJobDone(self):
        self.setState(LOADING)
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not load the predictions."), waitCursor=True):
                self.logic.loadPredictions(self.job)
        finally:
            self.setState(IDLE)
            self.updateResults()
        if self.job.warnings():  # e.g. a time budget too short for the method to gain from unlabelled scans
            slicer.util.warningDisplay("\n\n".join(self.job.warnings()), windowTitle=_("Training finished with a warning"))

    def showLog(self):
        text = self.job.log_tail(200) if self.job is not None else ""
        if text != self._shownLog:
            self._shownLog = text
            self.ui.logTextEdit.setPlainText(text)
            scrollBar = self.ui.logTextEdit.verticalScrollBar()
            scrollBar.setValue(scrollBar.maximum)
