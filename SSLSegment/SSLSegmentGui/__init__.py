"""Qt parts of the SSLSegment panel that would make ``SSLSegment.py`` too long.

A package (not top-level files) because Slicer loads every ``.py`` beside the module file
as a module of its own. Only the Slicer module imports it; ``SSLSegmentLib`` never does.
"""
