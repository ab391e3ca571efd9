"""The autoscaler's decision: a pure function of (signal history, current count, policy,
budgets, now).

`decide()` follows the Kubernetes HorizontalPodAutoscaler (pkg/controller/podautoscaler,
autoscaling/v2 `behavior`) where it fits one host, and `docs/autoscaling.md` says where it
differs and why:

1. Each followed signal gives `desired = ceil(ready x observed / target)`, or the current
   count while `observed / target` is within 1 +- tolerance. `ready` counts only instances
   that serve: one that is still starting is not capacity. A total with a per-process target
   (TOTALS: a worker type's queue depth) gives `ceil(total / target)` instead.
2. The largest recommendation of all signals wins. No fresh signal at all: hold (never "scale
   to min"). Some signals missing: a step up on the others goes ahead, a step down is held;
   a signal never measured since it was first followed is left out of that rule after
   never_seen_grace() (follow()), so an app that does not export it cannot hold every step down.
3. Clamped to min..max replicas.
4. Stabilization: the step up goes to the lowest recommendation of the scale-up window, the
   step down to the highest of the scale-down window.
5. Rate policies: Pods and Percent per period, from the count at the period's start, with
   `select_policy` Max / Min / Disabled (the HPA's `calculateScaleUpLimitWithScalingRules`).
6. Guardrails (not in the HPA): a step up is held while the host's CPU is saturated by the
   fleet itself (host_saturated(): it has a worker per core and its own processes use at least
   half of the busy CPU) and is cut to the largest count every budget allows (memory, MongoDB connections, file descriptors),
   the budgets' own words in the reason; a step down waits until no wanted instance is
   starting; a pause by the operator holds everything.

Every call returns a `Decision`, holds included, with the figures: the loop turns it into an
event. This module imports nothing but the standard library (tests/unit/test_layers.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Optional

SIGNALS = ("cpu_utilization", "cpu_wait_percent", "in_flight_per_worker", "p95_latency_seconds",
           "queue_depth")
UNITS = {"cpu_utilization": "%", "cpu_wait_percent": "%", "in_flight_per_worker": "",
         "p95_latency_seconds": "s", "queue_depth": ""}
# Signals whose value is a total for the whole type and whose target is per process: the HPA's
# External metric with an `AverageValue` target (GetExternalMetricReplicas): desired =
# ceil(total / target), judged against the current count, so no process needs to be ready to
# give it. A worker type's queue depth (supervise/queue_scale_loop.py) is one: it can start
# the first process of a type scaled to 0, which the HPA leaves to KEDA.
TOTALS = frozenset({"queue_depth"})
# What the app itself must export for a signal (prometheus_client, multiprocess, into the
# PROMETHEUS_MULTIPROC_DIR the daemon sets per instance; app/monitoring.py does): the names the
# loop reads, and the names to look for in an app's source (the namespace `ultrascale` and the
# `_total` suffix are added by prometheus_client).
APP_METRICS = {"in_flight_per_worker": ("ultrascale_http_requests_in_flight",),
               "p95_latency_seconds": ("ultrascale_http_requests_total",
                                       "ultrascale_http_request_duration_seconds")}
APP_SOURCE_NAMES = {"in_flight_per_worker": "http_requests_in_flight",
                    "p95_latency_seconds": "http_request_duration_seconds"}


def needs(name: str, traffic_log: bool) -> str:
    """What must be there for signal `name` to be measured, in the operator's words."""
    export = ("the app must export, into the PROMETHEUS_MULTIPROC_DIR the daemon sets for each "
              "instance (prometheus_client multiprocess; app/monitoring.py's MetricsMiddleware "
              "does), ")
    if name == "in_flight_per_worker":
        return export + "the gauge `ultrascale_http_requests_in_flight` (multiprocess_mode livesum)"
    if name == "p95_latency_seconds":
        if traffic_log:
            return "nginx's traffic log (nginx.traffic_log), which the daemon reads"
        return (export + "the counter `ultrascale_http_requests_total` and the histogram "
                "`ultrascale_http_request_duration_seconds` (nginx's traffic log, the other "
                "source, is off)")
    if name == "cpu_wait_percent":
        return "Linux /proc/PID/schedstat of the instances' processes, which the daemon reads"
    return "the instances' CPU seconds, which the daemon samples"


# ---- inputs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Signal:
    value: float
    at: float             # when it was measured (monotonic seconds)


