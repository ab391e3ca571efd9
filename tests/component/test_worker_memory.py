"""The memory watchdog of the worker types (supervise/workers_loop.py, core/memwatch.decide_trees)
and their memory budget at scale time, with the fake runner and clock: a process whose tree is
over its limit for memory.samples_over samples in a row (2 in the harness's spec) is restarted
once, gracefully; one under it never is."""
from __future__ import annotations

import asyncio
import functools
import signal

import pytest

from fakes import Harness
from ultrascaled.core.control import ScaleRefused

MiB = 1 << 20


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


TYPES = """
processes:
  celery:
    command: [celery, -A, proj, worker]
    count: 2
    max: 4
    graceful_timeout: 10
  mailer:
    command: [python, -m, mailer]
    count: 1
    max: 2
    memory_limit_mb: 60
"""


async def up(tmp_path, extra=TYPES) -> Harness:
    h = Harness(tmp_path, extra)
    await h.start()
    await h.advance(1)          # start_seconds: every process RUNNING
    return h


def recycles(h: Harness) -> list[dict]:
    return h.events_named("process.memory_recycle")


@component
async def test_a_worker_over_its_limit_for_samples_over_samples_is_restarted_once_gracefully(tmp_path):
    h = await up(tmp_path)
    fat, other = h.runner.worker("comp/celery/0"), h.runner.worker("comp/celery/1")
    h.runner.rss[fat.pid] = 150 * MiB            # over memory.worker_limit_mb (100)
    await h.sample()                              # the sampler's one pass: the web's, then every worker's
    assert sorted(c[1] for c in h.runner.calls if c[0] == "sample_tree") == sorted(
        h.runner.worker(label).pid for label in h.runner.workers_alive())
    assert fat.alive and recycles(h) == []        # one sample over: not yet
    await h.sample()
    [event] = recycles(h)
    assert (event["process"], event["index"], event["pid"]) == ("celery", 0, fat.pid)
    assert (event["rss"], event["limit"], event["samples"], event["metric"]) == (150 * MiB, 100 * MiB, 2, "rss")
    assert ("signal", "comp/celery/0", signal.SIGTERM) in h.runner.calls and not fat.alive
    new = h.runner.worker("comp/celery/0")
    assert new.pid != fat.pid and other.alive     # a new process; the other one untouched
    assert h.sup.workers.slots[("celery", 0)].restarts == 1
    stop = [e for e in h.events_named("process.state") if e["index"] == 0 and e["state"] == "stopping"
            and e["process"] == "celery"]
    assert "memory: 150 MiB" in stop[-1]["reason"]
    for _ in range(5):                            # the new one is under the limit: no second restart
        await h.sample()
    assert len(recycles(h)) == 1


@component
async def test_a_worker_under_its_limit_or_over_it_not_in_a_row_is_never_restarted(tmp_path):
    h = await up(tmp_path)
    calm, spiky = h.runner.worker("comp/celery/0"), h.runner.worker("comp/celery/1")
    h.runner.rss[calm.pid] = 100 * MiB            # at the limit is not over it
    for n in range(8):
        h.runner.rss[spiky.pid] = (150 if n % 2 else 50) * MiB
        await h.sample()
    assert recycles(h) == [] and calm.alive and spiky.alive
    assert not [c for c in h.runner.calls if c[0] == "signal" and str(c[1]).startswith("comp/")]


@component
async def test_the_limit_is_per_process_tree_a_celery_parent_and_its_children_summed(tmp_path):
    h = await up(tmp_path)
    parent = h.runner.worker("comp/celery/1")
    parent.workers = [parent.pid + 1, parent.pid + 2]          # its prefork pool
    h.runner.rss.update({parent.pid: 30 * MiB, parent.pid + 1: 40 * MiB, parent.pid + 2: 40 * MiB})
    await h.sample()
    snap = h.sup.processes()["celery"]["instances"]
    assert [i["rss"] for i in snap] == [10 * MiB, 110 * MiB]   # GET /processes: each tree's rss
    await h.sample()
    [event] = recycles(h)
    assert (event["index"], event["rss"], event["processes"]) == (1, 110 * MiB, 3)
    assert not parent.alive


@component
async def test_a_types_own_memory_limit_mb_is_its_limit(tmp_path):
    h = await up(tmp_path)
    mailer, celery = h.runner.worker("comp/mailer/0"), h.runner.worker("comp/celery/0")
    h.runner.rss[mailer.pid] = h.runner.rss[celery.pid] = 80 * MiB   # over 60, under 100
    await h.sample()
    await h.sample()
    assert [(e["process"], e["limit"]) for e in recycles(h)] == [("mailer", 60 * MiB)]
    assert celery.alive and not mailer.alive


