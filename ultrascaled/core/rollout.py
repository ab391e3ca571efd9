"""Pure decisions of a deploy: which release each port should run, when the canary is judged,
what its figures say, when the rollout is done or must roll back.

Nothing here performs I/O or reads a clock. `Supervisor`'s deploy loop observes the instances,
asks `advance()` what follows, and applies the answer by changing only wanted state (the
release each port should run, restart requests): the reconciler's rolling restart does the rest,
one instance at a time, each health-gated before it takes traffic.

    deploy:   CANARY (first wanted port on the new release, the others on the old one; soak,
              then judged) ──pass──► ROLLING (every port on the new release) ──► done
                 │ fail (boot, crash, 5xx rate, a route, p95)  │ an instance fails to boot
                 ▼                                         ▼
              REVERTING (every port back on the old release) ──► done, rolled back
    rollback: ROLLING to the previous release (no canary: it served before)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ultrascaled.core import routes as route_judge
from ultrascaled.core.traffic import TrafficWindow

CANARY, ROLLING, REVERTING = "canary", "rolling", "reverting"
PHASES = (CANARY, ROLLING, REVERTING)


def combine(windows: list[TrafficWindow]) -> TrafficWindow:
    """Old instances' windows added up: counts summed, p95 the highest of theirs (the canary
    must be worse than the slowest old instance to fail on latency)."""
    p95s = [w.p95 for w in windows if w.p95 is not None and w.requests]
    return TrafficWindow(sum(w.requests for w in windows), sum(w.errors_5xx for w in windows),
                         max(p95s) if p95s else None, max((w.seconds for w in windows), default=0.0))


@dataclass(frozen=True)
class Thresholds:
    soak_seconds: float = 30.0
    min_requests: int = 20
    max_error_rate_increase: float = 0.01
    max_p95_ratio: float = 2.0
    p95_slack_seconds: float = 0.05
    route_p_value: float = 0.001
    route_min_errors: int = 3

    @classmethod
    def of(cls, spec) -> "Thresholds":
        d = spec.deploy
        return cls(d.soak_seconds, d.min_requests, d.max_error_rate_increase, d.max_p95_ratio,
                   d.p95_slack_seconds, d.route_p_value, d.route_min_errors)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    figure: str | None       # what failed: "rate_5xx", "route_5xx", "p95", "boot", "crash"; None when ok
    detail: str
    figures: dict = field(default_factory=dict)


def judge(canary: TrafficWindow | None, old: TrafficWindow | None, t: Thresholds,
          routes: tuple[route_judge.Counts, route_judge.Counts] | None = None) -> Verdict:
    """The canary's figures against the old instances'. `canary` None: no traffic figures at all
    (no access-log source): the canary passed on health and crashes alone, and says so.
    `routes`: (canary, old instances) per-route (requests, 5xx), judged by `core/routes.py`
    whatever the canary's total, so that one broken route with little traffic fails it."""
    if canary is None:
        return Verdict(True, None, "no traffic figures: judged on health and crashes only")
    figs = {"canary_requests": canary.requests, "canary_rate_5xx": round(canary.rate_5xx, 4),
            "canary_p95": canary.p95}
    if old is not None:
        figs.update(old_requests=old.requests, old_rate_5xx=round(old.rate_5xx, 4), old_p95=old.p95)
    base_rate = old.rate_5xx if old is not None and old.requests else 0.0
    if canary.requests >= t.min_requests and canary.rate_5xx > base_rate + t.max_error_rate_increase:
        return Verdict(False, "rate_5xx", f"canary 5xx rate {canary.rate_5xx:.1%} ({canary.errors_5xx} of "
                       f"{canary.requests}) vs old instances {base_rate:.1%}: more than "
                       f"deploy.max_error_rate_increase {t.max_error_rate_increase:g} over", figs)
    if routes is not None:
        failed, limit = route_judge.failing_routes(
            routes[0], routes[1], (int(old.requests), int(old.errors_5xx)) if old is not None else (0, 0),
            p_value=t.route_p_value, min_errors=t.route_min_errors, fallback_rate=t.max_error_rate_increase)
        if failed:
            figs["failed_routes"] = [f.route for f in failed]
            more = f" (and {len(failed) - 1} more route(s): {', '.join(figs['failed_routes'][1:4])})" \
                if len(failed) > 1 else ""
            return Verdict(False, "route_5xx", failed[0].describe(limit) + more, figs)
    if canary.requests < t.min_requests:
        return Verdict(True, None, f"the canary answered {canary.requests} requests in the soak window "
                       f"(fewer than deploy.min_requests {t.min_requests}): judged on health and crashes "
                       "only", figs)
    base_p95 = old.p95 if old is not None else None
    if canary.p95 is not None and base_p95 is not None and canary.p95 > base_p95 * t.max_p95_ratio \
            and canary.p95 - base_p95 > t.p95_slack_seconds:
        return Verdict(False, "p95", f"canary p95 {canary.p95 * 1000:.0f} ms vs old instances "
                       f"{base_p95 * 1000:.0f} ms: over deploy.max_p95_ratio {t.max_p95_ratio:g}x and "
                       f"deploy.p95_slack_seconds {t.p95_slack_seconds:g}s", figs)
    note = "" if base_p95 is not None else " (no old instance had requests: p95 not compared)"
    return Verdict(True, None, f"canary 5xx rate {canary.rate_5xx:.1%}, p95 "
                   f"{'-' if canary.p95 is None else f'{canary.p95 * 1000:.0f} ms'} within thresholds{note}", figs)


