"""The cache's breaker on a Redis Cluster counts failures within a window: calls that reach the
healthy primaries succeed between those that time out on a hung one (pure, injected clock)."""
from __future__ import annotations

from app.cache import CLUSTER_FAILURE_WINDOW, CircuitBreaker, TwoTierCache


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def breaker(window, clock, probe=lambda: None):
    return CircuitBreaker(probe=probe, failure_threshold=2, retry_interval=1.0, clock=clock,
                          spawn=lambda fn: fn(), failure_window=window)


def test_successes_in_between_do_not_reset_the_count_within_the_window():
    clock = Clock()
    consecutive, windowed = breaker(None, clock), breaker(10.0, clock)
    for b in (consecutive, windowed):
        b.record_failure()
        b.record_success()          # a call to another, healthy primary
        b.record_success()
        b.record_failure()
    assert consecutive.state == "closed"     # the old rule never opens on a hung primary
    assert windowed.state == "open" and windowed.opened_count == 1


def test_failures_older_than_the_window_are_forgotten():
    clock = Clock()
    b = breaker(10.0, clock)
    b.record_failure()
    clock.t += 10.5
    b.record_failure()
    assert b.state == "closed" and b.failures == 1


def test_the_probe_closes_it_and_the_count_starts_again():
    clock = Clock()
    healthy = [False]

    def probe():
        if not healthy[0]:
            raise ConnectionError("a primary hangs")
    b = breaker(10.0, clock, probe)
    b.record_failure()
    b.record_failure()
    clock.t += 1.0
    assert b.allow() is False and b.state == "open"      # probe ran and failed
    healthy[0] = True
    clock.t += 1.0
    b.allow()                                             # probe ran and passed
    assert b.state == "closed" and b.failures == 0
    b.record_failure()
    assert b.state == "closed"


def test_only_a_cluster_url_gets_the_window():
    assert TwoTierCache("redis+cluster://127.0.0.1:1").breaker.failure_window == CLUSTER_FAILURE_WINDOW
    assert TwoTierCache("redis://127.0.0.1:1/0").breaker.failure_window is None
    assert TwoTierCache("redis+sentinel://127.0.0.1:1/0/m").breaker.failure_window is None
