"""Capacity planner: every capacity figure computed from the spec, with the arithmetic shown.

Two pure entry points (no psutil, aiohttp or subprocess; resource limits are passed in):

* :func:`budget_problems` -- every budget a spec cannot hold for ``count`` instances (memory,
  MongoDB connections, file descriptors, gunicorn connections vs what nginx can proxy), each a
  message naming the spec key and the arithmetic, e.g.
  ``memory.fleet_budget_mb: 4 instances x (2 workers + 1 master) x 500 MiB = 6000 MiB exceeds
  the budget of 4096 MiB by 1904 MiB``.
* :func:`plan_for` -- instances, workers, connections, MongoDB pool, memory, file descriptors and
  (from a load-test calibration) throughput for N concurrent users, as a :class:`CapacityPlan`
  whose ``arithmetic`` lists every figure as ``figure = formula = value``.

Pure: the host's figures (CPU count, memory, RLIMIT_NOFILE) are given to it; the command that
reads them, ``ultrascalectl plan``, is surface/plan_command.py. Formulas and constants:
docs/capacity.md.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ultrascaled.spec.budget import DAEMON_FDS_PER_PROCESS, worker_types
from ultrascaled.spec.budget import (DAEMON_BASE_FDS, DAEMON_FDS_PER_INSTANCE, GUNICORN_WORKER_BASE_FDS, MIB, MONGO_MONITOR_PER_SERVER, NGINX_WORKER_BASE_FDS, TARGET_MAX_ERROR_RATE_PCT, TARGET_P99_MS, TYPICAL_INSTANCE_RSS_MIB, TYPICAL_PROCESS_RSS_MIB, TYPICAL_RSS_SOURCE, fmt_number, budget_problems, daemon_fds, gunicorn_worker_fds, mongo_connections_per_process, mongo_pool_that_fits, nginx_worker_count, open_connections_per_worker, requests_per_worker)

if TYPE_CHECKING:  # pragma: no cover
    from ultrascaled.spec import Spec



# ---- calibration --------------------------------------------------------------------------

class CalibrationError(ValueError):
    """The calibration data cannot be used; the message says why and what is expected."""


@dataclass(frozen=True)
class Calibration:
    """One measured point: ``instances`` served ``users`` concurrent users at ``rps`` req/s."""
    instances: int
    rps: float
    p99_ms: float
    users: int | None = None
    error_rate_pct: float | None = None
    rss_per_instance_bytes: int | None = None
    source: str = "calibration"
    p99_target_ms: float = TARGET_P99_MS  # min(target, health.timeout) for a measurement

    @property
    def meets_target(self) -> bool:
        return self.p99_ms < self.p99_target_ms and (self.error_rate_pct or 0.0) < TARGET_MAX_ERROR_RATE_PCT

    @property
    def rps_per_instance(self) -> float:
        return self.rps / self.instances

    @property
    def users_per_instance(self) -> float | None:
        return None if self.users is None else self.users / self.instances


def _num(data: Mapping[str, Any], key: str, *, required: bool, integer: bool = False) -> Any:
    v = data.get(key)
    if v is None:
        if required:
            raise CalibrationError(f"calibration: `{key}` is missing")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise CalibrationError(f"calibration: `{key}` must be a number >= 0, got {v!r}")
    return int(v) if integer else float(v)


def parse_calibration(data: Any, instances: int | None = None,
                      target_ms: float = TARGET_P99_MS) -> Calibration:
    """Read one of the accepted calibration shapes (docs/capacity.md):

    * small: ``{"instances": 2, "users": 1000, "rps": 5196.3, "p99_ms": 346.3,
      "error_rate_pct": 0, "rss_per_instance_bytes": 63963136}`` (users, error rate, RSS optional;
      ``fleet_rss_bytes`` is accepted instead of the per-instance RSS);
    * ``ultrascale-loadtest ... --json FILE`` (``scripts/loadtest`` in a checkout) output (``rps``, ``users``,
      ``latency.p99``, ``error_rate_pct``) with ``"instances"`` added;
    * its ``--series`` output (``{"steps": [...]}``): the step with the most users that met
      p99 < 2 s and < 1 % errors (else the first step), with ``"instances"`` added.

    ``instances`` (from ``--calibration-instances``) overrides the file's. ``target_ms``: the p99
    it is judged against (``latency_target(spec)``: the probes share the users' queue).
    """
    if not isinstance(data, Mapping):
        raise CalibrationError(f"calibration: expected a JSON object, got {type(data).__name__}")
    src = "calibration"
    if isinstance(data.get("steps"), list):
        steps = [s for s in data["steps"] if isinstance(s, Mapping)]
        if not steps:
            raise CalibrationError("calibration: `steps` is empty")
        parsed = []
        for s in steps:
            flat = dict(s)
            flat.setdefault("instances", data.get("instances"))
            parsed.append(parse_calibration(flat, instances, target_ms))
        good = [c for c in parsed if c.meets_target]
        best = max(good, key=lambda c: (c.users or 0, c.rps)) if good else parsed[0]
        return dataclasses.replace(best, source=f"load-test series step of {best.users} users")
    flat = dict(data)
    if isinstance(data.get("latency"), Mapping):  # the load tester's --json of one run
        flat.setdefault("p99_ms", data["latency"].get("p99"))
        src = f"load test of {data.get('url', '?')}"
    if instances is not None:
        flat["instances"] = instances
    n = _num(flat, "instances", required=False, integer=True)
    if not n:
        raise CalibrationError(
            "calibration: `instances` (how many instances served the load test) is missing or 0;"
            " add \"instances\": N to the JSON or pass --calibration-instances N")
    rss = _num(flat, "rss_per_instance_bytes", required=False, integer=True)
    fleet_rss = _num(flat, "fleet_rss_bytes", required=False, integer=True)
    if rss is None and fleet_rss:
        rss = fleet_rss // n
    rps = _num(flat, "rps", required=True)
    p99 = _num(flat, "p99_ms", required=True)
    return Calibration(instances=n, rps=rps, p99_ms=p99,
                       users=_num(flat, "users", required=False, integer=True),
                       error_rate_pct=_num(flat, "error_rate_pct", required=False),
                       rss_per_instance_bytes=rss or None, source=src, p99_target_ms=target_ms)


# ---- measurement (`plan --measure`) -------------------------------------------------------

@dataclass(frozen=True)
class MeasuredStep:
    """One step of `plan --measure`: ``users`` concurrent connections (closed loop, no think
    time) against one instance for ``seconds``."""
    users: int
    rps: float
    p95_ms: float | None
    p99_ms: float | None
    error_rate_pct: float | None
    requests: int
    seconds: float
    p50_ms: float | None = None
    statuses: Mapping[str, int] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    probes: int = 0                       # GET health.path during the step, timeout health.timeout
    failed_probes: int = 0
    failed_run: int = 0                   # the most failed probes in a row
    probe_max_ms: float | None = None

    def meets(self, p99_target_ms: float, health_failures: int = 0) -> bool:
        """p99 under the target, errors under 1 %, and (with ``health_failures``) fewer failed
        health probes in a row than make the daemon restart an instance."""
        return (self.requests > 0 and self.p99_ms is not None and self.p99_ms < p99_target_ms
                and (self.error_rate_pct or 0.0) < TARGET_MAX_ERROR_RATE_PCT
                and not (health_failures and self.failed_run >= health_failures))


@dataclass(frozen=True)
class Measurement:
    """What `plan --measure` measured on one instance of the spec's app (surface/plan_command.py
    runs it; this module only reads the figures)."""
    steps: tuple[MeasuredStep, ...]
    urls: tuple[str, ...]
    workers: int
    worker_class: str
    rss_bytes: int | None = None          # master + workers after the last step
    stopped: str = "every step ran"       # why the rising steps ended
    bounds: str = ""                      # e.g. "60 s, 200000 requests"
    health_failures: int = 0              # health.failures: failed probes in a row that restart


def step_from_loadtest(data: Mapping[str, Any]) -> MeasuredStep:
    """A step from the load tester's ``--json`` of one run (ultrascale-loadtest, docs/loadtest.md)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("latency"), Mapping):
        raise CalibrationError("load test result: expected its --json object with `latency`")
    lat = data["latency"]
    num = lambda v: None if v is None else float(v)  # noqa: E731
    return MeasuredStep(users=int(data.get("users") or 0), rps=float(data.get("rps") or 0.0),
                        p50_ms=num(lat.get("p50")), p95_ms=num(lat.get("p95")), p99_ms=num(lat.get("p99")),
                        error_rate_pct=num(data.get("error_rate_pct")),
                        requests=int(data.get("total") or 0), seconds=float(data.get("wall_s") or 0.0),
                        statuses=dict(data.get("status_counts") or {}),
                        errors=dict(data.get("error_counts") or {}),
                        warnings=tuple(data.get("warnings") or ()))


