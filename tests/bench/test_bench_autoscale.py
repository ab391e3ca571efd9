"""bench/autoscale.py's arithmetic on recorded rows (no processes): the trace, the assessment's
target, instance-seconds, reaction, flapping, the HPA simulation and the Markdown."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import autoscale as b  # noqa: E402


def test_trace_and_target():
    tr = b.trace(10)
    assert tr == [(0, 10, 100), (10, 20, 1000), (20, 30, 2000), (30, 50, 100)]
    assert b.users_at(tr, 25) == 2000 and b.users_at(tr, 99) == 100
    assert b.target_p99_s(100) == 0.5 and b.target_p99_s(4000) == 5.0
    assert abs(b.target_p99_s(2050) - 2.75) < 1e-9


def fake_run():
    # 1 instance, a step to 2 desired at t=12 (ready at t=14), back to 1 at t=40
    rows = []
    for t in range(0, 51):
        desired = 2 if 12 <= t < 40 else 1
        ready = 2 if 14 <= t < 40 else 1
        rows.append({"t": float(t), "desired": desired, "ready": ready, "running": ready,
                     "cpu_s": t * (0.2 if t < 10 else 1.4), "host_cpu": 50.0})
    per_second = {s: {"requests": 100, "errors": 0, "p99_ms": 3000.0 if s in (11, 12) else 100.0}
                  for s in range(50)}
    return {"ok": 5000, "failed": 0, "error_counts": {}, "per_second": per_second, "fleet": rows,
            "scale_events": [], "decisions": [{"t": 12.0, "action": "scale_up", "reason": "cpu"}]}


def test_summary_counts_instance_seconds_reaction_overshoot_and_flips():
    tr = b.trace(10)
    s = b.summarize(fake_run(), tr, window=20)
    assert s["instance_seconds"] == 76.0          # 1 x 14 + 2 x 26 + 1 x 10
    assert s["reactions_s"] == [4.0, None]        # 10 -> 14; no further rise at 20
    assert s["p99_over_target_s"] == 2            # 3 s > 1.54 s at 1000 users, two seconds
    assert s["max_instances"] == 2 and s["direction_changes_within_window"] == 0
    assert b.summarize(fake_run(), tr, window=30)["direction_changes_within_window"] == 1


def test_hpa_simulation_waits_for_its_sync_period_and_its_300s_window():
    h = b.hpa_simulation(fake_run(), b.trace(10), 1, 4, 1, 2.0, 70)
    counts = {r["t"]: r["desired"] for r in h["rows"]}
    assert counts[14] == 1 and counts[15] == 2    # decides at t=15 only (sync 15 s): 140 % -> 2
    assert counts[50] == 2                       # never down within the 300 s window
    assert h["instance_seconds"] == sum(counts.values())


def test_markdown_has_the_table_and_markers():
    run = fake_run()
    res = {"date": "d", "machine": "m", "trace": b.trace(10), "think_ms": 1000, "phase": 10, "min": 1,
           "max": 4, "down_window": 20, "workers": 1,
           "runs": {"fixed 1": run, "autoscaled cpu 70%": run},
           "summary": {"fixed 1": b.summarize(run, b.trace(10), None),
                       "autoscaled cpu 70%": b.summarize(run, b.trace(10), 20)},
           "hpa": {"autoscaled cpu 70%": b.hpa_simulation(run, b.trace(10), 1, 4, 1, 2.0, 70)}}
    md = b.markdown(res, ["--phase", "10"])
    assert md.startswith(b.BEGIN) and md.endswith(b.END)
    assert "| autoscaled cpu 70% | 5,000 | 0" in md
    assert "HPA defaults, simulated on the autoscaled cpu 70% run" in md


def test_error_counts_of_the_user_groups_add_up():
    assert b._summed([{"timeout": 2}, {"timeout": 3, "http_5xx": 1}, {}]) == {"timeout": 5, "http_5xx": 1}
