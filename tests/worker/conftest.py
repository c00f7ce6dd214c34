"""Fixtures for worker unit tests: a real SQLite job store, an artifact store, and a Redis stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.orm import Session, sessionmaker

from server.store import ArtifactStore, create_schema, make_engine, make_session_factory


class RecordingRedis:
    """Records PUBLISH calls (channel, decoded JSON); `down=True` makes every call fail like a dead Redis."""

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, channel: str, message: str) -> int:
        if self.down:
            raise RedisConnectionError("Redis is down")
        self.published.append((channel, json.loads(message)))
        return 1

    def exists(self, key: str) -> int:
        if self.down:
            raise RedisConnectionError("Redis is down")
        return 0


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
    create_schema(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def redis_stub() -> RecordingRedis:
    return RecordingRedis()
