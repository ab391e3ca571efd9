"""Pure decisions of the supervisor: what to do next, given what is wanted and what is seen.

Nothing here performs I/O or reads a clock; the supervisor passes `now` (monotonic seconds)
and performs the returned actions. Unit tests drive these functions with tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ultrascaled.states import State

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


@dataclass(frozen=True)
class Policy:
    start_timeout: float = 30.0
    drain_seconds: float = 0.5
    stop_timeout: float = 32.0         # graceful timeout plus a margin, then SIGKILL
    drain_max_wait: float = 10.0       # stop a draining instance even if nginx never confirmed
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    fatal_crashes: int = 5
    fatal_window: float = 60.0


@dataclass(frozen=True)
class Action:
    kind: str        # spawn | drain | undrain | stop | kill | forget
    port: int
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    upstream: tuple[int, ...]          # ports that should be in the nginx upstream
    wake_at: float | None              # next time a timer needs the loop, if any
    settled: bool                      # every wanted instance is RUNNING, nothing else is alive


def desired_ports(base_port: int, count: int) -> tuple[int, ...]:
    return tuple(range(base_port, base_port + count))


def plan(wanted: tuple[int, ...] | frozenset[int], instances: dict[int, InstanceView],
         applied_upstream: frozenset[int], policy: Policy, now: float) -> Plan:
    wanted = frozenset(wanted)
    actions: list[Action] = []
    timers: list[float] = []

    def act(kind: str, port: int, reason: str = "") -> None:
        actions.append(Action(kind, port, reason))

    # A rolling restart takes one instance out at a time, and only while every other wanted
    # instance is serving (running and in the upstream in effect), so at least N-1 stay in the
    # upstream throughout.
    def others_running(port: int) -> bool:
        return all(instances.get(p) is not None and instances[p].state is S.RUNNING
                   and p in applied_upstream for p in wanted if p != port)

    rolling = False  # one restart drain per plan: the others wait for it to come back

    for port in sorted(wanted | instances.keys()):
        v = instances.get(port)
        want = port in wanted
        if v is None:
            act("spawn", port, "scale up")
            continue
        st = v.state
        if st is S.STOPPED:
            if not want:
                act("forget", port)
            elif not v.group_alive:
                act("spawn", port, "restart" if v.restart_requested else "start")
        elif st is S.STARTING:
            if not want:
                act("stop", port, "scale down")
            elif v.kill_sent:
                pass
            elif now - v.since >= policy.start_timeout:
                act("kill", port, f"not ready after {policy.start_timeout:g}s")
            else:
                timers.append(v.since + policy.start_timeout)
        elif st is S.RUNNING:
            if not want:
                act("drain", port, "scale down")
            elif v.restart_requested and not rolling and others_running(port):
                act("drain", port, "rolling restart")
                rolling = True
        elif st is S.DRAINING:
            if want and not v.restart_requested:
                act("undrain", port, "wanted again")
            elif v.left_upstream_at is not None and port not in applied_upstream:
                ready_at = v.left_upstream_at + policy.drain_seconds
                if now >= ready_at:
                    act("stop", port, "drained")
                else:
                    timers.append(ready_at)
            elif now - v.since >= policy.drain_max_wait:
                act("stop", port, "upstream change not confirmed; stopping anyway")
            else:
                timers.append(v.since + policy.drain_max_wait)
        elif st is S.STOPPING:
            sent = v.stop_sent_at if v.stop_sent_at is not None else v.since
            if v.kill_sent:
                pass
            elif now - sent >= policy.stop_timeout:
                act("kill", port, f"still running {policy.stop_timeout:g}s after SIGTERM")
            else:
                timers.append(sent + policy.stop_timeout)
        elif st is S.BACKOFF:
            if not want:
                act("forget", port)
            elif v.group_alive:
                pass
            elif v.restart_requested or now >= v.next_start:
                act("spawn", port, "restart after backoff")
            else:
                timers.append(v.next_start)
        elif st is S.FATAL:
            if not want:
                act("forget", port)
            elif v.restart_requested and not v.group_alive:
                act("spawn", port, "operator restart")

    upstream = tuple(sorted(p for p, v in instances.items() if v.state is S.RUNNING and p in wanted))
    settled = (not actions and all(instances.get(p) is not None and instances[p].state is S.RUNNING
                                   and not instances[p].restart_requested for p in wanted)
               and instances.keys() <= wanted)
    return Plan(tuple(actions), upstream, min(timers) if timers else None, settled)


@dataclass(frozen=True)
class ExitDecision:
    state: State
    next_start: float
    crashes: tuple[float, ...]
    reason: str
    counted: bool = field(default=True)


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


def on_exit(state: State, returncode: int | None, crashes: tuple[float, ...], policy: Policy,
            now: float) -> ExitDecision:
    """Where an instance goes when its gunicorn master exits while in `state`."""
    what = describe_exit(returncode)
    if state in (S.STOPPING,):
        return ExitDecision(S.STOPPED, now, crashes, f"stopped ({what})", counted=False)
    if state is S.STARTING and returncode in (WORKER_BOOT_ERROR, APP_LOAD_ERROR):
        kind = "app failed to load" if returncode == APP_LOAD_ERROR else "worker failed to boot"
        return ExitDecision(S.FATAL, now, crashes, f"{kind} ({what}); not retrying")
    recent = tuple(t for t in crashes if now - t < policy.fatal_window) + (now,)
    if len(recent) >= policy.fatal_crashes:
        return ExitDecision(S.FATAL, now, recent,
                            f"{what}; {len(recent)} crashes within {policy.fatal_window:g}s")
    return ExitDecision(S.BACKOFF, now + backoff_delay(len(recent), policy), recent, what)


def backoff_delay(crash_count: int, policy: Policy) -> float:
    """0 for the first crash in the window, then initial, 2x initial, ... capped."""
    if crash_count <= 1:
        return 0.0
    return min(policy.backoff_max, policy.backoff_initial * 2 ** (crash_count - 2))
