"""Guarded background tasks: every long-running loop of the daemon is started here, by name.

A task that dies is reported at once (event and alert) and restarted with growing backoff; a
task that beats (`beat(name)`) and then falls silent past its interval is *stalled*. Either
way `problems()` names it: `/health` turns 503 with that text and the systemd watchdog ping
stops, so systemd restarts the daemon, which adopts the fleet. (kopf's guarded tasks and
systemd's `WatchdogSec=` are the models.)
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable


@dataclass
class _Task:
    name: str
    factory: Callable[[], Awaitable[Any]]
    interval: float | None               # expected time between beats; None: not watched
    task: asyncio.Task | None = None
    last_beat: float = 0.0
    crashes: int = 0
    dead_since: float | None = None
    error: str = ""
    restart_at: float = 0.0
    restarter: asyncio.Task | None = field(default=None, repr=False)


class TaskGuard:
    BACKOFF_INITIAL = 1.0
    BACKOFF_MAX = 30.0

    def __init__(self, emit: Callable[..., Any], clock: Callable[[], float] = time.monotonic,
                 alerts: Any = None):
        self.emit = emit
        self.clock = clock
        self.alerts = alerts            # has fire(name, message, **fields) / resolve(name, **fields)
        self._tasks: dict[str, _Task] = {}
        self._stopping = False

    def start(self, name: str, factory: Callable[[], Awaitable[Any]], interval: float | None = None) -> None:
        """Run `factory()` as task `name`; `interval`: it calls beat(name) at least that often."""
        t = self._tasks[name] = _Task(name, factory, interval, last_beat=self.clock())
        self._launch(t)

    def _launch(self, t: _Task) -> None:
        t.last_beat = self.clock()
        t.task = asyncio.get_running_loop().create_task(self._run(t), name=t.name)

    async def _run(self, t: _Task) -> None:
        try:
            await t.factory()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a dead loop must be loud, then restarted
            self._died(t, f"{type(exc).__name__}: {exc}")
            return
        if not self._stopping:
            self._died(t, "returned (a background loop must not end)")

    def _died(self, t: _Task, error: str) -> None:
        t.crashes += 1
        t.error = error
        now = self.clock()
        t.dead_since = now
        delay = min(self.BACKOFF_MAX, self.BACKOFF_INITIAL * 2 ** min(t.crashes - 1, 16))
        t.restart_at = now + delay
        self.emit("daemon.task_crashed", level="error", task=t.name, error=error, crashes=t.crashes,
                  restart_in=delay)
        if self.alerts is not None:
            self.alerts.fire("task_crashed", f"background task {t.name} died: {error}; restarting "
                             f"in {delay:g}s", task=t.name)
        if not self._stopping:
            t.restarter = asyncio.get_running_loop().create_task(self._restart_later(t, delay),
                                                                 name=f"restart-{t.name}")

    async def _restart_later(self, t: _Task, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping:
            return
        self.emit("daemon.task_restarted", level="warning", task=t.name, crashes=t.crashes)
        t.dead_since = None
        self._launch(t)

    def beat(self, name: str) -> None:
        t = self._tasks.get(name)
        if t is None:
            return
        t.last_beat = self.clock()
        if t.crashes and t.error and self.alerts is not None:
            self.alerts.resolve("task_crashed", task=name)
            t.error = ""

    def problems(self) -> list[str]:
        """What is dead or late, for /health and the watchdog ping; [] when all is well."""
        now = self.clock()
        out = []
        for t in self._tasks.values():
            if t.dead_since is not None:
                out.append(f"task {t.name} is dead ({t.error}); restarting in "
                           f"{max(0.0, t.restart_at - now):.1f}s")
            elif t.interval is not None:
                late = now - t.last_beat
                allowed = max(3 * t.interval, t.interval + 5.0)
                if late > allowed:
                    out.append(f"task {t.name} is stalled: no progress for {late:.1f}s "
                               f"(expected every {t.interval:g}s)")
        return out

    def names(self) -> list[str]:
        return sorted(self._tasks)

    async def stop(self) -> None:
        self._stopping = True
        tasks = []
        for t in self._tasks.values():
            for task in (t.task, t.restarter):
                if task is not None and not task.done():
                    task.cancel()
                    tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
