"""plan_for: instances, pool, memory, fds and throughput from known inputs; render; to_dict."""
from __future__ import annotations

import dataclasses
import json

import pytest

from ultrascaled.core import capacity
from ultrascaled.core.capacity import CalibrationError, parse_calibration, plan_for, render
from ultrascaled.spec import HealthSection

from capacity_helpers import make_spec

GiB = 1024 ** 3
# This repo's own measurement: docs/benchmarks.md, "Scaling table" (scripts/loadtest --series on
# the default fleet, 2 instances x 1 gevent worker), the 1000-user step.
MEASURED = {"instances": 2, "users": 1000, "rps": 5196.3, "p99_ms": 346.3}


def plan(spec, users, **kw):
    kw.setdefault("cpu_count", 2)
    kw.setdefault("mem_total_bytes", 24 * GiB)
    kw.setdefault("nofile_limit", 65536)
    return plan_for(spec, users, **kw)


def test_assessment_64_workers_500_mb_512000_connections_is_refused_with_the_arithmetic():
    # One instance of 64 gevent workers x 8000 connections = 512,000; 500 MB per worker in an
    # 8 GB budget; MongoDB: 500 connections for the fleet (docs/app.md), the daemon's pool.
    spec = make_spec(count=1, min=1, max=1, workers=64, worker_connections=8000, limit_mb=500,
                     budget_mb=8192, mongo_budget=500, pool="daemon",
                     nginx={"worker_processes": "auto"})
    p = plan(spec, 512_000, nofile_limit=1024)
    assert p.instances == 1 and p.connection_capacity == 512_000
    assert p.nginx_capacity == 4096  # 2 cores x 4096 / 2
    assert p.mongo_pool_daemon == 5 and p.mongo_pool_per_process == 5
    assert p.memory_worst_mib == 32_500
    assert not p.fits
    assert ("memory.fleet_budget_mb: 1 instance x (64 workers + 1 master) x 500 MiB = 32500 MiB "
            "exceeds the budget of 8192 MiB by 24308 MiB") in p.problems
    assert "mongodb.connection_budget" not in " ".join(p.problems)  # 64 x (5 + 2) = 448 fits
    assert ("nginx.worker_connections: 512000 users exceed what nginx can proxy (2 x 4096 / 2 = "
            "4096) by 507904") in p.problems
    assert any(m.startswith("gunicorn.worker_connections: 8000 connections + 7 MongoDB")
               and m.endswith("= 8039 file descriptors exceeds the nofile limit of 1024 by 7015")
               for m in p.problems)
    assert p.verdict == "not measured" and p.throughput_rps is None


def test_assessment_500_pooled_connections_per_worker_needs_32128():
    spec = make_spec(count=1, max=1, workers=64, mongo_budget=500, pool=500, budget_mb=100_000,
                     worker_connections=10)
    [msg] = [m for m in plan(spec, 10).problems if m.startswith("mongodb")]
    assert "= 32128 connections exceeds the budget of 500 by 31628" in msg
    assert msg.endswith("a pool of 5 per process fits (500 // (1 x 64 x 1) - 2)")


def test_the_measured_calibration_holds_for_the_measured_load():
    spec = make_spec(count=2, max=8, workers=1, mongo_budget=1000)
    p = plan(spec, 1000, calibration=MEASURED)
    assert p.instances == 2  # ceil(1000 / (1000 / 2))
    assert p.throughput_rps == pytest.approx(5196.3)
    assert p.verdict == "holds" and p.fits
    assert "throughput = instances x measured req/s per instance = 2 x (5196.3 / 2) = 5196.3 req/s " \
           "at p99 346.3 ms" in p.arithmetic


def test_more_users_than_measured_is_extrapolated_and_past_max_does_not_hold():
    spec = make_spec(count=2, max=8, workers=1, mongo_budget=1000)
    p = plan(spec, 2000, calibration=MEASURED)
    assert p.instances == 4 and p.verdict == "extrapolated"
    assert p.throughput_rps == pytest.approx(10392.6)
    assert any("share its cores" in n for n in p.notes)
    p = plan(spec, 5000, calibration=MEASURED)
    assert p.instances == 10 and p.verdict == "does not hold"
    assert "instances.max: 5000 users need 10 instances, more than instances.max 8" in p.problems