@dataclass(frozen=True)
class Rollout:
    kind: str                          # "deploy" | "rollback"
    target: str | None                 # release moving to (None: app.directory)
    source: str | None                 # release moving from
    phase: str
    canary: int | None = None          # port of the canary (deploy only)
    started: float = 0.0               # monotonic
    started_wall: float = 0.0
    canary_ready_at: float | None = None
    canary_restarts: int = 0
    failure: str | None = None         # the figure that failed, once it did
    failure_detail: str = ""

    def persist(self) -> dict[str, Any]:
        """What survives a daemon restart (no monotonic times)."""
        d = asdict(self)
        for k in ("started", "canary_ready_at", "canary_restarts"):
            d.pop(k)
        return d


def resume(saved: dict, now: float) -> tuple[Rollout | None, str]:
    """A rollout found in deploy.json at start: one whose canary had not passed yet is rolled
    back (its soak clock and figures are gone with the old daemon); one past its canary, or a
    rollback, goes on. Returns (rollout, what was decided)."""
    try:
        r = Rollout(kind=saved["kind"], target=saved["target"], source=saved["source"],
                    phase=saved["phase"], canary=saved.get("canary"), started=now,
                    started_wall=float(saved.get("started_wall") or 0.0),
                    failure=saved.get("failure"), failure_detail=saved.get("failure_detail") or "")
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"unreadable rollout ({type(exc).__name__}: {exc}); dropped"
    if r.kind not in ("deploy", "rollback") or r.phase not in PHASES:
        return None, f"unknown rollout kind/phase {r.kind!r}/{r.phase!r}; dropped"
    if r.phase == CANARY:
        return replace(r, phase=REVERTING, failure="interrupted",
                       failure_detail="the daemon restarted before the canary was judged"), \
            "the canary had not been judged: rolling back"
    return r, f"resuming the {r.phase} phase"


def desired_release(r: Rollout | None, current: str | None, port: int) -> str | None:
    if r is None:
        return current
    if r.phase == CANARY:
        return r.target if port == r.canary else r.source
    return r.target if r.phase == ROLLING else r.source


@dataclass(frozen=True)
class PortView:
    port: int
    state: str                         # State.value
    release: str | None                # what its last start ran
    restart_pending: bool = False
    restarts: int = 0
    serving: bool = False              # RUNNING and in the upstream
    reason: str = ""
    failed_release: str | None = None  # a replacement master on this release (show()n) failed to start
    replacing: bool = False            # a replacement master is booting beside the serving one


@dataclass(frozen=True)
class Advance:
    rollout: Rollout | None            # None: the rollout is over
    outcome: str | None = None         # "completed" | "rolled_back" when it ends
    events: tuple[tuple[str, str, dict], ...] = ()   # (event, level, fields)
    alert: str | None = None           # fire the deploy_failed alert with this message
    judge_now: bool = False            # the soak window is over: call again with figures


def soak_over(r: Rollout, now: float, t: Thresholds) -> bool:
    return r.phase == CANARY and r.canary_ready_at is not None and now >= r.canary_ready_at + t.soak_seconds


