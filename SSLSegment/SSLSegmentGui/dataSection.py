"""The Data section of the panel: the scene's volumes, their roles and label segmentations, the classes."""

import qt
import slicer

from SSLSegmentLib.logic import EXCLUDED, LABELLED

from .panelCommon import ROLE_NAMES, _


class DataSectionMixin:
    """Part of :class:`SSLSegment.SSLSegmentWidget` (uses its ``ui``, ``logic`` and parameter node)."""

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
