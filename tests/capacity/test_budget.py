"""budget_problems: tables of known inputs, each problem naming the key, the arithmetic, the excess."""
from __future__ import annotations

import pytest

from ultrascaled.core import capacity
from ultrascaled.spec.errors import BudgetProblem, SpecError
from ultrascaled.core.capacity import budget_problems

from capacity_helpers import make_spec


def test_a_spec_within_every_budget_has_no_problems():
    spec = make_spec(count=2, max=4, workers=2, mongo_budget=1000)
    assert spec.mongo_pool_per_process() == 123  # 1000 // (4 x 2) - 2
    assert budget_problems(spec, 2, nofile_limit=8192, cpu_count=2) == []


@pytest.mark.parametrize("count, workers, budget, expected", [
    (4, 2, 4096, "memory.fleet_budget_mb: 4 instances x (2 workers + 1 master) x 500 MiB = 6000 MiB"
                 " exceeds the budget of 4096 MiB by 1904 MiB"),
    (1, 1, 999, "memory.fleet_budget_mb: 1 instance x (1 worker + 1 master) x 500 MiB = 1000 MiB"
                " exceeds the budget of 999 MiB by 1 MiB"),
])
def test_memory_over_budget_names_the_arithmetic_and_the_excess(count, workers, budget, expected):
    spec = make_spec(count=count, max=8, workers=workers, budget_mb=budget, mongo_budget=10_000)
    assert budget_problems(spec, count) == [expected]


def test_memory_exactly_at_the_budget_holds():
    spec = make_spec(count=4, max=8, workers=1, budget_mb=4000, mongo_budget=10_000)
    assert budget_problems(spec, 4) == []  # 4 x 2 x 500 = 4000


def test_memory_is_checked_for_count_not_for_max():
    spec = make_spec(count=2, max=8, workers=1, budget_mb=2000, mongo_budget=10_000)
    assert budget_problems(spec, 2) == []
    assert budget_problems(spec, 3)[0].startswith("memory.fleet_budget_mb: 3 instances")


def test_yaml_lines_are_named_like_spec_py_does():
    spec = make_spec(count=4, workers=3, budget_mb=4096, max=8, mongo_budget=10_000)
    assert budget_problems(spec, 4, lines={"memory.fleet_budget_mb": 3}) == [
        "memory.fleet_budget_mb (line 3): 4 instances x (3 workers + 1 master) x 500 MiB "
        "= 8000 MiB exceeds the budget of 4096 MiB by 3904 MiB"]


def test_the_daemons_pool_counts_monitoring_connections_and_fits():
    # Regression: spec.py once handed out budget // (max x workers) = 500 // 8 = 62, and with 2
    # monitoring connections per server that was 8 x 1 x 64 = 512 > 500. Now 62 - 2 = 60.
    spec = make_spec(max=8, workers=1, mongo_budget=500, pool="daemon")
    assert spec.mongo_pool_per_process() == 60 == capacity.mongo_pool_that_fits(spec)
    assert budget_problems(spec, 2) == []


def test_mongo_servers_multiply_pool_and_monitoring():
    spec = make_spec(max=4, workers=2, mongo_budget=1000, pool=40)
    assert budget_problems(spec, 2, mongo_servers=1) == []  # 4 x 2 x 42 = 336
    [msg] = budget_problems(spec, 2, mongo_servers=3)
    assert msg.startswith("mongodb.connection_budget: 4 instances (instances.max) x 2 workers x "
                          "(40 pool + 2 monitoring) x 3 servers = 1008 connections exceeds the "
                          "budget of 1000 by 8; a pool of 39 per process fits")
    assert capacity.mongo_pool_that_fits(spec, 3) == 39  # 1000 // 24 - 2


def test_no_pool_fits_a_tiny_budget():
    spec = make_spec(max=10, workers=4, mongo_budget=20, pool="daemon")
    [msg] = budget_problems(spec, 1)
    assert msg == ("mongodb.connection_budget: 20 connections cannot give each of 10 instances x "
                   "4 workers a pool of 1: 10 x 4 x (1 pool + 2 monitoring) x 1 server = 120 "
                   "needed, over by 100")


def test_min_pool_size_above_the_pool():
    spec = make_spec(max=4, workers=1, mongo_budget=100, min_pool=30)
    assert capacity.mongo_pool_that_fits(spec) == 23
    assert budget_problems(spec, 1) == [
        "mongodb.min_pool_size: 30 exceeds the pool each process gets (23 = 100 // (4 x 1) - 2)"]


@pytest.mark.parametrize("nofile, expected_keys", [
    (None, []),              # no limit given: no fd checks
    (20000, []),
    (1100, []),              # gunicorn 1000 + 66 + 32 = 1098; nginx 1024 + 32 = 1056; daemon 80
    (1090, ["gunicorn.worker_connections"]),
    (1050, ["nginx.worker_connections", "gunicorn.worker_connections"]),
    (70, ["nginx.worker_connections", "gunicorn.worker_connections", "instances.max"]),
])
def test_file_descriptor_budgets(nofile, expected_keys):
    spec = make_spec(max=4, workers=1, worker_connections=1000, mongo_budget=4 * 66, pool=64,
                     nginx={"worker_connections": 1024, "worker_processes": "4"})
    problems = budget_problems(spec, 2, nofile_limit=nofile)
    assert [p.split(":")[0] for p in problems] == expected_keys


def test_file_descriptor_messages_show_the_sum():
    spec = make_spec(max=4, workers=1, worker_connections=1000, mongo_budget=4 * 66, pool=64,
                     nginx={"worker_connections": 1024, "worker_processes": "4"})
    problems = budget_problems(spec, 2, nofile_limit=1024)
    assert ("nginx.worker_connections: 1024 connections + 32 other files per nginx worker = 1056 "
            "file descriptors exceeds its nofile limit of 1024 (inherited from the daemon) by 32"
            in problems)
    assert ("gunicorn.worker_connections: 1000 connections + 66 MongoDB (1 server x (64 pool + "
            "2 monitoring)) + 32 other files per gunicorn worker = 1098 file descriptors exceeds "
            "the nofile limit of 1024 by 74" in problems)
    [daemon] = budget_problems(spec, 2, nofile_limit=79)[-1:]
    assert daemon == ("instances.max: the daemon needs 64 + 4 instances x 4 = 80 file descriptors,"
                      " which exceeds its nofile limit of 79 by 1")


def test_nginx_worker_rlimit_nofile_overrides_the_inherited_limit():
    spec = make_spec(nginx={"worker_connections": 8192, "worker_rlimit_nofile": 8000})
    [msg] = budget_problems(spec, 1)  # no daemon limit given: nginx's own still checked
    assert msg.endswith("= 8224 file descriptors exceeds its nofile limit of 8000 "
                        "(nginx.worker_rlimit_nofile) by 224")
    spec = make_spec(nginx={"worker_connections": 8192, "worker_rlimit_nofile": 9000})
    assert budget_problems(spec, 1, nofile_limit=100_000) == []


def test_every_problem_is_recognised_as_a_budget_message():
    spec = make_spec(count=4, workers=2, budget_mb=100, mongo_budget=10, pool="daemon",
                     worker_connections=5000, nginx={"worker_rlimit_nofile": 100_000})
    problems = budget_problems(spec, 4, nofile_limit=50, cpu_count=1)
    assert len(problems) == 4  # memory, mongo, gunicorn fds, daemon fds
    assert problems and all(isinstance(p, BudgetProblem) for p in problems)
    assert SpecError(problems).over_budget_only
    assert not SpecError(problems + ["instances.min: must not exceed instances.max (1), got 2"]).over_budget_only
