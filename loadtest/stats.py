"""Pure arithmetic of the load tester: percentiles, latency summaries, targets and verdicts.

Percentiles are *exact*: every request's latency is recorded (8 bytes each) and the
percentile is taken with the nearest-rank method on the sorted values: the p-th
percentile is the smallest recorded value such that at least p % of all values are
less than or equal to it (``sorted[ceil(p/100 * n) - 1]``). No interpolation, so a
reported percentile is always a latency that some request really had.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

#: Error kinds. A request is *failed* when it ends in any of these.
ERROR_KINDS = (
    "timeout",          # no complete response within --timeout (connect + send + receive)
    "connect_refused",  # TCP connect refused (nothing listening)
    "connect_error",    # any other error while connecting
    "reset",            # connection reset / broken pipe while sending or receiving
    "closed",           # server closed the connection before the response was complete
    "bad_response",     # unparsable status line, headers or chunked framing, or a 1xx final status
    "http_4xx",         # complete response with status 400-499
    "http_5xx",         # complete response with status 500-599
)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already *sorted* values; None when there are none.

    >>> percentile([1, 2, 3, 4], 50)
    2
    >>> percentile([1, 2, 3, 4], 100)
    4
    """
    n = len(sorted_values)
    if n == 0:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    if p == 0:
        return sorted_values[0]
    rank = math.ceil(p / 100.0 * n - 1e-9)
    return sorted_values[min(max(rank, 1), n) - 1]


@dataclass
class LatencyStats:
    """Latency summary in milliseconds (None when no request was recorded)."""

    count: int = 0
    min: float | None = None
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    p999: float | None = None
    max: float | None = None

    @classmethod
    def from_seconds(cls, latencies_s: Iterable[float]) -> "LatencyStats":
        vals = sorted(latencies_s)
        n = len(vals)
        if n == 0:
            return cls()
        ms = 1000.0
        return cls(
            count=n,
            min=vals[0] * ms,
            mean=math.fsum(vals) / n * ms,
            p50=percentile(vals, 50) * ms,
            p90=percentile(vals, 90) * ms,
            p95=percentile(vals, 95) * ms,
            p99=percentile(vals, 99) * ms,
            p999=percentile(vals, 99.9) * ms,
            max=vals[-1] * ms,
        )


def classify_status(status: int) -> str | None:
    """Error kind of a complete HTTP response, or None when it counts as ok (2xx/3xx)."""
    if 200 <= status < 400:
        return None
    if 400 <= status < 500:
        return "http_4xx"
    if 500 <= status < 600:
        return "http_5xx"
    return "bad_response"


@dataclass
class Targets:
    """Pass/fail targets; None means "not checked"."""

    max_p99_ms: float | None = None
    max_p95_ms: float | None = None
    max_error_rate_pct: float | None = None
    min_rps: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in asdict(self).values())


@dataclass
class Check:
    name: str
    target: float
    actual: float | None
    passed: bool

    def describe(self) -> str:
        actual = "n/a" if self.actual is None else f"{self.actual:.2f}"
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: actual {actual}, target {self.target:g}"


def evaluate(targets: Targets, *, p95_ms: float | None, p99_ms: float | None,
             error_rate_pct: float | None, rps: float | None) -> list[Check]:
    """Compare measured values with the targets. A value that could not be measured
    (no requests at all) fails its target: nothing was shown to meet it."""
    checks: list[Check] = []

    def upper(name, target, actual):
        if target is not None:
            checks.append(Check(name, target, actual, actual is not None and actual <= target))

    def lower(name, target, actual):
        if target is not None:
            checks.append(Check(name, target, actual, actual is not None and actual >= target))

    upper("p99 ms <= max", targets.max_p99_ms, p99_ms)
    upper("p95 ms <= max", targets.max_p95_ms, p95_ms)
    upper("error rate % <= max", targets.max_error_rate_pct, error_rate_pct)
    lower("req/s >= min", targets.min_rps, rps)
    return checks


def split_evenly(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` integers differing by at most one, larger first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def split_proportionally(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` proportionally to ``weights`` (largest remainder), summing to total."""
    wsum = sum(weights)
    if wsum <= 0:
        return [0] * len(weights)
    raw = [total * w / wsum for w in weights]
    out = [int(math.floor(r)) for r in raw]
    rest = total - sum(out)
    order = sorted(range(len(weights)), key=lambda i: raw[i] - out[i], reverse=True)
    for i in order[:rest]:
        out[i] += 1
    return out


@dataclass
class Tally:
    """Mergeable counters of one batch (or the whole run)."""

    ok: int = 0
    failed: int = 0
    status_counts: dict = field(default_factory=dict)
    error_counts: dict = field(default_factory=dict)
    path_counts: dict = field(default_factory=dict)

    def merge(self, other: "Tally") -> None:
        self.ok += other.ok
        self.failed += other.failed
        for mine, theirs in ((self.status_counts, other.status_counts),
                             (self.error_counts, other.error_counts),
                             (self.path_counts, other.path_counts)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
