"""The worker types' loop: applies `core/worker_plan.py`'s decisions through the Runner seam.

One writer for the worker processes, as the reconciler is for the web instances: the API's
`scale` changes the wanted count and wakes it; only this loop spawns, signals or kills. Each
process runs in its own session (the runner's spawn), its output written through a pipe whose
reader appends it to `<paths.log_dir>/<fleet>-<name>-<index>.log` and rotates it at logs.max_bytes
(shims/ultrascale_logpipe.py); every state change is a `process.state` event. Each type
starts in its own order (`after`: the web fleet ready, the default, or other worker types all
running; `requires`: addresses that accept a TCP connection, probed every READY_INTERVAL while it
waits, a `processes.waiting` event naming what is awaited), and a type with a `ready` check has
its starting processes checked every READY_INTERVAL through the runner (`tcp_check`, `probe`,
`run_check`) until they pass or ready_timeout kills them. It stops every process at the
daemon's shutdown: the type's stop_signal, then SIGKILL to the process group at its
graceful_timeout. A deploy reaches them through their folder: the current release's, part of
what a process was started with, so that once the web fleet is on a new release each type rolls
to it one process at a time (core/worker_plan.py).

Each live process is recorded in `<paths.state_dir>/processes-live.json` (written atomically,
only when it changes): its slot, pid, start time, folder and a digest of its fingerprint (the
env values stay off disk). A daemon that was killed (SIGKILL, a crash) or that detached
(SIGQUIT) leaves them running in their sessions; the next one's `adopt()` takes
over each recorded process that still runs with the same start time (a pid another program
took over is left alone), watches it through a pidfd (its exit status is then unknown) and
plans it like its own: a type the new spec removed or an index beyond the count is stopped as
a scale-down, a changed command, environment or folder rolls it. No second set is started.

The memory watchdog of the worker types: the supervisor's sampler calls `sample_memory()` in
the same pass as the web instances' samples (no timer of its own); each live process is sampled
with its whole process tree and judged against its type's limit (`core/memwatch.decide_trees`);
one over it for `memory.samples_over` samples in a row is restarted through the plan (its
stop_signal, SIGKILL at graceful_timeout, then a new one), with a `process.memory_recycle`
event. A `scale` that the measured memory says would break `memory.fleet_budget_mb` is refused
(`over_budget`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from pathlib import Path
from typing import Any, Callable

from ultrascaled.core import command, memwatch, worker_plan as wp
from ultrascaled.core.control import ScaleRefused
from ultrascaled.core.seams import CheckResult, Clock, Handle, Runner, is_transient
from ultrascaled.core.states import LIVE, State, check_transition
from ultrascaled.effects.files import write_atomic
from ultrascaled.spec import MB, Spec
from ultrascaled.spec import readiness

S = State
Key = wp.Key
IDLE_WAIT = 1.0           # the loop looks again at least this often (and beats)
CONNECT_TIMEOUT = 1.0     # seconds a `tcp` or `http` check, or a `requires` connect, may take
COMMAND_TIMEOUT = 5.0     # seconds a `ready: {command: ...}` check may take


def policy_for(spec: Spec, name: str) -> wp.WorkerPolicy:
    t, r = spec.processes[name], spec.restart
    return wp.WorkerPolicy(start_seconds=t.start_seconds, graceful_timeout=t.graceful_timeout,
                           stop_signal=int(getattr(signal, "SIG" + t.stop_signal)),
                           backoff_initial=r.backoff_initial, backoff_max=r.backoff_max,
                           fatal_crashes=r.fatal_crashes, fatal_window=r.fatal_window,
                           ready_check=t.ready is not None, ready_timeout=t.ready_timeout,
                           ready_interval=wp.READY_INTERVAL)


class WorkersLoop:
    """`spec()`: the spec in force (a reload changes it); `directory()`: the folder a type with
    `directory: null` starts in (app.directory, or the current release's)."""

    def __init__(self, spec: Callable[[], Spec], events: Any, runner: Runner, clock: Clock,
                 alerts: Any, directory: Callable[[], str], log_dir: Path, state_dir: Path,
                 beat: Callable[[], None] = lambda: None, web_ready: Callable[[], bool] = lambda: True,
                 web_memory: Callable[[], int] = lambda: 0):
        self._spec = spec
        self.events = events
        self.runner = runner
        self.clock = clock
        self.alerts = alerts
        self.directory = directory
        self.log_dir = Path(log_dir)
        self.state_file = Path(state_dir) / "processes.json"
        self.live_file = Path(state_dir) / "processes-live.json"   # the live processes, for adoption
        self.beat = beat
        self.slots: dict[Key, wp.Slot] = {}
        self.handles: dict[Key, Handle] = {}
        self.pids: dict[Key, int] = {}
        self.start_times: dict[Key, float | None] = {}   # Runner.start_time of each live process
        self._recorded: bytes | None = None              # what processes-live.json holds
        self.desired: dict[str, int] = {}
        self.started = False            # the web fleet was ready: processes may start
        self.shutting_down = False
        self._seen: Spec | None = None
        self.moves = 0                  # slot changes made, for tests that step the loop
        self.policies: dict[str, wp.WorkerPolicy] = {}   # also of a type a reload removed, while it stops
        # the memory watchdog: `web_memory()` is the web instances' measured bytes (for scale's budget)
        self.web_memory = web_memory
        self.memory: dict[Key, tuple[int, int]] = {}       # slot -> (pid, its tree's rss) as last sampled
        self.mem_streaks: dict[int, int] = {}              # root pid -> samples over its limit in a row
        self.recycle_wanted: dict[Key, tuple[int, str]] = {}   # slot -> (pid, why): restart it now
        self.recycle_history: dict[Key, tuple[float, ...]] = {}
        self.recycle_held: dict[Key, str] = {}
        self._tree_pids: set[int] = set()                  # pids the last samples read
        self._wake = asyncio.Event()
        self.restart_before: dict[str, float] = {}   # type -> processes started before this are restarted
        self.web_ready = web_ready      # the web fleet's ready_event is set (`after: [web]`)
        self.released: set[str] = set()   # types past their start order: they start and restart
        self.waiting: dict[str, list[str]] = {}   # a type held back -> what it awaits
        self._announced: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._waiting_since: dict[str, float] = {}
        self.up: dict[str, bool] = {}   # a `requires` address -> it accepted a connection
        self._next_connect: dict[str, float] = {}
        self._tasks: dict[Any, asyncio.Task] = {}   # checks and connects under way
        self._connect_at: float | None = None     # the next connect to a `requires` address

    @property
    def spec(self) -> Spec:
        return self._spec()

    # ---- what is wanted ---------------------------------------------------------------------

    def load(self) -> None:
        """The counts last scaled to (`<state_dir>/processes.json`), where they still fit."""
        try:
            saved = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            saved = {}
        except (OSError, ValueError) as exc:
            self.events.emit("state.ignored", level="warning", path=str(self.state_file),
                             reason=f"unreadable ({type(exc).__name__}: {exc}); using processes.*.count")
            saved = {}
        spec = self._seen = self.spec
        for name, t in spec.processes.items():
            n = saved.get(name) if isinstance(saved, dict) else None
            ok = isinstance(n, int) and not isinstance(n, bool) and t.min <= n <= t.max
            self.desired[name] = n if ok else t.count

    def _follow_spec(self) -> None:
        """A reload: added types start at their count, removed ones stop; a type keeps its
        scaled count unless the spec's count changed (as the web fleet does)."""
        spec = self.spec
        old = self._seen
        if spec is old:
            return
        self._seen = spec
        before = old.processes if old is not None else {}
        for name in list(self.desired):
            if name not in spec.processes:
                del self.desired[name]
        for name, t in spec.processes.items():
            prev = before.get(name)
            if name not in self.desired or prev is None or prev.count != t.count:
                self.desired[name] = t.count
            else:
                self.desired[name] = min(t.max, max(t.min, self.desired[name]))

    def scale(self, name: str, n: int, source: str = "operator") -> dict[str, Any]:
        """A new count for one type (raises ScaleRefused); a FATAL process of it is tried again."""
        spec = self.spec
        if self.shutting_down:
            raise ScaleRefused("shutting_down", "the daemon is stopping; its processes are stopping too")
        if name not in spec.processes:
            known = ", ".join(sorted(spec.processes)) or "none"
            raise ScaleRefused("not_found", f"no process type {name!r} (types: web, {known})"
                               if known != "none" else f"no process type {name!r}: the spec has "
                               "no processes: section, only the web fleet")
        t = spec.processes[name]
        if isinstance(n, bool) or not isinstance(n, int) or not t.min <= n <= t.max:
            raise ScaleRefused("out_of_range", f"{name} must be {t.min}..{t.max} "
                               f"(processes.{name}.min..max), got {n}")
        self._follow_spec()
        old = self.desired.get(name, t.count)
        if n > old:
            problem = self.memory_refusal(name, n)
            if problem:
                raise ScaleRefused("over_budget", problem)
        counts = dict(self.desired, **{name: n})
        try:
            write_atomic(str(self.state_file), json.dumps(counts, sort_keys=True).encode())
        except OSError as exc:
            raise ScaleRefused("internal", f"cannot save the count to {self.state_file}: "
                               f"{exc.strerror or exc}; nothing was changed") from None
        self.desired[name] = n
        for key, slot in list(self.slots.items()):
            if key[0] == name and slot.state is S.FATAL:
                self._move(wp.retried(slot))
        if n != old:
            self.events.emit("process.scale", process=name, desired=n, previous=old, source=source)
        self.wake()
        return {"process": name, "desired": n, "previous": old}

    def restart(self, name: str, source: str = "operator") -> dict[str, Any]:
        """Restart a type's processes one at a time, each stopped (stop_signal, SIGKILL at
        graceful_timeout) and started again before the next (raises ScaleRefused). A FATAL one
        is tried again. A daemon restarted meanwhile does not go on with the roll."""
        spec = self.spec
        if self.shutting_down:
            raise ScaleRefused("shutting_down", "the daemon is stopping; its processes are stopping too")
        if name not in spec.processes:
            known = ", ".join(sorted(spec.processes)) or "none"
            raise ScaleRefused("not_found", f"no worker type {name!r} (worker types: {known})")
        self.restart_before[name] = self.clock.now()
        for key, slot in list(self.slots.items()):
            if key[0] == name and slot.state is S.FATAL:
                self._move(wp.retried(slot))
        indexes = sorted(i for (n, i), s in self.slots.items() if n == name and s.state in LIVE)
        self.events.emit("process.restart_requested", process=name, indexes=indexes, source=source)
        self.wake()
        return {"process": name, "restarting": indexes}

    # ---- the loop ------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def begin(self) -> None:
        """Start the worker types, each in its start order (`after`, `requires`)."""
        if not self.started:
            self.started = True
            self.events.emit("processes.starting", types={n: c for n, c in sorted(self.desired.items())})
            self.wake()

    async def run(self, web_ready: asyncio.Event) -> None:
        """The loop: a type with `after: [web]` waits for `web_ready` (its step holds it)."""
        async def wake_when_web_ready() -> None:
            await web_ready.wait()
            self.wake()
        watcher = asyncio.get_running_loop().create_task(wake_when_web_ready(), name="workers-web-ready")
        try:
            await self._run()
        finally:
            watcher.cancel()

    async def _run(self) -> None:
        self.begin()
        while True:
            wake_at = self.step()
            self.beat()
            delay = IDLE_WAIT if wake_at is None else min(IDLE_WAIT, max(0.0, wake_at - self.clock.now()))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    def step(self) -> float | None:
        """Plan and apply until nothing is left at this instant; the next time to look."""
        self._follow_spec()
        spec = self.spec
        kept = {n for n, _ in self.slots}
        self.policies = {**{n: p for n, p in self.policies.items() if n in kept},
                         **{n: policy_for(spec, n) for n in spec.processes}}
        policies = self.policies
        desired = {} if self.shutting_down or not self.started else dict(self.desired)
        fingerprints = {n: command.process_fingerprint(spec, n, self.folder(spec, n)) for n in spec.processes}
        held = self._start_order(spec) if desired else set()
        for _ in range(10):
            for key, (pid, _) in list(self.recycle_wanted.items()):   # its process is gone meanwhile
                if self.pids.get(key) != pid or key not in self.handles:
                    del self.recycle_wanted[key]
            recycle = {key: why for key, (_, why) in self.recycle_wanted.items()}
            actions = wp.plan(self.slots, desired, policies, self.clock.now(), fingerprints, self.restart_before,
                              held, recycle)
            if not actions:
                break
            for action in actions:
                self._apply(action, spec, policies)
        self._resolve_crash_loops(policies)
        self._record()
        wake = wp.next_wakeup(self.slots, policies)
        if self._connect_at is not None:   # a type waiting connects again then
            wake = self._connect_at if wake is None else min(wake, self._connect_at)
        return wake

    # ---- start order ---------------------------------------------------------------------------

    def _start_order(self, spec: Spec) -> set[str]:
        """The types that may not start yet (held), after releasing those whose `after` and
        `requires` are met now; connects to `requires` addresses are started as needed."""
        self.released &= set(spec.processes)
        for gone in set(self.waiting) - set(spec.processes):
            self._stop_waiting(gone)
        ready = {"web": bool(self.web_ready())}
        for name in spec.processes:
            ready[name] = name in self.released and wp.type_ready(self.slots, name, self.desired.get(name, 0))
        held, now = set(), self.clock.now()
        self._connect_at = None
        for name, t in spec.processes.items():
            if name in self.released:
                continue
            blockers = wp.start_blockers(t.after, ready, t.requires, self.up)
            if not blockers:
                self.released.add(name)
                waited = now - self._waiting_since.get(name, now)
                self._stop_waiting(name)
                self.events.emit("processes.released", process=name, after=list(t.after),
                                 requires=list(t.requires), waited=round(waited, 3))
                continue
            held.add(name)
            self._waiting_since.setdefault(name, now)
            self.waiting[name] = blockers
            if wp.announce_waiting(self._announced.get(name), blockers, now):
                self._announced[name] = (now, tuple(blockers))
                self.events.emit("processes.waiting", process=name, awaits=blockers,
                                 waited=round(now - self._waiting_since[name], 3))
            for address in t.requires:
                if self.up.get(address) or ("connect", address) in self._tasks:
                    continue
                at = self._next_connect.get(address, 0.0)
                if now >= at:
                    self._connect(address)
                else:
                    self._connect_at = at if self._connect_at is None else min(self._connect_at, at)
        needed = {a for n in held for a in spec.processes[n].requires}
        self.up = {a: v for a, v in self.up.items() if a in needed}   # asked afresh for a type added later
        return held

    def _stop_waiting(self, name: str) -> None:
        self.waiting.pop(name, None)
        self._announced.pop(name, None)
        self._waiting_since.pop(name, None)

    def _task(self, key: Any, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"workers-{key[0]}-{key[1]}")
        self._tasks[key] = task
        task.add_done_callback(lambda t, key=key: self._tasks.pop(key, None) if self._tasks.get(key) is t else None)

    def _connect(self, address: str) -> None:
        host, port = readiness.tcp_address(address)

        async def connect() -> None:
            try:
                result = await self.runner.tcp_check(host, port, CONNECT_TIMEOUT)
            except OSError as exc:
                result = CheckResult(False, exc.strerror or str(exc))
            self._next_connect[address] = self.clock.now() + wp.READY_INTERVAL
            if result.ok:
                self.up[address] = True
                self.events.emit("processes.required_up", address=address)
            self.wake()
        self._task(("connect", address), connect())

    def _check(self, key: Key, spec: Spec, policy: wp.WorkerPolicy) -> None:
        """Run the type's `ready` check of this process (a task); its answer moves the slot."""
        handle = self.handles.get(key)
        t = spec.processes.get(key[0])
        slot = self.slots.get(key)
        if handle is None or t is None or t.ready is None or slot is None:
            return
        self.slots[key] = wp.check_started(slot)
        ready = t.ready

        async def check() -> None:
            try:
                if "tcp" in ready:
                    result = await self.runner.tcp_check("127.0.0.1", ready["tcp"], CONNECT_TIMEOUT)
                elif "http" in ready:
                    (host, port, path), _ = readiness.http_target(ready["http"])
                    answer = await self.runner.probe(host, port, path, CONNECT_TIMEOUT)
                    ok = answer.status is not None and 200 <= answer.status < 300
                    result = CheckResult(ok, answer.detail)
                else:
                    result = await self.runner.run_check(list(ready["command"]),
                                                         command.process_env(spec, key[0], key[1]),
                                                         slot.folder or self.folder(spec, key[0]), COMMAND_TIMEOUT)
            except OSError as exc:
                result = CheckResult(False, exc.strerror or str(exc))
            current = self.slots.get(key)
            if self.handles.get(key) is not handle or current is None or current.state is not S.STARTING:
                return   # the process is gone (or stopping): its answer is of no use
            self.slots[key] = wp.check_done(current, result.ok, result.detail, policy, self.clock.now())
            self.moves += 1
            if result.ok:
                self.events.emit("process.ready", process=key[0], index=key[1], pid=handle.pid,
                                 after=round(self.clock.now() - (current.started_at or 0.0), 3))
            self.wake()
        self._task(("check", key), check())

    def _apply(self, action: wp.Action, spec: Spec, policies: dict[str, wp.WorkerPolicy]) -> None:
        now = self.clock.now()
        key = action.key
        slot = self.slots.get(key) or wp.Slot(*key)
        if isinstance(action, wp.Spawn):
            self._spawn(slot, spec, policies[key[0]], action.reason)
        elif isinstance(action, wp.Check):
            self._check(key, spec, policies[key[0]])
        elif isinstance(action, wp.NotReady):
            policy = policies[key[0]]
            self.slots[key] = wp.not_ready(slot, action.detail)
            self.moves += 1
            self.events.emit("process.not_ready", level="warning", process=key[0], index=key[1],
                             pid=self.pids.get(key), ready_timeout=policy.ready_timeout,
                             last_check=action.detail, action="SIGKILL to its process group")
            handle = self.handles.get(key)
            if handle is not None:
                try:
                    self.runner.kill_group(handle.pgid, signal.SIGKILL)
                except OSError as exc:
                    self.events.emit("process.signal_failed", level="error", process=key[0],
                                     index=key[1], error=str(exc))
        elif isinstance(action, wp.Promote):
            self._move(wp.promoted(slot), uptime=round(now - (slot.started_at or now), 3))
        elif isinstance(action, wp.Stop):
            self.recycle_wanted.pop(key, None)
            self._move(wp.stopping(slot, action.deadline, action.reason), signal=signal.Signals(action.sig).name,
                       graceful_timeout=round(action.deadline - now, 3))
            handle = self.handles.get(key)
            if handle is not None:
                try:
                    self.runner.signal(handle, action.sig)
                except OSError as exc:
                    self.events.emit("process.signal_failed", level="warning", process=key[0],
                                     index=key[1], error=str(exc))
        elif isinstance(action, wp.Kill):
            self.slots[key] = dataclasses.replace(slot, killed=True)
            self.moves += 1
            handle = self.handles.get(key)
            self.events.emit("process.killed", level="warning", process=key[0], index=key[1],
                             pid=self.pids.get(key), signal="SIGKILL",
                             reason="still running at its graceful_timeout")
            if handle is not None:
                try:
                    self.runner.kill_group(handle.pgid, signal.SIGKILL)
                except OSError as exc:
                    self.events.emit("process.signal_failed", level="error", process=key[0],
                                     index=key[1], error=str(exc))
        elif isinstance(action, wp.Forget):
            if slot.state is not S.STOPPED:
                self._move(dataclasses.replace(slot, state=S.STOPPED, reason="not wanted"))
            self.slots.pop(key, None)
            self.pids.pop(key, None)
            self.recycle_history.pop(key, None)
            self.alerts.resolve("worker_crash_loop", process=key[0], index=key[1])

    def log_path(self, spec: Spec, name: str, index: int) -> str:
        """`<paths.log_dir>/<fleet>-<name>-<index>.log`: the fleet's name keeps two fleets that
        share a log_dir (the default's) out of each other's files."""
        return str(self.log_dir / f"{spec.name}-{name}-{index}.log")

    def folder(self, spec: Spec, name: str) -> str:
        """Where a process of type `name` starts: its own `directory`, or the current release's."""
        return spec.processes[name].directory or self.directory()

    def folders_in_use(self) -> set[str]:
        """The folders live worker processes run in (a release a deploy must not prune)."""
        return {slot.folder for slot in self.slots.values() if slot.folder and slot.state in LIVE}

    def _spawn(self, slot: wp.Slot, spec: Spec, policy: wp.WorkerPolicy, reason: str) -> None:
        name, index = slot.key
        t = spec.processes[name]
        cwd = self.folder(spec, name)
        log_path = self.log_path(spec, name, index)
        now = self.clock.now()
        try:
            env = command.process_env(spec, name, index)
            handle = self.runner.spawn(list(t.command), env, cwd, log_path,
                                       rotate=(spec.logs.max_bytes, spec.logs.backups))
        except OSError as exc:
            detail = f"{exc.strerror or exc}" + (f": {exc.filename!r}" if getattr(exc, "filename", None) else "")
            after = wp.on_spawn_error(slot, detail, is_transient(exc), policy, now)
            self.events.emit("process.spawn_failed", level="error", process=name, index=index,
                             program=t.command[0], cwd=cwd, error=detail)
            self._move(after)
            return
        self.handles[slot.key] = handle
        self.pids[slot.key] = handle.pid
        self.start_times[slot.key] = self._start_time(handle.pid)
        self._move(wp.spawned(slot, now, command.process_fingerprint(spec, name, cwd), cwd), pid=handle.pid,
                   why=reason, log=log_path)
        self.runner.watch(handle, lambda rc, key=slot.key, h=handle: self._exited(key, h, rc))

    def _exited(self, key: Key, handle: Handle, returncode: int | None) -> None:
        if self.handles.get(key) is not handle:
            return
        del self.handles[key]
        self.start_times.pop(key, None)
        try:
            self.runner.unwatch(handle)
        except OSError:
            pass
        try:   # what the process left in its session (a shell's child, a forked helper)
            if self.runner.group_alive(handle.pgid):
                self.runner.kill_group(handle.pgid, signal.SIGKILL)
        except OSError:
            pass
        slot = self.slots.get(key)
        if slot is None:
            return
        policy = self.policies.get(key[0], wp.WorkerPolicy())
        after, loop = wp.on_exit(slot, returncode, policy, self.clock.now())
        self._move(after, pid=handle.pid, returncode=returncode)
        if loop:
            self.alerts.fire("worker_crash_loop", f"{key[0]} process {key[1]} keeps crashing after it "
                             f"started: {after.reason}", process=key[0], index=key[1])
        self._record()
        self.wake()

    # ---- adoption across a daemon restart ------------------------------------------------------

    def _start_time(self, pid: int) -> float | None:
        try:
            return self.runner.start_time(pid)
        except OSError:
            return None

    def _record(self) -> None:
        """Write the live processes to processes-live.json when they changed (atomically)."""
        records = []
        for key, handle in self.handles.items():
            slot = self.slots.get(key)
            if slot is None:
                continue
            policy = self.policies.get(key[0], wp.WorkerPolicy())
            records.append(wp.Record(key[0], key[1], handle.pid, self.start_times.get(key),
                                     wp.digest(slot.fingerprint), slot.folder, slot.restarts, policy.stop_signal, policy.graceful_timeout))
        data = json.dumps(wp.records_json(records), sort_keys=True, indent=1).encode()
        if data == self._recorded:
            return
        try:
            write_atomic(str(self.live_file), data)
        except OSError as exc:   # tried again at the next change; a next daemon would adopt less
            self.events.emit("processes.record_failed", level="warning", path=str(self.live_file),
                             error=exc.strerror or str(exc),
                             effect="a daemon killed now would not adopt the processes started since")
            return
        self._recorded = data

    def adopt(self) -> list[Key]:
        """Take over the processes an earlier daemon recorded in processes-live.json and left
        running (it was killed or crashed): each one still alive with the start time recorded
        is watched as if spawned, in its slot (RUNNING once it has lived start_seconds, its
        uptime kept); a pid that is gone or now another process's is dropped, with an event
        saying why. Call after load(), with the loop running (the watch needs it); the plan
        then stops what the spec no longer wants and rolls what it starts differently."""
        try:
            data = json.loads(self.live_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            self.events.emit("state.ignored", level="warning", path=str(self.live_file),
                             reason=f"unreadable ({type(exc).__name__}: {exc}); every worker process starts "
                                    "afresh (any an earlier daemon left running are not adopted)")
            return []
        records, errors = wp.records_from(data)
        for error in errors:
            self.events.emit("state.ignored", level="warning", path=str(self.live_file), reason=error)
        spec = self.spec
        now, wall = self.clock.now(), self.clock.wall()
        taken = []
        for rec in records:
            key = rec.key
            fields = dict(process=rec.name, index=rec.index, pid=rec.pid)
            if key in self.slots:
                continue
            try:
                handle = self.runner.adopt(rec.pid)   # a pidfd first: the start time then speaks of it
            except OSError as exc:
                self.events.emit("process.not_adopted", level="warning", **fields,
                                 reason=f"cannot watch it: {exc.strerror or exc}; left alone")
                continue
            why = wp.not_same_process(rec, self._start_time(rec.pid))
            if why is not None:
                try:
                    self.runner.unwatch(handle)   # closes its pidfd
                except OSError:
                    pass
                self.events.emit("process.not_adopted", level="warning", **fields, reason=why)
                continue
            known = rec.name in spec.processes
            policy = self.policies[rec.name] = policy_for(spec, rec.name) if known else \
                wp.WorkerPolicy(stop_signal=rec.stop_signal, graceful_timeout=rec.graceful_timeout)
            uptime = max(0.0, wall - rec.start_time)   # a removed type: stopped as the type it was
            self.handles[key] = handle
            self.pids[key] = rec.pid
            self.start_times[key] = rec.start_time
            slot = wp.adopted(rec, now - uptime,
                              command.process_fingerprint(spec, rec.name, rec.folder) if known else "")
            self._move(slot, pid=rec.pid, uptime=round(uptime, 3))
            if uptime >= policy.start_seconds:
                self._move(wp.promoted(slot), uptime=round(uptime, 3))
            self.events.emit("process.adopted", **fields, uptime=round(uptime, 3), folder=rec.folder,
                             restarts=rec.restarts)
            self.runner.watch(handle, lambda rc, key=key, h=handle: self._exited(key, h, rc))
            taken.append(key)
        self._record()
        return taken

    def _resolve_crash_loops(self, policies: dict[str, wp.WorkerPolicy]) -> None:
        raised = getattr(self.alerts, "raised", None)
        if not raised:
            return
        now = self.clock.now()
        for key, slot in self.slots.items():
            p = policies.get(key[0])
            if p is not None and slot.state is S.RUNNING and slot.started_at is not None \
                    and now - slot.started_at >= p.fatal_window:
                self.alerts.resolve("worker_crash_loop", f"{key[0]} process {key[1]} has run for "
                                    f"{p.fatal_window:g}s", process=key[0], index=key[1])

    def _move(self, new: wp.Slot, **fields: Any) -> None:
        """The one function that changes a slot's state: checks the move, logs the event."""
        old = self.slots.get(new.key)
        previous = old.state if old is not None else S.STOPPED
        if new.state is not previous:
            check_transition(previous, new.state)
        self.slots[new.key] = new
        self.moves += 1
        if new.state is not previous:
            level = "error" if new.state is S.FATAL else "warning" if new.state is S.BACKOFF else "info"
            extra = {"reason": new.reason} if new.reason else {}
            if new.state is S.BACKOFF:
                extra["next_start_in"] = round(max(0.0, new.next_start - self.clock.now()), 3)
            self.events.emit("process.state", level=level, process=new.name, index=new.index,
                             state=new.state.value, previous=previous.value,
                             **{"pid": self.pids.get(new.key), **fields, **extra})

    # ---- the memory watchdog (docs/processes.md#memory) ---------------------------------------

    def limit_mb(self, spec: Spec, name: str) -> int:
        """A type's memory limit: its own memory_limit_mb, else memory.worker_limit_mb."""
        t = spec.processes.get(name)
        own = t.memory_limit_mb if t is not None else None
        return own if own is not None else spec.memory.worker_limit_mb

    def _rss_of(self, key: Key) -> int | None:
        seen = self.memory.get(key)
        return seen[1] if seen is not None and seen[0] == self.pids.get(key) else None

    def sample_memory(self) -> None:
        """One round of memory samples of the live processes, each with its whole tree (the
        supervisor's sampler calls it right after the web instances' round), and the watchdog's
        decision: a RUNNING process over its limit for memory.samples_over samples in a row is
        restarted by the plan (woken here); a fresh one crossing it restart.fatal_crashes times
        within restart.fatal_window is held, with the memory_recycle_loop alert, as the web's is."""
        spec = self.spec
        mem = spec.memory
        samples: list[memwatch.TreeSample] = []
        read: set[int] = set()
        for key, handle in list(self.handles.items()):
            slot = self.slots.get(key)
            if slot is None or slot.state not in LIVE:
                continue
            try:
                tree = self.runner.sample_tree(handle.pid, mem.metric)
            except OSError:
                tree = []
            if not tree:
                self.memory.pop(key, None)
                continue
            read.update(m.pid for m in tree)
            rss = sum(m.rss for m in tree)
            self.memory[key] = (handle.pid, rss)
            if slot.state is S.RUNNING and key[0] in spec.processes:
                value = sum(_metric(m, mem.metric) for m in tree)
                samples.append(memwatch.TreeSample(key, handle.pid, value, self.limit_mb(spec, key[0]) * MB,
                                                   len(tree)))
        gone = self._tree_pids - read
        self._tree_pids = read
        if gone:
            try:
                self.runner.forget(sorted(gone))
            except OSError:
                pass
        for key in [k for k in self.memory if k not in self.handles]:
            del self.memory[key]
        recycling = frozenset(self.pids[k] for k, s in self.slots.items()
                              if k in self.pids and (s.state is S.STOPPING or k in self.recycle_wanted))
        self.mem_streaks, due = memwatch.decide_trees(self.mem_streaks, samples, mem.samples_over, recycling)
        by_key = {s.key: s for s in samples}
        for key, msg in list(self.recycle_held.items()):   # held: under its limit again (or gone)
            s = by_key.get(key)
            if s is None and key in self.handles:
                continue
            if s is None or s.value <= s.limit:
                del self.recycle_held[key]
                self.alerts.resolve("memory_recycle_loop", f"{key[0]} process {key[1]} is under its "
                                    "memory limit again", process=key[0], index=key[1])
        for r in due:
            self._memory_recycle(r, by_key[r.key], mem.metric)
        if due:
            self.wake()

    def _memory_recycle(self, r: memwatch.TreeRecycle, s: memwatch.TreeSample, metric: str) -> None:
        name, index = r.key
        policy = self.policies.get(name, wp.WorkerPolicy())
        rss = self.memory.get(r.key, (0, r.value))[1]
        fields = dict(process=name, index=index, pid=r.pid, rss=rss, value=r.value, metric=metric,
                      limit=r.limit, limit_mb=r.limit // MB, samples=r.samples, processes=s.processes)
        history, storm = memwatch.recycle_storm(self.recycle_history.get(r.key, ()), self.clock.now(),
                                                policy.fatal_crashes, policy.fatal_window)
        if storm:   # every fresh process crosses the limit: restarting it again would only loop
            msg = (f"{name} process {index}: {len(history) - 1} memory restarts within "
                   f"{policy.fatal_window:g}s, each fresh process crosses its limit ({r.limit // MB} MiB, "
                   f"measured {r.value // MB} MiB {metric}); restarts are held until it is under it "
                   f"(raise processes.{name}.memory_limit_mb, or fix the leak)")
            if r.key not in self.recycle_held:
                self.events.emit("process.memory_recycle_held", level="error", **fields)
                self.alerts.fire("memory_recycle_loop", msg, process=name, index=index)
            self.recycle_held[r.key] = msg
            return
        self.recycle_history[r.key] = history
        why = (f"memory: {r.value // MB} MiB ({metric}, {s.processes} "
               f"{'process' if s.processes == 1 else 'processes'}) over its limit of {r.limit // MB} MiB "
               f"for {r.samples} samples in a row")
        self.recycle_wanted[r.key] = (r.pid, why)
        self.events.emit("process.memory_recycle", level="warning", **fields,
                         action=f"restart: {signal.Signals(policy.stop_signal).name}, SIGKILL at "
                                f"graceful_timeout ({policy.graceful_timeout:g}s)")

    def measured_memory(self) -> int:
        """Bytes of every live worker process's tree, as last sampled (the web's scale counts it)."""
        return sum(v for v in (self._rss_of(k) for k in self.handles) if v)

    def memory_refusal(self, name: str, n: int) -> str | None:
        """Why `n` processes of `name` would break memory.fleet_budget_mb, by what is measured
        now (the web's way): its measured average per process (its limit while none runs), beside
        the web instances and the other types as measured."""
        spec = self.spec
        live = {k: self._rss_of(k) for k in self.handles}
        own = [v for (t, _), v in live.items() if t == name and v]
        rest = self.web_memory() + sum(v for (t, _), v in live.items() if t != name and v)
        if own:
            per, source = sum(own) // len(own), f"measured average of {len(own)}"
        else:
            per = self.limit_mb(spec, name) * MB
            source = (f"processes.{name}.memory_limit_mb" if spec.processes[name].memory_limit_mb is not None
                      else "memory.worker_limit_mb") + ", none measured"
        return memwatch.worker_scale_refusal(name, n, per, source, rest, spec.memory.fleet_budget_mb * MB)

    # ---- shutdown -----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        for task in list(self._tasks.values()):
            task.cancel()
        self.waiting.clear()
        self.wake()

    def detach(self) -> None:
        """The daemon exits leaving its processes running (SIGQUIT): their record is brought up
        to date for the next daemon's adopt(), and they are no longer watched."""
        self._record()
        for handle in list(self.handles.values()):
            try:
                self.runner.unwatch(handle)
            except OSError:
                pass
        self.handles.clear()

    @property
    def live(self) -> list[Key]:
        return sorted(k for k, s in self.slots.items() if s.state in LIVE)

    async def stop_all(self, margin: float = 5.0) -> None:
        """Every process stopped: stop_signal, SIGKILL at graceful_timeout (by the loop's plan),
        and if an exit still does not come `margin` seconds later, SIGKILL again and go."""
        self.begin_shutdown()
        self.step()
        spec = self.spec
        longest = max((t.graceful_timeout for t in spec.processes.values()), default=0.0)
        try:
            async with asyncio.timeout(longest + margin):
                while self.live:
                    self.step()
                    await asyncio.sleep(0.05)
        except TimeoutError:
            for key in self.live:
                handle = self.handles.get(key)
                if handle is not None:
                    try:
                        self.runner.kill_group(handle.pgid, signal.SIGKILL)
                    except OSError:
                        pass
            self.events.emit("processes.stop_timeout", level="error",
                             left=[f"{n}/{i}" for n, i in self.live])
        self.step()

    # ---- what the API reads ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """`GET /processes`' worker types: name -> kind, desired, ready and the instances."""
        spec = self.spec
        now = self.clock.now()
        out: dict[str, Any] = {}
        gone = sorted({n for n, _ in self.slots} - set(spec.processes))   # removed by a reload, stopping
        for name in [*spec.processes, *gone]:
            t = spec.processes.get(name)
            insts = []
            for (n, index), slot in sorted(self.slots.items()):
                if n != name:
                    continue
                alive = slot.state in LIVE and slot.started_at is not None
                insts.append({"index": index, "pid": self.pids.get((n, index)) if alive else None,
                              "state": slot.state.value,
                              "uptime": round(now - slot.started_at, 3) if alive else None,
                              "restarts": slot.restarts, "reason": slot.reason,
                              "rss": self._rss_of((n, index)) if alive else None,
                              "log": self.log_path(spec, name, index)})
            out[name] = {"kind": "worker", "desired": 0 if t is None else self.desired.get(name, t.count),
                         "ready": sum(1 for i in insts if i["state"] == "running"),
                         "min": 0 if t is None else t.min, "max": 0 if t is None else t.max,
                         "waiting_for": list(self.waiting.get(name, [])),
                         "instances": insts}   # not its command: an argv may hold a secret
        return out


def _metric(m: Any, metric: str) -> int:
    value = getattr(m, metric, None)
    return value if value is not None else m.rss
