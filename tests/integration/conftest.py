"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redisserver import RedisServer, redis_server


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free 127.0.0.1 port (tests/redisserver.py): fails the
    test under CI and skips it otherwise when the server is not installed."""
    with redis_server() as srv:
        yield srv
