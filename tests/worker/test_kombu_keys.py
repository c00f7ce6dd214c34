"""The reaper reads kombu's Redis keys directly (worker/reaper.py): each queue's priority lists
(server.dispatch.queue_keys: `<queue>` for step 0, `<queue>:<step>` for steps 1..9, with the transport options
BROKER_PRIORITY_OPTIONS), the `unacked` hash and the `unacked_index` zset. These are kombu internals, not API;
pyproject pins kombu's minor version for them. These tests send real messages through Celery to the real Redis,
receive them without acking, and check the exact keys and types the reaper reads and the order kombu delivers
priorities in, so that a kombu upgrade that renames or restructures them fails here, loudly."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import redis
from kombu.transport.redis import Channel as RedisChannel
from sqlalchemy.orm import Session, sessionmaker

from server.dispatch import (
    PRIORITY_SEP,
    PRIORITY_STEPS,
    broker_priority,
    enqueue_job,
    job_queue_name,
    make_producer,
    queue_keys,
)
from tests.server.conftest import job_queue, make_settings, redis_client  # noqa: F401  (fixtures)
from worker.reaper import UNACKED_INDEX_KEY, UNACKED_KEY, Reaper

KOMBU_CHANGED = "kombu's Redis layout changed: worker/reaper.py reads these keys; update it and the kombu pin"


def test_the_reapers_key_names_are_kombus(redis_client: redis.Redis) -> None:  # noqa: F811
    assert RedisChannel.unacked_key == UNACKED_KEY, KOMBU_CHANGED
    assert RedisChannel.unacked_index_key == UNACKED_INDEX_KEY, KOMBU_CHANGED


def test_our_priority_options_reach_kombus_channel(tmp_path: Path, job_queue: str) -> None:  # noqa: F811
    producer = make_producer(make_settings(tmp_path, job_queue))
    with producer.connection_for_write() as connection:
        channel = connection.default_channel
        assert channel.sep == PRIORITY_SEP, KOMBU_CHANGED
        assert tuple(channel.priority_steps) == PRIORITY_STEPS, KOMBU_CHANGED
        assert channel.queue_order_strategy == "priority", KOMBU_CHANGED


def test_priorities_sit_in_their_lists_and_the_most_urgent_is_delivered_first(
    tmp_path: Path, job_queue: str, redis_client: redis.Redis, sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    settings = make_settings(tmp_path, job_queue)
    producer = make_producer(settings)
    reaper = Reaper(settings, sessions=sessions, producer=producer, redis=redis_client, redispatch_after_s=3600.0)
    queue = job_queue_name(job_queue, "cpu")
    ids = {priority: str(uuid.uuid4()) for priority in (0, 5, 9)}
    try:
        for priority, job_id in ids.items():  # least urgent first
            enqueue_job(producer, job_id, queue, priority=priority)
            key = queue_keys(queue)[broker_priority(priority)]
            assert redis_client.type(key) == b"list", KOMBU_CHANGED
            assert any(job_id.encode() in body for body in redis_client.lrange(key, 0, -1)), KOMBU_CHANGED
            assert any(job_id.encode() in body for body in reaper._live_message_bodies())
        with producer.connection_for_write() as connection:
            order = []
            for _ in ids:
                message = connection.default_channel.basic_get(queue, no_ack=True)
                assert message is not None
                order.append(next(p for p, job_id in ids.items() if job_id.encode() in message.body))
        assert order == [9, 5, 0], "kombu delivers priority step 0 (our 9) first"
    finally:
        redis_client.delete(*queue_keys(queue))


def test_a_real_message_sits_where_the_reaper_looks(
    tmp_path: Path, job_queue: str, redis_client: redis.Redis, sessions: sessionmaker[Session],  # noqa: F811
) -> None:
    settings = make_settings(tmp_path, job_queue)
    producer = make_producer(settings)
    reaper = Reaper(settings, sessions=sessions, producer=producer, redis=redis_client, redispatch_after_s=3600.0)
    job_id = str(uuid.uuid4())
    queue = job_queue_name(job_queue, "gpu")
    key = queue_keys(queue)[broker_priority(5)]
    sent_at = time.time()
    enqueue_job(producer, job_id, queue)

    # waiting: the queue's priority list is a Redis list of raw message bodies that carry the job id
    assert redis_client.type(key) == b"list", KOMBU_CHANGED
    assert any(job_id.encode() in body for body in redis_client.lrange(key, 0, -1)), KOMBU_CHANGED
    assert any(job_id.encode() in body for body in reaper._live_message_bodies())

    with producer.connection_for_write() as connection:
        message = connection.default_channel.basic_get(queue, no_ack=False)
        assert message is not None and job_id.encode() in message.body
        tag = message.delivery_tag
        try:
            # delivered, not acked: the body moved from the list to the `unacked` hash under its delivery tag,
            # and `unacked_index` scores the tag with its delivery time (epoch seconds)
            assert not any(job_id.encode() in body for body in redis_client.lrange(key, 0, -1))
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
