"""Warm spares (`instances.spares`, docs/spares.md): masters booted ahead that a failing, recycled
or new port takes at once.

Why a hand-over of the socket, not the spare's own port in the upstream: nginx must never list
a spare (a closed gate drops the SYN, so nginx would wait out proxy_connect_timeout on it once
per fail_timeout), and putting the spare's port in the upstream at a takeover would take an nginx
reload, which closes the clients' idle keep-alive connections. So a spare boots on a port just
past the range nginx lists, on a socket the daemon holds with its gate closed, and on a private
probe socket; its workers (ultrascaled/shims/ultrascale_spare.py) wait on a datagram channel.
A takeover sends them the serving port's held socket: they accept on it within milliseconds,
the connections queued there (a dead master's backlog) included; nginx, the gate and the port
stay as they were. The spare's master is now the port's instance (the old one, if alive, retires
as after a replacement), and its slot boots a new spare.

Takes a spare: a crash of a serving master, a failed health check, a restart (the memory
watchdog's, a deploy's, a reload's, an operator's: the spare must run the port's wanted release
and spec), and a spawn (a scale-up, a restart after backoff). A deploy or a reload first makes the
spares current: a stale spare is killed and booted again, and restarts wait for a fresh one
(core/spares.py hold_restarts)."""
from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass
from typing import Any

from ultrascaled.core import command, release_layout, rollout, spares as sp
from ultrascaled.core.plan import describe_exit, on_exit
from ultrascaled.core.reconciler.records import Exited, Instance, Probed
from ultrascaled.core.seams import ProbeResult
from ultrascaled.core.states import State

S = State
SPARES_MAX = 16        # instances.spares' bound (spec/schema.py)
SPARE_WORKER_CLASSES = {"sync": "ultrascale_spare.SyncWorker", "gthread": "ultrascale_spare.ThreadWorker"}


@dataclass
class Spare:
    """One spare slot's record. `handle` None: no process (backing off until next_start)."""
    port: int
    state: str = sp.BACKOFF
    handle: Any = None
    chan: Any = None                    # the daemon's end of its takeover channel
    since: float = 0.0
    since_wall: float = 0.0
    release: str | None = None
    fingerprint: str = ""
    probe_port: int | None = None
    probing: bool = False
    next_probe: float = 0.0
    kill_sent: bool = False
    health_failures: int = 0
    last_probe: str = ""
    failures: int = 0                   # spares in a row on this slot that died or never got ready
    ready_at: float = 0.0
    next_start: float = 0.0
    reason: str = ""

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None else None

    @property
    def ready(self) -> bool:
        return self.state == sp.READY and not self.kill_sent


