"""Pure decisions of the reconciler: what to do next, given what is wanted and what is seen.

Nothing here performs I/O or reads a clock; the reconciler passes `now` (monotonic seconds)
and performs the returned actions, which are typed values (one dataclass per kind of effect).
Every timer lives here too: a plan says when it next needs the loop (`wake_at`). Unit tests
drive these functions with tables; component tests drive the whole loop with a fake runner.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ultrascaled.core.boot_log import FAIL_FAST_500S, fail_fast_reason, fails_fast
from ultrascaled.core.states import State

S = State


@dataclass(frozen=True)
class InstanceView:
    port: int
    state: State
    since: float = 0.0                 # when the current state began
    next_start: float = 0.0            # BACKOFF: earliest time to spawn again
    restart_requested: bool = False
    group_alive: bool = False          # processes of the last run are still being reaped
    left_upstream_at: float | None = None  # DRAINING: when the upstream without it took effect
    stop_sent_at: float | None = None
    kill_sent: bool = False            # SIGKILL sent; waiting for the exit to be observed
    probing: bool = False              # a probe is in flight
    next_probe: float = 0.0            # earliest time for the next probe
    health_failures: int = 0           # consecutive failed health probes while RUNNING
    last_probe: str = ""               # what the last probe got ("HTTP 404", "connection refused")
    recycles: tuple["WorkerRecycle", ...] = ()  # workers sent SIGTERM by the memory watchdog
    workers: frozenset[int] = frozenset()       # worker pids seen in the last sample
    handoff: bool = False              # the daemon holds the port's socket: restart by replacement
    successor: "SuccessorView | None" = None    # a replacement master booting on the same socket
    replace_retry_at: float = 0.0      # a failed replacement: not again before this
    retiring: tuple["WorkerRecycle", ...] = ()  # replaced masters told to stop: (pid, SIGKILL deadline)
    hold_upstream: bool = False        # crashed after serving, restarting at once on the held socket:
                                       # stays in the upstream (connections wait in its queue)
    http_500s: int = 0                 # STARTING: readiness probes in a row that got HTTP 500
    boot_error: str = ""               # the exception line of a traceback its log got since the start
    stop_unserved: bool = False        # STOPPING: told to stop before it ever served (nothing to drain)


@dataclass(frozen=True)
class SuccessorView:
    """A second master started on the same listening socket while the first still serves
    (capacity N+1 -> N, no nginx reload); it takes over once its private probe answers."""
    since: float
    ready: bool = False
    probing: bool = False
    next_probe: float = 0.0
    kill_sent: bool = False
    last_probe: str = ""
    http_500s: int = 0                 # as InstanceView's, for the successor's own probes and start
    boot_error: str = ""


@dataclass(frozen=True)
class WorkerRecycle:
    pid: int
    deadline: float                    # SIGKILL if still alive then


@dataclass(frozen=True)
class Policy:
    start_timeout: float = 30.0
    drain_seconds: float = 0.5
    stop_timeout: float = 32.0         # graceful timeout plus a margin, then SIGKILL
    unserved_stop_timeout: float = 2.0  # the same for an instance stopped before it served: nothing
                                        # to drain, so a boot that ignores SIGTERM is not waited for
    drain_max_wait: float = 10.0       # stop a draining instance even if nginx never confirmed
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    fatal_crashes: int = 5
    fatal_window: float = 60.0
    probe_interval: float = 0.02       # readiness probes start this fast, then slow down
    probe_interval_max: float = 1.0
    health_interval: float = 10.0      # liveness probes of running instances
    health_failures: int = 3
    fail_fast_500s: int = FAIL_FAST_500S   # HTTP 500s in a row that fail a start whose log has a traceback
    hold_upstream_max: float = 5.0     # a crashed instance restarting on its held socket stays in the
                                       # upstream this long at most (see InstanceView.hold_upstream)
    gates: bool = False                # nginx.upstream_servers: range -- leaving the upstream is a
                                       # socket's gate, no reload: hold only the last serving instance
    upstream_retry_initial: float = 1.0
    upstream_retry_max: float = 60.0


# ---- actions: one type per effect; the reconciler matches on them exhaustively ---------------

@dataclass(frozen=True)
class _OnPort:
    port: int
    reason: str = ""


@dataclass(frozen=True)
class Spawn(_OnPort):
    """Start the instance's gunicorn master."""


