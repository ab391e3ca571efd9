"""MongoDB client settings from env, one lazy client per worker process, indexes in one place.

Reuse in a user's app::

    from app import mongo
    db = mongo.get_database()          # lazily creates this process's MongoClient
    doc = db.items.find_one({"_id": "42"})

    # gunicorn post_fork hook (app/gunicorn_conf.py does this):
    mongo.reset_after_fork()

    # once per deploy, not in every worker:
    #   python -m app.mongo ensure-indexes

Pool sizes come from ``MONGO_MAX_POOL_SIZE`` / ``MONGO_MIN_POOL_SIZE`` / ``MONGO_MAX_CONNECTING``;
the daemon computes the max pool so that instances x workers x max pool stays within the fleet's
connection budget, and takes the others from the spec's ``mongodb`` section.
:func:`settings_from_env` and :func:`client_kwargs` are pure and unit-tested.
Nothing here does I/O at import time; ``pymongo`` itself is imported only when a client is made.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import parse_qsl, unquote

_READ_PREFERENCES = ("primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest")
_COMPRESSORS = ("zlib", "snappy", "zstd")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class MongoSettings:
    """Each field: (env variable, default). See docs/app.md for the table."""
    uri: str | None = None                      # MONGODB_URI
    database: str = "ultrascale"                # MONGODB_DB (else the URI's path, else this)
    max_pool_size: int = 10                     # MONGO_MAX_POOL_SIZE (per process)
    min_pool_size: int = 0                      # MONGO_MIN_POOL_SIZE
    max_connecting: int = 2                     # MONGO_MAX_CONNECTING (pymongo's default)
    max_idle_time_ms: int = 60_000              # MONGO_MAX_IDLE_TIME_MS
    wait_queue_timeout_ms: int = 1_000          # MONGO_WAIT_QUEUE_TIMEOUT_MS
    server_selection_timeout_ms: int = 2_000    # MONGO_SERVER_SELECTION_TIMEOUT_MS
    connect_timeout_ms: int = 2_000             # MONGO_CONNECT_TIMEOUT_MS
    socket_timeout_ms: int = 5_000              # MONGO_SOCKET_TIMEOUT_MS
    compressors: tuple[str, ...] = ("zlib",)    # MONGO_COMPRESSORS (comma list, "" = none)
    zlib_level: int = 1                         # MONGO_ZLIB_LEVEL (-1..9)
    read_preference: str = "primaryPreferred"   # MONGO_READ_PREFERENCE
    retry_reads: bool = True                    # MONGO_RETRY_READS
    retry_writes: bool = True                   # MONGO_RETRY_WRITES
    app_name: str = "ultrascale"                # MONGO_APP_NAME (+ "-<ULTRASCALE_INSTANCE>")
    # Replica sets and mongodb+srv:// (see docs/redis-mongodb.md). None: not passed to pymongo.
    replica_set: str | None = None              # MONGO_REPLICA_SET
    write_concern: str | int | None = None      # MONGO_WRITE_CONCERN ("majority" or 0-50)
    max_staleness_s: int | None = None          # MONGO_MAX_STALENESS_S (>= 90, not with primary)
    heartbeat_frequency_ms: int | None = None   # MONGO_HEARTBEAT_FREQUENCY_MS (pymongo: 10000)
    topology: str = "none"                      # from the URI: none | single | hosts | replica_set | srv
    # Fields set by an environment variable: they win over the same option in MONGODB_URI;
    # every other default yields to the URI (client_kwargs leaves it out).
    explicit: frozenset = field(default=frozenset(), compare=False)
    uri_options: tuple = field(default=(), compare=False)   # (lowercased name, value) from the URI

    @property
    def configured(self) -> bool:
        return bool(self.uri)

    @property
    def replicated(self) -> bool:
        """The URI names a deployment that can fail over (a replica set, several hosts, or a DNS
        seed list), so server selection must outlast an election."""
        return self.topology in ("replica_set", "hosts", "srv")


class MongoSettingsError(ValueError):
    """All problems found in the environment, one per line, each naming its variable."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))


