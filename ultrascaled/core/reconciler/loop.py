"""The reconciler's loop: the one writer of the fleet's records, and the only part that acts on them.

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
from pathlib import Path
from typing import Any, Callable

from ultrascaled.core import command, release_layout, rollout
from ultrascaled.core.boot_log import excerpt, last_exception, with_exception
from ultrascaled.core.control import AlertSink, EventSource
from ultrascaled.core.plan import (Drain, ReloadDiff, ExitDecision, Forget, Handover,
                                   Kill, KillRetired, KillSuccessor, KillWorker, Probe, ProbeSuccessor,
                                   Publish, Replace, Spawn, Stop, Undrain, backoff_delay, describe_exit, kind, next_probe_at, on_exit, plan, probe_delay)
from ultrascaled.core.reconciler.adoption import Adoption
from ultrascaled.core.reconciler.memory import MemoryWatch
from ultrascaled.core.reconciler.replacement import Replacement
from ultrascaled.core.reconciler.spares import Spares
from ultrascaled.core.reconciler.upstream_sync import UpstreamSync
from ultrascaled.core.reconciler.records import (Exited, GroupGone, Instance, Message, Probed, Releases, Reload,
                                                 Restart, Sampled, SamplesDone, Scale, Shutdown, UpstreamDone,
                                                 Wanted)
from ultrascaled.core.seams import Clock, Handle, ProbeResult, Runner, is_transient
from ultrascaled.core.states import State, check_transition
from ultrascaled.spec import Spec

S = State


class Reconciler(UpstreamSync, MemoryWatch, Replacement, Adoption, Spares):
    HEARTBEAT = 5.0   # the loop wakes at least this often, so a stall is visible

    def __init__(self, spec: Spec, events: EventSource, runner: Runner, upstream, alerts: AlertSink, *,
                 clock: Clock | None = None, beat: Callable[[], None] = lambda: None):
        self.spec = spec
        self.events = events
        self.runner = runner
        self.upstream = upstream
        self.clock = clock or Clock()
        self.alerts = alerts
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
        # Which release each port starts with: the deploy loop's last `Releases` (a rollout, or
        # None, and the current release; see release_for). Read at each spawn: a running
        # instance keeps its release.
        self.releases = Releases(None, None)
        # The listening socket of each port, held by the daemon for the instance's whole life and
        # passed to each master it starts there (`--bind fd://N`): a master that dies leaves its
        # queued connections to the next one, and its orphaned workers finish what they answer.
        self.listeners: dict[int, Any] = {}
        # Whether each held socket's gate is open (ultrascaled/effects/procs.py, set_gate): with
        # `nginx.upstream_servers: range` a port takes new connections only while it is published.
        self.gates: dict[int, bool | None] = {}
        self.taken_ports: frozenset[int] = frozenset()   # ports of the range another program holds
        # Warm spares (core/reconciler/spares.py): slot port -> record, and the sockets held for
        # the slots (gates closed, never published; kept across the spares booted there).
        self.spares: dict[int, Any] = {}
        self.spare_listeners: dict[int, Any] = {}
        self.spare_home: dict[int, int] = {}     # a spare's master pid -> the port it took over
        self._spare_wake: float | None = None
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

    def release_for(self, port: int) -> tuple[str | None, str]:
        """The release `port` starts with now, and its folder."""
        rel = rollout.desired_release(self.releases.rollout, self.releases.current, port)
        return rel, release_layout.directory_of(self.spec, rel)

    def tell(self, msg: Wanted) -> Any:
        """A change of what is wanted, folded at once (one thread runs the loop and its callers,
        so this is the same as at its next step, and the caller's answer shows the change);
        then the loop plans again."""
        result = self.fold(msg)
        self.wake()
        return result

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
        if self.spares or self.spare_slots():   # before the plan: a deploy's spares are made current first
            self._spare_wake = self._spares_step(now)
        if not self._dirty and (self._wake_at is None or now < self._wake_at):
            return self._timers(self._wake_at, now)  # nothing the plan reads has changed: skip it
        self._dirty = False
        for _ in range(20):
            result = plan(self.wanted, {p: i.view() for p, i in self.instances.items()}, self._upstream_view(),
                          self.policy(), now, keep_serving=None if not self.shutting_down else 0,
                          hold_restarts=bool(self.spares) and self.spares_hold_restarts())
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
        if self._spare_wake is not None:
            self._wake_at = self._spare_wake if self._wake_at is None else min(self._wake_at, self._spare_wake)
        return self._timers(self._wake_at, now)

    def _timers(self, plan_wake_at: float | None, now: float) -> float | None:
        # The next nginx check is a timer only while it lies ahead: while one is in flight (or a
        # publish holds it back), the task's end wakes the loop; a past timer would spin it.
        check_at = self.next_upstream_check if not self.shutting_down and self.next_upstream_check > now else None
        timers = [t for t in (plan_wake_at, check_at) if t is not None]
        return min(timers) if timers else None

    def _internal_error(self, where: str, exc: BaseException) -> None:
        self.events.emit("reconciler.error", level="error", where=where, error=f"{type(exc).__name__}: {exc}")
        self.alerts.fire("reconciler_error", f"reconciler error {where}: {type(exc).__name__}: {exc}")

    def fold(self, msg: Message | Wanted) -> Any:
        match msg:
            case Exited(port, handle, rc):
                if not (self.spares and self._spare_exited(port, handle, rc)):
                    self._exited(port, handle, rc)
            case Probed(port, handle, result):
                if not (self.spares and self._spare_probed(port, handle, result)):
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
            case Scale(count):
                self.count = count
            case Restart(ports):
                for port in ports:
                    if port in self.instances:
                        self._request_restart(self.instances[port])
            case Reload():
                return self._reload(msg)
            case Releases():
                self.releases = msg
                for port, inst in self.instances.items():
                    if inst.replace_failed and not inst.restart_requested and inst.successor is None \
                            and inst.failed_release != self.release_for(port)[0] == inst.release:
                        # the release it failed to move to is no longer wanted (a rolled-back
                        # canary): it serves on as wanted, and shows no failure left over
                        inst.replace_failures, inst.replace_retry_at, inst.replace_failed = 0, 0.0, False
                        inst.reason = f"serving release {inst.release or 'app.directory'} as wanted"
                        self.alerts.resolve("instance_replace_failed", f"instance {port} runs the wanted release",
                                            port=port)
            case Shutdown():
                self.shutting_down = True
            case _:
                raise TypeError(f"unknown message {msg!r}")

    def _request_restart(self, inst: Instance) -> None:
        """The one restart request: an instance given up on gets a fresh count (an operator's
        or a deploy's "try again")."""
        inst.restart_requested = True
        if inst.state in (S.FATAL, S.BACKOFF):
            inst.crashes, inst.start_failures, inst.daemon_failures = (), 0, 0
        if inst.replace_failed:
            inst.replace_failures, inst.replace_retry_at = 0, 0.0

    def reload_view(self) -> dict[int, tuple[State, str]]:
        """What a reload decides on (core/reload_plan.py): each instance's state and the
        fingerprint it was started with."""
        return {p: (i.state, i.fingerprint) for p, i in self.instances.items()}

    def fingerprint_for(self, spec: Spec, port: int) -> str:
        """What `port` would be started with under `spec` now (its log, its release's folder)."""
        rel = rollout.desired_release(self.releases.rollout, self.releases.current, port)
        return command.fingerprint(spec, port, str(self.log_path(port)), release_layout.directory_of(spec, rel))

    def _reload(self, m: Reload) -> ReloadDiff:
        """Apply a reload's decision (core/reload_plan.py, decided on this loop's records just
        before): nginx follows a change of its settings or of the instances' range, and the
        instances whose command changed restart one at a time."""
        d = m.decision
        self.spec, self.count = d.spec, d.count
        if d.nginx_reconfigure:
            self.pending_nginx = True    # (the static upstream lists the instances' range)
        if self.failed_upstream is not None:   # a refused upstream is tried again with the new spec
            self.failed_temporary, self.upstream_retry_at = True, 0.0
        for p in d.diff.changed:
            self._request_restart(self.instances[p])
        return d.diff

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
        if self.spares and self._take_over_crashed(inst, handle, rc):
            return
        now = self.clock.now()
        was_running = inst.state is S.RUNNING
        why = inst.kill_reason if inst.kill_sent else ""
        d: ExitDecision = on_exit(inst.state, rc, inst.crashes, inst.start_failures, self.policy(), now, why)
        reason = d.reason
        error = inst.boot_error or self._boot_exception(inst) \
            if inst.state is S.STARTING and d.state in (S.BACKOFF, S.FATAL) else ""
        if error:               # a failed start: the app's own error, from its traceback
            reason = with_exception(reason, error)
        elif d.state is S.FATAL:
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
            s.http_500s = s.http_500s + 1 if r.status == 500 else 0
            if s.http_500s >= self.policy().fail_fast_500s and not s.boot_error:
                s.boot_error = self._boot_exception(inst, successor=True)
            s.next_probe = now + probe_delay(now - s.since, self.policy())
            return
        if inst is None or inst.handle is not handle:
            return
        inst.probing = False
        inst.last_probe = r.detail
        if inst.state is S.STARTING:
            inst.http_500s = inst.http_500s + 1 if r.status == 500 else 0
            if inst.http_500s >= self.policy().fail_fast_500s and not inst.boot_error:
                inst.boot_error = self._boot_exception(inst)   # the plan fails the start on it
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
                if self.spares and self._take_over_spawn(inst, port, reason):
                    return
                if inst is None:
                    inst = self.instances[port] = Instance(index=port - self.spec.instances.base_port, port=port,
                                                           since=self.clock.now(), since_wall=self.clock.wall())
                self._spawn(inst, reason)
            case Drain(port, reason, restart):
                if restart and self.spares and self._take_over_live(inst, reason):
                    return
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
                inst.stop_unserved = inst.state is S.STARTING
                self.change_state(inst, S.STOPPING, reason)
                inst.stop_sent_at = self.clock.now()
                if inst.handle is not None:
                    self.runner.signal(inst.handle, signal.SIGTERM)  # gunicorn: graceful shutdown
            case Kill(port, reason):
                if inst.state is S.STARTING:   # not ready in time: the traceback its log has, if any
                    reason = with_exception(reason, inst.boot_error or self._boot_exception(inst))
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
                if self.spares and self._take_over_live(inst, self._restart_why(inst, reason)):
                    return
                self._replace(inst, reason)
            case ProbeSuccessor(port):
                s = inst.successor
                s.probing = True
                self._start_task(f"probe-next-{port}", self._probe(port, s.handle, s.probe_port))
            case Handover(port, reason):
                self._handover(inst, reason)
            case KillSuccessor(port, reason):
                s = inst.successor
                reason = with_exception(reason, s.boot_error or self._boot_exception(inst, successor=True))
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
            offset = self._log_offset(log_path)
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
        inst.kill_sent = inst.stop_unserved = False
        inst.probing, inst.next_probe, inst.last_probe = False, now, ""
        inst.log_offset, inst.http_500s, inst.boot_error = offset, 0, ""
        inst.started_wall = self.clock.wall()
        inst.fingerprint = command.fingerprint(spec, inst.port, log_path, directory)
        inst.release = release
        inst.probe_port = probe.getsockname()[1]
        inst.handoff = True
        inst.replace_failures, inst.replace_retry_at, inst.replace_failed = 0, 0.0, False
        inst.master_mem, inst.workers, inst.recycles, inst.recycle_history = None, [], {}, ()
        inst.recycle_held = ""
        self.alerts.resolve("memory_recycle_loop", port=inst.port)
        self.change_state(inst, S.STARTING, reason, pid=handle.pid, release=release)
        self._watch(inst, handle)

    # ---- restart by replacement: a second master on the same socket, then the first stops ----------

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

    def detach(self) -> None:
        self._kill_spares()
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

    def _log_offset(self, log_path: str) -> int:
        """The log's size before a master starts: what that master writes lies after it."""
        try:
            return self.runner.log_size(log_path)
        except OSError:
            return 0

    def _boot_exception(self, inst: Instance, successor: bool = False) -> str:
        """The exception line of the last traceback the starting master (or the replacement
        booting beside the serving one) left in the port's log since it started; "" if none.
        The log is the port's for every master on it: tracebacks that gunicorn's own line
        attributes to a process known to be another master's (the serving one and its workers,
        retiring ones) are not counted."""
        others = set(inst.retiring)
        offset = inst.log_offset
        if successor:
            if inst.successor is None:
                return ""
            offset = inst.successor.log_offset
            others |= {w.pid for w in inst.workers} | ({inst.pid} if inst.pid else set())
        try:
            text = self.runner.log_since(str(self.log_path(inst.port)), offset)
        except OSError:
            return ""
        return last_exception(text.splitlines(), others)

    def _start_error(self, inst: Instance, successor: bool = False) -> str:
        """': <exception line>' of a failed start: its traceback since it started, else the
        end of the log (`_log_excerpt`)."""
        error = self._boot_exception(inst, successor)
        return f": {error}" if error else self._log_excerpt(inst.port)

    def _log_excerpt(self, port: int) -> str:
        """The app's own error from the end of its log: the exception line (`SyntaxError: ...`)
        rather than gunicorn's shutdown lines after it."""
        try:
            lines = self.runner.log_tail(str(self.log_path(port)), 40).strip().splitlines()
        except OSError:
            return ""
        return excerpt(lines)