@dataclass(frozen=True)
class Drain(_OnPort):
    """Take it out of the upstream and let its requests finish."""
    restart: bool = False              # come back once stopped (rolling restart, failed health)


@dataclass(frozen=True)
class Undrain(_OnPort):
    """Back into the upstream (a drain that is no longer wanted)."""


@dataclass(frozen=True)
class Stop(_OnPort):
    """SIGTERM to the master: graceful shutdown."""


@dataclass(frozen=True)
class Kill(_OnPort):
    """SIGKILL to the whole process group."""


@dataclass(frozen=True)
class Forget(_OnPort):
    """Drop an instance that is no longer wanted (stopped, or never started) and its alerts."""


@dataclass(frozen=True)
class Probe(_OnPort):
    """One HTTP probe of the health path."""


@dataclass(frozen=True)
class KillWorker:                      # a recycled worker outlived its graceful timeout
    port: int
    pid: int
    reason: str = ""


@dataclass(frozen=True)
class Publish:                         # make the upstream list exactly these ports
    servers: tuple[int, ...]
    reason: str = ""
    port: int = 0


@dataclass(frozen=True)
class Replace(_OnPort):
    """Start a successor master on the port's held socket (the old one serves meanwhile)."""


@dataclass(frozen=True)
class ProbeSuccessor(_OnPort):
    """One readiness probe of the successor, on its private probe socket."""


@dataclass(frozen=True)
class Handover(_OnPort):
    """The successor serves: it becomes the instance's master, the old one gets SIGTERM."""


@dataclass(frozen=True)
class KillSuccessor(_OnPort):
    """The successor never got ready: SIGKILL its group; the old master serves on."""


@dataclass(frozen=True)
class KillRetired(_OnPort):
    """A replaced master outlived its graceful stop: SIGKILL its group."""
    pid: int = 0


Action = (Spawn | Drain | Undrain | Stop | Kill | Forget | Probe | KillWorker | Publish | Replace | ProbeSuccessor
          | Handover | KillSuccessor | KillRetired)


def kind(action: Action) -> str:
    return type(action).__name__.lower()


@dataclass(frozen=True)
class UpstreamView:
    applied: frozenset[int] = frozenset()   # in effect in nginx
    in_flight: bool = False                 # an apply is running
    failed: frozenset[int] | None = None    # the set whose last apply failed
    failed_temporary: bool = True
    retry_at: float = 0.0                   # temporary failure: not before this
    holding: bool = False                   # adoption: keep the last run's upstream for now


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    upstream: tuple[int, ...]          # ports that should be in the nginx upstream
    wake_at: float | None              # next time a timer needs the loop, if any
    settled: bool                      # every wanted instance is RUNNING, nothing else is alive


def probe_delay(elapsed: float, policy: Policy) -> float:
    """Readiness probes: every `probe_interval` for the first second (a typical boot: it is
    noticed within one interval), then a tenth of the time waited so far, so an app that never
    gets ready is probed tens of times per attempt, not thousands."""
    if elapsed < 1.0:
        return policy.probe_interval
    return max(policy.probe_interval, min(policy.probe_interval_max, 0.1 * elapsed))


