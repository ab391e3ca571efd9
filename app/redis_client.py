"""One Redis URL for a single server, a Redis Cluster or a Sentinel-managed primary.

``REDIS_URL`` picks the topology by its scheme; the client is the one redis-py provides for it:

=======================================================  ===========================================
``redis://[user:pw@]host:port/db`` (also ``rediss://``,   one server: ``redis.Redis.from_url`` (every
``unix://``)                                             redis-py URL option works)
``redis+cluster://[user:pw@]h1:p1,h2:p2,...[/]``          Redis Cluster: ``redis.cluster.RedisCluster``
(``rediss+cluster://`` for TLS)                          with every listed node as a startup node
``redis+sentinel://[user:pw@]s1:p1,s2:p2,.../db/service``  Sentinel: ``redis.sentinel.Sentinel(...)
                                                         .master_for(service)``
=======================================================  ===========================================

The sentinel form is python-socketio's own (``socketio.RedisManager`` parses it the same way),
so one ``REDIS_URL`` serves the cache and the Socket.IO queue. redis-py has no URL for a cluster
with several startup nodes or for Sentinel, hence the two ``+`` schemes: the node list is what an
operator already has, and any reachable node is enough to discover the rest. Credentials in a
cluster or sentinel URL are the data nodes'; sentinels are asked without them.

:func:`parse` is pure (no redis import, no I/O) and raises :class:`RedisUrlError` naming the
variable; :func:`make_client` builds the client (a cluster client asks a startup node for the slot
map when it is made, so callers make it lazily, per process).
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SINGLE = "single"
CLUSTER = "cluster"
SENTINEL = "sentinel"

_SINGLE_SCHEMES = ("redis", "rediss", "unix")
_CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
_SENTINEL_SCHEMES = ("redis+sentinel",)
DEFAULT_PORT = 6379


class RedisUrlError(ValueError):
    pass


@dataclass(frozen=True)
class RedisTarget:
    kind: str                                   # single | cluster | sentinel
    url: str
    nodes: tuple[tuple[str, int], ...] = ()     # cluster startup nodes, or the sentinels
    service: str | None = None                  # sentinel: the monitored primary's name
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    def describe(self) -> str:
        """The URL without credentials (for logs and /health)."""
        if self.kind == SINGLE:
            parts = urlsplit(self.url)
            host = parts.netloc.rsplit("@", 1)[-1]
            return f"{parts.scheme}://{host}{parts.path}"
        scheme = self.url.split("://", 1)[0]
        nodes = ",".join(_node_str(h, p) for h, p in self.nodes)
        tail = f"/{self.db}/{self.service}" if self.kind == SENTINEL else ""
        return f"{scheme}://{nodes}{tail}"


def _node_str(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_nodes(netloc: str, name: str) -> tuple[tuple[str, int], ...]:
    nodes = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            raise RedisUrlError(f"{name}: empty host in the node list {netloc!r}")
        if item.startswith("["):                    # [ipv6]:port
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise RedisUrlError(f"{name}: bad IPv6 node {item!r}; write [addr]:port")
            port_s = rest[1:]
        elif item.count(":") > 1:
            raise RedisUrlError(f"{name}: IPv6 node {item!r} needs brackets: [addr]:port")
        else:
            host, _, port_s = item.partition(":")
        if not host:
            raise RedisUrlError(f"{name}: node {item!r} has no host")
        if port_s == "":
            port = DEFAULT_PORT
        elif port_s.isdigit() and 1 <= int(port_s) <= 65535:
            port = int(port_s)
        else:
            raise RedisUrlError(f"{name}: node {item!r}: port must be 1-65535, got {port_s!r}")
        nodes.append((host, port))
    if len(set(nodes)) != len(nodes):
        raise RedisUrlError(f"{name}: a node is listed twice in {netloc!r}")
    return tuple(nodes)


def parse(url: str, name: str = "REDIS_URL") -> RedisTarget:
    """Pure: which topology ``url`` names, and how to reach it. Errors name ``name``."""
    url = url.strip()
    if "://" not in url:
        raise RedisUrlError(f"{name}: not a URL, got {url!r}; e.g. redis://host:6379/0, "
                            "redis+cluster://h1:7000,h2:7001, redis+sentinel://s1:26379/0/mymaster")
    scheme = url.split("://", 1)[0].lower()
    if scheme in _SINGLE_SCHEMES:
        # The rest is redis-py's to parse (from_url, on first use); what urllib rejects here
        # (a bad port, an unclosed "[") would only fail there, behind the breaker.
        try:
            urlsplit(url).port
        except ValueError as exc:
            raise RedisUrlError(f"{name}: {exc}, got {url!r}") from None
        return RedisTarget(SINGLE, url)
    if scheme not in _CLUSTER_SCHEMES and scheme not in _SENTINEL_SCHEMES:
        known = ", ".join(f"{s}://" for s in (*_SINGLE_SCHEMES, *_CLUSTER_SCHEMES, *_SENTINEL_SCHEMES))
        raise RedisUrlError(f"{name}: unknown scheme {scheme + '://'!r}; use one of {known}")
    rest = url.split("://", 1)[1]
    netloc, slash, path = rest.partition("/")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    else:
        path, _, query = path.partition("?")
    if query or "#" in path:
        raise RedisUrlError(f"{name}: {scheme}:// takes no query options, got {query or path!r}; "
                            "timeouts come from the CACHE_* settings")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    nodes = _parse_nodes(hosts, name)
    segments = [s for s in path.split("/")] if path else []
    if scheme in _CLUSTER_SCHEMES:
        if any(segments) and segments != ["0"]:
            raise RedisUrlError(f"{name}: Redis Cluster has only database 0, got path /{path}")
        return RedisTarget(CLUSTER, url, nodes, None, 0, username, password, _CLUSTER_SCHEMES[scheme])
    # redis+sentinel://nodes/db/service (python-socketio's layout)
    if len(segments) != 2 or not segments[0].isdigit() or not segments[1]:
        raise RedisUrlError(f"{name}: a sentinel URL ends with /<db>/<service>, "
                            f"e.g. redis+sentinel://s1:26379,s2:26379/0/mymaster; got path /{path}")
    return RedisTarget(SENTINEL, url, nodes, unquote(segments[1]), int(segments[0]), username, password)


def make_client(target: RedisTarget, *, socket_timeout: float | None, connect_timeout: float,
                retries: int | None = 0, **extra):
    """The redis-py client for ``target``. ``retries=0``: redis-py does not retry (the cache's
    breaker decides); ``None`` keeps redis-py's default retry. ``socket_timeout=None`` waits
    forever on a read (what a pub/sub listener needs)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kw = dict(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, **extra)
    if retries is not None:
        kw["retry"] = Retry(NoBackoff(), retries)
    if target.kind == SINGLE:
        if retries is not None:
            kw["retry_on_timeout"] = False
        return redis.Redis.from_url(target.url, **kw)
    creds = {k: v for k, v in (("username", target.username), ("password", target.password)) if v}
    if target.kind == CLUSTER:
        from redis.cluster import ClusterNode, RedisCluster
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
                            ssl=target.ssl, **creds, **kw)
    from redis.sentinel import Sentinel
    sentinel_kw = {"socket_timeout": socket_timeout if socket_timeout is not None else connect_timeout,
                   "socket_connect_timeout": connect_timeout}
    if retries is not None:
        # Without this each sentinel connection gets redis-py's default retry (3 attempts with
        # exponential backoff): with every sentinel down one lookup took ~7 s, not 2 x timeout.
        sentinel_kw["retry"] = Retry(NoBackoff(), retries)
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kw)
    return sentinel.master_for(target.service, db=target.db, **creds, **kw)


def ping(client, target: RedisTarget) -> None:
    """Raise unless the data nodes answer: for a cluster, every primary the client knows (a
    failed primary fails the check until a replica has taken its slots; the connection error
    also makes redis-py reload the slot map), else the one server or the sentinels' primary."""
    if target.kind == CLUSTER:
        client.ping(target_nodes=client.PRIMARIES)
    else:
        client.ping()
