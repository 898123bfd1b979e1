"""Semi-supervised methods, one class per method, registered by name.

Every module in this package is imported on first use of the registry, so adding a method
is adding a file and its entry in ``SSLSegmentLib/catalogue.py`` (the registry refuses a
method missing from it, and a catalogued one that no class registers): the trainer never
changes.
"""

from .base import (  # noqa: F401
    Method,
    MethodSettings,
    StepInfo,
    available_methods,
    method_class,
    register_method,
)
