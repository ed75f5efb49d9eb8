"""Shared fixtures: a fresh plugin catalogue, and a toy plugin registered at run time."""

from __future__ import annotations

import pytest

from mambaverse import manager


@pytest.fixture
def fresh_catalogue():
    """Rediscover plugins before and after the test (for tests that install or register some)."""
    manager.reset()
    yield manager.catalogue
    manager.reset()
