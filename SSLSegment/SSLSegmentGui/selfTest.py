"""Steps of the module's self-test (:class:`SSLSegment.SSLSegmentTest`): the panel without torch,
and the whole loop (train, load, segment, correct, retrain, cancel, export) on tiny phantoms."""

import logging

import qt
import slicer

from SSLSegmentLib import jobs
from SSLSegmentLib.errors import InputError
from SSLSegmentLib.logic import LABELLED, UNLABELLED


class SelfTestSteps:
    """The steps :class:`SSLSegment.SSLSegmentTest` runs (a ``unittest.TestCase`` with ``delayDisplay``)."""

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
        if widget.job is None:  # Resume round shows only for a round that stopped before its end
            self.assertTrue(widget.ui.resumeButton.isHidden())

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
