"""The budget arithmetic of a spec: memory, MongoDB connections and file descriptors for a count
of instances, and the per-worker figures they rest on. The spec's checks refuse what cannot hold;
the capacity planner (core/capacity.py) shows the same arithmetic."""
from __future__ import annotations

import math

from typing import TYPE_CHECKING, Mapping

from ultrascaled.spec import workers as worker_classes
from ultrascaled.spec.errors import BudgetProblem

if TYPE_CHECKING:  # the spec's sections: budget.py sits below the schema that imports it
    from ultrascaled.spec import Spec

MIB = 1024 * 1024

# pymongo keeps, besides its pool, one monitor connection per server plus one RTT connection
# per server with the streaming protocol (MongoDB >= 4.4): docs/app.md.
MONGO_MONITOR_PER_SERVER = 2
# Typical RSS of master + 1 gevent worker of the reference app, idle: docs/benchmarks.md,
# section 4 (`scripts/bench --only footprint`), ultrascaled's 8 instances' RSS / 8 (a test keeps
# them equal); half of it per process; used as the expected case when no calibration is given.
TYPICAL_INSTANCE_RSS_MIB = 65.5
TYPICAL_PROCESS_RSS_MIB = TYPICAL_INSTANCE_RSS_MIB / 2
TYPICAL_RSS_SOURCE = "docs/benchmarks.md, scripts/bench --only footprint"
# The lowest memory.worker_limit_mb accepted: 1.5 x the typical process above. Below it even a
# small app's freshly booted worker (or master) is over the limit, and every recycle starts
# another one over it.
WORKER_LIMIT_FLOOR_MIB = math.ceil(1.5 * TYPICAL_PROCESS_RSS_MIB)
# File descriptors that are not connections. Allowances, not measurements (docs/capacity.md):
DAEMON_BASE_FDS = 64           # stdio, event loop, API listener + clients, logs, nginx pidfd
DAEMON_FDS_PER_INSTANCE = 4    # pidfd, health probe socket, /proc reads, a spare
NGINX_WORKER_BASE_FDS = 32     # listeners, log files, event fds, temp files
GUNICORN_WORKER_BASE_FDS = 32  # stdio, listener, heartbeat file, hub fds, Redis, metrics file
DAEMON_FDS_PER_PROCESS = 2     # a worker type's process: its pidfd, a /proc read of its tree
# The target a calibration must have met for its rate to count as capacity.
TARGET_P99_MS = 2000.0
TARGET_MAX_ERROR_RATE_PCT = 1.0



# ---- small helpers ------------------------------------------------------------------------

def fmt_number(v: float) -> str:
    """Integers without decimals, other numbers with at most one."""
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}".replace(",", "")
    return f"{v:.1f}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def nginx_worker_count(spec: "Spec", cpu_count: int | None) -> tuple[int, str]:
    """nginx worker processes from ``nginx.worker_processes`` and how that was decided."""
    wp = str(spec.nginx.worker_processes).strip()
    if wp == "auto":
        if cpu_count:
            return cpu_count, f"auto = {cpu_count} cores"
        return 1, "auto, counted as 1: cpu count unknown"
    try:
        return max(1, int(wp)), wp
    except ValueError:
        return 1, f"{wp!r} not a number, counted as 1"


def mongo_connections_per_process(pool: int, mongo_servers: int = 1) -> int:
    """Connections one worker process may hold: (pool + monitoring) to every server."""
    return mongo_servers * (pool + MONGO_MONITOR_PER_SERVER)


def mongo_processes(spec: "Spec", spares: bool = True) -> tuple[int, str]:
    """Processes that may each hold a MongoDB pool, and how they are counted: every gunicorn
    worker at instances.max (+ instances.spares, unless `spares` is off: the Kubernetes export
    runs none), every worker type's process at its max, one run of each job (the daemon gives
    them all the same MONGO_* settings)."""
    imax, w = spec.instances.max + (spares_of(spec) if spares else 0), spec.workers
    types = sum(t.max if t.kind == "worker" else 1 for t in getattr(spec, "processes", {}).values())
    return imax * w + types, (f"{imax} x {w}" + (f" + {types} of processes:" if types else ""))


def mongo_pool_that_fits(spec: "Spec", mongo_servers: int = 1, spares: bool = True) -> int:
    """Largest maxPoolSize per process with processes x servers x (pool + 2) within
    mongodb.connection_budget (may be < 1: then no pool fits); :func:`mongo_processes` counts."""
    return (spec.mongodb.connection_budget // (mongo_processes(spec, spares)[0] * mongo_servers)
            - MONGO_MONITOR_PER_SERVER)


def spares_of(spec: "Spec") -> int:
    """instances.spares: warm masters that serve nothing but hold memory, connections and fds."""
    return getattr(spec.instances, "spares", 0)


def masters_at_max(spec: "Spec") -> int:
    """instances.max plus the spares: the masters the fleet may run at once."""
    return spec.instances.max + spares_of(spec)


