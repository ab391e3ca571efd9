"""Pure alert logic: bucket quantiles, samples from two scrapes, rules with `for`, the spec section."""
import dataclasses
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ultrascaled import spec
from ultrascaled.spec.validate import _build
from ultrascaled.observe.alert_rules import AlertState, MetricSample, Transition, build_rules, evaluate, sample_from
from ultrascaled.observe.metric_math import histogram_quantile
from ultrascaled.spec import AlertsSection

INF = math.inf


@pytest.mark.parametrize("buckets,q,expected", [
    ({}, 0.95, None),
    ({0.1: 0, INF: 0}, 0.95, None),
    ({0.1: 100, 0.2: 100, INF: 100}, 0.95, 0.095),          # all in the first bucket: 0..0.1
    ({0.1: 0, 0.2: 100, INF: 100}, 0.95, 0.195),            # all in 0.1..0.2
    ({0.1: 50, 0.2: 90, 1.0: 100, INF: 100}, 0.95, 0.6),    # rank 95 is halfway through 0.2..1.0
    ({1.0: 90, 2.5: 90, 5.0: 100, INF: 100}, 0.95, 3.75),
    ({0.1: 10, 10.0: 10, INF: 100}, 0.95, 10.0),            # in +Inf: the last finite bound
])
def test_histogram_quantile_interpolates_inside_the_bucket(buckets, q, expected):
    got = histogram_quantile(q, buckets)
    assert got == pytest.approx(expected) if expected is not None else got is None


def flat(**series):
    """flat(name=[(labels, value), ...]) -> the flatten() shape."""
    return {name: {frozenset(labels.items()): v for labels, v in rows} for name, rows in series.items()}


def req(inst, status, v):
    return ({"instance": inst, "route": "/", "method": "GET", "status": status}, v)


def bucket(inst, le, v):
    return ({"instance": inst, "route": "/", "le": le}, v)


PREV = flat(
    ultrascale_http_requests_total=[req("1", "2xx", 1000), req("1", "5xx", 10), req("2", "2xx", 500)],
    ultrascale_http_request_duration_seconds_bucket=[
        bucket("1", "1.0", 1000), bucket("1", "2.5", 1010), bucket("1", "+Inf", 1010),
        bucket("2", "1.0", 500), bucket("2", "2.5", 500), bucket("2", "+Inf", 500)],
    ultrascale_cache_hits_total=[({"instance": "1", "tier": "memory"}, 100),
                                 ({"instance": "1", "tier": "redis"}, 50)],
    ultrascale_cache_misses_total=[({"instance": "1"}, 10)],
    ultrascale_worker_cpu_seconds_total=[({"port": "1", "pid": "11"}, 100.0), ({"port": "1", "pid": "12"}, 50.0)],
    ultrascale_master_cpu_seconds_total=[({"port": "1"}, 5.0)],
)


def test_sample_sums_per_series_deltas_and_treats_a_drop_as_a_restart():
    cur = flat(
        # instance 1: +100 2xx, +10 5xx; instance 2 restarted (500 -> 30): its delta is 30
        ultrascale_http_requests_total=[req("1", "2xx", 1100), req("1", "5xx", 20), req("2", "2xx", 30)],
        ultrascale_http_request_duration_seconds_bucket=[
            bucket("1", "1.0", 1090), bucket("1", "2.5", 1100), bucket("1", "+Inf", 1120),
            bucket("2", "1.0", 30), bucket("2", "2.5", 30), bucket("2", "+Inf", 30)],
        ultrascale_cache_hits_total=[({"instance": "1", "tier": "memory"}, 160),
                                     ({"instance": "1", "tier": "redis"}, 60)],
        ultrascale_cache_misses_total=[({"instance": "1"}, 40)],
        # worker 12 was recycled, 13 is new (counts whole), master +1
        ultrascale_worker_cpu_seconds_total=[({"port": "1", "pid": "11"}, 104.0), ({"port": "1", "pid": "13"}, 2.0)],
        ultrascale_master_cpu_seconds_total=[({"port": "1"}, 6.0)],
        ultrascale_fleet_memory_bytes=[({}, 3 * 2**30)],
        ultrascale_fleet_memory_budget_bytes=[({}, 2 * 2**30)],
    )
    s = sample_from(PREV, cur, interval=5.0, cpu_count=2)
    assert s.requests == 100 + 10 + 30
    assert s.errors_5xx == 10
    assert s.error_rate == pytest.approx(10 / 140)
    # bucket deltas: le=1: 90+30=120, le=2.5: 90+30=120, +Inf: 110+30=140 -> rank 133 lies in +Inf
    assert s.p95_latency == pytest.approx(2.5)
    assert s.cache_hits == 70 and s.cache_misses == 30 and s.cache_hit_rate == pytest.approx(0.7)
    assert s.cpu_seconds == pytest.approx(4 + 2 + 1)
    assert s.cpu_percent == pytest.approx(100 * 7 / (5 * 2))
    assert s.memory_fraction == pytest.approx(1.5)
    assert s.db_connections is None