def _database_from_uri(uri: str) -> str | None:
    # mongodb://host:port/dbname?opts -> dbname (no I/O, no pymongo import)
    rest = uri.split("://", 1)[-1]
    if "/" not in rest:
        return None
    path = rest.split("/", 1)[1].split("?", 1)[0]
    return path or None


# An election takes up to about 12 s with MongoDB's default electionTimeoutMillis of 10 s
# (MongoDB manual, "Replica Set Elections"); a write issued meanwhile waits in server selection
# for the new primary and is then retried once (retryable writes). 15 s covers one election.
FAILOVER_SERVER_SELECTION_TIMEOUT_MS = 15_000


@dataclass(frozen=True)
class UriInfo:
    scheme: str
    hosts: tuple[str, ...]
    options: dict          # lowercased option name -> value (the last one given)


def parse_uri(uri: str) -> UriInfo:
    """Pure: the scheme, hosts and options of a MongoDB URI (no DNS, no pymongo). Raises
    ValueError with a message for MONGODB_URI."""
    scheme, _, rest = uri.partition("://")
    netloc, _, tail = rest.partition("/")
    if "?" in netloc:                       # mongodb://h:27017?replicaSet=rs0 (no slash)
        netloc, _, query = netloc.partition("?")
    else:
        query = tail.partition("?")[2]
    hosts = tuple(h for h in netloc.rpartition("@")[2].split(","))
    if not hosts or any(not h.strip() for h in hosts):
        raise ValueError(f"no host in {netloc.rpartition('@')[2]!r}")
    options = {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}
    return UriInfo(scheme.lower(), tuple(unquote(h) for h in hosts), options)


def _uri_topology(info: UriInfo, replica_set: str | None) -> str:
    if info.scheme == "mongodb+srv":
        return "srv"
    if replica_set or info.options.get("replicaset"):
        return "replica_set"
    return "hosts" if len(info.hosts) > 1 else "single"


def _uri_errors(info: UriInfo) -> list[str]:
    errors = []
    direct = info.options.get("directconnection", "").lower() == "true"
    if info.scheme == "mongodb+srv":
        if len(info.hosts) != 1 or ":" in info.hosts[0]:
            errors.append("MONGODB_URI: mongodb+srv:// takes one host name without a port (its DNS "
                          f"SRV record lists the servers), got {','.join(info.hosts)!r}")
        if direct:
            errors.append("MONGODB_URI: directConnection=true cannot be used with mongodb+srv://")
    elif direct and len(info.hosts) > 1:
        errors.append(f"MONGODB_URI: directConnection=true needs exactly one host, got {len(info.hosts)}")
    return errors


