"""Imports every method module of this package so that their classes register, then checks
the registry against the catalogue (``SSLSegmentLib/catalogue.py``)."""

import importlib
import pkgutil

from ..catalogue import check_registered
from . import __name__ as _package, __path__ as _path
from .base import registered_method_names

_SKIP = {"base", "losses", "_load_all"}

for _info in pkgutil.iter_modules(_path):
    if _info.name not in _SKIP:
        importlib.import_module(f"{_package}.{_info.name}")

check_registered("method", registered_method_names())
