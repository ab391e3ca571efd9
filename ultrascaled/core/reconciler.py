"""The reconciler: the one writer of the fleet's state, and the only part that acts on it.

    observations ──► messages ──► fold into records ──► plan(...) ──► perform(actions) via runner
    (exit, probe, sample,          (only the loop         (pure, typed    (spawn, signal, kill,
     group gone, upstream)          writes them)           actions)        probe, publish)

Observers (a pidfd callback, a probe or reap task, the sampler, an upstream apply) never touch
an instance: they post a message and wake the loop. Side effects go through the `Runner` and
the `Upstream`, so the whole loop runs in tests with a fake runner and a fake clock.
"""
from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ultrascaled.core import command, memwatch
from ultrascaled.observe.events import EventLog
from ultrascaled.core.plan import (APP_LOAD_ERROR, WORKER_BOOT_ERROR, Drain, ExitDecision, Forget, Handover,
                              InstanceView, Kill, KillRetired, KillSuccessor, KillWorker, Probe, ProbeSuccessor,
                              Publish, Replace, Spawn, Stop, SuccessorView, Undrain, UpstreamView, WorkerRecycle,
                              backoff_delay, describe_exit, kind, next_probe_at, on_exit, plan, probe_delay,
                              upstream_retry_delay)
from ultrascaled.effects.runner import Clock, Handle, ProbeResult, ProcMem, Runner, is_transient
from ultrascaled.spec import MB, Spec
from ultrascaled.core.states import State, check_transition

S = State


@dataclass
class Successor:
    """A replacement master booting on the same socket while the instance's master serves."""
    handle: Any
    since: float
    release: str | None
    fingerprint: str
    probe_port: int | None
    ready: bool = False
    probing: bool = False
    next_probe: float = 0.0
    kill_sent: bool = False
    last_probe: str = ""

    def view(self) -> SuccessorView:
        return SuccessorView(self.since, self.ready, self.probing, self.next_probe, self.kill_sent, self.last_probe)


@dataclass
class Instance:
    """One port's record. Written only by the reconciler's loop."""
    index: int
    port: int
    state: State = S.STOPPED
    since: float = 0.0
    since_wall: float = 0.0
    handle: Handle | None = None
    started_wall: float | None = None
    restarts: int = 0
    crashes: tuple[float, ...] = ()     # crashes after serving, within the window
    start_failures: int = 0             # failures to become ready, in a row
    daemon_failures: int = 0            # spawns that failed on the daemon's side, in a row
    last_exit: str | None = None
    reason: str = ""
    next_start: float = 0.0
    restart_requested: bool = False
    group_alive: bool = False
    left_upstream_at: float | None = None
    stop_sent_at: float | None = None
    kill_sent: bool = False
    kill_reason: str = ""
    health_failures: int = 0
    probing: bool = False
    next_probe: float = 0.0
    last_probe: str = ""
    adopted: bool = False
    fingerprint: str = ""
    master_mem: ProcMem | None = None
    workers: list[ProcMem] = field(default_factory=list)
    sampled_at: float = 0.0               # when master_mem/workers were taken (the autoscaler's time base)
    recycles: dict[int, float] = field(default_factory=dict)   # worker pid -> SIGKILL deadline
    recycle_history: tuple[float, ...] = ()                     # recent watchdog recycles
    release: str | None = None          # the release its current (or last) start runs; None: app.directory
    probe_port: int | None = None       # the master's private probe socket (None: probe the public port)
    handoff: bool = False               # the daemon holds its socket: restarts replace the master in place
    successor: Successor | None = None
    replace_failures: int = 0           # replacements in a row that never got ready
    replace_retry_at: float = 0.0
    replace_failed: bool = False        # the last replacement failed to start ...
    failed_release: str | None = None   # ... on this release (deploys read it)
    retiring: dict[int, tuple[Any, float]] = field(default_factory=dict)  # old master pid -> (handle, deadline)
    hold_upstream: bool = False         # see plan.InstanceView.hold_upstream

    def view(self) -> InstanceView:
        return InstanceView(self.port, self.state, self.since, self.next_start, self.restart_requested,
                            self.group_alive, self.left_upstream_at, self.stop_sent_at, self.kill_sent,
                            self.probing, self.next_probe, self.health_failures, self.last_probe,
                            tuple(WorkerRecycle(p, d) for p, d in self.recycles.items()),
                            frozenset(w.pid for w in self.workers), self.handoff,
                            self.successor.view() if self.successor else None, self.replace_retry_at,
                            tuple(WorkerRecycle(p, d) for p, (_, d) in self.retiring.items()), self.hold_upstream)

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle else None

    @property
    def rss(self) -> int:
        return (self.master_mem.rss if self.master_mem else 0) + sum(w.rss for w in self.workers)


# ---- messages: what observers tell the loop --------------------------------------------------

@dataclass(frozen=True)
class Exited:
    port: int
    handle: Any
    returncode: int | None


@dataclass(frozen=True)
class Probed:
    port: int
    handle: Any
    result: ProbeResult


@dataclass(frozen=True)
class GroupGone:
    port: int
    pgid: int


@dataclass(frozen=True)
class Sampled:
    port: int
    handle: Any
    master: ProcMem | None
    workers: tuple[ProcMem, ...]
    log_size: int = 0


@dataclass(frozen=True)
class UpstreamDone:
    servers: frozenset[int]
    ok: bool
    detail: str
    temporary: bool = True


@dataclass(frozen=True)
class SamplesDone:          # a round of samples is in: judge memory
    pass


Message = Exited | Probed | GroupGone | Sampled | SamplesDone | UpstreamDone


