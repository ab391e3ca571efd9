"""Warm spares (instances.spares, docs/spares.md) with the fake runner and clock: a spare boots
ahead on a port past the range, is probed ready, is never published nor counted, and takes a
serving port's socket at once when its master crashes, fails its health checks, is replaced for
memory, or when the fleet scales up; a new spare then boots behind it."""
from __future__ import annotations

import asyncio
import functools
import signal

import pytest

import fakes
from fakes import Harness
from ultrascaled.core.seams import ProbeResult, ProcMem
from ultrascaled.spec import SpecError, parse_spec

SPARE = 8007          # base_port 8001 + max 6: the first spare's port, past the range nginx lists


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, monkeypatch, *a, **kw):
        return asyncio.run(fn(tmp_path, monkeypatch, *a, **kw))
    return wrapper


async def up(tmp_path, monkeypatch, spares: int = 1, count: int = 2, extra: str = "", **kw) -> Harness:
    monkeypatch.setattr(fakes, "SPEC", fakes.SPEC.replace(
        "{{count: 2, min: 0, max: 6, base_port: 8001}}",
        f"{{{{count: {count}, min: 0, max: 6, base_port: 8001, spares: {spares}}}}}").replace(
        "fleet_budget_mb: 1000", "fleet_budget_mb: 2000"))
    h = Harness(tmp_path, extra, **kw)
    await h.start()
    await h.advance(0.1, step=0.02)   # the spares' readiness probes
    assert all(s.ready for s in h.rec.spares.values()) and len(h.rec.spares) == spares
    return h


def master(h: Harness, pid: int):
    return h.runner.procs[pid]


def spare_pid(h: Harness, port: int = SPARE) -> int:
    return h.rec.spares[port].pid


def failing(h: Harness) -> bool:
    return any(a["alert"] == "spare_failing" for a in h.alerts().values())


def takeovers(h: Harness) -> list[tuple]:
    return [(e["port"], e["spare_port"], e["reason"].split(":")[0]) for e in h.events_named("instance.takeover")]


@component
async def test_spares_boot_past_the_range_gated_never_published_and_not_counted(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch, spares=2)
    assert sorted(h.rec.spares) == [8007, 8008]
    assert h.states() == {8001: "running", 8002: "running"}
    assert all(not set(a) & {8007, 8008} for a in h.upstream.applied), "nginx never lists a spare"
    spawn = next(c[1] for c in h.runner.calls if c[0] == "spawn" and c[1][c[1].index("--name") + 1].endswith("-8007"))
    assert spawn[spawn.index("--worker-class") + 1] == "ultrascale_spare.SyncWorker"
    assert not h.rec.spare_listeners[8007].gate_open, "a spare's own socket keeps its gate closed"
    fleet = h.sup.snapshot()
    assert fleet["ready"] == 2 and [s["port"] for s in fleet["spares"]] == [8007, 8008]
    assert all(s["ready"] and s["state"] == "ready" for s in fleet["spares"])
    assert {i["port"] for i in fleet["instances"]} == {8001, 8002}


@component
async def test_a_crashed_master_is_taken_over_by_the_spare_at_once_and_a_new_spare_follows(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch)
    spare = spare_pid(h)
    publishes = len(h.upstream.applied)
    h.runner.exit(8001, -9)
    await h.settle()
    inst = h.rec.instances[8001]
    assert inst.pid == spare and inst.state.value == "running"
    assert ("hand_over", 8001, 4) in h.runner.calls, "the port's held socket, to the master and each worker"
    assert takeovers(h) == [(8001, SPARE, "crash")]
    e = h.events_named("instance.takeover")[0]
    assert e["seconds"] == 0 and e["old_pid"] is None
    assert len(h.upstream.applied) == publishes, "no upstream change: no nginx reload"
    assert h.rec.gates.get(8001) is not False
    new = h.rec.spares[SPARE]
    assert new.pid not in (None, spare), "a new spare boots behind it"
    assert h.events_named("spare.starting")[-1]["reason"] == "behind the spare that took over 8001"
    await h.advance(0.1, step=0.02)
    assert h.rec.spares[SPARE].ready
    # the taken-over master is the port's instance now: its exit is the port's
    h.runner.exit_proc(master(h, spare), -9)
    await h.settle()
    assert [t[0] for t in takeovers(h)] == [8001, 8001]


@component
async def test_failed_health_checks_hand_the_port_to_the_spare_and_the_old_master_retires(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch)
    spare, old = spare_pid(h), h.rec.instances[8002].pid
    h.runner.answers[8002] = ProbeResult(503, "HTTP 503")
    await h.advance(35, step=5)
    inst = h.rec.instances[8002]
    assert inst.pid == spare and inst.state.value == "running"
    assert takeovers(h) == [(8002, SPARE, "health check failed 3 times in a row (last")]
    assert ("signal", 8002, signal.SIGTERM) in h.runner.calls and not master(h, old).alive
    assert not h.events_named("instance.replacing"), "no replacement booted beside it"


