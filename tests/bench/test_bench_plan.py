"""bench/plan.py (scripts/bench-plan): the verdict on the plan against the real fleets, and its
section of docs/benchmarks.md, from recorded results. Pure, fast."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.plan import markdown, markers, verdict_text  # noqa: E402


def fleet(n, holds, p99=500.0):
    return {"instances": n, "users": 1000, "seconds": 40.0, "requests": 100000, "rps": 2500.0,
            "p95_ms": p99 * 0.8, "p99_ms": p99, "error_rate_pct": 0.0 if holds else 5.0,
            "failed_probes": 0, "failed_in_a_row": 0, "restarts": 0, "warnings": [], "holds": holds}


@pytest.mark.parametrize("planned, runs, text", [
    (2, {2: True, 1: False}, "the plan holds: 2 instances held the target and 1 did not"),
    (2, {2: True, 1: True}, "the plan is safe but not tight"),
    (1, {1: True}, "the plan holds: 1 instance held the target (one fewer is no fleet)"),
    (1, {1: False, 2: True}, "the plan missed by 1: 1 instance did not hold the target, 2 did"),
    (2, {2: False, 1: False, 3: False, 4: False}, "the plan missed by more than 2"),
])
def test_verdict_on_the_plan(planned, runs, text):
    assert verdict_text(planned, {n: fleet(n, h) for n, h in runs.items()}).startswith(text)


def test_section_has_markers_the_command_and_both_tables():
    step = {"users": 500, "rps": 2500.0, "p95_ms": 300.0, "p99_ms": 400.0, "error_rate_pct": 0.0,
            "requests": 12000, "probes": 11, "failed_probes": 0, "failed_run": 0}
    res = {"users": 1000, "seconds": 40.0, "date": "2026-12-07 16:18 UTC", "machine": "2 cores",
           "elapsed_s": 130.0, "measure_argv": ["ultrascalectl", "plan", "--users", "1000", "--measure"],
           "plan": {"instances": 2, "verdict": "extrapolated", "memory_expected_mib": 150.0,
                    "calibration": {"p99_target_ms": 1000.0, "source": "measured"},
                    "measurement": {"urls": ["/"], "bounds": "5 s per step", "stopped": "stopped after 1000 users",
                                    "steps": [step]}},
           "runs": {1: fleet(1, False, 2029.1), 2: fleet(2, True, 820.5)},
           "verdict": "the plan holds: 2 instances held the target and 1 did not"}
    md = markdown(res, ["--users", "1000"])
    begin, end = markers("reference")
    assert md.startswith(begin) and md.endswith(end)
    assert "`scripts/bench-plan --users 1000`" in md and "shared with other test and benchmark runs" in md
    assert "| 500 | 2500.0 | 300.0 | 400.0 | 0.00% | 12000 | 0 of 11 (0) |" in md
    assert "| 2 (planned) | 2500.0 |" in md and "| misses |" in md
