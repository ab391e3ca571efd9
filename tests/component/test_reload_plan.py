"""The reload's dry run against the real reload, with the fake runner and clock: for each spec
edit, what `Supervisor.reload_dry_run` answers is what `reload_spec` then does (the same pure
decision, core/reload_plan.py), and the dry run itself changes nothing at all."""
from __future__ import annotations

import asyncio
import dataclasses
import functools

import pytest

from fakes import SPEC, Harness
from ultrascaled.core.control import ScaleRefused
from ultrascaled.spec import parse_spec


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


def edited(h: Harness, tmp_path, *edits: tuple[str, str], extra: str = ""):
    text = SPEC.format(dir=tmp_path, extra=extra)
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return parse_spec(text, base_dir=tmp_path)


def everything(h: Harness) -> dict:
    """All a reload could touch: the spec in force, the count, every record, the saved state,
    the events, the runner's and the upstream's calls."""
    rec = h.rec
    state = rec.state_dir / "state.json"
    return {
        "spec": rec.spec, "count": rec.count, "pending_nginx": rec.pending_nginx,
        "records": {p: dataclasses.replace(i) for p, i in rec.instances.items()},
        "state.json": state.read_bytes() if state.exists() else None,
        "events": h.events.last_seq, "calls": list(h.runner.calls),
        "applied": list(h.upstream.applied), "reconfigured": getattr(h.upstream, "reconfigured", 0),
        "inbox": list(rec._inbox), "tasks": set(rec._tasks),
    }


async def dry_then_real(h: Harness, new):
    """The dry run (asserting it changed nothing), then the real reload, settled. Returns the
    plan, the reload's answer, and the pids before and after."""
    before = everything(h)
    plan = h.sup.reload_dry_run(new)
    assert everything(h) == before, "a dry run must change nothing"
    pids = {p: i.pid for p, i in h.rec.instances.items()}
    reconfigured = before["reconfigured"]
    result = h.sup.reload_spec(new)
    await h.advance(2.0, step=0.1)
    after = {p: i.pid for p, i in h.rec.instances.items()}
    # What the dry run said is what the reload answered ...
    assert [r["port"] for r in plan["restarting"]] == result["restarting"]
    assert plan["added"] == result["added"] and plan["removed"] == result["removed"]
    assert plan["desired"]["after"] == result["desired"] == h.rec.count
    assert plan["changed"] == result["changed"]
    # ... and what it did: the restarted ports run new masters, the others the same ones,
    # the count and nginx as said.
    restarted = {p for p in pids if p in after and after[p] != pids[p]}
    assert restarted == set(result["restarting"]), (restarted, result)
    assert set(after) == set(h.rec.wanted) and len(after) == plan["desired"]["after"]
    assert set(after) - set(pids) == set(plan["added"])
    assert set(pids) - set(after) == set(plan["removed"])
    assert (getattr(h.upstream, "reconfigured", 0) > reconfigured) == bool(plan["nginx"]["keys"])
    assert all(s == "running" for s in h.states().values()), h.states()
    return plan, result


@component
async def test_a_workers_change_restarts_every_instance_and_says_which_key(tmp_path):
    h = Harness(tmp_path)
    await h.start()
    new = edited(h, tmp_path, ("workers: 1,", "workers: 2,"))
    plan, _ = await dry_then_real(h, new)
    assert plan["changes"] is True
    assert [k["key"] for k in plan["keys"]] == ["gunicorn.workers"]
    assert plan["keys"][0]["old"] == 1 and plan["keys"][0]["new"] == 2
    assert plan["restarting"] == [{"port": 8001, "why": ["gunicorn.workers changed"]},
                                  {"port": 8002, "why": ["gunicorn.workers changed"]}]
    mem = plan["budget"]["memory"]
    assert mem["before"]["worst_case_mb"] == 2 * 2 * 100 and mem["after"]["worst_case_mb"] == 2 * 3 * 100
    assert plan["nginx"]["reconfigure"] is False


@component
async def test_a_count_change_starts_or_stops_and_restarts_nothing(tmp_path):
    h = Harness(tmp_path)
    await h.start()
    plan, _ = await dry_then_real(h, edited(h, tmp_path, ("count: 2,", "count: 3,")))
    assert plan["added"] == [8003] and plan["restarting"] == [] and plan["desired"] == {"before": 2, "after": 3}
    plan, _ = await dry_then_real(h, edited(h, tmp_path, ("count: 2,", "count: 1,")))
    assert plan["removed"] == [8002, 8003] and plan["desired"] == {"before": 3, "after": 1}