def latency_target(spec: "Spec") -> tuple[float, str]:
    """The p99 one instance must hold: the product's target, and under it the daemon's health
    probe timeout, since a probe waits in the same queue as the users' requests and probes that
    time out take the instance out of service (the 1-instance plan that failed for 1000 users)."""
    probe_ms = spec.health.timeout * 1000.0
    target = min(TARGET_P99_MS, probe_ms)
    return target, (f"min(target p99, health.timeout) = min({fmt_number(TARGET_P99_MS)} ms, "
                    f"{fmt_number(probe_ms)} ms) = {fmt_number(target)} ms")


def measure_steps(users: int, spec: "Spec", steps: list[int] | None = None) -> list[int]:
    """The rising concurrency steps: given ones, else 5 doubling steps up to what one instance
    accepts at once (workers x requests per worker), at most ``users``."""
    if steps:
        return sorted(set(steps))
    rw, _ = requests_per_worker(spec)
    cap = max(1, min(users, spec.workers * rw))
    return sorted({max(1, round(cap / 2 ** k)) for k in range(4, -1, -1)})


def held_step(m: Measurement, p99_target_ms: float) -> MeasuredStep | None:
    """The step with the most users that held the target before the first one that missed (a
    later pass after a miss is noise, not capacity); None when the first step missed."""
    best = None
    for st in sorted(m.steps, key=lambda x: x.users):
        if not st.meets(p99_target_ms, m.health_failures):
            break
        best = st
    return best


