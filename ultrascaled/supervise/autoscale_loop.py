"""The autoscaler's loop: measure the signals, call the pure decision (ultrascaled/core/autoscale.py),
apply a change through the same path as `ultrascalectl scale` (so every budget vetoes it), and
tell the operator (events, `GET /autoscale`, `/metrics`).

It runs under the daemon's TaskGuard like the other loops (a dead or stalled autoscaler turns
/health 503) and changes nothing but the desired count. Where the signals come from:

* CPU per worker: the CPU seconds of each instance's processes, as the daemon's sampler reads
  them with psutil every `memory.sample_interval`; an instance whose sample did not move since
  the last tick is not fresh (a dead sampler reads as a missing signal, never as idle).
* In-flight requests and the p95 latency: the app's own metrics (`ultrascale_http_requests_in_
  flight`, `ultrascale_http_request_duration_seconds`) read from each ready instance's
  prometheus_client folder, as `/metrics` reads them. When nginx's traffic log is on (the
  daemon passes `Supervisor.traffic`, ultrascaled/observe/accesslog.py), the p95 comes from nginx
  instead: it includes the time a request waits for an instance.
* Run-queue wait per worker (`cpu_wait_percent`): /proc/PID/schedstat of each ready
  instance's processes, read at each decision.
* The host's CPU: psutil.cpu_percent over the tick; the fleet's own share of it (the host CPU
  guard, core.autoscale.host_saturated) from the same CPU seconds as `cpu_utilization`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import stat
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import psutil

from ultrascaled.core import autoscale as core
from ultrascaled.core.control import ScaleRefused
from ultrascaled.core.states import State as S
from ultrascaled.effects.files import write_atomic
from ultrascaled.observe import alert_rules, metric_math, metrics
from ultrascaled.spec import budget_errors

if TYPE_CHECKING:
    from ultrascaled.core.traffic import TrafficSource

IN_FLIGHT = "ultrascale_http_requests_in_flight"
HISTORY = 20                # decisions kept for `ultrascalectl autoscale status`
REPEAT_EVERY = 30.0         # an unchanged hold is an event again after this many seconds


def _host_cpu() -> Optional[float]:
    return psutil.cpu_percent(interval=None)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _run_queue_wait(pid: int) -> Optional[float]:
    """Seconds `pid` has spent runnable but waiting for a CPU (Linux /proc/PID/schedstat, its
    second field in ns; psutil does not expose it); None when unreadable."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read(200).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class Autoscaler:
    def __init__(self, sup: Any, *, traffic: Optional["TrafficSource"] = None,
                 host_cpu: Callable[[], Optional[float]] = _host_cpu,
                 app_families: Optional[Callable[[dict[int, str]], Any]] = None,
                 nofile_limit: Optional[int] = None,
                 run_queue_wait: Callable[[int], Optional[float]] = _run_queue_wait,
                 cores: Callable[[], int] = _cores):
        self.sup = sup
        self.events = sup.events
        self.clock = sup.clock
        self.traffic = traffic
        self.host_cpu = host_cpu
        self.nofile_limit = nofile_limit
        self.run_queue_wait = run_queue_wait
        self.cores = cores
        self._wait: dict[int, deque] = {}          # port -> (t, {pid: run-queue wait seconds})
        self._app_families = app_families or _read_app_families
        self.state = core.State()
        self.decisions: deque[dict] = deque(maxlen=HISTORY)
        self.last: Optional[core.Decision] = None
        self.last_obs: Optional[core.Observation] = None
        self.counts = {"scale_up": 0, "scale_down": 0, "hold": 0}
        self._cpu: dict[int, deque] = {}           # port -> (t, {pid: cpu seconds})
        self._app: deque = deque()                  # (t, flat app metrics of the ready instances)
        self._emitted: tuple[str, float] = ("", -math.inf)
        self._host_primed = False
        self._fleet_cpu: Optional[float] = None      # % of all cores, from _cpu_signal
        self._last_ready: set[int] = set()
        self._warned: dict[str, str] = {}
        self._load_pause()

    # ---- the operator's side ------------------------------------------------------------------

    @property
    def policy(self):
        return self.sup.spec.autoscale

    @property
    def enabled(self) -> bool:
        return bool(self.policy.enabled)

    def pause(self, seconds: Optional[float], reason: str) -> dict:
        self._paused(core.pause(self.state, self.clock.now(), seconds, reason), seconds, reason)
        return self.status()

    def _paused(self, state: core.State, seconds: Optional[float], reason: str) -> None:
        self.state = state
        self._save_pause()
        until = None if seconds is None else round(self.clock.wall() + seconds, 3)
        self.events.emit("autoscale.paused", reason=reason, seconds=seconds, until=until)

    def resume(self) -> dict:
        was = self.state.paused(self.clock.now())
        self.state = core.resume(self.state)
        self._save_pause()
        self.events.emit("autoscale.resumed", was_paused=was)
        self.sup.wake()
        return self.status()

    def manual_scale(self, n: int) -> Optional[str]:
        """An operator's `scale N`: the rule (core.autoscale.manual_scale) pauses autoscaling
        until resumed; the words the API answers with, or None."""
        state, note = core.manual_scale(self.state, self.enabled, self.clock.now(), n)
        if note is not None:
            self._paused(state, None, state.paused_reason)
        return note

    def status(self) -> dict:
        now = self.clock.now()
        pol, spec = self.policy, self.sup.spec
        lo, hi = pol.bounds(spec.instances)
        paused = self.state.paused(now)
        last = self.last
        return {
            "enabled": pol.enabled,
            "paused": paused,
            "paused_reason": self.state.paused_reason if paused else "",
            "paused_until": (None if not paused or self.state.paused_until == math.inf else
                             round(self.clock.wall() + self.state.paused_until - now, 3)),
            "min_replicas": lo, "max_replicas": hi, "current": self.sup.count,
            "ready": self.last_obs.ready if self.last_obs else None,
            "host_cpu_percent": (round(self.last_obs.host_cpu_percent, 1)
                                 if self.last_obs and self.last_obs.host_cpu_percent is not None else None),
            "fleet_cpu_percent": (round(self.last_obs.fleet_cpu_percent, 1)
                                  if self.last_obs and self.last_obs.fleet_cpu_percent is not None else None),
            "targets": core.targets_of(pol),
            "signals": last.to_dict()["signals"] if last else {},
            "recommendation": last.recommendation if last else None,
            "decisions": list(self.decisions),
        }

    # ---- persistence of the pause (a restart must not undo an operator's pause) ----------------

    def _pause_file(self) -> Path:
        return Path(self.sup.spec.paths.state_dir) / "autoscale.json"

    def _save_pause(self) -> None:
        until = self.state.paused_until
        if until is None or not self.state.paused(self.clock.now()):
            data = {"paused": False}
        else:
            data = {"paused": True, "reason": self.state.paused_reason,
                    "until_wall": None if until == math.inf else self.clock.wall() + until - self.clock.now()}
        try:
            write_atomic(str(self._pause_file()), json.dumps(data).encode())
        except OSError as exc:
            self.events.emit("state.write_failed", level="error", path=str(self._pause_file()),
                             error=str(exc))

    def _load_pause(self) -> None:
        try:
            # non-blocking and regular files only: a FIFO put there must not hang the start
            fd = os.open(self._pause_file(), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError("not a regular file")
                data = json.loads(os.read(fd, 4096))
            finally:
                os.close(fd)
        except (OSError, ValueError) as exc:
            if not isinstance(exc, FileNotFoundError):
                self._once("autoscale.state_ignored", f"{self._pause_file()}: {exc}")
            return
        if not isinstance(data, dict) or data.get("paused") is not True:
            return
        until = data.get("until_wall")
        reason = str(data.get("reason", ""))[:200]
        if until is None:
            self.state = core.pause(self.state, self.clock.now(), None, reason)
        elif isinstance(until, (int, float)) and until > self.clock.wall():
            self.state = core.pause(self.state, self.clock.now(), until - self.clock.wall(), reason)

    # ---- measuring ----------------------------------------------------------------------------

    def _ready_ports(self) -> list[int]:
        rec = self.sup.rec
        nginx_on = self.sup.spec.nginx.mode != "off"
        return [p for p in rec.wanted
                if (i := rec.instances.get(p)) is not None and i.state is S.RUNNING
                and (p in rec.applied or not nginx_on)]

    def _cpu_signal(self, ready: list[int], now: float) -> Optional[core.Signal]:
        """CPU per worker over the window, on the samples' own times (a tick's time would be up
        to a sample interval off at each end: +-20 % over a 5 s window)."""
        window = self.policy.metrics_window_seconds
        workers = max(1, self.sup.spec.workers)
        rates, oldest, used_cores = [], now, 0.0
        self._fleet_cpu = None
        for port in ready:
            inst = self.sup.rec.instances[port]
            sample, at = inst.master_mem, inst.sampled_at
            if sample is None or not at:
                return None          # not sampled yet: no CPU figure for the fleet
            oldest = min(oldest, at)
            cur = {w.pid: w.cpu for w in inst.workers}
            cur[sample.pid] = sample.cpu
            hist = self._cpu.setdefault(port, deque())
            if hist and hist[-1][2] != inst.pid:
                hist.clear()                     # a new master: start over
            if not hist or hist[-1][0] != at:
                hist.append((at, cur, inst.pid))
            while len(hist) > 2 and hist[1][0] <= at - window:
                hist.popleft()
            t0, old, _ = hist[0]
            if at - t0 <= 0:
                continue
            used = sum(c - old[p] if p in old and c >= old[p] else 0.0 for p, c in cur.items())
            rates.append(100.0 * used / (at - t0) / workers)
            used_cores += used / (at - t0)
        for port in [p for p in self._cpu if p not in ready]:
            del self._cpu[port]
        if not rates:
            return None
        if len(rates) == len(ready):   # every ready instance measured: the fleet's own CPU
            self._fleet_cpu = 100.0 * used_cores / max(1, self.cores())
        # the oldest instance's last sample dates the signal: a stalled sampler makes it stale
        return core.Signal(sum(rates) / len(rates), oldest)

    def _wait_signal(self, ready: list[int], now: float) -> Optional[core.Signal]:
        """Run-queue wait per worker, percent of wall time, over the metrics window."""
        window = self.policy.metrics_window_seconds
        workers = max(1, self.sup.spec.workers)
        rates = []
        for port in ready:
            inst = self.sup.rec.instances[port]
            pids = [w.pid for w in inst.workers] + ([inst.master_mem.pid] if inst.master_mem else [])
            cur = {p: w for p in pids if (w := self.run_queue_wait(p)) is not None}
            if not cur:
                continue
            hist = self._wait.setdefault(port, deque())
            hist.append((now, cur))
            while len(hist) > 2 and hist[1][0] <= now - window:
                hist.popleft()
            t0, old = hist[0]
            if now - t0 <= 0:
                continue
            waited = sum(w - old[p] for p, w in cur.items() if p in old and w >= old[p])
            rates.append(100.0 * waited / (now - t0) / workers)
        for port in [p for p in self._wait if p not in ready]:
            del self._wait[port]
        return core.Signal(sum(rates) / len(rates), now) if rates else None

    async def _app_signals(self, ready: list[int], now: float) -> dict[str, core.Signal]:
        dirs = {p: str(Path(self.sup.spec.paths.state_dir) / "metrics" / str(p)) for p in ready}
        try:
            flat = metric_math.flatten(await self._app_families(dirs))
        except Exception as exc:  # noqa: BLE001 - unreadable metrics are a missing signal
            self._once("autoscale.metrics_unreadable", str(exc))
            return {}
        out: dict[str, core.Signal] = {}
        in_flight = flat.get(IN_FLIGHT)
        if in_flight:
            workers = max(1, self.sup.spec.workers) * max(1, len(ready))
            out["in_flight_per_worker"] = core.Signal(sum(in_flight.values()) / workers, now)
        window = self.policy.metrics_window_seconds
        self._app.append((now, flat))
        while len(self._app) > 2 and self._app[1][0] <= now - window:
            self._app.popleft()
        t0, old = self._app[0]
        if self.traffic is not None:
            try:
                w = self.traffic.window(None, window)
                out["p95_latency_seconds"] = core.Signal(w.p95 if w.p95 is not None else 0.0, now)
            except Exception as exc:  # noqa: BLE001 - no traffic figure: p95 is missing
                self._once("autoscale.traffic_unreadable", str(exc))
        elif now > t0 and metric_math.REQUESTS in flat:
            s = alert_rules.sample_from(old, flat, now - t0)
            # no request in the window: no latency pressure (the metrics were read, so not missing)
            out["p95_latency_seconds"] = core.Signal(s.p95_latency if s.p95_latency is not None else 0.0, now)
        return out

    async def observe(self) -> core.Observation:
        now = self.clock.now()
        ready = self._ready_ports()
        if set(ready) != self._last_ready:
            # the load is shared anew: average only from here on, else a window that saw the
            # old count's per-instance load would ask for still more (overshoot)
            self._last_ready = set(ready)
            for hist in [*self._cpu.values(), *self._wait.values()]:
                while len(hist) > 1:
                    hist.popleft()
            while len(self._app) > 1:
                self._app.popleft()
        signals: dict[str, core.Signal] = {}
        self._fleet_cpu = None
        if ready:
            cpu = self._cpu_signal(ready, now)
            if cpu is not None:
                signals["cpu_utilization"] = cpu
            if self.policy.target.cpu_wait_percent is not None:
                wait = self._wait_signal(ready, now)
                if wait is not None:
                    signals["cpu_wait_percent"] = wait
            t = self.policy.target
            if t.in_flight_per_worker is not None or t.p95_latency_seconds is not None:
                signals.update(await self._app_signals(ready, now))   # files read only when followed
        host = None
        try:
            host = self.host_cpu()
        except Exception:  # noqa: BLE001 - no host figure: the guardrail is not judged
            host = None
        if not self._host_primed:   # psutil's first reading covers nothing
            self._host_primed, host = True, None
        wanted = len(self.sup.rec.wanted)
        return core.Observation(ready=len(ready), wanted=wanted, signals=signals, host_cpu_percent=host,
                                cores=self.cores(), workers=wanted * max(1, self.sup.spec.workers),
                                fleet_cpu_percent=self._fleet_cpu)

    def _once(self, event: str, error: str) -> None:
        """A warning event per distinct error (a broken source must not flood the event ring)."""
        if self._warned.get(event) != error:
            self._warned[event] = error
            self.events.emit(event, level="warning", error=error[:300])

    # ---- deciding and applying ------------------------------------------------------------------

    def budgets(self, n: int) -> list[str]:
        problems = budget_errors(self.sup.spec, n, nofile_limit=self.nofile_limit)
        measured = self.sup.memory_refusal(n)
        return problems + ([measured] if measured else [])

    async def tick(self) -> Optional[core.Decision]:
        if not self.enabled or self.sup.shutting_down:
            self.last = None
            return None
        obs = await self.observe()
        now = self.clock.now()
        spec = self.sup.spec
        current = self.sup.count
        bounds = self.policy.bounds(spec.instances)
        decision, state = core.decide(self.state, obs, current, self.policy, bounds, self.budgets, now)
        # a step up that ready warm spares serve is immediate: they take the new ports at once
        # (docs/spares.md); the rest boots as usual
        spares_ready = sum(1 for s in self.sup.rec.spares.values() if s.ready)
        from_spares = min(max(decision.desired - current, 0), spares_ready) if decision.action == "scale_up" else 0
        if decision.action != "hold":
            try:
                self.sup.scale(decision.desired, source="autoscale")
            except ScaleRefused as exc:
                decision = core.Decision("hold", current, current, decision.recommendation,
                                         f"held: the scale to {decision.desired} was refused "
                                         f"({exc.code}): {exc}", decision.signals,
                                         decision.vetoes + (str(exc),), now,
                                         never_seen=decision.never_seen)
                # nothing changed: the rate policies do not count it (what was seen still counts)
                state = dataclasses.replace(self.state, started=state.started,
                                            followed_since=state.followed_since, seen=state.seen,
                                            left_out=state.left_out)
        self.state, self.last, self.last_obs = state, decision, obs
        self.counts[decision.action] += 1
        record = {"time": round(self.clock.wall(), 3), **decision.to_dict(), "ready": obs.ready,
                  **({"from_spares": from_spares, "immediate": from_spares == decision.desired - current}
                     if decision.action == "scale_up" else {}),
                  "host_cpu_percent": (None if obs.host_cpu_percent is None
                                       else round(obs.host_cpu_percent, 1)),
                  "fleet_cpu_percent": (None if obs.fleet_cpu_percent is None
                                        else round(obs.fleet_cpu_percent, 1))}
        self.decisions.append(record)
        for name in decision.never_seen:
            self.events.emit("autoscale.signal_never_seen", level="warning", signal=name,
                             seconds=core.never_seen_grace(self.policy),
                             needs=core.needs(name, self.traffic is not None),
                             rule="never measured since the daemon started (or since the target "
                                  "was set): left out of the every-signal rule for a step down; a "
                                  "step up still follows it if it comes")
        self._emit(decision, record, now)
        return decision

    def _emit(self, d: core.Decision, record: dict, now: float) -> None:
        """Every scale is an event; a hold is one when its reason changes (numbers aside), and
        again every REPEAT_EVERY seconds while it lasts, except `steady` (nothing to do)."""
        key = d.action + ":" + re.sub(r"[-+]?\d[\d.]*", "#", d.reason.split(" (")[0])
        last_key, last_at = self._emitted
        if d.action == "hold" and key == last_key and (
                d.reason.startswith("steady") or now - last_at < REPEAT_EVERY):
            return
        self._emitted = (key, now)
        level = "warning" if d.vetoes or "over budget" in d.reason or "host CPU" in d.reason else "info"
        fields = {k: v for k, v in record.items() if k != "time"}
        self.events.emit(f"autoscale.{d.action}", level=level, **fields)

    BEAT = 2.0   # the loop beats this often whatever the sync period (the guard's interval)

    async def run(self, beat: Callable[[], None] = lambda: None) -> None:
        """The background task, under the TaskGuard: `beat` says it is alive. A decision every
        `autoscale.sync_period_seconds` (read each time: a reload changes it)."""
        next_at = self.clock.now()
        while True:
            if self.clock.now() >= next_at:
                await self.tick()
                next_at = self.clock.now() + self.policy.sync_period_seconds
            beat()
            await asyncio.sleep(max(0.01, min(self.BEAT, next_at - self.clock.now())))

    # ---- /metrics ----------------------------------------------------------------------------

    def metric_families(self) -> list:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
        p = "ultrascale_autoscale_"
        enabled = GaugeMetricFamily(p + "enabled", "1 when autoscale.enabled")
        enabled.add_metric([], 1.0 if self.enabled else 0.0)
        paused = GaugeMetricFamily(p + "paused", "1 while the operator paused the autoscaler")
        paused.add_metric([], 1.0 if self.state.paused(self.clock.now()) else 0.0)
        signal = GaugeMetricFamily(p + "signal", "Last measured value of each followed signal",
                                   labels=["signal"])
        target = GaugeMetricFamily(p + "target", "Target of each followed signal", labels=["signal"])
        for name, value in core.targets_of(self.policy).items():
            target.add_metric([name], float(value))
        rec = GaugeMetricFamily(p + "recommendation", "Instances the signals recommend (before the "
                                "stabilization windows, rate policies and guardrails)")
        desired = GaugeMetricFamily(p + "desired", "Instances the last decision asked for")
        if self.last is not None:
            for v in self.last.signals:
                if v.value is not None:
                    signal.add_metric([v.name], float(v.value))
            if self.last.recommendation is not None:
                rec.add_metric([], float(self.last.recommendation))
            desired.add_metric([], float(self.last.desired))
        decisions = CounterMetricFamily(p + "decisions", "Autoscaler decisions by action",
                                        labels=["action"])
        for action, n in self.counts.items():
            decisions.add_metric([action], float(n))
        return [enabled, paused, signal, target, rec, desired, decisions]


async def _read_app_families(dirs: dict[int, str]) -> list:
    """The app metrics of the ready instances (as /metrics reads them), off the event loop."""
    reader = _READER

    def read() -> list:
        return metrics.merge_instances({p: reader.families(d) for p, d in dirs.items()})
    return await asyncio.to_thread(read)


def _make_reader():
    return metrics.AppMetricsReader(cache_ttl=0.2, clock=time.monotonic)


class _LazyReader:
    _r = None

    def families(self, path: str) -> list:
        if self._r is None:
            self._r = _make_reader()
        return self._r.families(path)


_READER = _LazyReader()
