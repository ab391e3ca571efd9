"""Percentile, summary and verdict arithmetic from known inputs."""
import pytest

from loadtest import LatencyStats, Result, Targets, evaluate, percentile
from loadtest.stats import Tally, classify_status, split_evenly, split_proportionally

HUNDRED = list(range(1, 101))


@pytest.mark.parametrize("values,p,expected", [
    (HUNDRED, 50, 50),
    (HUNDRED, 95, 95),
    (HUNDRED, 99, 99),
    (HUNDRED, 99.5, 100),
    (HUNDRED, 100, 100),
    (HUNDRED, 0, 1),
    (HUNDRED, 1, 1),
    (HUNDRED, 1.5, 2),
    ([7], 50, 7),
    ([7], 99, 7),
    ([1, 2], 50, 1),
    ([1, 2], 51, 2),
    ([10, 20, 30, 40], 25, 10),
    ([10, 20, 30, 40], 75, 30),
    ([10, 20, 30, 40], 76, 40),
    (list(range(1, 1001)), 99.9, 999),
    ([], 50, None),
])
def test_percentile_nearest_rank(values, p, expected):
    assert percentile(values, p) == expected


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_latency_stats_in_ms_from_unsorted_seconds():
    secs = [i / 1000 for i in reversed(range(1, 201))]  # 1..200 ms, unsorted
    s = LatencyStats.from_seconds(secs)
    assert s.count == 200
    assert s.min == pytest.approx(1.0)
    assert s.p50 == pytest.approx(100.0)
    assert s.p95 == pytest.approx(190.0)
    assert s.p99 == pytest.approx(198.0)
    assert s.max == pytest.approx(200.0)
    assert s.mean == pytest.approx(100.5)
    assert LatencyStats.from_seconds([]).p99 is None


@pytest.mark.parametrize("status,kind", [
    (200, None), (204, None), (301, None), (304, None), (399, None),
    (400, "http_4xx"), (404, "http_4xx"), (429, "http_4xx"),
    (500, "http_5xx"), (502, "http_5xx"), (503, "http_5xx"),
    (100, "bad_response"), (199, "bad_response"), (600, "bad_response"),
])
def test_classify_status(status, kind):
    assert classify_status(status) == kind


@pytest.mark.parametrize("targets,measured,expected", [
    (Targets(), dict(p95_ms=5000, p99_ms=9000, error_rate_pct=50, rps=1), []),
    (Targets(max_p99_ms=2000), dict(p95_ms=1, p99_ms=1999.9, error_rate_pct=0, rps=1), [True]),
    (Targets(max_p99_ms=2000), dict(p95_ms=1, p99_ms=2000.1, error_rate_pct=0, rps=1), [False]),
    (Targets(max_p95_ms=10, max_error_rate_pct=1.0),
     dict(p95_ms=10, p99_ms=50, error_rate_pct=1.01, rps=1), [True, False]),
    (Targets(min_rps=100), dict(p95_ms=1, p99_ms=1, error_rate_pct=0, rps=99.9), [False]),
    (Targets(min_rps=100), dict(p95_ms=1, p99_ms=1, error_rate_pct=0, rps=100), [True]),
    # nothing measured: a target cannot be shown to be met
    (Targets(max_p99_ms=2000, max_error_rate_pct=1),
     dict(p95_ms=None, p99_ms=None, error_rate_pct=None, rps=None), [False, False]),
])
def test_evaluate(targets, measured, expected):
    assert [c.passed for c in evaluate(targets, **measured)] == expected


def test_splits_sum_and_balance():
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_proportionally(10, [1, 1]) == [5, 5]
    assert split_proportionally(7, [2, 1]) == [5, 2]
    assert sum(split_proportionally(1001, [334, 333, 333])) == 1001
    assert split_proportionally(5, [0, 0]) == [0, 0]


def test_tally_merge():
    a = Tally(3, 1, {200: 3, 500: 1}, {"http_5xx": 1}, {"/a": 4})
    a.merge(Tally(2, 2, {200: 2}, {"timeout": 2}, {"/a": 1, "/b": 3}))
    assert (a.ok, a.failed) == (5, 3)
    assert a.status_counts == {200: 5, 500: 1}
    assert a.error_counts == {"http_5xx": 1, "timeout": 2}
    assert a.path_counts == {"/a": 5, "/b": 3}


def test_result_rates_and_summary():
    r = Result(url="http://127.0.0.1:1/", users=10, procs=2, duration_s=5.0, requests_limit=None,
               wall_s=4.0, ok=990, failed=10, status_counts={200: 990, 503: 10},
               error_counts={"http_5xx": 10},
               latency=LatencyStats.from_seconds([0.01] * 1000), client_cpu_s=2.0,
               client_cpu_per_proc=[0.95, 0.3])
    assert r.total == 1000
    assert r.rps == 250.0
    assert r.error_rate == pytest.approx(0.01)
    assert r.error_rate_pct == pytest.approx(1.0)
    assert r.client_cpu_cores == 0.5
    text = r.summary()
    assert "1000 in 4.00s = 250.0 req/s" in text
    assert "503: 10" in text and "http_5xx: 10" in text
    d = r.to_dict()
    assert d["status_counts"] == {"200": 990, "503": 10}
    assert d["passed"] is True  # no checks
    empty = Result(url="u", users=1, procs=1, duration_s=1, requests_limit=None, wall_s=1.0)
    assert empty.error_rate is None and empty.rps == 0
