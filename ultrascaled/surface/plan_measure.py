"""`ultrascalectl plan --measure`: one instance of the spec's app, loaded at rising concurrency,
its figures handed to the pure planner (core/capacity.py) as a :class:`Measurement`.

1. start one instance (effects/solo_instance.py) on a free 127.0.0.1 port (or `--port`) and wait
   for `health.path`;
2. GET every URL once: each must answer 2xx or 3xx, else nothing is measured;
3. a 1 s warm-up at the first step (not counted), then one step per concurrency, each bounded by
   `--step-seconds` and by what is left of `--max-seconds` and `--max-requests`; the steps stop
   at the first that misses min(target p99, health.timeout) or 1 % errors;
4. the instance's RSS, then the instance stopped by pid (in a `finally`).
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import threading
import time

from ultrascaled.core.capacity import (TARGET_P99_MS, CalibrationError, MeasuredStep, Measurement,
                                       latency_target, measure_steps, step_from_loadtest)
from ultrascaled.core.release_layout import directory_of
from ultrascaled.effects import releases
from ultrascaled.effects.loopback_load import LoadError, run_step
from ultrascaled.effects.solo_instance import SoloInstance, SoloInstanceError, free_port

WARMUP_SECONDS = 1.0
PROBE_EVERY = 0.25   # seconds between health probes during a step (the daemon's: health.interval)


class Prober:
    """GET health.path every PROBE_EVERY s during a step, each with health.timeout, the way the
    daemon probes a running instance: a probe waits in the same queue as the users' requests."""

    def __init__(self, inst, path: str, timeout: float):
        self.inst, self.path, self.timeout = inst, path, timeout
        self.results: list[tuple[bool, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plan-measure-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY):
            t = time.monotonic()
            try:
                ok = self.inst.get(self.path, timeout=self.timeout)[0] == 200
            except OSError:
                ok = False
            self.results.append((ok and time.monotonic() - t <= self.timeout, (time.monotonic() - t) * 1000))

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def figures(self) -> dict:
        run = longest = 0
        for ok, _ in self.results:
            run = 0 if ok else run + 1
            longest = max(longest, run)
        return {"probes": len(self.results), "failed_probes": sum(1 for ok, _ in self.results if not ok),
                "failed_run": longest, "probe_max_ms": max((ms for _, ms in self.results), default=None)}


class MeasureError(RuntimeError):
    """Nothing could be measured; the message says why and what to fix."""


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        sys.stderr.write(f"plan --measure: {msg}\n")
        sys.stderr.flush()


def current_folder(spec) -> tuple[str | None, str | None]:
    """(the folder of the release the fleet serves, as the daemon starts it: None for
    app.directory; why it cannot be told, when deploy.json is unreadable): the planner
    measures the code the fleet runs, not the working copy."""
    state, problem = releases.load_state(spec)
    return (directory_of(spec, state.current) if state.current else None), problem


def measure_app(spec, users: int, *, urls: list[str], steps: list[int] | None, step_seconds: float,
                max_seconds: float, max_requests: int, port: int | None = None,
                quiet: bool = False) -> Measurement:
    target, _ = latency_target(spec)
    plan = measure_steps(users, spec, steps)
    timeout = TARGET_P99_MS / 1000.0
    with tempfile.TemporaryDirectory(prefix="ultrascale-measure-") as tmp:
        folder, problem = current_folder(spec)
        if problem:
            _say(quiet, f"cannot tell the release the fleet serves ({problem}); measuring "
                 f"app.directory, {spec.app.directory}")
        inst = SoloInstance(spec, port if port is not None else free_port(), tmp, folder)
        _say(quiet, f"starting 1 instance of {spec.app.module} on 127.0.0.1:{inst.port}"
             + (f" from the current release, {folder}" if folder else ""))
        t0 = time.monotonic()
        try:
            inst.start()
            for u in urls:
                try:
                    status, body = inst.get(u, timeout=max(spec.health.timeout, 5.0))
                except OSError as exc:
                    raise MeasureError(f"GET {u} failed before any load: {exc}") from None
                if not 200 <= status < 400:
                    where = "--url" if urls != list(spec.plan.urls) else "plan.urls"
                    raise MeasureError(f"{where}: GET {u} answered HTTP {status} "
                                       f"({body[:80].decode(errors='replace')!r}) before any load; "
                                       "measure pages that answer 2xx or 3xx")
            done: list[MeasuredStep] = []
            sent = 0
            stopped = "every step ran"
            t_load = time.monotonic()
            _say(quiet, f"warm-up: {plan[0]} users, {WARMUP_SECONDS:g} s")
            warm = run_step(inst.port, urls, plan[0], seconds=WARMUP_SECONDS,
                            requests=max(1, min(max_requests // 10, max_requests)), timeout=timeout)
            sent += int(warm.get("total") or 0)
            for n in plan:
                left_s = max_seconds - (time.monotonic() - t_load)
                left_n = max_requests - sent
                if left_s < 0.5 or left_n < 1:
                    stopped = (f"stopped before {n} users: --max-seconds {max_seconds:g} reached" if left_s < 0.5
                               else f"stopped before {n} users: --max-requests {max_requests} reached")
                    break
                secs = min(step_seconds, left_s)
                _say(quiet, f"step: {n} users, {secs:g} s")
                with Prober(inst, spec.health.path, spec.health.timeout) as probe:
                    st = step_from_loadtest(run_step(inst.port, urls, n, seconds=secs, requests=left_n,
                                                     timeout=timeout))
                st = dataclasses.replace(st, **probe.figures())
                sent += st.requests
                done.append(st)
                _say(quiet, f"  {st.rps:.1f} req/s, p95 {st.p95_ms or 0:.1f} ms, p99 {st.p99_ms or 0:.1f} ms, "
                            f"errors {st.error_rate_pct or 0:.2f}%, health probes failed {st.failed_probes} "
                            f"of {st.probes} ({st.failed_run} in a row)")
                if not st.meets(target, spec.health.failures):
                    stopped = f"stopped after {n} users: the first step that missed"
                    break
            if not done:
                raise MeasureError("the bounds left no time for a step: raise --max-seconds or --max-requests")
            rss = inst.rss_bytes()
        except SoloInstanceError as exc:
            raise MeasureError(str(exc)) from None
        except (LoadError, CalibrationError) as exc:
            raise MeasureError(str(exc)) from None
        finally:
            inst.stop()
        _say(quiet, f"instance stopped; {time.monotonic() - t0:.1f} s in all")
    return Measurement(steps=tuple(done), urls=tuple(urls), workers=spec.workers,
                       worker_class=spec.gunicorn.worker_class, rss_bytes=rss, stopped=stopped,
                       health_failures=spec.health.failures,
                       bounds=f"{step_seconds:g} s per step, {max_seconds:g} s and {max_requests} requests in all")