def advance(r: Rollout, ports: dict[int, PortView], wanted: tuple[int, ...], now: float, t: Thresholds,
            verdict: Verdict | None = None) -> Advance:
    """One look at the fleet. `verdict` is the judged figures once `judge_now` was asked for."""
    if r.phase == CANARY:
        return _canary(r, ports, now, t, verdict)
    if r.phase == ROLLING:
        for p in wanted:
            v = ports.get(p)
            if v is not None and v.release == r.target and v.state in ("fatal", "backoff"):
                return _fail(r, "boot", f"instance {p} on release {show(r.target)} is {v.state}: {v.reason}")
            if v is not None and v.failed_release == show(r.target) and v.release != r.target:
                return _fail(r, "boot", f"instance {p} could not start on release {show(r.target)}: {v.reason}")
    want = r.target if r.phase == ROLLING else r.source

    def done(v: PortView | None) -> bool:   # serving (in the upstream); reverting also ends on FATAL
        return v is not None and v.release == want and not v.restart_pending and not v.replacing and (
            v.serving or (r.phase == REVERTING and v.state == "fatal"))
    if all(done(ports.get(p)) for p in wanted):
        if r.phase == ROLLING:
            return Advance(None, "completed", (("deploy.completed", "info", {
                "kind": r.kind, "release": show(r.target), "previous": show(r.source),
                "seconds": round(now - r.started, 3)}),))
        return Advance(None, "rolled_back", (("deploy.rolled_back", "warning", {
            "release": show(r.source), "failed_release": show(r.target), "figure": r.failure,
            "reason": r.failure_detail, "seconds": round(now - r.started, 3)}),))
    return Advance(r)


def _canary(r: Rollout, ports: dict[int, PortView], now: float, t: Thresholds, verdict: Verdict | None) -> Advance:
    c = ports.get(r.canary) if r.canary is not None else None
    if c is None:
        return _fail(r, "boot", f"the canary's instance {r.canary} is gone (scaled down?)")
    on_target = c.release == r.target
    if r.canary_ready_at is None:
        if on_target and c.state in ("fatal", "backoff"):
            return _fail(r, "boot", f"the canary (instance {c.port}) failed to start: {c.reason}")
        if not on_target and c.failed_release == show(r.target):   # its replacement master never got ready
            return _fail(r, "boot", f"the canary (instance {c.port}) failed to start: {c.reason}")
        if on_target and c.state == "running" and c.serving and not c.restart_pending:
            r = replace(r, canary_ready_at=now, canary_restarts=c.restarts)
            return Advance(r, events=(("deploy.canary_ready", "info", {
                "port": c.port, "release": show(r.target), "soak_seconds": t.soak_seconds}),),
                judge_now=soak_over(r, now, t))
        return Advance(r)
    if c.restarts > r.canary_restarts:
        return _fail(r, "crash", f"the canary (instance {c.port}) crashed during its soak (restarted "
                     f"{c.restarts - r.canary_restarts} time(s); now {c.state})")
    if c.state != "running" or not on_target:
        return _fail(r, "crash", f"the canary (instance {c.port}) left RUNNING during its soak: "
                     f"{c.state}" + (f" ({c.reason})" if c.reason else ""))
    if not soak_over(r, now, t):
        return Advance(r)
    if verdict is None:
        return Advance(r, judge_now=True)
    if not verdict.ok:
        return _fail(r, verdict.figure or "figures", verdict.detail, verdict.figures)
    return Advance(replace(r, phase=ROLLING), events=(("deploy.canary_passed", "info", {
        "port": c.port, "release": show(r.target), "verdict": verdict.detail, **verdict.figures}),))


def _fail(r: Rollout, figure: str, detail: str, figures: dict | None = None) -> Advance:
    r2 = replace(r, phase=REVERTING, failure=figure, failure_detail=detail)
    what = "deploy" if r.kind == "deploy" else "rollback"
    msg = (f"{what} of release {show(r.target)} failed on {figure}: {detail}; rolling back to "
           f"{show(r.source)}")
    return Advance(r2, events=(("deploy.failed", "error", {
        "kind": r.kind, "release": show(r.target), "figure": figure, "reason": detail,
        "rolling_back_to": show(r.source), **(figures or {})}),), alert=msg)


def show(release: str | None) -> str:
    return release if release is not None else "app.directory"
