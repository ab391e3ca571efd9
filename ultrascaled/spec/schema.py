"""The fleet spec's declarations: every key once, as a frozen dataclass field whose metadata
carries its help text and bounds (validation, defaults and docs/configuration.md come from them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ultrascaled.spec.budget import mongo_pool_that_fits
from ultrascaled.spec.envfile import FileEnv
from ultrascaled.spec.nginx import NginxSettings

MB = 1024 * 1024


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            choices: tuple = (), path: bool = False, dotted: bool = False) -> Any:
    """A spec key: its default, help text and bounds, in one place. `dotted`: a `module.Class`
    path is accepted besides `choices` (gunicorn.worker_class)."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "path": path}
    if dotted:
        meta["dotted"] = True
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
    env: dict = setting({}, "Extra environment for the app (string to string); a key also in "
                        "`app.env_file` takes this value.")
    env_file: list[str] = setting([], "systemd EnvironmentFile= files (`KEY=VALUE` lines) whose "
                                  "variables the app gets, relative to the spec file; a leading "
                                  "`-` ignores a missing one. Read with the spec (at start and on "
                                  "every reload: a changed value restarts the instances); a later "
                                  "file's value wins, `app.env` wins over all. Values are never "
                                  "shown; a file every local user may read is refused when a key "
                                  "looks like a secret (docs/configuration.md#env-files).")
    file_env: FileEnv = field(default_factory=FileEnv, metadata={"internal": True})


