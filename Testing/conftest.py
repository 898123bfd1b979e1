"""Shared fixtures: tiny synthetic phantom datasets written as real NRRD files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY_SHAPE = (16, 32, 32)


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory) -> dict[str, Path]:
    """3 labelled + 2 unlabelled training phantoms and 2 labelled test phantoms."""
    from SSLSegmentLib.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(root, n_labelled=3, n_unlabelled=2, n_test=2, shape=TINY_SHAPE, seed=0)