def settings_from_env(env: Mapping[str, str] | None = None) -> MongoSettings:
    """Pure: build :class:`MongoSettings` from a mapping. Collects every error before raising."""
    env = os.environ if env is None else env
    errors: list[str] = []
    d = MongoSettings()
    values: dict = {}

    def integer(name, field, lo, hi):
        raw = env.get(name, "")
        if raw == "":
            return
        try:
            v = int(raw)
        except ValueError:
            errors.append(f"{name}: must be an integer, got {raw!r}")
            return
        if not lo <= v <= hi:
            errors.append(f"{name}: must be {lo}-{hi}, got {v}")
            return
        values[field] = v

    def boolean(name, field):
        raw = env.get(name, "").strip().lower()
        if raw == "":
            return
        if raw in _TRUE:
            values[field] = True
        elif raw in _FALSE:
            values[field] = False
        else:
            errors.append(f"{name}: must be true/false, got {env[name]!r}")

    uri = env.get("MONGODB_URI", "").strip() or None
    info = None
    if uri and not uri.startswith(("mongodb://", "mongodb+srv://")):
        errors.append(f"MONGODB_URI: must start with mongodb:// or mongodb+srv://, got {uri.split('://')[0]!r}")
    elif uri:
        try:
            info = parse_uri(uri)
        except ValueError as exc:
            errors.append(f"MONGODB_URI: {exc}")
        else:
            errors.extend(_uri_errors(info))
    values["uri"] = uri
    db = env.get("MONGODB_DB", "").strip() or (uri and _database_from_uri(uri)) or d.database
    values["database"] = db

    integer("MONGO_MAX_POOL_SIZE", "max_pool_size", 1, 10_000)
    integer("MONGO_MIN_POOL_SIZE", "min_pool_size", 0, 10_000)
    integer("MONGO_MAX_CONNECTING", "max_connecting", 1, 10_000)
    integer("MONGO_MAX_IDLE_TIME_MS", "max_idle_time_ms", 0, 86_400_000)
    integer("MONGO_WAIT_QUEUE_TIMEOUT_MS", "wait_queue_timeout_ms", 1, 600_000)
    integer("MONGO_SERVER_SELECTION_TIMEOUT_MS", "server_selection_timeout_ms", 1, 600_000)
    integer("MONGO_CONNECT_TIMEOUT_MS", "connect_timeout_ms", 1, 600_000)
    integer("MONGO_SOCKET_TIMEOUT_MS", "socket_timeout_ms", 1, 600_000)
    integer("MONGO_ZLIB_LEVEL", "zlib_level", -1, 9)
    integer("MONGO_HEARTBEAT_FREQUENCY_MS", "heartbeat_frequency_ms", 500, 600_000)
    integer("MONGO_MAX_STALENESS_S", "max_staleness_s", 90, 86_400)
    boolean("MONGO_RETRY_READS", "retry_reads")
    boolean("MONGO_RETRY_WRITES", "retry_writes")

    if "MONGO_COMPRESSORS" in env:
        comps = tuple(c.strip() for c in env["MONGO_COMPRESSORS"].split(",") if c.strip())
        bad = [c for c in comps if c not in _COMPRESSORS]
        if bad:
            errors.append(f"MONGO_COMPRESSORS: unknown {', '.join(bad)}; choose from {', '.join(_COMPRESSORS)}")
        else:
            values["compressors"] = comps

    rp = env.get("MONGO_READ_PREFERENCE", "").strip()
    if rp:
        if rp not in _READ_PREFERENCES:
            errors.append(f"MONGO_READ_PREFERENCE: must be one of {', '.join(_READ_PREFERENCES)}, got {rp!r}")
        else:
            values["read_preference"] = rp

    rs = env.get("MONGO_REPLICA_SET", "").strip()
    if rs:
        values["replica_set"] = rs
        in_uri = info.options.get("replicaset") if info else None
        if in_uri and in_uri != rs:
            errors.append(f"MONGO_REPLICA_SET: {rs!r} contradicts replicaSet={in_uri} in MONGODB_URI")
    wc = env.get("MONGO_WRITE_CONCERN", "").strip()
    if wc:
        if wc == "majority":
            values["write_concern"] = wc
        elif wc.isdigit() and int(wc) <= 50:
            values["write_concern"] = int(wc)
        else:
            errors.append(f"MONGO_WRITE_CONCERN: must be majority or a number of members 0-50, got {wc!r}")
    if "max_staleness_s" in values:
        effective_rp = values.get("read_preference") or (
            (info.options.get("readpreference") if info else None)) or d.read_preference
        if effective_rp == "primary":
            errors.append("MONGO_MAX_STALENESS_S: only applies to reads from secondaries; "
                          "the read preference is primary")

    app_name = env.get("MONGO_APP_NAME", "").strip() or d.app_name
    instance = env.get("ULTRASCALE_INSTANCE", "").strip()
    values["app_name"] = f"{app_name}-{instance}" if instance else app_name

    max_pool = values.get("max_pool_size", d.max_pool_size)
    min_pool = values.get("min_pool_size", d.min_pool_size)
    if min_pool > max_pool:
        errors.append(f"MONGO_MIN_POOL_SIZE: must be <= MONGO_MAX_POOL_SIZE ({max_pool}), got {min_pool}")
    max_connecting = values.get("max_connecting", d.max_connecting)
    if "max_connecting" in values and max_connecting > max_pool:
        errors.append(f"MONGO_MAX_CONNECTING: must be <= MONGO_MAX_POOL_SIZE ({max_pool}), "
                      f"got {max_connecting}")

    if errors:
        raise MongoSettingsError(errors)
    explicit = frozenset(k for k in values if k not in ("uri", "database", "app_name")
                         ) | ({"app_name"} if env.get("MONGO_APP_NAME", "").strip() else set())
    if info is not None:
        values["topology"] = _uri_topology(info, values.get("replica_set"))
        values["uri_options"] = tuple(sorted(info.options.items()))
        if (values["topology"] in ("replica_set", "hosts", "srv")
                and "server_selection_timeout_ms" not in values
                and "serverselectiontimeoutms" not in info.options):
            values["server_selection_timeout_ms"] = FAILOVER_SERVER_SELECTION_TIMEOUT_MS
    return dataclasses.replace(d, explicit=explicit, **values)