@dataclass(frozen=True)
class InstancesSection:
    count: int = setting(2, "Instances to run when no scale was requested.", min=0, max=256)
    min: int = setting(1, "Lowest count `scale` accepts.", min=0, max=256)
    max: int = setting(8, "Highest count `scale` accepts.", min=1, max=256)
    base_port: int = setting(8001, "Port of instance 0; instance i listens on base_port + i.",
                             min=1024, max=65535)
    host: str = setting("127.0.0.1", "Address the instances bind.")
    spares: int = setting(0, "Warm spares: masters of the current release booted ahead on ports just "
                          "past the range (base_port + max + j), never in nginx's upstream and not "
                          "counted as capacity, but counted in every budget. A crash, a failed "
                          "health check, a memory replacement or a scale-up hands the port's socket "
                          "to a ready spare at once (docs/spares.md). Needs gunicorn.worker_class "
                          "sync, gthread or gevent.", min=0, max=16)


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
                                "`app.python`'s venv (`--check` names it). Or a class as a dotted "
                                "path `module.Class`: for an ASGI app (FastAPI, Starlette) "
                                "`uvicorn_worker.UvicornWorker` (package `uvicorn-worker`; "
                                "uvicorn's own `uvicorn.workers.UvicornWorker` is deprecated but "
                                "accepted), counted as `concurrency` requests at a time; any other "
                                "dotted class needs `concurrency`. The reference app runs on gevent.",
                                choices=("gevent", "sync", "gthread", "eventlet"), dotted=True)
    threads: int = setting(1, "Threads per worker for `worker_class: gthread` (`--threads`; "
                           "gunicorn's default 1): requests one gthread worker serves at once.",
                           min=1, max=10000)
    worker_connections: int = setting(1000, "Concurrent connections per gevent or eventlet worker "
                                      "(also gthread's cap on open connections, and what a uvicorn "
                                      "worker is counted as when `concurrency` is null; uvicorn "
                                      "itself ignores it).", min=1, max=100000)
    concurrency: Optional[int] = setting(None, "Requests one worker of a dotted `worker_class` "
                                         "serves at once: what the planner (`plan`), the file "
                                         "descriptor budget and `autoscale.target."
                                         "in_flight_per_worker`'s limit count with. null: for "
                                         "uvicorn's classes, `worker_connections` (uvicorn itself "
                                         "sets no per-worker limit: this is the figure the plan "
                                         "assumes, not a cap uvicorn enforces); required for a "
                                         "dotted class ultrascaled does not know. Refused for "
                                         "sync, gthread, gevent and eventlet (their own keys say "
                                         "it).", min=1, max=100000)
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
    args: list = setting([], "Extra gunicorn command-line arguments, for what the spec does not "
                         "cover (`--log-level`, `--forwarded-allow-ips`, ...). The options the "
                         "daemon sets (`--bind`, `--fd`, `--pid`, `--name`, `--daemon`, `--chdir`, "
                         "`--reuse-port`, `--worker-class`, `--workers`, `--user`, `--config`, the "
                         "timeouts and logs) and positional arguments are refused, naming the key "
                         "to use; `--check` parses the whole command line with the app's gunicorn.")


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
    relaxed_interval: float = setting(5.0, "Seconds between memory samples while every process is "
                                      "under memory.relaxed_below of memory.worker_limit_mb (and the "
                                      "fleet under that share of its budget), and the autoscaler is "
                                      "off; at most 5 x sample_interval and 10 s (the log-size check's "
                                      "cadence, so logs rotate as soon as before). One over it is sampled every memory.sample_interval again. "
                                      "Worst case from a process crossing its limit to its recycle: "
                                      "relaxed_interval + (samples_over - 1) x sample_interval (7 s "
                                      "with the defaults; 0 or at most sample_interval: always "
                                      "samples_over x sample_interval).", min=0, max=300)
    relaxed_below: float = setting(0.5, "Share of memory.worker_limit_mb (and of fleet_budget_mb) "
                                   "under which memory is sampled every memory.relaxed_interval.",
                                   min=0.0, max=1.0)


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
    route_error_rate: Optional[float] = setting(0.5, "Fire `route_errors` when one route's share "
                                                "of 5xx answers is over this (0.5 = most of its "
                                                "requests), whatever the fleet's total; measured at "
                                                "nginx (needs `nginx.traffic_log`); null = off.",
                                                min=0, max=1)
    route_error_rate_for: float = setting(30.0, "Seconds a route's error rate must stay over "
                                          "before firing.", min=0)
    route_min_requests: int = setting(5, "Requests a route needs in an interval before its error "
                                      "rate is judged.", min=1)
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
                             "(renamed to `.1`, then gunicorn reopens it on SIGUSR1: no line is lost); "
                             "a worker process's is rotated by the pipe it writes into, a job's "
                             "between runs (docs/processes.md#logs).", min=4096)
    backups: int = setting(5, "Rotated files kept per instance, worker process or job "
                           "(`instance-PORT.log.1` .. `.N`).", min=0, max=100)


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
                                          "`instances.max`. Within `instances.min..max`, and "
                                          "within the budgets: an enabled autoscaler's max must "
                                          "fit `memory.fleet_budget_mb` (max x (workers + 1) x "
                                          "`worker_limit_mb`) and the other budgets; every budget "
                                          "still vetoes a step up.", min=1, max=256)
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
                                                           "the fleet has a worker per core and "
                                                           "its own processes use at least half "
                                                           "of the busy CPU: more instances on a "
                                                           "host the fleet saturates serve less "
                                                           "(a host busy with other work does not "
                                                           "hold it); null = not checked.",
                                                           min=1, max=100)
    target: AutoscaleTarget = field(default_factory=AutoscaleTarget)
    behavior: AutoscaleBehavior = field(default_factory=AutoscaleBehavior)

    def bounds(self, instances: "InstancesSection") -> tuple[int, int]:
        """(min, max) the autoscaler keeps the count within."""
        lo = instances.min if self.min_replicas is None else self.min_replicas
        hi = instances.max if self.max_replicas is None else self.max_replicas
        return lo, hi


