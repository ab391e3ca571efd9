"""The deploy's pure decisions (ultrascaled/core/rollout.py): the canary verdict as a table, and a
rollout driven through its phases with hand-made observations."""
from __future__ import annotations

from dataclasses import replace

import pytest

from ultrascaled.core import rollout
from ultrascaled.core.traffic import TrafficWindow
from ultrascaled.core.rollout import (CANARY, REVERTING, ROLLING, PortView, Rollout, Thresholds, advance, combine,
                                 desired_release, judge, resume)

T = Thresholds(soak_seconds=10, min_requests=20, max_error_rate_increase=0.01, max_p95_ratio=2.0,
               p95_slack_seconds=0.05)


W = TrafficWindow   # (requests, errors_5xx, p95)


@pytest.mark.parametrize("canary, old, ok, figure", [
    (None, None, True, None),                                  # no figures: health only
    (W(5, 5, 0.1), W(500, 0, 0.1), True, None),                # too few requests to judge
    (W(200, 200, 0.01), W(500, 0, 0.01), False, "rate_5xx"),   # every request 500
    (W(200, 2, 0.01), W(500, 5, 0.01), True, None),            # 1% vs 1%: same as the old ones
    (W(200, 5, 0.01), W(500, 0, 0.01), False, "rate_5xx"),     # 2.5% vs 0%
    (W(200, 0, 1.0), W(500, 0, 0.1), False, "p95"),            # ten times slower
    (W(200, 0, 0.005), W(500, 0, 0.002), True, None),          # 2.5x but 3 ms: noise
    (W(200, 0, 0.15), W(500, 0, 0.1), True, None),             # 1.5x: within the ratio
    (W(200, 0, 1.0), W(0, 0, None), True, None),               # no old traffic: p95 not compared
    (W(200, 10, 0.1), None, False, "rate_5xx"),                # one-instance fleet: vs 0%
])
def test_canary_verdict(canary, old, ok, figure):
    v = judge(canary, old, T)
    assert (v.ok, v.figure) == (ok, figure), v.detail
    assert v.detail


def test_verdict_names_the_threshold_it_crossed():
    v = judge(W(200, 200, 0.01), W(500, 0, 0.01), T)
    assert "100.0%" in v.detail and "deploy.max_error_rate_increase" in v.detail
    v = judge(W(200, 0, 1.0), W(500, 0, 0.1), T)
    assert "1000 ms" in v.detail and "100 ms" in v.detail and "deploy.max_p95_ratio" in v.detail


def test_combine_sums_counts_and_keeps_the_slowest_p95():
    t = combine([W(100, 1, 0.2), W(300, 3, 0.1), W(0, 0, None)])
    assert (t.requests, t.errors_5xx, t.p95) == (400, 4, 0.2) and t.rate_5xx == 0.01
    assert combine([]).p95 is None and combine([]).rate_5xx == 0.0


def test_desired_release_per_phase():
    r = Rollout("deploy", "v2", "v1", CANARY, canary=8001)
    assert [desired_release(r, "v1", p) for p in (8001, 8002)] == ["v2", "v1"]
    assert [desired_release(replace(r, phase=ROLLING), "v1", p) for p in (8001, 8002)] == ["v2", "v2"]
    assert [desired_release(replace(r, phase=REVERTING), "v1", p) for p in (8001, 8002)] == ["v1", "v1"]
    assert desired_release(None, "v1", 8001) == "v1"


def views(**ports) -> dict[int, PortView]:
    """views(p8001=("running", "v2", restarts), ...)"""
    out = {}
    for key, (state, release, *rest) in ports.items():
        p = int(key[1:])
        out[p] = PortView(p, state, release, restarts=rest[0] if rest else 0, serving=state == "running",
                          reason="boom" if state != "running" else "")
    return out


WANTED = (8001, 8002)


def test_a_good_deploy_goes_canary_soak_verdict_rolling_completed():
    r = Rollout("deploy", "v2", "v1", CANARY, canary=8001, started=0.0)
    # canary still starting: nothing happens
    a = advance(r, views(p8001=("starting", "v2"), p8002=("running", "v1")), WANTED, 1.0, T)
    assert a.rollout == r and not a.events
    # canary ready: the soak clock starts
    a = advance(r, views(p8001=("running", "v2"), p8002=("running", "v1")), WANTED, 2.0, T)
    r = a.rollout
    assert r.canary_ready_at == 2.0 and a.events[0][0] == "deploy.canary_ready" and not a.judge_now
    # within the soak window: wait
    a = advance(r, views(p8001=("running", "v2"), p8002=("running", "v1")), WANTED, 11.9, T)
    assert a.rollout == r and not a.judge_now
    # soak over: figures wanted, then the verdict moves it on
    a = advance(r, views(p8001=("running", "v2"), p8002=("running", "v1")), WANTED, 12.0, T)
    assert a.judge_now and a.rollout.phase == CANARY
    a = advance(r, views(p8001=("running", "v2"), p8002=("running", "v1")), WANTED, 12.0, T,
                judge(W(100, 0, 0.01), W(100, 0, 0.01), T))
    r = a.rollout
    assert r.phase == ROLLING and a.events[0][0] == "deploy.canary_passed"
    # rolling: done once every wanted port runs v2
    a = advance(r, views(p8001=("running", "v2"), p8002=("draining", "v1")), WANTED, 13.0, T)
    assert a.rollout == r and a.outcome is None
    a = advance(r, views(p8001=("running", "v2"), p8002=("running", "v2")), WANTED, 14.0, T)
    assert a.rollout is None and a.outcome == "completed" and a.events[0][0] == "deploy.completed"


