"""The job types' loop: runs `kind: job` commands when `core/job_plan.py` says they are due.

One writer for the job runs, as the workers loop is for the workers: the API's "run now" asks
and wakes it; only this loop spawns, signals or kills. A run is a process in its own session,
its output appended to `<paths.log_dir>/<fleet>-job-<name>.log` (each run's offset in its history), its
number in `ULTRASCALE_PROCESS=<fleet>/<name>/<run>`.

A `forbid` or `replace` job is a singleton on the host through the daemon's own death: the run
holds the job's lock (effects/joblock.py) for its whole life, and `<paths.state_dir>/jobs.json`
records each live run (pid and process start time), so a next daemon adopts a run still going
and never starts a second beside it, even when the record was lost. Runs missed while no daemon
ran are counted in an event and run once at start only with `catch_up: true`.

A job with `requires` has each address connected to when a run is due (in parallel): a run due
while one does not accept is skipped, with a `job.skipped` naming it.

A daemon that stops stops the runs (stop_signal, SIGKILL at graceful_timeout); one that detaches
for an upgrade leaves them to the next. A reload that removes a job lets its runs finish.
"""
from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ultrascaled.core import command, job_plan as jp
from ultrascaled.core.worker_plan import START_TIME_SLACK   # the workers' rule for "the same process"
from ultrascaled.core.control import ScaleRefused
from ultrascaled.core.seams import CheckResult, Clock, Handle, Runner
from ultrascaled.effects import joblock
from ultrascaled.effects.files import write_atomic
from ultrascaled.spec import Spec, readiness

IDLE_WAIT = 5.0        # the loop looks again at least this often (and beats)
CONNECT_TIMEOUT = 1.0  # seconds a `requires` address may take to accept a connection
STATE_VERSION = 1


@dataclass
class Run:
    job: str
    run: int
    pid: int
    started: float                 # monotonic
    started_wall: float
    due: float | None              # the due time it ran for (None: run by hand)
    why: str                       # schedule, operator, catch_up
    log: str
    log_offset: int
    folder: str = ""
    start_time: float | None = None   # the process's own start time, to know it again after a restart
    adopted: bool = False
    stop_deadline: float | None = None
    stop_reason: str | None = None    # timed_out, replaced, stopped
    killed: bool = False

    def live(self) -> jp.LiveRun:
        return jp.LiveRun(self.run, self.started, self.stop_deadline)

    def record(self) -> dict[str, Any]:
        return {"run": self.run, "pid": self.pid, "start_time": self.start_time, "started": self.started_wall,
                "due": self.due, "why": self.why, "log": self.log, "log_offset": self.log_offset,
                "folder": self.folder}


