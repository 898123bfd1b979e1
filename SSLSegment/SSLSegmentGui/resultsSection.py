"""The Results, Correct and Export sections of the panel: predictions, history, corrections, retraining, export."""

import qt
import slicer

from SSLSegmentLib import jobs
from SSLSegmentLib.logic import referenceVolume

from .panelCommon import STARTING, _


class ResultsSectionMixin:
    """Part of :class:`SSLSegment.SSLSegmentWidget` (uses its ``ui``, ``logic`` and ``job``)."""

    # -- Results ---------------------------------------------------------------------------
    def updateResults(self):
        table = self.ui.resultsTable
        table.setRowCount(0)
        if self.job is None:
            return
        rows = self.logic.resultRows(self.job)
        for row in rows:
            index = table.rowCount
            table.insertRow(index)
            volumeName = row["volume"].GetName() if row["volume"] is not None else row["case"]
            nameItem = qt.QTableWidgetItem(volumeName)
            nameItem.setData(qt.Qt.UserRole, row["segmentation"].GetID())
            table.setItem(index, 0, nameItem)
            table.setItem(index, 1, qt.QTableWidgetItem(f"{row['segmentation'].GetName()}"))
            confidence = "-" if row["confidence"] is None else f"{row['confidence']:.3f}"
            table.setItem(index, 2, qt.QTableWidgetItem(confidence))
            table.setItem(index, 3, qt.QTableWidgetItem(_("yes") if row["corrected"] else _("no")))
        table.resizeColumnsToContents()
        corrected = [r["volume"].GetID() for r in rows if r["corrected"] and r["volume"] is not None]
        suggestion = self.logic.suggestVolumeToCorrect(self.job, exclude=corrected)
        volume = slicer.mrmlScene.GetNodeByID(suggestion) if suggestion else None
        self.ui.suggestionLabel.text = (_("Correct next: {name} (the least confident prediction).").format(
            name=volume.GetName()) if volume else "")
        self.updateHistory()
        self.updateButtons()

    def updateHistory(self):
        table = self.ui.historyTable
        table.setRowCount(0)
        if self.job is None:
            return
        for summary in self.logic.roundHistory(self.job):
            index = table.rowCount
            table.insertRow(index)
            dice = summary.get("valDice")
            values = [str(summary["round"]), summary["state"], str(len(summary["labelled"])),
                      str(len(summary["corrected"])), "-" if dice is None else f"{dice:.3f}"]
            for column, value in enumerate(values):
                table.setItem(index, column, qt.QTableWidgetItem(value))
        self.updateButtons()

    def onResultSelected(self):
        segmentation = self.selectedPrediction()
        self.ui.show3DButton.setSegmentationNode(segmentation)
        if segmentation is not None:
            self.showInSliceViews(segmentation)
        self.updateButtons()

    def showInSliceViews(self, segmentation):
        """The segmentation's volume in the slice views (fitted), with the segmentation shown."""
        volume = referenceVolume(segmentation)
        if volume is not None:
            slicer.util.setSliceViewerLayers(background=volume, fit=True)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.GetDisplayNode().SetVisibility(True)

    def selectedPrediction(self):
        items = self.ui.resultsTable.selectedItems()
        if not items:
            return None
        nodeID = self.ui.resultsTable.item(items[0].row(), 0).data(qt.Qt.UserRole)
        return slicer.mrmlScene.GetNodeByID(nodeID)

    def onOpenJob(self):
        folder = qt.QFileDialog.getExistingDirectory(None, _("Job folder"), str(self._parameterNode.jobsDirectory))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not open the job."), waitCursor=True):
            self.job = self.logic.openJob(folder)
            self._parameterNode.jobFolder = str(self.job.folder.root)
            self._parameterNode.jobRound = self.job.round
            if self.job.state == jobs.RUNNING:  # its process outlived the session that started it
                self.onJobStarted()  # follow it as if started here: progress, Cancel, results
            elif not self.logic.predictionNodes(self.job) and self.job.state == jobs.DONE:
                self.logic.loadPredictions(self.job)
            self.showStatus()  # a round that stopped before its end says it can be resumed
        self.updateResults()

    def onUseRound(self):
        items = self.ui.historyTable.selectedItems()
        if not items or self.job is None:
            return
        roundNumber = int(self.ui.historyTable.item(items[0].row(), 0).text())
        with slicer.util.tryWithErrorDisplay(_("Could not go back to that round."), waitCursor=True):
            self.job = self.logic.openJob(self.job.folder.root, roundNumber)
            self._parameterNode.jobRound = roundNumber
            if self.job.state == jobs.DONE:
                self.logic.loadPredictions(self.job)
            self.showStatus()
        self.updateResults()

    # -- Correct and retrain ------------------------------------------------------------------
    def onEditPrediction(self):
        segmentation = self.selectedPrediction()
        if segmentation is None:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        volume = referenceVolume(segmentation)
        if volume is not None:
            editor.setSourceVolumeNode(volume)

    def onMarkCorrected(self):
        segmentation = self.selectedPrediction()
        if segmentation is not None:
            self.logic.setCorrected(segmentation, True)
            self.updateResults()

    def onRetrain(self):
        if self.job is None:
            return

        def start():
            corrected = self.logic.correctedPredictions(self.job)
            if not corrected and not slicer.util.confirmOkCancelDisplay(
                    _("No prediction is marked corrected: retrain on the same labels?")):
                return None
            self.setState(STARTING)
            return self.logic.retrain(self.job, corrected=corrected, iterations=self._parameterNode.retrainIterations)
        self.startJob(_("Could not start retraining."), start)

    # -- Export ----------------------------------------------------------------------------
    def onExport(self):
        if self.job is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            p = self._parameterNode
            manifest = self.logic.exportResults(self.job, p.exportDirectory, p.exportFormat)
            slicer.util.infoDisplay(_("Exported to {folder} (manifest: {name}).").format(
                folder=manifest.parent, name=manifest.name))
