"""The worker types (`processes:` of kind worker) in the budgets: each type at its `max`, each
process (tree) at its limit (processes.NAME.memory_limit_mb, else memory.worker_limit_mb); a
job not counted; the spec refused at load naming the types; `plan`'s line per type."""
from __future__ import annotations

import dataclasses

import pytest

from ultrascaled.core.capacity import budget_problems, plan_for, render
from ultrascaled.spec import SpecError, parse_spec
from ultrascaled.spec.schema import ProcessType

from capacity_helpers import make_spec

GiB = 1024 ** 3


def with_types(spec, **types):
    """`spec` with these process types, its pool the largest that fits with them (each of their
    processes holds one too)."""
    from ultrascaled.core import capacity
    spec = dataclasses.replace(spec, processes=dict(types))
    return dataclasses.replace(spec, pool=capacity.mongo_pool_that_fits(spec))


def worker(max, limit=None, count=1):
    return ProcessType(command=["celery"], count=count, max=max, memory_limit_mb=limit)


JOB = ProcessType(kind="job", command=["cleanup"], every="1h")


@pytest.mark.parametrize("types, budget, expected", [
    # 2 x (1 + 1) x 500 = 2000 web; celery 4 x 500 = 2000; mailer 2 x 60 = 120
    ({"celery": worker(4), "mailer": worker(2, 60)}, 4000,
     "memory.fleet_budget_mb: 2 instances x (1 worker + 1 master) x 500 MiB = 2000 MiB, plus the "
     "worker types at their max: celery 4 x 500 MiB = 2000 MiB, mailer 2 x 60 MiB = 120 MiB; 4120 MiB "
     "in all exceeds the budget of 4000 MiB by 120 MiB"),
    ({"celery": worker(1, 16)}, 2015,
     "memory.fleet_budget_mb: 2 instances x (1 worker + 1 master) x 500 MiB = 2000 MiB, plus the "
     "worker types at their max: celery 1 x 16 MiB = 16 MiB; 2016 MiB in all exceeds the budget of "
     "2015 MiB by 1 MiB"),
])
def test_each_worker_type_counts_at_its_max_times_its_limit(types, budget, expected):
    spec = with_types(make_spec(count=2, workers=1, budget_mb=budget, mongo_budget=10_000), **types)
    assert budget_problems(spec, 2) == [expected]


def test_worker_types_exactly_at_the_budget_hold_and_a_job_is_not_counted():
    spec = with_types(make_spec(count=2, workers=1, budget_mb=4120, mongo_budget=10_000),
                      celery=worker(4), mailer=worker(2, 60), nightly=JOB)
    assert budget_problems(spec, 2) == []          # 2000 + 2000 + 120, the job left out


def test_a_types_count_does_not_matter_its_max_does():
    base = make_spec(count=2, workers=1, budget_mb=4000, mongo_budget=10_000)
    assert budget_problems(with_types(base, celery=worker(4, count=0)), 2) == []
    assert budget_problems(with_types(base, celery=worker(5, count=0)), 2)[0].startswith(
        "memory.fleet_budget_mb: 2 instances")


def test_the_daemons_file_descriptors_count_each_worker_process_at_max():
    spec = with_types(make_spec(max=4, workers=1, mongo_budget=10_000), celery=worker(4), rq=worker(3, 60))
    assert [p for p in budget_problems(spec, 2, nofile_limit=94) if p.startswith("instances.max")] == []
    [daemon] = [p for p in budget_problems(spec, 2, nofile_limit=93) if p.startswith("instances.max")]
    assert daemon == ("instances.max: the daemon needs 64 + 4 instances x 4 + 7 worker-type processes at "
                      "their max (celery 4, rq 3) x 2 = 94 file descriptors, which exceeds its nofile "
                      "limit of 93 by 1")


SPEC = """name: shop
instances: {count: 2, max: 4}
gunicorn: {workers: 1}
memory: {worker_limit_mb: 500, fleet_budget_mb: 4000}
nginx: {mode: "off"}
processes:
  celery: {command: [celery, worker], max: 4}
  mailer: {command: [python, mail.py], max: 2, memory_limit_mb: 60}
"""


def test_a_spec_whose_worker_types_cannot_fit_is_refused_at_load_naming_them():
    with pytest.raises(SpecError) as exc:
        parse_spec(SPEC)
    [msg] = exc.value.errors
    assert msg.startswith("memory.fleet_budget_mb (line 4): 2 instances x (1 worker + 1 master)")
    assert "celery 4 x 500 MiB = 2000 MiB, mailer 2 x 60 MiB = 120 MiB; 4120 MiB in all" in msg
    assert exc.value.over_budget_only        # valid, only over its budget: `plan` exits 1
    assert parse_spec(SPEC.replace("max: 4}", "max: 3}")).processes["celery"].max == 3


@pytest.mark.parametrize("entry, error", [
    ("{kind: job, command: [x], every: 1h, memory_limit_mb: 60}",
     "processes.t.memory_limit_mb (line 1): not a key of a job: a job's run is bounded by its "
     "`timeout`; the memory watchdog watches workers"),
    ("{command: [x], memory_limit_mb: 8}", "processes.t.memory_limit_mb (line 1): must be"),
])
def test_memory_limit_mb_is_a_workers_key_of_at_least_16(entry, error):
    with pytest.raises(SpecError) as exc:
        parse_spec(f"processes: {{t: {entry}}}\n")
    assert any(e.startswith(error) for e in exc.value.errors), exc.value.errors


def plan(spec, users=100):
    return plan_for(spec, users, cpu_count=2, mem_total_bytes=24 * GiB, nofile_limit=65536)


def test_plan_shows_one_line_per_worker_type_after_the_web_fleets():
    spec = with_types(make_spec(count=2, max=4, workers=2, mongo_budget=10_000),
                      celery=worker(4, count=2), mailer=worker(2, 60), nightly=JOB)
    p = plan(spec, 10)
    text = render(p)
    lines = text.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("worker type ")]
    assert [lines[i].split()[2:4] for i in at] == [["celery", "2..4"], ["mailer", "1..2"]]
    assert at[0] == 1 + next(i for i, line in enumerate(lines) if line.startswith("throughput"))
    assert lines[at[0]].endswith("memory at max 4 x 500 MiB = 2000 MiB (memory.worker_limit_mb); "
                                 "daemon fds 4 x 2 = 8")
    assert lines[at[1]].endswith("memory at max 2 x 60 MiB = 120 MiB (processes.mailer.memory_limit_mb); "
                                 "daemon fds 2 x 2 = 4")
    assert p.memory_worst_mib == 1 * 3 * 500 + 2000 + 120    # 1 instance for 10 users
    assert p.fds_daemon == 64 + 4 * 4 + 6 * 2
    assert [t["name"] for t in p.to_dict()["process_types"]] == ["celery", "mailer"]


def test_plan_of_a_spec_without_processes_has_no_type_lines_and_its_old_json():
    p = plan(make_spec(count=2, max=4, workers=2, mongo_budget=10_000), 10)
    assert "worker type" not in render(p) and "process_types" not in p.to_dict()
    assert "memory worst case = instances x (workers + 1 master) x memory.worker_limit_mb = 1 x" in \
        "\n".join(p.arithmetic)