@dataclass(frozen=True)
class DeploySection:
    releases_dir: Optional[str] = setting(None, "Folder of releases: `ultrascalectl deploy DIR` copies "
                                          "DIR to `<releases_dir>/<id>` (the id is the UTC time, "
                                          "`20261130T150102Z`) and points `current` at it. Each "
                                          "instance runs one release folder for its whole life "
                                          "(docs/deploys.md). null = `<paths.state_dir>/releases`; "
                                          "relative to the spec file.", path=True)
    shared: list = setting([], "Paths in the app's folder that hold data the app writes "
                           "(`db.sqlite3`, `media/`; a trailing `/` marks a folder): they live once, "
                           "in `<paths.state_dir>/shared/`, and every release links them, so a deploy "
                           "or a rollback keeps them. The first deploy moves them there from the "
                           "running folder and leaves a link (docs/deploys.md#data-the-app-writes).")
    release_command: list = setting([], "A one-off command run in the new release's folder before "
                                    "any process of it starts (Heroku's release phase), e.g. "
                                    "`[python, manage.py, migrate, --noinput]`: an argv list, no "
                                    "shell; `PATH` starts with `app.python`'s folder and the "
                                    "environment is the instances' (`app.env_file`, `app.env`). A "
                                    "non-zero exit or `release_timeout` stops the deploy, with "
                                    "the old release still serving everything and the command's "
                                    "output in the event and in `<paths.log_dir>/release-<id>.log`. "
                                    "[] = none. A rollback does not run it (docs/deploys.md).")
    release_timeout: float = setting(600.0, "Seconds `release_command` may run; then its process "
                                     "group is killed and the deploy stops.", min=1, max=86400)
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
    route_p_value: float = setting(0.001, "Roll back when one route's 5xx share on the canary is "
                                   "above the old instances' on that route with a p-value under "
                                   "this, divided by the routes compared (Fisher's exact test; a "
                                   "route the old instances never answered: a binomial test "
                                   "against their 5xx rate). Needs nginx's traffic log.",
                                   min=1e-12, max=0.5)
    route_min_errors: int = setting(3, "... and at least this many 5xx answers on that route from "
                                    "the canary.", min=1)


@dataclass(frozen=True)
class DashboardSection:
    """The live web page at `GET /ui` (ultrascaled/surface/dashboard.py) and the history it charts."""
    enabled: bool = setting(True, "Serve the dashboard at `GET /ui` on the API listener (same "
                            "auth) and keep its history in memory; false = neither.")
    history_seconds: int = setting(900, "Seconds of history the charts show (kept in the "
                                   "daemon's memory, bounded).", min=60, max=3600)
    sample_interval: float = setting(5.0, "Seconds between two points of the charts (request "
                                     "rate, p95, 5xx, memory, instance count).", min=0.5, max=60)


# ---- process types beside the web fleet (`processes:`; ultrascaled/core/worker_plan.py decides) --

# ---- a worker type's autoscaling on its queue's depth (spec/queue.py checks it, docs/processes.md)

@dataclass(frozen=True)
class QueueSource:
    redis: Optional[str] = setting(None, "URL of the Redis broker whose list is the queue: "
                                   "`redis://[[user]:password@]host:port/db`, `rediss://` for "
                                   "TLS, `unix:///path.sock?db=0`; required to autoscale. Its "
                                   "password is shown as `***` everywhere. The daemon reads it "
                                   "with redis-py (`pip install 'redis>=5'`).")
    list: Optional[str] = setting(None, "The Redis list whose length (LLEN) is the queue depth; "
                                  "or one of `rq` and `celery`.")
    rq: Optional[str] = setting(None, "An RQ queue's name: the list `rq:queue:<name>`.")
    celery: Optional[str] = setting(None, "A Celery queue's name on its Redis broker: the list "
                                    "of that name (Celery's default queue is `celery`).")


@dataclass(frozen=True)
class QueueAutoscale:
    queue: QueueSource = field(default_factory=QueueSource)
    target: float = setting(50.0, "Queued items per process: the type runs ceil(depth / target) "
                            "processes (the HPA's External metric with an AverageValue "
                            "target), within min..max.", min=0.001, max=1e9)
    min: Optional[int] = setting(None, "Fewest processes the autoscaler keeps; null = the "
                                 "type's `min`. Within the type's min..max.", min=0, max=256)
    max: Optional[int] = setting(None, "Most processes the autoscaler asks for; null = the "
                                 "type's `max`. Within the type's min..max.", min=1, max=256)
    interval: float = setting(5.0, "Seconds between two reads of the queue's depth (each one "
                              "a decision).", min=0.5, max=300)
    tolerance: float = setting(0.1, "No change while depth / (target x processes) is within "
                               "1 +- this (the HPA's 10 %).", min=0, max=1)
    behavior: AutoscaleBehavior = field(default_factory=AutoscaleBehavior)

    @property
    def enabled(self) -> bool:
        return self.queue.redis is not None

    def bounds(self, t: "ProcessType") -> tuple[int, int]:
        """(min, max) the autoscaler keeps the type's count within."""
        return (t.min if self.min is None else self.min, t.max if self.max is None else self.max)


