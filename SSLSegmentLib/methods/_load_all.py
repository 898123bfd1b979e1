"""Imports every method module of this package so that their classes register."""

import importlib
import pkgutil

from . import __name__ as _package, __path__ as _path

_SKIP = {"base", "losses", "_load_all"}

for _info in pkgutil.iter_modules(_path):
    if _info.name not in _SKIP:
        importlib.import_module(f"{_package}.{_info.name}")
