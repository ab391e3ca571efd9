"""A worker type's autoscaling on its queue's depth, in the terms of core/autoscale.py's decision.

The decision is the web fleet's `autoscale.decide()` itself (the HPA's algorithm: tolerance,
stabilization windows, the Pods and Percent rate policies); this module only says what it is
given for a worker type: a policy built from `processes.NAME.autoscale` (one followed signal,
`queue_depth`, a total with a per-process target: autoscale.TOTALS), and an observation of the
queue's depth and the type's processes. No host CPU guard and no budget (the web fleet's are
about gunicorn instances). Standard library only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ultrascaled.core import autoscale as core

SIGNAL = "queue_depth"

MANUAL_SCALE_NOTE = ("autoscaling of {name} is paused until `ultrascalectl autoscale resume {name}` "
                     "(a manual scale takes the type over)")


@dataclass(frozen=True)
class QueueTarget:
    queue_depth: float


@dataclass(frozen=True)
class QueuePolicy:
    """What autoscale.decide() reads of a policy (spec.AutoscaleSection's names)."""
    target: QueueTarget
    tolerance: float
    behavior: Any                       # spec.AutoscaleBehavior
    stale_after_seconds: float
    host_cpu_saturation_percent: Optional[float] = None   # not judged for a worker type


def policy_of(a: Any) -> QueuePolicy:
    """`a`: spec.QueueAutoscale. A depth older than 3 reads counts as missing (never: each
    read dates its own)."""
    return QueuePolicy(QueueTarget(a.target), a.tolerance, a.behavior, 3 * a.interval)


def observation(depth: Optional[int], running: int, wanted: int, now: float) -> core.Observation:
    """`depth` None: the queue could not be read (the decision then holds the count)."""
    signals = {} if depth is None else {SIGNAL: core.Signal(float(depth), now)}
    return core.Observation(ready=running, wanted=wanted, signals=signals)


def decide(state: core.State, depth: Optional[int], running: int, current: int, a: Any,
           bounds: tuple[int, int], now: float) -> tuple[core.Decision, core.State]:
    """One decision for one worker type (autoscale.decide with the type's policy)."""
    return core.decide(state, observation(depth, running, current, now), current, policy_of(a),
                       bounds, core.no_budgets, now)


def unreachable_alert_after(a: Any) -> float:
    """Seconds the queue may stay unreadable before the `queue_unreachable` alert fires: three
    reads, and at least 30 s (a broker's restart is not an alert)."""
    return max(30.0, 3 * a.interval)


def manual_scale(state: core.State, enabled: bool, now: float, name: str, n: int
                 ) -> tuple[core.State, Optional[str]]:
    """An operator's `scale NAME=N` on an autoscaled type: paused until resumed (as the web
    fleet's, core.autoscale.manual_scale), and the words to tell the operator."""
    if not enabled or state.paused_until == math.inf:
        return state, None
    return core.pause(state, now, None, f"manual scale to {n}"), MANUAL_SCALE_NOTE.format(name=name)
