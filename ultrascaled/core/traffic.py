"""The one traffic type: a window of requests, 5xx and latency, and the source that gives it.

Every reader of traffic figures -- the canary's judgement (`core/rollout.py`), the alerts, the
dashboard's history, the autoscaler, `GET /traffic` -- reads a :class:`TrafficWindow` from a
:class:`TrafficSource`. Two sources implement it: nginx's traffic log
(`observe/accesslog.py`, any app; counts are ints) and the app's own prometheus_client metrics
(`observe/history.py`'s `MetricsTraffic`; counts are counter deltas, floats).

Pure: no I/O, no clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol


@dataclass(frozen=True)
class TrafficWindow:
    """One port's (or the fleet's) requests over a window."""
    requests: float = 0          # client requests (or tries, per instance), an int from the traffic log
    errors_5xx: float = 0
    p95: Optional[float] = None  # seconds; None without requests
    seconds: float = 0.0         # the span the counts cover; 0 = not known

    @property
    def rate_5xx(self) -> float:
        """The 5xx share, 0..1 (0.0 without requests)."""
        return self.errors_5xx / self.requests if self.requests else 0.0


class TrafficSource(Protocol):
    def window(self, port: Optional[int], seconds: float) -> TrafficWindow: ...  # port None = whole fleet