def client_kwargs(settings: MongoSettings) -> dict:
    """Pure: the keyword arguments for ``pymongo.MongoClient(settings.uri, **kwargs)``."""
    kw = {
        "maxPoolSize": settings.max_pool_size,
        "minPoolSize": settings.min_pool_size,
        "maxConnecting": settings.max_connecting,
        "maxIdleTimeMS": settings.max_idle_time_ms,
        "waitQueueTimeoutMS": settings.wait_queue_timeout_ms,
        "serverSelectionTimeoutMS": settings.server_selection_timeout_ms,
        "connectTimeoutMS": settings.connect_timeout_ms,
        "socketTimeoutMS": settings.socket_timeout_ms,
        "readPreference": settings.read_preference,
        "retryReads": settings.retry_reads,
        "retryWrites": settings.retry_writes,
        "appname": settings.app_name,
        # Start the background monitor at once (it does not block the caller) so /health can
        # report the server state from the topology; the client itself is only made after fork.
        "connect": True,
    }
    if settings.compressors:
        kw["compressors"] = ",".join(settings.compressors)
        if "zlib" in settings.compressors:
            kw["zlibCompressionLevel"] = settings.zlib_level
    for name, option in _OPTIONAL.items():
        value = getattr(settings, name)
        if value is not None:
            kw[option] = value
    # pymongo lets keyword arguments override the URI's options; here an option written in
    # MONGODB_URI wins over our defaults, and only an environment variable wins over the URI.
    in_uri = {k for k, _ in settings.uri_options}
    for name, option in _FIELD_OPTION.items():
        if option.lower() in in_uri and name not in settings.explicit:
            kw.pop(option, None)
            if name == "compressors":
                kw.pop("zlibCompressionLevel", None)
    return kw


# settings field -> MongoClient option (the same name in the URI, compared case-insensitively)
_OPTIONAL = {"replica_set": "replicaSet", "write_concern": "w", "max_staleness_s": "maxStalenessSeconds",
             "heartbeat_frequency_ms": "heartbeatFrequencyMS"}
_FIELD_OPTION = {
    "max_pool_size": "maxPoolSize", "min_pool_size": "minPoolSize", "max_connecting": "maxConnecting",
    "max_idle_time_ms": "maxIdleTimeMS", "wait_queue_timeout_ms": "waitQueueTimeoutMS",
    "server_selection_timeout_ms": "serverSelectionTimeoutMS", "connect_timeout_ms": "connectTimeoutMS",
    "socket_timeout_ms": "socketTimeoutMS", "read_preference": "readPreference",
    "retry_reads": "retryReads", "retry_writes": "retryWrites", "app_name": "appname",
    "compressors": "compressors", "zlib_level": "zlibCompressionLevel", **_OPTIONAL,
}


# -- the app's indexes, declared once ---------------------------------------------------------
# collection -> list of (keys, options). Created by `python -m app.mongo ensure-indexes`.
INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict]]] = {
    "items": [
        ([("sku", 1)], {"name": "sku_unique", "unique": True, "sparse": True}),
        ([("updated_at", -1)], {"name": "updated_at_desc"}),
    ],
}