@component
async def test_a_master_over_its_memory_limit_is_replaced_by_the_spare(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch)
    spare, old = spare_pid(h), h.rec.instances[8001].pid
    h.runner.rss[old] = 300 << 20          # over memory.worker_limit_mb (100), samples_over 2
    await h.sample()
    await h.sample()
    await h.settle()
    assert h.rec.instances[8001].pid == spare
    assert takeovers(h) == [(8001, SPARE, "memory")]
    assert not master(h, old).alive and not h.events_named("instance.replacing")


@component
async def test_a_scale_up_takes_the_spares_first_then_boots_new_spares(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch, spares=2)
    pids = {spare_pid(h, 8007), spare_pid(h, 8008)}
    h.sup.scale(4)
    await h.settle()
    assert {h.rec.instances[p].pid for p in (8003, 8004)} == pids
    assert sorted(t[:2] for t in takeovers(h)) == [(8003, 8007), (8004, 8008)]
    await h.advance(0.05, step=0.02)      # one probe on the private socket each, then published
    assert h.states() == {p: "running" for p in (8001, 8002, 8003, 8004)}
    assert {8003, 8004} <= h.rec.applied
    assert all(s.pid not in pids and s.pid is not None for s in h.rec.spares.values())


@component
async def test_a_spare_that_dies_while_waiting_is_booted_again_and_never_taken(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch)
    dead = spare_pid(h)
    h.runner.answers[SPARE] = ProbeResult(None, "connection refused")   # the next one boots slowly
    h.runner.exit_proc(master(h, dead), -9)
    await h.settle()
    ex = h.events_named("spare.exited")
    assert ex and ex[-1]["reason"].startswith("died while waiting")
    s = h.rec.spares[SPARE]
    assert s.pid not in (None, dead) and s.state == "starting"
    h.runner.exit(8001, -9)               # no ready spare now: the usual restart
    await h.settle()
    assert not takeovers(h)
    assert h.rec.instances[8001].pid != dead


@component
async def test_two_failures_at_once_with_one_spare_one_takes_over_the_other_restarts(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch)
    spare = spare_pid(h)
    a, b = h.rec.instances[8001].pid, h.rec.instances[8002].pid
    h.runner.exit(8001, -9)
    h.runner.exit(8002, -9)
    await h.settle()
    assert takeovers(h) == [(8001, SPARE, "crash")]
    assert h.rec.instances[8001].pid == spare
    assert h.rec.instances[8002].pid not in (a, b, spare), "the other boots as without spares"
    assert h.events_named("instance.state")[-1]["reason"] != "scale up"
    await h.advance(0.2, step=0.02)
    assert h.states() == {8001: "running", 8002: "running"} and h.rec.spares[SPARE].ready


@component
async def test_a_deploy_replaces_a_spare_of_the_old_release_before_any_instance_moves(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch)
    from ultrascaled.core.reconciler.records import Releases, Restart
    old_spare = spare_pid(h)
    assert h.rec.spares[SPARE].release is None
    (tmp_path / "releases" / "r2").mkdir(parents=True)
    monkeypatch.setattr("ultrascaled.core.release_layout.directory_of",
                        lambda spec, rel: str(tmp_path / "releases" / rel) if rel else spec.app.directory)
    h.runner.answers[SPARE] = ProbeResult(None, "connection refused")   # the new release's spare boots
    h.rec.tell(Releases(None, "r2"))
    h.rec.tell(Restart((8001, 8002)))
    await h.settle()
    assert not master(h, old_spare).alive, "the old release's spare goes first"
    assert h.rec.spares[SPARE].release == "r2" and h.rec.spares[SPARE].state == "starting"
    assert not h.events_named("instance.replacing") and not takeovers(h), "nothing else moved yet"
    assert all(h.rec.instances[p].release is None for p in (8001, 8002))
    await h.advance(2, step=0.25)
    assert not h.events_named("instance.replacing") and not takeovers(h), "restarts wait for the fresh spare"
    del h.runner.answers[SPARE]
    for _ in range(40):
        await h.advance(0.05, step=0.05)
        if all(h.rec.instances[p].release == "r2" and not h.rec.instances[p].restart_requested
               for p in (8001, 8002)):
            break
    assert all(h.rec.instances[p].release == "r2" for p in (8001, 8002))
    assert takeovers(h), "the fresh spare took the first restart"
    assert all(e["release"] == "r2" for e in h.events_named("instance.takeover"))


