"""The fleet spec: YAML loaded into typed, frozen sections.

Every key is declared once, as a dataclass field whose metadata carries its help text and
bounds; validation, defaults and docs/configuration.md all come from these declarations.
Errors name the key path and the YAML line, and all of them are reported at once:

    instances.base_port (line 7): must be 1024..65535, got 80

This module is pure: it reads a file when asked to and touches nothing else, except
host_problems(), which only `ultrascaled --check` calls. A spec file is read defensively (a
regular UTF-8 file of at most 1 MiB; YAML composed from parser events with caps on aliases,
values and nesting; plain tags only): whatever it holds, loading returns a Spec or raises
SpecError.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ultrascaled.spec.budget import budget_problems, mongo_pool_that_fits, requests_per_worker
from ultrascaled.effects import nginx_render as nginx_conf
from ultrascaled.spec.errors import SpecError  # noqa: F401  (re-exported: callers import it from here)
from ultrascaled.effects.nginx_render import NginxSettings

MB = 1024 * 1024


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            choices: tuple = (), path: bool = False) -> Any:
    """A spec key: its default, help text and bounds, in one place."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AppSection:
    module: str = setting("app.wsgi:application", "Your WSGI callable as `module:callable` (Django: "
                          "`mysite.wsgi:application`), or an app factory as `module:create_app()` "
                          "(gunicorn calls it in each worker). The default is the reference app's "
                          "(`app/`): set it for your own app; `--check` says when `app.python` "
                          "cannot find the module in `app.directory`.")
    directory: str = setting(".", "Folder gunicorn runs in (its chdir, put first on the app's "
                             "import path); relative to the spec file.", path=True)
    config: Optional[str] = setting(None, "gunicorn config file (`-c`), relative to "
                                    "`app.directory`; null for none. Values the daemon passes "
                                    "override it. The reference app's is `app/gunicorn_conf.py` "
                                    "(etc/ultrascaled/fleet.yaml).")
    python: Optional[str] = setting(None, "Python interpreter for gunicorn, e.g. your app's "
                                    "virtualenv's `bin/python`; it must have gunicorn (and the "
                                    "worker class's package) installed. null = the daemon's own.")
    env: dict = setting({}, "Extra environment for the app (string to string).")


@dataclass(frozen=True)
class InstancesSection:
    count: int = setting(2, "Instances to run when no scale was requested.", min=0, max=256)
    min: int = setting(1, "Lowest count `scale` accepts.", min=0, max=256)
    max: int = setting(8, "Highest count `scale` accepts.", min=1, max=256)
    base_port: int = setting(8001, "Port of instance 0; instance i listens on base_port + i.",
                             min=1024, max=65535)
    host: str = setting("127.0.0.1", "Address the instances bind.")


@dataclass(frozen=True)
class GunicornSection:
    workers: Any = setting("auto", "Workers per instance, or `auto` (cores / 2, at least 1, at most 4).",
                           min=1, max=64)
    worker_class: str = setting("sync", "gunicorn worker class. The default, `sync` (gunicorn's "
                                "own default, one request at a time per worker), is in gunicorn "
                                "itself, so it runs in any venv that has gunicorn and assumes "
                                "nothing of the app (no thread safety, no monkey-patching); nginx "
                                "in front buffers slow clients for it. `gthread` is also in "
                                "gunicorn (`threads` requests at a time); `gevent` and `eventlet` "
                                "serve `worker_connections` at a time but need their package in "
                                "`app.python`'s venv (`--check` names it). The reference app "
                                "runs on gevent.",
                                choices=("gevent", "sync", "gthread", "eventlet"))
    threads: int = setting(1, "Threads per worker for `worker_class: gthread` (`--threads`; "
                           "gunicorn's default 1): requests one gthread worker serves at once.",
                           min=1, max=10000)
    worker_connections: int = setting(1000, "Concurrent connections per gevent or eventlet worker "
                                      "(also gthread's cap on open connections).", min=1,
                                      max=100000)
    timeout: int = setting(30, "Seconds a silent worker lives before its master kills it.", min=1)
    graceful_timeout: int = setting(30, "Seconds a stopping instance gets to finish in-flight requests.",
                                    min=1)
    keepalive: int = setting(65, "Seconds an idle keep-alive connection stays open; must be "
                             "longer than `nginx.keepalive_timeout` (4s) so that nginx, not "
                             "gunicorn, closes idle upstream connections.", min=1, max=3600)
    max_requests: int = setting(0, "Requests after which a worker is replaced (0 = never). Off by "
                                "default: the memory watchdog replaces a worker by what it measures, "
                                "and a count-based replacement leaves a one-worker instance without a "
                                "worker while the next boots (measured with `scripts/bench`: wrk "
                                "errors at 1000 connections).", min=0, max=10 ** 9)
    max_requests_jitter: int = setting(0, "Random extra requests added to max_requests, so "
                                       "workers are not replaced together.", min=0, max=10 ** 9)
    args: list = setting([], "Extra gunicorn command-line arguments.")


@dataclass(frozen=True)
class HealthSection:
    path: str = setting("/health", "Path the daemon probes (GET on the instance's port); it "
                        "must answer 200 once the app is ready, and any other answer counts as a "
                        "failed probe (an instance is restarted after `failures` in a row). For "
                        "an app without a health endpoint, name any page that answers 200, e.g. "
                        "`/`.")
    start_timeout: float = setting(30.0, "Seconds an instance may take to become ready.", min=0.5)
    probe_interval: float = setting(0.02, "Seconds between readiness probes during the first "
                                    "second of a start; later ones wait a tenth of the time waited "
                                    "so far, up to 1 s.",
                                    min=0.01, max=5)
    interval: float = setting(10.0, "Seconds between health probes of running instances (exits "
                              "are noticed at once anyway; this catches hung ones) and nginx checks.",
                              min=0.1, max=300)
    timeout: float = setting(1.0, "Seconds a health probe may take.", min=0.05, max=60)
    failures: int = setting(3, "Consecutive failed probes that restart a running instance.", min=1)


@dataclass(frozen=True)
class RestartSection:
    backoff_initial: float = setting(0.5, "Seconds before the second restart in a row; the first "
                                     "is immediate.", min=0, max=60)
    backoff_max: float = setting(30.0, "Longest wait between restarts.", min=0, max=3600)
    fatal_crashes: int = setting(5, "Failures to start in a row (exit before ready, or not ready "
                                 "in `health.start_timeout`) that make an instance FATAL; as many "
                                 "crashes after serving within `fatal_window` raise the "
                                 "crash-loop alert (those never make it FATAL).", min=1)
    fatal_window: float = setting(60.0, "Seconds over which crashes after serving are counted.",
                                  min=1)
    drain_seconds: float = setting(0.5, "Seconds an instance keeps serving after it left the "
                                   "upstream, before it is told to stop.", min=0, max=600)


@dataclass(frozen=True)
class MemorySection:
    worker_limit_mb: int = setting(500, "Per-worker memory limit in MiB.", min=16)
    fleet_budget_mb: int = setting(8192, "Memory budget of the whole fleet in MiB.", min=64)
    metric: str = setting("rss", "Memory measure: rss, uss or pss.", choices=("rss", "uss", "pss"))
    sample_interval: float = setting(1.0, "Seconds between memory samples.", min=0.1, max=300)
    samples_over: int = setting(3, "Consecutive samples over the limit before a recycle.", min=1)


