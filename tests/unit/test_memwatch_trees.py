"""core/memwatch's decisions for worker types: trees against their own limits, streaks per root
pid; the plan stops a process the watchdog names; the scale refusal's arithmetic."""
from __future__ import annotations

import signal

import pytest

from ultrascaled.core import memwatch, worker_plan as wp
from ultrascaled.core.states import State

MiB = 1 << 20


def tree(key, pid, mib, limit=100, processes=1):
    return memwatch.TreeSample(key, pid, mib * MiB, limit * MiB, processes)


@pytest.mark.parametrize("streaks, samples, recycling, new, due", [
    ({}, [tree(("c", 0), 10, 101)], (), {10: 1}, []),                         # one over: counted
    ({10: 1}, [tree(("c", 0), 10, 101)], (), {}, [(("c", 0), 10, 2)]),        # k = 2: due
    ({10: 1}, [tree(("c", 0), 10, 100)], (), {}, []),                         # at the limit: ends it
    ({10: 1}, [tree(("c", 0), 11, 150)], (), {11: 1}, []),                    # a new pid starts at 0
    ({10: 1}, [tree(("c", 0), 10, 150)], (10,), {10: 2}, []),                 # already stopping
    ({}, [tree(("m", 0), 20, 70, limit=60), tree(("c", 0), 10, 70)], (), {20: 1}, []),  # own limits
])
def test_decide_trees(streaks, samples, recycling, new, due):
    got_new, got_due = memwatch.decide_trees(streaks, samples, 2, frozenset(recycling))
    assert got_new == new
    assert [(r.key, r.pid, r.samples) for r in got_due] == due


def test_the_plan_stops_a_running_process_the_watchdog_names_and_nothing_else():
    slots = {("c", i): wp.Slot("c", i, State.RUNNING, started_at=0.0, spawns=1) for i in (0, 1)}
    policy = wp.WorkerPolicy(stop_signal=int(signal.SIGINT), graceful_timeout=10)
    actions = wp.plan(slots, {"c": 2}, {"c": policy}, 100.0, recycle={("c", 1): "memory: over"})
    assert actions == [wp.Stop(("c", 1), int(signal.SIGINT), 110.0, "memory: over")]
    assert wp.plan(slots, {"c": 2}, {"c": policy}, 100.0) == []


@pytest.mark.parametrize("n, per, rest, budget, refused", [
    (3, 90, 730, 1000, False), (4, 90, 730, 1000, True), (0, 90, 1000, 1000, False)])
def test_worker_scale_refusal(n, per, rest, budget, refused):
    why = memwatch.worker_scale_refusal("c", n, per * MiB, "measured", rest * MiB, budget * MiB)
    assert (why is not None) == refused
    if refused:
        assert why == (f"c={n}: {n} x {per} MiB (measured) + {rest} MiB measured of the rest of the fleet "
                       f"(web instances, other worker types) = {n * per + rest} MiB exceeds "
                       f"memory.fleet_budget_mb {budget} MiB")