def spares_text(spec: "Spec") -> str:
    k = spares_of(spec)
    return f" + {plural(k, 'spare')}" if k else ""


def requests_per_worker(spec: "Spec") -> tuple[int, str]:
    """Requests one gunicorn worker serves at once, and the formula: 1 for `sync` (one request
    at a time), `gunicorn.threads` for `gthread`, `gunicorn.worker_connections` for gevent and
    eventlet (one greenlet per connection), `gunicorn.concurrency` for a dotted class (uvicorn's
    by default worker_connections: spec/workers.py)."""
    return worker_classes.requests_per_worker(spec.gunicorn)


def open_connections_per_worker(spec: "Spec") -> int:
    """Client connections one worker may hold open: a sync worker closes each after its answer;
    gthread (idle keep-alive ones included), gevent and eventlet up to worker_connections; a
    dotted class up to its concurrency."""
    return worker_classes.open_connections_per_worker(spec.gunicorn)


def connections_key(spec: "Spec") -> str:
    """The key that sets open_connections_per_worker, named in the budget's message."""
    g = spec.gunicorn
    return ("gunicorn.concurrency" if g.concurrency is not None and worker_classes.is_dotted(g.worker_class)
            else "gunicorn.worker_connections")


def gunicorn_worker_fds(spec: "Spec", pool: int, mongo_servers: int = 1) -> int:
    return (open_connections_per_worker(spec) + mongo_connections_per_process(pool, mongo_servers)
            + GUNICORN_WORKER_BASE_FDS)


def daemon_fds(instances: int, processes: int = 0) -> int:
    """The daemon's own: its base, per web instance, per worker-type process."""
    return DAEMON_BASE_FDS + instances * DAEMON_FDS_PER_INSTANCE + processes * DAEMON_FDS_PER_PROCESS


# ---- the worker types (`processes:` of kind worker), each counted at its max ---------------------

def worker_types(spec: "Spec") -> list[tuple[str, int, int, str]]:
    """(name, max, memory limit in MiB, the key the limit comes from) of each worker type, in
    the spec's order. Jobs are not counted: a run is bounded by its timeout, not sized here."""
    out = []
    for name, t in getattr(spec, "processes", {}).items():
        if t.kind != "worker":
            continue
        own = t.memory_limit_mb
        out.append((name, t.max, own if own is not None else spec.memory.worker_limit_mb,
                    f"processes.{name}.memory_limit_mb" if own is not None else "memory.worker_limit_mb"))
    return out


def worker_types_memory(spec: "Spec") -> int:
    """MiB of every worker type at its max, each process (tree) at its limit."""
    return sum(m * limit for _, m, limit, _ in worker_types(spec))


def worker_types_processes(spec: "Spec") -> int:
    return sum(m for _, m, _, _ in worker_types(spec))


def _types_formula(types: list[tuple[str, int, int, str]]) -> str:
    return ", ".join(f"{name} {m} x {limit} MiB = {m * limit} MiB" for name, m, limit, _ in types)


# ---- budgets ------------------------------------------------------------------------------

