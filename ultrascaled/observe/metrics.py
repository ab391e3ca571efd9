"""The daemon's Prometheus exposition: supervisor state plus each instance's app metrics.

:func:`render` turns what the daemon already knows (``Supervisor.snapshot()``,
``NginxController.status()``, the supervisor's counters) and the prometheus_client
multiprocess files every instance writes in its own directory into one Prometheus text
exposition. Everything goes through prometheus_client metric families and
``generate_latest``; nothing here writes the text format by hand.

App metrics are read straight from the mmap'd ``*.db`` files with
``MultiProcessCollector.merge`` (no HTTP to the instances), one directory per instance, and
each sample gets an ``instance`` label (the instance's port). Families with the same name
from different directories are merged into one family, so every name has one HELP/TYPE.

Fleet totals of the app metrics are **not** exported as separate series: Prometheus sums them
(``sum without (instance) (rate(ultrascale_http_requests_total[1m]))``). A summed counter
would go *down* whenever one instance restarts (its directory is emptied at spawn), which
Prometheus would read as a reset of the whole fleet counter and turn into a rate spike; a
per-instance series resets on its own and ``rate()`` handles that. The daemon's own alert
evaluation (:mod:`ultrascaled.observe.metric_math`) sums per-instance deltas the same way.

Reading a directory costs about a millisecond per process file, so the merged families of
each directory are cached for ``cache_ttl`` seconds (0.5 s by default): scrapes and the alert
evaluation that come close together read the files once.

This module imports prometheus_client only; no psutil, aiohttp or subprocess.
"""
from __future__ import annotations

import glob
import os
import re
import threading
import time
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, Metric)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

CONTENT_TYPE = CONTENT_TYPE_LATEST
PREFIX = "ultrascale_"
STATES = ("stopped", "starting", "running", "draining", "stopping", "backoff", "fatal")
INSTANCE_LABEL = "instance"

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


# ---- app metrics from the multiprocess directories ------------------------------------------

class AppMetricsReader:
    """Reads and caches the merged metric families of each instance directory.

    ``clock`` is injectable for tests. A directory that vanished or holds a file being
    replaced gives its last good result (or nothing), never an exception: a scrape must not
    fail because one instance is restarting.
    """

    def __init__(self, cache_ttl: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, list[Metric]]] = {}
        self._lock = threading.Lock()
        self.read_errors = 0

    def families(self, path: str) -> list[Metric]:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(path)
            if hit is not None and now - hit[0] < self.cache_ttl:
                return hit[1]
        try:
            files = glob.glob(os.path.join(glob.escape(path), "*.db"))
            fams = list(MultiProcessCollector.merge(files, accumulate=True)) if files else []
        except (OSError, ValueError, KeyError):  # a file truncated or removed mid-read
            self.read_errors += 1
            fams = hit[1] if hit is not None else []
        with self._lock:
            self._cache[path] = (now, fams)
        return fams

    def forget(self, keep: Iterable[str]) -> None:
        """Drop cached directories not in ``keep`` (instances that went away)."""
        keep = set(keep)
        with self._lock:
            for p in [p for p in self._cache if p not in keep]:
                del self._cache[p]


def merge_instances(per_instance: Mapping[Any, list[Metric]]) -> list[Metric]:
    """One family per name, each sample labelled with ``instance=<port>``."""
    out: dict[str, Metric] = {}
    for inst in sorted(per_instance, key=lambda k: (str(type(k)), k)):
        value = str(inst)
        for fam in per_instance[inst]:
            merged = out.get(fam.name)
            if merged is None:
                merged = out[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            elif merged.type != fam.type:
                continue  # two instances disagree on a type (app upgrade mid-flight): keep the first
            for s in fam.samples:
                labels = dict(s.labels)
                labels[INSTANCE_LABEL] = value
                merged.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))
    return list(out.values())


# ---- supervisor, nginx and counter metrics -------------------------------------------------

