"""Routes (core/routes.py): names, the two tails against exact arithmetic, the canary's
per-route judgement, and the traffic store's bounded per-route counters."""
import math
from fractions import Fraction

from hypothesis import given, settings, strategies as st

from ultrascaled.core import routes
from ultrascaled.core.rollout import Thresholds, judge
from ultrascaled.core.traffic import TrafficWindow
from ultrascaled.observe.accesslog import Line, TrafficStore, Try, parse_line


def test_ids_fold_into_one_route():
    n = routes.normalise
    assert n("GET", "/polls/42/vote/") == n("GET", "/polls/7/vote/") == "GET /polls/:id/vote/"
    assert n("GET", "/u/3f2b9c1e-8a4d-4e1b-9c2f-1a2b3c4d5e6f") == "GET /u/:id"
    assert n("GET", "/blob/5f3a9c0d1e2b") == "GET /blob/:id"
    assert n("GET", "/tok/aZ3kQ9xP2mW8rT5v") == "GET /tok/:id"
    assert n("GET", "/static/admin/css/base.css") == "GET /static/admin/css/base.css"
    assert n("GET", "/api/v2/items") == "GET /api/v2/items"
    assert n("POST", "/") == "POST /"
    assert n("GET", "/a b/c") == "GET /:id/c"
    assert n("BREW", "/pot") == "OTHER /pot"
    assert n("GET", "/a/b/c/d/e/f/g/h") == "GET /a/b/c/d/e/f/..."
    assert n("GET", "") is None and n("GET", "*") is None


@given(st.text(max_size=3000))
def test_any_path_gives_a_short_name(path):
    r = routes.normalise("GET", "/" + path)
    assert r is not None and len(r) < 7 * 41 + 20


def exact_fisher(k, n, k0, n0):
    total, bad = n + n0, k + k0
    den = math.comb(total, n)
    return Fraction(sum(math.comb(bad, x) * math.comb(total - bad, n - x)
                        for x in range(k, min(n, bad) + 1)), den)


def exact_binomial(k, n, p):
    p = Fraction(p)
    return sum(math.comb(n, x) * p ** x * (1 - p) ** (n - x) for x in range(k, n + 1))


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60), st.integers(0, 60))
def test_fisher_matches_exact_arithmetic(n, a, n0, b):
    k, k0 = min(a, n), min(b, n0)
    got = routes.fisher_greater(k, n, k0, n0)
    want = float(exact_fisher(k, n, k0, n0)) if n and k else 1.0
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-300)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 80), st.integers(0, 80), st.sampled_from([1e-5, 0.001, 0.01, 0.2, 0.5, 0.9]))
def test_binomial_matches_exact_arithmetic(n, a, p):
    k = min(a, n)
    got = routes.binomial_greater(k, n, p)
    want = float(exact_binomial(k, n, p)) if k else 1.0
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-300)


def test_large_counts_stay_finite():
    assert 0 <= routes.fisher_greater(30, 90_000, 3, 180_000) < 1e-6
    assert routes.fisher_greater(3, 90_000, 6, 180_000) > 0.3
    assert 0 <= routes.binomial_greater(15, 15, 4e-5) < 1e-60


T = Thresholds()


def test_one_broken_route_at_low_traffic_fails_the_canary():
    # the case: 2 req/s of 800 on a new route that always raises; the whole-instance
    # rate (0.25 %) is far under the 1-point threshold
    canary = TrafficWindow(12_000, 30, 0.02, 30)
    old = TrafficWindow(36_000, 0, 0.02, 30)
    by_route = ({"GET /": (11_970, 0), "GET /polls/stats/": (30, 30)}, {"GET /": (35_910, 0)})
    v = judge(canary, old, T, by_route)
    assert not v.ok and v.figure == "route_5xx"
    assert "GET /polls/stats/" in v.detail and "30 of 30" in v.detail
    assert v.figures["failed_routes"] == ["GET /polls/stats/"]
    assert judge(canary, old, T).ok        # without routes the old judgement passes it


def test_a_route_failing_on_the_old_instances_too_is_not_the_release():
    by_route = ({"GET /flaky": (100, 8)}, {"GET /flaky": (300, 25)})
    assert judge(TrafficWindow(5000, 8, 0.01, 30), TrafficWindow(15000, 25, 0.01, 30), T, by_route).ok


def test_few_errors_never_fail_a_route():
    by_route = ({"GET /new": (2, 2)}, {})
    assert judge(TrafficWindow(5000, 2, 0.01, 30), TrafficWindow(15000, 0, 0.01, 30), T, by_route).ok