def measured_capacity(m: Measurement, p99_target_ms: float, needed: int) -> tuple[MeasuredStep | None, str]:
    """The step to plan from and what it tells: ``knee`` (a higher step missed, so this is what
    one instance holds), ``enough`` (every step held, up to ``needed`` users or more), ``lower
    bound`` (every step held but the bounds stopped the steps below ``needed``: one instance
    holds at least this, how much more is not known), ``none`` (the first step missed)."""
    best = held_step(m, p99_target_ms)
    if best is None:
        return None, "none"
    if any(x.users > best.users for x in m.steps):
        return best, "knee"
    return best, "enough" if best.users >= needed else "lower bound"


def calibration_from_measurement(m: Measurement, p99_target_ms: float, needed: int = 0) -> Calibration:
    """The measurement as the planner's calibration: 1 instance at the step to plan from
    (:func:`measured_capacity`); ``users`` is None for a lower bound, which plans nothing.
    ``needed``: the users one instance would have to hold (min(users, what it accepts at once))."""
    if not m.steps:
        raise CalibrationError("measurement: no step ran")
    best, kind = measured_capacity(m, p99_target_ms, needed)
    st = best or min(m.steps, key=lambda x: x.users)
    src = {"knee": f"measured: 1 instance held {st.users} users, the next step missed",
           "enough": f"measured: 1 instance held {st.users} users, every step",
           "lower bound": f"measured: 1 instance held {st.users} users, every step, then the bounds stopped it",
           "none": f"measured: 1 instance missed at {st.users} users, the first step"}[kind]
    return Calibration(instances=1, rps=st.rps, p99_ms=st.p99_ms if st.p99_ms is not None else math.inf,
                       users=None if kind == "lower bound" else st.users, error_rate_pct=st.error_rate_pct,
                       rss_per_instance_bytes=m.rss_bytes, source=src, p99_target_ms=p99_target_ms)


def _judged_steps(m: "Measurement", target: float):
    """(step, it meets the target, it counts: it and every step below it meet it, its error
    rate as text) for the measured steps, fewest users first."""
    first_miss = False
    for st in sorted(m.steps, key=lambda x: x.users):
        meets = st.meets(target, m.health_failures)
        yield st, meets, meets and not first_miss, ("n/a" if st.error_rate_pct is None else
                                                     f"{st.error_rate_pct:.2f}%")
        first_miss = first_miss or not meets


def _measured_lines(m: Measurement, target: float, target_formula: str) -> list[str]:
    ar = [f"latency target per instance = {target_formula}"]
    for st, meets, ok, err in _judged_steps(m, target):
        per_worker = st.rps / m.workers if m.workers else st.rps
        probes = (f", health probes {st.failed_probes} of {st.probes} failed ({st.failed_run} in a row, "
                  f"{m.health_failures} restart)" if st.probes else "")
        ar.append(f"measured at {st.users} users: {fmt_number(st.rps)} req/s "
                  f"({fmt_number(per_worker)} per worker x {m.workers}), p95 "
                  f"{_ms(st.p95_ms)}, p99 {_ms(st.p99_ms)}, errors {err}, {st.requests} requests in "
                  f"{fmt_number(st.seconds)} s{probes}: " + ("holds" if ok else "misses"))
    return ar


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{fmt_number(v)} ms"


# ---- the plan -----------------------------------------------------------------------------