def _g(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


def _c(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=labels)


def wanted(fam: Metric, only: frozenset[str] | None) -> bool:
    """Whether family `fam` holds one of the sample names in `only` (None: every family)."""
    return only is None or any(n == fam.name or n.startswith(fam.name + "_") for n in only)


def _memory_families(snapshot: Mapping[str, Any]) -> list[Metric]:
    fams: list[Metric] = []
    mem = snapshot.get("memory") or {}
    for key, name, doc in (
            ("total_rss_bytes", "fleet_memory_bytes", "Memory of every instance process (masters and workers)"),
            ("budget_bytes", "fleet_memory_budget_bytes", "Memory budget of the whole fleet"),
            ("worker_limit_bytes", "worker_memory_limit_bytes", "Per-worker memory limit")):
        if mem.get(key) is not None:
            f = _g(name, doc)
            f.add_metric([], mem[key])
            fams.append(f)
    return fams


def _cpu_families(insts: list) -> tuple[Metric, Metric]:
    m_cpu = _c("master_cpu_seconds", "CPU seconds (user+system) of the instance's master", ["port"])
    w_cpu = _c("worker_cpu_seconds", "CPU seconds (user+system) of one worker", ["port", "pid"])
    for inst in insts:
        port = str(inst.get("port"))
        if inst.get("cpu_seconds") is not None:
            m_cpu.add_metric([port], inst["cpu_seconds"])
        for w in inst.get("workers") or []:
            if w.get("cpu_seconds") is not None:
                w_cpu.add_metric([port, str(w.get("pid"))], w["cpu_seconds"])
    return m_cpu, w_cpu


def supervisor_families(snapshot: Mapping[str, Any], only: frozenset[str] | None = None) -> list[Metric]:
    """The daemon's own families; `only`: just those holding these sample names, built alone
    (the alerts' evaluation needs the fleet's memory and CPU, not every instance's state)."""
    insts = snapshot.get("instances") or []
    if only is not None:
        return [f for f in _memory_families(snapshot) + list(_cpu_families(insts)) if wanted(f, only)]
    info = _g("fleet_info", "Fleet name (always 1)", ["fleet"])
    info.add_metric([str(snapshot.get("fleet", ""))], 1)
    desired = _g("fleet_desired_instances", "Instances the fleet should run")
    desired.add_metric([], snapshot.get("desired", 0) or 0)
    ready = _g("fleet_ready_instances", "Wanted instances that are running (and so in the upstream)")
    ready.add_metric([], snapshot.get("ready", 0) or 0)
    lo = _g("fleet_min_instances", "Lowest count scale accepts")
    lo.add_metric([], snapshot.get("min", 0) or 0)
    hi = _g("fleet_max_instances", "Highest count scale accepts")
    hi.add_metric([], snapshot.get("max", 0) or 0)
    fams: list[Metric] = [info, desired, ready, lo, hi]

    fams += _memory_families(snapshot)
    up = snapshot.get("upstream") or {}
    servers = _g("upstream_servers", "Instances in the applied nginx upstream")
    servers.add_metric([], len(up.get("servers") or []))
    fams.append(servers)
    if up.get("ok") is not None:
        ok = _g("upstream_ok", "1 if the last upstream update succeeded")
        ok.add_metric([], 1 if up["ok"] else 0)
        fams.append(ok)

    state = _g("instance_state", "1 for the state the instance is in, 0 for the others", ["port", "state"])
    restarts = _c("instance_restarts", "Restarts of the instance since the daemon started", ["port"])
    uptime = _g("instance_uptime_seconds", "Seconds since the instance's master started", ["port"])
    in_up = _g("instance_in_upstream", "1 if the instance is in the applied nginx upstream", ["port"])
    m_rss = _g("master_rss_bytes", "Memory of the instance's gunicorn master", ["port"])
    i_rss = _g("instance_memory_bytes", "Memory of the instance: master plus workers", ["port"])
    m_cpu, w_cpu = _cpu_families(insts)
    w_rss = _g("worker_rss_bytes", "Memory of one worker", ["port", "pid"])
    workers = _g("instance_workers", "Worker processes of the instance", ["port"])
    for inst in insts:
        port = str(inst.get("port"))
        current = inst.get("state")
        for s in STATES:
            state.add_metric([port, s], 1 if s == current else 0)
        if current is not None and current not in STATES:
            state.add_metric([port, str(current)], 1)
        restarts.add_metric([port], inst.get("restarts") or 0)
        if inst.get("uptime") is not None:
            uptime.add_metric([port], inst["uptime"])
        in_up.add_metric([port], 1 if inst.get("in_upstream") else 0)
        if inst.get("master_rss") is not None:
            m_rss.add_metric([port], inst["master_rss"])
        if inst.get("rss_total") is not None:
            i_rss.add_metric([port], inst["rss_total"])
        ws = inst.get("workers") or []
        workers.add_metric([port], len(ws))
        for w in ws:
            if w.get("rss") is not None:
                w_rss.add_metric([port, str(w.get("pid"))], w["rss"])
    fams += [state, restarts, uptime, in_up, m_rss, i_rss, m_cpu, workers, w_rss, w_cpu]
    fams += deploy_families(snapshot)
    return fams


def deploy_families(snapshot: Mapping[str, Any]) -> list[Metric]:
    """Which release each instance runs, and the rollout in progress (docs/deploys.md)."""
    rel = _g("instance_release_info", "1 for the release the instance runs (`app.directory` before "
             "any deploy)", ["port", "release"])
    for inst in snapshot.get("instances") or []:
        rel.add_metric([str(inst.get("port")), str(inst.get("release") or "app.directory")], 1)
    fams: list[Metric] = [rel]
    d = snapshot.get("deploy")
    if isinstance(d, dict):
        cur = _g("release_current_info", "1 for the fleet's current release", ["release"])
        cur.add_metric([str(d.get("current") or "app.directory")], 1)
        ro = _g("deploy_in_progress", "1 while a deploy or rollback runs, by phase", ["kind", "phase"])
        r = d.get("rollout")
        if r:
            ro.add_metric([str(r.get("kind")), str(r.get("phase"))], 1)
        fams += [cur, ro]
    return fams


def nginx_families(status: Mapping[str, Any] | None) -> list[Metric]:
    if not status:
        return []
    fams: list[Metric] = []
    info = _g("nginx_info", "nginx mode (always 1)", ["mode"])
    info.add_metric([str(status.get("mode"))], 1)
    fams.append(info)
    if isinstance(status.get("running"), bool):  # system mode: null, not ours to know
        up = _g("nginx_up", "1 if the managed nginx master is running")
        up.add_metric([], 1 if status["running"] else 0)
        fams.append(up)
    for key, name, doc in (("reload_count", "nginx_reloads", "Successful nginx reloads"),
                           ("failure_count", "nginx_reload_failures",
                            "Failed nginx config checks, reloads or starts (rolled back)"),
                           ("restart_count", "nginx_restarts", "Restarts of the managed nginx master")):
        if status.get(key) is not None:
            c = _c(name, doc)
            c.add_metric([], status[key])
            fams.append(c)
    if status.get("last_reload_at") is not None:
        t = _g("nginx_last_reload_timestamp_seconds", "Unix time of the last nginx apply")
        t.add_metric([], status["last_reload_at"])
        fams.append(t)
    if status.get("last_ok") is not None:
        ok = _g("nginx_last_reload_ok", "1 if the last nginx apply succeeded")
        ok.add_metric([], 1 if status["last_ok"] else 0)
        fams.append(ok)
    return fams


def counter_families(counters: Mapping[str, Any] | None) -> list[Metric]:
    """The supervisor's counters: ``{"alerts_fired": 3}`` gives ``ultrascale_alerts_fired_total 3``,
    ``{"watchdog_recycles": {8001: 2}}`` gives ``ultrascale_watchdog_recycles_total{port="8001"} 2``."""
    fams: list[Metric] = []
    for key in sorted(counters or {}):
        value = counters[key]
        name = _NAME_BAD.sub("_", str(key))
        if name.endswith("_total"):
            name = name[:-6]
        doc = COUNTER_DOCS.get(name, f"Daemon counter {name}")
        if isinstance(value, Mapping):
            c = _c(name, doc, ["port"])
            for port in sorted(value, key=str):
                c.add_metric([str(port)], value[port])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            c = _c(name, doc)
            c.add_metric([], value)
        else:
            continue
        fams.append(c)
    return fams


COUNTER_DOCS = {
    "watchdog_recycles": "Workers recycled by the memory watchdog, per instance port",
    "alerts_fired": "Alert rules that went to firing",
    "alerts_webhook_sent": "Alert notifications the webhook accepted (2xx)",
    "alerts_webhook_failed": "Alert notifications given up after every retry",
    "alerts_webhook_dropped": "Alert notifications dropped because the webhook queue was full",
}


# ---- the whole exposition ------------------------------------------------------------------

class _Families:
    def __init__(self, fams: list[Metric]):
        self._fams = fams

    def collect(self):
        return self._fams


def process_families(types: Mapping[str, Any], jobs: Mapping[str, Any]) -> list[Metric]:
    """The process types beside the web fleet (`GET /processes` without `web`) and the jobs'
    own figures (`JobsLoop.figures()`): counts per type, and per job its runs by outcome since
    the daemon started, the last success, the last run's duration and the next due time."""
    desired = _g("process_desired", "Processes a worker type should run", ["type", "kind"])
    ready = _g("process_ready", "Processes of a type running (a job: its runs going)", ["type", "kind"])
    restarts = _g("process_restarts", "Restarts of a worker type's live processes", ["type"])
    for name, t in types.items():
        if name == "web":
            continue
        desired.add_metric([name, t["kind"]], t.get("desired", 0) or 0)
        ready.add_metric([name, t["kind"]], t.get("ready", 0) or 0)
        if t["kind"] == "worker":
            restarts.add_metric([name], sum(i.get("restarts", 0) or 0 for i in t.get("instances", [])))
    runs = _c("job_runs", "Runs of a job that ended, by outcome, since the daemon started", ["job", "outcome"])
    success = _g("job_last_success_timestamp_seconds", "When a job's last successful run ended", ["job"])
    took = _g("job_last_duration_seconds", "How long a job's last run took", ["job"])
    due = _g("job_next_run_timestamp_seconds", "When a job is next due", ["job"])
    for name, j in jobs.items():
        for outcome, n in sorted(j.get("outcomes", {}).items()):
            runs.add_metric([name, outcome], n)
        for fam, key in ((success, "last_success"), (took, "last_duration"), (due, "next_run")):
            if j.get(key) is not None:
                fam.add_metric([name], j[key])
    return [f for f in (desired, ready, restarts, runs, success, took, due) if f.samples]


class Renderer:
    """Holds the per-directory cache; :func:`render` uses a module default instance."""

    def __init__(self, cache_ttl: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.reader = AppMetricsReader(cache_ttl=cache_ttl, clock=clock)
        self.last_app_read_seconds = 0.0

    def families(self, snapshot: Mapping[str, Any], nginx_status: Mapping[str, Any] | None,
                 counters: Mapping[str, Any] | None,
                 instance_dirs: Mapping[int, str] | None, extra: Iterable[Metric] = (),
                 only: frozenset[str] | None = None) -> list[Metric]:
        """``extra``: families built elsewhere (the traffic figures of accesslog.py). ``only``:
        just the families holding these sample names (the same values; what the alerts read)."""
        t0 = time.perf_counter()
        dirs = dict(instance_dirs or {})
        app = merge_instances({port: [f for f in self.reader.families(path) if wanted(f, only)]
                               for port, path in dirs.items()})
        self.reader.forget(dirs.values())
        self.last_app_read_seconds = time.perf_counter() - t0
        own = supervisor_families(snapshot, only) + [
            f for f in nginx_families(nginx_status) + counter_families(counters) if wanted(f, only)]
        own += [f for f in extra if f.name not in {o.name for o in own} and wanted(f, only)]
        taken = {f.name for f in own}
        return own + [f for f in app if f.name not in taken]

    def render(self, snapshot, nginx_status, counters, instance_dirs, extra: Iterable[Metric] = ()) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self.families(snapshot, nginx_status, counters, instance_dirs, extra)))
        return generate_latest(registry)


