"""The cache's Redis tier and the Socket.IO queue behind a real Sentinel setup (one primary, two
replicas, three sentinels), one setup per module."""
from __future__ import annotations

import pytest

from app.cache import TwoTierCache

from app_helpers import wait_for
from redis_topology_helpers import APP_ENV, failover_under_load, require_redis_tools
from support.redis_servers import SENTINEL_SERVICE, LocalRedisSentinel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    require_redis_tools()
    s = LocalRedisSentinel(tmp_path_factory.mktemp("redis-sentinel"), replicas=2)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def settled(sentinel):
    """Every node up (a killed one restarts and the sentinels make it a replica), one agreed primary."""
    sentinel.heal()
    return sentinel


def direct_client(s):
    from redis.sentinel import Sentinel
    return Sentinel([("127.0.0.1", p) for p in s.sentinel_ports],
                    socket_timeout=2).master_for(SENTINEL_SERVICE, socket_timeout=2)


def test_cache_reads_and_writes_through_the_sentinels_primary(settled):
    a = TwoTierCache(settled.url, redis_socket_timeout=0.5)
    b = TwoTierCache(settled.url, redis_socket_timeout=0.5)
    for i in range(20):
        assert a.fetch(f"user:{i}", lambda i=i: {"id": i}) == ({"id": i}, "loader")
    for i in range(20):
        assert b.fetch(f"user:{i}", lambda: pytest.fail("must come from Redis")) == ({"id": i}, "redis")
    primary = settled.primary()
    from support.redis_servers import command
    assert command(primary.port, "GET", "ultrascale:cache:user:3").strip() == '{"id": 3}'
    assert a.stats.errors_redis == b.stats.errors_redis == 0 and a.redis_state == "ok"


def test_killed_primary_under_load_fails_no_request_and_redis_hits_return(settled, gunicorn_factory):
    g = gunicorn_factory(dict(APP_ENV, REDIS_URL=settled.url), workers=1)
    victim = settled.primary()
    load, health = failover_under_load(
        g, direct_client(settled), kill=victim.kill,
        failed_over=lambda: (settled.primary_port_by_sentinels() or {victim.port}) != {victim.port},
        tag="st")
    assert load.failures == [], load.failures[:5]
    assert load.done >= 200
    assert health["cache"]["errors"]["redis"] >= 1
    assert health["cache"]["redis_skipped"] >= 1
    assert health["redis"] == "ok"
    assert settled.primary().port != victim.port


def test_socketio_broadcast_crosses_instances_and_follows_the_sentinels_to_the_new_primary(
        settled, gunicorn_factory):
    from test_socketio import broadcasts_reaching, two_instances
    env = {"REDIS_URL": settled.url}
    with two_instances(gunicorn_factory, env) as (_, b, (ca, _), (_, inbox_b)):
        delivered = broadcasts_reaching(ca, inbox_b, "s")
        data = wait_for(delivered, timeout=20, interval=0, what="a broadcast from A to reach B")
        assert data["instance"] == 0
        victim = settled.primary()
        victim.kill()
        wait_for(lambda: (settled.primary_port_by_sentinels() or {victim.port}) != {victim.port},
                 timeout=60, interval=0.2, what="the sentinels' failover")
        wait_for(delivered, timeout=60, interval=0, what="broadcasts to reach B again after the failover")
        assert "Cannot receive from redis" in b.log()   # B's subscription did break and come back