def test_spares_count_in_the_memory_budget_and_need_room_past_the_range(tmp_path):
    base = ("name: b\napp: {{directory: {d}}}\nnginx: {{mode: 'off'}}\n"
            "paths: {{state_dir: {d}/s, log_dir: {d}/l}}\n"
            "gunicorn: {{workers: 2}}\nmemory: {{worker_limit_mb: 100, fleet_budget_mb: 900}}\n"
            "instances: {{count: 3, max: 4, base_port: {port}, spares: {k}}}\n")
    parse_spec(base.format(d=tmp_path, port=8001, k=0), base_dir=tmp_path)   # 3 x 3 x 100 = 900: fits
    with pytest.raises(SpecError) as e:
        parse_spec(base.format(d=tmp_path, port=8001, k=1), base_dir=tmp_path)
    assert "3 instances + 1 spare x (2 workers + 1 master) x 100 MiB = 1200 MiB" in str(e.value)
    with pytest.raises(SpecError) as e:
        parse_spec(base.format(d=tmp_path, port=65532, k=1).replace("900", "2000"), base_dir=tmp_path)
    assert "instances.spares" in str(e.value) and "past 65535" in str(e.value)
    with pytest.raises(SpecError) as e:
        parse_spec(base.format(d=tmp_path, port=8001, k=1).replace("900", "2000").replace(
            "workers: 2", "workers: 2, worker_class: gevent"), base_dir=tmp_path)
    assert "spares need gunicorn.worker_class sync or gthread" in str(e.value)


@component
async def test_spares_zero_spawns_and_acts_exactly_as_before(tmp_path, monkeypatch):
    h = Harness(tmp_path)
    await h.start()
    h.runner.exit(8001, -9)
    await h.settle()
    assert not h.rec.spares and not h.rec.spare_listeners and not takeovers(h)
    assert not any(c[0] == "hand_over" for c in h.runner.calls)
    assert h.sup.snapshot()["spares"] == []
    spawns = [c[1] for c in h.runner.calls if c[0] == "spawn"]
    assert all(a[a.index("--worker-class") + 1] == "sync" for a in spawns)


def test_the_plan_shows_the_memory_cost_of_the_spares(tmp_path):
    from ultrascaled.core.capacity import plan_for, render
    text = ("name: p\napp: {{directory: {d}}}\nnginx: {{mode: 'off'}}\npaths: {{state_dir: {d}/s, log_dir: {d}/l}}\n"
            "gunicorn: {{workers: 2}}\nmemory: {{worker_limit_mb: 100, fleet_budget_mb: 4000}}\n"
            "instances: {{count: 2, max: 4, spares: {k}}}\n")
    plans = [plan_for(parse_spec(text.format(d=tmp_path, k=k), base_dir=tmp_path), 10, cpu_count=2,
                      mem_total_bytes=8 << 30, nofile_limit=65536) for k in (0, 2)]
    none, two = plans
    assert none.spares == 0 and "spares" not in render(none)
    assert two.spares == 2 and two.spares_memory_worst_mib == 2 * 3 * 100
    assert two.memory_worst_mib == none.memory_worst_mib + 600
    assert two.memory_expected_mib == pytest.approx(none.memory_expected_mib + two.spares_memory_mib, abs=0.2)
    assert "memory of the spares" in render(two)


@component
async def test_an_autoscaling_step_up_served_from_spares_is_immediate(tmp_path, monkeypatch):
    from test_autoscaler import AUTO, no_app_metrics, run_for
    h = await up(tmp_path, monkeypatch, spares=2, extra=AUTO,
                 autoscale=dict(host_cpu=lambda: 10.0, app_families=no_app_metrics, cores=lambda: 2))
    pids = {spare_pid(h, 8007), spare_pid(h, 8008)}
    await run_for(h, h.sup.autoscaler, 8, load=280)     # twice the CPU target: 2 -> 4
    up_ = h.events_named("autoscale.scale_up")[0]
    assert (up_["current"], up_["desired"], up_["from_spares"], up_["immediate"]) == (2, 4, 2, True)
    assert {h.rec.instances[p].pid for p in (8003, 8004)} == pids
    assert sorted(t[:2] for t in takeovers(h)) == [(8003, 8007), (8004, 8008)]