@dataclass(frozen=True)
class MongoSection:
    connection_budget: int = setting(500, "MongoDB connections the whole fleet may hold.", min=1)
    min_pool_size: int = setting(0, "minPoolSize per worker process (`MONGO_MIN_POOL_SIZE`); at "
                                 "most the pool each process gets.", min=0, max=10000)
    max_connecting: int = setting(2, "maxConnecting per worker process (`MONGO_MAX_CONNECTING`): "
                                  "connections a pool opens at once (pymongo's default, 2, "
                                  "spares the server a connection storm at start); at most the "
                                  "pool each process gets.", min=1, max=1000)


@dataclass(frozen=True)
class ApiSection:
    host: str = setting("127.0.0.1", "Address of the control API.")
    port: int = setting(9000, "Port of the control API.", min=1, max=65535)
    token_file: Optional[str] = setting(None, "File of bearer tokens (`name:token` lines, or one "
                                        "token): required for mutating requests when set, and for "
                                        "every request when `host` is not loopback. Mode 600.",
                                        path=True)
    metrics_token_file: Optional[str] = setting(None, "File of `name:token` lines that may read "
                                                "`GET /metrics` only (a Prometheus scraper).", path=True)
    viewer_token_file: Optional[str] = setting(None, "File of `name:token` lines that may read "
                                               "every endpoint but change nothing (the dashboard's "
                                               "read-only viewers, off loopback). Mode 600.", path=True)
    tls_cert: Optional[str] = setting(None, "PEM certificate (chain) for the API; with `tls_key` "
                                      "the API speaks only HTTPS.", path=True)
    tls_key: Optional[str] = setting(None, "PEM private key for `tls_cert`.", path=True)
    allowed_hosts: list = setting([], "Extra names clients may use in `Host` and `Origin` (e.g. the "
                                  "machine's DNS name), besides the bind address, localhost, "
                                  "127.0.0.1 and [::1].")
    idle_timeout: float = setting(10.0, "Seconds before an idle or half-sent connection (or a TLS "
                                  "handshake) is closed.", min=0.5, max=3600)
    max_connections: int = setting(256, "Open API connections; more are answered 503.", min=1,
                                   max=100000)
    max_followers: int = setting(32, "Concurrent `GET /events?follow=1` streams; more are answered "
                                 "503.", min=1, max=10000)


@dataclass(frozen=True)
class PathsSection:
    state_dir: str = setting("/var/lib/ultrascaled", "Desired count, instance records, metrics "
                             "folders; relative to the spec file.", path=True)
    log_dir: str = setting("/var/log/ultrascaled", "Instance output logs; relative to the spec file.",
                           path=True)


@dataclass(frozen=True)
class AlertsSection:
    evaluation_interval: float = setting(10.0, "Seconds between alert evaluations (each compares "
                                         "two scrapes of the fleet's metrics).", min=0.5, max=3600)
    min_requests: int = setting(20, "Requests (cache lookups for the cache rule) an interval needs "
                                "before the latency, error-rate and cache rules are judged; "
                                "below it they count as not holding.", min=0)
    p95_latency_seconds: Optional[float] = setting(2.0, "Fire when the fleet's 95th percentile "
                                                   "request latency is over this; null = off.",
                                                   min=0.001)
    p95_latency_for: float = setting(30.0, "Seconds the p95 latency must stay over before firing.",
                                     min=0)
    error_rate: Optional[float] = setting(0.01, "Fire when the share of 5xx responses is over "
                                          "this (0.01 = 1%); null = off.", min=0, max=1)
    error_rate_for: float = setting(30.0, "Seconds the error rate must stay over before firing.",
                                    min=0)
    cpu_percent: Optional[float] = setting(80.0, "Fire when the fleet's processes use more than "
                                           "this percent of the host's CPUs; null = off.",
                                           min=1, max=100)
    cpu_for: float = setting(30.0, "Seconds CPU must stay over before firing.", min=0)
    memory_budget_fraction: Optional[float] = setting(1.0, "Fire when the fleet's memory is over "
                                                      "this fraction of `memory.fleet_budget_mb`; "
                                                      "null = off.", min=0.01, max=10)
    memory_for: float = setting(30.0, "Seconds memory must stay over before firing.", min=0)
    cache_hit_rate: Optional[float] = setting(0.8, "Fire when the cache hit rate (hits / "
                                              "(hits + misses), all tiers) is under this; "
                                              "null = off.", min=0, max=1)
    cache_hit_rate_for: float = setting(30.0, "Seconds the hit rate must stay under before "
                                        "firing.", min=0)
    db_connections_fraction: Optional[float] = setting(1.0, "Fire when MongoDB connections in "
                                                       "use are over this fraction of "
                                                       "`mongodb.connection_budget`; null = off.",
                                                       min=0.01, max=10)
    db_connections_for: float = setting(30.0, "Seconds connections must stay over before firing.",
                                        min=0)
    webhook_url: Optional[str] = setting(None, "URL that gets a JSON POST for every firing and "
                                         "resolved alert; null = none.")
    webhook_timeout: float = setting(2.0, "Seconds one webhook POST may take.", min=0.05, max=60)
    webhook_retries: int = setting(3, "Retries after a failed POST (timeout, connection error, "
                                   "5xx, 429), with doubling backoff.", min=0, max=20)
    webhook_backoff: float = setting(0.5, "Seconds before the first retry; doubles each time.",
                                     min=0, max=60)
    webhook_queue: int = setting(100, "Notifications waiting to be sent; more are dropped and "
                                 "counted.", min=1, max=100000)


@dataclass(frozen=True)
class LogsSection:
    max_bytes: int = setting(50 * 1024 * 1024, "Size at which an instance's log file is rotated "
                             "(renamed to `.1`, then gunicorn reopens it on SIGUSR1: no line is lost).", min=4096)
    backups: int = setting(5, "Rotated files kept per instance (`instance-PORT.log.1` .. `.N`).",
                           min=0, max=100)


# ---- autoscale: the fleet follows its load (ultrascaled/core/autoscale.py decides) --------------
# Names follow the Kubernetes HorizontalPodAutoscaler (autoscaling/v2) where they mean the same:
# min/max replicas, a target per metric, behavior.scale_up / scale_down with a stabilization
# window, Pods and Percent policies and a select policy; docs/autoscaling.md says where we differ.

@dataclass(frozen=True)
class AutoscaleTarget:
    cpu_utilization: Optional[float] = setting(70.0, "Target CPU per worker, in percent of one "
                                               "core, averaged over the ready instances (an "
                                               "instance's processes' CPU / its workers; the HPA's "
                                               "`Resource cpu` `averageUtilization` for a pod "
                                               "requesting one core per worker); null = not "
                                               "followed.", min=1, max=100)
    cpu_wait_percent: Optional[float] = setting(None, "Target share of time a worker is ready "
                                                "to run but waits for a CPU (Linux "
                                                "/proc/PID/schedstat run-queue delay, percent "
                                                "of wall time, averaged over the ready "
                                                "instances' processes). It sees what "
                                                "`cpu_utilization` cannot: a worker starved by "
                                                "a busy host uses little CPU. No HPA "
                                                "equivalent; null = not followed.",
                                                min=1, max=10000)
    in_flight_per_worker: Optional[float] = setting(None, "Target requests in flight per worker, "
                                                    "averaged over the ready instances (the HPA's "
                                                    "`Pods` metric `averageValue`, per worker "
                                                    "instead of per pod); from the app's "
                                                    "`http_requests_in_flight` gauge. A `sync` "
                                                    "worker serves 1 at a time, so about 0.8 "
                                                    "there; null = not followed.",
                                                    min=0.01, max=100000)
    p95_latency_seconds: Optional[float] = setting(None, "Target 95th percentile request latency "
                                                   "of the fleet over `metrics_window_seconds` "
                                                   "(the HPA's `Object` metric `value`); null = "
                                                   "not followed.", min=0.001, max=3600)


