"""The reaper reads kombu's Redis keys directly (worker/reaper.py): the queue list, the `unacked` hash and the
`unacked_index` zset. These are kombu internals, not API; pyproject pins kombu's minor version for them. This test
sends a real message through Celery to the real Redis, receives it without acking, and checks the exact keys and
types the reaper reads, so that a kombu upgrade that renames or restructures them fails here, loudly."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import redis
from kombu.transport.redis import Channel as RedisChannel
from sqlalchemy.orm import Session, sessionmaker

from server.dispatch import enqueue_job, make_producer
from tests.server.conftest import job_queue, make_settings, redis_client  # noqa: F401  (fixtures)
from worker.reaper import PRIORITY_SEP, PRIORITY_STEPS, UNACKED_INDEX_KEY, UNACKED_KEY, Reaper

KOMBU_CHANGED = "kombu's Redis layout changed: worker/reaper.py reads these keys; update it and the kombu pin"


def test_the_reapers_key_names_are_kombus(redis_client: redis.Redis) -> None:  # noqa: F811
    assert RedisChannel.unacked_key == UNACKED_KEY, KOMBU_CHANGED
    assert RedisChannel.unacked_index_key == UNACKED_INDEX_KEY, KOMBU_CHANGED
    assert RedisChannel.sep == PRIORITY_SEP, KOMBU_CHANGED
    assert tuple(RedisChannel.priority_steps) == PRIORITY_STEPS, KOMBU_CHANGED


def test_a_real_message_sits_where_the_reaper_looks(
    tmp_path: Path, job_queue: str, redis_client: redis.Redis, sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    settings = make_settings(tmp_path, job_queue)
    producer = make_producer(settings)
    reaper = Reaper(settings, sessions=sessions, producer=producer, redis=redis_client, redispatch_after_s=3600.0)
    job_id = str(uuid.uuid4())
    sent_at = time.time()
    enqueue_job(producer, job_id, job_queue)

    # waiting: the queue is a Redis list of raw message bodies that carry the job id
    assert redis_client.type(job_queue) == b"list", KOMBU_CHANGED
    assert any(job_id.encode() in body for body in redis_client.lrange(job_queue, 0, -1)), KOMBU_CHANGED
    assert any(job_id.encode() in body for body in reaper._live_message_bodies())

    with producer.connection_for_write() as connection:
        message = connection.default_channel.basic_get(job_queue, no_ack=False)
        assert message is not None and job_id.encode() in message.body
        tag = message.delivery_tag
        try:
            # delivered, not acked: the body moved from the list to the `unacked` hash under its delivery tag,
            # and `unacked_index` scores the tag with its delivery time (epoch seconds)
            assert not any(job_id.encode() in body for body in redis_client.lrange(job_queue, 0, -1))
            assert redis_client.type(UNACKED_KEY) == b"hash", KOMBU_CHANGED
            assert redis_client.type(UNACKED_INDEX_KEY) == b"zset", KOMBU_CHANGED
            raw = redis_client.hget(UNACKED_KEY, tag)
            assert raw is not None and job_id.encode() in raw, KOMBU_CHANGED
            score = redis_client.zscore(UNACKED_INDEX_KEY, tag)
            assert score is not None and score >= sent_at - 1.0, KOMBU_CHANGED
            assert tag.encode() in redis_client.zrangebyscore(UNACKED_INDEX_KEY, sent_at - 1.0, "+inf")
            assert any(job_id.encode() in body for body in reaper._live_message_bodies())
        finally:
            message.ack()
    assert redis_client.hget(UNACKED_KEY, tag) is None
    assert redis_client.zscore(UNACKED_INDEX_KEY, tag) is None
