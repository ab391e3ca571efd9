"""REDIS_URL names a single server, a Redis Cluster or a Sentinel-managed primary (pure parsing)."""
from __future__ import annotations

import pytest

from app import redis_client
from app.cache import TwoTierCache
from app.redis_client import CLUSTER, SENTINEL, SINGLE, RedisUrlError, parse


@pytest.mark.parametrize("url, kind, nodes, extra", [
    ("redis://127.0.0.1:6379/0", SINGLE, (), {}),
    ("rediss://:pw@cache.example:6380/2", SINGLE, (), {}),
    ("unix:///run/redis.sock?db=1", SINGLE, (), {}),
    ("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,10.0.0.3", CLUSTER,
     (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 6379)), {"ssl": False, "db": 0}),
    ("redis+cluster://h1:7000/", CLUSTER, (("h1", 7000),), {}),
    ("redis+cluster://h1:7000/0", CLUSTER, (("h1", 7000),), {}),
    ("rediss+cluster://app:s%40cret@h1:7000,[::1]:7001", CLUSTER, (("h1", 7000), ("::1", 7001)),
     {"ssl": True, "username": "app", "password": "s@cret"}),
    ("redis+sentinel://s1:26379,s2:26380,s3:26381/0/mymaster", SENTINEL,
     (("s1", 26379), ("s2", 26380), ("s3", 26381)), {"service": "mymaster", "db": 0}),
    ("redis+sentinel://:pw@s1:26379/3/orders", SENTINEL, (("s1", 26379),),
     {"service": "orders", "db": 3, "password": "pw", "username": None}),
])
def test_each_scheme_names_its_topology(url, kind, nodes, extra):
    t = parse(url)
    assert (t.kind, t.nodes) == (kind, nodes)
    for field, value in extra.items():
        assert getattr(t, field) == value, field


@pytest.mark.parametrize("url, message", [
    ("localhost:6379", "REDIS_URL: not a URL"),
    ("memcached://h:11211", "unknown scheme 'memcached://'"),
    ("redis+cluster://", "empty host"),
    ("redis+cluster://h1:7000,,h2:7001", "empty host"),
    ("redis+cluster://h1:70000", "port must be 1-65535, got '70000'"),
    ("redis+cluster://h1:abc", "port must be 1-65535"),
    ("redis+cluster://::1:7000", "needs brackets"),
    ("redis+cluster://h1:7000,h1:7000", "listed twice"),
    ("redis+cluster://h1:7000/3", "only database 0"),
    ("redis+cluster://h1:7000/?read_from_replicas=1", "takes no query options"),
    ("redis+sentinel://s1:26379", "ends with /<db>/<service>"),
    ("redis+sentinel://s1:26379/0", "ends with /<db>/<service>"),
    ("redis+sentinel://s1:26379/x/mymaster", "ends with /<db>/<service>"),
    ("redis+sentinel://s1:26379/0/mymaster?ssl=1", "takes no query options"),
    ("rediss+sentinel://s1:26379/0/mymaster", "unknown scheme"),
    ("redis://h:99999/0", "out of range"),
    ("redis://[/0", "Invalid IPv6 URL"),
])
def test_bad_urls_are_refused_with_a_message_naming_the_variable(url, message):
    with pytest.raises(RedisUrlError) as exc:
        parse(url)
    assert str(exc.value).startswith("REDIS_URL: ")
    assert message in str(exc.value)


def test_describe_leaves_out_credentials():
    assert parse("redis://u:pw@h:1/0").describe() == "redis://h:1/0"
    assert parse("rediss+cluster://u:pw@h1:1,[::1]:2").describe() == "rediss+cluster://h1:1,[::1]:2"
    assert parse("redis+sentinel://:pw@s:2/1/m").describe() == "redis+sentinel://s:2/1/m"