@dataclass(frozen=True)
class Observation:
    """What the loop measured: each signal (absent = could not be measured), the instances
    that serve (ready), those wanted, the host's CPU (percent of all cores), its cores and the
    fleet's workers (None: not known; the host CPU guard then holds on host CPU alone)."""
    ready: int
    wanted: int
    signals: Mapping[str, Signal] = field(default_factory=dict)
    host_cpu_percent: Optional[float] = None
    cores: Optional[int] = None
    workers: Optional[int] = None           # worker processes of the wanted instances
    fleet_cpu_percent: Optional[float] = None  # the ready instances' processes, % of all cores


@dataclass(frozen=True)
class ScaleEvent:
    at: float
    delta: int            # + added, - removed


@dataclass(frozen=True)
class State:
    """What the decisions remember: the recommendations (for the stabilization windows), the
    autoscaler's own changes (for the rate policies) and the pause."""
    recommendations: tuple[tuple[float, int], ...] = ()
    events: tuple[ScaleEvent, ...] = ()
    paused_until: Optional[float] = None   # math.inf: until resumed
    paused_reason: str = ""
    started: bool = False                  # the scale-down window was seeded with the count
    followed_since: tuple[tuple[str, float], ...] = ()  # when each target was first followed
    seen: frozenset = frozenset()          # signals measured at least once since then
    left_out: frozenset = frozenset()      # never seen past the grace: not needed for a step down

    def paused(self, now: float) -> bool:
        return self.paused_until is not None and now < self.paused_until


@dataclass(frozen=True)
class SignalView:
    name: str
    value: Optional[float]       # None: missing or stale
    target: float
    ratio: Optional[float]
    desired: Optional[int]       # None: missing
    note: str = ""


@dataclass(frozen=True)
class Decision:
    action: str                  # "scale_up", "scale_down" or "hold"
    current: int
    desired: int                 # what the count should become (== current on a hold)
    recommendation: Optional[int]  # the signals' raw recommendation (before windows, policies)
    reason: str
    signals: tuple[SignalView, ...] = ()
    vetoes: tuple[str, ...] = ()
    at: float = 0.0
    never_seen: tuple[str, ...] = ()   # signals left out of the step-down rule at this decision

    def to_dict(self) -> dict:
        return {"action": self.action, "current": self.current, "desired": self.desired,
                "recommendation": self.recommendation, "reason": self.reason,
                "vetoes": list(self.vetoes),
                "signals": {s.name: {"value": _round(s.value), "target": s.target,
                                     "ratio": _round(s.ratio), "desired": s.desired,
                                     **({"note": s.note} if s.note else {})}
                            for s in self.signals}}


