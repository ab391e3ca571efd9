"""The Redis tier and its fallback against a real redis-server (stopped, hung and restarted)."""
from __future__ import annotations

import time

import pytest

from app.cache import TwoTierCache

from app_helpers import RedisCalls, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 0.5  # the Redis socket timeout these tests use


def new_cache(redis_server, **kw):
    kw.setdefault("redis_socket_timeout", TIMEOUT)
    kw.setdefault("breaker_failures", 1)
    kw.setdefault("breaker_retry", 0.2)
    return TwoTierCache(redis_server.url, **kw)


def test_value_loaded_by_one_process_is_a_redis_hit_for_another(redis_server):
    a, b = new_cache(redis_server), new_cache(redis_server)   # two workers: separate memory tiers
    assert a.fetch("user:1", lambda: {"name": "ada"}) == ({"name": "ada"}, "loader")
    assert b.fetch("user:1", lambda: pytest.fail("must come from Redis")) == ({"name": "ada"}, "redis")
    assert b.fetch("user:1", lambda: pytest.fail("must come from memory")) == ({"name": "ada"}, "memory")
    assert redis_server.client().pttl("ultrascale:cache:user:1") > 290_000   # TTL set in Redis too
    assert (b.stats.hits_redis, b.stats.hits_memory, b.stats.errors_redis) == (1, 1, 0)


def test_killed_redis_requests_are_served_from_memory_and_loader_without_waiting(redis_server):
    cache = new_cache(redis_server, breaker_retry=30)
    cache.get_or_load("warm", lambda: "w")
    redis_server.stop()

    redis = RedisCalls(cache)
    for i in range(30):
        assert cache.get_or_load(f"k{i}", lambda i=i: i) == i
    assert cache.get_or_load("warm", lambda: pytest.fail("memory still has it")) == "w"
    assert cache.redis_state == "down"
    # Only the first request asked Redis (refused: the breaker opened); the 29 after it and
    # their writes went on without asking, so none could wait on it.
    assert redis.on_caller() == ["get"], redis.calls
    assert cache.stats.errors_redis == 1 and cache.stats.skipped_redis >= 29


def test_hung_redis_costs_one_timeout_then_no_request_waits_and_recovery_is_automatic(redis_server):
    cache = new_cache(redis_server, breaker_retry=0.2)
    cache.get_or_load("before", lambda: 0)
    redis_server.pause()                         # accepts connections, never answers
    try:
        redis = RedisCalls(cache)
        assert cache.get_or_load("k0", lambda: "v0") == "v0"
        # one socket timeout (the get), then the breaker is open and the write is skipped
        assert redis.on_caller() == ["get"] and cache.stats.errors_redis == 1, redis.calls
        assert cache.redis_state == "down"
        redis.clear()
        for i in range(1, 40):
            assert cache.get_or_load(f"k{i}", lambda i=i: f"v{i}") == f"v{i}"
            time.sleep(0.01)                     # spans several background probe intervals
        # no request waited while Redis hung: the probes ran on their own threads
        assert redis.on_caller() == [], redis.calls
        assert set(op for op, _ in redis.calls) <= {"probe"} and cache.stats.errors_redis == 1
    finally:
        redis_server.resume()
    wait_for(lambda: cache.redis_state == "ok", timeout=5, what="breaker to close after Redis resumed")
    cache.get_or_load("after", lambda: "written")
    assert redis_server.client().get("ultrascale:cache:after") == b'"written"'


def test_restarted_redis_is_used_again(redis_server):
    cache = new_cache(redis_server, breaker_retry=0.2)
    redis_server.stop()
    assert cache.get_or_load("x", lambda: 1) == 1
    assert cache.redis_state == "down"
    redis_server.start()                          # same port
    # Only memory hits from here on: asking for the state (as /health does) drives the probe.
    wait_for(lambda: cache.get_or_load("x", lambda: 1) == 1 and cache.redis_state == "ok",
             timeout=5, what="breaker to close after Redis restarted")
    cache.get_or_load("y", lambda: 2)
    assert redis_server.client().get("ultrascale:cache:y") == b"2"
    other = new_cache(redis_server)
    assert other.fetch("y", lambda: pytest.fail("must come from Redis")) == (2, "redis")