def test_a_route_far_worse_on_the_canary_fails_even_below_min_requests():
    by_route = ({"POST /pay": (10, 10)}, {"POST /pay": (25, 0)})
    v = judge(TrafficWindow(10, 10, 0.01, 30), TrafficWindow(25, 0, 0.01, 30),
              Thresholds(min_requests=1000), by_route)
    assert not v.ok and v.figure == "route_5xx" and "old instances 0 of 25" in v.detail


def test_bonferroni_counts_every_route_compared():
    canary = {f"GET /r{i}": (50, 0) for i in range(200)} | {"GET /x": (50, 4)}
    old = {f"GET /r{i}": (100, 0) for i in range(200)} | {"GET /x": (100, 0)}
    failed, limit = routes.failing_routes(canary, old, (20_100, 0), p_value=0.001, min_errors=3,
                                          fallback_rate=0.01)
    assert math.isclose(limit, 0.001 / 201)
    p = routes.fisher_greater(4, 50, 0, 100)
    assert (failed != []) == (p < limit)


def test_delta_between_readings():
    assert routes.delta({"a": (10, 1)}, {"a": (15, 3), "b": (2, 0), "c": (0, 0)}) == {"a": (5, 2), "b": (2, 0)}
    assert routes.delta({"a": (10, 1)}, {"a": (4, 0)}) == {"a": (4, 0)}     # forgotten and counted anew


def _line(t, port, status, path, method="GET"):
    return Line(t, status, (Try(port, status, 0.01),), 0.01, 0.01, routes.normalise(method, path))


def test_store_counts_per_route_and_port():
    store = TrafficStore(60, clock=lambda: 1000.0)
    store.add([_line(999, 8001, 200, "/polls/1/"), _line(999, 8001, 500, "/polls/2/"),
               _line(999, 8002, 200, "/polls/3/"), _line(999, 8002, 200, "/")])
    assert store.route_totals([8001]) == {"GET /polls/:id/": (2, 1)}
    assert store.route_totals([8001, 8002]) == {"GET /polls/:id/": (3, 1), "GET /": (1, 0)}
    assert store.route_totals([None]) == {"GET /polls/:id/": (3, 1), "GET /": (1, 0)}
    store.keep([8002])
    assert store.route_totals([8001]) == {}


def test_store_routes_are_bounded_whatever_clients_send():
    now = [1000.0]
    store = TrafficStore(60, clock=lambda: now[0])
    store.add([_line(999, 8001, 404, f"/scan{i}x") for i in range(5000)])
    names = store.route_totals([None])
    assert len(names) == store.MAX_ROUTES + 1
    assert names[store.OTHER_ROUTES][0] == 5000 - store.MAX_ROUTES
    now[0] += 120    # the scan's names are out of the window: new routes get names again
    store.add([_line(1119, 8001, 500, "/fresh")])
    assert store.route_totals([8001])["GET /fresh"] == (1, 1)


def test_parse_line_reads_the_route():
    raw = (b'{"t":1700000000.000,"s":500,"a":"127.0.0.1:8001","u":"500","ut":"0.010","rt":0.011,'
           b'"m":"GET","p":"/polls/12/results/"}')
    assert parse_line(raw).route == "GET /polls/:id/results/"
    old_format = b'{"t":1700000000.000,"s":200,"a":"127.0.0.1:8001","u":"200","ut":"0.010","rt":0.011}'
    assert parse_line(old_format).route is None


def test_route_errors_alert_fires_for_one_route_whatever_the_fleet_total():
    from ultrascaled.observe.alert_rules import AlertState, MetricSample, evaluate, route_rules
    from ultrascaled.spec import AlertsSection
    section = AlertsSection(route_error_rate_for=20)
    state, fired = AlertState(), []
    for i in range(4):      # 10 s intervals: 800 req/s fine, one route failing at 2 req/s
        m = MetricSample(10, requests=8020, errors_5xx=20,
                         routes={"GET /": (8000, 0), "GET /polls/stats/": (20, 20)})
        state, tr = evaluate(route_rules(section, m.routes, state), state, m, i * 10.0)
        fired += tr
    assert [(t.name, t.status, dict(t.labels)) for t in fired] == [
        ("route_errors", "firing", {"route": "GET /polls/stats/"})]
    assert "20 of 20 requests answered 5xx" in fired[0].message
    m = MetricSample(10, routes={"GET /polls/stats/": (20, 0)})
    state, tr = evaluate(route_rules(section, m.routes, state), state, m, 40.0)
    assert [(t.name, t.status) for t in tr] == [("route_errors", "resolved")]
    # a route with too few requests is not judged; the rule is off with null
    m = MetricSample(10, routes={"GET /x": (2, 2)})
    assert evaluate(route_rules(section, m.routes, AlertState()), AlertState(), m, 0)[1] == []
    assert route_rules(AlertsSection(route_error_rate=None), m.routes, AlertState()) == ()