class Reconciler:
    HEARTBEAT = 5.0   # the loop wakes at least this often, so a stall is visible

    def __init__(self, spec: Spec, events: EventLog, runner: Runner, upstream, *, clock: Clock | None = None,
                 alerts=None, beat: Callable[[], None] = lambda: None):
        from ultrascaled.observe.alerts import EventAlerts
        self.spec = spec
        self.events = events
        self.runner = runner
        self.upstream = upstream
        self.clock = clock or Clock()
        self.alerts = alerts or EventAlerts(events.emit)
        self.beat = beat
        self.instances: dict[int, Instance] = {}
        self.count = spec.instances.count
        self.shutting_down = False
        self.applied: frozenset[int] = frozenset()
        self.upstream_ok: bool | None = None
        self.upstream_error = ""
        self.publishing = False
        self.failed_upstream: frozenset[int] | None = None
        self.failed_temporary = True
        self.upstream_failures = 0
        self.upstream_retry_at = 0.0
        self.upstream_stamp: Any = None
        self.holding_upstream = False       # adoption: keep the last run's upstream until probed
        self.pending_nginx = False
        self.checking_nginx = False
        self.next_upstream_check = 0.0
        self.streaks: dict[int, int] = {}
        self.over_budget = False
        self.counters: dict[str, Any] = {"watchdog_recycles": {}}
        self.ready_event = asyncio.Event()
        self._inbox: list[Message] = []
        self._dirty = True                  # the plan's inputs changed since it last ran
        self._wake_at: float | None = None  # the last plan's next timer
        self._next_log_check = 0.0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.state_dir = Path(spec.paths.state_dir)
        self.log_dir = Path(spec.paths.log_dir)
        # Which release a port starts with, and its folder (the deploy loop sets this; see
        # ultrascaled/core/rollout.py). Read at each spawn: a running instance keeps its release.
        self.release_for: Callable[[int], tuple[str | None, str]] = lambda port: (None, self.spec.app.directory)
        # The listening socket of each port, held by the daemon for the instance's whole life and
        # passed to each master it starts there (`--bind fd://N`): a master that dies leaves its
        # queued connections to the next one, and its orphaned workers finish what they answer.
        self.listeners: dict[int, Any] = {}
        # Whether each held socket's gate is open (ultrascaled/effects/procs.py, set_gate): with
        # `nginx.upstream_servers: range` a port takes new connections only while it is published.
        self.gates: dict[int, bool | None] = {}
        self.taken_ports: frozenset[int] = frozenset()   # ports of the range another program holds
        self.republish = False

    # ---- what is wanted ---------------------------------------------------------------------

    @property
    def wanted(self) -> tuple[int, ...]:
        if self.shutting_down:
            return ()
        return tuple(self.spec.port(i) for i in range(self.count))

    def policy(self):
        return command.policy_of(self.spec)

    def log_path(self, port: int) -> Path:
        return self.log_dir / f"instance-{port}.log"

    def post(self, msg: Message) -> None:
        self._inbox.append(msg)
        if not isinstance(msg, (Sampled, SamplesDone)):
            self._dirty = True  # samples change the plan's inputs only through recycles (see _sampled)
        self._wake.set()

    def wake(self) -> None:
        """Something changed outside the loop (the API changed what is wanted): plan again."""
        self._dirty = True
        self._wake.set()

    # ---- the one function that moves an instance ---------------------------------------------

    def change_state(self, inst: Instance, new: State, reason: str = "", **fields: Any) -> None:
        """Check the move first, then make it whole: a refused move raises before anything
        changed, and the caller (the loop) reports it loudly."""
        old = inst.state
        check_transition(old, new)
        inst.state = new
        inst.since = self.clock.now()
        inst.since_wall = self.clock.wall()
        inst.reason = reason
        level = "warning" if new in (S.BACKOFF, S.FATAL) else "info"
        fields.setdefault("pid", inst.pid)
        self.events.emit("instance.state", level=level, port=inst.port, old=old.value, new=new.value,
                         reason=reason, **fields)
        if new is S.FATAL:
            self.alerts.fire("instance_fatal", f"instance {inst.port} is FATAL: {reason}", port=inst.port)
        elif old is S.FATAL:
            self.alerts.resolve("instance_fatal", f"instance {inst.port} is {new.value} again", port=inst.port)

    # ---- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            wake_at = self.step()
            self.beat()
            timeout = self.HEARTBEAT if wake_at is None else min(self.HEARTBEAT, wake_at - self.clock.now())
            if self._inbox:
                timeout = 0
            if timeout > 0:
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # let exits and probes land, then act on the consequences
            self._wake.clear()

    def step(self) -> float | None:
        """Fold every message, then plan and act until the plan has nothing more to do now.
        Returns when the loop is next needed by a timer."""
        inbox, self._inbox = self._inbox, []
        for msg in inbox:
            try:
                self.fold(msg)
            except Exception as exc:  # noqa: BLE001 - loud, and the next message still counts
                self._internal_error(f"while handling {type(msg).__name__}", exc)
        now = self.clock.now()
        self._housekeeping(now)
        if not self._dirty and (self._wake_at is None or now < self._wake_at):
            return self._timers(self._wake_at, now)  # nothing the plan reads has changed: skip it
        self._dirty = False
        for _ in range(20):
            result = plan(self.wanted, {p: i.view() for p, i in self.instances.items()}, self._upstream_view(),
                          self.policy(), now, keep_serving=None if not self.shutting_down else 0)
            if not result.actions:
                break
            for action in result.actions:
                try:
                    self.perform(action)
                except Exception as exc:  # noqa: BLE001
                    self._internal_error(f"while performing {kind(action)} {action.port}", exc)
                    return now + 0.5
        else:
            self._internal_error("planning", RuntimeError("the plan did not settle in 20 passes"))
        if result.settled and not self.publishing and self.applied == frozenset(result.upstream) \
                and not self.shutting_down and not self.ready_event.is_set():
            self.ready_event.set()
            self.events.emit("fleet.ready", instances=len(self.instances), ports=sorted(self.instances))
        self._wake_at = result.wake_at
        return self._timers(result.wake_at, now)

    def _timers(self, plan_wake_at: float | None, now: float) -> float | None:
        # The next nginx check is a timer only while it lies ahead: while one is in flight (or a
        # publish holds it back), the task's end wakes the loop; a past timer would spin it.
        check_at = self.next_upstream_check if not self.shutting_down and self.next_upstream_check > now else None
        timers = [t for t in (plan_wake_at, check_at) if t is not None]
        return min(timers) if timers else None

    def _internal_error(self, where: str, exc: BaseException) -> None:
        self.events.emit("reconciler.error", level="error", where=where, error=f"{type(exc).__name__}: {exc}")
        self.alerts.fire("reconciler_error", f"reconciler error {where}: {type(exc).__name__}: {exc}")

    def _upstream_view(self) -> UpstreamView:
        holding = self.holding_upstream and any(i.adopted and i.state is S.STARTING
                                                for i in self.instances.values())
        if self.holding_upstream and not holding:
            self.holding_upstream = False
        return UpstreamView(self.applied, self.publishing or self.checking_nginx, self.failed_upstream,
                            self.failed_temporary, self.upstream_retry_at, holding)

    # ---- folding observations -------------------------------------------------------------------

    def fold(self, msg: Message) -> None:
        match msg:
            case Exited(port, handle, rc):
                self._exited(port, handle, rc)
            case Probed(port, handle, result):
                self._probed(port, handle, result)
            case GroupGone(port, _):
                inst = self.instances.get(port)
                if inst is not None:
                    inst.group_alive = False
            case Sampled():
                self._sampled(msg)
            case SamplesDone():
                self.check_memory()
            case UpstreamDone():
                self._upstream_done(msg)
            case _:
                raise TypeError(f"unknown message {msg!r}")

    def _exited(self, port: int, handle: Any, rc: int | None) -> None:
        inst = self.instances.get(port)
        if inst is not None and inst.successor is not None and inst.successor.handle is handle:
            return self._successor_exited(inst, rc)
        if inst is not None and handle.pid in inst.retiring and inst.retiring[handle.pid][0] is handle:
            del inst.retiring[handle.pid]
            self.events.emit("instance.retired", port=port, pid=handle.pid, returncode=rc)
            self.runner.forget([handle.pid])
            self._start_task(f"reap-{port}-{handle.pid}", self._reap(port, handle.pgid))
            return
        if inst is None or inst.handle is not handle:
            return
        if inst.successor is not None:   # the serving master died while its replacement booted
            self._drop_successor(inst, "the master it was to replace exited")
        now = self.clock.now()
        was_running = inst.state is S.RUNNING
        why = inst.kill_reason if inst.kill_sent else ""
        d: ExitDecision = on_exit(inst.state, rc, inst.crashes, inst.start_failures, self.policy(), now, why)
        reason = d.reason
        if d.state is S.FATAL:
            reason += self._log_excerpt(port)
        pids = [handle.pid] + [w.pid for w in inst.workers]
        if not (inst.state is S.FATAL and d.state is S.FATAL):
            self.change_state(inst, d.state, reason, returncode=rc)
        inst.last_exit = describe_exit(rc)
        inst.crashes, inst.start_failures, inst.next_start = d.crashes, d.start_failures, d.next_start
        inst.handle = None
        inst.probing = False
        inst.kill_sent, inst.kill_reason = False, ""
        inst.master_mem, inst.workers, inst.recycles = None, [], {}
        self.runner.forget(pids)
        if d.crash_loop:
            self.alerts.fire("instance_crash_loop", f"instance {port} keeps crashing after it served: "
                             f"{reason}; restarting with backoff", port=port)
        # Orphaned workers of a master that died on its own finish what they are answering (they
        # exit by themselves when their parent changes) while the next master takes the socket the
        # daemon holds; without a held socket they keep the port: end the group before respawning.
        held = port in self.listeners
        died = not (d.state is S.STOPPED and rc is not None and rc >= 0)
        inst.hold_upstream = held and was_running and d.state is S.BACKOFF and d.next_start <= now \
            and port in self.applied and not self.shutting_down
        grace = self.spec.gunicorn.graceful_timeout + 2.0 if held and died else 0.0
        inst.group_alive = not held
        self._start_task(f"reap-{port}", self._reap(port, handle.pgid, grace))

    def _probed(self, port: int, handle: Any, r: ProbeResult) -> None:
        inst = self.instances.get(port)
        if inst is not None and inst.successor is not None and inst.successor.handle is handle:
            s = inst.successor
            now = self.clock.now()
            s.probing, s.last_probe = False, r.detail
            s.ready = r.ok
            s.next_probe = now + probe_delay(now - s.since, self.policy())
            return
        if inst is None or inst.handle is not handle:
            return
        inst.probing = False
        inst.last_probe = r.detail
        now = self.clock.now()
        inst.next_probe = next_probe_at(inst.view(), now, self.policy())
        if inst.state is S.STARTING and r.ok:
            inst.hold_upstream = False
            self.change_state(inst, S.RUNNING, "health check passed", boot_seconds=round(now - inst.since, 3))
            inst.start_failures = 0
            inst.health_failures = 0
            inst.next_probe = next_probe_at(inst.view(), now, self.policy())
            self._sample_one(port, handle)  # its workers show in /fleet at once
        elif inst.state is S.RUNNING:
            if r.ok:
                inst.health_failures = 0
                if inst.crashes and now - inst.crashes[-1] >= self.policy().fatal_window:
                    inst.crashes = ()
                    self.alerts.resolve("instance_crash_loop", f"instance {port} has served for "
                                        f"{self.policy().fatal_window:g}s", port=port)
            else:
                inst.health_failures += 1
                self.events.emit("instance.unhealthy", level="warning", port=port, pid=inst.pid,
                                 probe=r.detail, failures=inst.health_failures)

    def _sampled(self, s: Sampled) -> None:
        inst = self.instances.get(s.port)
        if inst is None or inst.handle is not s.handle:
            return
        inst.master_mem, inst.workers = s.master, list(s.workers)
        inst.sampled_at = self.clock.now()
        if inst.recycles:   # the plan watches recycled workers: which are still alive matters to it
            self._dirty = True
            alive = {w.pid for w in s.workers}
            for pid in [p for p in inst.recycles if p not in alive]:
                del inst.recycles[pid]
        if s.log_size >= self.spec.logs.max_bytes:
            self._rotate_log(inst)

    def check_memory(self) -> None:
        """After a round of samples: the memory watchdog's decision, and the fleet budget."""
        mem = self.spec.memory
        samples = []
        for inst in self.instances.values():
            if inst.state is not S.RUNNING or inst.handle is None:
                continue
            for role, items in (("master", [inst.master_mem] if inst.master_mem else []), ("worker", inst.workers)):
                samples += [memwatch.MemSample(inst.port, m.pid, role, _metric(m, mem.metric)) for m in items]
        recycling = frozenset(p for i in self.instances.values() for p in i.recycles)
        self.streaks, due = memwatch.decide(self.streaks, samples, mem.worker_limit_mb * MB, mem.samples_over,
                                            recycling)
        for r in due:
            self._recycle(r)
        total = sum(i.rss for i in self.instances.values())
        budget = mem.fleet_budget_mb * MB
        crossed = memwatch.budget_crossed(total, budget, self.over_budget)
        if crossed is not None:
            self.over_budget = crossed
            if crossed:
                self.alerts.fire("memory_budget", f"fleet memory {total / MB:.0f} MiB is over memory."
                                 f"fleet_budget_mb {mem.fleet_budget_mb} MiB")
            else:
                self.alerts.resolve("memory_budget", f"fleet memory {total / MB:.0f} MiB is back under "
                                    f"{mem.fleet_budget_mb} MiB")

    def _recycle(self, r: memwatch.Recycle) -> None:
        inst = self.instances.get(r.port)
        if inst is None or inst.handle is None:
            return
        policy = self.policy()
        history, storm = memwatch.recycle_storm(inst.recycle_history, self.clock.now(), policy.fatal_crashes,
                                                policy.fatal_window)
        fields = dict(port=r.port, pid=r.pid, role=r.role, value_bytes=r.value, limit_bytes=r.limit,
                      metric=self.spec.memory.metric, samples=r.samples)
        if storm:  # hold: another recycle would only start another worker over the limit
            self.alerts.fire("memory_recycle_loop", f"instance {r.port}: {len(history) - 1} recycles within "
                             f"{policy.fatal_window:g}s, each fresh worker crosses memory.worker_limit_mb "
                             f"({r.limit // MB} MiB, measured {r.value // MB} MiB); recycling is held until "
                             "that stops", port=r.port)
            self.events.emit("watchdog.held", level="error", **fields)
            return
        inst.recycle_history = history
        by_port = self.counters["watchdog_recycles"]
        by_port[r.port] = by_port.get(r.port, 0) + 1
        self._dirty = True
        if r.role == "master" or r.pid == inst.pid:
            inst.restart_requested = True
            self.events.emit("watchdog.recycled", level="warning", action="graceful restart", **fields)
        elif self.runner.signal_worker(r.pid, signal.SIGTERM):
            inst.recycles[r.pid] = self.clock.now() + self.spec.gunicorn.graceful_timeout + 5
            self.events.emit("watchdog.recycled", level="warning", action="SIGTERM to worker", **fields)

    def _upstream_done(self, m: UpstreamDone) -> None:
        self.publishing = False
        now = self.clock.now()
        if m.ok:
            removed = self.applied - m.servers
            self.applied = m.servers
            for p in removed:
                inst = self.instances.get(p)
                if inst and inst.state is S.DRAINING and inst.left_upstream_at is None:
                    inst.left_upstream_at = now
            if self.failed_upstream is not None:
                self.alerts.resolve("upstream_failed", "the upstream is in step again")
            self.failed_upstream, self.upstream_failures = None, 0
            self.events.emit("upstream.applied", servers=sorted(m.servers), detail=m.detail)
        else:
            self.upstream_failures = self.upstream_failures + 1 if self.failed_upstream == m.servers else 1
            self.failed_upstream, self.failed_temporary = m.servers, m.temporary
            retry = upstream_retry_delay(self.upstream_failures, self.policy())
            self.upstream_retry_at = now + retry
            self.upstream_stamp = self._stamp()
            self.events.emit("upstream.failed", level="error", servers=sorted(m.servers), error=m.detail,
                             temporary=m.temporary, retry_in=retry if m.temporary else None)
            if not m.temporary or self.upstream_failures >= 3:
                self.alerts.fire("upstream_failed", f"nginx refused the upstream {sorted(m.servers)}: {m.detail}"
                                 + ("" if m.temporary else "; not retrying until the servers, the spec "
                                    "or nginx's files change"))
        self.upstream_ok, self.upstream_error = m.ok, ("" if m.ok else m.detail)

    def _stamp(self) -> Any:
        stamp = getattr(self.upstream, "config_stamp", None)
        try:
            return stamp() if stamp else None
        except OSError:
            return None

    # ---- timers outside the plan: nginx checks, a permanent failure's inputs ------------------------

    def _housekeeping(self, now: float) -> None:
        # Draining instances that nginx no longer routes to start their drain clock.
        for inst in self.instances.values():
            if inst.state is S.DRAINING and inst.port not in self.applied and inst.left_upstream_at is None \
                    and not self.publishing:
                inst.left_upstream_at = now
                self._dirty = True
        if self.pending_nginx and not self.publishing:
            self.pending_nginx = False
            self.publishing = True
            self._start_task("nginx-reconfigure", self._reconfigure_nginx())
        if now >= self.next_upstream_check and not self.shutting_down and not self.checking_nginx \
                and not self.publishing:  # one nginx operation at a time: a check never races an apply
            self.next_upstream_check = now + self.spec.health.interval
            if self.gated:
                self._check_range()
            self.checking_nginx = True
            self._start_task("nginx-check", self._check_nginx() if not self.republish else self._republish())
            if self.failed_upstream is not None and not self.failed_temporary \
                    and self._stamp() != self.upstream_stamp:
                self.failed_temporary, self.upstream_retry_at = True, now  # nginx's files changed: retry
                self._dirty = True

    # ---- performing actions ------------------------------------------------------------------------

    def perform(self, action) -> None:
        inst = self.instances.get(action.port)
        match action:
            case Spawn(port, reason):
                if inst is None:
                    inst = self.instances[port] = Instance(index=port - self.spec.instances.base_port, port=port,
                                                           since=self.clock.now(), since_wall=self.clock.wall())
                self._spawn(inst, reason)
            case Drain(port, reason, restart):
                if inst.successor is not None:
                    self._drop_successor(inst, reason)
                self.change_state(inst, S.DRAINING, reason)
                inst.left_upstream_at = None
                inst.restart_requested = inst.restart_requested or restart
                inst.health_failures = 0
            case Undrain(port, reason):
                self.change_state(inst, S.RUNNING, reason)
                inst.left_upstream_at = None
            case Stop(port, reason):
                self.change_state(inst, S.STOPPING, reason)
                inst.stop_sent_at = self.clock.now()
                if inst.handle is not None:
                    self.runner.signal(inst.handle, signal.SIGTERM)  # gunicorn: graceful shutdown
            case Kill(port, reason):
                self.events.emit("instance.killed", level="warning", port=port, pid=inst.pid, reason=reason)
                inst.reason = reason
                inst.kill_sent, inst.kill_reason = True, reason
                if inst.handle is not None:
                    self.runner.kill_group(inst.handle.pgid, signal.SIGKILL)
            case Forget(port):
                if inst.state is not S.STOPPED:
                    self.change_state(inst, S.STOPPED, "no longer wanted")
                self._close_listener(port)
                self.alerts.resolve("instance_fatal", f"instance {port} is no longer wanted", port=port)
                self.alerts.resolve("instance_crash_loop", port=port)
                self.alerts.resolve("memory_recycle_loop", port=port)
                self.alerts.resolve("instance_replace_failed", port=port)
                del self.instances[port]
            case Probe(port):
                inst.probing = True
                self._start_task(f"probe-{port}", self._probe(inst.port, inst.handle, inst.probe_port))
            case KillWorker(port, pid, reason):
                inst.recycles.pop(pid, None)
                if self.runner.signal_worker(pid, signal.SIGKILL):
                    self.events.emit("watchdog.killed", level="error", port=port, pid=pid, reason=reason)
            case Publish(servers):
                self.publishing = True  # (plan publishes only when not in flight; see _upstream_view)
                self._start_task("upstream-publisher", self._publish(frozenset(servers)))
            case Replace(port, reason):
                self._replace(inst, reason)
            case ProbeSuccessor(port):
                s = inst.successor
                s.probing = True
                self._start_task(f"probe-next-{port}", self._probe(port, s.handle, s.probe_port))
            case Handover(port, reason):
                self._handover(inst, reason)
            case KillSuccessor(port, reason):
                s = inst.successor
                s.kill_sent = True
                self.events.emit("instance.replacement_killed", level="warning", port=port, pid=s.handle.pid,
                                 reason=reason)
                self._replace_failed(inst, reason)
                self.runner.kill_group(s.handle.pgid, signal.SIGKILL)
            case KillRetired(port, reason, pid):
                handle, _ = inst.retiring[pid]
                inst.retiring[pid] = (handle, float("inf"))
                self.events.emit("instance.killed", level="warning", port=port, pid=pid, reason=reason)
                self.runner.kill_group(handle.pgid, signal.SIGKILL)
            case _:
                raise TypeError(f"unknown action {action!r}")

    def _spawn(self, inst: Instance, reason: str) -> None:
        spec = self.spec
        now = self.clock.now()
        sock = self.listeners.get(inst.port)
        if sock is None:
            try:
                holder = self.runner.port_in_use(spec.instances.host, inst.port)
            except OSError as exc:
                return self._daemon_failure(inst, f"cannot check port {inst.port}: {exc}")
            if holder is not None:
                who = f"pid {holder.pid} ({holder.name})" if holder.pid else holder.name
                self._daemon_failure(inst, f"port {spec.instances.host}:{inst.port} is in use by {who}",
                                     event="instance.port_in_use", holder_pid=holder.pid, holder=holder.name)
                return
            try:
                sock = self.runner.listen(spec.instances.host, inst.port, gate_closed=self.gated)
            except OSError as exc:
                return self._daemon_failure(inst, f"cannot listen on {spec.instances.host}:{inst.port}: "
                                                  f"{exc.strerror or exc}")
            self.listeners[inst.port] = sock
            self.gates[inst.port] = not self.gated
        try:
            probe = self.runner.listen("::1" if ":" in spec.instances.host else "127.0.0.1", 0)
        except OSError as exc:
            return self._daemon_failure(inst, f"cannot open a probe socket: {exc.strerror or exc}")
        try:
            return self._spawn_on(inst, reason, sock, probe, now)
        finally:
            probe.close()   # the master has its own copy

    def _spawn_on(self, inst: Instance, reason: str, sock, probe, now: float) -> None:
        spec = self.spec
        log_path = str(self.log_path(inst.port))
        metrics_dir = str(self.state_dir / "metrics" / str(inst.port))
        try:
            release, directory = self.release_for(inst.port)
            self.runner.prepare_metrics_dir(metrics_dir)
            argv = command.with_binds(command.gunicorn_argv(spec, inst.port, log_path, directory),
                                      [f"fd://{sock.fileno()}", f"fd://{probe.fileno()}"])
            env = command.instance_env(spec, inst.index, inst.port, metrics_dir)
            handle = self.runner.spawn(argv, env, directory, log_path, (sock.fileno(), probe.fileno()))
        except OSError as exc:
            if is_transient(exc):   # the daemon is short of fds or memory: not the app's fault
                return self._daemon_failure(inst, f"cannot start gunicorn: {exc}")
            return self._spawn_refused(inst, f"cannot start gunicorn: {exc}")
        except (ValueError, TypeError) as exc:  # e.g. a NUL in an argument: the spec must change
            return self._spawn_refused(inst, f"cannot start gunicorn: {exc}")
        if inst.started_wall is not None:
            inst.restarts += 1
        inst.handle = handle
        inst.adopted = False
        inst.restart_requested = False
        inst.daemon_failures = 0
        inst.health_failures = 0
        inst.left_upstream_at = inst.stop_sent_at = None
        inst.kill_sent = False
        inst.probing, inst.next_probe, inst.last_probe = False, now, ""
        inst.started_wall = self.clock.wall()
        inst.fingerprint = command.fingerprint(spec, inst.port, log_path, directory)
        inst.release = release
        inst.probe_port = probe.getsockname()[1]
        inst.handoff = True
        inst.replace_failures, inst.replace_retry_at, inst.replace_failed = 0, 0.0, False
        inst.master_mem, inst.workers, inst.recycles, inst.recycle_history = None, [], {}, ()
        self.alerts.resolve("memory_recycle_loop", port=inst.port)
        self.change_state(inst, S.STARTING, reason, pid=handle.pid, release=release)
        self._watch(inst, handle)

    # ---- restart by replacement: a second master on the same socket, then the first stops ----------

    def _replace(self, inst: Instance, reason: str) -> None:
        """Start a successor master on the socket the instance's master serves from. Capacity
        goes N+1 -> N; nginx is not touched; connections queued on the socket are accepted by
        whichever master's workers are free."""
        spec = self.spec
        sock = self.listeners[inst.port]
        log_path = str(self.log_path(inst.port))
        metrics_dir = str(self.state_dir / "metrics" / str(inst.port))
        try:
            probe = self.runner.listen("::1" if ":" in spec.instances.host else "127.0.0.1", 0)
        except OSError as exc:
            return self._replace_failed(inst, f"cannot open a probe socket: {exc.strerror or exc}", transient=True)
        try:
            release, directory = self.release_for(inst.port)
            argv = command.with_binds(command.gunicorn_argv(spec, inst.port, log_path, directory),
                                      [f"fd://{sock.fileno()}", f"fd://{probe.fileno()}"])
            env = command.instance_env(spec, inst.index, inst.port, metrics_dir)
            handle = self.runner.spawn(argv, env, directory, log_path, (sock.fileno(), probe.fileno()))
            probe_port = probe.getsockname()[1]
        except (OSError, ValueError, TypeError) as exc:
            return self._replace_failed(inst, f"cannot start gunicorn: {exc}", transient=is_transient(exc))
        finally:
            probe.close()
        now = self.clock.now()
        inst.successor = Successor(handle, now, release, command.fingerprint(spec, inst.port, log_path, directory),
                                   probe_port, next_probe=now)
        self.events.emit("instance.replacing", port=inst.port, pid=inst.pid, successor_pid=handle.pid,
                         reason=reason, release=release)
        port = inst.port
        self.runner.watch(handle, lambda rc: self.post(Exited(port, handle, rc)))

    def _handover(self, inst: Instance, reason: str) -> None:
        s, old = inst.successor, inst.handle
        now = self.clock.now()
        inst.successor = None
        if old is not None:
            inst.retiring[old.pid] = (old, now + self.policy().stop_timeout)
            self.runner.signal(old, signal.SIGTERM)   # graceful: its workers finish what they answer
            self.runner.forget([w.pid for w in inst.workers])
        inst.handle, inst.probe_port, inst.release, inst.fingerprint = s.handle, s.probe_port, s.release, s.fingerprint
        inst.restarts += 1
        inst.restart_requested = False
        inst.replace_failures, inst.replace_failed = 0, False
        inst.started_wall = self.clock.wall()
        inst.adopted = False
        inst.health_failures, inst.last_probe = 0, s.last_probe
        inst.master_mem, inst.workers, inst.recycles, inst.recycle_history = None, [], {}, ()
        self.alerts.resolve("instance_replace_failed", f"instance {inst.port} was restarted", port=inst.port)
        self.events.emit("instance.replaced", port=inst.port, old_pid=old.pid if old else None, pid=s.handle.pid,
                         boot_seconds=round(now - s.since, 3), release=s.release, reason=reason)
        self._sample_one(inst.port, s.handle)

    def _successor_exited(self, inst: Instance, rc: int | None) -> None:
        s = inst.successor
        inst.successor = None
        self.runner.forget([s.handle.pid])
        self._start_task(f"reap-next-{inst.port}", self._reap(inst.port, s.handle.pgid))
        if s.kill_sent:
            return   # _replace_failed already counted it
        what = describe_exit(rc)
        permanent = rc in (WORKER_BOOT_ERROR, APP_LOAD_ERROR)
        self._replace_failed(inst, f"replacement exited before it was ready ({what})" + self._log_excerpt(inst.port),
                             permanent=permanent, release=s.release)

    def _replace_failed(self, inst: Instance, reason: str, permanent: bool = False, transient: bool = False,
                        release: Any = ...) -> None:
        """A replacement that did not get ready: the old master serves on. Retried with backoff;
        after restart.fatal_crashes failures in a row (or at once when the app cannot load) the
        restart is given up with an alert, and deploys see the failed release."""
        if release is ...:
            release = inst.successor.release if inst.successor else self.release_for(inst.port)[0]
        now = self.clock.now()
        policy = self.policy()
        if not transient:
            inst.replace_failures += 1
        gave_up = permanent or inst.replace_failures >= policy.fatal_crashes
        delay = max(policy.backoff_initial, backoff_delay(inst.replace_failures + 1, policy))
        inst.replace_retry_at = now + delay
        inst.replace_failed, inst.failed_release = True, release
        inst.reason = reason
        self.events.emit("instance.replace_failed", level="error" if gave_up else "warning", port=inst.port,
                         pid=inst.pid, reason=reason, failures=inst.replace_failures, release=release,
                         gave_up=gave_up, retry_in=None if gave_up else delay)
        if gave_up:
            inst.restart_requested = False
            self.alerts.fire("instance_replace_failed", f"instance {inst.port} could not be restarted: {reason}; "
                             "the running master serves on", port=inst.port)

    def _drop_successor(self, inst: Instance, why: str) -> None:
        s = inst.successor
        inst.successor = None
        if s is not None:
            self.events.emit("instance.replacement_dropped", level="warning", port=inst.port, pid=s.handle.pid,
                             reason=why)
            self.runner.unwatch(s.handle)
            self.runner.kill_group(s.handle.pgid, signal.SIGKILL)
            self._start_task(f"reap-next-{inst.port}", self._reap(inst.port, s.handle.pgid))

    def _close_listener(self, port: int) -> None:
        self.gates.pop(port, None)
        sock = self.listeners.pop(port, None)
        if sock is not None:
            sock.close()

    def _watch(self, inst: Instance, handle: Handle) -> None:
        port = inst.port
        self.runner.watch(handle, lambda rc: self.post(Exited(port, handle, rc)))

    def _daemon_failure(self, inst: Instance, msg: str, event: str = "instance.spawn_failed", **fields) -> None:
        """A failure on the daemon's side (port busy, fds short): back off, never FATAL."""
        inst.hold_upstream = False
        inst.daemon_failures += 1
        delay = max(0.5, backoff_delay(inst.daemon_failures + 1, self.policy()))
        inst.next_start = self.clock.now() + delay
        inst.restart_requested = False
        msg = f"{msg}; retrying in {delay:g}s"
        if inst.state is not S.BACKOFF:
            self.change_state(inst, S.BACKOFF, msg)
        else:
            inst.reason = msg
        self.events.emit(event, level="warning", port=inst.port, reason=msg, **fields)
        if inst.daemon_failures == 5:
            self.alerts.fire("instance_cannot_start", f"instance {inst.port}: {msg}", port=inst.port)

    def _spawn_refused(self, inst: Instance, msg: str) -> None:
        """The command itself cannot run (app.python missing, bad argument): FATAL until the spec
        or the host changes, with an alert."""
        inst.hold_upstream = False
        inst.restart_requested = False
        if inst.state is S.FATAL:
            inst.reason = msg
        else:
            self.change_state(inst, S.FATAL, msg)

    def _rotate_log(self, inst: Instance) -> None:
        path = str(self.log_path(inst.port))
        try:
            self.runner.rotate_log(path, self.spec.logs.backups)
        except OSError as exc:
            self.events.emit("instance.log_rotate_failed", level="error", port=inst.port, error=str(exc))
            return
        if inst.handle is not None:
            self.runner.signal(inst.handle, signal.SIGUSR1)  # gunicorn reopens its log file
        self.events.emit("instance.log_rotated", port=inst.port, path=path)

    # ---- effects that take time: tasks that end by posting a message ---------------------------------

    def _start_task(self, name: str, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._internal_error(f"in task {task.get_name()}", task.exception())
        self.wake()

    async def _probe(self, port: int, handle: Any, probe_port: int | None = None) -> None:
        """GET the health path on the master's private probe socket (its own workers, even while
        another master shares the public socket), else on the public port (an adopted master)."""
        h = self.spec.health
        host = self.spec.instances.host
        if probe_port:
            host = "::1" if ":" in host else "127.0.0.1"
        try:
            result = await self.runner.probe(host, probe_port or port, h.path, h.timeout)
        except Exception as exc:  # noqa: BLE001 - a probe that cannot run says so
            result = ProbeResult(None, f"probe failed: {type(exc).__name__}: {exc}")
        self.post(Probed(port, handle, result))

    async def _reap(self, port: int, pgid: int, grace: float = 0.0) -> None:
        """SIGKILL what is left of a dead master's group (after `grace` seconds in which its
        orphaned workers may finish by themselves) and wait until it is gone. Survives a
        shortage of file descriptors (/proc cannot be read): it retries with backoff."""
        delay, lingered, waited = 0.005, False, 0.0
        if grace > 0:
            self.events.emit("instance.orphans_finishing", port=port, pgid=pgid, grace_seconds=grace)
        while True:
            try:
                if waited >= grace:
                    self.runner.kill_group(pgid, signal.SIGKILL)
                if not self.runner.group_alive(pgid):
                    break
                if grace > 0 and waited < grace:
                    delay = min(0.5, max(delay * 2, 0.05))
            except OSError as exc:
                self.events.emit("instance.reap_retry", level="warning", port=port, pgid=pgid, error=str(exc))
                delay = min(1.0, max(delay * 2, 0.1))
            await asyncio.sleep(delay)
            waited += delay
            if waited > grace + 5.0 and not lingered:
                lingered = True
                self.events.emit("instance.group_lingers", level="warning", port=port, pgid=pgid)
        self.post(GroupGone(port, pgid))

    @property
    def gated(self) -> bool:
        """nginx lists the whole port range; a port is in the upstream when its gate is open."""
        return bool(getattr(self.upstream, "gated", False))

    def _set_gates(self, open_ports: frozenset[int] | None, closing: bool) -> None:
        """Close (closing=True) the gates of held ports not in `open_ports`, or open those in it;
        `open_ports` None: open every gate (nginx lists only the ready ports itself)."""
        for port, sock in list(self.listeners.items()):
            want = open_ports is None or port in open_ports
            if want == closing or self.gates.get(port, True) == want:
                continue
            try:
                self.runner.set_gate(sock, want)
                self.gates[port] = want
            except OSError as exc:
                self.events.emit("upstream.gate_failed", level="error", port=port, open=want,
                                 error=exc.strerror or str(exc))

    async def _publish(self, servers: frozenset[int]) -> None:
        host = self.spec.instances.host
        gated = self.gated
        self._set_gates(servers if gated else None, closing=True)   # leaving ones first: no new connection
        try:
            r = await self.upstream.apply([(host, p) for p in sorted(servers)])
            ok, detail = r[0], r[1]
            temporary = r[2] if len(r) > 2 else True
        except Exception as exc:  # noqa: BLE001 - an apply that raises is a temporary failure
            ok, detail, temporary = False, f"{type(exc).__name__}: {exc}", True
        if ok:
            self._set_gates(servers if gated else None, closing=False)   # joining ones once nginx lists them
        self.post(UpstreamDone(servers, ok, detail, temporary))

    async def _reconfigure_nginx(self) -> None:
        try:
            ok, detail = await self.upstream.reconfigure(self.spec)
        except Exception as exc:  # noqa: BLE001
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.events.emit("nginx.reconfigured" if ok else "nginx.reconfigure_failed",
                         level="info" if ok else "error", detail=detail)
        if not ok:
            self.alerts.fire("nginx_reconfigure_failed", f"nginx settings not applied: {detail}")
            self.publishing = False
            return
        self.alerts.resolve("nginx_reconfigure_failed")
        # The same servers again under the new settings: `upstream_servers` or `instances.max`
        # may have changed what the file lists (the whole range, or only the ready ones) and
        # whether the gates decide; the loop's UpstreamDone ends the publishing.
        await self._publish(self.applied)

    def _check_range(self) -> None:
        """With a static upstream nginx sends a share of the traffic to every port of the range:
        one that another program listens on while this fleet runs nothing there (a second fleet
        on overlapping ports) is taken out of the upstream, with an event and an alert, until it
        is free again."""
        spec = self.spec
        taken: dict[int, str] = {}
        for i in range(spec.instances.max):
            port = spec.port(i)
            if port in self.listeners or port in self.instances:
                continue
            try:
                holder = self.runner.port_in_use(spec.instances.host, port)
            except OSError:
                continue
            if holder is not None:
                taken[port] = f"pid {holder.pid} ({holder.name})" if holder.pid else holder.name
        for port in sorted(taken.keys() - self.taken_ports):
            self.events.emit("upstream.port_taken", level="warning", port=port, holder=taken[port])
            self.alerts.fire("port_taken", f"port {port} of the fleet's range is held by {taken[port]}: "
                                           f"taken out of the nginx upstream", port=port)
        for port in sorted(self.taken_ports - taken.keys()):
            self.events.emit("upstream.port_free", port=port)
            self.alerts.resolve("port_taken", f"port {port} is free again", port=port)
        if taken.keys() != self.taken_ports:
            self.taken_ports = frozenset(taken)
            self.republish = True

    async def _republish(self) -> None:
        """The same servers again, with the upstream's range changed (ports taken or freed)."""
        self.republish = False
        setattr(self.upstream, "excluded", self.taken_ports)
        try:
            await self._publish(self.applied)
        finally:
            self.checking_nginx = False

    async def _check_nginx(self) -> None:
        try:
            await self.upstream.check()
        finally:
            self.checking_nginx = False

    def sample_all(self) -> None:
        """One round of memory samples (the sampler task calls this every sample_interval). On
        the loop: a round of /proc reads takes ~1 ms per instance, and a hop to a thread cost
        more idle CPU than it saved (measured: 1.0 vs 1.2 % with 8 instances)."""
        now = self.clock.now()
        logs = now >= self._next_log_check
        if logs:  # log sizes every 5 samples, at most every 10 s: rotation needs no more
            self._next_log_check = now + min(10.0, 5 * self.spec.memory.sample_interval)
        for port, inst in list(self.instances.items()):
            if inst.handle is not None:
                self._sample_one(port, inst.handle, logs)
        self.post(SamplesDone())

    def _sample_one(self, port: int, handle: Any, log: bool = False) -> None:
        master, workers = self.runner.sample(handle.pid, self.spec.memory.metric)
        size = self.runner.log_size(str(self.log_path(port))) if log else 0
        self.post(Sampled(port, handle, master, tuple(workers), size))

    # ---- adoption of an earlier run's processes ---------------------------------------------------

    def adopt_leftovers(self) -> list[int]:
        """Adopt masters a killed daemon left running (exact marker, ports of this fleet only);
        kill orphaned workers of dead masters."""
        spec = self.spec
        lo_port, hi_port = spec.instances.base_port, spec.port(spec.instances.max - 1)
        adopted = []
        leftovers = self.runner.find_leftovers(spec.name)
        keep = self._masters_to_keep(leftovers)
        leftovers.sort(key=lambda lo: lo.pid != keep.get(lo.port, lo.pid))   # the one kept comes first
        for lo in leftovers:
            if not lo_port <= lo.port <= hi_port:
                self.events.emit("adopt.ignored", level="warning", pid=lo.pid, port=lo.port,
                                 reason=f"port outside this fleet's range {lo_port}..{hi_port}")
                continue
            if not lo.is_master:
                if not lo.master_alive and self.runner.signal_worker(lo.pid, signal.SIGKILL):
                    self.events.emit("adopt.orphan_killed", level="warning", pid=lo.pid, port=lo.port)
                continue
            if lo.port in self.instances:  # two masters for one port: keep the one chosen above
                self.runner.kill_group(lo.pid, signal.SIGTERM)
                self.events.emit("adopt.duplicate_stopped", level="warning", pid=lo.pid, port=lo.port)
                continue
            handle = self.runner.adopt(lo.pid)
            inst = Instance(index=lo.port - spec.instances.base_port, port=lo.port, adopted=True,
                            since=self.clock.now(), since_wall=self.clock.wall())
            inst.handle = handle
            log_path = str(self.log_path(lo.port))
            _, directory = self.release_for(lo.port)
            inst.release = _release_of(spec, lo.cmdline)
            inst.fingerprint = command.fingerprint(spec, lo.port, log_path, directory)
            sock = self.runner.take_listener(lo.pid, spec.instances.host, lo.port) if lo.port not in self.listeners \
                else None
            if sock is not None:
                self.listeners[lo.port] = sock
                self.gates[lo.port] = None     # as the last run left it: the next publish sets it
                inst.handoff = True
            else:
                self.events.emit("adopt.socket_not_taken", level="warning", pid=lo.pid, port=lo.port,
                                 reason="pidfd_getfd(2) refused or no listening socket found: this instance's "
                                        "next restart leaves the upstream first (docs/deploys.md)")
            if not command.same_command(lo.cmdline, command.gunicorn_argv(spec, lo.port, log_path, directory)):
                inst.restart_requested = True  # spec changed while we were away: roll it
                inst.fingerprint = "adopted-with-other-command"
            inst.started_wall = self.runner.start_time(lo.pid)
            self.instances[lo.port] = inst
            self.change_state(inst, S.STARTING, "adopted from an earlier run", pid=lo.pid)
            inst.next_probe = self.clock.now()
            self._watch(inst, handle)
            self.holding_upstream = True
            adopted.append(lo.port)
        if adopted:
            self.events.emit("adopt.done", masters=sorted(adopted))
        return adopted

    def _masters_to_keep(self, leftovers) -> dict[int, int]:
        """Port -> pid of the master to adopt when a killed daemon left two on one port (it died
        during a replacement): the one still holding the port's listening socket (a replaced
        master closes its copy as soon as it gets SIGTERM), else the oldest (a replacement that
        had not taken over yet)."""
        by_port: dict[int, list[int]] = {}
        for lo in leftovers:
            if lo.is_master:
                by_port.setdefault(lo.port, []).append(lo.pid)
        keep = {}
        for port, pids in by_port.items():
            pids.sort()
            keep[port] = pids[0]
            if len(pids) < 2:
                continue
            holding = []
            for pid in pids:
                sock = self.runner.take_listener(pid, self.spec.instances.host, port)
                if sock is not None:
                    sock.close()
                    holding.append(pid)
            if len(holding) == 1:
                keep[port] = holding[0]
        return keep

    def detach(self) -> None:
        for inst in self.instances.values():
            if inst.handle is not None:
                self.runner.unwatch(inst.handle)
        for port in list(self.listeners):   # the masters keep their own copies
            self._close_listener(port)

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _log_excerpt(self, port: int) -> str:
        """The app's own error from the end of its log: the exception line (`SyntaxError: ...`)
        rather than gunicorn's shutdown lines after it."""
        from ultrascaled.effects import logfiles
        try:
            lines = logfiles.tail(self.log_path(port), 40).strip().splitlines()
        except OSError:
            return ""
        return excerpt(lines)


def _release_of(spec: Spec, cmdline) -> str | None:
    """The release an adopted master runs, from its `--chdir` (ultrascaled/effects/releases.py)."""
    from ultrascaled.effects import releases
    args = list(cmdline)
    try:
        return releases.release_of_directory(spec, args[args.index("--chdir") + 1])
    except (ValueError, IndexError):
        return None


def excerpt(lines: list[str]) -> str:
    """': <the last exception line>' (else the last line) from an instance's log lines."""
    if not lines:
        return ""
    gunicorn_noise = ("[INFO]", "Worker exiting", "Shutting down", "Reason: ")
    error = next((ln.strip() for ln in reversed(lines)
                  if _looks_like_exception(ln) and not any(n in ln for n in gunicorn_noise)), "")
    return ": " + (error or lines[-1].strip())[:300]


def _looks_like_exception(line: str) -> bool:
    head = line.strip().split(":", 1)[0]
    return bool(head) and " " not in head and (head.endswith(("Error", "Exception")) or head in
                                                ("KeyboardInterrupt", "SystemExit"))


def _metric(m: ProcMem, metric: str) -> int:
    value = getattr(m, metric, None)
    return value if value is not None else m.rss