def test_sample_without_traffic_has_no_ratios():
    s = sample_from(PREV, PREV, interval=5.0, cpu_count=1)
    assert (s.requests, s.error_rate, s.p95_latency, s.cache_hit_rate) == (0, None, None, None)
    assert s.cpu_percent == 0.0
    assert s.memory_fraction is None


def test_sample_from_parsed_text_exposition():
    def text(n5xx, n2xx, pool):
        return f"""# HELP ultrascale_http_requests Requests
# TYPE ultrascale_http_requests counter
ultrascale_http_requests_total{{instance="8001",method="GET",route="/",status="2xx"}} {n2xx}
ultrascale_http_requests_total{{instance="8001",method="GET",route="/",status="5xx"}} {n5xx}
# HELP ultrascale_mongodb_connections_in_use Pool
# TYPE ultrascale_mongodb_connections_in_use gauge
ultrascale_mongodb_connections_in_use{{instance="8001"}} {pool}
ultrascale_mongodb_connections_in_use{{instance="8002"}} 5
"""
    prev = list(text_string_to_metric_families(text(0, 100, 1)))
    cur = list(text_string_to_metric_families(text(3, 197, 7)))
    s = sample_from(prev, cur, 10.0, cpu_count=1)
    assert (s.requests, s.errors_5xx, s.db_connections) == (100, 3, 12)
    assert s.request_rate == 10


def sample(**kw):
    base = dict(interval=5.0, requests=1000, errors_5xx=0, p95_latency=0.1, cpu_seconds=1,
                cpu_percent=10.0, memory_bytes=1.0, memory_budget_bytes=10.0, cache_hits=90,
                cache_misses=10, db_connections=10)
    base.update(kw)
    return MetricSample(**base)


SECTION = AlertsSection()
RULES = build_rules(SECTION, db_connection_budget=500)


def run(steps, rules=RULES):
    """steps: [(now, sample)] -> [(now, name, status)]"""
    state, seen = AlertState(), []
    for now, s in steps:
        state, ts = evaluate(rules, state, s, now)
        seen += [(now, t.name, t.status) for t in ts]
    return seen, state


@pytest.mark.parametrize("name,bad,good", [
    ("p95_latency", dict(p95_latency=2.5), dict(p95_latency=1.0)),
    ("error_rate", dict(errors_5xx=20), dict(errors_5xx=5)),
    ("cpu", dict(cpu_percent=90.0), dict(cpu_percent=50.0)),
    ("memory", dict(memory_bytes=11.0), dict(memory_bytes=9.0)),
    ("cache_hit_rate", dict(cache_hits=70, cache_misses=30), dict(cache_hits=85, cache_misses=15)),
    ("db_connections", dict(db_connections=501), dict(db_connections=500)),
])
def test_each_rule_fires_after_its_for_and_resolves_when_it_stops_holding(name, bad, good):
    steps = [(0, sample(**bad)), (15, sample(**bad)), (29.9, sample(**bad)), (30, sample(**bad)),
             (35, sample(**bad)), (40, sample(**good)), (45, sample(**good))]
    seen, state = run(steps)
    assert seen == [(30, name, "firing"), (40, name, "resolved")]
    assert state.get(name).firing_since is None


