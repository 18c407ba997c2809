"""Fixtures of the jobs tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fixtures.stack import Stack


@pytest.fixture
async def stack_proxy_cut(stack: Stack) -> AsyncIterator[None]:
    """The relay cannot reach the broker while the test runs: submitted jobs stay queued."""
    await stack.rabbit_proxy.cut()
    try:
        yield
    finally:
        await stack.rabbit_proxy.restore()
