"""SSLSegment: train a segmentation model from a few labelled volumes and many unlabelled ones.

This file holds only what needs the Slicer application: the module description, a thin
widget that wires the panel (``Resources/UI/SSLSegment.ui``) to
:class:`SSLSegmentLib.logic.SSLSegmentLogic` (its sections' handlers are mixins in
``SSLSegmentGui/``), and the self-test (its steps in ``SSLSegmentGui/selfTest.py``). All behaviour lives in the
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
from SSLSegmentGui.dataSection import DataSectionMixin  # noqa: E402
from SSLSegmentGui.panelCommon import FAILED, IDLE, LOADING, ROLE_NAMES, STARTING, TRAINING  # noqa: E402, F401
from SSLSegmentGui.resultsSection import ResultsSectionMixin  # noqa: E402
from SSLSegmentGui.segmentPanel import SegmentPanel  # noqa: E402
from SSLSegmentGui.selfTest import SelfTestSteps  # noqa: E402
from SSLSegmentGui.trainingSection import TrainingSectionMixin  # noqa: E402
from SSLSegmentLib import catalogue, dependencies, jobs  # noqa: E402
from SSLSegmentLib.config import AUTO_PRESET, TrainConfig  # noqa: E402
from SSLSegmentLib.errors import InputError  # noqa: E402
from SSLSegmentLib.logic import EXPORT_FORMAT_CHOICES, SSLSegmentLogic as _EngineLogic, defaultJobsRoot  # noqa: E402
from SSLSegmentLib.round_settings import (  # noqa: E402
    DEVICE_CHOICES, DIM_CHOICES, METHOD_CHOICES, NETWORK_CHOICES, PRESET_CHOICES, SIZE_CHOICES, SPACING_CHOICES,
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
    """The panel's settings, saved with the scene and bound to the .ui (SlicerParameterName).
    Defaults and choices come from ``TrainConfig`` and the catalogue (the combo boxes are filled
    from the choices); "preset" in size and spacing leaves them to the preset."""

    method: Annotated[str, Choice(list(METHOD_CHOICES))] = TrainConfig.method
    network: Annotated[str, Choice(list(NETWORK_CHOICES))] = TrainConfig.network
    preset: Annotated[str, Choice(list(PRESET_CHOICES))] = AUTO_PRESET
    iterations: Annotated[int, WithinRange(1, 1000000)] = TrainConfig.iterations
    trainMinutes: Annotated[int, WithinRange(0, 10000)] = 0
    """0: train for ``iterations``; else for this many minutes (the time budget)."""
    dim: Annotated[str, Choice(list(DIM_CHOICES))] = TrainConfig.dim
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = TrainConfig.device
    size: Annotated[str, Choice(list(SIZE_CHOICES))] = "preset"
    spacing: Annotated[str, Choice(list(SPACING_CHOICES))] = "preset"
    seed: Annotated[int, WithinRange(0, 2147483647)] = TrainConfig.seed
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


class SSLSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, DataSectionMixin, TrainingSectionMixin,
                       ResultsSectionMixin):
    """Wires the panel to the logic; polls the running job with a timer (never blocks)."""

    def __init__(self, parent=None, logic=None):
        """``logic``: an :class:`SSLSegmentLogic` to drive (a test's, with its own process runner);
        by default the widget makes its own in :meth:`setup`."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
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
        if self.logic is None:
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
        self.ui.resumeButton.clicked.connect(self.onResume)
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
        if self.job.state == jobs.RUNNING:  # still training in the process of an earlier session
            self.onJobStarted()
            return
        self.showStatus()
        self.updateResults()

    def setParameterNode(self, parameterNode):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = parameterNode
        if parameterNode:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)  # fills the combo boxes from the choices
            self.describeChoices()

    def describeChoices(self):
        """Each method's and network's item tooltip: its description and paper (the catalogue),
        and for a method what the bench measured (a method worse than supervised-only says so)."""
        for combo, kind in ((self.ui.methodComboBox, "method"), (self.ui.networkComboBox, "network")):
            entries = catalogue.listing(kind)
            for index in range(combo.count):
                name = combo.itemText(index)
                description, reference = entries.get(name, ("", ""))
                measured = catalogue.measured_text(name) if kind == "method" else ""
                combo.setItemData(index, f"{description} ({reference})" + (f"\n{measured}" if measured else ""),
                                  qt.Qt.ToolTipRole)

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
        self.ui.resumeButton.visible = not busy and self.job is not None and self.job.resumable
        if self.segmentPanel is not None:
            self.segmentPanel.update(trainingBusy=busy)

    # -- Dependencies ----------------------------------------------------------------------
    def ensureDependencies(self):
        """Install what Resources/requirements.txt asks for (torch via PyTorchUtils), with confirmation."""
        return install.ensureDependencies(resourceFile("requirements.txt"))


#
# Test: the panel and the whole loop inside a real Slicer (the pytest suite runs the loop headless too)
#


class SSLSegmentTest(ScriptedLoadableModuleTest, SelfTestSteps):
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
