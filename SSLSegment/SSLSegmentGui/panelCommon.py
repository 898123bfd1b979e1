"""What the panel's sections share: the panel's states, the role names, and the module's
translation context (the sections' texts keep the context they had in ``SSLSegment.py``)."""

from slicer.i18n import translate

from SSLSegmentLib.logic import EXCLUDED, LABELLED, UNLABELLED

IDLE, STARTING, TRAINING, LOADING, FAILED = "idle", "starting", "training", "loading", "failed"
ROLE_NAMES = [LABELLED, UNLABELLED, EXCLUDED]


def _(text):
    """``slicer.i18n.tr`` with the context of ``SSLSegment.py``, where these texts were written."""
    return translate("SSLSegment", text)
