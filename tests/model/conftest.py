"""Fixtures of the model tests."""

from __future__ import annotations

import pytest

from tests.model.reference import Reference, reference_outputs


@pytest.fixture(scope="module")
def reference() -> Reference:
    """HF's classifier and its outputs on fixed pixels (tests/model/reference.py)."""
    return reference_outputs()
