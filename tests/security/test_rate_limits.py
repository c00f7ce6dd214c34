"""Per-key rate limits: a token bucket per principal in the real Redis; an empty bucket answers 429
problem+json with Retry-After, the bucket refills, keys do not share a bucket, and no key means no limit."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from server.main import create_app
from server.ratelimit import RateLimiter
from tests.server.conftest import REDIS_TEST_URL, job_queue, make_settings, redis_client  # noqa: F401  (fixtures)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

RATE_PER_S, BURST = 1.0, 3


@pytest.fixture
def keys() -> tuple[str, str]:
    """Fresh keys per test, so that no bucket left in Redis by another test is shared."""
    return f"sk-a-{uuid.uuid4().hex}", f"sk-b-{uuid.uuid4().hex}"


@pytest.fixture
def limited(tmp_path: Path, job_queue: str, redis_client: Any, keys: tuple[str, str]  # noqa: F811
            ) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path, job_queue, api_keys=",".join(keys), rate_limit_per_s=RATE_PER_S,
                                   rate_limit_burst=BURST))
    with TestClient(app) as client:
        yield client


def _until_limited(client: TestClient, key: str) -> tuple[int, Any]:
    """Requests until the first 429 (at most 50); returns how many passed and the 429."""
    for passed in range(50):
        response = client.get("/v1/jobs", headers={"X-API-Key": key})
        if response.status_code == 429:
            return passed, response
        assert response.status_code == 200, response.text
    raise AssertionError("never rate limited")


def test_an_empty_bucket_answers_429_problem_with_retry_after(limited: TestClient, keys: tuple[str, str]) -> None:
    passed, response = _until_limited(limited, keys[0])
    assert BURST <= passed <= BURST + 2  # the burst, plus what refilled while the requests ran
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 429 and "rate limit" in response.json()["detail"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= int(1 / RATE_PER_S) + 1


def test_keys_have_buckets_of_their_own(limited: TestClient, keys: tuple[str, str]) -> None:
    _until_limited(limited, keys[0])
    assert limited.get("/v1/jobs", headers={"X-API-Key": keys[1]}).status_code == 200


def test_the_bucket_refills(limited: TestClient, keys: tuple[str, str]) -> None:
    _, response = _until_limited(limited, keys[0])
    time.sleep(int(response.headers["Retry-After"]))
    assert limited.get("/v1/jobs", headers={"X-API-Key": keys[0]}).status_code == 200


def test_health_and_readiness_are_never_limited(limited: TestClient, keys: tuple[str, str]) -> None:
    _until_limited(limited, keys[0])
    assert limited.get("/healthz").status_code == 200
    assert limited.get("/readyz").status_code == 200


def test_without_keys_nothing_is_limited(tmp_path: Path, job_queue: str, redis_client: Any) -> None:  # noqa: F811
    app = create_app(make_settings(tmp_path, job_queue, rate_limit_per_s=RATE_PER_S, rate_limit_burst=1))
    with TestClient(app) as client:
        assert all(client.get("/v1/jobs").status_code == 200 for _ in range(10))


def test_the_bucket_is_one_atomic_script_shared_by_every_limiter(redis_client: redis.Redis) -> None:  # noqa: F811
    """Two limiters (two API processes) on one Redis draw from the same bucket: BURST tokens in all."""
    principal = f"key-{uuid.uuid4().hex[:16]}"
    first = RateLimiter(redis.Redis.from_url(REDIS_TEST_URL), rate_per_s=0.001, burst=BURST)
    second = RateLimiter(redis.Redis.from_url(REDIS_TEST_URL), rate_per_s=0.001, burst=BURST)
    decisions = [limiter.take(principal).allowed for _ in range(BURST) for limiter in (first, second)]
    assert decisions.count(True) == BURST
    assert second.take(principal).wait_s > 0


def test_redis_down_lets_requests_through(tmp_path: Path, job_queue: str, keys: tuple[str, str]) -> None:  # noqa: F811
    from tests.server.conftest import REDIS_DOWN_URL

    app = create_app(make_settings(tmp_path, job_queue, api_keys=keys[0], redis_url=REDIS_DOWN_URL,
                                   rate_limit_per_s=RATE_PER_S, rate_limit_burst=1))
    with TestClient(app) as client:
        assert all(client.get("/v1/jobs", headers={"X-API-Key": keys[0]}).status_code == 200 for _ in range(3))
