"""Fixtures every layer of the suite may use; helpers live in :mod:`tests.helpers`.

Only numpy is imported here, so that ``pytest tests/core`` runs without the
node's dependencies installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import MODELS_DIR


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The held-out digits and their labels, as saved by models/build.py."""
    with np.load(MODELS_DIR / "digits-test.npz") as data:
        return data["X"], data["y"]