def plan(wanted: tuple[int, ...] | frozenset[int], instances: dict[int, InstanceView],
         upstream: UpstreamView | frozenset[int], policy: Policy, now: float,
         keep_serving: int | None = None, hold_restarts: bool = False) -> Plan:
    """`keep_serving`: never drain an unwanted instance if that leaves fewer serving (defaults to
    the wanted count; 0 on shutdown). `hold_restarts`: no replacement starts now (the spares are
    being made current, core/spares.py hold_restarts)."""
    if not isinstance(upstream, UpstreamView):
        upstream = UpstreamView(applied=frozenset(upstream))
    applied = upstream.applied
    wanted = frozenset(wanted)
    keep = len(wanted) if keep_serving is None else keep_serving
    actions: list[Action] = []
    timers: list[float] = []

    def serving(p: int) -> bool:
        v = instances.get(p)
        return v is not None and v.state is S.RUNNING and p in applied

    # A rolling restart takes one instance out at a time, and only while every other wanted
    # instance is serving, so at least N-1 stay in the upstream throughout.
    def others_serving(port: int) -> bool:
        return all(serving(p) for p in wanted if p != port)

    # one restart at a time: a drain per plan, and none while a replacement boots
    rolling = any(v.successor is not None for v in instances.values())
    still_serving = sum(1 for p in instances if serving(p))

    for port in sorted(wanted | instances.keys()):
        v = instances.get(port)
        want = port in wanted
        if v is None:
            actions.append(Spawn(port, "scale up"))
            continue
        st = v.state
        if st is S.STOPPED:
            if not want:
                actions.append(Forget(port))
            elif not v.group_alive:
                actions.append(Spawn(port, "restart" if v.restart_requested else "start"))
        elif st is S.STARTING:
            if not want:
                actions.append(Stop(port, "scale down before it served"))
            elif v.kill_sent:
                pass
            elif fails_fast(v.http_500s, v.boot_error, policy.fail_fast_500s):
                actions.append(Kill(port, fail_fast_reason("its health path", v.http_500s, v.boot_error)))
            elif now - v.since >= policy.start_timeout:
                last = f" (last probe: {v.last_probe})" if v.last_probe else \
                    " (a probe was still waiting for an answer)" if v.probing else ""
                actions.append(Kill(port, f"not ready after {policy.start_timeout:g}s{last}"))
            else:
                timers.append(v.since + policy.start_timeout)
                _probe(v, now, policy, actions, timers)
        elif st is S.RUNNING:
            unhealthy = v.health_failures >= policy.health_failures
            if not want:
                if not serving(port) or still_serving - 1 >= keep:
                    actions.append(Drain(port, "scale down"))
                    still_serving -= serving(port)
            elif unhealthy:
                actions.append(Drain(port, f"health check failed {v.health_failures} times in a row "
                                           f"(last: {v.last_probe or 'no answer'})", restart=True))
                still_serving -= serving(port)
            elif v.successor is not None:
                _successor(v, now, policy, actions, timers)
                _probe(v, now, policy, actions, timers)
            elif v.restart_requested and v.handoff and hold_restarts:
                _probe(v, now, policy, actions, timers)
            elif v.restart_requested and v.handoff and not rolling and others_serving(port):
                if now >= v.replace_retry_at:
                    actions.append(Replace(port, "rolling restart"))
                    rolling = True
                else:
                    timers.append(v.replace_retry_at)
                _probe(v, now, policy, actions, timers)
            elif v.restart_requested and not v.handoff and not rolling and others_serving(port):
                actions.append(Drain(port, "rolling restart", restart=True))
                still_serving -= serving(port)
                rolling = True
            else:
                _probe(v, now, policy, actions, timers)
            _recycle_deadlines(v, now, actions, timers)
        elif st is S.DRAINING:
            if want and not v.restart_requested:
                actions.append(Undrain(port, "wanted again"))
            elif v.left_upstream_at is not None and port not in applied:
                ready_at = v.left_upstream_at + policy.drain_seconds
                if now >= ready_at:
                    actions.append(Stop(port, "drained"))
                else:
                    timers.append(ready_at)
            elif now - v.since >= policy.drain_max_wait:
                actions.append(Stop(port, "upstream change not confirmed; stopping anyway"))
            else:
                timers.append(v.since + policy.drain_max_wait)
            _recycle_deadlines(v, now, actions, timers)
        elif st is S.STOPPING:
            sent = v.stop_sent_at if v.stop_sent_at is not None else v.since
            limit = policy.unserved_stop_timeout if v.stop_unserved else policy.stop_timeout
            if v.kill_sent:
                pass
            elif now - sent >= limit:
                actions.append(Kill(port, f"still running {limit:g}s after SIGTERM"
                                          + (" (stopped before it served)" if v.stop_unserved else "")))
            else:
                timers.append(sent + limit)
        elif st is S.BACKOFF:
            if not want:
                actions.append(Forget(port))
            elif v.group_alive:
                pass
            elif v.restart_requested or now >= v.next_start:
                actions.append(Spawn(port, "restart after backoff"))
            else:
                timers.append(v.next_start)
        elif st is S.FATAL:
            if not want:
                actions.append(Forget(port))
            elif v.restart_requested and not v.group_alive:
                actions.append(Spawn(port, "operator restart"))
        else:  # pragma: no cover - a new state must be planned for
            raise AssertionError(f"plan: unhandled state {st!r}")

    for port, v in sorted(instances.items()):   # replaced masters that will not stop
        for r in v.retiring:
            if now >= r.deadline:
                actions.append(KillRetired(port, "replaced master still running after its graceful stop", r.pid))
            else:
                timers.append(r.deadline)

    # The upstream lists every running instance that is not on its way out, wanted or not: an
    # unwanted one keeps serving until the wanted ones can take its place (a port change).
    draining = {a.port for a in actions if isinstance(a, Drain)}
    # An instance whose master crashed after serving and restarts at once on the socket the
    # daemon holds stays in it too: new connections wait in that socket's queue for the next
    # master (a second or two) instead of nginx being reloaded twice (which closes the clients'
    # idle keep-alive connections). A failure to start again takes it out. With gates
    # (upstream_servers: range) leaving costs no reload: while another instance serves, the
    # crashed one's gate closes and new connections go there instead of waiting for the boot.
    def held(p: int, v: InstanceView) -> bool:
        if not (v.hold_upstream and p in wanted and v.state in (S.STOPPED, S.BACKOFF, S.STARTING)):
            return False
        if policy.gates and any(q != p and w.state is S.RUNNING for q, w in instances.items()):
            return False
        if now - v.since >= policy.hold_upstream_max:   # a slow boot: let the others serve
            return False
        timers.append(v.since + policy.hold_upstream_max)
        return True

    ups = tuple(sorted(p for p, v in instances.items() if p not in draining and (
        v.state is S.RUNNING or held(p, v))))
    publish = _publish(ups, upstream, now, policy, timers)
    if publish is not None:
        actions.append(publish)
    settled = (all(isinstance(a, Probe) for a in actions) and all(instances.get(p) is not None and instances[p].state is S.RUNNING
                                   and not instances[p].restart_requested for p in wanted)
               and instances.keys() <= wanted)
    return Plan(tuple(actions), ups, min(timers) if timers else None, settled)


