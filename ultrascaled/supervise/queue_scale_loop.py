"""The worker types' autoscaler on queue depth: every `processes.NAME.autoscale.interval` seconds,
read the depth of the type's Redis list (effects/queue_depth.py, behind the `depth` seam),
decide with the web fleet's algorithm (core/queue_scale.py over core/autoscale.py) and apply a
change through `WorkersLoop.scale(name, n, source="autoscale")`, the path `ultrascalectl scale
NAME=N` takes. It changes nothing but the wanted count; the workers loop starts and stops.

* An operator's `scale NAME=N` pauses the type's autoscaling until `ultrascalectl autoscale
  resume NAME` (as `scale N` does the web fleet's); the pause survives a daemon restart
  (`<paths.state_dir>/autoscale-processes.json`).
* A queue that cannot be read holds the count: one `process.autoscale_unreachable` warning per
  outage (not one per read), the `queue_unreachable` alert once it lasts
  (queue_scale.unreachable_alert_after), `process.autoscale_reachable` and the alert resolved
  when it answers again.
* Events: `process.autoscale` for every scale, and for a hold when its reason changes (again
  every REPEAT_EVERY seconds while it lasts, except `steady`), with the depth, the decision and
  why. `GET /autoscale` (`processes`) and `GET /processes` (each type's `autoscale`) show the
  last decision.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from ultrascaled.core import autoscale as core
from ultrascaled.core import queue_scale as qs
from ultrascaled.core.control import ScaleRefused
from ultrascaled.core.states import State as S
from ultrascaled.effects.files import write_atomic
from ultrascaled.spec.queue import list_name, mask_url, scrub

Depth = Callable[[str, str], Awaitable[int]]
HISTORY = 20
REPEAT_EVERY = 30.0
IDLE = 1.0            # the loop looks (and beats) at least this often
ALERT = "queue_unreachable"


@dataclasses.dataclass
class TypeState:
    state: core.State = dataclasses.field(default_factory=core.State)
    next_at: float = -math.inf
    last: Optional[dict] = None
    depth: Optional[int] = None
    decisions: deque = dataclasses.field(default_factory=lambda: deque(maxlen=HISTORY))
    down_since: Optional[float] = None      # the queue unreadable since (monotonic)
    alerted: bool = False
    emitted: tuple[str, float] = ("", -math.inf)


class QueueScaler:
    def __init__(self, workers: Any, events: Any, clock: Any, alerts: Any, state_dir: Path,
                 depth: Optional[Depth] = None):
        self.workers = workers
        self.events = events
        self.clock = clock
        self.alerts = alerts
        self.pause_file = Path(state_dir) / "autoscale-processes.json"
        if depth is None:
            from ultrascaled.effects.queue_depth import RedisDepth
            depth = RedisDepth()
        self.depth = depth
        self.types: dict[str, TypeState] = {}
        self._loaded = False

    def autoscaled(self) -> dict[str, Any]:
        """The worker types with `autoscale.queue` set, name -> ProcessType."""
        return {n: t for n, t in self.workers.spec.processes.items() if t.autoscale.enabled}

    def _of(self, name: str) -> TypeState:
        if not self._loaded:
            self._load_pauses()
        ts = self.types.get(name)
        if ts is None:
            ts = self.types[name] = TypeState()
        return ts

    # ---- the operator's side --------------------------------------------------------------------

    def manual_scale(self, name: str, n: int) -> Optional[str]:
        t = self.autoscaled().get(name)
        if t is None:
            return None
        ts = self._of(name)
        ts.state, note = qs.manual_scale(ts.state, True, self.clock.now(), name, n)
        if note is not None:
            self._save_pauses()
            self.events.emit("process.autoscale_paused", process=name, reason=ts.state.paused_reason)
        return note

    def resume(self, name: str) -> dict:
        """Raises KeyError for a type that does not autoscale on a queue."""
        if name not in self.autoscaled():
            raise KeyError(name)
        ts = self._of(name)
        was = ts.state.paused(self.clock.now())
        ts.state = core.resume(ts.state)
        ts.next_at = -math.inf          # decide at once
        self._save_pauses()
        self.events.emit("process.autoscale_resumed", process=name, was_paused=was)
        return self.status_of(name)

    def status(self) -> dict[str, dict]:
        return {name: self.status_of(name) for name in self.autoscaled()}

    def status_of(self, name: str) -> dict:
        t = self.autoscaled()[name]
        a = t.autoscale
        ts = self._of(name)
        lo, hi = a.bounds(t)
        now = self.clock.now()
        paused = ts.state.paused(now)
        return {"queue": {"redis": mask_url(a.queue.redis), "list": list_name(a.queue)},
                "target": a.target, "min": lo, "max": hi, "interval": a.interval,
                "current": self.workers.desired.get(name, t.count), "running": self._running(name),
                "queue_depth": ts.depth, "reachable": ts.down_since is None,
                "paused": paused, "paused_reason": ts.state.paused_reason if paused else "",
                "last": ts.last, "decisions": list(ts.decisions)}

    def _save_pauses(self) -> None:
        now = self.clock.now()
        data = {n: ts.state.paused_reason for n, ts in self.types.items()
                if ts.state.paused(now) and ts.state.paused_until == math.inf}
        try:
            write_atomic(str(self.pause_file), json.dumps({"paused": data}, sort_keys=True).encode())
        except OSError as exc:
            self.events.emit("state.write_failed", level="error", path=str(self.pause_file),
                             error=str(exc))

    def _load_pauses(self) -> None:
        self._loaded = True
        try:
            data = json.loads(self.pause_file.read_text())
            paused = data["paused"]
            if not isinstance(paused, dict):
                raise ValueError("`paused` is not a mapping")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.events.emit("state.ignored", level="warning", path=str(self.pause_file),
                             reason=f"unreadable ({type(exc).__name__}: {exc}); no type's "
                                    "autoscaling is paused")
            return
        for name, reason in paused.items():
            if isinstance(name, str):
                ts = self.types.setdefault(name, TypeState())
                ts.state = core.pause(ts.state, self.clock.now(), None, str(reason)[:200])

    # ---- the loop ---------------------------------------------------------------------------------

    def _running(self, name: str) -> int:
        return sum(1 for (n, _), s in self.workers.slots.items() if n == name and s.state is S.RUNNING)

    async def step(self) -> float:
        """Decide for each type that is due; the next time one is."""
        types = self.autoscaled()
        for name in [n for n in self.types if n not in types]:
            ts = self.types.pop(name)
            if ts.alerted:
                self.alerts.resolve(ALERT, f"{name} no longer autoscales on a queue", process=name)
        next_at = self.clock.now() + IDLE
        if not self.workers.started or self.workers.shutting_down:
            return next_at
        for name, t in types.items():
            ts = self._of(name)
            if self.clock.now() >= ts.next_at:
                await self.tick(name)
                ts.next_at = self.clock.now() + t.autoscale.interval
            next_at = min(next_at, ts.next_at)
        return next_at

    async def run(self, beat: Callable[[], None] = lambda: None) -> None:
        while True:
            next_at = await self.step()
            beat()
            await asyncio.sleep(max(0.01, min(IDLE, next_at - self.clock.now())))

    async def _read(self, name: str, a: Any) -> tuple[Optional[int], str]:
        try:
            depth = await self.depth(a.queue.redis, list_name(a.queue))
            return int(depth), ""
        except Exception as exc:  # noqa: BLE001 - any failure to read is an unreadable queue
            return None, scrub(f"{type(exc).__name__}: {exc}", a.queue.redis)[:300]

    async def tick(self, name: str) -> Optional[core.Decision]:
        t = self.autoscaled().get(name)
        if t is None:
            return None
        a = t.autoscale
        ts = self._of(name)
        depth, error = await self._read(name, a)
        now = self.clock.now()
        self._reachability(name, a, ts, depth, error, now)
        current = self.workers.desired.get(name, t.count)
        running = self._running(name)
        decision, state = qs.decide(ts.state, depth, running, current, a, a.bounds(t), now)
        if depth is None and not ts.state.paused(now):
            decision = dataclasses.replace(decision, reason=f"held: the queue cannot be read "
                                           f"({error}); the count stays")
        if decision.action != "hold":
            try:
                self.workers.scale(name, decision.desired, source="autoscale")
            except ScaleRefused as exc:
                decision = dataclasses.replace(decision, action="hold", desired=current,
                                               reason=f"held: the scale to {decision.desired} was "
                                                      f"refused ({exc.code}): {exc}")
                state = dataclasses.replace(ts.state, started=state.started,
                                            followed_since=state.followed_since, seen=state.seen,
                                            left_out=state.left_out)
        ts.state, ts.depth = state, depth
        record = {"time": round(self.clock.wall(), 3), "action": decision.action,
                  "current": decision.current, "desired": decision.desired, "queue_depth": depth,
                  "running": running, "target": a.target,
                  "recommendation": decision.recommendation, "reason": decision.reason}
        ts.last = record
        ts.decisions.append(record)
        self._emit(name, ts, decision, record, now)
        return decision

    def _reachability(self, name: str, a: Any, ts: TypeState, depth: Optional[int], error: str,
                      now: float) -> None:
        where = {"process": name, "redis": mask_url(a.queue.redis), "list": list_name(a.queue)}
        if depth is None:
            if ts.down_since is None:
                ts.down_since = now
                self.events.emit("process.autoscale_unreachable", level="warning", **where,
                                 error=error, effect="the count is held until the queue answers")
            elif not ts.alerted and now - ts.down_since >= qs.unreachable_alert_after(a):
                ts.alerted = True
                self.alerts.fire(ALERT, f"{name}'s queue {list_name(a.queue)} at "
                                 f"{mask_url(a.queue.redis)} cannot be read for "
                                 f"{now - ts.down_since:.0f}s ({error}); its count is held",
                                 process=name)
            return
        if ts.down_since is not None:
            self.events.emit("process.autoscale_reachable", **where,
                             seconds=round(now - ts.down_since, 3))
            if ts.alerted:
                self.alerts.resolve(ALERT, f"{name}'s queue answers again", process=name)
            ts.down_since, ts.alerted = None, False

    def _emit(self, name: str, ts: TypeState, d: core.Decision, record: dict, now: float) -> None:
        key = d.action + ":" + re.sub(r"[-+]?\d[\d.]*", "#", d.reason.split(" (")[0])
        last_key, last_at = ts.emitted
        if d.action == "hold" and key == last_key and (
                d.reason.startswith("steady") or now - last_at < REPEAT_EVERY):
            return
        ts.emitted = (key, now)
        fields = {k: v for k, v in record.items() if k != "time"}
        level = "warning" if "cannot be read" in d.reason or "refused" in d.reason else "info"
        self.events.emit("process.autoscale", level=level, process=name, **fields)

    def close(self) -> None:
        close = getattr(self.depth, "close", None)
        if close is not None:
            close()
