"""SSLSegment: train a segmentation model from a few labelled volumes and many unlabelled ones.

This file holds only what needs the Slicer application: the module description, a thin
widget that wires the panel (``Resources/UI/SSLSegment.ui``) to
:class:`SSLSegmentLib.logic.SSLSegmentLogic`, and the self-test. All behaviour lives in the
``SSLSegmentLib`` package (as in SlicerNNUnet), which also runs outside Slicer.
"""

import logging
import os
import pathlib
import shutil
import sys
from typing import Annotated

import qt
import slicer
import vtk  # noqa: F401  (Slicer modules conventionally import it; used by the test)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
# SSLSegmentLib/ and Resources/ sit beside this file in a build or an installed extension
# (<qt-scripted-modules>/, see SSLSegment/CMakeLists.txt), beside its folder in a source
# checkout (the repository root). SSLSegmentGui/ is always beside this file.
_PACKAGE_PARENT = os.path.dirname(_MODULE_DIR)
for _folder in (_PACKAGE_PARENT, _MODULE_DIR):
    if (_folder == _MODULE_DIR or os.path.isdir(os.path.join(_folder, "SSLSegmentLib"))) and _folder not in sys.path:
        sys.path.insert(0, _folder)

from SSLSegmentGui import install, settings  # noqa: E402
from SSLSegmentGui.segmentPanel import SegmentPanel  # noqa: E402
from SSLSegmentLib import dependencies, jobs  # noqa: E402
from SSLSegmentLib.config import DEFAULT_METHOD  # noqa: E402
from SSLSegmentLib.errors import InputError  # noqa: E402
from SSLSegmentLib.logic import (  # noqa: E402
    DEVICE_CHOICES, DIM_CHOICES, EXCLUDED, EXPORT_FORMAT_CHOICES, LABELLED, METHOD_CHOICES, NETWORK_CHOICES,
    PRESET_CHOICES, SIZE_CHOICES, SPACING_CHOICES, UNLABELLED, SSLSegmentLogic as _EngineLogic, defaultJobsRoot,
    referenceVolume,
)


def resourceFile(*parts):
    """A file of Resources/, beside this file or beside its folder (see above)."""
    for base in (_MODULE_DIR, _PACKAGE_PARENT):
        path = os.path.join(base, "Resources", *parts)
        if os.path.exists(path):
            return path
    return os.path.join(_MODULE_DIR, "Resources", *parts)


#
# Module
#