@component
async def test_an_env_change_restarts_and_a_secret_is_not_shown(tmp_path):
    h = Harness(tmp_path)
    await h.start()
    new = edited(h, tmp_path, ("app: {directory: " + str(tmp_path) + "}",
                               "app: {directory: " + str(tmp_path) + ", env: {DB_PASSWORD: hunter2, MODE: x}}"))
    plan, _ = await dry_then_real(h, new)
    assert {k["key"]: k["new"] for k in plan["keys"]} == {"app.env.DB_PASSWORD": "(hidden)", "app.env.MODE": "x"}
    assert plan["restarting"][0]["why"] == ["app.env.DB_PASSWORD changed", "app.env.MODE changed"]
    assert "hunter2" not in repr(plan)


@component
async def test_a_key_outside_the_command_changes_the_spec_and_restarts_nothing(tmp_path):
    h = Harness(tmp_path)
    await h.start()
    plan, result = await dry_then_real(h, edited(h, tmp_path, ("interval: 10}", "interval: 7}")))
    assert plan["changes"] is True and [k["key"] for k in plan["keys"]] == ["health.interval"]
    assert plan["restarting"] == [] and result["changed"] == ["health"]
    assert h.sup.spec.health.interval == 7


@component
async def test_nginx_settings_and_the_range_reconfigure_nginx(tmp_path):
    h = Harness(tmp_path)
    await h.start()
    plan, _ = await dry_then_real(h, edited(h, tmp_path, ("max: 6,", "max: 5,")))
    assert plan["nginx"]["keys"] == ["instances.max"]
    # the MongoDB pool each process gets is sized for instances.max: the command changes too
    assert plan["restarting"] == [{"port": p, "why": ["instances.max changed"]} for p in (8001, 8002)]
    plan, _ = await dry_then_real(h, edited(h, tmp_path, ("max: 6,", "max: 5,"),
                                            ('nginx: {mode: "off"}', 'nginx: {mode: "off", worker_connections: 2048}')))
    assert plan["nginx"]["keys"] == ["nginx.worker_connections"] and plan["restarting"] == []


@component
async def test_the_same_spec_changes_nothing(tmp_path):
    h = Harness(tmp_path)
    await h.start()
    plan, _ = await dry_then_real(h, edited(h, tmp_path))
    assert plan["changes"] is False and plan["keys"] == [] and plan["restarting"] == []


@component
async def test_a_fatal_instance_is_tried_again_by_any_reload_and_the_plan_says_so(tmp_path):
    from ultrascaled.core.seams import ProbeResult
    h = Harness(tmp_path)
    h.runner.answers[8002] = ProbeResult(None, "connection refused")
    await h.start()
    h.runner.exit(8002, 4)   # gunicorn: the app failed to load: FATAL
    await h.settle()
    assert h.states()[8002] == "fatal"
    del h.runner.answers[8002]
    plan, _ = await dry_then_real(h, edited(h, tmp_path))
    assert plan["changes"] is True and plan["keys"] == []
    assert plan["restarting"] == [{"port": 8002, "why": ["it is fatal: a reload starts it again"]}]


@pytest.mark.parametrize("edit", [("name: comp", "name: other"),
                                  ("fleet_budget_mb: 1000", "fleet_budget_mb: 500")])
def test_a_refusal_is_the_reloads_own_and_changes_nothing(tmp_path, edit):
    async def run():
        h = Harness(tmp_path)
        await h.start()
        h.sup.scale(4)   # 4 x 2 x 100 MiB: within 1000 MiB, not within 500 (the reload keeps 4)
        await h.settle()
        new = edited(h, tmp_path, edit)
        before = everything(h)
        with pytest.raises(ScaleRefused) as dry:
            h.sup.reload_dry_run(new)
        assert everything(h) == before
        with pytest.raises(ScaleRefused) as real:
            h.sup.reload_spec(new)
        assert (dry.value.code, str(dry.value)) == (real.value.code, str(real.value))
        assert everything(h) == before, "a refused reload changes nothing either"
    asyncio.run(run())


@component
async def test_a_worker_limit_below_the_smallest_measured_process_is_refused(tmp_path):
    """issue 24, class 3: a reload to a limit every process is already over (measured by the
    daemon) is refused with the figure, the dry run saying the same; the running limit stays."""
    h = Harness(tmp_path)
    await h.start()
    await h.settle()
    for p in list(h.runner.procs.values()):
        h.runner.rss[p.pid] = 90 << 20
        for w in p.workers:
            h.runner.rss[w] = 95 << 20
    await h.sample()
    low = edited(h, tmp_path, ("worker_limit_mb: 100", "worker_limit_mb: 60"))
    for attempt in (h.sup.reload_dry_run, h.sup.reload_spec):
        with pytest.raises(ScaleRefused) as refused:
            attempt(low)
        assert refused.value.code == "spec_invalid"
        assert "memory.worker_limit_mb: 60 MiB is below the smallest process this fleet runs (90 MiB" in str(refused.value)
    assert h.rec.spec.memory.worker_limit_mb == 100
    assert h.sup.reload_spec(edited(h, tmp_path, ("worker_limit_mb: 100", "worker_limit_mb: 140")))
    assert h.rec.spec.memory.worker_limit_mb == 140
