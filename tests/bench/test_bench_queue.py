"""scripts/bench-queue's report (bench/queue.py): the section it writes into docs/benchmarks.md
names the setups, the drain times, the peak and the command; the measurement itself is the
script's (a few minutes, a real daemon and redis-server)."""
from __future__ import annotations

import argparse

from bench import queue


def test_the_section_has_both_setups_their_drain_times_and_the_speed_up():
    results = [{"setup": "fixed", "drain_seconds": 110.4, "peak": 1, "peak_at": None, "back_down_at": None},
               {"setup": "autoscaled", "drain_seconds": 22.1, "peak": 8, "peak_at": 15.3, "back_down_at": 41.0}]
    args = argparse.Namespace(items=1000, job_seconds=0.1)
    md = queue.render(results, args, "rq", "2 cores", "scripts/bench-queue", {"target": 50, "queue": {"redis": "x"}})
    assert md.startswith(queue.BEGIN) and md.rstrip().endswith(queue.END)
    assert "| fixed at 1 process | 110.4 s | 1 | - | - |" in md
    assert "| autoscaled 1..8 | 22.1 s | 8 | 15.3 s | 41.0 s |" in md
    assert "5.0x faster" in md and "1,000 real RQ jobs" in md and '"redis"' not in md