def budget_problems(spec: "Spec", count: int, *, nofile_limit: int | None = None,
                    mongo_servers: int = 1, cpu_count: int | None = None,
                    lines: Mapping[str, int] | None = None) -> list[BudgetProblem]:
    """Every budget that cannot hold for ``count`` instances; [] when they all hold.

    Memory and the nginx/gunicorn connection balance are checked for ``count``; MongoDB
    connections and the daemon's file descriptors for ``instances.max`` (the pool is sized for
    it and the daemon may be scaled to it). File-descriptor checks need ``nofile_limit`` (the
    daemon's RLIMIT_NOFILE, inherited by gunicorn and by a managed nginx unless
    ``nginx.worker_rlimit_nofile`` is set) and are skipped without it. ``cpu_count`` resolves
    ``nginx.worker_processes: auto`` (counted as 1 without it). ``lines`` maps key paths to YAML
    lines, as in the spec's messages (``memory.fleet_budget_mb (line 3): ...``).
    """
    lines = lines or {}

    def where(p: str) -> str:
        return f"{p} (line {lines[p]})" if p in lines else p

    problems: list[str] = []
    w = spec.workers
    imax = masters_at_max(spec)        # the spares hold pools and fds as instances do
    k = spares_of(spec)
    sp = spares_text(spec)

    # Memory, worst case: every process at the per-worker limit (the master counted alike).
    limit = spec.memory.worker_limit_mb
    budget = spec.memory.fleet_budget_mb
    need = (count + k) * (w + 1) * limit
    types = worker_types(spec)   # and every worker type at its max, each process at its limit
    if types:
        web, need = need, need + worker_types_memory(spec)
        if need > budget:
            problems.append(
                f"{where('memory.fleet_budget_mb')}: {plural(count, 'instance')}{sp} x ({plural(w, 'worker')} + "
                f"1 master) x {limit} MiB = {web} MiB, plus the worker types at their max: "
                f"{_types_formula(types)}; {need} MiB in all exceeds the budget of {budget} MiB by "
                f"{need - budget} MiB")
    elif need > budget:
        problems.append(
            f"{where('memory.fleet_budget_mb')}: {plural(count, 'instance')}{sp} x ({plural(w, 'worker')} + 1 master)"
            f" x {limit} MiB = {need} MiB exceeds the budget of {budget} MiB by {need - budget} MiB")

    # MongoDB: the pool the daemon hands out, plus monitoring, to every server, at instances.max.
    cb = spec.mongodb.connection_budget
    pool = spec.mongo_pool_per_process()
    fit = mongo_pool_that_fits(spec, mongo_servers)
    servers = plural(mongo_servers, "server")
    nproc, counted = mongo_processes(spec)
    typed = nproc != imax * w   # worker and job types hold pools too: say so in the figures
    counted = f"({counted})" if typed else counted
    who = f"{imax} instances x {plural(w, 'worker')}" + (f" + {nproc - imax * w} processes of "
                                                          "processes:" if typed else "")
    if pool < 1:
        need1 = nproc * mongo_connections_per_process(1, mongo_servers)
        problems.append(
            f"{where('mongodb.connection_budget')}: {cb} connections cannot give each of "
            f"{who} a pool of 1: {counted} x (1 pool + "
            f"{MONGO_MONITOR_PER_SERVER} monitoring) x {servers} = {need1} needed, "
            f"over by {need1 - cb}")
    else:
        per = mongo_connections_per_process(pool, mongo_servers)
        need = nproc * per
        if need > cb:
            hint = (f"a pool of {fit} per process fits ({cb} // ({counted} x {mongo_servers})"
                    f" - {MONGO_MONITOR_PER_SERVER})" if fit >= 1 else
                    f"no pool fits; the budget must be at least "
                    f"{nproc * mongo_connections_per_process(1, mongo_servers)}")
            lead = (f"{plural(imax, 'instance')} (instances.max{' + spares' if k else ''}) x {plural(w, 'worker')}"
                    if not typed
                    else f"{counted} processes")
            problems.append(
                f"{where('mongodb.connection_budget')}: {lead} x ({pool} pool + {MONGO_MONITOR_PER_SERVER} "
                f"monitoring) x {servers} = {need} connections exceeds the budget of {cb} by {need - cb}; {hint}")
        for key in ("min_pool_size", "max_connecting"):
            value = getattr(spec.mongodb, key)
            if value > pool:
                problems.append(
                    f"{where('mongodb.' + key)}: {value} exceeds the pool each process gets "
                    f"({pool} = {cb} // {counted if typed else f'({counted})'} - {MONGO_MONITOR_PER_SERVER})")

    # nginx (managed: its settings are ours) proxies each client over 2 connections.
    ng = spec.nginx
    if ng.mode == "managed":
        ng_nofile, src = ((ng.worker_rlimit_nofile, "nginx.worker_rlimit_nofile")
                          if ng.worker_rlimit_nofile > 0 else (nofile_limit, "inherited from the daemon"))
        if ng_nofile is not None:
            need = ng.worker_connections + NGINX_WORKER_BASE_FDS
            if need > ng_nofile:
                problems.append(
                    f"{where('nginx.worker_connections')}: {ng.worker_connections} connections + "
                    f"{NGINX_WORKER_BASE_FDS} other files per nginx worker = {need} file "
                    f"descriptors exceeds its nofile limit of {ng_nofile} ({src}) by "
                    f"{need - ng_nofile}")

    if nofile_limit is not None:
        need = gunicorn_worker_fds(spec, max(pool, 0), mongo_servers)
        if need > nofile_limit:
            problems.append(
                f"{where(connections_key(spec))}: {open_connections_per_worker(spec)} "
                f"connections + {mongo_connections_per_process(max(pool, 0), mongo_servers)} MongoDB "
                f"({servers} x ({max(pool, 0)} pool + {MONGO_MONITOR_PER_SERVER} monitoring)) + "
                f"{GUNICORN_WORKER_BASE_FDS} other files per gunicorn worker = {need} file "
                f"descriptors exceeds the nofile limit of {nofile_limit} by {need - nofile_limit}")
        procs = worker_types_processes(spec)
        need = daemon_fds(imax, procs)
        if need > nofile_limit:
            per_type = (f" + {procs} worker-type processes at their max ("
                        + ", ".join(f"{name} {m}" for name, m, _, _ in types)
                        + f") x {DAEMON_FDS_PER_PROCESS}") if types else ""
            problems.append(
                f"{where('instances.max')}: the daemon needs {DAEMON_BASE_FDS} + {imax} instances"
                f" x {DAEMON_FDS_PER_INSTANCE}{per_type} = {need} file descriptors, which exceeds its nofile"
                f" limit of {nofile_limit} by {need - nofile_limit}")
    return [BudgetProblem(p) for p in problems]