def _successor(v: InstanceView, now: float, policy: Policy, actions: list, timers: list) -> None:
    s = v.successor
    if s.ready:
        actions.append(Handover(v.port, "replacement ready"))
    elif s.kill_sent:
        pass
    elif fails_fast(s.http_500s, s.boot_error, policy.fail_fast_500s):
        actions.append(KillSuccessor(v.port, fail_fast_reason("the replacement's health path", s.http_500s,
                                                              s.boot_error)))
    elif now - s.since >= policy.start_timeout:
        last = f" (last probe: {s.last_probe})" if s.last_probe else ""
        actions.append(KillSuccessor(v.port, f"replacement not ready after {policy.start_timeout:g}s{last}"))
    else:
        timers.append(s.since + policy.start_timeout)
        if not s.probing:
            if now >= s.next_probe:
                actions.append(ProbeSuccessor(v.port, "readiness of the replacement"))
            else:
                timers.append(s.next_probe)


def _probe(v: InstanceView, now: float, policy: Policy, actions: list, timers: list) -> None:
    if v.probing:
        return
    if now >= v.next_probe:
        actions.append(Probe(v.port, "readiness" if v.state is S.STARTING else "liveness"))
    else:
        timers.append(v.next_probe)


def next_probe_at(v: InstanceView, now: float, policy: Policy) -> float:
    """When to probe again after a probe that finished at `now`. Running instances are probed
    on a common grid of `health_interval`, so one wake-up of the loop serves them all (16
    instances probed each on its own clock woke it 32 times a second at a 0.5 s interval)."""
    if v.state is S.STARTING:
        return now + probe_delay(now - v.since, policy)
    return (math.floor(now / policy.health_interval) + 1) * policy.health_interval


def _recycle_deadlines(v: InstanceView, now: float, actions: list, timers: list) -> None:
    for r in v.recycles:
        if r.pid not in v.workers:
            continue
        if now >= r.deadline:
            actions.append(KillWorker(v.port, r.pid, "worker still alive after graceful timeout"))
        else:
            timers.append(r.deadline)


def _publish(ups: tuple[int, ...], u: UpstreamView, now: float, policy: Policy,
             timers: list) -> Publish | None:
    want = frozenset(ups)
    if u.in_flight or u.holding:
        return None
    if want == u.applied and u.failed is None:
        return None
    if u.failed == want:
        if not u.failed_temporary:
            return None  # nginx rejects this input: wait for a change (servers, spec, nginx files)
        if now < u.retry_at:
            timers.append(u.retry_at)
            return None
        return Publish(ups, "retry after a temporary failure")
    return Publish(ups, "ready set changed")


