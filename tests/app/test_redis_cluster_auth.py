"""A password-protected Redis Cluster with a slower failure detection (4 s): credentials in
``REDIS_URL``, and what a hung primary costs the cache before the cluster fails it over. Its own
module: one cluster per module."""
from __future__ import annotations

import pytest

from app.cache import TwoTierCache

from app_helpers import wait_for
from redis_topology_helpers import PREFIX, require_redis_tools
from support.redis_servers import LocalRedisCluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory):
    require_redis_tools()
    # A slower failure detection than the other cluster's: long enough to see what a hung
    # primary costs before the cluster declares it failed.
    c = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster-auth"), password="s3cret",
                          node_timeout_ms=4000)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_password_in_the_cluster_url_reaches_every_node_and_a_wrong_one_only_turns_redis_off(auth_cluster):
    good = TwoTierCache(auth_cluster.url, redis_socket_timeout=0.5)
    other = TwoTierCache(auth_cluster.url, redis_socket_timeout=0.5)
    for i in range(30):                                 # keys on every primary
        good.fetch(f"a:{i}", lambda i=i: i)
    assert [other.fetch(f"a:{i}", lambda: -1)[1] for i in range(30)] == ["redis"] * 30
    assert good.stats.errors_redis == 0
    wrong = TwoTierCache(auth_cluster.url.replace(":s3cret@", ":nope@"), redis_socket_timeout=0.5,
                         breaker_failures=1, breaker_retry=60)
    assert wrong.fetch("a:1", lambda: "from-loader") == ("from-loader", "loader")
    assert wrong.redis_state == "down" and wrong.stats.errors_redis == 1


def test_hung_primary_fails_no_cache_call_and_redis_hits_return_after_failover(auth_cluster):
    """SIGSTOP, not SIGKILL: the kernel still accepts connections to the primary and nothing
    answers, so a call to its slots costs the socket timeout, while calls to the other primaries
    succeed in between. The breaker must open anyway (failures within a window, not consecutive
    ones), and not close before the failover. On the cluster with the 4 s failure detection."""
    cluster = auth_cluster
    cluster.heal()
    cache = TwoTierCache(cluster.url, redis_socket_timeout=0.25, breaker_failures=2, breaker_retry=0.2)
    for i in range(20):
        cache.fetch(f"warm:{i}", lambda i=i: i)
    from redis.cluster import ClusterNode, RedisCluster
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports],
                          password=cluster.password, socket_timeout=2)
    tagged = f"{PREFIX.replace('cached:', '')}{{hg}}-x"
    victim = cluster.primary_for(tagged)
    # A hash tag served by another primary: the keys below alternate between the hung primary and
    # a healthy one, the pattern that never gave two failures in a row.
    healthy_tag = next(t for t in (f"ok{i}" for i in range(50))
                       if cluster.primary_for(f"{PREFIX.replace('cached:', '')}{{{t}}}-x") is not victim)
    victim.pause()
    try:
        n = [0]
        timeouts_paid = []

        def calls_answer_until_redis_hits_again():
            n[0] += 1
            for i in range(20):
                assert cache.fetch(f"warm:{i}", lambda: pytest.fail("memory has it"))[0] == i
                # get() alone: one Redis call per miss (fetch() would follow a failed GET with a
                # SET to the same hung slot, two failures in a row)
                tag = "hg" if i % 2 else healthy_tag
                assert cache.get(f"{{{tag}}}-new-{n[0]}-{i}", "absent") == "absent"
            timeouts_paid.append(cache.stats.errors_redis)
            if cluster.primary_for(tagged) is victim:
                return False                                    # not failed over yet
            key = f"{{hg}}-probe-{n[0]}"
            client.set(f"ultrascale:cache:{key}", '"seeded"', px=60_000)
            return cache.fetch(key, lambda: "loader")[1] == "redis"
        wait_for(calls_answer_until_redis_hits_again, timeout=60, interval=0.05,
                 what="Redis hits after the failover away from the hung primary")
        assert cache.breaker.opened_count >= 1 and cache.stats.skipped_redis >= 1
        # Two timeouts opened it (failures within a window; with the consecutive count the
        # alternating calls paid one timeout each until the cluster declared the node failed),
        # and it stayed open until the failover.
        assert cache.stats.errors_redis <= 4, timeouts_paid
    finally:
        victim.resume()      # it rejoins as a replica; the next test's fixture waits for that