PROCESS_KINDS = ("worker", "job", "web")
BUILT_KINDS = ("worker", "job")
WORKER_ONLY = ("count", "min", "max", "start_seconds",   # refused on a job: it runs when due,
               "ready", "ready_timeout", "after",         # and its run is bounded by its timeout
               "memory_limit_mb")
JOB_ONLY = ("schedule", "every", "concurrency", "timeout", "catch_up", "history")


@dataclass(frozen=True)
class ProcessType:
    """One entry of `processes:` (a Procfile line): a named type of long-running command."""
    kind: str = setting("worker", "`worker`: a long-running command the daemon keeps `count` of "
                        "(Celery, RQ, a queue consumer). `job`: a command run on a `schedule` or "
                        "`every` period, one run at a time on the host unless `concurrency` says "
                        "otherwise (docs/processes.md#jobs). `web` (the gunicorn fleet is the "
                        "top-level sections) is not built yet and refused.",
                        choices=PROCESS_KINDS)
    command: list = setting([], "The argv to run, a list (no shell: write `[sh, -c, '...']` for "
                            "one); required.")
    count: int = setting(1, "Processes of this type to run when no scale was requested.",
                         min=0, max=256)
    min: int = setting(0, "Lowest count `scale NAME=N` accepts.", min=0, max=256)
    max: Optional[int] = setting(None, "Highest count `scale NAME=N` accepts; null = `count` (a "
                                 "type scales past its count only as far as the spec says). The "
                                 "memory budget counts each worker type at its max.", min=1, max=256)
    env: dict = setting({}, "Environment for this type, over `app.env_file` and `app.env`; "
                        "`ULTRASCALE_PROCESS=<fleet>/<name>/<index>` is set by the daemon.")
    directory: Optional[str] = setting(None, "Folder the command runs in; null = `app.directory` "
                                       "(the current release's folder after a deploy); relative "
                                       "to the spec file.", path=True)
    stop_signal: str = setting("TERM", "Signal that asks a process to stop (Celery's and RQ's "
                               "warm shutdown is TERM); SIGKILL to its process group follows at "
                               "`graceful_timeout`.", choices=("TERM", "INT", "QUIT", "HUP",
                                                               "USR1", "USR2"))
    graceful_timeout: float = setting(30.0, "Seconds a stopping process gets before its "
                                      "process group is SIGKILLed.", min=0.1, max=86400)
    start_seconds: float = setting(1.0, "Seconds a process must stay alive to count as started "
                                    "(RUNNING); an exit sooner is a start failure "
                                    "(`restart.fatal_crashes` in a row make it FATAL).",
                                    min=0, max=3600)
    ready: Optional[dict] = field(default=None, hash=False, metadata={"keys": "ready", "help": (
        "A worker's readiness check, one of: `{tcp: PORT}` (a TCP connect to 127.0.0.1:PORT "
        "succeeds), `{http: URL}` (a GET on a loopback URL such as `http://127.0.0.1:9101/"
        "health` answers 2xx), `{command: [argv]}` (exits 0 within 5 s; no shell: `[sh, -c, "
        "'...']` to expand `$HOSTNAME`; run in the process's folder with its environment). Tried "
        "every 0.5 s from the spawn; the process is STARTING until it passed and `start_seconds` "
        "are over. null = alive `start_seconds` is enough (docs/processes.md#start-order-and-"
        "readiness).")})
    ready_timeout: float = setting(60.0, "Seconds a worker's process may take to pass its `ready` "
                                   "check; then its process group is SIGKILLed and it counts as "
                                   "a start failure (backoff, FATAL at `restart.fatal_crashes` "
                                   "in a row).", min=0.5, max=86400)
    after: list = setting(["web"], "Types a worker type starts after: `web` (the web fleet "
                          "ready, the default) and other worker types (all their processes "
                          "running, each past its `ready` check). `[]` = at once, with the "
                          "daemon, before the web fleet. Only the first start waits: a restart "
                          "later does not. Cycles and unknown names are refused.")
    requires: list = setting([], "Addresses `tcp://HOST:PORT` that must accept a TCP connection: "
                             "a worker type's processes first start once all do (a "
                             "`processes.waiting` event names what is awaited, every 10 s; "
                             "status shows `waiting for`); a job's run that is due while one "
                             "does not is skipped (`job.skipped` says which). [] = none.")
    # the memory watchdog of a worker (docs/processes.md#memory; issue 22)
    memory_limit_mb: Optional[int] = setting(None, "MiB a worker process may use with its whole "
                                             "process tree (a Celery parent and its children), "
                                             "in `memory.metric`; `memory.samples_over` samples "
                                             "in a row over it restart the process gracefully. "
                                             "null = `memory.worker_limit_mb`.", min=16,
                                             max=1048576)
    autoscale: QueueAutoscale = field(default_factory=QueueAutoscale)   # a worker's, on its queue
    # a job's keys (kind: job); ultrascaled/spec/jobs.py reads the schedule
    schedule: Optional[str] = setting(None, "A job's cron schedule, five fields in the host's "
                                      "local time (`*/15 * * * *`, `30 3 * * *`) or `@hourly`, "
                                      "`@daily`, `@weekly`, `@monthly`, `@yearly`; set this or "
                                      "`every`.")
    every: Optional[str] = setting(None, "A job's period for short ones: `30s`, `5m`, `1h` or a "
                                   "number of seconds (1 s..7d), on a fixed grid from the epoch "
                                   "(`1m` runs at each minute); set this or `schedule`.")
    concurrency: str = setting("forbid", "A job that is due while its last run still goes: "
                               "`forbid` skips the new run (an event says so), `replace` stops "
                               "the old one (stop_signal, SIGKILL at graceful_timeout) and starts "
                               "the new, `allow` runs both (at most 16 at once). Kubernetes "
                               "CronJob's concurrencyPolicy.", choices=("forbid", "replace", "allow"))
    timeout: Optional[float] = setting(None, "Seconds a job's run may take; then it is stopped "
                                       "(stop_signal, SIGKILL at graceful_timeout) and counts as "
                                       "failed. null = no limit.", min=1, max=7 * 86400)
    catch_up: bool = setting(False, "A job whose runs were missed while the daemon was down "
                             "runs once at start when true; false skips them (an event names "
                             "what was missed).")
    history: int = setting(20, "Runs of a job kept in `GET /jobs/NAME/runs` and `<paths."
                           "state_dir>/jobs.json`.", min=1, max=1000)

    def __post_init__(self) -> None:
        if self.max is None:   # null: the type's count (one process at least, as `max` is >= 1)
            object.__setattr__(self, "max", max(self.count, 1))