def test_status_lists_the_spares_apart_from_the_instances_and_nothing_without_them():
    from ultrascaled.surface.cli import render_status
    fleet = {"fleet": "f", "ready": 1, "desired": 1, "memory": {}, "instances": [
        {"port": 8001, "pid": 10, "state": "running", "uptime": 5, "workers": [], "restarts": 1,
         "in_upstream": True, "last_exit": None, "release": None}]}
    plain = render_status(fleet)
    assert "SPARE" not in plain and render_status(dict(fleet, spares=[])) == plain
    text = render_status(dict(fleet, spares=[{"port": 8007, "pid": 20, "state": "ready", "ready": True,
                                              "release": None, "reason": "took over 8001"},
                                             {"port": 8008, "pid": 21, "state": "starting", "ready": False}]))
    lines = text.splitlines()
    assert lines[:len(plain.splitlines())] == plain.splitlines()
    assert "spares: 1/2 ready" in text
    assert any(ln.startswith("8007") and "ready" in ln and "yes" in ln for ln in lines)
    assert any(ln.startswith("8008") and "starting" in ln and "no" in ln for ln in lines)


@component
async def test_a_spare_whose_channel_refuses_the_socket_is_ended_and_the_port_restarts_as_usual(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch)
    dead = spare_pid(h)

    def refused(chan, sock, copies):
        raise ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(h.runner, "hand_over", refused)
    h.runner.exit(8001, -9)
    await h.settle()
    assert not takeovers(h) and not master(h, dead).alive
    assert h.events_named("spare.killed")[-1]["reason"].startswith("could not be handed port 8001")
    assert h.rec.instances[8001].pid not in (None, dead)
    assert not h.events_named("reconciler.error")


@component
async def test_a_reload_sets_the_spares_and_a_command_change_replaces_them_before_the_instances(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch, spares=1)
    text = fakes.SPEC.format(dir=tmp_path, extra="")
    two = parse_spec(text.replace("spares: 1", "spares: 2"), base_dir=tmp_path)
    h.sup.reload_spec(two)     # (the MongoDB pool per process counts the spares: the instances restart)
    await h.advance(0.5, step=0.02)
    assert sorted(h.rec.spares) == [8007, 8008] and all(s.ready for s in h.rec.spares.values())
    before = len(takeovers(h))
    old = {p: s.pid for p, s in h.rec.spares.items()}
    served = {p: i.pid for p, i in h.rec.instances.items()}
    # a gunicorn change: every instance restarts, the spares are booted again with it first
    changed = parse_spec(text.replace("spares: 1", "spares: 2").replace("graceful_timeout: 5", "graceful_timeout: 6"),
                         base_dir=tmp_path)
    for p in old:
        h.runner.answers[p] = ProbeResult(None, "connection refused")   # the fresh spares boot
    result = h.sup.reload_spec(changed)
    assert result["restarting"] == [8001, 8002]
    await h.advance(1.0, step=0.1)
    assert all(not master(h, pid).alive for pid in old.values()), "the stale spares go first"
    assert len(takeovers(h)) == before and not h.events_named("instance.replacing")
    assert all(h.rec.instances[p].pid == served[p] for p in served), "nothing else moved"
    for p in old:
        del h.runner.answers[p]
    await h.advance(1.0, step=0.05)
    assert {p: i.pid for p, i in h.rec.instances.items()}.keys() == served.keys()
    assert all(h.rec.instances[p].pid != served[p] for p in served)
    assert [t[0] for t in takeovers(h)[before:]] == [8001, 8002], "each restart took a fresh spare"
    assert all("--graceful-timeout" in master(h, h.rec.instances[p].pid).argv and
               master(h, h.rec.instances[p].pid).argv[master(h, h.rec.instances[p].pid).argv.index("--graceful-timeout") + 1] == "6"
               for p in served)
    none = parse_spec(text.replace("spares: 1", "spares: 0").replace("graceful_timeout: 5", "graceful_timeout: 6"),
                      base_dir=tmp_path)
    h.sup.reload_spec(none)
    await h.advance(0.2, step=0.05)
    assert not h.rec.spares and not h.rec.spare_listeners
    assert h.sup.snapshot()["spares"] == []


@component
async def test_a_slot_whose_spares_keep_failing_raises_an_alert_resolved_once_one_is_ready(tmp_path, monkeypatch):
    h = await up(tmp_path, monkeypatch)
    h.runner.exit_on_spawn[SPARE] = 1
    h.runner.exit_proc(master(h, spare_pid(h)), -9)
    await h.advance(40, step=0.5)
    assert h.rec.spares[SPARE].failures >= 5 and failing(h)
    del h.runner.exit_on_spawn[SPARE]
    await h.advance(35, step=0.5)
    assert h.rec.spares[SPARE].ready and failing(h), "not before it stays up a window"
    await h.advance(70, step=1)
    assert h.rec.spares[SPARE].ready and not failing(h)
    assert h.states() == {8001: "running", 8002: "running"}, "the instances never noticed"