def _round(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(v, 4)


def _fmt(name: str, v: float) -> str:
    unit = UNITS.get(name, "")
    return f"{v:.3g}{unit}" if unit != "%" else f"{v:.1f}%"


# ---- the steps ---------------------------------------------------------------------------

def targets_of(policy) -> dict[str, float]:
    """The followed signals and their targets (`policy` is spec.AutoscaleSection)."""
    t = policy.target
    return {name: getattr(t, name) for name in SIGNALS if getattr(t, name, None) is not None}


def never_seen_grace(policy) -> float:
    """Seconds a followed signal may be absent from the start before it is left out of the
    step-down rule: the scale-down stabilization window (a fresh autoscaler does not step down
    before it anyway) and at least 3 x stale_after_seconds (an app's first measurement)."""
    return max(policy.behavior.scale_down.stabilization_window_seconds,
               3 * policy.stale_after_seconds)


def _measured(s: Optional[Signal]) -> bool:
    return s is not None and math.isfinite(s.value) and s.value >= 0


def follow(state: State, obs: Observation, policy, now: float) -> tuple[State, tuple[str, ...]]:
    """Which followed signals were ever measured since they were first followed (a daemon start,
    or the reload that added the target), and which are left out of the step-down rule: never
    measured for never_seen_grace(policy) seconds. Returns the state and the signals left out
    at this call for the first time (the loop tells the operator once). A signal measured once
    and then gone stays `missing` and holds a step down (the HPA's rule); one left out that
    shows up later counts again."""
    names = targets_of(policy)
    since = {n: t for n, t in state.followed_since if n in names}
    for n in names:
        since.setdefault(n, now)
    seen = frozenset(n for n in state.seen if n in names) | {
        n for n in names if _measured(obs.signals.get(n))}
    grace = never_seen_grace(policy)
    left_out = frozenset(n for n in names if n not in seen and now - since[n] >= grace)
    new = tuple(sorted(left_out - state.left_out))
    return replace(state, followed_since=tuple(sorted(since.items())), seen=seen,
                   left_out=left_out), new


def signal_views(obs: Observation, policy, now: float, current: int,
                 left_out: frozenset = frozenset(),
                 since: Optional[Mapping[str, float]] = None) -> tuple[SignalView, ...]:
    """Step 1: one recommendation per followed signal."""
    out = []
    for name, target in targets_of(policy).items():
        s = obs.signals.get(name)
        if not _measured(s):
            note = "missing"
            if name in left_out:
                age = now - (since or {}).get(name, now)
                note = (f"never seen in {age:.0f}s (left out of the step-down rule: the app "
                        "does not export it)")
            out.append(SignalView(name, None, target, None, None, note))
            continue
        age = now - s.at
        if age > policy.stale_after_seconds:
            out.append(SignalView(name, None, target, None, None,
                                  f"stale ({age:.0f}s old, over {policy.stale_after_seconds:g}s)"))
            continue
        if name in TOTALS:
            out.append(_total_view(name, s.value, target, current, policy.tolerance))
            continue
        ratio = s.value / target
        if obs.ready <= 0:
            out.append(SignalView(name, s.value, target, ratio, None, "no ready instance"))
        elif abs(ratio - 1.0) <= policy.tolerance:
            out.append(SignalView(name, s.value, target, ratio, current, "within tolerance"))
        else:
            # ceil of a float product: 1.0000000001 must not become one more instance
            out.append(SignalView(name, s.value, target, ratio,
                                  math.ceil(round(obs.ready * ratio, 6))))
    return tuple(out)


def _total_view(name: str, value: float, target: float, current: int, tolerance: float) -> SignalView:
    """Step 1 for a TOTALS signal: usage ratio against the current count, desired from the total."""
    if current <= 0:
        if value <= 0:
            return SignalView(name, value, target, None, 0, "nothing queued, nothing running")
        return SignalView(name, value, target, None, math.ceil(round(value / target, 6)))
    ratio = value / (target * current)
    if abs(ratio - 1.0) <= tolerance:
        return SignalView(name, value, target, ratio, current, "within tolerance")
    return SignalView(name, value, target, ratio, math.ceil(round(value / target, 6)))


def stabilize(history: tuple[tuple[float, int], ...], recommendation: int, current: int,
              policy, now: float) -> int:
    """Step 4 (the HPA's stabilizeRecommendationWithBehaviors)."""
    up_cut = now - policy.behavior.scale_up.stabilization_window_seconds
    down_cut = now - policy.behavior.scale_down.stabilization_window_seconds
    up = down = recommendation
    for at, rec in history:
        if at > up_cut:
            up = min(up, rec)
        if at > down_cut:
            down = max(down, rec)
    out = current
    if out < up:
        out = up
    if out > down:
        out = down
    return out


def _changed_in(events: tuple[ScaleEvent, ...], period: float, now: float) -> tuple[int, int]:
    added = sum(e.delta for e in events if e.delta > 0 and e.at > now - period)
    removed = -sum(e.delta for e in events if e.delta < 0 and e.at > now - period)
    return added, removed


def up_limit(current: int, events: tuple[ScaleEvent, ...], rules, now: float) -> int:
    """Step 5 up (calculateScaleUpLimitWithScalingRules): the most instances allowed now."""
    if rules.select_policy == "Disabled":
        return current
    proposals = []
    if rules.pods_value is not None:
        added, removed = _changed_in(events, rules.pods_period_seconds, now)
        proposals.append(current - added + removed + rules.pods_value)
    if rules.percent_value is not None:
        added, removed = _changed_in(events, rules.percent_period_seconds, now)
        start = current - added + removed
        proposals.append(math.ceil(round(start * (1 + rules.percent_value / 100), 6)))
    if not proposals:
        return current
    limit = max(proposals) if rules.select_policy == "Max" else min(proposals)
    return max(limit, current)


def down_limit(current: int, events: tuple[ScaleEvent, ...], rules, now: float) -> int:
    """Step 5 down (calculateScaleDownLimitWithBehaviors): the fewest instances allowed now."""
    if rules.select_policy == "Disabled":
        return current
    proposals = []
    if rules.pods_value is not None:
        added, removed = _changed_in(events, rules.pods_period_seconds, now)
        proposals.append(current + removed - added - rules.pods_value)
    if rules.percent_value is not None:
        added, removed = _changed_in(events, rules.percent_period_seconds, now)
        start = current + removed - added
        proposals.append(int(round(start * (1 - rules.percent_value / 100), 6)))
    if not proposals:
        return current
    limit = min(proposals) if rules.select_policy == "Max" else max(proposals)
    return min(limit, current)


def _trim(state: State, policy, now: float) -> State:
    """Keep what the windows and periods can still see."""
    b = policy.behavior
    keep_rec = max(b.scale_up.stabilization_window_seconds, b.scale_down.stabilization_window_seconds)
    keep_ev = max(b.scale_up.pods_period_seconds, b.scale_up.percent_period_seconds,
                  b.scale_down.pods_period_seconds, b.scale_down.percent_period_seconds)
    return replace(state,
                   recommendations=tuple(r for r in state.recommendations if r[0] > now - keep_rec),
                   events=tuple(e for e in state.events if e.at > now - keep_ev))


# The host CPU guard holds a step up on a saturated host only while the fleet's own processes
# use at least this share of the host's busy CPU: then the host is saturated by the fleet itself
# and another instance only contends with the others. Below it the host is busy with other work
# (a load generator, other services) and another instance gets the fleet a larger share of the
# CPU: the kernel shares it between runnable tasks (and between sessions with autogroup; each
# instance is its own session). Measured: docs/benchmarks.md, "Autoscaling on a load trace".
FLEET_SHARE_OF_SATURATED_HOST = 0.5


def host_saturated(obs: Observation, policy) -> tuple[bool, str]:
    """The host CPU guard (step 6): (hold, the words). Not saturated: (False, ""); saturated but
    the step goes ahead: (False, why it still helps)."""
    host, limit = obs.host_cpu_percent, policy.host_cpu_saturation_percent
    if host is None or limit is None or host <= limit:
        return False, ""
    over = f"host CPU {host:.0f}% is over host_cpu_saturation_percent {limit:g}%"
    if obs.cores is not None and obs.workers is not None and obs.workers < obs.cores:
        # below one worker per core another instance still adds parallelism
        return False, (f"{over}, but the fleet's {obs.workers} workers are fewer than the "
                       f"{obs.cores} cores")
    fleet = obs.fleet_cpu_percent
    if fleet is None:
        cores = "" if obs.cores is None or obs.workers is None else \
            f" and the fleet's {obs.workers} workers already match the {obs.cores} cores"
        return True, over + cores
    share = fleet / host if host > 0 else 1.0
    words = (f"the fleet's own processes use {fleet:.0f}% of the cores, {100 * share:.0f}% of "
             f"the busy CPU")
    if share >= FLEET_SHARE_OF_SATURATED_HOST:
        return True, (f"{over} and {words} (at least "
                      f"{100 * FLEET_SHARE_OF_SATURATED_HOST:g}%): the fleet saturates it")
    return False, (f"{over}, but {words}: other work saturates it, and another instance gets "
                   "the fleet a larger share")


Budgets = Callable[[int], "list[str]"]


def no_budgets(n: int) -> list[str]:
    return []


def decide(state: State, obs: Observation, current: int, policy, bounds: tuple[int, int],
           budgets: Budgets = no_budgets, now: float = 0.0) -> tuple[Decision, State]:
    """One decision. `policy` is spec.AutoscaleSection, `bounds` its (min, max) replicas,
    `budgets(n)` the problems (spec.budget_errors and the measured memory) of running n
    instances, [] when all hold. Returns the decision and the state to pass next time; the
    caller applies a scale only through the same path as `ultrascalectl scale`."""
    state, never_seen = follow(state, obs, policy, now)
    d, state = _decide(state, obs, current, policy, bounds, budgets, now)
    return (replace(d, never_seen=never_seen) if never_seen else d), state


def _decide(state: State, obs: Observation, current: int, policy, bounds: tuple[int, int],
            budgets: Budgets, now: float) -> tuple[Decision, State]:
    lo, hi = bounds
    state = _trim(state, policy, now)
    if not state.started:
        # the HPA's maybeInitScaleDownStabilizationWindow: a fresh autoscaler (daemon start)
        # does not step down before a full window has seen the load
        state = replace(state, started=True, recommendations=((now, current),))
    views = signal_views(obs, policy, now, current, state.left_out, dict(state.followed_since))

    def hold(reason: str, recommendation: Optional[int] = None, vetoes: tuple = ()) -> tuple[Decision, State]:
        return Decision("hold", current, current, recommendation, reason, views, vetoes, now), state

    if state.paused(now):
        until = "until resumed" if state.paused_until == math.inf else \
            f"for {state.paused_until - now:.0f}s more"
        return hold(f"paused {until}" + (f" ({state.paused_reason})" if state.paused_reason else ""))
    known = [v for v in views if v.desired is not None]
    # a signal never seen past the grace (follow()) does not hold a step down forever
    missing = [v for v in views if v.value is None and v.name not in state.left_out]
    if not known:
        why = "; ".join(f"{v.name} {v.note}" for v in views) or "no signal followed"
        if obs.ready <= 0:
            why = f"no ready instance gives a signal ({why})"
        return hold(f"held: no fresh signal ({why}); the count stays")
    recommendation = max(v.desired for v in known)
    driver = max(known, key=lambda v: (v.desired, v.ratio or 0))
    raw = recommendation
    clamped = min(max(raw, lo), hi)
    if missing and clamped < current:
        # the HPA's rule: a step down needs every signal
        return hold("held: no step down while " + ", ".join(f"{v.name} is {v.note}" for v in missing),
                    raw)
    state = replace(state, recommendations=state.recommendations + ((now, clamped),))
    stable = stabilize(state.recommendations[:-1], clamped, current, policy, now)
    b = policy.behavior
    desired = stable
    limited = ""
    if stable > current:
        limit = min(hi, up_limit(current, state.events, b.scale_up, now))
        if limit < desired:
            desired, limited = limit, f"; scale_up policy allows {limit} now"
    elif stable < current:
        limit = max(lo, down_limit(current, state.events, b.scale_down, now))
        if limit > desired:
            desired, limited = limit, f"; scale_down policy allows {limit} now"
    if current < lo:
        desired, limited = max(desired, lo), f"; min_replicas {lo}"
    elif current > hi:
        desired, limited = min(desired, hi), f"; max_replicas {hi}"
    why = (f"{driver.name} {_fmt(driver.name, driver.value)} vs target "
           f"{_fmt(driver.name, driver.target)} on {obs.ready} ready -> {raw}")
    if clamped != raw:
        why += f", bounded to {clamped} (min/max_replicas {lo}..{hi})"
    if stable != clamped:
        why += (f", stabilized to {stable} (the highest recommendation of the last "
                f"{b.scale_down.stabilization_window_seconds:g}s)" if clamped < stable else
                f", stabilized to {stable} (the lowest recommendation of the last "
                f"{b.scale_up.stabilization_window_seconds:g}s)")
    why += limited
    if desired == current:
        if stable != current and limited:
            return hold(f"held: {why}", raw)
        return hold(f"steady: {why}", raw)
    if desired > current:
        saturated, note = host_saturated(obs, policy)
        if saturated:
            return hold(f"held: {note}: more instances would serve less ({why})", raw)
        if note:
            why += f"; {note}"
        vetoes: tuple[str, ...] = ()
        allowed = desired
        while allowed > current:
            problems = budgets(allowed)
            if not problems:
                break
            if not vetoes:
                vetoes = tuple(problems)
            allowed -= 1
        if allowed == current:
            return hold(f"held: over budget for {desired} instances ({why}): "
                        + "; ".join(vetoes), raw, vetoes)
        if vetoes:
            why += f"; cut to {allowed}: {desired} is over budget: " + "; ".join(vetoes)
        desired = allowed
        state = replace(state, events=state.events + (ScaleEvent(now, desired - current),))
        return Decision("scale_up", current, desired, raw, why, views, vetoes, now), state
    if obs.ready < obs.wanted:
        return hold(f"held: {obs.wanted - obs.ready} of {obs.wanted} wanted instances not ready yet; "
                    f"no step down before they serve ({why})", raw)
    state = replace(state, events=state.events + (ScaleEvent(now, desired - current),))
    return Decision("scale_down", current, desired, raw, why, views, (), now), state


def pause(state: State, now: float, seconds: Optional[float], reason: str) -> State:
    """Pause for `seconds` (None: until resumed)."""
    until = math.inf if seconds is None else now + seconds
    return replace(state, paused_until=until, paused_reason=reason)


MANUAL_SCALE_NOTE = ("autoscaling is paused until `ultrascalectl autoscale resume` (a manual scale "
                     "takes the fleet over)")


def manual_scale(state: State, enabled: bool, now: float, n: int) -> tuple[State, Optional[str]]:
    """An operator's `scale N` while autoscaling is on takes the fleet over: paused until
    resumed, and the words to tell the operator. Off, or paused until resumed already: as is."""
    if not enabled or state.paused_until == math.inf:
        return state, None
    return pause(state, now, None, f"manual scale to {n}"), MANUAL_SCALE_NOTE


def resume(state: State) -> State:
    return replace(state, paused_until=None, paused_reason="")


def parse_duration(text: str) -> float:
    """`30m`, `90s`, `2h`, `1h30m` or plain seconds -> seconds; ValueError naming the problem."""
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        value = float(t)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 90s, 2h, 1h30m)")
        value = sum(float(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)
    if not 0 < value <= 7 * 86400:
        raise ValueError(f"duration must be more than 0 and at most 7 days, got {text!r}")
    return value