def test_connections_decide_the_instances_without_calibration():
    spec = make_spec(count=1, min=1, max=8, workers=2, worker_connections=500, mongo_budget=1000)
    p = plan(spec, 2500)
    assert p.instances == 3  # ceil(2500 / (2 x 500))
    assert p.connection_capacity == 3000
    assert "instances for connections = ceil(users / connections per instance) = ceil(2500 / 1000)"\
           " = 3" in p.arithmetic
    assert p.throughput_rps is None and p.verdict == "not measured"
    assert any("ultrascale-loadtest" in n and "--json" in n for n in p.notes)


def test_instances_min_is_a_floor():
    spec = make_spec(count=3, min=3, max=8, mongo_budget=1000)
    assert plan(spec, 1).instances == 3


def test_memory_expected_typical_and_measured():
    spec = make_spec(count=2, max=8, workers=3, mongo_budget=1000, budget_mb=10_000)
    p = plan(spec, 100)
    assert p.instances == 1
    assert p.memory_worst_mib == 2000            # 1 x (3 + 1) x 500
    assert p.memory_expected_mib == 131          # 1 x 32.75 x (3 + 1)
    assert "docs/benchmarks.md" in p.memory_expected_source
    assert "scripts/bench --only footprint" in p.memory_expected_source
    cal = dict(MEASURED, instances=1, users=1000, rss_per_instance_bytes=200 * 1024 * 1024)
    p = plan(spec, 100, calibration=cal)
    assert p.memory_expected_mib == 200 and "measured 200 MiB" in p.memory_expected_source


def test_worst_case_beyond_the_hosts_memory_is_a_problem():
    spec = make_spec(count=1, max=4, workers=4, mongo_budget=1000, budget_mb=100_000)
    p = plan(spec, 10, mem_total_bytes=2 * GiB)
    assert ("memory.worker_limit_mb: worst case 1 x (4 + 1) x 500 MiB = 2500 MiB exceeds this "
            "host's memory of 2048 MiB by 452 MiB") in p.problems


def test_fds_are_planned_against_the_limit():
    spec = make_spec(max=4, workers=1, worker_connections=2000, mongo_budget=1000)
    p = plan(spec, 10, nofile_limit=1024)
    assert p.fds_gunicorn_worker == 2000 + (248 + 2) + 32
    assert any(m.startswith("gunicorn.worker_connections: 2000 connections") for m in p.problems)
    assert plan(spec, 10, nofile_limit=8192).fits


def test_a_calibration_that_missed_the_target_is_not_a_capacity():
    spec = make_spec(count=2, max=8, mongo_budget=1000)
    p = plan(spec, 1000, calibration=dict(MEASURED, p99_ms=2500))
    assert p.throughput_rps is None and p.verdict == "not measured"
    assert any("missed the target" in n for n in p.notes)


@pytest.mark.parametrize("data, instances, expected", [
    (MEASURED, None, (2, 1000, 5196.3, 346.3)),
    ({"url": "http://127.0.0.1:8080/", "users": 200, "rps": 14200.0, "latency": {"p99": 45.0},
      "error_rate_pct": 0.0}, 4, (4, 200, 14200.0, 45.0)),
    ({"instances": 4, "steps": [
        {"users": 100, "rps": 9000.0, "p99_ms": 20.0, "error_rate_pct": 0.0, "fleet_rss_bytes": 4 << 20},
        {"users": 1000, "rps": 5196.3, "p99_ms": 346.3, "error_rate_pct": 0.0, "fleet_rss_bytes": 8 << 20},
        {"users": 5000, "rps": 9000.0, "p99_ms": 2000.0, "error_rate_pct": 3.0}]},
     None, (4, 1000, 5196.3, 346.3)),
])
def test_calibration_shapes(data, instances, expected):
    c = parse_calibration(data, instances)
    assert (c.instances, c.users, c.rps, c.p99_ms) == expected


def test_series_fleet_rss_becomes_per_instance():
    c = parse_calibration({"instances": 4, "steps": [
        {"users": 10, "rps": 1.0, "p99_ms": 1.0, "fleet_rss_bytes": 400 << 20}]})
    assert c.rss_per_instance_bytes == 100 << 20