class Spares:
    """Part of `Reconciler` (core/reconciler/loop.py): the same loop, the same records."""

    # ---- what is wanted -------------------------------------------------------------------------

    def spare_slots(self) -> tuple[int, ...]:
        k = getattr(self.spec.instances, "spares", 0)
        if self.shutting_down or not k:
            return ()
        return sp.spare_ports(self.spec.instances.base_port, self.spec.instances.max, k)

    def _spare_release(self) -> tuple[str | None, str]:
        """What a spare runs: the release a port of the range gets now (in a canary: the source,
        as every port but the canary; while rolling: the target)."""
        rel = rollout.desired_release(self.releases.rollout, self.releases.current, -1)
        return rel, release_layout.directory_of(self.spec, rel)

    def _spare_fingerprint(self, port: int) -> str:
        rel, directory = self._spare_release()
        return command.fingerprint(self.spec, port, str(self.log_path(port)), directory)

    def _spare_views(self) -> dict[int, sp.SpareView]:
        views = {}
        for port, s in self.spares.items():
            fresh = s.handle is None or (s.fingerprint == self._spare_fingerprint(port)
                                         and s.release == self._spare_release()[0])
            views[port] = sp.SpareView(port, s.state, s.since, fresh, s.probing, s.next_probe, s.kill_sent,
                                       s.health_failures, s.next_start, s.last_probe)
        return views

    def spares_hold_restarts(self) -> bool:
        return bool(self.spares) and sp.hold_restarts(self._spare_views())

    # ---- the step: plan and perform ---------------------------------------------------------------

    def _spares_step(self, now: float) -> float | None:
        if not self.spares and not self.spare_slots():
            return None
        wake = None
        for _ in range(5):
            actions, wake = sp.plan_spares(self.spare_slots(), self._spare_views(), self.policy(), now)
            if not actions:
                break
            self._dirty = True
            for a in actions:
                try:
                    self._perform_spare(a, now)
                except Exception as exc:  # noqa: BLE001 - loud; the loop goes on
                    self._internal_error(f"while performing {type(a).__name__} {a.port}", exc)
        return wake

    def _perform_spare(self, a: sp.SpareAction, now: float) -> None:
        match a:
            case sp.SpawnSpare(port, reason):
                self._spawn_spare(port, reason, now)
            case sp.ProbeSpare(port):
                s = self.spares[port]
                s.probing = True
                self._start_task(f"probe-spare-{port}", self._probe(port, s.handle, s.probe_port))
            case sp.KillSpare(port, reason):
                s = self.spares[port]
                s.kill_sent, s.reason = True, reason
                self.events.emit("spare.killed", level="warning", port=port, pid=s.pid, reason=reason)
                self.runner.kill_group(s.handle.pgid, signal.SIGKILL)
            case sp.ForgetSpare(port):
                self._forget_spare(port)

    def _spawn_spare(self, port: int, reason: str, now: float) -> None:
        spec = self.spec
        s = self.spares.setdefault(port, Spare(port))
        if s.reason.startswith("took over"):
            reason = f"behind the spare that {s.reason}"
        loopback = "::1" if ":" in spec.instances.host else "127.0.0.1"
        try:
            sock = self.spare_listeners.get(port)
            if sock is None:
                sock = self.spare_listeners[port] = self.runner.listen(spec.instances.host, port, gate_closed=True)
            probe = self.runner.listen(loopback, 0)
        except OSError as exc:
            return self._spare_failed(s, f"cannot listen on {port}: {exc.strerror or exc}", now)
        chan = mine = None
        try:
            chan, mine = self.runner.takeover_channel()
            release, directory = self._spare_release()
            log_path = str(self.log_path(port))
            argv = command.with_binds(command.gunicorn_argv(spec, port, log_path, directory),
                                      [f"fd://{sock.fileno()}", f"fd://{probe.fileno()}"])
            wc = argv.index("--worker-class") + 1
            argv[wc] = SPARE_WORKER_CLASSES.get(spec.gunicorn.worker_class, argv[wc])
            index = spec.instances.max + (port - spec.instances.base_port - spec.instances.max)
            env = command.instance_env(spec, index, port, str(self.state_dir / "metrics" / str(port)))
            env["PYTHONPATH"] = ":".join(filter(None, [command.SHIMS, env.get("PYTHONPATH")]))
            env["ULTRASCALE_TAKEOVER_FD"] = str(mine.fileno())
            env["ULTRASCALE_SPARE"] = "1"
            self.runner.prepare_metrics_dir(str(self.state_dir / "metrics" / str(port)))
            handle = self.runner.spawn(argv, env, directory, log_path, (sock.fileno(), probe.fileno(), mine.fileno()))
            probe_port = probe.getsockname()[1]
        except (OSError, ValueError, TypeError) as exc:
            if chan is not None:
                chan.close()
            return self._spare_failed(s, f"cannot start gunicorn: {exc}", now)
        finally:
            probe.close()
            if mine is not None:
                mine.close()
        s.state, s.handle, s.chan, s.since, s.since_wall = sp.STARTING, handle, chan, now, self.clock.wall()
        s.release, s.fingerprint, s.probe_port = release, command.fingerprint(spec, port, log_path, directory), probe_port
        s.probing, s.next_probe, s.kill_sent, s.health_failures, s.last_probe = False, now, False, 0, ""
        self.events.emit("spare.starting", port=port, pid=handle.pid, release=release, reason=reason)
        # its exit is its slot's until a takeover makes it a port's (the pidfd stays the same)
        self.runner.watch(handle, lambda rc: self.post(Exited(self.spare_home.pop(handle.pid, port), handle, rc)))

    def _spare_failed(self, s: Spare, why: str, now: float) -> None:
        s.failures += 1
        delay = max(0.5, sp.spare_backoff(s.failures, self.policy()))
        s.state, s.handle, s.next_start, s.reason = sp.BACKOFF, None, now + delay, why
        self.events.emit("spare.failed", level="warning", port=s.port, reason=why, retry_in=delay,
                         failures=s.failures)
        self._spare_alert(s, why)

    def _spare_alert(self, s: Spare, why: str) -> None:
        """restart.fatal_crashes spares in a row on a slot that died or never got ready: the
        fleet has no spare there (a takeover boots as without spares); retried with backoff."""
        if s.failures == self.policy().fatal_crashes:
            self.alerts.fire("spare_failing", f"spare {s.port}: {s.failures} in a row died or never got ready "
                             f"(last: {why}); takeovers wait for a boot until one is ready", port=s.port)

    def _forget_spare(self, port: int) -> None:
        self.alerts.resolve("spare_failing", f"spare {port} is no longer wanted", port=port)
        s = self.spares.pop(port, None)
        if s is not None and s.chan is not None:
            s.chan.close()
        sock = self.spare_listeners.pop(port, None)
        if sock is not None:
            sock.close()

    # ---- observations -----------------------------------------------------------------------------

    def _spare_exited(self, port: int, handle: Any, rc: int | None) -> bool:
        s = self.spares.get(port)
        if s is None or s.handle is not handle:
            return False
        now = self.clock.now()
        self.runner.forget([handle.pid])
        self._start_task(f"reap-spare-{port}", self._reap(port, handle.pgid))
        if s.chan is not None:
            s.chan.close()
        was, killed = s.state, s.kill_sent
        s.handle, s.chan, s.probing, s.kill_sent = None, None, False, False
        if killed and s.reason.startswith(("runs another", "no longer")):
            s.state, s.next_start = sp.BACKOFF, now          # replaced at once (a deploy, a reload)
            self.events.emit("spare.exited", port=port, pid=handle.pid, reason=s.reason)
            return True
        if was == sp.READY and now - s.ready_at >= self.policy().fatal_window:
            s.failures = 0          # it waited a whole window: not a crash loop
        s.failures += 1
        delay = sp.spare_backoff(s.failures, self.policy())
        s.state, s.next_start = sp.BACKOFF, now + delay
        what = s.reason if killed else describe_exit(rc)
        self._spare_alert(s, what)
        self.events.emit("spare.exited", level="warning", port=port, pid=handle.pid,
                         reason=f"{'died while waiting' if was == sp.READY else 'failed to start'}: {what}",
                         failures=s.failures, retry_in=delay)
        return True

    def _spare_probed(self, port: int, handle: Any, r: ProbeResult) -> bool:
        s = self.spares.get(port)
        if s is None or s.handle is not handle:
            return False
        now = self.clock.now()
        s.probing, s.last_probe = False, r.detail
        if s.state == sp.STARTING and r.ok:
            s.state, s.ready_at = sp.READY, now     # (failures count on until it stays up a while)
            self.events.emit("spare.ready", port=port, pid=handle.pid, release=s.release,
                             boot_seconds=round(now - s.since, 3))
        elif s.state == sp.READY:
            s.health_failures = 0 if r.ok else s.health_failures + 1
            if r.ok and s.failures and now - s.ready_at >= self.policy().fatal_window:
                if s.failures >= self.policy().fatal_crashes:
                    self.alerts.resolve("spare_failing", f"spare {port} has waited ready for "
                                        f"{self.policy().fatal_window:g}s", port=port)
                s.failures = 0
        s.next_probe = sp.next_spare_probe(s.state, s.since, now, self.policy())
        return True

    # ---- takeover -------------------------------------------------------------------------------

    def _ready_spare(self, port: int | None = None) -> Spare | None:
        """A ready spare that runs what `port` would be started with now (its release, the spec)."""
        want_rel = self.release_for(port)[0] if port is not None else self._spare_release()[0]
        for p in sorted(self.spares):
            s = self.spares[p]
            if s.ready and s.release == want_rel and s.fingerprint == self._spare_fingerprint(p):
                return s
        return None

    def _take_over(self, inst: Instance, s: Spare, reason: str, t0: float) -> bool:
        """Hand the port's held socket to the spare; the spare's master is the port's instance.
        False (nothing changed but the spare, which is ended) when the channel refuses it: a spare
        that died a moment ago, its exit not seen yet."""
        sock = self.listeners[inst.port]
        try:
            sent = self.runner.hand_over(s.chan, sock, 2 * (self.spec.workers + 1))
        except OSError as exc:
            s.kill_sent, s.reason = True, f"could not be handed port {inst.port}: {exc.strerror or exc}"
            self.events.emit("spare.killed", level="warning", port=s.port, pid=s.pid, reason=s.reason)
            self.runner.kill_group(s.handle.pgid, signal.SIGKILL)
            return False
        if not sent:
            return False
        now = self.clock.now()
        old = inst.handle
        if old is not None:   # alive (failed health, memory, a restart): it retires as after a replacement
            inst.retiring[old.pid] = (old, now + self.policy().stop_timeout)
            self.runner.signal(old, signal.SIGTERM)
            self.runner.forget([w.pid for w in inst.workers])
        handle = s.handle
        self.spare_home[handle.pid] = inst.port
        inst.handle, inst.probe_port, inst.release = handle, s.probe_port, s.release
        inst.fingerprint = self.fingerprint_for(self.spec, inst.port)
        inst.handoff = True
        if inst.started_wall is not None:
            inst.restarts += 1
        inst.restart_requested = False
        inst.replace_failures, inst.replace_retry_at, inst.replace_failed = 0, 0.0, False
        inst.started_wall, inst.adopted = self.clock.wall(), False
        inst.health_failures, inst.last_probe, inst.probing, inst.next_probe = 0, s.last_probe, False, now
        inst.kill_sent, inst.kill_reason = False, ""
        inst.master_mem, inst.workers, inst.recycles = None, [], {}
        inst.http_500s, inst.boot_error = 0, ""
        if s.chan is not None:
            s.chan.close()
        spare_port = s.port
        s.handle, s.chan, s.state, s.next_start, s.kill_sent, s.probing = None, None, sp.BACKOFF, now, False, False
        s.reason, s.failures = f"took over {inst.port}", 0
        self.alerts.resolve("instance_replace_failed", f"instance {inst.port} was taken over by a spare", port=inst.port)
        self.events.emit("instance.takeover", port=inst.port, spare_port=spare_port, pid=handle.pid,
                         old_pid=old.pid if old is not None else None, reason=reason, copies=sent,
                         seconds=round(now - t0, 6), release=inst.release)
        self._dirty = True
        return True

    def _take_over_crashed(self, inst: Instance, handle: Any, rc: int | None) -> bool:
        """A serving master died: a ready spare takes its socket (its queued connections too) at
        once, and its orphaned workers finish what they answer meanwhile."""
        if self.shutting_down or inst.state is not S.RUNNING or inst.port not in self.wanted \
                or inst.port not in self.listeners:
            return False
        s = self._ready_spare(inst.port)
        if s is None:
            return False
        now = self.clock.now()
        orphans = [w.pid for w in inst.workers]
        inst.handle = None
        if not self._take_over(inst, s, f"crash: {describe_exit(rc)}", now):
            inst.handle = handle
            return False
        d = on_exit(S.RUNNING, rc, inst.crashes, inst.start_failures, self.policy(), now)
        inst.crashes, inst.last_exit = d.crashes, describe_exit(rc)
        self.runner.forget([handle.pid] + orphans)
        grace = self.spec.gunicorn.graceful_timeout + 2.0
        self._start_task(f"reap-{inst.port}-{handle.pid}", self._reap(inst.port, handle.pgid, grace))
        if d.crash_loop:
            self.alerts.fire("instance_crash_loop", f"instance {inst.port} keeps crashing after it served: "
                             f"{d.reason}; spares take over", port=inst.port)
        return True

    def _take_over_spawn(self, inst: Instance | None, port: int, reason: str) -> bool:
        """A spawn (a scale-up, a restart after a crash) served by a ready spare: the port's socket
        is opened (or kept) and handed to it; it is probed once and joins the upstream."""
        if self.shutting_down:
            return False
        s = self._ready_spare(port)
        if s is None:
            return False
        now = self.clock.now()
        sock = self.listeners.get(port)
        if sock is None:
            try:
                if self.runner.port_in_use(self.spec.instances.host, port) is not None:
                    return False          # the usual spawn reports who holds it
                sock = self.runner.listen(self.spec.instances.host, port, gate_closed=self.gated)
            except OSError:
                return False
            self.listeners[port] = sock
            self.gates[port] = not self.gated
        if inst is None:
            inst = Instance(index=port - self.spec.instances.base_port, port=port, since=now,
                            since_wall=self.clock.wall())
        if not self._take_over(inst, s, reason, now):
            return False
        self.instances[port] = inst
        inst.left_upstream_at = inst.stop_sent_at = None
        inst.stop_unserved = False
        inst.log_offset = 0
        self.change_state(inst, S.STARTING, f"{reason}: taken over from spare {s.port}", pid=inst.pid,
                          release=inst.release)
        return True

    def _take_over_live(self, inst: Instance, reason: str) -> bool:
        """A restart or a failed health check of a running master served by a ready spare."""
        if self.shutting_down or inst.state is not S.RUNNING or inst.port not in self.listeners:
            return False
        s = self._ready_spare(inst.port)
        if s is None:
            return False
        successor = inst.successor
        if not self._take_over(inst, s, reason, self.clock.now()):
            return False
        if successor is not None:
            self._drop_successor(inst, "a spare took over")
        return True

    def _spare_leftover(self, lo):
        """A master an earlier run left with a spare's marker: one that took over a port of the
        range holds that port's socket and is adopted as its instance; a spare that was still
        waiting (and its workers) is ended: the new run boots its own."""
        spec = self.spec
        if not lo.is_master:
            if not lo.master_alive and self.runner.signal_worker(lo.pid, signal.SIGKILL):
                self.events.emit("adopt.orphan_killed", level="warning", pid=lo.pid, port=lo.port)
            return None
        for i in range(spec.instances.max):
            port = spec.port(i)
            if port in self.instances:
                continue
            sock = self.runner.take_listener(lo.pid, spec.instances.host, port)
            if sock is not None:
                sock.close()
                self.events.emit("adopt.spare_took_over", pid=lo.pid, spare_port=lo.port, port=port)
                return dataclasses.replace(lo, port=port)
        self.runner.kill_group(lo.pid, signal.SIGKILL)
        self.events.emit("adopt.spare_stopped", pid=lo.pid, port=lo.port,
                         reason="a spare of the last run: this run boots its own")
        return None

    def _restart_why(self, inst: Instance, reason: str) -> str:
        h = inst.recycle_history
        if h and self.clock.now() - h[-1] < self.policy().stop_timeout:
            return "memory: master over memory.worker_limit_mb"
        return reason

    def _kill_spares(self) -> None:
        """The daemon leaves (detach): spares are not adopted by the next one; end them."""
        for port, s in list(self.spares.items()):
            if s.handle is not None:
                self.runner.unwatch(s.handle)
                self.runner.kill_group(s.handle.pgid, signal.SIGKILL)
            self._forget_spare(port)

    def spares_status(self) -> list[dict[str, Any]]:
        """GET /fleet's `spares`: apart from `instances`, never counted as capacity."""
        return [{"port": s.port, "pid": s.pid, "state": s.state, "ready": s.ready, "release": s.release,
                 "since": s.since_wall or None, "failures": s.failures, "reason": s.reason}
                for _, s in sorted(self.spares.items())]