class SSLSegment(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SSLSegment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []  # the PyTorch extension is used when present, not required
        self.parent.contributors = ["SSLSegment developers"]
        self.parent.helpText = _(
            "Semi-supervised segmentation: label a few volumes (Segment Editor), leave the others "
            "unlabelled, and train. The model learns from both, predicts the unlabelled volumes, "
            "tells you which prediction it is least sure of; correct it, mark it corrected and "
            "retrain. Your labels are never overwritten: predictions are new segmentations, and "
            "every round keeps its model and the labels it trained on.<br>"
            "Methods: Mean Teacher, UA-MT, CPS, FixMatch, BCP, CCT, URPC and more "
            "(each cites its paper). Training runs in a separate process; the panel stays responsive "
            "and Cancel stops it.")
        self.parent.acknowledgementText = _(
            "Methods follow the SSL4MIS collection (Luo et al.) and their original papers; networks "
            "come from MONAI. The panel follows the Slicer module template, SlicerMONAIAuto3DSeg "
            "and SlicerNNUnet.")
        iconPath = resourceFile("Icons", "SSLSegment.png")
        if os.path.exists(iconPath):
            self.parent.icon = qt.QIcon(iconPath)


#
# Parameters
#


@parameterNodeWrapper
class SSLSegmentParameterNode:
    """The panel's settings, saved with the scene and bound to the .ui (SlicerParameterName)."""

    method: Annotated[str, Choice(list(METHOD_CHOICES))] = DEFAULT_METHOD
    network: Annotated[str, Choice(list(NETWORK_CHOICES))] = "unet"
    preset: Annotated[str, Choice(list(PRESET_CHOICES))] = "auto"
    iterations: Annotated[int, WithinRange(1, 1000000)] = 2000
    trainMinutes: Annotated[int, WithinRange(0, 10000)] = 0
    """0: train for ``iterations``; else for this many minutes (the time budget)."""
    dim: Annotated[str, Choice(list(DIM_CHOICES))] = "auto"
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    size: Annotated[str, Choice(list(SIZE_CHOICES))] = "preset"
    spacing: Annotated[str, Choice(list(SPACING_CHOICES))] = "preset"
    seed: Annotated[int, WithinRange(0, 2147483647)] = 1337
    jobsDirectory: pathlib.Path = pathlib.Path(".")
    retrainIterations: Annotated[int, WithinRange(1, 1000000)] = 500
    exportDirectory: pathlib.Path = pathlib.Path(".")
    exportFormat: Annotated[str, Choice(list(EXPORT_FORMAT_CHOICES))] = "seg.nrrd"
    jobFolder: str = ""
    jobRound: int = 0


#
# Logic: the engine logic, plus the module's parameter node
#


class SSLSegmentLogic(ScriptedLoadableModuleLogic, _EngineLogic):
    """:class:`SSLSegmentLib.logic.SSLSegmentLogic` on ``slicer.mrmlScene``, with the parameter node."""

    def __init__(self):
        # Slicer 5.8+: ScriptedLoadableModuleLogic.__init__ calls super().__init__(), which is
        # the engine logic's (on slicer.mrmlScene). Older Slicer does not: initialise it here.
        # Twice would leak a scene-close observer per widget set-up, reload and self-test.
        ScriptedLoadableModuleLogic.__init__(self)
        if not hasattr(self, "scene"):
            _EngineLogic.__init__(self, slicer.mrmlScene)

    def getParameterNode(self):
        return SSLSegmentParameterNode(super().getParameterNode())


#
# Widget
#

IDLE, STARTING, TRAINING, LOADING, FAILED = "idle", "starting", "training", "loading", "failed"
ROLE_NAMES = [LABELLED, UNLABELLED, EXCLUDED]


class SSLSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to the logic; polls the running job with a timer (never blocks)."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None
        self.state = IDLE
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._roleChoices = {}  # volume node ID -> role chosen by the user
        self._segmentationChoices = {}  # volume node ID -> segmentation node ID chosen by the user
        self.segmentPanel = None
        self._shownLog = ""

    # -- set-up ------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourceFile("UI", "SSLSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SSLSegmentLogic()

        self.timer = qt.QTimer()
        self.timer.setInterval(500)
        self.timer.timeout.connect(self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        for table in (self.ui.volumesTable, self.ui.resultsTable, self.ui.historyTable):
            table.horizontalHeader().setStretchLastSection(True)
            table.verticalHeader().setVisible(False)
        self.ui.detectRolesButton.clicked.connect(self.onDetectRoles)
        self.ui.trainButton.clicked.connect(self.onTrainOrCancel)
        self.ui.resultsTable.itemSelectionChanged.connect(self.onResultSelected)
        self.ui.historyTable.itemSelectionChanged.connect(self.updateButtons)
        self.ui.openJobButton.clicked.connect(self.onOpenJob)
        self.ui.useRoundButton.clicked.connect(self.onUseRound)
        self.ui.editPredictionButton.clicked.connect(self.onEditPrediction)
        self.ui.markCorrectedButton.clicked.connect(self.onMarkCorrected)
        self.ui.retrainButton.clicked.connect(self.onRetrain)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.segmentPanel = SegmentPanel(self)

        self.initializeParameterNode()
        self.refreshVolumes()
        self.setState(IDLE)

    def cleanup(self):
        """Module closed, reloaded or application exit: no child process may outlive it."""
        self.timer.stop()
        if self.segmentPanel is not None:
            self.segmentPanel.stop()
        settings.save(self._parameterNode)
        self.removeObservers()
        if self.logic is not None:
            self.logic.cleanup()

    def enter(self):
        self.initializeParameterNode()
        self.refreshVolumes()

    def exit(self):
        settings.save(self._parameterNode)
        self.setParameterNode(None)

    def onReload(self):
        """Developer reload: the engine and the panel helpers too, not only this file."""
        for name in sorted(sys.modules, reverse=True):
            if name.split(".")[0] in ("SSLSegmentLib", "SSLSegmentGui"):
                del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event):
        # The logic kills the training process tree itself (it observes the scene too).
        self.setParameterNode(None)
        if self.job is not None and self.state in (STARTING, TRAINING):
            self.logic.stopAllJobs()
            self.showLog()
            self.ui.trainingStatusLabel.text = _("Scene closed: training stopped.")
        self.timer.stop()
        self.segmentPanel.stop()
        self.job = None
        self._roleChoices, self._segmentationChoices = {}, {}
        self.setState(IDLE)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.refreshVolumes()

    def onSceneEndImport(self, caller, event):
        """A scene was loaded: its parameter node names the job and round to show again."""
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.refreshVolumes()

    def initializeParameterNode(self):
        parameterNode = self.logic.getParameterNode()
        if parameterNode.jobsDirectory == pathlib.Path("."):  # a new parameter node: the last values used
            settings.restore(parameterNode)
            if parameterNode.jobsDirectory == pathlib.Path("."):
                parameterNode.jobsDirectory = defaultJobsRoot()
        if parameterNode.exportDirectory == pathlib.Path("."):
            parameterNode.exportDirectory = pathlib.Path(slicer.app.defaultScenePath) / "SSLSegment-export"
        self.setParameterNode(parameterNode)
        self.restoreJob()

    def restoreJob(self):
        """Open the job and round the parameter node names (a saved scene reopened), once."""
        p = self._parameterNode
        if self.job is not None or p is None or not p.jobFolder:
            return
        try:
            self.job = self.logic.openJob(p.jobFolder, p.jobRound or None)
        except InputError as error:  # the folder moved or was deleted: say so, keep the scene usable
            logging.warning("SSLSegment: could not reopen job %s: %s", p.jobFolder, error)
            self.ui.trainingStatusLabel.text = _("Job {folder} not found.").format(folder=p.jobFolder)
            return
        self.ui.trainingStatusLabel.text = jobs.status_text(self.job)
        self.updateResults()

    def setParameterNode(self, parameterNode):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = parameterNode
        if parameterNode:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)

    # -- state machine -------------------------------------------------------------------
    def setState(self, state):
        """IDLE / STARTING / TRAINING / LOADING / FAILED: what is enabled, what Train says."""
        self.state = state
        busy = state in (STARTING, TRAINING, LOADING)
        self.ui.trainButton.text = _("Cancel") if state in (STARTING, TRAINING) else _("Train")
        self.ui.trainButton.enabled = state != LOADING
        for widget in (self.ui.dataCollapsibleButton, self.ui.methodCollapsibleButton):
            widget.enabled = not busy
        if state == IDLE and self.job is None:
            self.ui.progressBar.value = 0
        self.updateButtons()

    def updateButtons(self):
        busy = self.state in (STARTING, TRAINING, LOADING)
        hasModel = self.job is not None and self.job.finished and self.job.state == jobs.DONE
        selected = self.selectedPrediction() is not None
        self.ui.editPredictionButton.enabled = selected and not busy
        self.ui.markCorrectedButton.enabled = selected and not busy
        self.ui.retrainButton.enabled = hasModel and not busy
        self.ui.exportButton.enabled = hasModel and not busy and self.ui.resultsTable.rowCount > 0
        self.ui.useRoundButton.enabled = not busy and bool(self.ui.historyTable.selectedItems())
        self.ui.openJobButton.enabled = not busy
        if self.segmentPanel is not None:
            self.segmentPanel.update(trainingBusy=busy)

    # -- Data -------------------------------------------------------------------------------
    def onDetectRoles(self):
        self._roleChoices, self._segmentationChoices = {}, {}
        self.refreshVolumes()

    def refreshVolumes(self):
        """Fill the Data table from the scene; keeps the roles the user chose."""
        if self.logic is None:
            return
        table = self.ui.volumesTable
        table.setRowCount(0)
        for row in self.logic.detectRoles():
            volume = row["volume"]
            index = table.rowCount
            table.insertRow(index)
            item = qt.QTableWidgetItem(volume.GetName())
            item.setData(qt.Qt.UserRole, volume.GetID())
            table.setItem(index, 0, item)
            roleBox = qt.QComboBox()
            roleBox.addItems(ROLE_NAMES)
            roleBox.currentText = self._roleChoices.get(volume.GetID(), row["role"])
            roleBox.currentTextChanged.connect(lambda text, volumeID=volume.GetID(): self.onRoleChanged(volumeID, text))
            table.setCellWidget(index, 1, roleBox)
            segmentationBox = slicer.qMRMLNodeComboBox()
            segmentationBox.nodeTypes = ["vtkMRMLSegmentationNode"]
            segmentationBox.noneEnabled = True
            segmentationBox.addEnabled = False
            segmentationBox.removeEnabled = False
            segmentationBox.setMRMLScene(slicer.mrmlScene)
            chosen = slicer.mrmlScene.GetNodeByID(self._segmentationChoices.get(volume.GetID(), ""))
            segmentationBox.setCurrentNode(chosen if chosen is not None else row["segmentation"])
            segmentationBox.currentNodeChanged.connect(
                lambda node, volumeID=volume.GetID(): self.onSegmentationChanged(volumeID, node))
            table.setCellWidget(index, 2, segmentationBox)
        table.resizeColumnsToContents()
        self.updateClasses()

    def onRoleChanged(self, volumeID, role):
        self._roleChoices[volumeID] = role
        self.updateClasses()

    def onSegmentationChanged(self, volumeID, segmentation):
        """Kept when the module is entered again (the table is rebuilt from the scene)."""
        self._segmentationChoices[volumeID] = segmentation.GetID() if segmentation is not None else ""
        self.updateClasses()

    def selectedCases(self):
        """``(labeled, unlabeled)`` from the Data table, as the logic takes them."""
        labeled, unlabeled = [], []
        table = self.ui.volumesTable
        for index in range(table.rowCount):
            volume = slicer.mrmlScene.GetNodeByID(table.item(index, 0).data(qt.Qt.UserRole))
            role = table.cellWidget(index, 1).currentText
            segmentation = table.cellWidget(index, 2).currentNode()
            if volume is None or role == EXCLUDED:
                continue
            if role == LABELLED:
                labeled.append((volume, segmentation))
            else:
                unlabeled.append(volume)
        return labeled, unlabeled

    def updateClasses(self):
        labeled, _unused = self.selectedCases()
        classes = self.logic.classesFromSegmentations([s for _v, s in labeled if s is not None])
        names = ", ".join(c["name"] for c in classes) or "-"
        self.ui.classesLabel.text = _("Classes: {names}").format(names=names)

    # -- Train / Cancel -------------------------------------------------------------------
    def onTrainOrCancel(self):
        if self.state in (STARTING, TRAINING):
            self.onCancel()
        else:
            self.onTrain()

    def onTrain(self):
        job = None
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
                if not self.ensureDependencies():
                    return
                labeled, unlabeled = self.selectedCases()
                p = self._parameterNode
                settings.save(p)  # the last method, network, preset, device and jobs folder
                self.setState(STARTING)
                slicer.app.processEvents()
                self.logic.jobsRoot = pathlib.Path(p.jobsDirectory)
                job = self.logic.startTraining(
                    labeled=labeled, unlabeled=unlabeled, method=p.method, network=p.network, dim=p.dim,
                    iterations=p.iterations, device=p.device, seed=p.seed, preset=p.preset,
                    size=None if p.size == "preset" else p.size, timeBudget=p.trainMinutes or None,
                    spacing=None if p.spacing == "preset" else p.spacing)
        finally:
            if job is None:  # refused (message shown) or not confirmed: back to idle
                self.setState(IDLE)
        self.job = job
        self.onJobStarted()

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
        self.ui.trainingStatusLabel.text = jobs.status_text(self.job)
        self.showLog()
        if state == jobs.RUNNING:
            return
        self.timer.stop()
        if state == jobs.DONE:
            self.onJobDone()
        elif state == jobs.FAILED:
            self.setState(FAILED)
            slicer.util.errorDisplay(_("Training failed: {error}").format(error=self.job.error),
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

    def showLog(self):
        text = self.job.log_tail(200) if self.job is not None else ""
        if text != self._shownLog:
            self._shownLog = text
            self.ui.logTextEdit.setPlainText(text)
            scrollBar = self.ui.logTextEdit.verticalScrollBar()
            scrollBar.setValue(scrollBar.maximum)

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
            if not self.logic.predictionNodes(self.job) and self.job.state == jobs.DONE:
                self.logic.loadPredictions(self.job)
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
        job = None
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start retraining."), waitCursor=True):
                corrected = self.logic.correctedPredictions(self.job)
                if not corrected and not slicer.util.confirmOkCancelDisplay(
                        _("No prediction is marked corrected: retrain on the same labels?")):
                    return
                self.setState(STARTING)
                job = self.logic.retrain(self.job, corrected=corrected,
                                         iterations=self._parameterNode.retrainIterations)
        finally:
            if job is None:
                self.setState(IDLE)
        self.job = job
        self.onJobStarted()

    # -- Export ----------------------------------------------------------------------------
    def onExport(self):
        if self.job is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            p = self._parameterNode
            manifest = self.logic.exportResults(self.job, p.exportDirectory, p.exportFormat)
            slicer.util.infoDisplay(_("Exported to {folder} (manifest: {name}).").format(
                folder=manifest.parent, name=manifest.name))

    # -- Dependencies ----------------------------------------------------------------------
    def ensureDependencies(self):
        """Install what Resources/requirements.txt asks for (torch via PyTorchUtils), with confirmation."""
        return install.ensureDependencies(resourceFile("requirements.txt"))


#
# Test: the panel and the whole loop inside a real Slicer (the pytest suite runs the loop headless too)
#


class SSLSegmentTest(ScriptedLoadableModuleTest):
    """The panel without torch (set-up, parameter node, roles, refused input); then, when the
    engine's dependencies are installed, train (tiny) on phantoms, load, correct, retrain,
    cancel, segment new volumes, export and read back. Without them training is skipped,
    with a message, as in Slicer's AI extensions: a fresh Slicer has no torch."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SSLSegment_panel()
        self.setUp()
        unmet = dependencies.unmetRequirements(dependencies.readRequirements(resourceFile("requirements.txt")))
        if unmet:
            message = _("SSLSegment: training test skipped, the engine's Python packages are not installed: "
                        "{packages}").format(packages=", ".join(item.describe() for item in unmet))
            logging.warning(message)
            self.delayDisplay(message)
            return
        self.test_SSLSegment_loop()

    def addSimpleCase(self, name, labelled):
        """A 16x32x32 volume with an ellipsoid (numpy only: no engine dependency)."""
        import types

        import numpy as np

        from SSLSegmentLib.mrml import segmentationFromLabelArray

        z, y, x = np.indices((16, 32, 32))
        label = (((z - 8) / 6.0) ** 2 + ((y - 16) / 10.0) ** 2 + ((x - 16) / 9.0) ** 2 < 1).astype(np.uint8)
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(volume, (100.0 * label + np.random.default_rng(1).normal(size=label.shape))
                                          .astype(np.float32))
        if not labelled:
            return volume, None
        organ = types.SimpleNamespace(name="organ", color=(0.9, 0.3, 0.2))
        return volume, segmentationFromLabelArray(slicer.mrmlScene, volume, label, [organ], f"{name} labels")

    def test_SSLSegment_panel(self):
        self.delayDisplay("SSLSegment panel")
        slicer.util.selectModule("SSLSegment")
        widget = slicer.modules.sslsegment.widgetRepresentation().self()
        parameterNode = widget.logic.getParameterNode()
        userMethod = parameterNode.method  # put back below: leaving the module saves it to the settings
        parameterNode.method = "cps"  # parameter node -> panel
        self.assertEqual(widget.ui.methodComboBox.currentText, "cps")
        widget.ui.iterationsSpinBox.value = 77  # panel -> parameter node
        self.assertEqual(parameterNode.iterations, 77)
        parameterNode.method = userMethod

        labelledVolume, labels = self.addSimpleCase("L", labelled=True)
        unlabelledVolume, _unused = self.addSimpleCase("U", labelled=False)
        widget.onDetectRoles()
        table = widget.ui.volumesTable
        rows = {table.item(i, 0).text(): i for i in range(table.rowCount)}
        self.assertEqual({name: table.cellWidget(i, 1).currentText for name, i in rows.items()},
                         {"L": LABELLED, "U": UNLABELLED})
        self.assertEqual(widget.selectedCases(), ([(labelledVolume, labels)], [unlabelledVolume]))

        _unused, otherLabels = self.addSimpleCase("L2", labelled=True)
        table.cellWidget(rows["L"], 2).setCurrentNode(otherLabels)
        widget.exit()
        widget.enter()  # the table is rebuilt: the user's choice stays
        rows = {table.item(i, 0).text(): i for i in range(table.rowCount)}
        self.assertIs(table.cellWidget(rows["L"], 2).currentNode(), otherLabels)

        with self.assertRaises(InputError):  # refused before any process starts
            widget.logic.startTraining(labeled=[], unlabeled=[unlabelledVolume])
        self.assertEqual(widget.logic.jobs, [])
        self.delayDisplay("Panel test passed")

    def addPhantom(self, name, seed, labelled):
        from SSLSegmentLib.mrml import segmentationFromLabelArray
        from SSLSegmentLib.phantoms import PHANTOM_CLASSES, make_phantom

        image, label = make_phantom((16, 32, 32), (1.0, 1.0, 1.5), seed=seed)
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(volume, image)
        volume.SetSpacing(1.0, 1.0, 1.5)
        if not labelled:
            return volume, label
        return volume, segmentationFromLabelArray(slicer.mrmlScene, volume, label, PHANTOM_CLASSES)

    def test_SSLSegment_loop(self):
        import tempfile

        self.delayDisplay("Starting the SSLSegment loop test")
        workFolder = pathlib.Path(tempfile.mkdtemp(prefix="SSLSegmentTest-"))
        logic = SSLSegmentLogic()
        try:
            logic.jobsRoot = workFolder / "jobs"
            self.runLoop(logic, workFolder)
        finally:  # on failure too: no process left running, no folder left behind
            logic.cleanup()
            shutil.rmtree(workFolder, ignore_errors=True)
        self.delayDisplay("Test passed")

    def runLoop(self, logic, workFolder):
        import numpy as np
        import slicerio

        labelled = [self.addPhantom(f"L{i}", 10 + i, True) for i in range(2)]
        unlabelled = [self.addPhantom(f"U{i}", 20 + i, False) for i in range(2)]
        tiny = dict(dim=3, iterations=20, device="cpu", size="tiny", extraArgs=["--patch-size", "16,32,32"])

        with self.assertRaises(InputError):  # bad input: refused before any process starts
            logic.startTraining(labeled=[], unlabeled=[v for v, _t in unlabelled])

        job = logic.startTraining(labeled=labelled, unlabeled=[v for v, _t in unlabelled], **tiny)
        while not job.finished:  # what the panel's timer does
            slicer.app.processEvents()
            qt.QThread.msleep(200)
        self.assertEqual(job.state, jobs.DONE, f"{job.error}\n{job.log_tail()}")
        self.delayDisplay("Trained round 1")

        predictions = logic.loadPredictions(job)
        self.assertEqual(set(predictions), {v.GetID() for v, _t in unlabelled})
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        for volume, _truth in unlabelled:
            prediction = predictions[volume.GetID()]
            self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(prediction)),
                             shNode.GetItemByDataNode(volume))

        newVolume, _truth = self.addPhantom("New", 30, False)
        run = logic.startSegmenting(job, [newVolume], device="cpu", waitForCompletion=True)
        self.assertEqual(run.state, jobs.DONE, f"{run.error}\n{run.log_tail()}")
        self.assertEqual(set(logic.loadSegmentingResults(run)), {newVolume.GetID()})
        self.delayDisplay("Segmented a new volume with round 1's model")

        volumeID = logic.suggestVolumeToCorrect(job)
        volume, truth = next((v, t) for v, t in unlabelled if v.GetID() == volumeID)
        corrected = predictions[volumeID]
        for value, name in enumerate(["organ", "lesion"], start=1):
            segmentId = corrected.GetSegmentation().GetSegmentIdBySegmentName(name) or \
                corrected.GetSegmentation().AddEmptySegment("", name)
            slicer.util.updateSegmentBinaryLabelmapFromArray((truth == value).astype(np.uint8), corrected,
                                                            segmentId, volume)
        logic.setCorrected(corrected)
        round2 = logic.retrain(job, corrected=[(volume, corrected)], iterations=10, waitForCompletion=True)
        self.assertEqual(round2.state, jobs.DONE, f"{round2.error}\n{round2.log_tail()}")
        self.assertEqual(round2.folder.read_round(2)["initModel"], str(job.model_path))
        logic.loadPredictions(round2)
        self.delayDisplay("Retrained from round 1")

        round3 = logic.retrain(round2, iterations=5000)
        qt.QThread.msleep(1000)
        round3.cancel()
        self.assertEqual(round3.wait(timeout_s=60), jobs.CANCELLED)

        manifest = logic.exportResults(round2, workFolder / "export")
        path = logic.exportSegmentation(corrected, workFolder / "export" / "corrected.seg.nrrd")
        segmentation = slicerio.read_segmentation(str(path))
        self.assertEqual([s["name"] for s in segmentation["segments"]], ["organ", "lesion"])
        loaded = slicer.util.loadSegmentation(str(path))
        self.assertEqual(loaded.GetSegmentation().GetNumberOfSegments(), 2)
        self.assertTrue(manifest.exists())
        logging.info("SSLSegment loop test passed in %s", workFolder)
