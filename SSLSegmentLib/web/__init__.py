"""The browser UI (``sslsegment serve``, extra ``web``): the whole loop on trame-slicer.

Slicer's own MRML slice views and segment editor, rendered offscreen on the server and
streamed to the page (KitwareMedical/trame-slicer), over the same
:class:`SSLSegmentLib.logic.SSLSegmentLogic` as the Slicer panel. Split by responsibility:
``workspace`` (volumes, roles, labels, rounds; no trame), ``views`` (slice/3D views),
``app`` (state and actions), ``ui`` (the page), ``security`` (who may connect) and
``server`` (options and start-up). Importing this package imports nothing heavy.
"""
