"""The Slicer-facing logic, split by responsibility (:class:`SSLSegmentLib.logic.SSLSegmentLogic`
combines the parts): node markings and roles (:mod:`.markings`), input checks (:mod:`.inputs`),
export and manifests (:mod:`.export`), loading results and their confidence (:mod:`.results`).
The rounds (start, retrain, open) stay in :mod:`SSLSegmentLib.logic`.
"""