@pytest.mark.parametrize("canary_view, figure", [
    (("fatal", "v2"), "boot"),       # import error: gunicorn exits 4, FATAL at once
    (("backoff", "v2"), "boot"),     # exited before ready / not ready in time
])
def test_a_canary_that_cannot_start_rolls_back(canary_view, figure):
    r = Rollout("deploy", "v2", "v1", CANARY, canary=8001)
    a = advance(r, views(p8001=canary_view, p8002=("running", "v1")), WANTED, 1.0, T)
    assert a.rollout.phase == REVERTING and a.rollout.failure == figure
    assert a.alert and "failed on boot" in a.alert and "rolling back to v1" in a.alert
    assert a.events[0][0] == "deploy.failed"


def test_a_canary_that_crashes_during_its_soak_rolls_back():
    r = Rollout("deploy", "v2", "v1", CANARY, canary=8001, canary_ready_at=2.0, canary_restarts=3)
    a = advance(r, views(p8001=("running", "v2", 4), p8002=("running", "v1")), WANTED, 5.0, T)
    assert a.rollout.failure == "crash"
    a = advance(r, views(p8001=("backoff", "v2", 3), p8002=("running", "v1")), WANTED, 5.0, T)
    assert a.rollout.failure == "crash"


def test_bad_figures_roll_back_naming_the_figure():
    r = Rollout("deploy", "v2", "v1", CANARY, canary=8001, canary_ready_at=2.0)
    v = judge(W(100, 100, 0.01), W(100, 0, 0.01), T)
    a = advance(r, views(p8001=("running", "v2"), p8002=("running", "v1")), WANTED, 12.0, T, v)
    assert a.rollout.phase == REVERTING and a.rollout.failure == "rate_5xx" and "rate_5xx" in a.alert
    # reverting is over once every port is back on v1
    r = a.rollout
    a = advance(r, views(p8001=("running", "v2"), p8002=("running", "v1")), WANTED, 13.0, T)
    assert a.outcome is None
    a = advance(r, views(p8001=("running", "v1"), p8002=("running", "v1")), WANTED, 14.0, T)
    assert a.outcome == "rolled_back" and a.rollout is None and a.events[0][2]["figure"] == "rate_5xx"


def test_an_instance_that_fails_to_boot_while_rolling_rolls_everything_back():
    r = Rollout("deploy", "v2", "v1", ROLLING, canary=8001)
    a = advance(r, views(p8001=("running", "v2"), p8002=("fatal", "v2")), WANTED, 1.0, T)
    assert a.rollout.phase == REVERTING and a.alert


def test_a_canary_scaled_away_rolls_back():
    r = Rollout("deploy", "v2", "v1", CANARY, canary=8003)
    a = advance(r, views(p8001=("running", "v1")), (8001,), 1.0, T)
    assert a.rollout.phase == REVERTING and "gone" in a.rollout.failure_detail


@pytest.mark.parametrize("phase, resumed_phase", [(CANARY, REVERTING), (ROLLING, ROLLING), (REVERTING, REVERTING)])
def test_after_a_daemon_restart_an_unjudged_canary_rolls_back_and_the_rest_resumes(phase, resumed_phase):
    saved = Rollout("deploy", "v2", "v1", phase, canary=8001, started=55.0, started_wall=1e9).persist()
    assert "started" not in saved and saved["started_wall"] == 1e9
    r, why = resume(saved, 3.0)
    assert r.phase == resumed_phase and r.started == 3.0 and why


@pytest.mark.parametrize("saved", [{}, {"kind": "deploy"}, {"kind": "x", "target": "a", "source": None, "phase": CANARY},
                                   {"kind": "deploy", "target": "a", "source": None, "phase": "nope"}])
def test_a_mangled_saved_rollout_is_dropped_with_a_reason(saved):
    r, why = resume(saved, 0.0)
    assert r is None and "dropped" in why


def test_show_names_app_directory():
    assert rollout.show(None) == "app.directory" and rollout.show("v1") == "v1"
