"""SSLSegment engine: annotation-efficient (semi-supervised) medical image segmentation.

Importable without 3D Slicer, Qt or a GPU. The Slicer-facing logic lives in
:mod:`SSLSegmentLib.logic` and is the only part that imports ``slicer``.
"""

__version__ = "0.1.0"