@dataclass(frozen=True)
class PlanSection:
    """What `ultrascalectl plan --measure` loads one instance of the app with (docs/capacity.md)."""
    urls: list = setting(["/"], "Paths `plan --measure` requests, spread evenly, from one "
                              "instance of the app on a free loopback port (each must answer 2xx "
                              "or 3xx; `--url` replaces the list). Name the pages your users "
                              "load, e.g. `[/, /products/1]`.")


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
    plan: PlanSection = field(default_factory=PlanSection)
    processes: dict = field(default_factory=dict, metadata={
        "map_of": ProcessType, "help": "Process types beside the web fleet, by name (letters, "
        "digits, `-`, `_`; not `web`), each `processes.NAME.*` below; {} = the web fleet "
        "alone (docs/configuration.md#process-types)."})
    source: Optional[str] = field(default=None, metadata={"internal": True})

    # Derived figures used by the supervisor and the budget checks.
    def port(self, index: int) -> int:
        return self.instances.base_port + index

    @property
    def workers(self) -> int:
        return int(self.gunicorn.workers)

    def mongo_pool_per_process(self) -> int:
        """maxPoolSize per worker process: the largest pool that keeps the fleet (at
        instances.max) within mongodb.connection_budget, one server (spec/budget.py's formula)."""
        return mongo_pool_that_fits(self)


def resolve_auto_workers(cpu_count: int) -> int:
    return max(1, min(4, cpu_count // 2))
