"""plan_for from a `plan --measure` Measurement: the step that held min(target p99,
health.timeout), the instance count for the users, what was measured and what assumed. Pure."""
from __future__ import annotations

import dataclasses

import pytest

from ultrascaled.core import capacity
from ultrascaled.core.capacity import (MeasuredStep, Measurement, calibration_from_measurement, held_step,
                                       measured_capacity,
                                       latency_target, measure_steps, plan_for, render, step_from_loadtest)
from ultrascaled.spec import HealthSection, parse_spec

from capacity_helpers import make_spec

GiB = 1024 ** 3


def step(users, rps, p99, err=0.0, p95=None):
    return MeasuredStep(users=users, rps=rps, p95_ms=p95 if p95 is not None else p99 * 0.8,
                        p99_ms=p99, error_rate_pct=err, requests=int(rps * 5), seconds=5.0)


def measured(*steps, rss=80 * 2**20, workers=1):
    return Measurement(steps=tuple(steps), urls=("/",), workers=workers, worker_class="gevent",
                       rss_bytes=rss, stopped="every step ran", bounds="5 s per step")


def plan(spec, users, m):
    return plan_for(spec, users, measurement=m, cpu_count=2, mem_total_bytes=24 * GiB,
                    nofile_limit=65536)


def with_probe_timeout(spec, seconds):
    return dataclasses.replace(spec, health=HealthSection(timeout=seconds))


def test_the_latency_an_instance_must_hold_is_the_health_timeout_when_shorter_than_the_target():
    assert latency_target(with_probe_timeout(make_spec(), 1.0)) == (
        1000.0, "min(target p99, health.timeout) = min(2000 ms, 1000 ms) = 1000 ms")
    assert latency_target(with_probe_timeout(make_spec(), 5.0))[0] == 2000.0


def test_a_step_under_2_s_but_over_the_probe_timeout_does_not_hold():
    # The 1-instance plan that failed for 1000 users: p99 1.4 s meets the product's 2 s, but the
    # daemon's 1 s health probes wait in the same queue and take the instance out of service.
    spec = with_probe_timeout(make_spec(max=8), 1.0)
    m = measured(step(250, 2600, 300), step(500, 2600, 600), step(1000, 2500, 1400))
    p = plan(spec, 1000, m)
    assert p.calibration.users == 500 and p.calibration.p99_target_ms == 1000.0
    assert p.instances == 2 and p.verdict == "extrapolated"
    assert "instances for measured capacity = ceil(1000 / 500) = 2" in p.arithmetic
    assert any(a.startswith("measured at 1000 users:") and a.endswith("misses") for a in p.arithmetic)
    # the same figures with 5 s probes: 1000 users held
    assert plan(with_probe_timeout(spec, 5.0), 1000, m).instances == 1


@pytest.mark.parametrize("users, instances, verdict", [
    (400, 1, "holds"), (500, 1, "holds"), (501, 2, "extrapolated"), (2000, 4, "extrapolated"),
])
def test_instances_are_the_users_over_what_one_instance_held(users, instances, verdict):
    m = measured(step(125, 2700, 80), step(250, 2800, 200), step(500, 2700, 700), step(1000, 2400, 1600))
    p = plan(with_probe_timeout(make_spec(max=8), 1.0), users, m)
    assert (p.instances, p.verdict) == (instances, verdict)
    assert p.throughput_rps == pytest.approx(instances * 2700)


def test_health_probes_that_fail_in_a_row_miss_a_step_whose_p99_holds():
    # Measured on the reference app: at 1000 users p99 715 ms held 1 s, but 4 of 6 health probes
    # in a row timed out (a new connection waits behind the 1000 kept-alive ones): the daemon
    # would restart that instance after health.failures of them.
    ok = step(500, 3400, 217)
    slow = dataclasses.replace(step(1000, 3100, 715), probes=6, failed_probes=4, failed_run=4)
    m = dataclasses.replace(measured(ok, slow), health_failures=3)
    assert held_step(m, 1000.0) is ok
    p = plan(with_probe_timeout(make_spec(max=8), 1.0), 1000, m)
    assert p.instances == 2
    assert any("health probes 4 of 6 failed (4 in a row, 3 restart): misses" in a for a in p.arithmetic)
    assert "fewer than 3 failed health probes in a row" in render(p)
    # two failed in a row, with 3 needed for a restart, still hold
    assert dataclasses.replace(slow, failed_run=2).meets(1000.0, 3)


def test_errors_over_1_percent_miss_even_when_fast():
    m = measured(step(100, 2000, 50), step(200, 2100, 60, err=1.5))
    assert held_step(m, 1000.0).users == 100


def test_a_pass_after_a_miss_is_noise_not_capacity():
    m = measured(step(100, 2000, 50), step(200, 2000, 1200), step(400, 2000, 900))
    assert held_step(m, 1000.0).users == 100


def test_every_step_held_up_to_the_users_needed_plans_one_instance():
    m = measured(step(250, 2600, 200), step(500, 2600, 400), step(1000, 2500, 800))
    p = plan(make_spec(max=8), 1000, m)
    assert (p.instances, p.verdict) == (1, "holds")
    assert any("1000 or more (every step held)" in x for x in p.measured)


