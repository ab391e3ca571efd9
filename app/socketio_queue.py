"""The Socket.IO message queue on any ``REDIS_URL`` topology (see :mod:`app.redis_client`).

python-socketio's ``RedisManager`` understands ``redis://``/``rediss://``/``unix://`` and, in the
same layout as ``REDIS_URL``, ``redis+sentinel://s1:p1,s2:p2/<db>/<service>``: those go to it
unchanged. It has no Redis Cluster form, so :class:`ClusterRedisManager` subclasses it and only
replaces the connection: a ``redis.cluster.RedisCluster`` whose ``pubsub()`` subscribes on the node
serving the channel's slot. Classic pub/sub in a cluster reaches subscribers on every node (the
cluster bus forwards PUBLISH), so instances connected through different nodes still hear each other.
On a lost connection RedisManager's own loop reconnects (1, 2, 4 ... 60 s apart), and the cluster
client then finds the current primaries from any reachable startup node. Pub/sub delivers at most
once: an emit published while no subscriber is connected is lost, as with a single Redis.
"""
from __future__ import annotations

import socketio

from . import redis_client

CONNECT_TIMEOUT = 2.0


class ClusterRedisManager(socketio.RedisManager):
    name = "redis-cluster"

    def __init__(self, url: str, channel: str = "socketio", write_only: bool = False, logger=None,
                 json=None, connect_timeout: float = CONNECT_TIMEOUT):
        self.target = redis_client.parse(url)
        if self.target.kind != redis_client.CLUSTER:
            raise ValueError("ClusterRedisManager needs a redis+cluster:// URL, "
                             f"got {self.target.describe()}")
        self.connect_timeout = connect_timeout
        super().__init__(url, channel=channel, write_only=write_only, logger=logger, json=json)

    def _redis_connect(self):
        # No read timeout: the listener blocks on the subscription until a message arrives.
        # redis-py's own retries stay on for PUBLISH (retries=None).
        self.redis = redis_client.make_client(self.target, socket_timeout=None,
                                              connect_timeout=self.connect_timeout, retries=None)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True


def manager_for(url: str, channel: str):
    """The client manager for ``url``; raises :class:`app.redis_client.RedisUrlError` on a bad URL."""
    target = redis_client.parse(url)
    if target.kind == redis_client.CLUSTER:
        return ClusterRedisManager(url, channel=channel)
    return socketio.RedisManager(url, channel=channel)
