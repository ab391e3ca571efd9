"""The reconciler: the one writer that spawns, signals and stops instances and moves the upstream.

API handlers only change what is wanted (count, restart requests, spec) and call `wake()`.
Observations (a master exited, a probe answered) update an instance's record through
`change_state` and wake the loop; the loop asks `plan.plan` what to do and does it.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ultrascaled import logfiles, procs, watchdog
from ultrascaled.control import ScaleRefused  # noqa: F401  (moved; re-exported for callers)
from ultrascaled.events import EventLog
from ultrascaled.plan import InstanceView, Policy, backoff_delay, describe_exit, on_exit, plan
from ultrascaled.spec import MB, Spec, budget_errors
from ultrascaled.states import LIVE, State, check_transition
from ultrascaled.upstream import NoUpstream, Upstream

S = State


@dataclass
class Instance:
    index: int
    port: int
    state: State = S.STOPPED
    since: float = field(default_factory=time.monotonic)
    since_wall: float = field(default_factory=time.time)
    proc: procs.Proc | None = None
    started_wall: float | None = None
    restarts: int = 0
    crashes: tuple[float, ...] = ()
    port_busy: int = 0
    last_exit: str | None = None
    reason: str = ""
    next_start: float = 0.0
    restart_requested: bool = False
    group_alive: bool = False
    left_upstream_at: float | None = None
    stop_sent_at: float | None = None
    kill_sent: bool = False
    health_failures: int = 0
    adopted: bool = False
    fingerprint: str = ""
    master_mem: procs.ProcMem | None = None
    workers: list[procs.ProcMem] = field(default_factory=list)
    probe_task: asyncio.Task | None = None

    def view(self) -> InstanceView:
        return InstanceView(self.port, self.state, self.since, self.next_start, self.restart_requested,
                            self.group_alive, self.left_upstream_at, self.stop_sent_at, self.kill_sent)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def policy_of(spec: Spec) -> Policy:
    return Policy(start_timeout=spec.health.start_timeout, drain_seconds=spec.restart.drain_seconds,
                  stop_timeout=spec.gunicorn.graceful_timeout + 2.0,
                  backoff_initial=spec.restart.backoff_initial, backoff_max=spec.restart.backoff_max,
                  fatal_crashes=spec.restart.fatal_crashes, fatal_window=spec.restart.fatal_window)


def gunicorn_argv(spec: Spec, port: int) -> list[str]:
    g = spec.gunicorn
    argv = [spec.app.python or sys.executable, "-m", "gunicorn",
            "--bind", f"{spec.instances.host}:{port}",
            "--workers", str(spec.workers), "--worker-class", g.worker_class,
            "--worker-connections", str(g.worker_connections),
            "--timeout", str(g.timeout), "--graceful-timeout", str(g.graceful_timeout),
            "--keep-alive", str(g.keepalive),
            "--max-requests", str(g.max_requests), "--max-requests-jitter", str(g.max_requests_jitter),
            "--name", procs.marker(spec.name, port), "--no-control-socket",
            "--chdir", spec.app.directory]
    if spec.app.config:
        argv += ["-c", spec.app.config]
    return argv + list(g.args) + [spec.app.module]


# systemd's variables are the daemon's: gunicorn would answer NOTIFY_SOCKET with its own READY=1.
DAEMON_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                   "LISTEN_FDNAMES")


def instance_env(spec: Spec, index: int, port: int, metrics_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DAEMON_ONLY_ENV}
    env.update(spec.app.env)
    env.update({
        "PORT": str(port), "ULTRASCALE_PORT": str(port), "ULTRASCALE_INSTANCE": str(index),
        "ULTRASCALE_FLEET": spec.name, "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        "MONGO_MAX_POOL_SIZE": str(spec.mongo_pool_per_process()),
        "MONGO_MIN_POOL_SIZE": str(spec.mongodb.min_pool_size),
        "PYTHONUNBUFFERED": "1",
    })
    return env


async def http_status(host: str, port: int, path: str, timeout: float) -> int | None:
    """Status code of GET path, or None when nothing sensible answered in time. Raw socket calls
    on the loop: stream objects per probe were most of the daemon's idle CPU."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n"
                                          f"User-Agent: ultrascaled\r\n\r\n".encode())
            head = await loop.sock_recv(sock, 64)
        parts = head.split(None, 2)
        return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    finally:
        sock.close()