def test_steps_the_bounds_stopped_short_are_a_lower_bound_that_plans_nothing():
    # The bounds ended the steps at 12 users: planning 1000 / 12 = 84 instances from it would be
    # nonsense, so the plan counts connections only and says how to measure further.
    m = measured(step(6, 3100, 5), step(12, 2900, 14))
    cal = calibration_from_measurement(m, 1000.0, needed=1000)
    assert cal.users is None and "the bounds stopped it" in cal.source
    p = plan(make_spec(max=8), 1000, m)
    assert (p.instances, p.verdict) == (1, "not measured")
    assert any("stopped the steps at 12 users, below the 1000" in n and "--max-seconds" in n for n in p.notes)


def test_a_knee_above_the_users_needed_is_planned_from_the_held_step():
    m = measured(step(100, 2000, 50), step(200, 2000, 1200))
    assert measured_capacity(m, 1000.0, 150) == (m.steps[0], "knee")
    assert plan(make_spec(max=8), 150, m).instances == 2


def test_no_step_held_plans_by_connections_and_says_the_measurement_missed():
    m = measured(step(100, 300, 2500), step(200, 300, 3000))
    p = plan(make_spec(max=8), 100, m)
    assert p.verdict == "not measured" and p.throughput_rps is None and p.instances == 1
    assert any("the measurement missed the target (p99 < 1000 ms" in n for n in p.notes)


def test_measured_rss_replaces_the_typical_figure():
    p = plan(make_spec(max=8), 1000, measured(step(500, 2600, 300), step(1000, 2500, 700), rss=100 * 2**20))
    assert p.memory_expected_mib == 100.0 and "measured 100 MiB per instance" in p.memory_expected_source


def test_output_says_what_was_measured_and_what_assumed():
    m = measured(step(500, 2600, 300, p95=250.5), step(1000, 2500, 1400))  # knee at 500
    text = render(plan(with_probe_timeout(make_spec(max=8), 1.0), 1000, m))
    assert "Measured: 1 instance of the app (1 gevent worker), /" in text
    assert "Assumed:" in text and "no think time" in text
    assert "(holds: p99 < 1000 ms, errors < 1%)" in text
    assert [ln.split()[-1] for ln in text.splitlines() if ln.startswith(("    500", "   1000"))] == ["holds", "misses"]
    assert "latency target per instance = min(target p99, health.timeout)" in text
    assert "measured at 500 users: 2600 req/s (2600 per worker x 1), p95 250.5 ms" in text
    assert "target p99 < 1000 ms: extrapolated" in text


def test_a_calibration_and_a_measurement_exclude_each_other():
    with pytest.raises(ValueError, match="not both"):
        plan_for(make_spec(), 10, measurement=measured(step(1, 1, 1)), calibration={"instances": 1, "rps": 1,
                 "p99_ms": 1}, cpu_count=2, mem_total_bytes=GiB, nofile_limit=1024)


def test_to_dict_holds_the_steps():
    d = plan(make_spec(max=8), 100, measured(step(100, 2000, 50))).to_dict()
    assert d["measurement"]["steps"][0]["users"] == 100 and d["throughput_measured"] is True


@pytest.mark.parametrize("users, kw, expect", [
    (1000, {"workers": 1, "worker_connections": 1000}, [62, 125, 250, 500, 1000]),
    (200, {"workers": 1, "worker_connections": 1000}, [12, 25, 50, 100, 200]),
    (5000, {"workers": 2, "worker_connections": 1000}, [125, 250, 500, 1000, 2000]),  # capped at W x R
    (1000, {"workers": 2, "worker_class": "sync"}, [1, 2]),
])
def test_default_steps_double_up_to_what_one_instance_accepts(users, kw, expect):
    assert measure_steps(users, make_spec(**kw)) == expect


def test_given_steps_are_sorted_and_unique():
    assert measure_steps(10, make_spec(), [500, 100, 100]) == [100, 500]


def test_step_from_the_load_testers_json():
    st = step_from_loadtest({"users": 50, "rps": 1234.5, "total": 6000, "wall_s": 4.9, "error_rate_pct": 0.0,
                             "latency": {"p50": 10.0, "p95": 20.0, "p99": 30.0},
                             "status_counts": {"200": 6000}, "warnings": ["host CPU was 99% busy"]})
    assert (st.users, st.rps, st.p95_ms, st.p99_ms, st.requests) == (50, 1234.5, 20.0, 30.0, 6000)
    assert st.meets(1000.0) and not st.meets(30.0)
    with pytest.raises(capacity.CalibrationError):
        step_from_loadtest({"rps": 1})


def test_a_step_with_no_requests_never_holds():
    assert not MeasuredStep(users=1, rps=0, p95_ms=None, p99_ms=None, error_rate_pct=None,
                            requests=0, seconds=1).meets(1000.0)


def test_spec_plan_urls_default_and_validation():
    assert parse_spec("{}").plan.urls == ["/"]
    assert parse_spec("plan: {urls: [/, /cached/hot]}").plan.urls == ["/", "/cached/hot"]
    for bad, msg in (("[]", "at least one path"), ("[http://x/]", "starting with /"),
                     ("['/a b']", "starting with /"), ("/", "must be a list")):
        with pytest.raises(Exception, match=msg) as exc:
            parse_spec(f"plan: {{urls: {bad}}}")
        assert "plan.urls" in str(exc.value)