_default = Renderer()


def render(snapshot: dict, nginx_status: dict | None, counters: dict | None,
           instance_dirs: dict[int, str] | None, extra: Iterable[Metric] = ()) -> bytes:
    """The Prometheus text exposition (serve it with :data:`CONTENT_TYPE`)."""
    return _default.render(snapshot, nginx_status, counters, instance_dirs, extra)


def families(snapshot: dict, nginx_status: dict | None, counters: dict | None,
             instance_dirs: dict[int, str] | None, only: frozenset[str] | None = None) -> list[Metric]:
    """The same metrics as families (what :class:`ultrascaled.observe.alerts.Sampler` consumes);
    ``only``: the families holding these sample names."""
    return _default.families(snapshot, nginx_status, counters, instance_dirs, only=only)


def app_families(path: str) -> list[Metric]:
    """One instance folder's merged app metrics, through the shared cache (the dashboard's
    history reads them this way)."""
    return _default.reader.families(path)


async def render_async(snapshot: dict, nginx_status: dict | None, counters: dict | None,
                       instance_dirs: dict[int, str] | None, extra: Iterable[Metric] = ()) -> bytes:
    """:func:`render` with the file reading and formatting in a worker thread, so the event
    loop keeps supervising. Pass plain dicts built for this call (``snapshot()`` builds fresh
    ones), since the thread reads them while the loop runs."""
    import asyncio
    return await asyncio.to_thread(render, snapshot, nginx_status, _copy(counters), dict(instance_dirs or {}),
                                   list(extra))


async def families_async(snapshot: dict, nginx_status: dict | None, counters: dict | None,
                         instance_dirs: dict[int, str] | None, only: frozenset[str] | None = None) -> list[Metric]:
    import asyncio
    return await asyncio.to_thread(families, snapshot, nginx_status, _copy(counters),
                                   dict(instance_dirs or {}), only)


def _copy(counters: Mapping[str, Any] | None) -> dict:
    """The counters the supervisor keeps mutating, copied on the loop's thread."""
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in (counters or {}).items()}
