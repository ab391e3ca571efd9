"""The supervision core, assembled: what the API and the daemon talk to.

It holds the fleet lock, starts the reconciler (the one writer, `core/reconciler/`) and the other
background loops under one guard (`supervise/tasks.py`), and changes only *wanted* state: the count,
restart requests, the spec. It never spawns or signals anything itself; it wakes the loop.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any

from ultrascaled.core import release_layout, reload_plan
from ultrascaled.core.control import ScaleRefused
from ultrascaled.core.reconciler import Instance, Reconciler
from ultrascaled.core.reload_plan import ReloadDecision
from ultrascaled.core.reconciler.records import Reload, Restart, Scale, Shutdown
from ultrascaled.core.seams import Clock, Runner, Upstream
from ultrascaled.core.states import State
from ultrascaled.effects.files import write_atomic
from ultrascaled.effects.fleetlock import FleetLock
from ultrascaled.effects.runner import OsRunner
from ultrascaled.effects.upstream import NoUpstream
from ultrascaled.observe import alerts as alerting, metrics
from ultrascaled.observe.accesslog import TrafficMonitor
from ultrascaled.observe.events import EventLog
from ultrascaled.spec import MB, Spec
from ultrascaled.supervise import views
from ultrascaled.supervise.autoscale_loop import Autoscaler
from ultrascaled.supervise.jobs_loop import JobsLoop
from ultrascaled.supervise.queue_scale_loop import QueueScaler
from ultrascaled.supervise.rollout_loop import Deployer
from ultrascaled.supervise.tasks import TaskGuard
from ultrascaled.supervise.workers_loop import WorkersLoop

S = State
FROM_SPEC = object()   # Supervisor(traffic=...): the traffic log the spec names (the default)


class KindView:
    """The spec in force with only the `processes:` of one kind: what that kind's loop reads.
    The same object while the spec is the same, so a loop can tell a reload by identity."""

    def __init__(self, spec, kind: str):
        self._spec, self.kind = spec, kind
        self._seen: tuple[Spec, Spec] | None = None

    def __call__(self) -> Spec:
        spec = self._spec()
        if self._seen is None or self._seen[0] is not spec:
            view = dataclasses.replace(spec, processes={n: t for n, t in spec.processes.items()
                                                        if t.kind == self.kind})
            self._seen = (spec, view)
        return self._seen[1]


class Supervisor:
    """Built whole: the reconciler, the deploy and autoscale loops, the traffic monitor and the
    alerts are made here, wired to each other, and never patched afterwards.

    `alerts`: True for the alert rules over the fleet's own metrics (the daemon), False for
    events only (component tests). `traffic`: the per-port traffic source, by default the
    spec's nginx traffic log (None when off). `autoscale`: the autoscaler's measurement seams
    (host_cpu, app_families, cores, ...), for tests. `queue_depth`: how the worker types that
    autoscale on a queue read its depth (effects/queue_depth.py's RedisDepth; a fake in tests)."""

    def __init__(self, spec: Spec, events: EventLog, upstream: Upstream | None = None, *,
                 runner: Runner | None = None, clock: Clock | None = None, lock: bool = True,
                 alerts: bool = False, traffic: Any = FROM_SPEC, autoscale: dict[str, Any] | None = None,
                 nofile_limit: int | None = None, job_locks: Any = None, queue_depth: Any = None):
        self.events = events
        self.clock = clock or Clock()
        upstream = upstream or NoUpstream()
        self.traffic = self._make_traffic(spec, upstream) if traffic is FROM_SPEC else traffic
        self.alerts = self._make_alerts(spec) if alerts else alerting.EventAlerts(events.emit)
        self.guard = TaskGuard(events.emit, self.clock.now, alerts=self.alerts)
        self.rec = Reconciler(spec, events, runner or OsRunner(), upstream, self.alerts, clock=self.clock,
                              beat=lambda: self.guard.beat("reconciler"))
        self.lock = FleetLock(spec.name, spec.paths.state_dir) if lock else None
        self.started_at = self.clock.wall()
        self.deployer = Deployer(self.rec, events, self.clock, self.alerts, traffic=self.traffic,
                                 folders_in_use=lambda: self.workers.folders_in_use() | self.jobs.folders_in_use())
        # p95 from nginx's traffic log when it is on (it sees queueing the app's own histogram cannot)
        self.autoscaler = Autoscaler(self, nofile_limit=nofile_limit, traffic=self.traffic, **(autoscale or {}))
        # the `processes:` worker types: their own loop, each type in its start order (`after`)
        current = lambda: release_layout.directory_of(self.rec.spec, self.rec.releases.current)  # noqa: E731
        self.workers = WorkersLoop(KindView(lambda: self.rec.spec, "worker"), events, self.rec.runner,
                                   self.clock, self.alerts, directory=current, log_dir=self.rec.log_dir,
                                   state_dir=self.rec.state_dir, beat=lambda: self.guard.beat("workers"),
                                   web_ready=self.rec.ready_event.is_set,
                                   web_memory=lambda: sum(i.rss for i in self.rec.instances.values()))
        # the `kind: job` types: started with the workers, once the web fleet is ready
        self.jobs = JobsLoop(KindView(lambda: self.rec.spec, "job"), events, self.rec.runner, self.clock,
                             self.alerts, directory=current, log_dir=self.rec.log_dir,
                             state_dir=self.rec.state_dir, beat=lambda: self.guard.beat("jobs"),
                             **({"locks": job_locks} if job_locks is not None else {}))
        self._workers_running = False
        self._jobs_running = False
        # worker types that autoscale on their queue's depth (`queue_depth`: the read, for tests)
        self.queues = QueueScaler(self.workers, events, self.clock, self.alerts, self.rec.state_dir,
                                  depth=queue_depth)
        self._queues_running = False

    # ---- traffic measured at nginx (accesslog.py), and the alerts over the fleet's metrics ---------

    def _make_traffic(self, spec: Spec, upstream) -> TrafficMonitor | None:
        """The TrafficSource over nginx's traffic log, or None (nginx off, traffic_log off)."""
        path = spec.nginx.traffic_log_path
        if path is None:
            return None
        reopen = getattr(upstream, "reopen_logs", None)
        managed = spec.nginx.mode == "managed"
        return TrafficMonitor(
            path, window=spec.nginx.traffic_window, ports=lambda: list(self.instances),
            serving=lambda: [p for p, i in self.instances.items() if i.state is S.RUNNING],
            allowed=lambda port: 0 <= port - self.spec.instances.base_port < self.spec.instances.max,
            max_bytes=spec.logs.max_bytes if managed else 0, backups=spec.logs.backups,
            reopen=reopen if managed else None, emit=self.events.emit,
            companions=(os.path.join(spec.nginx.prefix, "logs", "error.log"),) if managed else ())

    def _make_alerts(self, spec: Spec) -> alerting.AlertManager:
        """Alert rules evaluated over two scrapes of the fleet's own metrics (no HTTP involved)."""
        from ultrascaled.observe.alert_rules import SAMPLE_SERIES
        sampler = alerting.Sampler(lambda: metrics.families_async(   # only the series the rules read
            self.snapshot(), self.upstream.status(), self.counters, self.metrics_dirs(), only=SAMPLE_SERIES),
            traffic=self.traffic)
        return alerting.AlertManager(spec.alerts, sampler, self.events.emit, fleet=spec.name,
                                     db_connection_budget=spec.mongodb.connection_budget)

    def traffic_families(self) -> list:
        """/metrics: per-instance request counts and response times measured at nginx."""
        return self.traffic.families() if self.traffic is not None else []

    # ---- what the API reads ---------------------------------------------------------------------

    @property
    def spec(self) -> Spec:
        return self.rec.spec

    @property
    def count(self) -> int:
        return self.rec.count

    @property
    def wanted(self) -> tuple[int, ...]:
        return self.rec.wanted

    @property
    def instances(self) -> dict[int, Instance]:
        return self.rec.instances

    @property
    def upstream(self):
        return self.rec.upstream

    @property
    def counters(self) -> dict[str, Any]:
        return self.rec.counters

    @property
    def shutting_down(self) -> bool:
        return self.rec.shutting_down

    @property
    def ready_event(self) -> asyncio.Event:
        return self.rec.ready_event

    def snapshot(self) -> dict[str, Any]:
        snap = views.fleet(self.rec)
        snap["deploy"] = self.deployer.describe()
        return snap

    def health(self) -> tuple[bool, list[str]]:
        return views.health(self.rec, self.guard.problems())

    def log_path(self, port: int) -> Path:
        return self.rec.log_path(port)

    def metrics_dirs(self) -> dict[int, str]:
        return {p: str(self.rec.state_dir / "metrics" / str(p)) for p in sorted(self.instances)}

    # ---- wanted state (the API's side) -----------------------------------------------------------

    def wake(self) -> None:
        self.rec.wake()

    def scale(self, n: int, source: str = "operator") -> str | None:
        """A new count (raises ScaleRefused); an operator's pauses the autoscaler, and the words
        saying so are returned."""
        lo, hi = self.spec.instances.min, self.spec.instances.max
        if not lo <= n <= hi:
            raise ScaleRefused("out_of_range", f"instances must be {lo}..{hi} (instances.min..max), got {n}")
        if n > self.count:
            problem = self.memory_refusal(n)
            if problem:
                raise ScaleRefused("over_budget", problem)
        old = self.count
        self._save_state(n)  # persist first: a count that cannot be saved is not taken
        self.rec.tell(Scale(n))
        if n != old:
            self.events.emit("fleet.scale", desired=n, previous=old, source=source)
        return self.autoscaler.manual_scale(n) if source == "operator" else None

    def memory_refusal(self, n: int) -> str | None:
        """Refuse growth that the measured average per instance says would break the budget."""
        sizes = [i.rss for i in self.instances.values() if i.state is S.RUNNING and i.rss]
        budget = self.spec.memory.fleet_budget_mb * MB
        if not sizes:
            return None
        avg = sum(sizes) / len(sizes)
        workers = self.workers.measured_memory()   # the worker types' trees share the budget
        k = self.spec.instances.spares   # a spare holds as much as an instance
        need = avg * (n + k) + workers
        if need > budget:
            beside = f" + {workers / MB:.0f} MiB measured of the worker types" if workers else ""
            return (f"{n} instances{f' + {k} spares' if k else ''} x {avg / MB:.0f} MiB measured average{beside} = {need / MB:.0f} "
                    f"MiB exceeds memory.fleet_budget_mb {self.spec.memory.fleet_budget_mb} MiB")
        return None

    def restart(self, port: int | None = None) -> list[int]:
        targets = [port] if port is not None else sorted(self.instances)
        self.rec.tell(Restart(tuple(targets)))
        self.events.emit("fleet.restart_requested", ports=targets)
        return targets

    def plan_reload(self, new: Spec) -> ReloadDecision:
        """What a reload to `new` would do now, decided and not done (core/reload_plan.py);
        raises ScaleRefused as the reload would. Both `reload_spec` and the dry run use it."""
        rec = self.rec
        return reload_plan.decide(self.spec, new, self.count, rec.reload_view(), rec.fingerprint_for,
                                  shutting_down=rec.shutting_down, smallest_process=rec.smallest_process)

    def reload_spec(self, new: Spec) -> dict[str, Any]:
        """Take a validated spec: a diff against what runs (added, removed, changed, FATAL
        included); changed instances restart one at a time."""
        decision = self.plan_reload(new)
        self._save_state(decision.count)
        diff = self.rec.tell(Reload(decision))
        if self.traffic is not None and self.traffic.max_bytes:   # the traffic log's rotation follows logs.*
            self.traffic.max_bytes, self.traffic.backups = new.logs.max_bytes, new.logs.backups
        result = {"changed": list(decision.sections), "restarting": list(diff.changed), "added": list(diff.added),
                  "removed": list(diff.removed), "desired": decision.count}
        self.events.emit("spec.reloaded", **result)
        self._start_process_loops()   # a reload that adds the first worker or job type
        self.workers.wake()
        self.jobs.wake()
        return result

    def reload_dry_run(self, new: Spec) -> dict[str, Any]:
        """The dry run of `reload_spec(new)`: what it would do, as `reload_plan.describe` says,
        and nothing done (no state saved, no message to the loop, no event)."""
        return reload_plan.describe(self.plan_reload(new), self.spec)

    # ---- releases (ultrascaled/supervise/rollout_loop.py) ------------------------------------------------------

    async def deploy(self, directory: str | None = None, release: str | None = None,
                     allow_data: bool = False) -> dict[str, Any]:
        return await self.deployer.deploy(directory, release, allow_data)

    def rollback(self) -> dict[str, Any]:
        return self.deployer.rollback()

    def releases(self) -> list[dict[str, Any]]:
        return self.deployer.listing()

    # ---- persistence -------------------------------------------------------------------------

    def _state_file(self) -> Path:
        return self.rec.state_dir / "state.json"

    def _save_state(self, count: int) -> None:
        try:
            write_atomic(str(self._state_file()),
                         json.dumps({"fleet": self.spec.name, "desired": count}).encode())
        except OSError as exc:
            self.events.emit("state.write_failed", level="error", path=str(self._state_file()), error=str(exc))
            raise ScaleRefused("internal", f"cannot save the desired count to {self._state_file()}: "
                               f"{exc.strerror or exc}; nothing was changed") from None

    def _load_state(self) -> bool:
        """Restore the last scaled count; True when it was."""
        path = self._state_file()
        try:
            data = json.loads(path.read_text())
            saved = data["desired"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.events.emit("state.ignored", level="warning", path=str(path),
                             reason=f"unreadable ({type(exc).__name__}: {exc}); using instances.count")
            return False
        lo, hi = self.spec.instances.min, self.spec.instances.max
        if isinstance(saved, int) and not isinstance(saved, bool) and lo <= saved <= hi:
            self.rec.tell(Scale(saved))
            return True
        self.events.emit("state.ignored", level="warning", saved=saved,
                         reason=f"outside instances.min..max ({lo}..{hi})")
        return False

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Lock the fleet, adopt what an earlier run left, start the loops. Raises FleetLocked
        when another daemon owns this fleet's name or state folder."""
        rec = self.rec
        if self.lock is not None:
            self.lock.acquire()
        for d in (rec.state_dir, rec.log_dir, rec.state_dir / "metrics"):
            d.mkdir(parents=True, exist_ok=True)
        restored = self._load_state()
        self.events.emit("fleet.desired", desired=self.count,
                         source="state.json (last scale)" if restored else "instances.count")
        self.deployer.load()   # before adoption: an adopted master is judged against its port's release
        rec.adopt_leftovers()
        await self.deployer.keep_base()   # before any instance starts: the copy is what they run
        await rec.upstream.start()
        self.guard.start("reconciler", rec.run, interval=rec.HEARTBEAT)
        self.guard.start("deployer", lambda: self.deployer.run(lambda: self.guard.beat("deployer")),
                         interval=10.0)
        self.guard.start("sampler", self._sample_loop,
                         interval=max(self.spec.memory.sample_interval, self.spec.memory.relaxed_interval))
        self.workers.load()
        self.workers.adopt()   # what a killed daemon left running: no second set beside it
        self.jobs.load()       # and its job runs going (adopted there)
        self._start_process_loops()
        if self.traffic is not None:
            self.guard.start("traffic", lambda: self.traffic.run(beat=lambda: self.guard.beat("traffic")),
                             interval=self.traffic.interval)

    def _start_process_loops(self) -> None:
        """The worker types' loop (supervise/workers_loop.py) and the jobs' (jobs_loop.py): each
        waits for the web fleet to be ready, then starts its types. Neither is started for a
        spec without a type of its kind (nor a run left to adopt)."""
        if not self._workers_running and (self.workers.spec.processes or self.workers.slots):   # adopted: stopped if removed
            self._workers_running = True
            self.guard.start("workers", lambda: self.workers.run(self.rec.ready_event), interval=5.0)
        if not self._jobs_running and (self.jobs.spec.processes or self.jobs.live):
            self._jobs_running = True
            self.guard.start("jobs", lambda: self.jobs.run(self.rec.ready_event), interval=10.0)
        if not self._queues_running and self.queues.autoscaled():
            self._queues_running = True
            self.guard.start("queue-autoscaler",
                             lambda: self.queues.run(lambda: self.guard.beat("queue-autoscaler")),
                             interval=10.0)

    def processes(self) -> dict[str, Any]:
        """`GET /processes`: the web type, then each worker type."""
        snap = views.fleet(self.rec)
        instances = [{"index": i["index"], "port": i["port"], "pid": i["pid"], "state": i["state"],
                      "uptime": i["uptime"], "restarts": i["restarts"], "rss": i["rss_total"],
                      "serving": i["serving"]} for i in snap["instances"]]
        web = {"kind": "web", "desired": snap["desired"], "ready": snap["ready"],
               "min": self.spec.instances.min, "max": self.spec.instances.max, "instances": instances}
        workers = self.workers.snapshot()
        for name, st in self.queues.status().items():   # its last decision on queue depth
            if name in workers:
                workers[name]["autoscale"] = {k: v for k, v in st.items() if k != "decisions"}
        return {"web": web, **workers, **self.jobs.snapshot()}

    def scale_process(self, name: str, n: int, source: str = "operator") -> dict[str, Any]:
        """`POST /processes/{name}/scale`: `web` is the web fleet's scale; any other name a
        worker type's (raises ScaleRefused)."""
        if name == "web":
            previous = self.count
            note = self.scale(n, source)
            out = {"process": "web", "desired": n, "previous": previous}
            if note:
                out["autoscale"] = note
            return out
        if name in self.jobs.spec.processes:
            raise ScaleRefused("out_of_range", f"{name} is a job: it runs on its schedule, one run "
                               f"at a time unless its concurrency allows more; `ultrascalectl jobs "
                               f"{name} --run` runs it now")
        out = self.workers.scale(name, n, source)
        note = self.queues.manual_scale(name, n) if source == "operator" else None
        if note:
            out["autoscale"] = note
        return out

    def restart_process(self, name: str) -> dict[str, Any]:
        """`POST /processes/{name}/restart`: `web` is the fleet's rolling restart, a worker type
        restarts one process at a time (raises ScaleRefused)."""
        if name == "web":
            return {"process": "web", "restarting": self.restart()}
        if name in self.jobs.spec.processes:
            raise ScaleRefused("out_of_range", f"{name} is a job: it has no process to restart "
                               f"between runs; `ultrascalectl jobs {name} --run` runs it now")
        return self.workers.restart(name)

    def process_metric_families(self) -> list:
        """/metrics: the worker and job types' counts and the jobs' runs."""
        return metrics.process_families(self.processes(), self.jobs.figures())

    def jobs_listing(self) -> dict[str, Any]:
        return self.jobs.listing()

    def job_runs(self, name: str) -> list[dict[str, Any]]:
        return self.jobs.runs(name)

    def run_job(self, name: str) -> dict[str, Any]:
        return self.jobs.run_now(name)

    async def _sample_loop(self) -> None:
        # The next round when it is due (core.memwatch.sample_delay): memory.relaxed_interval while
        # every web process is far from its limit, the autoscaler is off and no worker type runs
        # (their watchdog keeps its timing), else memory.sample_interval.
        while True:
            await asyncio.sleep(self.rec.sample_delay(
                autoscaling=self.autoscaler.enabled or bool(self.workers.handles)))
            self.sample_all()
            self.guard.beat("sampler")

    def sample_all(self) -> None:
        """One round of memory samples: the web instances', then in the same pass the worker
        processes' (one timer for both; the memory watchdog of each decides)."""
        self.rec.sample_all()
        if self.workers.handles:
            self.workers.sample_memory()

    def start_guarded(self, name: str, factory, interval: float | None = None) -> None:
        """Other loops of the daemon (alerts, the systemd watchdog) under the same guard."""
        self.guard.start(name, factory, interval)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Leave the upstream, drain and stop every instance gracefully, then stop nginx."""
        rec = self.rec
        self.events.emit("daemon.stopping", instances=len(self.instances))
        rec.tell(Shutdown())
        loop = asyncio.get_running_loop()   # worker processes and job runs stop with the web instances
        workers = loop.create_task(self.workers.stop_all(), name="workers-stop") if self.workers.slots else None
        jobs = loop.create_task(self.jobs.stop_all(), name="jobs-stop") if self.jobs.live else None
        self.jobs.begin_shutdown()
        limit = timeout or (self.spec.gunicorn.graceful_timeout + 10)
        try:
            async with asyncio.timeout(limit):
                while self.instances:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            for inst in self.instances.values():
                if inst.handle is not None:
                    rec.runner.kill_group(inst.handle.pgid, signal.SIGKILL)
            self.events.emit("daemon.stop_timeout", level="error", killed=sorted(self.instances))
        for task in (workers, jobs):
            if task is not None:
                await task
        await self.guard.stop()
        self.queues.close()
        await rec.cancel_tasks()
        await rec.upstream.stop()
        if self.lock is not None:
            self.lock.release()
        self.events.emit("daemon.stopped")

    async def detach(self) -> None:
        """Exit without touching the fleet: instances, worker processes, job runs and nginx keep
        running for the next daemon, which adopts them (the workers from processes-live.json,
        the runs from jobs.json and their locks)."""
        self.jobs.begin_shutdown()
        await self.guard.stop()
        self.queues.close()
        self.workers.detach()
        await self.rec.cancel_tasks()
        self.rec.detach()
        if self.lock is not None:
            self.lock.release()
        self.events.emit("daemon.detached", instances=sorted(self.instances),
                         note="the fleet keeps running; the next start adopts it")
