"""Semi-supervised methods, one class per method, registered by name.

Every module in this package is imported on first use of the registry, so adding a method
is adding a file: nothing else changes.
"""

from .base import (  # noqa: F401
    Method,
    MethodSettings,
    StepInfo,
    available_methods,
    method_class,
    register_method,
)