@dataclass
class CapacityPlan:
    """What :func:`plan_for` found; ``arithmetic`` holds every figure as a formula."""
    users: int
    instances: int
    workers_per_instance: int
    worker_connections: int
    connection_capacity: int              # instances x workers x requests_per_worker
    nginx_capacity: int | None            # concurrent proxied clients (managed nginx), else None
    mongo_pool_per_process: int           # the largest pool that keeps the fleet in budget
    mongo_pool_daemon: int                # what spec.mongo_pool_per_process() hands out
    mongo_connections: int                # at instances.max with the daemon's pool
    mongo_budget: int
    memory_worst_mib: int
    memory_expected_mib: float
    memory_expected_source: str
    memory_budget_mib: int
    mem_total_mib: int
    fds_gunicorn_worker: int
    fds_nginx_worker: int | None
    fds_daemon: int
    nofile_limit: int
    nofile_nginx: int | None              # nginx.worker_rlimit_nofile, else inherited
    throughput_rps: float | None          # None: not measured
    verdict: str                          # holds | extrapolated | does not hold | not measured
    arithmetic: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    calibration: Calibration | None = None
    worker_class: str = "sync"
    requests_per_worker: int = 1          # 1 sync, threads gthread, worker_connections gevent
    measurement: Measurement | None = None  # plan --measure
    measured: list[str] = field(default_factory=list)  # what --measure measured ...
    assumed: list[str] = field(default_factory=list)   # ... and what the plan assumes
    spares: int = 0                       # instances.spares: warm masters, not capacity (docs/spares.md)
    spares_memory_mib: float = 0.0        # what they hold, expected (in memory_expected_mib too)
    spares_memory_worst_mib: int = 0      # worst case (in memory_worst_mib too)
    process_types: list[dict] = field(default_factory=list)   # each worker type at its max

    @staticmethod
    def type_line(t: dict) -> tuple[str, str, str]:
        """A worker type's row: its counts, its memory at max, the daemon's fds for it."""
        return (f"worker type {t['name']}", f"{t['count']}..{t['max']}",
                f"memory at max {t['max']} x {t['limit_mib']} MiB = {t['memory_at_max_mib']} MiB "
                f"({t['limit_key']}); daemon fds {t['max']} x {DAEMON_FDS_PER_PROCESS} = {t['fds_daemon']}")

    @property
    def fits(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fits"] = self.fits
        d["throughput_measured"] = self.throughput_rps is not None
        if not self.process_types:   # a spec without processes: the JSON it always had
            del d["process_types"]
        return d


def plan_for(spec: "Spec", users: int, *, calibration: Mapping[str, Any] | Calibration | None = None,
             cpu_count: int, mem_total_bytes: int, nofile_limit: int,
             mongo_servers: int = 1, measurement: Measurement | None = None) -> CapacityPlan:
    """Instances, workers, connections, MongoDB pool, memory, file descriptors and throughput
    for ``users`` concurrent users (each holding one connection with a request in flight).
    ``measurement`` (from ``plan --measure``) takes the place of a calibration: the step of one
    instance that held min(target p99, health.timeout) with the most users."""
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    if measurement is not None and calibration is not None:
        raise ValueError("give a calibration or a measurement, not both")
    ar: list[str] = []
    lower_bound_note = None
    if measurement is not None:
        target, target_formula = latency_target(spec)
        ar += _measured_lines(measurement, target, target_formula)
        rw0, _ = requests_per_worker(spec)
        needed = min(users, spec.workers * rw0)
        cal = calibration_from_measurement(measurement, target, needed)
        if cal.users is None:
            lower_bound_note = (f"every step held, but the bounds stopped the steps at "
                                f"{max(x.users for x in measurement.steps)} users, below the {needed} one instance "
                                "would have to hold: how many it holds is not known, so no count is planned from "
                                "it; raise --max-seconds or --max-requests, or give --steps")
    else:
        target, target_formula = latency_target(spec)
        cal = (dataclasses.replace(calibration, p99_target_ms=target) if isinstance(calibration, Calibration)
               else None if calibration is None else parse_calibration(calibration, target_ms=target))
        if cal is not None:
            ar.append(f"the calibration is judged against {target_formula}")
    problems: list[str] = []
    notes: list[str] = []
    inst = spec.instances
    w = spec.workers
    wc = spec.gunicorn.worker_connections
    rw, rw_formula = requests_per_worker(spec)

    # Instances: enough request slots, and (with a calibration) enough measured capacity.
    per_instance_conns = w * rw
    by_conns = math.ceil(users / per_instance_conns)
    ar.append(f"requests at once per worker = {rw_formula}")
    ar.append(f"connections per instance = gunicorn.workers x requests per worker = "
              f"{w} x {rw} = {per_instance_conns}")
    ar.append(f"instances for connections = ceil(users / connections per instance) = "
              f"ceil({users} / {per_instance_conns}) = {by_conns}")
    if spec.gunicorn.worker_class == "sync" and users > per_instance_conns:
        notes.append(f"a sync worker serves one request at a time: {users} users need {by_conns} "
                     "instances of "
                     f"{w} {'worker' if w == 1 else 'workers'}; for many concurrent users raise "
                     "gunicorn.workers, or use worker_class gthread with gunicorn.threads, or "
                     "gevent (docs/your-app.md)")
    need = by_conns
    by_measured = None
    if cal is not None and cal.meets_target and cal.users_per_instance:
        by_measured = math.ceil(users / cal.users_per_instance)
        ar.append(f"users per instance (measured) = {'users of the step that held' if measurement else 'calibration users'}"
                  f" / instances = {cal.users} / {cal.instances} = {fmt_number(cal.users_per_instance)}")
        ar.append(f"instances for measured capacity = ceil({users} / {fmt_number(cal.users_per_instance)}) "
                  f"= {by_measured}")
        need = max(need, by_measured)
    instances = max(need, inst.min)
    ar.append(f"instances = max(needed, instances.min) = max({need}, {inst.min}) = {instances}")
    if instances > inst.max:
        problems.append(f"instances.max: {users} users need {instances} instances, more than "
                        f"instances.max {inst.max}")
    capacity = instances * per_instance_conns
    ar.append(f"connection capacity = instances x workers x requests per worker = "
              f"{instances} x {w} x {rw} = {capacity}")

    # The autoscaler counts capacity the same way: can its max_replicas reach this plan?
    auto = getattr(spec, "autoscale", None)
    if auto is not None and auto.enabled:
        lo, hi = auto.bounds(inst)
        ar.append(f"autoscale bounds = min_replicas..max_replicas = {lo}..{hi} "
                  f"(connection capacity at max = {hi} x {w} x {rw} = {hi * per_instance_conns})")
        if instances > hi:
            notes.append(f"autoscale.max_replicas {hi} is below the {instances} instances {users} "
                         f"users need: the autoscaler stops at {hi} x {w} x {rw} = "
                         f"{hi * per_instance_conns} requests at once")

    # nginx in front: each proxied client takes a client and an upstream connection.
    nginx_capacity = None
    if spec.nginx.mode == "managed":
        nw, how = nginx_worker_count(spec, cpu_count)
        nginx_capacity = nw * spec.nginx.worker_connections // 2
        ar.append(f"nginx capacity = nginx workers ({how}) x nginx.worker_connections / 2 = "
                  f"{nw} x {spec.nginx.worker_connections} / 2 = {nginx_capacity}")
        if users > nginx_capacity:
            problems.append(f"nginx.worker_connections: {users} users exceed what nginx can proxy"
                            f" ({nw} x {spec.nginx.worker_connections} / 2 = {nginx_capacity}) by "
                            f"{users - nginx_capacity}")
    else:
        notes.append(f"nginx.mode is {spec.nginx.mode}: its connection capacity is not ours to "
                     "compute")

    # MongoDB.
    cb = spec.mongodb.connection_budget
    daemon_pool = spec.mongo_pool_per_process()
    fit = mongo_pool_that_fits(spec, mongo_servers)
    mongo_conns = inst.max * w * mongo_connections_per_process(max(daemon_pool, 0), mongo_servers)
    ar.append(f"MongoDB pool handed out = mongodb.connection_budget // (instances.max x workers) = "
              f"{cb} // ({inst.max} x {w}) = {daemon_pool}")
    ar.append(f"MongoDB connections = instances.max x workers x servers x (pool + "
              f"{MONGO_MONITOR_PER_SERVER} monitoring) = {inst.max} x {w} x {mongo_servers} x "
              f"({daemon_pool} + {MONGO_MONITOR_PER_SERVER}) = {mongo_conns} (budget {cb})")
    ar.append(f"MongoDB pool that fits = connection_budget // (instances.max x workers x servers) "
              f"- {MONGO_MONITOR_PER_SERVER} = {cb} // ({inst.max} x {w} x {mongo_servers}) - "
              f"{MONGO_MONITOR_PER_SERVER} = {fit}")

    # Memory.
    limit = spec.memory.worker_limit_mb
    budget = spec.memory.fleet_budget_mb
    mem_total_mib = mem_total_bytes // MIB
    worst = instances * (w + 1) * limit
    types = worker_types(spec)
    process_types = [{"name": name, "count": spec.processes[name].count, "min": spec.processes[name].min,
                      "max": m, "limit_mib": lim, "limit_key": key, "memory_at_max_mib": m * lim,
                      "fds_daemon": m * DAEMON_FDS_PER_PROCESS} for name, m, lim, key in types]
    if not types:
        ar.append(f"memory worst case = instances x (workers + 1 master) x memory.worker_limit_mb = "
                  f"{instances} x ({w} + 1) x {limit} MiB = {worst} MiB (budget {budget} MiB, "
                  f"host {mem_total_mib} MiB)")
    else:   # and every worker type at its max, each process (tree) at its limit
        web = worst
        worst += sum(t["memory_at_max_mib"] for t in process_types)
        ar.append(f"memory worst case = instances x (workers + 1 master) x memory.worker_limit_mb + "
                  f"each worker type's max x its limit = {instances} x ({w} + 1) x {limit} MiB + "
                  + " + ".join(f"{t['max']} x {t['limit_mib']} MiB ({t['name']})" for t in process_types)
                  + f" = {web} + {worst - web} = {worst} MiB (budget {budget} MiB, host {mem_total_mib} MiB)")
    if cal is not None and cal.rss_per_instance_bytes:
        per = cal.rss_per_instance_bytes / MIB
        expected = instances * per
        mem_src = f"measured {fmt_number(per)} MiB per instance ({cal.source})"
        ar.append(f"memory expected = instances x measured RSS per instance = {instances} x "
                  f"{fmt_number(per)} MiB = {fmt_number(expected)} MiB")
    else:
        per = TYPICAL_PROCESS_RSS_MIB * (w + 1)
        expected = instances * per
        mem_src = (f"typical {TYPICAL_INSTANCE_RSS_MIB} MiB for master + 1 gevent worker of the "
                   f"reference app, idle ({TYPICAL_RSS_SOURCE}), not measured for this app")
        ar.append(f"memory expected = instances x {fmt_number(TYPICAL_PROCESS_RSS_MIB)} MiB per process x "
                  f"(workers + 1) = {instances} x {fmt_number(TYPICAL_PROCESS_RSS_MIB)} x ({w} + 1) = "
                  f"{fmt_number(expected)} MiB (typical, {TYPICAL_RSS_SOURCE})")
    k = getattr(inst, "spares", 0)
    spare_worst, spare_expected = k * (w + 1) * limit, k * per
    if k:   # a spare holds what an instance holds and serves nothing
        worst, expected = worst + spare_worst, expected + spare_expected
        ar.append(f"spares (instances.spares) = {k} x (memory of an instance): worst {k} x ({w} + 1) x "
                  f"{limit} MiB = {spare_worst} MiB, expected {k} x {fmt_number(per)} MiB = "
                  f"{fmt_number(spare_expected)} MiB; both in the totals above")
    if worst > mem_total_mib:
        problems.append(f"memory.worker_limit_mb: worst case {instances}{f' + {k} spares' if k else ''} x ({w} + 1) x {limit} MiB"
                        + (" + the worker types at their max" if types else "") + " ="
                        f" {worst} MiB exceeds this host's memory of {mem_total_mib} MiB by "
                        f"{worst - mem_total_mib} MiB")
    if expected > budget:
        problems.append(f"memory.fleet_budget_mb: expected {instances}{f' + {k} spares' if k else ''} x {fmt_number(per)} MiB = "
                        f"{fmt_number(expected)} MiB exceeds the budget of {budget} MiB")

    # File descriptors.
    fds_g = gunicorn_worker_fds(spec, max(daemon_pool, 0), mongo_servers)
    ar.append(f"fds per gunicorn worker = open connections + MongoDB + other = "
              f"{open_connections_per_worker(spec)} + "
              f"{mongo_connections_per_process(max(daemon_pool, 0), mongo_servers)} + "
              f"{GUNICORN_WORKER_BASE_FDS} = {fds_g} (nofile {nofile_limit})")
    fds_n = ng_nofile = None
    if spec.nginx.mode == "managed":
        ng_nofile = spec.nginx.worker_rlimit_nofile or nofile_limit
        fds_n = spec.nginx.worker_connections + NGINX_WORKER_BASE_FDS
        ar.append(f"fds per nginx worker = nginx.worker_connections + other = "
                  f"{spec.nginx.worker_connections} + {NGINX_WORKER_BASE_FDS} = {fds_n} "
                  f"(nofile {ng_nofile})")
    procs = sum(t["max"] for t in process_types)
    fds_d = daemon_fds(inst.max, procs)
    if not types:
        ar.append(f"fds of the daemon = {DAEMON_BASE_FDS} + instances.max x {DAEMON_FDS_PER_INSTANCE} = "
                  f"{DAEMON_BASE_FDS} + {inst.max} x {DAEMON_FDS_PER_INSTANCE} = {fds_d} "
                  f"(nofile {nofile_limit})")
    else:
        ar.append(f"fds of the daemon = {DAEMON_BASE_FDS} + instances.max x {DAEMON_FDS_PER_INSTANCE} + "
                  f"worker-type processes at their max x {DAEMON_FDS_PER_PROCESS} = {DAEMON_BASE_FDS} + "
                  f"{inst.max} x {DAEMON_FDS_PER_INSTANCE} + {procs} x {DAEMON_FDS_PER_PROCESS} = {fds_d} "
                  f"(nofile {nofile_limit})")

    problems.extend(p for p in budget_problems(spec, instances, nofile_limit=nofile_limit,
                                               mongo_servers=mongo_servers, cpu_count=cpu_count)
                    if p not in problems)

    # Throughput: only from a measurement.
    throughput = None
    if cal is None:
        verdict = "not measured"
        notes.append("throughput is not measured: run the fleet with N instances, then "
                     f"`ultrascale-loadtest http://127.0.0.1:{spec.nginx.listen}/ -u "
                     f"{users} -d 30 --json cal.json`, and plan again with `--calibration cal.json "
                     "--calibration-instances N`; or plan with `--measure`, which loads one instance "
                     "of the app alone")
    else:
        if measurement is None:
            ar.append(f"calibration: {cal.instances} instances, {cal.users if cal.users is not None else '?'}"
                      f" users, {fmt_number(cal.rps)} req/s, p99 {fmt_number(cal.p99_ms)} ms"
                      + (f", errors {cal.error_rate_pct:.2f}%" if cal.error_rate_pct is not None else "")
                      + f" ({cal.source})")
        if not cal.meets_target:
            verdict = "not measured"
            notes.append(f"the {'measurement' if measurement else 'calibration'} missed the target (p99 < "
                         f"{fmt_number(cal.p99_target_ms)} ms, errors < "
                         f"{fmt_number(TARGET_MAX_ERROR_RATE_PCT)}%): its rate is not a capacity; measure "
                         "again with fewer users" + (" (`--steps`), or make the app faster" if measurement else ""))
        else:
            throughput = instances * cal.rps_per_instance
            ar.append(f"throughput = instances x measured req/s per instance = {instances} x "
                      f"({fmt_number(cal.rps)} / {cal.instances}) = {fmt_number(throughput)} req/s at p99 "
                      f"{fmt_number(cal.p99_ms)} ms")
            if by_measured is None:
                verdict = "not measured"
                notes.append(lower_bound_note or "the calibration has no `users`: whether the target holds for "
                             f"{users} users is not known")
            elif instances > inst.max:
                verdict = "does not hold"
            elif instances > cal.instances:
                verdict = "extrapolated"
                notes.append(f"{instances} instances is more than the {cal.instances} measured; "
                             "instances on one host share its cores, so measure at that count"
                             + (" (`ultrascale-loadtest` through nginx, then `--calibration`)" if measurement else ""))
            else:
                verdict = "holds"
    measured: list[str] = []
    assumed: list[str] = []
    if measurement is not None:
        best, kind = measured_capacity(measurement, cal.p99_target_ms, needed)
        measured.append(f"req/s, p95, p99 and errors of 1 instance at {', '.join(str(x.users) for x in sorted(measurement.steps, key=lambda x: x.users))} "
                        f"concurrent users on {', '.join(measurement.urls)} ({measurement.stopped})")
        if best is not None:
            measured.append(f"users one instance holds at p99 < {fmt_number(cal.p99_target_ms)} ms: {best.users}"
                            + {"knee": " (the next step missed)", "enough": " or more (every step held)",
                               "lower bound": " or more (every step held; the bounds stopped the steps)"}[kind])
        if any(x.probes for x in measurement.steps):
            measured.append(f"the daemon's health probe (GET {spec.health.path}, health.timeout "
                            f"{fmt_number(spec.health.timeout)} s) during every step, "
                            f"{'; '.join(f'{x.users} users: {x.failed_probes} of {x.probes} failed' for x in sorted(measurement.steps, key=lambda x: x.users))}")
        if measurement.rss_bytes:
            measured.append(f"memory of that instance after the load: {fmt_number(measurement.rss_bytes / MIB)} MiB")
        assumed.append("the instance serves under the daemon what it served alone, though nginx and the "
                       "daemon then share the host's cores (the load client shared them during the measurement)"
                       if instances == 1 else
                       f"each of the {instances} instances serves what the one measured served, though instances "
                       "on one host share its cores (the load client shared them during the measurement)")
        assumed.append("a user is one connection with a request always in flight (no think time); "
                       "users who pause between requests need fewer instances")
        assumed.append("nginx in front adds no latency: the load went straight to the instance")
        assumed.append("the worst-case memory, MongoDB and file-descriptor figures are computed from "
                       "the spec, not measured")
        for w in sorted({w for st in measurement.steps for w in st.warnings}):
            notes.append(f"load tester: {w}")
    return CapacityPlan(
        users=users, instances=instances, workers_per_instance=w, worker_connections=wc,
        connection_capacity=capacity, nginx_capacity=nginx_capacity,
        mongo_pool_per_process=fit, mongo_pool_daemon=daemon_pool, mongo_connections=mongo_conns,
        mongo_budget=cb, memory_worst_mib=worst, memory_expected_mib=round(expected, 1),
        memory_expected_source=mem_src, memory_budget_mib=budget, mem_total_mib=mem_total_mib,
        fds_gunicorn_worker=fds_g, fds_nginx_worker=fds_n, fds_daemon=fds_d,
        nofile_limit=nofile_limit, nofile_nginx=ng_nofile, throughput_rps=throughput, verdict=verdict,
        arithmetic=ar, problems=problems, notes=notes, calibration=cal,
        worker_class=spec.gunicorn.worker_class, requests_per_worker=rw,
        measurement=measurement, measured=measured, assumed=assumed, process_types=process_types,
        spares=k, spares_memory_mib=round(spare_expected, 1), spares_memory_worst_mib=spare_worst)


# ---- output -------------------------------------------------------------------------------

def render(plan: CapacityPlan) -> str:
    """A table of the figures, then the arithmetic behind each, then problems and notes."""
    def mib(v: float) -> str:
        return f"{fmt_number(v)} MiB"

    rows = [
        ("users (concurrent)", str(plan.users), ""),
        ("instances", str(plan.instances), ""),
        ("workers per instance", str(plan.workers_per_instance), ""),
        ("requests per worker", str(plan.requests_per_worker), f"worker_class {plan.worker_class}"),
        ("connections", f"{plan.connection_capacity}",
         f"{plan.users} needed" + (f"; nginx proxies {plan.nginx_capacity}"
                                   if plan.nginx_capacity is not None else "")),
        ("MongoDB pool per process", str(plan.mongo_pool_per_process),
         f"daemon hands out {plan.mongo_pool_daemon}: {plan.mongo_connections} of "
         f"{plan.mongo_budget} connections"),
        ("memory, worst case", mib(plan.memory_worst_mib), f"budget {mib(plan.memory_budget_mib)}, "
         f"host {mib(plan.mem_total_mib)}"),
        ("memory, expected", mib(plan.memory_expected_mib), plan.memory_expected_source),
        *([("memory of the spares", mib(plan.spares_memory_mib),
            f"{plan.spares} warm spare{'s' if plan.spares != 1 else ''} (instances.spares), in both totals; "
            f"worst {mib(plan.spares_memory_worst_mib)}")] if plan.spares else []),
        ("fds per gunicorn worker", str(plan.fds_gunicorn_worker), f"nofile {plan.nofile_limit}"),
    ]
    if plan.fds_nginx_worker is not None:
        rows.append(("fds per nginx worker", str(plan.fds_nginx_worker),
                     f"nofile {plan.nofile_nginx}"))
    rows.append(("fds of the daemon", str(plan.fds_daemon), f"nofile {plan.nofile_limit}"))
    target = plan.calibration.p99_target_ms if plan.calibration else TARGET_P99_MS
    rows.append(("throughput", "not measured" if plan.throughput_rps is None
                 else f"{fmt_number(plan.throughput_rps)} req/s", f"target p99 < {fmt_number(target)} ms: "
                 f"{plan.verdict}"))
    rows += [plan.type_line(t) for t in plan.process_types]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    out = [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
    if plan.measurement is not None:
        m = plan.measurement
        target = plan.calibration.p99_target_ms if plan.calibration else TARGET_P99_MS
        out += ["", f"Measured: 1 instance of the app ({m.workers} {m.worker_class} "
                f"{'worker' if m.workers == 1 else 'workers'}), {', '.join(m.urls)}, bounded by {m.bounds}; {m.stopped}:",
                "  users     req/s   p95 ms   p99 ms  errors  requests  failed probes  target"]
        for st, meets, ok, err in _judged_steps(m, target):
            fp = f"{st.failed_probes}/{st.probes}" if st.probes else "-"
            out.append(f"  {st.users:>5}  {st.rps:>8.1f}  {_ms(st.p95_ms)[:-3]:>7}  {_ms(st.p99_ms)[:-3]:>7}  "
                       f"{err:>6}  {st.requests:>8}  {fp:>13}  {'holds' if ok else 'misses'}")
        out.append(f"  (holds: p99 < {fmt_number(target)} ms, errors < {fmt_number(TARGET_MAX_ERROR_RATE_PCT)}%"
                   + (f", fewer than {m.health_failures} failed health probes in a row" if m.health_failures else "")
                   + ")")
        out += ["", "Measured:"] + [f"  {line}" for line in plan.measured]
        out += ["", "Assumed:"] + [f"  {line}" for line in plan.assumed]
    out += ["", "Arithmetic:"] + [f"  {line}" for line in plan.arithmetic]
    if plan.notes:
        out += ["", "Notes:"] + [f"  {line}" for line in plan.notes]
    if plan.problems:
        out += ["", f"DOES NOT FIT ({len(plan.problems)} budget(s) cannot hold):"]
        out += [f"  {line}" for line in plan.problems]
    else:
        out += ["", "FITS: every budget holds."]
    return "\n".join(out) + "\n"