@dataclass(frozen=True)
class AutoscaleScaleUp:
    stabilization_window_seconds: float = setting(0.0, "Scale up to the lowest recommendation of "
                                                  "this window (the HPA's default 0: at once).",
                                                  min=0, max=3600)
    select_policy: str = setting("Max", "Which policy's limit applies when both are set: `Max` "
                                 "(the larger change), `Min`, or `Disabled` (never scale up).",
                                 choices=("Max", "Min", "Disabled"))
    pods_value: Optional[int] = setting(4, "Pods policy: at most this many instances added per "
                                        "`pods_period_seconds`; null = no Pods policy.",
                                        min=1, max=256)
    pods_period_seconds: float = setting(15.0, "Window of the Pods policy.", min=1, max=1800)
    percent_value: Optional[float] = setting(100.0, "Percent policy: at most this percent of the "
                                             "count at the window's start added per "
                                             "`percent_period_seconds`; null = no Percent policy.",
                                             min=1, max=100000)
    percent_period_seconds: float = setting(15.0, "Window of the Percent policy.", min=1, max=1800)


@dataclass(frozen=True)
class AutoscaleScaleDown:
    stabilization_window_seconds: float = setting(300.0, "Scale down only to the highest "
                                                  "recommendation of this window (the HPA's "
                                                  "default 300 s): a dip shorter than it changes "
                                                  "nothing.", min=0, max=3600)
    select_policy: str = setting("Max", "Which policy's limit applies when both are set: `Max` "
                                 "(the larger change), `Min`, or `Disabled` (never scale down).",
                                 choices=("Max", "Min", "Disabled"))
    pods_value: Optional[int] = setting(None, "Pods policy: at most this many instances removed "
                                        "per `pods_period_seconds`; null = no Pods policy.",
                                        min=1, max=256)
    pods_period_seconds: float = setting(15.0, "Window of the Pods policy.", min=1, max=1800)
    percent_value: Optional[float] = setting(100.0, "Percent policy: at most this percent of the "
                                             "count at the window's start removed per "
                                             "`percent_period_seconds`; null = no Percent policy.",
                                             min=1, max=100)
    percent_period_seconds: float = setting(15.0, "Window of the Percent policy.", min=1, max=1800)


@dataclass(frozen=True)
class AutoscaleBehavior:
    scale_up: AutoscaleScaleUp = field(default_factory=AutoscaleScaleUp)
    scale_down: AutoscaleScaleDown = field(default_factory=AutoscaleScaleDown)


@dataclass(frozen=True)
class AutoscaleSection:
    enabled: bool = setting(False, "Let the daemon change the desired count by load (off by "
                            "default). `ultrascalectl scale N` pauses it; `ultrascalectl "
                            "autoscale pause|resume` too.")
    min_replicas: Optional[int] = setting(None, "Fewest instances the autoscaler keeps; null = "
                                          "`instances.min`. Within `instances.min..max`.",
                                          min=0, max=256)
    max_replicas: Optional[int] = setting(None, "Most instances the autoscaler asks for; null = "
                                          "`instances.max`. Within `instances.min..max`; every "
                                          "budget still vetoes a step up.", min=1, max=256)
    tolerance: float = setting(0.1, "No change while observed / target is within 1 +- this "
                                "(the HPA's 10 %).", min=0, max=1)
    sync_period_seconds: float = setting(2.0, "Seconds between decisions (the HPA's controller "
                                         "runs every 15 s; an instance here starts in about a "
                                         "second).", min=0.5, max=300)
    metrics_window_seconds: float = setting(5.0, "Seconds the signals are averaged over (rates, "
                                            "CPU, the latency percentile).", min=1, max=600)
    stale_after_seconds: float = setting(10.0, "A signal older than this counts as missing: the "
                                         "count is held, never lowered.", min=1, max=3600)
    host_cpu_saturation_percent: Optional[float] = setting(90.0, "Host CPU (all cores, percent) "
                                                           "above which a scale-up is held once "
                                                           "the fleet has a worker per core: more "
                                                           "instances on a saturated host serve "
                                                           "less; null = not checked.",
                                                           min=1, max=100)
    target: AutoscaleTarget = field(default_factory=AutoscaleTarget)
    behavior: AutoscaleBehavior = field(default_factory=AutoscaleBehavior)

    def bounds(self, instances: "InstancesSection") -> tuple[int, int]:
        """(min, max) the autoscaler keeps the count within."""
        lo = instances.min if self.min_replicas is None else self.min_replicas
        hi = instances.max if self.max_replicas is None else self.max_replicas
        return lo, hi


def autoscale_errors(spec: "Spec", where, ok) -> list[str]:
    """Checks across the autoscale keys (part of _cross_checks)."""
    a, inst, errors = spec.autoscale, spec.instances, []
    lo, hi = a.bounds(inst)
    if ok("autoscale.min_replicas", "instances.min", "instances.max") and a.min_replicas is not None \
            and not inst.min <= a.min_replicas <= inst.max:
        errors.append(f"{where('autoscale.min_replicas')}: must be within instances.min..max "
                      f"({inst.min}..{inst.max}), got {a.min_replicas}")
    if ok("autoscale.max_replicas", "instances.min", "instances.max") and a.max_replicas is not None \
            and not inst.min <= a.max_replicas <= inst.max:
        errors.append(f"{where('autoscale.max_replicas')}: must be within instances.min..max "
                      f"({inst.min}..{inst.max}), got {a.max_replicas}")
    if ok("autoscale.min_replicas", "autoscale.max_replicas", "instances.min", "instances.max") \
            and lo > hi:
        errors.append(f"{where('autoscale.min_replicas')}: the autoscaler's min ({lo}) exceeds its "
                      f"max ({hi})")
    if a.enabled and ok("autoscale.enabled", "autoscale.min_replicas", "instances.min") and lo < 1:
        errors.append(f"{where('autoscale.min_replicas')}: an enabled autoscaler keeps at least 1 "
                      f"instance (no instance, no signal to scale up on), got {lo}"
                      + ("" if a.min_replicas is not None else " from instances.min"))
    t = a.target
    if a.enabled and ok("autoscale.enabled", "autoscale.target") and \
            t.cpu_utilization is None and t.cpu_wait_percent is None and t.in_flight_per_worker is None \
            and t.p95_latency_seconds is None:
        errors.append(f"{where('autoscale.target')}: autoscale.enabled needs at least one target "
                      "(cpu_utilization, cpu_wait_percent, in_flight_per_worker or "
                      "p95_latency_seconds)")
    if t.in_flight_per_worker is not None and ok("autoscale.target.in_flight_per_worker",
                                                 "gunicorn.worker_class", "gunicorn.threads",
                                                 "gunicorn.worker_connections"):
        per, formula = requests_per_worker(spec)
        if t.in_flight_per_worker > per:
            errors.append(f"{where('autoscale.target.in_flight_per_worker')}: {t.in_flight_per_worker:g} "
                          f"requests in flight per worker cannot happen: a worker serves {formula}, "
                          f"so the autoscaler would never scale up; use at most {per} "
                          f"(e.g. {0.8 * per:g}, leaving headroom)")
    for direction in ("scale_up", "scale_down"):
        rules = getattr(a.behavior, direction)
        key = f"autoscale.behavior.{direction}"
        if ok(key) and rules.select_policy != "Disabled" and rules.pods_value is None \
                and rules.percent_value is None:
            errors.append(f"{where(key + '.select_policy')}: {rules.select_policy} needs a policy: "
                          f"set {direction}.pods_value or {direction}.percent_value, or "
                          "select_policy Disabled")
    if a.enabled and t.cpu_utilization is not None and ok(
            "autoscale.enabled", "autoscale.stale_after_seconds", "memory.sample_interval") and \
            spec.memory.sample_interval >= a.stale_after_seconds:
        errors.append(f"{where('autoscale.stale_after_seconds')}: must be longer than "
                      f"memory.sample_interval ({spec.memory.sample_interval:g}s), the CPU samples' "
                      f"interval, got {a.stale_after_seconds:g} (cpu_utilization would always be stale)")
    if ok("autoscale.stale_after_seconds", "autoscale.sync_period_seconds") and \
            a.stale_after_seconds < a.sync_period_seconds:
        errors.append(f"{where('autoscale.stale_after_seconds')}: must be at least "
                      f"autoscale.sync_period_seconds ({a.sync_period_seconds:g}), got "
                      f"{a.stale_after_seconds:g} (every signal would be stale)")
    return errors