UPSTREAM_RETRY_SECONDS = 5.0


class Supervisor:
    def __init__(self, spec: Spec, events: EventLog, upstream: Upstream | None = None,
                 clock=time.monotonic):
        self.spec = spec
        self.events = events
        self.upstream = upstream or NoUpstream()
        self.clock = clock
        self.instances: dict[int, Instance] = {}
        self.count = spec.instances.count
        self.shutting_down = False
        self.applied_upstream: frozenset[int] = frozenset()
        self.upstream_ok: bool | None = None
        self.upstream_error = ""
        self.started_at = time.time()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._side_tasks: set[asyncio.Task] = set()
        self._adopting = False
        self._next_upstream_check = 0.0
        self._pending_nginx = False
        self._failed_upstream: frozenset[int] | None = None
        self._publisher: asyncio.Task | None = None
        self._upstream_retry_at = 0.0
        self._streaks: dict[int, int] = {}
        self._recycling: dict[int, tuple[int, float]] = {}   # worker pid -> (port, SIGKILL deadline)
        self._due_recycles: list[watchdog.Recycle] = []
        self._over_budget = False
        self.counters: dict[str, Any] = {"watchdog_recycles": {}}
        self.ready_event = asyncio.Event()   # the first time the fleet is fully up
        self.state_dir = Path(spec.paths.state_dir)
        self.log_dir = Path(spec.paths.log_dir)

    # ---- wanted state (the API's side) -----------------------------------------------------

    @property
    def wanted(self) -> tuple[int, ...]:
        if self.shutting_down:
            return ()
        return tuple(self.spec.port(i) for i in range(self.count))

    def wake(self) -> None:
        self._wake.set()

    def scale(self, n: int) -> int:
        lo, hi = self.spec.instances.min, self.spec.instances.max
        if not lo <= n <= hi:
            raise ScaleRefused("out_of_range", f"instances must be {lo}..{hi} (instances.min..max), got {n}")
        if n > self.count:
            problem = self.memory_refusal(n)
            if problem:
                raise ScaleRefused("over_budget", problem)
        old, self.count = self.count, n
        self._save_state()
        if n != old:
            self.events.emit("fleet.scale", desired=n, previous=old)
        self.wake()
        return n

    def memory_refusal(self, n: int) -> str | None:
        """Refuse growth that the measured average per instance says would break the budget."""
        sizes = [self.instance_rss(i) for i in self.instances.values() if i.state is S.RUNNING]
        sizes = [s for s in sizes if s]
        budget = self.spec.memory.fleet_budget_mb * MB
        if not sizes:
            return None
        avg = sum(sizes) / len(sizes)
        need = avg * n
        if need > budget:
            return (f"{n} instances x {avg / MB:.0f} MiB measured average = {need / MB:.0f} "
                    f"MiB exceeds memory.fleet_budget_mb {self.spec.memory.fleet_budget_mb} MiB")
        return None

    def restart(self, port: int | None = None) -> list[int]:
        targets = [port] if port is not None else sorted(self.instances)
        for p in targets:
            inst = self.instances[p]
            inst.restart_requested = True
            if inst.state is S.FATAL:
                inst.crashes = ()
        self.events.emit("fleet.restart_requested", ports=targets)
        self.wake()
        return targets

    def reload_spec(self, new: Spec) -> dict[str, Any]:
        """Take a validated spec: restart instances whose command changes, roll them one by one."""
        old = self.spec
        changes = [f.name for f in fields(Spec)
                   if f.name != "source" and getattr(old, f.name) != getattr(new, f.name)]
        errors = budget_errors(new, max(self.count, new.instances.min))
        if errors:
            raise ScaleRefused("spec_invalid", "; ".join(errors))
        self.spec = new
        if new.nginx != old.nginx:
            self._pending_nginx = True
        if new.instances.count != old.instances.count:
            self.count = new.instances.count
        self.count = max(new.instances.min, min(new.instances.max, self.count))
        self._save_state()
        restarted = []
        for inst in self.instances.values():
            if inst.state in LIVE and inst.fingerprint != self.fingerprint(inst.port):
                inst.restart_requested = True
                restarted.append(inst.port)
        self.events.emit("spec.reloaded", changed=changes, restarting=restarted, desired=self.count)
        self.wake()
        return {"changed": changes, "restarting": restarted, "desired": self.count}

    def fingerprint(self, port: int) -> str:
        """What an instance was started with; a reload restarts those whose fingerprint changes."""
        spec = self.spec
        return json.dumps([gunicorn_argv(spec, port), spec.app.env, spec.mongo_pool_per_process()],
                          sort_keys=True)

    # ---- persistence -------------------------------------------------------------------------

    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _save_state(self) -> None:
        path = self._state_file()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"desired": self.count}))
        os.replace(tmp, path)

    def _load_state(self) -> bool:
        """Restore the last scaled count; True when it was."""
        try:
            saved = json.loads(self._state_file().read_text())["desired"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        lo, hi = self.spec.instances.min, self.spec.instances.max
        if isinstance(saved, int) and lo <= saved <= hi:
            self.count = saved
            return True
        self.events.emit("state.ignored", level="warning", saved=saved,
                         reason=f"outside instances.min..max ({lo}..{hi})")
        return False

    # ---- the one function that moves an instance ------------------------------------------------

    def change_state(self, inst: Instance, new: State, reason: str = "", **fields: Any) -> None:
        old = inst.state
        check_transition(old, new)
        inst.state = new
        inst.since = self.clock()
        inst.since_wall = time.time()
        inst.reason = reason
        level = "warning" if new in (S.BACKOFF, S.FATAL) else "info"
        fields.setdefault("pid", inst.pid)
        self.events.emit("instance.state", level=level, port=inst.port, old=old.value, new=new.value,
                         reason=reason, **fields)
        if new is S.FATAL:
            self.events.emit("alert.instance_fatal", level="error", port=inst.port, reason=reason)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        for d in (self.state_dir, self.log_dir, self.state_dir / "metrics"):
            d.mkdir(parents=True, exist_ok=True)
        restored = self._load_state()
        self.events.emit("fleet.desired", desired=self.count,
                         source="state.json (last scale)" if restored else "instances.count")
        self._adopt_leftovers()
        await self.upstream.start()
        self._loop_task = asyncio.create_task(self._run(), name="reconciler")
        self._loop_task.add_done_callback(self._task_died)
        for name, coro in (("health-prober", self._health_loop()), ("sampler", self._sample_loop())):
            t = asyncio.create_task(coro, name=name)
            t.add_done_callback(self._task_died)
            self._side_tasks.add(t)

    def _task_died(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.events.emit("daemon.task_crashed", level="error", task=task.get_name(),
                             error=f"{type(exc).__name__}: {exc}")

    async def shutdown(self, timeout: float | None = None) -> None:
        """Leave the upstream, drain and stop every instance gracefully, then stop nginx."""
        self.events.emit("daemon.stopping", instances=len(self.instances))
        self.shutting_down = True
        self.wake()
        limit = timeout or (self.spec.gunicorn.graceful_timeout + 10)
        try:
            async with asyncio.timeout(limit):
                while self.instances:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            for inst in self.instances.values():
                if inst.proc:
                    inst.proc.kill_group(signal.SIGKILL)
            self.events.emit("daemon.stop_timeout", level="error", killed=sorted(self.instances))
        tasks = [t for t in [self._loop_task, self._publisher, *self._side_tasks] if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.upstream.stop()
        self.events.emit("daemon.stopped")

    async def detach(self) -> None:
        """Exit without touching the fleet: instances and nginx keep serving for the next daemon."""
        for t in [self._loop_task, *self._side_tasks]:
            if t:
                t.cancel()
        loop = asyncio.get_running_loop()
        for inst in self.instances.values():
            self._cancel_probe(inst)
            if inst.proc:
                inst.proc.unwatch(loop)
        self.events.emit("daemon.detached", instances=sorted(self.instances),
                         note="the fleet keeps running; the next start adopts it")

    # ---- adoption of an earlier run's processes ---------------------------------------------------

    def _adopt_leftovers(self) -> None:
        """Adopt masters a killed daemon left running; kill orphaned workers of dead masters."""
        leftovers = procs.find_leftovers(self.spec.name)
        loop = asyncio.get_running_loop()
        for lo in leftovers:
            if not lo.is_master:
                if not lo.master_alive:
                    procs.signal_pid(lo.pid, signal.SIGKILL)
                    self.events.emit("adopt.orphan_killed", level="warning", pid=lo.pid, port=lo.port)
                continue
            if lo.port in self.instances:  # two masters for one port: keep the first
                procs.kill_group(lo.pid, signal.SIGTERM)
                self.events.emit("adopt.duplicate_stopped", level="warning", pid=lo.pid, port=lo.port)
                continue
            index = lo.port - self.spec.instances.base_port
            inst = Instance(index=index, port=lo.port, adopted=True)
            inst.proc = procs.Proc(lo.pid)
            inst.fingerprint = self.fingerprint(lo.port)
            if list(lo.cmdline) != gunicorn_argv(self.spec, lo.port):
                inst.restart_requested = True  # spec changed while we were away: roll it
                inst.fingerprint = "adopted-with-other-command"
            try:
                inst.started_wall = _create_time(lo.pid)
            except Exception:
                inst.started_wall = None
            self.instances[lo.port] = inst
            self.change_state(inst, S.STARTING, "adopted from an earlier run", pid=lo.pid)
            inst.proc.watch(loop, lambda rc, inst=inst, proc=inst.proc: self._on_exit(inst, proc, rc))
            self._start_probe(inst)
            self._adopting = True
        if leftovers:
            self.events.emit("adopt.done", masters=sorted(i.port for i in self.instances.values()))

    # ---- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged at once; the loop goes on with fresh observations
                self.events.emit("reconciler.error", level="error", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)

    async def _tick(self) -> None:
        while True:
            policy = policy_of(self.spec)
            now = self.clock()
            views = {p: i.view() for p, i in self.instances.items()}
            result = plan(self.wanted, views, self.applied_upstream, policy, now)
            for action in result.actions:
                await self._perform(action)
            if self._due_recycles or self._recycling:
                self._perform_recycles()
            if self._pending_nginx:
                self._pending_nginx = False
                ok, detail = await self.upstream.reconfigure(self.spec)
                self.events.emit("nginx.reconfigured" if ok else "nginx.reconfigure_failed",
                                 level="info" if ok else "error", detail=detail)
            if now >= self._next_upstream_check:
                self._next_upstream_check = now + self.spec.health.interval
                await self.upstream.check()
            if self._adopting and any(i.adopted and i.state is S.STARTING for i in self.instances.values()):
                pass  # keep the upstream as the last run left it until adopted instances are probed
            elif not result.actions:  # after actions the loop plans again at once: publish then
                self._adopting = False
                self._publish(result.upstream)
            in_effect = self._publisher is None and self.applied_upstream == frozenset(result.upstream)
            if result.settled and in_effect and not result.actions and not self.shutting_down:
                if not self.ready_event.is_set():
                    self.ready_event.set()
                    self.events.emit("fleet.ready", instances=len(self.instances),
                                     ports=sorted(self.instances))
            if result.actions:
                await asyncio.sleep(0)  # let exits and probes land, then act on the consequences
                continue
            wake_at = min(result.wake_at or self._next_upstream_check, self._next_upstream_check)
            timeout = max(0.0, wake_at - self.clock())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    def _publish(self, wanted: tuple[int, ...]) -> None:
        """Start publishing the ready set to the upstream unless it is in effect or on its way.

        The apply (write, nginx -t, reload, wait for the new workers) runs as its own task, so a
        respawn never waits for the reload that takes its dead predecessor out. Its end wakes
        the loop, which then publishes whatever changed meanwhile.
        """
        if self._publisher is not None:
            return
        now = self.clock()
        for inst in self.instances.values():  # draining ones nginx does not route to (any more)
            if inst.state is S.DRAINING and inst.port not in self.applied_upstream \
                    and inst.left_upstream_at is None:
                inst.left_upstream_at = now
        want = frozenset(wanted)
        if want == self.applied_upstream and self.upstream_ok is not False:
            return
        if want == self._failed_upstream and now < self._upstream_retry_at:
            return  # the same change failed a moment ago: retry on the next change or in a while
        self._publisher = asyncio.get_running_loop().create_task(self._apply_upstream(want),
                                                                 name="upstream-publisher")
        self._publisher.add_done_callback(self._published)

    def _published(self, task: asyncio.Task) -> None:
        self._publisher = None
        self._task_died(task)
        self.wake()

    async def _apply_upstream(self, want: frozenset[int]) -> None:
        host = self.spec.instances.host
        ok, detail = await self.upstream.apply([(host, p) for p in sorted(want)])
        now = self.clock()
        if ok:
            removed = self.applied_upstream - want
            self.applied_upstream = want
            for p in removed:
                inst = self.instances.get(p)
                if inst and inst.state is S.DRAINING and inst.left_upstream_at is None:
                    inst.left_upstream_at = now
            self.events.emit("upstream.applied", servers=sorted(want), detail=detail)
            self._failed_upstream = None
        else:
            self.events.emit("upstream.failed", level="error", servers=sorted(want), error=detail,
                             retry_in=UPSTREAM_RETRY_SECONDS)
            self._failed_upstream, self._upstream_retry_at = want, now + UPSTREAM_RETRY_SECONDS
        self.upstream_ok, self.upstream_error = ok, ("" if ok else detail)

    async def _perform(self, action) -> None:
        port = action.port
        inst = self.instances.get(port)
        if action.kind == "spawn":
            if inst is None:
                inst = self.instances[port] = Instance(index=port - self.spec.instances.base_port, port=port)
            self._spawn(inst, action.reason)
        elif action.kind == "drain":
            self.change_state(inst, S.DRAINING, action.reason)
            inst.left_upstream_at = None
        elif action.kind == "undrain":
            self.change_state(inst, S.RUNNING, action.reason)
            inst.left_upstream_at = None
        elif action.kind == "stop":
            self.change_state(inst, S.STOPPING, action.reason)
            inst.stop_sent_at = self.clock()
            if inst.proc:
                inst.proc.send(signal.SIGTERM)  # gunicorn: graceful shutdown
        elif action.kind == "kill":
            self.events.emit("instance.killed", level="warning", port=port, pid=inst.pid, reason=action.reason)
            inst.reason = action.reason
            inst.kill_sent = True
            if inst.proc:
                inst.proc.kill_group(signal.SIGKILL)
        elif action.kind == "forget":
            if inst.state is not S.STOPPED:
                self.change_state(inst, S.STOPPED, "no longer wanted")
            self._cancel_probe(inst)
            del self.instances[port]

    def _spawn(self, inst: Instance, reason: str) -> None:
        spec = self.spec
        holder = procs.port_in_use(spec.instances.host, inst.port)
        if holder is not None:
            inst.port_busy += 1
            who = f"pid {holder.pid} ({holder.name})" if holder.pid else holder.name
            delay = backoff_delay(inst.port_busy + 1, policy_of(spec))
            inst.next_start = self.clock() + delay
            inst.restart_requested = False
            msg = f"port {spec.instances.host}:{inst.port} is in use by {who}; retrying in {delay:g}s"
            if inst.state is not S.BACKOFF:
                self.change_state(inst, S.BACKOFF, msg)
            else:
                inst.reason = msg
            self.events.emit("instance.port_in_use", level="warning", port=inst.port, holder_pid=holder.pid,
                             holder=holder.name)
            return
        inst.port_busy = 0
        metrics_dir = self.state_dir / "metrics" / str(inst.port)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        for f in metrics_dir.glob("*.db"):
            f.unlink(missing_ok=True)
        argv = gunicorn_argv(spec, inst.port)
        env = instance_env(spec, inst.index, inst.port, str(metrics_dir))
        log_path = self.log_path(inst.port)
        try:
            proc = procs.spawn(argv, env, spec.app.directory, str(log_path))
        except OSError as exc:  # e.g. app.python does not exist: permanent until the spec changes
            inst.restart_requested = False
            msg = f"cannot start gunicorn: {exc}"
            if inst.state is S.FATAL:
                inst.reason = msg
            else:
                self.change_state(inst, S.FATAL, msg)
            return
        if inst.state is not S.STOPPED or inst.restart_requested or inst.last_exit:
            inst.restarts += 1 if inst.started_wall is not None else 0
        inst.proc = proc
        inst.adopted = False
        inst.restart_requested = False
        inst.health_failures = 0
        inst.left_upstream_at = inst.stop_sent_at = None
        inst.kill_sent = False
        inst.started_wall = time.time()
        inst.fingerprint = self.fingerprint(inst.port)
        inst.master_mem, inst.workers = None, []
        self.change_state(inst, S.STARTING, reason, pid=proc.pid)
        loop = asyncio.get_running_loop()
        proc.watch(loop, lambda rc, inst=inst, proc=proc: self._on_exit(inst, proc, rc))
        self._start_probe(inst)

    # ---- observations ----------------------------------------------------------------------------

    def _on_exit(self, inst: Instance, proc: procs.Proc, returncode: int | None) -> None:
        if inst.proc is not proc:
            return
        self._cancel_probe(inst)
        decision = on_exit(inst.state, returncode, inst.crashes, policy_of(self.spec), self.clock())
        inst.last_exit = describe_exit(returncode)
        inst.crashes = decision.crashes
        inst.next_start = decision.next_start
        inst.group_alive = True
        inst.proc = None
        procs.forget_pids([proc.pid] + [w.pid for w in inst.workers])
        inst.master_mem, inst.workers = None, []
        reason = decision.reason
        if decision.state is S.FATAL:
            reason += self._log_tail(inst.port)
        if not (inst.state is S.FATAL and decision.state is S.FATAL):
            self.change_state(inst, decision.state, reason, returncode=returncode)
        # Orphaned workers keep the port for up to a second: end the whole group before respawning.
        task = asyncio.get_running_loop().create_task(self._reap_group(inst, proc.pgid),
                                                      name=f"reap-{inst.port}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        self.wake()

    async def _reap_group(self, inst: Instance, pgid: int) -> None:
        procs.kill_group(pgid, signal.SIGKILL)
        if not await procs.wait_group_gone(pgid, 5.0):
            self.events.emit("instance.group_lingers", level="warning", port=inst.port, pgid=pgid)
        inst.group_alive = False
        self.wake()

    def _log_tail(self, port: int, lines: int = 3) -> str:
        try:
            with open(self.log_path(port), "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                tail = f.read().decode(errors="replace").strip().splitlines()[-lines:]
            return (": " + " | ".join(t.strip() for t in tail)) if tail else ""
        except OSError:
            return ""

    def _start_probe(self, inst: Instance) -> None:
        self._cancel_probe(inst)
        inst.probe_task = asyncio.get_running_loop().create_task(self._probe_until_ready(inst),
                                                                 name=f"probe-{inst.port}")

    def _cancel_probe(self, inst: Instance) -> None:
        if inst.probe_task and not inst.probe_task.done() and inst.probe_task is not asyncio.current_task():
            inst.probe_task.cancel()
        inst.probe_task = None

    async def _probe_until_ready(self, inst: Instance) -> None:
        h = self.spec.health
        proc = inst.proc
        while inst.state is S.STARTING and inst.proc is proc:
            status = await http_status(self.spec.instances.host, inst.port, h.path, h.timeout)
            if status == 200 and inst.state is S.STARTING and inst.proc is proc:
                self.change_state(inst, S.RUNNING, "health check passed",
                                  boot_seconds=round(self.clock() - inst.since, 3))
                inst.master_mem, inst.workers = procs.sample_group(proc.pid, self.spec.memory.metric)
                self.wake()
                return
            await asyncio.sleep(h.probe_interval)

    async def _health_loop(self) -> None:
        """Probe running instances; restart one that fails `health.failures` probes in a row."""
        while True:
            await asyncio.sleep(self.spec.health.interval)
            h = self.spec.health
            running = [i for i in self.instances.values() if i.state is S.RUNNING]
            results = await asyncio.gather(*[http_status(self.spec.instances.host, i.port, h.path, h.timeout)
                                             for i in running])
            for inst, status in zip(running, results):
                if status == 200:
                    inst.health_failures = 0
                    continue
                inst.health_failures += 1
                if inst.health_failures >= h.failures and not inst.restart_requested \
                        and inst.state is S.RUNNING:
                    inst.restart_requested = True
                    self.events.emit("instance.unhealthy", level="warning", port=inst.port, pid=inst.pid,
                                     status=status, failures=inst.health_failures)
                    self.wake()

    async def _sample_loop(self) -> None:
        next_rotation = 0.0
        while True:
            await asyncio.sleep(self.spec.memory.sample_interval)
            self.sample()
            if self.clock() >= next_rotation:  # instance logs: copy-then-truncate past max_bytes
                next_rotation = self.clock() + min(10.0, 5 * self.spec.memory.sample_interval)
                for port in list(self.instances):
                    rotated = await asyncio.to_thread(logfiles.rotate_if_needed, self.log_path(port),
                                                      self.spec.logs.max_bytes, self.spec.logs.backups)
                    if rotated:
                        self.events.emit("instance.log_rotated", port=port, path=str(self.log_path(port)))

    def log_path(self, port: int) -> Path:
        return self.log_dir / f"instance-{port}.log"

    def metrics_dirs(self) -> dict[int, str]:
        return {p: str(self.state_dir / "metrics" / str(p)) for p in sorted(self.instances)}

    def sample(self) -> None:
        """Read every master's and worker's memory; queue recycles the watchdog asks for."""
        mem = self.spec.memory
        samples: list[watchdog.MemSample] = []
        for inst in self.instances.values():
            if inst.proc is None:
                continue
            inst.master_mem, inst.workers = procs.sample_group(inst.proc.pid, mem.metric)
            if inst.state is not S.RUNNING:
                continue
            for role, items in (("master", [inst.master_mem] if inst.master_mem else []),
                                ("worker", inst.workers)):
                samples += [watchdog.MemSample(inst.port, m.pid, role, _metric(m, mem.metric)) for m in items]
        limit = mem.worker_limit_mb * MB
        self._streaks, due = watchdog.decide(self._streaks, samples, limit, mem.samples_over,
                                             frozenset(self._recycling))
        if due:
            self._due_recycles.extend(due)
            self.wake()
        total = sum(self.instance_rss(i) for i in self.instances.values())
        crossed = watchdog.budget_crossed(total, mem.fleet_budget_mb * MB, self._over_budget)
        if crossed is not None:
            self._over_budget = crossed
            self.events.emit("alert.memory_budget" if crossed else "alert.memory_budget_resolved",
                             level="error" if crossed else "info", total_bytes=total,
                             budget_bytes=mem.fleet_budget_mb * MB)

    def _perform_recycles(self) -> None:
        """Signal what the watchdog decided (the reconciler is the one that signals)."""
        now = self.clock()
        for r in self._due_recycles:
            inst = self.instances.get(r.port)
            if inst is None or inst.proc is None:
                continue
            self.counters["watchdog_recycles"][r.port] = self.counters["watchdog_recycles"].get(r.port, 0) + 1
            fields = dict(port=r.port, pid=r.pid, role=r.role, value_bytes=r.value, limit_bytes=r.limit,
                          metric=self.spec.memory.metric, samples=r.samples)
            if r.role == "master" or r.pid == inst.proc.pid:
                inst.restart_requested = True
                self.events.emit("watchdog.recycled", level="warning", action="graceful restart", **fields)
            elif procs.signal_pid(r.pid, signal.SIGTERM):
                self._recycling[r.pid] = (r.port, now + self.spec.gunicorn.graceful_timeout + 5)
                self.events.emit("watchdog.recycled", level="warning", action="SIGTERM to worker", **fields)
        self._due_recycles.clear()
        for pid, (port, deadline) in list(self._recycling.items()):
            if not procs.pid_running(pid):
                del self._recycling[pid]
            elif now >= deadline:
                procs.signal_pid(pid, signal.SIGKILL)
                del self._recycling[pid]
                self.events.emit("watchdog.killed", level="error", port=port, pid=pid,
                                 reason="worker still alive after graceful timeout")

    def instance_rss(self, inst: Instance) -> int:
        total = inst.master_mem.rss if inst.master_mem else 0
        return total + sum(w.rss for w in inst.workers)

    # ---- what /fleet shows --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        items = []
        nginx_on = self.spec.nginx.mode != "off"
        for port in sorted(self.instances):
            i = self.instances[port]
            items.append({
                "index": i.index, "port": port, "pid": i.pid, "state": i.state.value,
                "since": round(i.since_wall, 3),
                "uptime": round(now - i.started_wall, 1) if i.started_wall and i.pid else None,
                "restarts": i.restarts, "last_exit": i.last_exit, "reason": i.reason,
                "in_upstream": port in self.applied_upstream, "adopted": i.adopted,
                "serving": i.state is S.RUNNING and (port in self.applied_upstream or not nginx_on),
                "restart_pending": i.restart_requested,
                "master_rss": i.master_mem.rss if i.master_mem else None,
                "cpu_seconds": round(i.master_mem.cpu, 3) if i.master_mem else None,  # the master's own
                "workers": [{"pid": w.pid, "rss": w.rss, "cpu_seconds": round(w.cpu, 3)} for w in i.workers],
                "rss_total": self.instance_rss(i),
            })
        total = sum(x["rss_total"] for x in items)
        ready = sum(1 for x in items if x["serving"] and x["port"] in self.wanted)
        return {
            "fleet": self.spec.name, "desired": self.count, "ready": ready,
            "min": self.spec.instances.min, "max": self.spec.instances.max,
            "ports": list(self.wanted), "shutting_down": self.shutting_down,
            "memory": {"total_rss_bytes": total, "budget_bytes": self.spec.memory.fleet_budget_mb * MB,
                       "worker_limit_bytes": self.spec.memory.worker_limit_mb * MB},
            "upstream": {"servers": sorted(self.applied_upstream), "ok": self.upstream_ok,
                         "error": self.upstream_error},
            "instances": items,
        }

    def health(self) -> tuple[bool, list[str]]:
        reasons = []
        for p in self.wanted:
            inst = self.instances.get(p)
            if inst is None or inst.state is not S.RUNNING:
                state = inst.state.value if inst else "absent"
                detail = f" ({inst.reason})" if inst and inst.reason else ""
                reasons.append(f"instance {p} is {state}{detail}")
        if self.upstream_ok is False:
            reasons.append(f"upstream update failed: {self.upstream_error}")
        return not reasons, reasons


def _metric(m: procs.ProcMem, metric: str) -> int:
    value = getattr(m, metric, None)
    return value if value is not None else m.rss


def _create_time(pid: int) -> float:
    import psutil
    return psutil.Process(pid).create_time()