class JobsLoop:
    def __init__(self, spec: Callable[[], Spec], events: Any, runner: Runner, clock: Clock, alerts: Any,
                 directory: Callable[[], str], log_dir: Path, state_dir: Path,
                 beat: Callable[[], None] = lambda: None, locks: Any = joblock):
        self._spec = spec
        self.events = events
        self.runner = runner
        self.clock = clock
        self.alerts = alerts
        self.directory = directory
        self.log_dir = Path(log_dir)
        self.state_dir = Path(state_dir)
        self.state_file = self.state_dir / "jobs.json"
        self.beat = beat
        self.locks = locks
        self.live: dict[str, dict[int, Run]] = {}
        self.handles: dict[tuple[str, int], Handle] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.seq: dict[str, int] = {}
        self.last_due: dict[str, float] = {}     # the latest due time handled (run or skipped)
        self.requested: dict[str, str] = {}      # a run asked for (by the operator, or a replace waiting)
        self.policies: dict[str, jp.JobPolicy] = {}
        self.started = False
        self.shutting_down = False
        self._wake = asyncio.Event()
        self.outcomes: dict[str, dict[str, int]] = {}   # job -> outcome -> runs ended, since start (/metrics)
        self.last_success: dict[str, float] = {}
        self.down: dict[str, list[str]] = {}     # a job -> its `requires` not connecting at its last due time
        self._checks: set[asyncio.Task] = set()  # those connects under way

    @property
    def spec(self) -> Spec:
        return self._spec()

    def policy(self, name: str) -> jp.JobPolicy:
        t = self.spec.processes.get(name)
        if t is not None:
            self.policies[name] = jp.JobPolicy.of(t)
        return self.policies.get(name, jp.JobPolicy(every=60.0))

    def lock_path(self, name: str) -> str:
        return str(self.state_dir / f"job-{name}.lock")

    def log_path(self, name: str) -> str:
        return str(self.log_dir / f"{self.spec.name}-job-{name}.log")   # log_dir may be shared by fleets

    # ---- what the last daemon left ------------------------------------------------------------

    def load(self) -> None:
        """Read jobs.json: the history, the latest due time handled, and the runs still going,
        adopted when their pid is the same process (start time) as recorded."""
        try:
            saved = json.loads(self.state_file.read_text())
            jobs = saved["jobs"] if saved.get("version") == STATE_VERSION else {}
            if not isinstance(jobs, dict):
                raise ValueError("`jobs` is not a mapping")
        except FileNotFoundError:
            jobs = {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.events.emit("state.ignored", level="warning", path=str(self.state_file),
                             reason=f"unreadable ({type(exc).__name__}: {exc}); job history starts "
                                    "empty and no run is adopted (a run still going keeps its lock)")
            jobs = {}
        wall, now = self.clock.wall(), self.clock.now()
        for name, state in jobs.items():
            try:
                self.history[name] = [h for h in state.get("history", []) if isinstance(h, dict)]
                self.seq[name] = int(state.get("seq", 0))
                if isinstance(state.get("last_due"), (int, float)):
                    self.last_due[name] = float(state["last_due"])
                for rec in state.get("live", []):
                    self._adopt(name, rec, wall, now)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                self.events.emit("state.ignored", level="warning", path=str(self.state_file), job=name,
                                 reason=f"its record is unreadable ({type(exc).__name__}: {exc})")

    def _adopt(self, name: str, rec: dict[str, Any], wall: float, now: float) -> None:
        pid, recorded = int(rec["pid"]), rec.get("start_time")
        actual = self.runner.start_time(pid)
        run = int(rec["run"])
        if actual is None or recorded is None or abs(actual - float(recorded)) > START_TIME_SLACK:
            why = "its process is gone" if actual is None else "its pid is another process now"
            self._remember(name, {**rec, "outcome": "unknown", "returncode": None, "duration": None,
                                  "note": f"ended while no daemon watched it ({why})"})
            self.events.emit("job.lost", level="warning", process=name, run=run, pid=pid, reason=why)
            return
        try:
            handle = self.runner.adopt(pid)
        except OSError as exc:
            self.events.emit("job.adopt_failed", level="error", process=name, run=run, pid=pid, error=str(exc))
            return
        started_wall = float(rec.get("started") or wall)
        r = Run(name, run, pid, now - max(0.0, wall - started_wall), started_wall, rec.get("due"),
                str(rec.get("why", "schedule")), str(rec.get("log", self.log_path(name))),
                int(rec.get("log_offset", 0)), str(rec.get("folder", "")), start_time=actual, adopted=True)
        self.live.setdefault(name, {})[run] = r
        self.handles[(name, run)] = handle
        self.runner.watch(handle, lambda rc, n=name, k=run, h=handle: self._exited(n, k, h, rc))
        self.events.emit("job.adopted", process=name, run=run, pid=pid,
                         running_for=round(wall - started_wall, 3))

    # ---- the loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def begin(self) -> None:
        """Start scheduling: each job's missed runs are counted (and one run with catch_up),
        the first due time is the next one from now (never at once, unlike PM2's cron)."""
        if self.started:
            return
        self.started = True
        wall = self.clock.wall()
        for name in self.spec.processes:
            self._follow(name, wall)
        self.events.emit("jobs.starting", jobs={n: self._when(n) for n in sorted(self.spec.processes)})
        self._save()
        self.wake()

    def _when(self, name: str) -> str:
        t = self.spec.processes[name]
        return f"schedule {t.schedule}" if t.schedule else f"every {t.every}"

    def _follow(self, name: str, wall: float) -> None:
        """A job seen for the first time (at start or added by a reload): where it stands."""
        policy = self.policy(name)
        last = self.last_due.get(name)
        n, latest = jp.missed(policy, last, wall)
        if n:
            self.events.emit("job.missed", level="warning", process=name, missed=n,
                             latest=round(latest, 3), catch_up=policy.catch_up,
                             note="one run now (catch_up: true)" if policy.catch_up else
                             "skipped (catch_up: false)")
            if policy.catch_up:
                self.requested[name] = "catch_up"
        self.last_due[name] = wall if last is None or n else last

    async def run(self, web_ready: asyncio.Event) -> None:
        while not web_ready.is_set():     # jobs start with the application, once the web fleet serves
            self.beat()
            try:
                await asyncio.wait_for(web_ready.wait(), IDLE_WAIT)
            except TimeoutError:
                pass
        self.begin()
        while True:
            delay = self.step()
            self.beat()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(IDLE_WAIT, max(0.0, delay)))
            except TimeoutError:
                pass

    def step(self) -> float:
        """Act on what is due now; the seconds until something else is."""
        wall, now = self.clock.wall(), self.clock.now()
        spec = self.spec
        waits = [IDLE_WAIT]
        for name in sorted(set(spec.processes) | set(self.live)):
            policy = self.policy(name)
            live = self.live.get(name, {})
            to_stop, to_kill = jp.overdue(policy, [r.live() for r in live.values()], now)
            for k in to_stop:
                self._stop(live[k], policy, "timed_out", f"still running at its timeout ({policy.timeout:g}s)")
            for k in to_kill:
                self._kill(live[k])
            if name not in spec.processes or not self.started or self.shutting_down:
                continue
            if name not in self.last_due:
                self._follow(name, wall)
            self._clock_back(name, policy, wall)
            due = policy.next_due(self.last_due[name])
            if due <= wall:
                n, latest = jp.missed(policy, self.last_due[name], wall)
                if n > 1:   # the daemon was held up (a stopped host): the latest counts, the rest are said
                    self.events.emit("job.missed", level="warning", process=name, missed=n - 1,
                                     latest=round(latest, 3), note="skipped: the loop ran late")
                self.last_due[name] = latest if latest is not None else due
                self._when_met(name, policy, self.last_due[name], "schedule")
            if name in self.requested:
                why = self.requested.pop(name)
                if why == "replace_waiting":
                    self._due(name, policy, None, why)
                else:
                    self._when_met(name, policy, None, why)
            waits.append(policy.next_due(self.last_due[name]) - wall)
            wake = jp.next_wakeup(policy, [r.live() for r in self.live.get(name, {}).values()])
            if wake is not None:
                waits.append(wake - now)
        return min(waits)

    def _when_met(self, name: str, policy: jp.JobPolicy, due: float | None, why: str) -> None:
        """A run that is due: at once for a job without `requires`; else once each address
        accepted a TCP connection (connected at the due time, in parallel), or skipped with a
        `job.skipped` naming the ones that did not."""
        t = self.spec.processes.get(name)
        if t is None or not t.requires:
            self._due(name, policy, due, why)
            return

        async def check() -> None:
            async def one(address: str) -> tuple[str, CheckResult]:
                host, port = readiness.tcp_address(address)
                try:
                    return address, await self.runner.tcp_check(host, port, CONNECT_TIMEOUT)
                except OSError as exc:
                    return address, CheckResult(False, exc.strerror or str(exc))
            answers = await asyncio.gather(*(one(a) for a in t.requires))
            if self.shutting_down or name not in self.spec.processes:
                return
            down = [f"{a} ({r.detail})" for a, r in answers if not r.ok]
            self.down[name] = [a for a, r in answers if not r.ok]
            if down:
                self.events.emit("job.skipped", level="warning", process=name, due=due, why=why,
                                 reason="requires " + ", ".join(down), waiting_for=self.down[name])
                self._save()
            else:
                self._due(name, policy, due, why)
            self.wake()
        task = asyncio.get_running_loop().create_task(check(), name=f"jobs-requires-{name}")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def _clock_back(self, name: str, policy: jp.JobPolicy, wall: float) -> None:
        """The wall clock went back (an NTP step, a restored VM): by less than the job's period,
        its next run stays where it was (nothing runs twice); by more, the schedule starts again
        from now, instead of waiting for the clock to come back to the last due time."""
        last = self.last_due[name]
        if last - wall > max(1.0, policy.next_due(last) - last):
            self.events.emit("job.clock_back", level="warning", process=name, by=round(last - wall, 3),
                             note="the wall clock went back past the last due time: scheduling from now")
            self.last_due[name] = wall

    def _due(self, name: str, policy: jp.JobPolicy, due: float | None, why: str) -> None:
        live = self.live.get(name, {})
        elsewhere = policy.singleton and not live and self.locks.held(self.lock_path(name))
        if why.startswith("replace_waiting:"):   # a replaced run was stopped: start the new one once it is gone
            if not live and not elsewhere:
                self._start(name, policy, due, why.split(":", 1)[1])
            else:
                self.requested[name] = why
            return
        action, reason = jp.on_due(policy, [r.live() for r in live.values()], elsewhere)
        if action == "start":
            self._start(name, policy, due, why)
        elif action == "replace":
            for r in list(live.values()):
                self._stop(r, policy, "replaced", reason)
            self.requested[name] = f"replace_waiting:{why}"
        else:
            self.events.emit("job.skipped", level="warning", process=name, due=due, why=why, reason=reason)
            self._save()

    def _start(self, name: str, policy: jp.JobPolicy, due: float | None, why: str) -> None:
        spec = self.spec
        t = spec.processes[name]
        run = self.seq.get(name, 0) + 1
        cwd = t.directory or self.directory()
        log = self.log_path(name)
        fd = None
        try:
            if policy.singleton:
                fd = self.locks.take(self.lock_path(name))
                if fd is None:
                    self.events.emit("job.skipped", level="warning", process=name, due=due, why=why,
                                     reason="a run holds the job's lock")
                    return
            offset = self.runner.log_size(log)
            if offset >= spec.logs.max_bytes and not self.live.get(name):   # between runs: no writer
                self.runner.rotate_log(log, spec.logs.backups)
                offset = 0
            handle = self.runner.spawn(list(t.command), command.process_env(spec, name, run), cwd, log,
                                       pass_fds=(fd,) if fd is not None else ())
        except OSError as exc:
            detail = f"{exc.strerror or exc}" + (f": {exc.filename!r}" if getattr(exc, "filename", None) else "")
            self.seq[name] = run
            self._remember(name, {"run": run, "pid": None, "started": self.clock.wall(), "due": due,
                                  "why": why, "log": log, "log_offset": None, "duration": 0.0,
                                  "returncode": None, "outcome": "spawn_failed", "note": detail})
            self.events.emit("job.spawn_failed", level="error", process=name, run=run,
                             program=t.command[0], cwd=cwd, error=detail)
            self.alerts.fire("job_failed", f"{name} run {run} could not start: {detail}", process=name)
            self._save()
            return
        finally:
            if fd is not None:
                self.locks.release(fd)   # the run's copy holds the lock now
        self.seq[name] = run
        r = Run(name, run, handle.pid, self.clock.now(), self.clock.wall(), due, why, log, offset, cwd,
                start_time=self.runner.start_time(handle.pid))
        self.live.setdefault(name, {})[run] = r
        self.handles[(name, run)] = handle
        self.runner.watch(handle, lambda rc, n=name, k=run, h=handle: self._exited(n, k, h, rc))
        late = None if due is None else round(r.started_wall - due, 3)
        self.events.emit("job.started", process=name, run=run, pid=handle.pid, why=why, due=due, late=late, log=log)
        self._save()

    def _stop(self, r: Run, policy: jp.JobPolicy, reason: str, detail: str) -> None:
        if r.stop_deadline is not None:
            return
        r.stop_deadline, r.stop_reason = self.clock.now() + policy.graceful_timeout, reason
        self.events.emit("job.stopping", level="warning", process=r.job, run=r.run, pid=r.pid,
                         reason=detail, signal=signal.Signals(policy.stop_signal).name,
                         graceful_timeout=policy.graceful_timeout)
        handle = self.handles.get((r.job, r.run))
        if handle is not None:
            try:
                self.runner.signal(handle, policy.stop_signal)
            except OSError as exc:
                self.events.emit("job.signal_failed", level="warning", process=r.job, run=r.run, error=str(exc))

    def _kill(self, r: Run) -> None:
        if r.killed:
            return
        r.killed = True
        self.events.emit("job.killed", level="warning", process=r.job, run=r.run, pid=r.pid,
                         signal="SIGKILL", reason="still running at its graceful_timeout")
        handle = self.handles.get((r.job, r.run))
        try:
            self.runner.kill_group(handle.pgid if handle is not None else r.pid, signal.SIGKILL)
        except OSError as exc:
            self.events.emit("job.signal_failed", level="error", process=r.job, run=r.run, error=str(exc))

    def _exited(self, name: str, run: int, handle: Handle, returncode: int | None) -> None:
        if self.handles.get((name, run)) is not handle:
            return
        del self.handles[(name, run)]
        try:
            self.runner.unwatch(handle)
        except OSError:
            pass
        try:   # what the run left in its session
            if self.runner.group_alive(handle.pgid):
                self.runner.kill_group(handle.pgid, signal.SIGKILL)
        except OSError:
            pass
        r = self.live.get(name, {}).pop(run, None)
        if r is None:
            return
        if not self.live.get(name):
            self.live.pop(name, None)
        outcome = jp.outcome(returncode, r.stop_reason)
        duration = round(self.clock.now() - r.started, 3)
        self._remember(name, {**r.record(), "duration": duration, "returncode": returncode,
                              "outcome": outcome, "adopted": r.adopted})
        level = "error" if outcome in ("failed", "timed_out") else "info"
        self.events.emit("job.finished", level=level, process=name, run=run, pid=r.pid, outcome=outcome,
                         returncode=returncode, duration=duration)
        if outcome in ("failed", "timed_out"):
            what = f"exited with {returncode}" if outcome == "failed" else "timed out"
            self.alerts.fire("job_failed", f"{name} run {run} {what} (log {r.log} from byte {r.log_offset})",
                             process=name)
        elif outcome == "succeeded":
            self.alerts.resolve("job_failed", f"{name} run {run} succeeded", process=name)
        self._save()
        self.wake()

    def _remember(self, name: str, entry: dict[str, Any]) -> None:
        counts = self.outcomes.setdefault(name, {})
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        if entry["outcome"] == "succeeded":
            self.last_success[name] = self.clock.wall()
        keep = self.policy(name).history
        self.history[name] = (self.history.get(name, []) + [entry])[-keep:]

    def _save(self) -> None:
        names = set(self.history) | set(self.live) | set(self.last_due) | set(self.seq)
        data = {"version": STATE_VERSION, "jobs": {n: {
            "last_due": self.last_due.get(n), "seq": self.seq.get(n, 0),
            "live": [r.record() for _, r in sorted(self.live.get(n, {}).items())],
            "history": self.history.get(n, [])} for n in sorted(names)}}
        try:
            write_atomic(str(self.state_file), json.dumps(data, sort_keys=True).encode())
        except OSError as exc:   # the lock still keeps a run single; the history may be lost
            self.events.emit("state.write_failed", level="error", path=str(self.state_file), error=str(exc))

    def folders_in_use(self) -> set[str]:
        """The folders runs going were started in (a release a deploy must not prune)."""
        return {r.folder for live in self.live.values() for r in live.values() if r.folder}

    # ---- what the operator asks ---------------------------------------------------------------

    def run_now(self, name: str) -> dict[str, Any]:
        """`POST /jobs/{name}/run`: a run now, as `concurrency` allows (raises ScaleRefused)."""
        spec = self.spec
        if name not in spec.processes:
            known = ", ".join(sorted(spec.processes)) or "none"
            raise ScaleRefused("not_found", f"no job {name!r} (jobs: {known})")
        if self.shutting_down:
            raise ScaleRefused("shutting_down", "the daemon is stopping; no job starts")
        policy = self.policy(name)
        live = self.live.get(name, {})
        elsewhere = policy.singleton and not live and self.locks.held(self.lock_path(name))
        action, reason = jp.on_due(policy, [r.live() for r in live.values()], elsewhere)
        if action == "skip":
            raise ScaleRefused("job_running", f"{name}: {reason}; nothing started")
        self.requested[name] = "operator"
        self.events.emit("job.requested", process=name, action=action, reason=reason)
        self.wake()
        return {"job": name, "run": self.seq.get(name, 0) + 1, "action": action}

    # ---- shutdown -----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        for task in list(self._checks):
            task.cancel()
        self.wake()

    async def stop_all(self, margin: float = 5.0) -> None:
        """Every run stopped: stop_signal, SIGKILL at graceful_timeout, and `margin` after that
        the daemon goes whatever is left."""
        self.begin_shutdown()
        for name, live in list(self.live.items()):
            for r in list(live.values()):
                self._stop(r, self.policy(name), "stopped", "the daemon is stopping")
        longest = max((self.policy(n).graceful_timeout for n in self.live), default=0.0)
        try:
            async with asyncio.timeout(longest + margin):
                while self.live:
                    self.step()
                    await asyncio.sleep(0.05)
        except TimeoutError:
            self.events.emit("jobs.stop_timeout", level="error",
                             left=[f"{n}/{k}" for n, live in self.live.items() for k in live])

    # ---- what the API reads -------------------------------------------------------------------

    def _live_view(self, r: Run, now: float) -> dict[str, Any]:
        return {"index": r.run, "run": r.run, "pid": r.pid, "state": "stopping" if r.stop_deadline else "running",
                "uptime": round(now - r.started, 3), "restarts": 0, "reason": r.stop_reason or "",
                "adopted": r.adopted, "log": r.log}

    def snapshot(self) -> dict[str, Any]:
        """`GET /processes`' job types: kind, the runs going as its instances, the next due."""
        now = self.clock.now()
        out = {}
        for name in sorted(set(self.spec.processes) | set(self.live)):
            runs = [self._live_view(r, now) for _, r in sorted(self.live.get(name, {}).items())]
            out[name] = {"kind": "job", "desired": 0, "ready": len(runs), "min": 0, "max": 0,
                         "waiting_for": list(self.down.get(name, [])), "instances": runs, **self._summary(name)}
        return out

    def _summary(self, name: str) -> dict[str, Any]:
        t = self.spec.processes.get(name)
        last = self.history.get(name, [])[-1:] or [None]
        nxt = None
        if t is not None and self.started and not self.shutting_down and name in self.last_due:
            nxt = round(self.policy(name).next_due(self.last_due[name]), 3)
        return {"schedule": t.schedule if t else None, "every": t.every if t else None,
                "concurrency": t.concurrency if t else None, "next_run": nxt, "last_run": last[0]}

    def listing(self) -> dict[str, Any]:
        """`GET /jobs`: each job, its schedule, next and last run and the runs going."""
        now = self.clock.now()
        return {name: {**self._summary(name), "running": [self._live_view(r, now) for _, r in
                                                         sorted(self.live.get(name, {}).items())]}
                for name in sorted(set(self.spec.processes) | set(self.live))}

    def figures(self) -> dict[str, dict[str, Any]]:
        """What /metrics says of each job (observe/metrics.py process_families)."""
        out = {}
        for name in sorted(set(self.spec.processes) | set(self.outcomes)):
            last = (self.history.get(name) or [{}])[-1]
            out[name] = {"outcomes": dict(self.outcomes.get(name, {})), "last_success": self.last_success.get(name),
                         "last_duration": last.get("duration"), "next_run": self._summary(name)["next_run"]}
        return out

    def runs(self, name: str) -> list[dict[str, Any]]:
        """`GET /jobs/{name}/runs`: the runs going, then the history, newest first."""
        if name not in self.spec.processes and name not in self.live and name not in self.history:
            known = ", ".join(sorted(self.spec.processes)) or "none"
            raise ScaleRefused("not_found", f"no job {name!r} (jobs: {known})")
        now = self.clock.now()
        going = [{**r.record(), "outcome": "running", "duration": round(now - r.started, 3),
                  "returncode": None, "adopted": r.adopted} for _, r in sorted(self.live.get(name, {}).items())]
        return list(reversed(self.history.get(name, []))) if not going else \
            list(reversed(going)) + list(reversed(self.history.get(name, [])))