@dataclass(frozen=True)
class DeploySection:
    releases_dir: Optional[str] = setting(None, "Folder of releases: `ultrascalectl deploy DIR` copies "
                                          "DIR to `<releases_dir>/<id>` (the id is the UTC time, "
                                          "`20261130T150102Z`) and points `current` at it. Each "
                                          "instance runs one release folder for its whole life "
                                          "(docs/deploys.md). null = `<paths.state_dir>/releases`; "
                                          "relative to the spec file.", path=True)
    keep_releases: int = setting(5, "Releases kept on disk; older ones are deleted after a "
                                 "deploy completes (never the current or previous one).",
                                 min=2, max=1000)
    soak_seconds: float = setting(30.0, "Seconds the canary (the first instance on the new "
                                  "release) serves beside the old instances before its figures "
                                  "are judged.", min=0, max=86400)
    min_requests: int = setting(20, "Requests the canary must have answered within the soak "
                                "window for its 5xx rate and p95 to be judged; with fewer, it is "
                                "judged on health and crashes only (the event says so).", min=0)
    max_error_rate_increase: float = setting(0.01, "Roll back when the canary's share of 5xx "
                                             "answers is over the old instances' by more than "
                                             "this (0.01 = 1 point).", min=0, max=1)
    max_p95_ratio: float = setting(2.0, "Roll back when the canary's p95 latency is over this "
                                   "many times the old instances' p95 ...", min=1, max=1000)
    p95_slack_seconds: float = setting(0.05, "... and also more than this many seconds over it "
                                       "(a 2 ms -> 5 ms change is noise, not a regression).",
                                       min=0, max=600)


@dataclass(frozen=True)
class DashboardSection:
    """The live web page at `GET /ui` (ultrascaled/surface/dashboard.py) and the history it charts."""
    enabled: bool = setting(True, "Serve the dashboard at `GET /ui` on the API listener (same "
                            "auth) and keep its history in memory; false = neither.")
    history_seconds: int = setting(900, "Seconds of history the charts show (kept in the "
                                   "daemon's memory, bounded).", min=60, max=3600)
    sample_interval: float = setting(5.0, "Seconds between two points of the charts (request "
                                     "rate, p95, 5xx, memory, instance count).", min=0.5, max=60)