def index_models(indexes=None) -> dict:
    """collection -> [pymongo.IndexModel]; imports pymongo."""
    from pymongo import IndexModel
    indexes = INDEXES if indexes is None else indexes
    return {coll: [IndexModel(keys, **opts) for keys, opts in specs] for coll, specs in indexes.items()}


def ensure_indexes(db, indexes=None) -> dict:
    """Create the declared indexes (idempotent). Returns collection -> created index names."""
    created = {}
    for coll, models in index_models(indexes).items():
        created[coll] = db[coll].create_indexes(models)
    return created


# -- one client per process -------------------------------------------------------------------
class MongoHandle:
    """A lazily created client bound to the pid that made it. ``state`` answers without I/O
    from what pymongo's background monitor already knows."""

    def __init__(self, settings: MongoSettings | None = None, client_factory=None):
        self._settings = settings
        self._client_factory = client_factory
        self._client = None
        self._pid = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> MongoSettings:
        if self._settings is None:
            self._settings = settings_from_env()
        return self._settings

    @property
    def configured(self) -> bool:
        return self.settings.configured

    def client(self):
        pid = os.getpid()
        if self._client is not None and self._pid == pid:
            return self._client
        if not self.configured:
            raise RuntimeError("MONGODB_URI is not set")
        with self._lock:
            if self._client is None or self._pid != pid:
                if self._client_factory is not None:
                    self._client = self._client_factory(self.settings)
                else:
                    from pymongo import MongoClient
                    self._client = MongoClient(self.settings.uri, **client_kwargs(self.settings))
                self._pid = pid
        return self._client

    def database(self):
        return self.client()[self.settings.database]

    def state(self) -> str:
        """``not_configured``, ``ok`` (a readable server is known) or ``down``; no I/O.
        The client is created on first call; that starts pymongo's monitor in the background
        and does not wait for a server."""
        if not self.configured:
            return "not_configured"
        try:
            client = self.client()
            td = client.topology_description
            return "ok" if td.has_readable_server(client.read_preference) else "down"
        except Exception:
            return "down"

    def known_down(self) -> bool:
        """True when pymongo's monitor has already checked every known server and every check
        failed: callers can answer 503 at once instead of waiting serverSelectionTimeoutMS.
        False before the first check completes (a fresh client is given the benefit of doubt).
        No I/O."""
        client = self._client
        if client is None or self._pid != os.getpid():
            return False
        try:
            td = client.topology_description
            if td.has_readable_server(client.read_preference):
                return False
            servers = list(td.server_descriptions().values())
            return bool(servers) and all(sd.error is not None for sd in servers)
        except Exception:
            return False

    def reset_after_fork(self) -> None:
        """Forget the parent's client (its sockets and monitor threads belong to the parent)."""
        self._client = None
        self._pid = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None
        self._pid = None


_default = MongoHandle()


def get_database():
    return _default.database()


def state() -> str:
    return _default.state()


def reset_after_fork() -> None:
    _default.reset_after_fork()


def default_handle() -> MongoHandle:
    return _default


def main(argv=None) -> int:
    import argparse
    import json
    parser = argparse.ArgumentParser(prog="python -m app.mongo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ensure-indexes", help="create the app's declared indexes (once per deploy)")
    sub.add_parser("show-settings", help="print the MongoClient kwargs built from the environment")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_env()
    except MongoSettingsError as exc:
        for e in exc.errors:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "show-settings":
        print(json.dumps({"configured": settings.configured, "database": settings.database,
                          "topology": settings.topology, "kwargs": client_kwargs(settings)}, indent=2))
        return 0
    if not settings.configured:
        print("error: MONGODB_URI is not set", file=sys.stderr)
        return 2
    handle = MongoHandle(settings)
    try:
        created = ensure_indexes(handle.database())
    except Exception as exc:
        print(f"error: ensure-indexes failed: {exc}", file=sys.stderr)
        return 1
    finally:
        handle.close()
    print(json.dumps({"database": settings.database, "indexes": created}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
