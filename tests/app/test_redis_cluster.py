"""The cache's Redis tier and the Socket.IO queue on a real six-node Redis Cluster
(``redis-cli --cluster create``, three primaries with a replica each), one cluster per module."""
from __future__ import annotations

import pytest

from app.cache import TwoTierCache

from app_helpers import wait_for
from redis_topology_helpers import APP_ENV, PREFIX, failover_under_load, require_redis_tools
from support.redis_servers import LocalRedisCluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_redis_tools()
    c = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def healthy_cluster(cluster):
    """The module's cluster with every node back up and every slot served."""
    cluster.heal()
    return cluster


def direct_client(cluster):
    from redis.cluster import ClusterNode, RedisCluster
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports],
                        socket_timeout=2)


def test_cache_reads_and_writes_through_the_cluster_on_every_primary(healthy_cluster):
    a = TwoTierCache(healthy_cluster.url, redis_socket_timeout=0.5)
    b = TwoTierCache(healthy_cluster.url, redis_socket_timeout=0.5)   # another worker: its own memory
    keys = [f"user:{i}" for i in range(60)]
    for k in keys:
        assert a.fetch(k, lambda k=k: {"id": k}) == ({"id": k}, "loader")
    for k in keys:
        assert b.fetch(k, lambda: pytest.fail("must come from the cluster")) == ({"id": k}, "redis")
    assert a.stats.errors_redis == b.stats.errors_redis == 0
    # The keys really are spread over the three primaries (not one node answering everything).
    from support.redis_servers import command
    assert all(int(command(n.port, "DBSIZE").strip()) > 0 for n in healthy_cluster.primaries())
    client = direct_client(healthy_cluster)
    assert client.pttl("ultrascale:cache:user:7") > 290_000
    b.delete("user:7")
    assert client.get("ultrascale:cache:user:7") is None
    assert b.redis_state == "ok"


def test_killed_primary_under_load_fails_no_request_and_redis_hits_return(healthy_cluster, gunicorn_factory):
    cluster = healthy_cluster
    g = gunicorn_factory(dict(APP_ENV, REDIS_URL=cluster.url), workers=1)
    client = direct_client(cluster)
    tag = "ft"
    victim = cluster.primary_for(f"{PREFIX}{{{tag}}}-x")       # the primary serving the probe keys
    load, health = failover_under_load(
        g, client, kill=victim.kill,
        failed_over=lambda: cluster.healthy() and cluster.primary_for(f"{PREFIX}{{{tag}}}-x") is not victim,
        tag=tag)
    assert load.failures == [], load.failures[:5]
    assert load.done >= 200
    assert health["cache"]["errors"]["redis"] >= 1        # the app did meet the dead primary
    assert health["cache"]["redis_skipped"] >= 1          # and skipped Redis while the breaker was open
    assert health["redis"] == "ok"
    assert victim.port not in [n.port for n in cluster.primaries()]


def test_socketio_broadcast_crosses_instances_through_the_cluster_and_survives_a_failover(
        healthy_cluster, gunicorn_factory):
    from test_socketio import broadcasts_reaching, drain_until, two_instances
    cluster = healthy_cluster
    env = {"REDIS_URL": cluster.url, "SOCKETIO_CHANNEL": "ultrascale-socketio"}
    with two_instances(gunicorn_factory, env) as (_, b, (ca, inbox_a), (cb, inbox_b)):
        delivered = broadcasts_reaching(ca, inbox_b, "m")
        data = wait_for(delivered, timeout=20, interval=0, what="a broadcast from A to reach B")
        assert data["instance"] == 0
        assert cb.call("broadcast", {"msg": "from-b"}, timeout=5) == {"ok": True}
        assert drain_until(inbox_a, "from-b", 5)["instance"] == 1
        # ClusterPubSub subscribes on the node serving the channel name's slot: kill that one.
        victim = cluster.primary_for("ultrascale-socketio")
        victim.kill()
        wait_for(lambda: cluster.healthy(), timeout=60, interval=0.2, what="the failover")
        # RedisManager's listener reconnects (1, 2, 4 ... s apart); emits meanwhile are lost
        # (pub/sub is at most once), so keep sending until one arrives.
        wait_for(delivered, timeout=60, interval=0, what="broadcasts to reach B again after the failover")
        assert "Cannot receive from redis" in b.log()   # B's subscription really was on the victim


class _Front:
    """The fleet's nginx as the load's target (the same interface as a gunicorn fixture)."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str):
        from app_helpers import http_get
        return http_get(self.url + path)


def test_fleet_behind_nginx_rides_out_a_killed_primary(healthy_cluster, make_daemon):
    """The whole path: ultrascaled's two instances (REDIS_URL from the spec's app.env) behind its
    managed nginx, a cluster primary killed under load: no failed request, Redis hits return."""
    cluster = healthy_cluster
    d = make_daemon({"app": {"env": dict(APP_ENV, REDIS_URL=cluster.url)},
                     "instances": {"count": 2}})
    d.start()
    tag = "fl"
    victim = cluster.primary_for(f"{PREFIX}{{{tag}}}-x")
    load, _ = failover_under_load(
        _Front(d.nginx_port), direct_client(cluster), kill=victim.kill,
        failed_over=lambda: cluster.healthy() and cluster.primary_for(f"{PREFIX}{{{tag}}}-x") is not victim,
        tag=tag)
    assert load.failures == [], load.failures[:5]
    assert load.done >= 200
    from app_helpers import http_get
    errors = sum(http_get(f"http://127.0.0.1:{d.base_port + i}/health")[1]["cache"]["errors"]["redis"]
                 for i in range(2))
    assert errors >= 1                                  # the instances did meet the dead primary
