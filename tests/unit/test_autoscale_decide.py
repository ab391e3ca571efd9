"""The autoscaler's decision (ultrascaled/core/autoscale.py): tables over the pure function, and load
traces replayed under a fake clock (time is an argument: nothing sleeps)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ultrascaled.core import autoscale as a
from ultrascaled.spec import parse_spec


def policy(extra: str = "", instances: str = "{min: 1, max: 8, count: 2}"):
    spec = parse_spec(f"instances: {instances}\ngunicorn: {{worker_class: gevent}}\n"
                      f"autoscale:\n  enabled: true\n{extra}",
                      base_dir=Path("/srv/fleet"), cpu_count=2)
    return spec.autoscale, spec.autoscale.bounds(spec.instances)


def obs(ready, wanted=None, at=0.0, host=None, **signals):
    return a.Observation(ready=ready, wanted=ready if wanted is None else wanted,
                         signals={k: a.Signal(v, at) for k, v in signals.items()},
                         host_cpu_percent=host)


CPU_ONLY = ""  # the default target: cpu_utilization 70


@pytest.mark.parametrize("current,ready,cpu,expected", [
    (2, 2, 70, 2),     # on target
    (2, 2, 76, 2),     # within the 10 % tolerance
    (2, 2, 63.5, 2),   # within it, below
    (2, 2, 140, 4),    # twice the target: twice the instances
    (2, 2, 71 * 1.5, 4),  # ceil(2 x 1.52) = 4
    (2, 2, 700, 6),    # ceil(2 x 10) = 20: the Pods policy (+4 per 15 s) beats 100 % (+2)
    (4, 4, 35, 4),     # half: scale down, but the 300 s window still holds the first decision
])
def test_first_decision_follows_the_hpa_formula(current, ready, cpu, expected):
    pol, bounds = policy(CPU_ONLY)
    d, _ = a.decide(a.State(), obs(ready, cpu_utilization=cpu), current, pol, bounds, now=0.0)
    assert d.desired == expected, d.reason


def test_not_ready_instances_are_not_capacity():
    pol, bounds = policy(CPU_ONLY)
    # 4 wanted, 2 serve at 1.5 x target: ceil(2 x 1.5) = 3 <= 4, no step up from instances
    # that cannot yet help; and no step down while they start
    d, _ = a.decide(a.State(), obs(2, wanted=4, cpu_utilization=105), 4, pol, bounds, now=0)
    assert d.action == "hold" and d.desired == 4
    d, _ = a.decide(a.State(), obs(2, wanted=4, cpu_utilization=210), 4, pol, bounds, now=0)
    assert (d.action, d.desired) == ("scale_up", 6)   # ceil(2 x 3)


def test_scale_down_waits_for_starting_instances():
    pol, bounds = policy("  behavior: {scale_down: {stabilization_window_seconds: 0}}\n")
    d, _ = a.decide(a.State(), obs(3, wanted=4, cpu_utilization=10), 4, pol, bounds, now=0)
    assert d.action == "hold" and "not ready yet" in d.reason


@pytest.mark.parametrize("signals,why", [
    ({}, "missing"),
    ({"cpu_utilization": float("nan")}, "missing"),
    ({"cpu_utilization": -1.0}, "missing"),
])
def test_missing_signals_hold_and_never_scale_to_min(signals, why):
    pol, bounds = policy("  behavior: {scale_down: {stabilization_window_seconds: 0}}\n")
    d, st = a.decide(a.State(), obs(6, **signals), 6, pol, bounds, now=0)
    assert (d.action, d.desired) == ("hold", 6) and why in d.reason
    assert st.recommendations == ((0, 6),)  # only the seed: a hold without a signal recommends nothing


def test_stale_signals_hold():
    pol, bounds = policy("  behavior: {scale_down: {stabilization_window_seconds: 0}}\n")
    d, _ = a.decide(a.State(), obs(6, at=0.0, cpu_utilization=1), 6, pol, bounds, now=11.0)
    assert d.action == "hold" and "stale (11s old, over 10s)" in d.reason


def test_no_ready_instance_holds():
    pol, bounds = policy("")
    d, _ = a.decide(a.State(), obs(0, wanted=2, cpu_utilization=99), 2, pol, bounds, now=0)
    assert d.action == "hold" and "no ready instance" in d.reason


def test_a_missing_signal_blocks_a_step_down_but_not_a_step_up():
    pol, bounds = policy("  target: {in_flight_per_worker: 2}\n"
                         "  behavior: {scale_down: {stabilization_window_seconds: 0}}\n")
    d, _ = a.decide(a.State(), obs(4, cpu_utilization=10), 4, pol, bounds, now=0)
    assert d.action == "hold" and "in_flight_per_worker is missing" in d.reason
    d, _ = a.decide(a.State(), obs(4, cpu_utilization=140), 4, pol, bounds, now=0)
    assert (d.action, d.desired) == ("scale_up", 8)


def test_the_largest_recommendation_of_all_signals_wins():
    pol, bounds = policy("  target: {in_flight_per_worker: 2, p95_latency_seconds: 0.5}\n")
    d, _ = a.decide(a.State(), obs(2, cpu_utilization=70, in_flight_per_worker=3,
                                   p95_latency_seconds=1.2), 2, pol, bounds, now=0)
    assert d.desired == 5 and d.reason.startswith("p95_latency_seconds")  # ceil(2 x 2.4)
    assert {s.name: s.desired for s in d.signals} == {
        "cpu_utilization": 2, "in_flight_per_worker": 3, "p95_latency_seconds": 5}


@pytest.mark.parametrize("extra,current,cpu,expected", [
    ("  max_replicas: 5\n", 2, 700, 5),
    ("  min_replicas: 2\n  behavior: {scale_down: {stabilization_window_seconds: 0}}\n", 4, 1, 2),
    ("  behavior: {scale_up: {select_policy: Min}}\n", 2, 700, 4),      # min(+4, +100 %)
    ("  behavior: {scale_up: {select_policy: Disabled}}\n", 2, 700, 2),
    ("  behavior: {scale_up: {pods_value: null}}\n", 3, 700, 6),        # 100 % of 3
    ("  behavior: {scale_down: {stabilization_window_seconds: 0, percent_value: 50}}\n", 8, 1, 4),
    ("  behavior: {scale_down: {stabilization_window_seconds: 0, percent_value: null, "
     "pods_value: 1}}\n", 8, 1, 7),
    ("  behavior: {scale_down: {stabilization_window_seconds: 0, select_policy: Disabled}}\n",
     8, 1, 8),
])
def test_bounds_and_rate_policies(extra, current, cpu, expected):
    pol, bounds = policy(extra)
    d, _ = a.decide(a.State(), obs(current, cpu_utilization=cpu), current, pol, bounds, now=0)
    assert d.desired == expected, d.reason


def test_a_count_outside_the_bounds_is_brought_back():
    pol, bounds = policy("  min_replicas: 3\n  max_replicas: 5\n")
    d, _ = a.decide(a.State(), obs(1, cpu_utilization=70), 1, pol, bounds, now=0)
    assert (d.action, d.desired) == ("scale_up", 3)
    d, _ = a.decide(a.State(), obs(8, cpu_utilization=70), 8, pol, bounds, now=0)
    assert (d.action, d.desired) == ("scale_down", 5)


def test_rate_policy_counts_the_changes_of_its_period():
    pol, bounds = policy("  behavior: {scale_up: {percent_value: null, pods_value: 2, "
                         "pods_period_seconds: 60}}\n")
    st = a.State()
    d, st = a.decide(st, obs(2, cpu_utilization=700), 2, pol, bounds, now=0)
    assert d.desired == 4
    d, st = a.decide(st, obs(4, at=30, cpu_utilization=700), 4, pol, bounds, now=30)
    assert d.action == "hold" and "scale_up policy allows 4" in d.reason
    d, st = a.decide(st, obs(4, at=61, cpu_utilization=700), 4, pol, bounds, now=61)
    assert d.desired == 6


def test_budgets_veto_a_step_up_with_their_numbers():
    pol, bounds = policy("")

    def budgets(n):
        return [f"memory.fleet_budget_mb: {n} x 2 x 500 MiB = {n * 1000} MiB exceeds 3000 MiB"] \
            if n > 3 else []
    d, _ = a.decide(a.State(), obs(2, cpu_utilization=280), 2, pol, bounds, budgets, now=0)
    assert (d.action, d.desired) == ("scale_up", 3)
    assert "6 is over budget" in d.reason and "6000 MiB exceeds 3000 MiB" in d.vetoes[0]
    d, _ = a.decide(a.State(), obs(3, cpu_utilization=280), 3, pol, bounds, budgets, now=0)
    assert (d.action, d.desired) == ("hold", 3)
    assert "over budget" in d.reason and "7000 MiB exceeds" in d.reason


def test_a_saturated_host_holds_a_step_up():
    pol, bounds = policy("")
    d, _ = a.decide(a.State(), obs(2, host=97, cpu_utilization=140), 2, pol, bounds, now=0)
    assert d.action == "hold" and "host CPU 97% is over host_cpu_saturation_percent 90%" in d.reason
    # fewer workers than cores: another instance still adds parallelism on a busy host
    o = a.Observation(2, 2, {"cpu_utilization": a.Signal(140, 0)}, host_cpu_percent=97, cores=8, workers=2)
    d, _ = a.decide(a.State(), o, 2, pol, bounds, now=0)
    assert (d.action, d.desired) == ("scale_up", 4)
    o = a.Observation(4, 4, {"cpu_utilization": a.Signal(140, 0)}, host_cpu_percent=97, cores=4, workers=4)
    d, _ = a.decide(a.State(), o, 4, pol, bounds, now=0)
    assert d.action == "hold" and "the fleet's 4 workers already match the 4 cores" in d.reason
    pol, bounds = policy("  host_cpu_saturation_percent: null\n")
    d, _ = a.decide(a.State(), obs(2, host=97, cpu_utilization=140), 2, pol, bounds, now=0)
    assert d.action == "scale_up"


def test_pause_holds_until_its_time_or_resume():
    pol, bounds = policy("")
    st = a.pause(a.State(), now=0, seconds=1800, reason="manual scale")
    d, st = a.decide(st, obs(2, at=10, cpu_utilization=300), 2, pol, bounds, now=10)
    assert d.action == "hold" and d.reason == "paused for 1790s more (manual scale)"
    d, _ = a.decide(st, obs(2, at=1800, cpu_utilization=300), 2, pol, bounds, now=1800)
    assert d.action == "scale_up"
    st = a.pause(a.State(), now=0, seconds=None, reason="operator")
    d, st = a.decide(st, obs(2, at=1e6, cpu_utilization=300), 2, pol, bounds, now=1e6)
    assert "until resumed" in d.reason
    d, _ = a.decide(a.resume(st), obs(2, at=1e6, cpu_utilization=300), 2, pol, bounds, now=1e6)
    assert d.action == "scale_up"


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("90s", 90), ("1h30m", 5400), ("45", 45),
                                          ("2h", 7200)])
def test_durations(text, seconds):
    assert a.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "30x", "m30", "1e9", "8d", "30m garbage"])
def test_bad_durations_are_named(text):
    with pytest.raises(ValueError, match="duration"):
        a.parse_duration(text)


# ---- replayed traces -------------------------------------------------------------------------

def replay(trace, pol, bounds, start=2, period=2.0, start_delay=2.0, budgets=a.no_budgets):
    """Feed a load trace through decide() as the loop would: every `period` s, the signal is
    the per-instance CPU the load gives on the instances ready by then (an instance serves
    `start_delay` s after it is asked for). `trace(t)` is the load in instance-equivalents
    at 70 % CPU each. Returns [(t, wanted, ready, action)]."""
    st, wanted = a.State(), start
    ready_at: list[float] = [-1.0] * start
    out = []
    t = 0.0
    while t <= trace.end:
        ready = sum(1 for r in ready_at[:wanted] if r <= t)
        cpu = 70.0 * trace(t) / max(ready, 1)
        d, st = a.decide(st, obs(ready, wanted=wanted, at=t, cpu_utilization=min(cpu, 100.0)),
                         wanted, pol, bounds, budgets, now=t)
        if d.desired > wanted:
            ready_at = ready_at[:wanted] + [t + start_delay] * (d.desired - wanted)
        elif d.desired < wanted:
            ready_at = ready_at[:d.desired]
        wanted = d.desired
        out.append((t, wanted, ready, d.action))
        t += period
    return out


class Steps:
    def __init__(self, *steps, end):
        self.steps, self.end = steps, end   # (from t, load)

    def __call__(self, t):
        return [load for at, load in self.steps if at <= t][-1]


def direction_changes(rows):
    dirs = [r[3] for r in rows if r[3] != "hold"]
    return sum(1 for x, y in zip(dirs, dirs[1:]) if x != y)


def test_trace_follows_a_step_up_within_two_periods_and_comes_back_after_the_window():
    pol, bounds = policy("  behavior: {scale_down: {stabilization_window_seconds: 60}}\n")
    trace = Steps((0, 1.0), (20, 5.0), (100, 1.0), end=240)
    rows = replay(trace, pol, bounds)
    up = next(t for t, w, r, act in rows if act == "scale_up")
    assert 20 <= up <= 24
    # capacity for 5 x target at 70 %: 5 instances within 2 + start delay + one more period
    assert any(w >= 5 and r >= 5 for t, w, r, _ in rows if t <= 30)
    # no step down before the window has passed since the last high sample (t = 98)
    downs = [t for t, w, r, act in rows if act == "scale_down"]
    assert downs and 98 + 60 <= min(downs) <= 98 + 60 + 2
    assert rows[-1][1] == 1 and direction_changes(rows) == 1   # load 1.0 fits one instance


def test_trace_noise_around_the_target_never_flaps():
    pol, bounds = policy("")
    import random
    rnd = random.Random(7)
    loads = {t: 4.0 * (1 + rnd.uniform(-0.3, 0.3)) for t in range(0, 601, 2)}

    class Noise:
        end = 600

        def __call__(self, t):
            return loads[int(t)]
    rows = replay(Noise(), pol, bounds, start=4)
    assert direction_changes(rows) <= 1, [(t, w) for t, w, _, act in rows if act != "hold"]


def test_trace_with_the_users_ramp_stays_within_bounds_and_budgets():
    pol, bounds = policy("  behavior: {scale_down: {stabilization_window_seconds: 30}}\n")
    trace = Steps((0, 0.5), (30, 5.0), (60, 10.0), (90, 0.5), end=200)

    def budgets(n):
        return [f"memory: {n} instances over budget"] if n > 6 else []
    rows = replay(trace, pol, bounds, start=1, budgets=budgets)
    assert max(w for _, w, _, _ in rows) == 6
    assert rows[-1][1] == 1
    assert direction_changes(rows) == 1


# ---- a signal the app never supplies (issue 23: in_flight_per_worker "missing" forever) -----

NEVER = ("  target: {in_flight_per_worker: 0.8}\n"
         "  behavior: {scale_down: {stabilization_window_seconds: 0}}\n")   # grace: 3 x 10 s


def test_the_grace_is_the_scale_down_window_or_three_stale_periods():
    assert a.never_seen_grace(policy(NEVER)[0]) == 30
    assert a.never_seen_grace(policy("")[0]) == 300      # the HPA's 300 s window
    assert a.never_seen_grace(policy("  stale_after_seconds: 200\n")[0]) == 600


def test_a_signal_never_seen_holds_a_step_down_only_for_the_grace_then_once_is_left_out():
    pol, bounds = policy(NEVER)
    st, told = a.State(), []
    for t in range(0, 29, 2):   # the app exports no in-flight gauge: only CPU comes
        d, st = a.decide(st, obs(4, at=t, cpu_utilization=10), 4, pol, bounds, now=float(t))
        assert d.action == "hold" and "in_flight_per_worker is missing" in d.reason, t
        told += d.never_seen
    assert told == []
    d, st = a.decide(st, obs(4, at=30, cpu_utilization=10), 4, pol, bounds, now=30.0)
    assert d.never_seen == ("in_flight_per_worker",)
    assert (d.action, d.desired) == ("scale_down", 1)
    view = {v.name: v for v in d.signals}["in_flight_per_worker"]
    assert view.value is None and view.note.startswith("never seen in 30s (left out")
    d, st = a.decide(st, obs(1, at=32, cpu_utilization=10), 1, pol, bounds, now=32.0)
    assert d.never_seen == ()                              # told once


def test_a_signal_seen_once_and_then_gone_stays_missing_and_holds_every_step_down():
    pol, bounds = policy(NEVER)
    d, st = a.decide(a.State(), obs(4, at=0, cpu_utilization=10, in_flight_per_worker=0.1), 4,
                     pol, bounds, now=0.0)
    for t in range(2, 200, 2):
        d, st = a.decide(st, obs(4, at=t, cpu_utilization=10), 4, pol, bounds, now=float(t))
        assert d.action == "hold" and "in_flight_per_worker is missing" in d.reason, t
        assert d.never_seen == ()


def test_a_left_out_signal_that_shows_up_counts_again():
    pol, bounds = policy(NEVER)
    _, st = a.decide(a.State(), obs(4, cpu_utilization=10), 4, pol, bounds, now=0.0)
    _, st = a.decide(st, obs(4, at=40, cpu_utilization=10), 4, pol, bounds, now=40.0)
    assert st.left_out == {"in_flight_per_worker"}
    _, st = a.decide(st, obs(1, at=42, cpu_utilization=10, in_flight_per_worker=0.1), 1, pol,
                     bounds, now=42.0)
    assert st.left_out == frozenset() and "in_flight_per_worker" in st.seen
    d, st = a.decide(st, obs(4, at=44, cpu_utilization=10), 4, pol, bounds, now=44.0)
    assert d.action == "hold" and "in_flight_per_worker is missing" in d.reason


def test_the_grace_of_a_target_added_later_starts_when_it_is_first_followed():
    cpu_only, bounds = policy("  behavior: {scale_down: {stabilization_window_seconds: 0}}\n")
    st = a.State()
    for t in (0.0, 50.0, 100.0):
        _, st = a.decide(st, obs(1, at=t, cpu_utilization=70), 1, cpu_only, bounds, now=t)
    pol, _ = policy(NEVER)       # a reload adds the in-flight target: first followed at t=102
    for t in (102.0, 131.0):
        d, st = a.decide(st, obs(4, at=t, cpu_utilization=10), 4, pol, bounds, now=t)
        assert d.action == "hold" and d.never_seen == ()
    d, st = a.decide(st, obs(4, at=132, cpu_utilization=10), 4, pol, bounds, now=132.0)
    assert d.never_seen == ("in_flight_per_worker",) and d.action == "scale_down"


def test_a_never_seen_only_signal_still_holds_with_no_fresh_signal():
    pol, bounds = policy("  target: {cpu_utilization: null, in_flight_per_worker: 0.8}\n"
                         "  behavior: {scale_down: {stabilization_window_seconds: 0}}\n")
    st = a.State()
    for t in (0.0, 40.0):
        d, st = a.decide(st, obs(4, at=t), 4, pol, bounds, now=t)
    assert d.action == "hold" and "no fresh signal" in d.reason and d.desired == 4


def test_the_signal_sources_say_what_the_app_must_export():
    assert "`ultrascale_http_requests_in_flight`" in a.needs("in_flight_per_worker", True)
    assert "nginx's traffic log" in a.needs("p95_latency_seconds", True)
    no_log = a.needs("p95_latency_seconds", False)
    assert "`ultrascale_http_requests_total`" in no_log
    assert "`ultrascale_http_request_duration_seconds`" in no_log


# ---- the host CPU guard judged by the fleet's own share (issue 23: held almost always) ------

def saturated(fleet, host=100.0, workers=2, cores=2, ready=2):
    return a.Observation(ready, ready, {"cpu_wait_percent": a.Signal(50, 0)}, host_cpu_percent=host,
                         cores=cores, workers=workers, fleet_cpu_percent=fleet)


WAIT = "  target: {cpu_utilization: null, cpu_wait_percent: 25}\n"


def test_a_host_saturated_by_other_work_lets_the_fleet_step_up():
    # the 2-core bench host: 100 % busy, the fleet's own processes 24 % of the cores
    pol, bounds = policy(WAIT)
    d, _ = a.decide(a.State(), saturated(fleet=24), 2, pol, bounds, now=0)
    assert (d.action, d.desired) == ("scale_up", 4), d.reason
    assert "the fleet's own processes use 24% of the cores, 24% of the busy CPU: other work " \
           "saturates it" in d.reason


@pytest.mark.parametrize("fleet,host", [(80, 97), (50, 100), (90, 92)])
def test_a_host_saturated_by_the_fleet_itself_holds_the_step_up(fleet, host):
    pol, bounds = policy(WAIT)
    d, _ = a.decide(a.State(), saturated(fleet=fleet, host=host), 2, pol, bounds, now=0)
    assert d.action == "hold" and "the fleet saturates it" in d.reason, d.reason
    assert f"host CPU {host:.0f}% is over host_cpu_saturation_percent 90%" in d.reason


def test_the_guard_needs_the_host_over_its_limit_and_yields_below_a_worker_per_core():
    pol, bounds = policy(WAIT)
    d, _ = a.decide(a.State(), saturated(fleet=85, host=89), 2, pol, bounds, now=0)
    assert d.action == "scale_up" and "host CPU" not in d.reason
    d, _ = a.decide(a.State(), saturated(fleet=85, workers=2, cores=4), 2, pol, bounds, now=0)
    assert d.action == "scale_up" and "workers are fewer than the 4 cores" in d.reason