@component
async def test_a_process_that_crosses_its_limit_at_each_start_is_held_with_an_alert(tmp_path):
    h = await up(tmp_path)        # restart.fatal_crashes 5 within 60 s
    for n in range(6):
        p = h.runner.worker("comp/mailer/0")
        h.runner.rss[p.pid] = 90 * MiB
        await h.advance(1)        # RUNNING again
        await h.sample()
        await h.sample()
    assert len(recycles(h)) == 5
    held = h.runner.worker("comp/mailer/0")
    assert held.alive and h.events_named("process.memory_recycle_held")
    assert any(a["alert"] == "memory_recycle_loop" for a in h.alerts().values())
    h.runner.rss[held.pid] = 20 * MiB
    await h.sample()
    assert not any(a["alert"] == "memory_recycle_loop" for a in h.alerts().values())


async def web_at(h: Harness, n: int, mib: int) -> None:
    """The web fleet scaled to `n` instances (over instances.count), each process at `mib`."""
    h.sup.scale_process("web", n)
    await h.settle()
    for port in range(8001, 8001 + n):
        m = h.runner.master(port)
        h.runner.rss.update({m.pid: mib * MiB, m.workers[0]: mib * MiB})


@component
async def test_a_scale_up_the_measured_memory_says_breaks_the_budget_is_refused(tmp_path):
    h = await up(tmp_path)       # memory.fleet_budget_mb 1000: the spec fits it at instances.count 2
    await web_at(h, 4, 90)       # the web: 4 x (90 + 90) = 720 MiB measured, under its limits
    for i in (0, 1):
        h.runner.rss[h.runner.worker(f"comp/celery/{i}").pid] = 90 * MiB
    await h.sample()             # mailer: 10 MiB
    assert h.sup.scale_process("celery", 3)["desired"] == 3     # 3 x 90 + 720 + 10 = 1000 MiB
    await h.advance(1)
    h.runner.rss[h.runner.worker("comp/celery/2").pid] = 90 * MiB
    await h.sample()
    with pytest.raises(ScaleRefused) as exc:
        h.sup.scale_process("celery", 4)
    assert exc.value.code == "over_budget"
    assert "celery=4: 4 x 90 MiB (measured average of 3) + 730 MiB" in str(exc.value)
    assert "= 1090 MiB exceeds memory.fleet_budget_mb 1000 MiB" in str(exc.value)
    assert h.sup.workers.desired["celery"] == 3 and recycles(h) == []
    assert h.sup.scale_process("celery", 2)["desired"] == 2     # down is never refused


@component
async def test_a_scale_of_a_type_none_of_which_runs_counts_its_limit(tmp_path):
    h = await up(tmp_path, TYPES.replace("count: 1\n    max: 2", "count: 0\n    max: 2"))
    await web_at(h, 4, 90)
    for i in (0, 1):
        h.runner.rss[h.runner.worker(f"comp/celery/{i}").pid] = 90 * MiB
    await h.sample()             # the rest: 720 + 180 = 900 MiB
    with pytest.raises(ScaleRefused) as exc:
        h.sup.scale_process("mailer", 2)
    assert exc.value.code == "over_budget"
    assert "2 x 60 MiB (processes.mailer.memory_limit_mb, none measured) + 900 MiB" in str(exc.value)
    assert h.sup.scale_process("mailer", 1)["desired"] == 1


@component
async def test_a_web_scale_counts_the_worker_types_measured_memory_too(tmp_path):
    h = await up(tmp_path)
    for port in (8001, 8002):    # the web: 60 + 70 = 130 MiB per instance measured
        m = h.runner.master(port)
        h.runner.rss.update({m.pid: 60 * MiB, m.workers[0]: 70 * MiB})
    for i in (0, 1):
        h.runner.rss[h.runner.worker(f"comp/celery/{i}").pid] = 99 * MiB
    h.runner.rss[h.runner.worker("comp/mailer/0").pid] = 50 * MiB
    await h.sample()             # the worker types: 2 x 99 + 50 = 248 MiB, each under its limit
    with pytest.raises(ScaleRefused) as exc:      # 6 x 130 = 780 alone would fit
        h.sup.scale_process("web", 6)
    assert exc.value.code == "over_budget"
    assert str(exc.value) == ("6 instances x 130 MiB measured average + 248 MiB measured of the worker "
                              "types = 1028 MiB exceeds memory.fleet_budget_mb 1000 MiB")
    assert h.sup.scale_process("web", 5)["desired"] == 5     # 650 + 248 = 898 MiB


@component
async def test_status_shows_each_worker_processes_tree_rss(tmp_path):
    from ultrascaled.surface import cli
    h = await up(tmp_path)
    parent = h.runner.worker("comp/celery/0")
    parent.workers = [parent.pid + 1]
    h.runner.rss.update({parent.pid: 30 * MiB, parent.pid + 1: 45 * MiB})
    await h.sample()
    shown = cli.render_workers({"celery": h.sup.processes()["celery"]}).splitlines()
    assert shown[1].split() == ["INDEX", "PID", "STATE", "UPTIME", "RSS", "RESTARTS", "REASON"]
    assert shown[2].split()[4] == "75M" and shown[3].split()[4] == "10M"