@pytest.mark.parametrize("data, fragment", [
    ({"users": 10, "rps": 1, "p99_ms": 1}, "`instances`"),
    ({"instances": 2, "p99_ms": 1}, "`rps` is missing"),
    ({"instances": 2, "rps": "fast", "p99_ms": 1}, "`rps` must be a number"),
    ([1, 2], "JSON object"),
])
def test_bad_calibration_says_what_is_wrong(data, fragment):
    with pytest.raises(CalibrationError, match=fragment):
        parse_calibration(data)


def test_render_shows_the_table_the_arithmetic_and_the_verdict():
    spec = make_spec(count=2, max=8, workers=1, mongo_budget=500, pool="daemon")
    text = render(plan(spec, 1000, calibration=MEASURED))
    assert "instances" in text and "5196.3 req/s" in text
    assert "Arithmetic:" in text
    assert "  MongoDB pool that fits = connection_budget // (instances.max x workers x servers) " \
           "- 2 = 500 // (8 x 1 x 1) - 2 = 60" in text
    text = render(plan(make_spec(count=2, max=8, workers=1, budget_mb=500, mongo_budget=500), 1000))
    assert "DOES NOT FIT (1 budget(s) cannot hold):" in text
    assert "= 1000 MiB exceeds the budget of 500 MiB by 500 MiB" in text
    text = render(plan(make_spec(count=2, max=8, mongo_budget=1000), 10))
    assert "FITS: every budget holds." in text and "not measured" in text


def test_to_dict_is_json_and_carries_the_figures():
    p = plan(make_spec(count=2, max=8, mongo_budget=1000), 1000, calibration=MEASURED)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["instances"] == 2 and d["fits"] is True and d["throughput_measured"] is True
    assert d["calibration"]["rps"] == 5196.3 and d["arithmetic"] == p.arithmetic


def test_users_must_be_positive():
    with pytest.raises(ValueError):
        plan(make_spec(), 0)


@pytest.mark.parametrize("worker_class,threads,workers,users,per_worker,instances", [
    ("sync", 1, 1, 1000, 1, 1000),        # one request at a time per worker
    ("sync", 1, 4, 1000, 1, 250),
    ("gthread", 1, 2, 1000, 1, 500),      # gunicorn's default threads: like sync
    ("gthread", 8, 2, 1000, 8, 63),       # ceil(1000 / 16)
    ("gevent", 1, 1, 1000, 1000, 1),      # worker_connections
    ("eventlet", 1, 2, 5000, 1000, 3),
    # uvicorn sets no per-worker limit: counted as worker_connections (issue 23 planned 100
    # instances for 200 users of a FastAPI fleet, taking it for sync)
    ("uvicorn_worker.UvicornWorker", 1, 2, 200, 1000, 1),
    ("uvicorn.workers.UvicornWorker", 1, 2, 5000, 1000, 3),
    (("uvicorn_worker.UvicornWorker", 50), 1, 2, 200, 50, 2),     # gunicorn.concurrency
    (("myworkers.OneAtATime", 1), 1, 4, 1000, 1, 250),           # a class of the operator's
])
def test_requests_per_worker_follow_the_worker_class(worker_class, threads, workers, users,
                                                     per_worker, instances):
    worker_class, concurrency = worker_class if isinstance(worker_class, tuple) else (worker_class, None)
    spec = make_spec(worker_class=worker_class, threads=threads, workers=workers, min=1, max=2000,
                     budget_mb=10 ** 7, mongo_budget=10 ** 6, concurrency=concurrency)
    assert capacity.requests_per_worker(spec)[0] == per_worker
    p = plan(spec, users)
    assert (p.requests_per_worker, p.instances) == (per_worker, instances)
    assert p.connection_capacity == instances * workers * per_worker
    assert p.to_dict()["worker_class"] == worker_class