@dataclass(frozen=True)
class Spec:
    name: str = setting("ultrascale", "Fleet name; marks its processes (`--name ultrascale-NAME-PORT`).")
    app: AppSection = field(default_factory=AppSection)
    instances: InstancesSection = field(default_factory=InstancesSection)
    gunicorn: GunicornSection = field(default_factory=GunicornSection)
    health: HealthSection = field(default_factory=HealthSection)
    restart: RestartSection = field(default_factory=RestartSection)
    memory: MemorySection = field(default_factory=MemorySection)
    mongodb: MongoSection = field(default_factory=MongoSection)
    api: ApiSection = field(default_factory=ApiSection)
    paths: PathsSection = field(default_factory=PathsSection)
    logs: LogsSection = field(default_factory=LogsSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    nginx: NginxSettings = field(default_factory=NginxSettings)
    autoscale: AutoscaleSection = field(default_factory=AutoscaleSection)
    deploy: DeploySection = field(default_factory=DeploySection)
    dashboard: DashboardSection = field(default_factory=DashboardSection)
    source: Optional[str] = field(default=None, metadata={"internal": True})

    # Derived figures used by the supervisor and the budget checks.
    def port(self, index: int) -> int:
        return self.instances.base_port + index

    @property
    def workers(self) -> int:
        return int(self.gunicorn.workers)

    def mongo_pool_per_process(self) -> int:
        """maxPoolSize per worker process: the largest pool that keeps the fleet (at
        instances.max) within mongodb.connection_budget, one server (capacity.py's formula)."""
        return mongo_pool_that_fits(self)


def resolve_auto_workers(cpu_count: int) -> int:
    return max(1, min(4, cpu_count // 2))


# ---- reading: bytes -> text -> YAML events -> plain values, every path with its line -------

MAX_SPEC_BYTES = 1 * MB      # a spec is a few KiB; a file this large is not one
MAX_YAML_ALIASES = 50        # aliases (`*name`) in one spec: a spec needs few, an alias bomb many
MAX_YAML_VALUES = 20_000     # values after alias expansion
MAX_YAML_DEPTH = 32          # nesting of mappings and lists
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_MISSING = object()  # a value that could not be read (its error is already recorded)


class _Refused(Exception):
    """The document as a whole cannot be read: one message, at one line."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line, self.message = line, message


@dataclass
class _Node:
    kind: str                 # "scalar", "seq" or "map"
    line: int
    tag: Optional[str]
    value: Any                # scalar text, list of nodes, or [key, value, key, value, ...]
    implicit: tuple = (False, True)


def _compose(text: str) -> tuple[Optional[_Node], int]:
    """The document as a tree of _Node, from parser events and without recursion, and how many
    aliases it uses. An alias is its anchor's node, shared: _Reader counts what the sharing
    expands to."""
    anchors: dict[str, _Node] = {}
    open_anchors: set[str] = set()
    stack: list[tuple[_Node, Optional[str]]] = []
    root = None
    documents = aliases = nodes = 0
    for ev in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if isinstance(ev, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
            continue
        line = ev.start_mark.line + 1
        nodes += 1
        if nodes > 2 * MAX_YAML_VALUES:  # keys and values
            raise _Refused(line, f"more than {MAX_YAML_VALUES} values: not a spec")
        if isinstance(ev, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _Refused(line, "more than one YAML document (a second `---`)")
            continue
        if isinstance(ev, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise _Refused(line, f"more than {MAX_YAML_ALIASES} aliases (`*name`): refused "
                                     "as an alias bomb")
            if ev.anchor in open_anchors:
                raise _Refused(line, f"alias *{ev.anchor} is inside the value it names "
                                     "(a recursive alias)")
            if ev.anchor not in anchors:
                raise _Refused(line, f"alias *{ev.anchor} has no anchor &{ev.anchor} before it")
            node = anchors[ev.anchor]
        elif isinstance(ev, yaml.ScalarEvent):
            node = _Node("scalar", line, ev.tag, ev.value, ev.implicit)
            if ev.anchor:
                anchors[ev.anchor] = node
        elif isinstance(ev, yaml.CollectionStartEvent):
            if len(stack) >= MAX_YAML_DEPTH:
                raise _Refused(line, f"nested more than {MAX_YAML_DEPTH} levels deep")
            kind = "map" if isinstance(ev, yaml.MappingStartEvent) else "seq"
            stack.append((_Node(kind, line, ev.tag, []), ev.anchor))
            if ev.anchor:
                open_anchors.add(ev.anchor)
            continue
        else:  # the end of a mapping or list
            node, anchor = stack.pop()
            if anchor:
                open_anchors.discard(anchor)
                anchors[anchor] = node
        if stack:
            stack[-1][0].value.append(node)
        else:
            root = node
    return root, aliases


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


class _Reader:
    """_Node tree -> dicts, lists and scalars. Records each key path's line, every problem, and
    the paths whose value could not be read (the checks that use them are skipped)."""

    def __init__(self, aliases: int = 0) -> None:
        self.aliases = aliases
        self.lines: dict[str, int] = {}
        self.errors: list[str] = []
        self.bad: set[str] = set()
        self.values = 0

    def error(self, path: str, line: int, message: str) -> None:
        self.errors.append(f"{path or 'spec'} (line {line}): {message}")
        self.bad.add(path)

    def document(self, root: Optional[_Node]) -> dict:
        empty = ("the spec is empty{}: a blank or truncated file is never taken as all "
                 "defaults; write `{{}}` to mean all defaults")
        if root is None:
            raise _Refused(None, empty.format(""))
        if root.kind == "scalar" and self.value(root, "") is None:
            raise _Refused(root.line, empty.format(f" (only `{root.value or '---'}`)"))
        if root.kind != "map":
            what = "a list" if root.kind == "seq" else f"the scalar {_show(root.value)}"
            raise _Refused(root.line, f"the spec must be a mapping of sections (name:, app:, "
                                      f"instances:, ...), got {what}")
        data = self.value(root, "")
        return data if isinstance(data, dict) else {}

    def value(self, node: _Node, path: str, depth: int = 0) -> Any:
        self.values += 1
        if self.values > MAX_YAML_VALUES:
            raise _Refused(node.line, f"more than {MAX_YAML_VALUES} values" + (
                " once its aliases are expanded: refused as an alias bomb" if self.aliases
                else ": not a spec"))
        if depth > MAX_YAML_DEPTH:
            raise _Refused(node.line, f"nested more than {MAX_YAML_DEPTH} levels deep")
        self.lines.setdefault(path, node.line)
        if node.kind == "scalar":
            return self.scalar(node, path)
        if node.tag not in (None, "!", _TAG + node.kind):
            self.error(path, node.line, f"{_short_tag(node.tag)} values are not supported")
            return _MISSING
        if node.kind == "seq":
            items = [self.value(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(node.value)]
            if any(v is _MISSING for v in items):
                self.bad.add(path)
                return _MISSING
            return items
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for knode, vnode in zip(node.value[0::2], node.value[1::2]):
            if knode.kind != "scalar" or knode.tag not in (None, "!", _TAG + "str"):
                self.errors.append(f"{path or 'spec'} (line {knode.line}): keys must be plain "
                                   "names, not lists, mappings or tagged values")
                continue
            key = knode.value
            sub = f"{path}.{key}" if path else key
            if knode.tag is None and knode.implicit[0] and key == "<<":
                self.error(sub, knode.line, "merge keys (`<<: *name`) are not supported; write "
                                            "the keys out")
                continue
            if key in first:
                self.error(sub, knode.line, f"duplicate key (first given on line {first[key]})")
                out.pop(key, None)
                continue
            first[key] = knode.line
            self.lines.setdefault(sub, knode.line)
            v = self.value(vnode, sub, depth + 1)
            if v is not _MISSING:
                out[key] = v
        return out

    def scalar(self, node: _Node, path: str) -> Any:
        text, tag = node.value, node.tag
        if tag is None:
            tag = _RESOLVER.resolve(yaml.ScalarNode, text, node.implicit)
            if tag not in _SCALAR_TAGS:  # a bare date, `=` (!!value), `<<` (!!merge): text
                tag = _TAG + "str"
        elif tag == "!":
            tag = _TAG + "str"
        if tag not in _SCALAR_TAGS:
            self.error(path, node.line, f"{_short_tag(tag)} values are not supported")
            return _MISSING
        if tag == _TAG + "str":
            return text
        if tag == _TAG + "int" and len(text) > 40:
            self.error(path, node.line, f"a {len(text)}-character number is out of range for "
                                        "every setting")
            return _MISSING
        try:
            return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, yaml.ScalarNode(tag, text))
        except Exception:  # e.g. `!!int abc`, `!!bool maybe`
            self.error(path, node.line, f"{_show(text)} is not a valid {_short_tag(tag)}")
            return _MISSING


def _show(value: Any) -> str:
    """A value for a message: long numbers and strings shortened."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 15:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[:6]}... ({len(digits)} digits)"
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def _num(value: float) -> str:
    return f"{value:g}" if abs(value) < 10 ** 15 else _show(value)


def decode_spec(data: bytes) -> str:
    """Spec file bytes as text; SpecError-ready message (ValueError) when they are not UTF-8."""
    if b"\x00" in data:
        raise ValueError("not UTF-8 text: it contains NUL bytes (a UTF-16 or binary file?); "
                         "save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} is not "
                         "UTF-8 (Latin-1? binary?); save it as UTF-8") from None


def _text_problem(text: str) -> str | None:
    if len(text) > MAX_SPEC_BYTES:
        return f"larger than {MAX_SPEC_BYTES // MB} MiB: not a spec"
    if "\x00" in text:
        return "not UTF-8 text: it contains NUL characters (a UTF-16 or binary file?)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 text: it contains characters UTF-8 cannot hold (lone surrogates)"
    return None


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


def _check_value(fld: dataclasses.Field, tp: Any, value: Any) -> tuple[Any, str | None]:
    """Return (converted value, error message or None) for one scalar key."""
    meta = fld.metadata
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else Any
    if value is None:
        return (None, None) if optional else (value, "must not be empty")
    if _has_nul(value):
        return value, "must not contain a NUL character"
    if fld.name == "workers":  # int or "auto"
        if value == "auto":
            return value, None
        tp = int
    if tp is Any:
        return value, None
    if typing.get_origin(tp) in (tuple, list):  # a command or a list of words: string or list
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value, None
        return value, f"must be a string or a list of strings, got {_show(value)}"
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads a bare off/on as a boolean
        value = "on" if value else "off"
    elif tp is str and isinstance(value, int):  # `worker_processes: 2`
        value = str(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        hint = " or `auto`" if fld.name == "workers" else ""
        return value, f"must be {_type_name(tp)}{hint}, got {_show(value)}"
    if tp is float and not math.isfinite(value):
        return value, f"must be a finite number, got {value}"
    if tp is dict:
        for k, v in value.items():
            if not _ENV_NAME.match(k):
                return value, (f"{_show(k)} is not an environment variable name (letters, digits "
                               "and _, not starting with a digit)")
            if not isinstance(v, (str, int, float, bool)):
                return value, f"values must be strings, numbers or booleans; {k!r} is not"
        return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}, None
    if tp is list:
        if not all(isinstance(v, (str, int, float)) for v in value):
            return value, "must be a list of strings"
        return [str(v) for v in value], None
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices") or ()
    if choices and value not in choices:
        return value, f"must be one of {', '.join(map(str, choices))}; got {_show(value)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and hi is not None and not lo <= value <= hi:
            return value, f"must be {lo:g}..{hi:g}, got {_num(value)}"
        if lo is not None and value < lo:
            return value, f"must be at least {lo:g}, got {_num(value)}"
        if hi is not None and value > hi:
            return value, f"must be at most {hi:g}, got {_num(value)}"
    if tp is str and not value and not optional and not meta.get("allow_empty"):
        return value, "must not be empty"
    return value, None


def _build(cls: type, data: Any, path: str, lines: dict[str, int], errors: list[str],
           base_dir: Path, bad: set[str]) -> Any:
    """The section `cls` from `data`: values that fail their own checks are reported, added to
    `bad` and left at their defaults, so the checks across keys still run on the rest."""
    def where(p: str) -> str:
        line = lines.get(p) or lines.get(path)
        return f"{p} (line {line})" if line else p

    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{where(path) if path else 'spec'}: must be a mapping, got {type(data).__name__}")
        bad.add(path)
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            errors.append(f"{where(f'{path}.{key}' if path else key)}: unknown key{hint}")
    kwargs = {}
    for name, fld in fields.items():
        sub = f"{path}.{name}" if path else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):  # absent sections still resolve their relative paths
            kwargs[name] = _build(tp, data.get(name), sub, lines, errors, base_dir, bad)
            continue
        if name not in data:
            continue
        value, err = _check_value(fld, tp, data[name])
        if err:
            errors.append(f"{where(sub)}: {err}")
            bad.add(sub)
            continue
        if fld.metadata.get("path") and isinstance(value, str):
            value = str((base_dir / value).resolve()) if not os.path.isabs(value) else value
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a section's own __post_init__ check
        errors.append(f"{where(path)}: {exc}")
        bad.add(path)
        return cls()
    # Defaults that are relative paths resolve against the spec's folder too.
    fixes = {}
    for name, fld in fields.items():
        if name not in kwargs and fld.metadata.get("path"):
            value = getattr(obj, name)
            if isinstance(value, str) and not os.path.isabs(value):
                fixes[name] = str((base_dir / value).resolve())
    return dataclasses.replace(obj, **fixes) if fixes else obj


_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_APP_MODULE = re.compile(rf"{_DOTTED}:{_DOTTED}(?:\([^\x00-\x1f]*\))?\Z")
_HTTP_PATH = re.compile(r"/[\x21-\x7e]*\Z")
# The inputs of each budget message (by the key it names): a budget is not judged when one of
# them could not be read (it would be judged on a default the file did not ask for).
_BUDGET_INPUTS = {
    "memory.fleet_budget_mb": ("instances.count", "gunicorn.workers", "memory"),
    "mongodb.connection_budget": ("instances.max", "gunicorn.workers", "mongodb"),
    "mongodb.min_pool_size": ("instances.max", "gunicorn.workers", "mongodb"),
    "mongodb.max_connecting": ("instances.max", "gunicorn.workers", "mongodb"),
    "nginx.worker_connections": ("nginx",),
    "gunicorn.worker_connections": ("gunicorn.worker_connections", "gunicorn.workers",
                                    "instances.max", "mongodb"),
    "instances.max": ("instances.max",),
}


def _tainted(bad: set[str], *inputs: str) -> bool:
    """Whether any input (a key path or a section) is, contains or is inside a bad path."""
    return any(i == b or i.startswith(b + ".") or b.startswith(i + ".")
               for i in inputs for b in bad)


def _cross_checks(spec: Spec, lines: dict[str, int], bad: set[str],
                  nofile_limit: int | None = None) -> list[str]:
    """Checks across keys, including the budgets the fleet must fit in; each runs unless one of
    its inputs could not be read."""
    def where(p: str) -> str:
        line = lines.get(p)
        return f"{p} (line {line})" if line else p

    def ok(*inputs: str) -> bool:
        return not _tainted(bad, *inputs)

    errors = []
    for msg in nginx_conf.validate(spec.nginx):
        key, _, rest = msg.partition(":")
        if ok(key, "nginx.mode"):
            errors.append(f"{where(key)}:{rest}" if key.startswith("nginx.") else msg)
    inst = spec.instances
    if ok("instances.min", "instances.max") and inst.min > inst.max:
        errors.append(f"{where('instances.min')}: must not exceed instances.max ({inst.max}), got {inst.min}")
    if ok("instances.min", "instances.max", "instances.count") and not inst.min <= inst.count <= inst.max:
        errors.append(f"{where('instances.count')}: must be within instances.min..max "
                      f"({inst.min}..{inst.max}), got {inst.count}")
    last = inst.base_port + inst.max - 1
    ports = range(inst.base_port, inst.base_port + inst.max)
    instance_ports = ok("instances.base_port", "instances.max")
    if instance_ports and last > 65535:
        errors.append(f"{where('instances.base_port')}: base_port + max - 1 = {last} is past 65535")
    if instance_ports and ok("api.port") and spec.api.port in ports:
        errors.append(f"{where('api.port')}: {spec.api.port} is inside the instance ports "
                      f"{inst.base_port}..{last}")
    ng = spec.nginx
    nginx_ports = [] if ng.mode == "off" or not ok("nginx.mode") else (
        [("nginx.listen", ng.listen)] + ([("nginx.tls_listen", ng.tls_listen)] if ng.tls_enabled else []))
    for key, port in nginx_ports:
        if not ok(key):
            continue
        if instance_ports and port in ports:
            errors.append(f"{where(key)}: {port} is inside the instance ports {inst.base_port}..{last}")
        if ok("api.port") and port == spec.api.port:
            errors.append(f"{where('api.port')}: {port} is also {key}")
    if ok("name") and not _NAME.match(spec.name):
        errors.append(f"{where('name')}: only letters, digits, - and _ (it marks process names), "
                      f"got {_show(spec.name)}")
    if ok("app.module") and not _APP_MODULE.match(spec.app.module):
        errors.append(f"{where('app.module')}: must look like `module:callable` or "
                      f"`module:factory()`, got {_show(spec.app.module)}")
    g = spec.gunicorn
    if ok("gunicorn.threads", "gunicorn.worker_class") and g.threads > 1 and g.worker_class != "gthread":
        errors.append(f"{where('gunicorn.threads')}: {g.threads} threads need gunicorn.worker_class "
                      f"gthread (got {g.worker_class}; gunicorn would switch a sync worker to "
                      "gthread behind the spec's back)")
    if ok("health.path") and not _HTTP_PATH.match(spec.health.path):
        errors.append(f"{where('health.path')}: must start with / and hold no spaces, CR/LF or "
                      f"other control characters, got {_show(spec.health.path)}")
    for key in ("instances.host", "api.host"):
        host = spec.instances.host if key == "instances.host" else spec.api.host
        if ok(key) and not nginx_conf.is_host(host):
            errors.append(f"{where(key)}: must be an IP address or a host name, got {_show(host)}")
    if ok("api.host", "api.token_file") and spec.api.host not in ("127.0.0.1", "localhost", "::1") \
            and not spec.api.token_file:
        errors.append(f"{where('api.host')}: {spec.api.host} is not loopback, so api.token_file "
                      "must name a file with the bearer token")
    for key in ("api.token_file", "api.metrics_token_file", "api.viewer_token_file", "api.tls_cert",
                "api.tls_key"):
        path = getattr(spec.api, key.split(".")[1])
        if ok(key) and path and not os.path.isfile(path):
            why = "is a directory" if os.path.isdir(path) else "does not exist"
            errors.append(f"{where(key)}: {path} {why}")
    if ok("api.tls_cert", "api.tls_key") and bool(spec.api.tls_cert) != bool(spec.api.tls_key):
        errors.append(f"{where('api.tls_cert')}: api.tls_cert and api.tls_key go together")
    if ok("api.allowed_hosts"):
        for h in spec.api.allowed_hosts:
            if not isinstance(h, str) or not nginx_conf.is_host(h):
                errors.append(f"{where('api.allowed_hosts')}: each must be an IP address or a host name "
                              f"(no port, no scheme), got {_show(h)}")
    keepalive = nginx_conf.parse_time(ng.keepalive_timeout)
    if ng.mode != "off" and ng.keepalive > 0 and keepalive is not None and \
            ok("gunicorn.keepalive", "nginx.mode", "nginx.keepalive", "nginx.keepalive_timeout") \
            and not spec.gunicorn.keepalive > keepalive:
        errors.append(f"{where('gunicorn.keepalive')}: {spec.gunicorn.keepalive} s must be longer "
                      f"than nginx.keepalive_timeout ({ng.keepalive_timeout}), so that nginx, not "
                      "gunicorn, closes idle upstream connections (else a request nginx sends on a "
                      "connection gunicorn is closing fails)")
    errors += autoscale_errors(spec, where, ok)
    for msg in budget_errors(spec, spec.instances.count, lines, nofile_limit):
        inputs = _BUDGET_INPUTS.get(msg.split(" ", 1)[0].rstrip(":"), ())
        if ok(*inputs):
            errors.append(msg)
    return errors


def budget_errors(spec: Spec, count: int, lines: dict[str, int] | None = None,
                  nofile_limit: int | None = None) -> list[str]:
    """The budgets (memory, MongoDB connections, file descriptors) for `count` instances."""
    return budget_problems(spec, count, lines=lines, nofile_limit=nofile_limit)


def _line_of(error: str) -> int:
    _, _, rest = error.partition("(line ")
    digits = rest.split(")", 1)[0]
    return int(digits) if digits.isascii() and digits.isdigit() else 1 << 30


def _sorted(errors: list[str]) -> list[str]:
    """By line (errors without one last), then text; each once."""
    return sorted(set(errors), key=lambda e: (_line_of(e), e))


def parse_spec(text: str | bytes, source: str = "<spec>", base_dir: Path | None = None,
               cpu_count: int | None = None, nofile_limit: int | None = None) -> Spec:
    """Parse and validate spec text (or UTF-8 bytes); raise SpecError listing every problem.
    A blank document is refused: `{}` means all defaults."""
    try:
        return _parse(text, source, base_dir or Path.cwd(), cpu_count, nofile_limit)
    except SpecError:
        raise
    except Exception as exc:  # a bug; still a refusal, never a crash of --check or a reload
        raise SpecError([f"{source}: internal error while reading the spec "
                         f"({type(exc).__name__}: {exc}); please report it"]) from exc


def _parse(text: str | bytes, source: str, base_dir: Path, cpu_count: int | None,
           nofile_limit: int | None) -> Spec:
    if isinstance(text, bytes):
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError([f"{source}: {_text_problem(' ' * len(text))}"])
        try:
            text = decode_spec(text)
        except ValueError as exc:
            raise SpecError([f"{source}: {exc}"]) from None
    problem = _text_problem(text)
    if problem:
        raise SpecError([f"{source}: {problem}"])
    try:
        root, aliases = _compose(text)
        reader = _Reader(aliases)
        data = reader.document(root)
    except _Refused as exc:
        at = f" (line {exc.line})" if exc.line else ""
        raise SpecError([f"{source}{at}: {exc.message}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise SpecError([f"{source}{at}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    lines, errors, bad = reader.lines, reader.errors, reader.bad
    spec = _build(Spec, data, "", lines, errors, base_dir, bad)
    if spec.gunicorn.workers == "auto":
        workers = resolve_auto_workers(cpu_count or os.cpu_count() or 1)
        spec = dataclasses.replace(spec, gunicorn=dataclasses.replace(spec.gunicorn, workers=workers))
    if spec.nginx.mode == "managed" and not spec.nginx.prefix:
        prefix = str(Path(spec.paths.state_dir) / "nginx")
        spec = dataclasses.replace(spec, nginx=dataclasses.replace(spec.nginx, prefix=prefix))
    spec = dataclasses.replace(spec, source=source)
    errors += _cross_checks(spec, lines, bad, nofile_limit)
    if errors:
        raise SpecError(_sorted(errors))
    return spec


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def read_spec_file(path: str | os.PathLike) -> bytes:
    """The bytes of a spec file: a regular file of at most MAX_SPEC_BYTES, read with a bounded
    read; never blocks (a FIFO or a device is refused before it is read)."""
    p = os.fspath(path)

    def refuse(why: str) -> SpecError:
        return SpecError([f"{p}: cannot read: {why}"])

    if "\x00" in p:
        raise SpecError([f"{p!r}: cannot read: the path contains a NUL character"])

    def check(st: os.stat_result) -> None:
        for test, kind in _FILE_KINDS:
            if test(st.st_mode):
                raise refuse(f"it is {kind}, not a spec file")
        if not stat.S_ISREG(st.st_mode):
            raise refuse("not a regular file")
        if st.st_size > MAX_SPEC_BYTES:
            raise refuse(f"{st.st_size} bytes, larger than {MAX_SPEC_BYTES // MB} MiB: not a spec")

    try:
        check(os.stat(p))  # before opening: opening a device or a FIFO may block or act
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    try:
        check(os.fstat(fd))  # the file opened is the one checked
        chunks, left = [], MAX_SPEC_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_SPEC_BYTES:
        raise refuse(f"larger than {MAX_SPEC_BYTES // MB} MiB: not a spec")
    return data


def load_spec(path: str | os.PathLike, cpu_count: int | None = None,
              nofile_limit: int | None = None) -> Spec:
    """Read and validate a spec file (the daemon's start, `--check` and every reload use this);
    `nofile_limit` (the daemon's RLIMIT_NOFILE) enables the file-descriptor budget checks."""
    data = read_spec_file(path)
    p = Path(path).resolve()
    return parse_spec(data, source=str(p), base_dir=p.parent, cpu_count=cpu_count,
                      nofile_limit=nofile_limit)


# ---- `ultrascaled --check`: what can be checked on this host (never part of loading) -------

# Worker classes: gunicorn's module for each (importing it imports what the worker needs:
# gunicorn 27's gevent worker also imports `packaging`), and the package it needs besides gunicorn.
WORKER_MODULES = {"gevent": "gunicorn.workers.ggevent", "eventlet": "gunicorn.workers.geventlet",
                  "gthread": "gunicorn.workers.gthread", "sync": "gunicorn.workers.sync"}
WORKER_PACKAGES = {"gevent": "gevent", "eventlet": "eventlet", "gthread": None, "sync": None}
# What a worker module imports besides its package, named in the same message when missing, so
# that one `pip install` brings everything (gunicorn 27's gevent worker imports `packaging`).
WORKER_EXTRAS = {"gevent": ("packaging",)}
# Run by app.python in app.directory: import one module; a missing one is named on stdout (its
# top-level name, which is the pip package for everything a worker class imports).
_IMPORT_PROBE = ("import importlib, sys\n"
                 "try:\n    importlib.import_module(sys.argv[1])\n"
                 "except ModuleNotFoundError as e:\n"
                 "    print((e.name or '?').split('.')[0]); sys.exit(3)\n")
# Run by app.python in app.directory: is the top-level module of app.module on the import path
# (found, never imported: importing the app could connect to databases)?
_FIND_PROBE = ("import importlib.util, sys\nsys.path.insert(0, '')\n"
               "sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)\n")


def saved_count(spec: Spec) -> int | None:
    """The desired count a daemon saved in `paths.state_dir/state.json`, when readable."""
    try:
        with open(Path(spec.paths.state_dir) / "state.json", "rb") as f:
            saved = json.loads(f.read(1 << 16))["desired"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return saved if isinstance(saved, int) and not isinstance(saved, bool) and saved >= 0 else None


def reload_count(spec: Spec) -> int:
    """The count a reload judges the budgets for: the larger of instances.count and the saved
    count (a scaled fleet keeps its count across a reload)."""
    return max(spec.instances.count, saved_count(spec) or 0)


def host_problems(spec: Spec, nofile_limit: int | None = None, timeout: float = 30.0) -> list[str]:
    """What keeps this host from running a valid spec: app.directory, app.python, app.config,
    the worker class's packages, app.module's module, and the budgets for the count a reload
    would use. Runs `app.python -c ...` (imports gunicorn's worker module, only looks for the
    app's); only `ultrascaled --check` calls this, never load_spec."""
    import shutil
    import sys

    problems = []
    directory = spec.app.directory
    if not os.path.isdir(directory):
        why = "is not a folder" if os.path.exists(directory) else "does not exist"
        problems.append(f"app.directory: {directory} {why}")
    python = spec.app.python or sys.executable
    found = python if os.sep in python else shutil.which(python)
    if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
        problems.append(f"app.python: {python} is not an executable file")
        found = None
    if spec.app.config and not os.path.isfile(os.path.join(directory, spec.app.config)):
        problems.append(f"app.config: {os.path.join(directory, spec.app.config)} does not exist")
    if found:
        problems += _import_problems(spec, python, found, directory, timeout)
    count = reload_count(spec)
    if count > spec.instances.count:
        problems += [f"{e} (for the count {count} saved in paths.state_dir/state.json, which a "
                     "reload keeps)" for e in budget_errors(spec, count, nofile_limit=nofile_limit)]
    return problems


def _import_problems(spec: Spec, python: str, found: str, directory: str,
                    timeout: float) -> list[str]:
    """gunicorn, the worker class's module and app.module's top-level module, as app.python
    sees them from app.directory; each missing one named with the package to install."""
    import subprocess

    cwd = directory if os.path.isdir(directory) else None

    def probe(code: str, arg: str) -> tuple[int, str]:
        try:
            out = subprocess.run([found, "-c", code, arg], capture_output=True, text=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return -1, str(exc)
        last = (out.stderr.strip().splitlines() or [""])[-1]
        return out.returncode, out.stdout.strip() if out.returncode == 3 else last

    wc = spec.gunicorn.worker_class
    problems = []
    # gunicorn, then the worker class's package, then gunicorn's worker module (which imports
    # more: `packaging` for gevent); the first that fails is reported.
    for module in ["gunicorn", WORKER_PACKAGES[wc], WORKER_MODULES[wc]]:
        if not module:
            continue
        rc, missing = probe(_IMPORT_PROBE, module)
        if rc == 0:
            continue
        if rc == 3:
            package = missing
            why = ("gunicorn runs the instances" if package == "gunicorn" else
                   f"gunicorn.worker_class {wc} needs it"
                   + ("" if package == WORKER_PACKAGES[wc] else f": {module} imports it"))
            packages = [package]
            if package == WORKER_PACKAGES[wc]:  # the worker module will want its extras too
                packages += [x for x in WORKER_EXTRAS.get(wc, ()) if probe(_IMPORT_PROBE, x)[0] == 3]
            if len(packages) > 1:
                why += f", and {WORKER_MODULES[wc]} imports {', '.join(packages[1:])}"
            problems.append(f"app.python: {python} cannot import {', '.join(packages)} ({why}); "
                            f"install {'it' if len(packages) == 1 else 'them'}: "
                            f"{python} -m pip install {' '.join(packages)}"
                            + ("" if wc in ("sync", "gthread") else ", or use "
                               "gunicorn.worker_class sync or gthread, which need only gunicorn"))
        else:
            problems.append(f"app.python: {python} cannot import {module} (gunicorn.worker_class "
                            f"{wc}): {missing}")
        break
    top = spec.app.module.split(":", 1)[0].split(".", 1)[0]
    if cwd and not any(a == "--pythonpath" or a.startswith("--pythonpath=") for a in spec.gunicorn.args):
        rc, err = probe(_FIND_PROBE, top)
        if rc == 3:
            problems.append(f"app.module: {python} finds no module `{top}` in app.directory "
                            f"{directory} (nor in its venv): set app.module to your app's WSGI "
                            "callable, e.g. `mysite.wsgi:application` or `flaskr:create_app()`, "
                            "and app.directory to the folder that holds it")
        elif rc != 0:
            problems.append(f"app.module: {python} could not look for module `{top}`: {err}")
    return problems


def iter_settings(cls: type = Spec, prefix: str = ""):
    """Yield (path, type name, default, help) for every key: the configuration reference."""
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        if fld.metadata.get("internal"):
            continue
        path = f"{prefix}.{fld.name}" if prefix else fld.name
        tp = hints[fld.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_settings(tp, path)
            continue
        default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
        yield path, _describe_type(fld, tp), default, fld.metadata.get("help", "")


def _describe_type(fld: dataclasses.Field, tp: Any) -> str:
    if fld.name == "workers":
        return "int or `auto`"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe_type(fld, a) for a in args) + " or null"
    if typing.get_origin(tp) in (tuple, list):
        return "string or list of strings"
    name = {int: "int", float: "float", str: "string", bool: "bool", list: "list of strings",
            dict: "map of strings"}.get(tp, str(tp))
    choices = fld.metadata.get("choices")
    if choices:
        name += ": " + ", ".join(map(str, choices))
    if fld.metadata.get("path"):
        name = "path"
    return name


def reference_markdown() -> str:
    """The key table of docs/configuration.md, generated from the declarations above."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for path, tname, default, help_text in iter_settings():
        shown = "null" if default is None else json.dumps(list(default) if isinstance(default, tuple)
                                                           else default)
        rows.append(f"| `{path}` | {tname} | `{shown}` | {help_text.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m ultrascaled.spec: print the reference table
    print(reference_markdown(), end="")