def upstream_retry_delay(failures: int, policy: Policy) -> float:
    return min(policy.upstream_retry_max, policy.upstream_retry_initial * 2 ** max(0, failures - 1))


# ---- what happens when a gunicorn master exits --------------------------------------------------

@dataclass(frozen=True)
class ExitDecision:
    state: State
    next_start: float
    crashes: tuple[float, ...]         # crashes after serving, within fatal_window
    start_failures: int                # consecutive failures to become ready
    reason: str
    crash_loop: bool = False           # crashes after serving reached fatal_crashes in the window


# gunicorn's own exit codes for an app that cannot be loaded (arbiter.py): permanent failures.
WORKER_BOOT_ERROR = 3
APP_LOAD_ERROR = 4


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited (status unknown: not our child)"
    if returncode < 0:
        import signal
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit {returncode}"


def on_exit(state: State, returncode: int | None, crashes: tuple[float, ...], start_failures: int,
            policy: Policy, now: float, why: str = "") -> ExitDecision:
    """Where an instance goes when its gunicorn master exits while in `state`.

    Two kinds of failure, as supervisord and Kubernetes tell them apart:
    - failing to start (exit while STARTING, or not ready in time): counted in a row; after
      `fatal_crashes` of them the instance is FATAL (the app is broken; an operator must act);
    - crashing after it served: never FATAL (something keeps killing a working app, e.g. the
      OOM killer): restarts back off up to `backoff_max`, and `fatal_crashes` of them within
      `fatal_window` raise the crash-loop alert.
    """
    what = describe_exit(returncode) + (f" ({why})" if why else "")
    if state is S.STOPPING:
        return ExitDecision(S.STOPPED, now, crashes, start_failures, f"stopped ({what})")
    if state is S.STARTING:
        if returncode in (WORKER_BOOT_ERROR, APP_LOAD_ERROR):
            kind = "app failed to load" if returncode == APP_LOAD_ERROR else "worker failed to boot"
            return ExitDecision(S.FATAL, now, crashes, start_failures + 1, f"{kind} ({what}); not retrying")
        failures = start_failures + 1
        if failures >= policy.fatal_crashes:
            return ExitDecision(S.FATAL, now, crashes, failures,
                                f"{what}; failed to start {failures} times in a row")
        return ExitDecision(S.BACKOFF, now + backoff_delay(failures, policy), crashes, failures,
                            f"{what}; start failure {failures} of {policy.fatal_crashes}")
    recent = tuple(t for t in crashes if now - t < policy.fatal_window) + (now,)
    loop = len(recent) >= policy.fatal_crashes
    reason = what + (f"; {len(recent)} crashes within {policy.fatal_window:g}s" if loop else "")
    return ExitDecision(S.BACKOFF, now + backoff_delay(len(recent), policy), recent, 0, reason, loop)


def backoff_delay(crash_count: int, policy: Policy) -> float:
    """0 for the first failure, then initial, 2x initial, ... capped at backoff_max."""
    if crash_count <= 1:
        return 0.0
    delay = policy.backoff_initial * 2 ** min(crash_count - 2, 64)
    return min(policy.backoff_max, delay) if math.isfinite(delay) else policy.backoff_max


# ---- a spec reload is a diff ---------------------------------------------------------------------

@dataclass(frozen=True)
class ReloadDiff:
    added: tuple[int, ...] = ()        # newly wanted ports
    removed: tuple[int, ...] = ()      # no longer wanted
    changed: tuple[int, ...] = ()      # to restart: their command changed, or FATAL/BACKOFF
    unchanged: tuple[int, ...] = field(default=())


def reload_diff(instances: dict[int, tuple[State, str]], wanted: tuple[int, ...],
                fingerprint: dict[int, str]) -> ReloadDiff:
    """`instances`: port -> (state, fingerprint it was started with); `fingerprint`: what each
    wanted port would be started with now. A FATAL or backing-off instance is restarted by any
    reload (the operator asked to try again); a live one only when its command changes."""
    want = set(wanted)
    changed, unchanged = [], []
    for port in sorted(instances.keys() & want):
        state, fp = instances[port]
        if state in (S.FATAL, S.BACKOFF) or (state is not S.STOPPED and fp != fingerprint.get(port)):
            changed.append(port)
        else:
            unchanged.append(port)
    return ReloadDiff(tuple(sorted(want - instances.keys())), tuple(sorted(instances.keys() - want)),
                      tuple(changed), tuple(unchanged))