@pytest.mark.parametrize("worker_class,concurrency,open_conns,key", [
    ("sync", None, 1, "gunicorn.worker_connections"),
    ("gthread", None, 1000, "gunicorn.worker_connections"),
    ("gevent", None, 1000, "gunicorn.worker_connections"),
    ("eventlet", None, 1000, "gunicorn.worker_connections"),
    ("uvicorn_worker.UvicornWorker", None, 1000, "gunicorn.worker_connections"),
    ("uvicorn_worker.UvicornWorker", 40, 40, "gunicorn.concurrency"),
    ("myworkers.Async", 500, 500, "gunicorn.concurrency")])
def test_file_descriptors_count_the_connections_a_worker_holds_open(worker_class, concurrency,
                                                                    open_conns, key):
    spec = make_spec(worker_class=worker_class, worker_connections=1000, pool=10,
                     concurrency=concurrency)
    assert capacity.gunicorn_worker_fds(spec, 10) == open_conns + (10 + 2) + 32
    over = [m for m in capacity.budget_problems(spec, 2, nofile_limit=100)
            if m.startswith(key)]
    assert bool(over) == (open_conns > 100 - 12 - 32)


@pytest.mark.parametrize("worker_class,threads,target,ok", [
    ("sync", 1, 0.8, True), ("sync", 1, 2, False),          # a sync worker never has 2 in flight
    ("gthread", 4, 4, True), ("gthread", 4, 5, False), ("gevent", 1, 50, True),
    ("uvicorn_worker.UvicornWorker", 1, 50, True),     # not a sync worker: many in flight
    ("uvicorn_worker.UvicornWorker, concurrency: 20", 1, 30, False),
    ("myworkers.Async, concurrency: 64", 1, 60, True)])
def test_the_autoscalers_in_flight_target_follows_the_worker_class(worker_class, threads, target, ok):
    from pathlib import Path

    from ultrascaled.spec import SpecError, parse_spec
    text = (f"gunicorn: {{worker_class: {worker_class}, threads: {threads}}}\n"
            f"autoscale: {{enabled: true, target: {{in_flight_per_worker: {target}}}}}\n")
    if ok:
        parse_spec(text, base_dir=Path("/srv"), cpu_count=2)
        return
    with pytest.raises(SpecError) as info:
        parse_spec(text, base_dir=Path("/srv"), cpu_count=2)
    assert any(e.startswith("autoscale.target.in_flight_per_worker (line 2):") and "never scale up" in e
               for e in info.value.errors), info.value.errors


def test_the_plan_says_when_autoscale_max_replicas_cannot_reach_the_users():
    from ultrascaled.spec import AutoscaleSection
    spec = dataclasses.replace(make_spec(worker_class="sync", workers=2, max=8),
                               autoscale=AutoscaleSection(enabled=True, max_replicas=4))
    p = plan(spec, 100)
    assert p.instances == 50
    assert any("autoscale.max_replicas 4 is below the 50 instances 100 users need" in n and
               "4 x 2 x 1 = 8 requests at once" in n for n in p.notes), p.notes
    assert "autoscale bounds = min_replicas..max_replicas = 1..4" in "\n".join(p.arithmetic)


@pytest.mark.parametrize("probe_timeout, counts", [(1.0, False), (5.0, True)])
def test_a_calibration_is_judged_against_the_health_probe_timeout_too(probe_timeout, counts):
    # p99 1.5 s: under the 2 s target, but over a 1 s health.timeout the daemon's probes time
    # out in the same queue, so its rate is no capacity there
    spec = dataclasses.replace(make_spec(), health=HealthSection(timeout=probe_timeout))
    cal = {"instances": 2, "users": 1000, "rps": 3000.0, "p99_ms": 1500.0, "error_rate_pct": 0.0}
    plan = plan_for(spec, 1000, calibration=cal, cpu_count=8, mem_total_bytes=64 << 30, nofile_limit=1 << 20)
    assert plan.calibration.meets_target is counts
    assert any("health.timeout" in line for line in plan.arithmetic)
    series = {"instances": 2, "steps": [{"users": 500, "rps": 2000.0, "p99_ms": 800.0},
                                        {"users": 1000, "rps": 3000.0, "p99_ms": 1500.0}]}
    best = parse_calibration(series, target_ms=capacity.latency_target(spec)[0])
    assert best.users == (1000 if counts else 500)