def test_a_dip_restarts_the_for_clock():
    bad, good = sample(cpu_percent=95.0), sample(cpu_percent=10.0)
    seen, _ = run([(0, bad), (20, good), (25, bad), (50, bad), (55, bad)])
    assert seen == [(55, "cpu", "firing")]


def test_for_zero_fires_on_the_first_evaluation_and_only_once():
    rules = build_rules(dataclasses.replace(SECTION, cpu_for=0))
    seen, state = run([(0, sample(cpu_percent=95.0)), (5, sample(cpu_percent=99.0))], rules)
    assert seen == [(0, "cpu", "firing")]
    assert state.get("cpu").value == 99.0 and state.get("cpu").firing_since == 0


def test_too_little_traffic_or_no_data_counts_as_not_holding():
    few = sample(requests=10, errors_5xx=5, p95_latency=9.0, cache_hits=1, cache_misses=9)
    seen, _ = run([(0, few), (100, few)])
    assert seen == []
    # firing, then the metric disappears: resolved ("no data")
    state, ts = evaluate(RULES, AlertState(), sample(db_connections=900), 0)
    state, ts = evaluate(RULES, state, sample(db_connections=900), 30)
    assert [t.status for t in ts] == ["firing"]
    state, ts = evaluate(RULES, state, sample(db_connections=None), 35)
    assert ts == [Transition("db_connections", "resolved", None, 500, ts[0].message)]
    assert "no data" in ts[0].message


def test_transition_carries_value_threshold_and_a_message():
    rules = build_rules(dataclasses.replace(SECTION, error_rate_for=0))
    _, ts = evaluate(rules, AlertState(), sample(errors_5xx=50), 0)
    (t,) = ts
    assert t.name == "error_rate" and t.status == "firing"
    assert t.value == pytest.approx(0.05) and t.threshold == 0.01
    assert "5.00%" in t.message and "50 of 1000" in t.message


def test_null_thresholds_turn_rules_off_and_db_rule_needs_a_budget():
    names = {r.name for r in build_rules(SECTION)}
    assert names == {"p95_latency", "error_rate", "cpu", "memory", "cache_hit_rate"}
    off = dataclasses.replace(SECTION, cpu_percent=None, cache_hit_rate=None)
    assert {r.name for r in build_rules(off, 100)} == {"p95_latency", "error_rate", "memory",
                                                        "db_connections"}


def test_defaults_match_the_targets():
    s = AlertsSection()
    assert (s.p95_latency_seconds, s.error_rate, s.cpu_percent, s.memory_budget_fraction,
            s.cache_hit_rate, s.db_connections_fraction) == (2.0, 0.01, 80.0, 1.0, 0.8, 1.0)
    assert s.webhook_url is None and s.webhook_timeout == 2.0 and s.webhook_retries == 3


def test_section_metadata_is_what_spec_setting_makes():
    """alerts.py mirrors spec.setting (importing it would be circular once spec imports alerts)."""
    for fld in dataclasses.fields(AlertsSection):
        ref = spec.setting(fld.default, fld.metadata["help"], min=fld.metadata["min"],
                           max=fld.metadata["max"])
        assert dict(fld.metadata) == dict(ref.metadata), fld.name
        assert fld.metadata["help"].endswith(".")


def test_spec_loader_validates_the_section_and_names_the_key(tmp_path):
    errors = []
    data = {"error_rate": 2, "cpu_for": -1, "webhook_url": "http://x/", "p95_latency_seconds": None,
            "bogus": 1}
    built = _build(AlertsSection, data, "alerts", {}, errors, tmp_path, set())
    assert sorted(errors) == ["alerts.bogus: unknown key",
                              "alerts.cpu_for: must be at least 0, got -1",
                              "alerts.error_rate: must be 0..1, got 2"]
    ok = _build(AlertsSection, {"cpu_percent": 90, "p95_latency_seconds": None}, "alerts", {},
                     errors := [], tmp_path, set())
    assert errors == [] and ok.cpu_percent == 90.0 and ok.p95_latency_seconds is None
    assert isinstance(ok.cpu_percent, float)
    rows = list(spec.iter_settings(AlertsSection, "alerts"))
    assert ("alerts.webhook_url", "string or null", None) == rows[[r[0] for r in rows].index("alerts.webhook_url")][:3]
