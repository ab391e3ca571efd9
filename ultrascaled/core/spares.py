"""Pure decisions for warm spares (`instances.spares`, docs/spares.md): which spare slots to boot,
probe, replace or kill. The reconciler (core/reconciler/spares.py) performs the actions.

A slot is a port just past the range nginx lists (base_port + max + j). A spare there is a
gunicorn master of the current release booted on a socket the daemon holds with its gate closed
(nobody ever connects to it) plus a private probe socket; it serves nothing until a takeover
hands it a serving port's socket, and then it is that port's instance and its slot boots anew.
"""
from __future__ import annotations

from dataclasses import dataclass

from ultrascaled.core.plan import Policy, backoff_delay, probe_delay

STARTING, READY, BACKOFF = "starting", "ready", "backoff"


@dataclass(frozen=True)
class SpareView:
    port: int
    state: str                  # starting | ready | backoff (no process: waits for next_start)
    since: float = 0.0
    fresh: bool = True          # it runs what a takeover now would: the wanted release and spec
    probing: bool = False
    next_probe: float = 0.0
    kill_sent: bool = False
    health_failures: int = 0
    next_start: float = 0.0
    last_probe: str = ""


@dataclass(frozen=True)
class SpawnSpare:
    port: int
    reason: str = ""


@dataclass(frozen=True)
class ProbeSpare:
    port: int
    reason: str = ""


@dataclass(frozen=True)
class KillSpare:
    port: int
    reason: str = ""


@dataclass(frozen=True)
class ForgetSpare:
    port: int
    reason: str = ""


SpareAction = SpawnSpare | ProbeSpare | KillSpare | ForgetSpare


def spare_ports(base_port: int, max_instances: int, spares: int) -> tuple[int, ...]:
    """The spares' ports: just past the range nginx lists, so no upstream ever names one."""
    return tuple(base_port + max_instances + j for j in range(spares))


def plan_spares(wanted: tuple[int, ...], spares: dict[int, SpareView], policy: Policy,
                now: float) -> tuple[tuple[SpareAction, ...], float | None]:
    """Actions for the spare slots, and when the plan next needs the loop."""
    actions: list[SpareAction] = []
    timers: list[float] = []
    for port in sorted(set(wanted) | spares.keys()):
        v = spares.get(port)
        if port not in wanted:
            if v is None:
                continue
            if v.state == BACKOFF:
                actions.append(ForgetSpare(port, "no longer wanted"))
            elif not v.kill_sent:
                actions.append(KillSpare(port, "no longer wanted"))
            continue
        if v is None:
            actions.append(SpawnSpare(port, "boot ahead"))
            continue
        if v.state == BACKOFF:
            if now >= v.next_start:
                actions.append(SpawnSpare(port, "again after backoff"))
            else:
                timers.append(v.next_start)
            continue
        if v.kill_sent:
            continue
        if not v.fresh:
            actions.append(KillSpare(port, "runs another release or spec than an instance would now"))
        elif v.state == STARTING and now - v.since >= policy.start_timeout:
            last = f" (last probe: {v.last_probe})" if v.last_probe else ""
            actions.append(KillSpare(port, f"not ready after {policy.start_timeout:g}s{last}"))
        elif v.state == READY and v.health_failures >= policy.health_failures:
            actions.append(KillSpare(port, f"health check failed {v.health_failures} times in a row "
                                           f"(last: {v.last_probe or 'no answer'})"))
        else:
            if v.state == STARTING:
                timers.append(v.since + policy.start_timeout)
            if v.probing:
                continue
            if now >= v.next_probe:
                actions.append(ProbeSpare(port, "readiness" if v.state == STARTING else "liveness"))
            else:
                timers.append(v.next_probe)
    return tuple(actions), (min(timers) if timers else None)


def next_spare_probe(state: str, since: float, now: float, policy: Policy) -> float:
    """Readiness as an instance's (fast, then slower); a ready spare at the health interval."""
    if state == STARTING:
        return now + probe_delay(now - since, policy)
    return now + policy.health_interval


def spare_backoff(failures: int, policy: Policy) -> float:
    """How long a slot waits after `failures` spares in a row that died or never got ready."""
    return max(policy.backoff_initial if failures > 1 else 0.0, backoff_delay(failures, policy))


def hold_restarts(spares: dict[int, SpareView]) -> bool:
    """A restart (a deploy's, a reload's, an operator's, the memory watchdog's) waits while the
    spares are being made current: a live spare of another release or spec, or fresh ones that
    are all still booting. It then takes a fresh spare at once instead of booting a replacement
    beside the serving master. A slot backing off holds nothing (a release whose spares cannot
    boot does not stop the deploy: its replacements fail the usual way)."""
    if any(not v.fresh and v.state != BACKOFF for v in spares.values()):
        return True     # (killed or not yet: its slot boots the current one next)
    live = [v for v in spares.values() if v.state != BACKOFF and not v.kill_sent]
    fresh_ready = any(v.state == READY for v in live)
    return not fresh_ready and any(v.state == STARTING for v in live)
