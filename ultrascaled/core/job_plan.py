"""Decisions for the job types (`processes:` entries of `kind: job`): pure.

A job is due at the times its `schedule` or `every` names (spec/jobs.py). When it is due,
`on_due` says what its `concurrency` makes of the runs still going; `missed` counts the due
times that passed while no daemon ran; `overdue` names the runs past their `timeout` or their
stop deadline. Nothing here reads a clock or touches a process: supervise/jobs_loop.py does both.
Due times are wall time (a schedule is about the clock people read); timeouts and stop deadlines
are monotonic.

    due ─► start ─► RUNNING ─exit 0─► succeeded
             │          ├─exit ≠ 0─► failed            (the job_failed alert)
             │          ├─timeout─► STOPPING ─exit─► timed_out (SIGKILL at graceful_timeout)
             │          └─due under `replace`─► STOPPING ─exit─► replaced, then the new run
             └─ a run still going under `forbid` (or `allow` at ALLOW_MAX): skipped
"""
from __future__ import annotations

import signal as _signal
from dataclasses import dataclass
from typing import Iterable

from ultrascaled.spec import jobs as schedule
from ultrascaled.spec.schema import ProcessType

ALLOW_MAX = 16        # runs of one job at once under `concurrency: allow`
MISSED_COUNT_MAX = 10_000


@dataclass(frozen=True)
class JobPolicy:
    schedule: str | None = None
    every: float | None = None
    concurrency: str = "forbid"
    timeout: float | None = None
    catch_up: bool = False
    history: int = 20
    stop_signal: int = int(_signal.SIGTERM)
    graceful_timeout: float = 30.0

    @classmethod
    def of(cls, t: ProcessType) -> "JobPolicy":
        return cls(schedule=t.schedule, every=schedule.every_seconds(t.every) if t.every else None,
                   concurrency=t.concurrency, timeout=t.timeout, catch_up=t.catch_up, history=t.history,
                   stop_signal=int(getattr(_signal, "SIG" + t.stop_signal)),
                   graceful_timeout=t.graceful_timeout)

    @property
    def singleton(self) -> bool:
        """One run at a time on the host (a lock the run holds says so, daemon or not)."""
        return self.concurrency != "allow"

    def next_due(self, after: float) -> float:
        return schedule.next_after(after, self.schedule, self.every)


@dataclass(frozen=True)
class LiveRun:
    """What `on_due` and `overdue` need of a run still going."""
    run: int
    started: float                   # monotonic
    stop_deadline: float | None = None


def on_due(policy: JobPolicy, live: list[LiveRun], lock_held_elsewhere: bool) -> tuple[str, str]:
    """(`start` | `skip` | `replace`, why). `lock_held_elsewhere`: the job's lock is held by a
    process this daemon does not know (a run whose record was lost with a killed daemon)."""
    if policy.concurrency == "allow":
        if len(live) >= ALLOW_MAX:
            return "skip", f"{len(live)} runs still going (concurrency: allow runs at most {ALLOW_MAX})"
        return "start", "due"
    if lock_held_elsewhere and not live:
        return "skip", "a run holds the job's lock, not one this daemon started or adopted"
    if not live:
        return "start", "due"
    if policy.concurrency == "replace":
        return "replace", f"run {live[-1].run} still going: replaced (concurrency: replace)"
    return "skip", f"run {live[-1].run} still going (concurrency: forbid)"


def missed(policy: JobPolicy, last_due: float | None, now: float) -> tuple[int, float | None]:
    """Due times in (last_due, now]: how many (counted up to MISSED_COUNT_MAX) and the latest."""
    if last_due is None:
        return 0, None
    n, latest, t = 0, None, last_due
    while n < MISSED_COUNT_MAX:
        t = policy.next_due(t)
        if t > now:
            break
        n, latest = n + 1, t
    return n, latest


def overdue(policy: JobPolicy, live: Iterable[LiveRun], now: float) -> tuple[list[int], list[int]]:
    """(runs past their timeout, to stop; stopping runs past their deadline, to SIGKILL)."""
    stop, kill = [], []
    for r in live:
        if r.stop_deadline is not None:
            if now >= r.stop_deadline:
                kill.append(r.run)
        elif policy.timeout is not None and now - r.started >= policy.timeout:
            stop.append(r.run)
    return stop, kill


def next_wakeup(policy: JobPolicy, live: Iterable[LiveRun]) -> float | None:
    """The monotonic time a timeout or a stop deadline of a live run falls due."""
    times = [r.stop_deadline if r.stop_deadline is not None else
             r.started + policy.timeout if policy.timeout is not None else None for r in live]
    times = [t for t in times if t is not None]
    return min(times) if times else None


def outcome(returncode: int | None, reason: str | None) -> str:
    """How a run ended, for its history: `reason` is why the daemon stopped it, if it did."""
    if reason:
        return reason                       # timed_out, replaced, stopped
    if returncode is None:
        return "unknown"                    # adopted: its exit code went to the daemon that started it
    return "succeeded" if returncode == 0 else "failed"
