"""Fixtures of the coordination unit tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from agent.log import setup_logging


@pytest.fixture
def _reset_logging() -> Iterator[None]:
    """``main`` points the ``agent`` logger at this test's stderr; undo that afterwards."""
    yield
    setup_logging()
    logging.getLogger("agent").handlers.clear()