def test_a_bad_redis_url_fails_cache_construction_not_later_behind_the_breaker():
    with pytest.raises(ValueError, match="REDIS_URL: unknown scheme"):
        TwoTierCache.from_env({"REDIS_URL": "redis+clustr://h:1"})


def test_clients_are_redis_pys_own_for_each_topology_and_are_made_without_io_for_sentinel():
    single = redis_client.make_client(parse("redis://127.0.0.1:1/0"), socket_timeout=0.1, connect_timeout=0.1)
    assert type(single).__name__ == "Redis"
    assert single.connection_pool.connection_kwargs["socket_timeout"] == 0.1
    s = redis_client.make_client(parse("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/2/orders"),
                                 socket_timeout=0.1, connect_timeout=0.2)
    pool = s.connection_pool
    assert type(pool).__name__ == "SentinelConnectionPool" and pool.service_name == "orders"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "pw"
    sentinels = pool.sentinel_manager.sentinels
    assert [c.connection_pool.connection_kwargs["port"] for c in sentinels] == [1, 2]
    assert sentinels[0].connection_pool.connection_kwargs["password"] is None   # sentinels: no auth
    assert sentinels[0].connection_pool.connection_kwargs["socket_connect_timeout"] == 0.2


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:1,127.0.0.1:2",
                                 "redis+sentinel://127.0.0.1:1,127.0.0.1:2/0/mymaster"])
def test_unreachable_cluster_or_sentinels_serve_from_memory_and_loader(url, monkeypatch):
    # Nothing listens on ports 1 and 2: connections are refused at once, no server needed.
    import socket
    from collections import Counter
    attempts, resolve = Counter(), socket.getaddrinfo   # redis-py resolves each connection attempt

    def counted(host, port, *args, **kwargs):
        attempts[port] += 1
        return resolve(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", counted)
    cache = TwoTierCache(url, redis_socket_timeout=0.2, breaker_failures=1, breaker_retry=60)
    assert cache.fetch("k", lambda: "v") == ("v", "loader")
    # Regression: the sentinels' own clients kept redis-py's default retries (3, with backoff),
    # and this first lookup took ~7 s instead of failing at once: one attempt a node, no retry.
    assert attempts == {1: 1, 2: 1}, attempts
    assert cache.fetch("k", lambda: pytest.fail("memory has it")) == ("v", "memory")
    assert cache.fetch("k2", lambda: "v2") == ("v2", "loader")
    assert cache.redis_state == "down"
    assert cache.stats.errors_redis == 1 and cache.stats.skipped_redis >= 1


def test_gunicorn_config_refuses_a_bad_redis_url_before_any_worker_starts():
    from app.gunicorn_conf import ConfigError, settings_from_env
    with pytest.raises(ConfigError, match=r"REDIS_URL: node 'h:99999': port must be 1-65535"):
        settings_from_env({"REDIS_URL": "redis+cluster://h:99999"})
    for good in ("redis://127.0.0.1:6379/0", "redis+cluster://h1:7000,h2:7001",
                 "redis+sentinel://s1:26379/0/mymaster", ""):
        settings_from_env({"REDIS_URL": good})


def test_any_text_is_parsed_or_refused_with_redis_url_error_never_another_exception():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    schemes = st.sampled_from(["redis+cluster://", "rediss+cluster://", "redis+sentinel://", "redis://",
                               "x://", ""])
    tail = st.text(alphabet="ab:@,/[]?%01279.-_", max_size=40)

    @settings(max_examples=60, deadline=None, database=None)
    @given(schemes, tail)
    def check(scheme, rest):
        try:
            t = parse(scheme + rest)
        except RedisUrlError as exc:
            assert str(exc).startswith("REDIS_URL: ")
            return
        assert t.kind in (SINGLE, CLUSTER, SENTINEL)
        if t.kind != SINGLE:
            assert t.nodes and all(1 <= p <= 65535 and h for h, p in t.nodes)
        if t.kind == SENTINEL:
            assert t.service
        t.describe()
    check()
