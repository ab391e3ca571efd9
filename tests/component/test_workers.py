"""The worker types' loop (supervise/workers_loop.py) with the fake runner and clock: starts,
crashes, backoff, FATAL, scaling, stops at graceful_timeout, reloads, shutdown, in milliseconds."""
from __future__ import annotations

import asyncio
import errno
import functools
import json
import signal

import pytest

from fakes import Harness
from ultrascaled.core.control import ScaleRefused
from ultrascaled.spec import parse_spec


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


WORKER = """
processes:
  worker:
    command: [python, -m, rq.cli, worker]
    count: {count}
    max: 4
    env: {{OVER: type, QUEUE: default}}
    graceful_timeout: 10
    start_seconds: 1
"""


def spec_text(tmp_path, count=2, extra=""):
    return WORKER.format(dir=tmp_path, count=count) + extra


async def up(tmp_path, count=2, extra="") -> Harness:
    h = Harness(tmp_path, spec_text(tmp_path, count, extra))
    await h.start()
    return h


def states(h: Harness) -> dict:
    return {f"{n}/{i}": s.state.value for (n, i), s in sorted(h.sup.workers.slots.items())}


def worker_events(h: Harness, name="process.state") -> list[tuple]:
    return [(e["process"], e["index"], e.get("previous"), e.get("state")) for e in h.events_named(name)]


@component
async def test_a_spec_without_processes_runs_no_worker_loop_and_shows_web_alone(tmp_path):
    h = Harness(tmp_path)
    await h.start()
    assert h.sup.workers.slots == {} and not h.sup._workers_running
    assert [c for c in h.runner.calls if c[0] == "spawn" and "--name" not in c[1]] == []
    procs = h.sup.processes()
    assert list(procs) == ["web"] and procs["web"]["kind"] == "web" and procs["web"]["ready"] == 2
    assert not (h.rec.state_dir / "processes.json").exists()


@component
async def test_workers_start_after_the_web_fleet_with_their_argv_env_folder_and_log(tmp_path):
    h = await up(tmp_path)
    spawns = [c[1] for c in h.runner.calls if c[0] == "spawn"]
    assert spawns[-2:] == [["python", "-m", "rq.cli", "worker"]] * 2
    assert all("--name" in a for a in spawns[:-2])   # the web instances came first
    p = h.runner.worker("comp/worker/1")
    assert p.env["ULTRASCALE_PROCESS"] == "comp/worker/1" and p.env["ULTRASCALE_FLEET"] == "comp"
    assert (p.env["OVER"], p.env["QUEUE"]) == ("type", "default")
    assert p.cwd == str(tmp_path) and p.log_path == str(tmp_path / "logs" / "comp-worker-1.log")
    assert states(h) == {"worker/0": "starting", "worker/1": "starting"}
    await h.advance(0.75)
    assert states(h)["worker/0"] == "starting"
    await h.advance(0.25)
    assert states(h) == {"worker/0": "running", "worker/1": "running"}
    assert ("worker", 0, "starting", "running") in worker_events(h)
    snap = h.sup.processes()["worker"]
    assert (snap["kind"], snap["desired"], snap["ready"]) == ("worker", 2, 2)
    assert [(i["index"], i["state"], i["restarts"], i["uptime"]) for i in snap["instances"]] == \
        [(0, "running", 0, 1.0), (1, "running", 0, 1.0)]
    assert snap["instances"][0]["pid"] == h.runner.worker("comp/worker/0").pid


@component
async def test_a_killed_worker_restarts_at_once_then_with_growing_backoff(tmp_path):
    h = await up(tmp_path, count=1)
    await h.advance(1.0)
    first = h.runner.worker("comp/worker/0")
    h.runner.exit_proc(first, -9)
    await h.settle()
    second = h.runner.worker("comp/worker/0")
    assert second.pid != first.pid and states(h) == {"worker/0": "starting"}
    backoff = [e for e in h.events_named("process.state") if e["state"] == "backoff"]
    assert backoff[-1]["reason"] == "killed by SIGKILL" and backoff[-1]["next_start_in"] == 0.0
    await h.advance(1.0)
    h.runner.exit_proc(second, -9)   # a second crash within fatal_window: backoff_initial
    await h.settle()
    assert states(h) == {"worker/0": "backoff"}
    await h.advance(0.5)
    assert states(h) == {"worker/0": "starting"}
    assert h.sup.workers.slots[("worker", 0)].restarts == 2
    assert h.sup.processes()["worker"]["instances"][0]["restarts"] == 2


@component
async def test_start_failures_in_a_row_make_it_fatal_and_a_scale_retries_it(tmp_path):
    h = await up(tmp_path, count=1)
    for _ in range(5):   # restart.fatal_crashes: 5, each exit before start_seconds
        while states(h)["worker/0"] == "backoff":
            await h.advance(0.25)
        assert states(h)["worker/0"] == "starting"
        h.runner.exit_proc(h.runner.worker("comp/worker/0"), 1)
        await h.settle()
    assert states(h) == {"worker/0": "fatal"}
    last = h.events_named("process.state")[-1]
    assert last["level"] == "error" and "failed to start 5 times in a row" in last["reason"]
    await h.advance(60)
    assert h.runner.workers_alive() == []
    h.sup.scale_process("worker", 1)
    await h.settle()
    assert states(h) == {"worker/0": "starting"}


@component
async def test_crashes_after_running_raise_the_crash_loop_alert_never_fatal(tmp_path):
    h = await up(tmp_path, count=1)
    for _ in range(6):
        while states(h)["worker/0"] != "running":   # backoff (0, 0.5, 1, 2, ...), then start_seconds
            await h.advance(0.25)
        await h.advance(0.5)
        h.runner.exit_proc(h.runner.worker("comp/worker/0"), -9)
        await h.settle()
    assert [a["alert"] for a in h.alerts().values()] == ["worker_crash_loop"]
    assert h.events_named("alert.firing")[-1]["process"] == "worker"
    await h.advance(70, step=1.0)
    assert states(h) == {"worker/0": "running"}   # never FATAL
    assert h.alerts() == {}   # resolved once it ran for fatal_window


@component
async def test_scale_down_stops_the_highest_index_with_sigterm_and_up_starts_it_again(tmp_path):
    h = await up(tmp_path)
    await h.advance(1)
    one = h.runner.worker("comp/worker/1")
    result = h.sup.scale_process("worker", 1)
    assert result == {"process": "worker", "desired": 1, "previous": 2}
    await h.settle()
    assert ("signal", "comp/worker/1", signal.SIGTERM) in h.runner.calls and not one.alive
    assert states(h) == {"worker/0": "running"}
    assert ("worker", 1, "running", "stopping") in worker_events(h)
    assert ("worker", 1, "stopping", "stopped") in worker_events(h)
    assert json.loads((h.rec.state_dir / "processes.json").read_text()) == {"worker": 1}
    assert h.events_named("process.scale")[-1]["desired"] == 1
    h.sup.scale_process("worker", 3)
    await h.settle()
    assert states(h) == {"worker/0": "running", "worker/1": "starting", "worker/2": "starting"}
    assert h.sup.count == 2   # the web fleet was not touched


@component
async def test_a_worker_that_ignores_its_stop_signal_is_sigkilled_at_graceful_timeout(tmp_path):
    h = await up(tmp_path)
    await h.advance(1)
    h.runner.deaf_labels.add("comp/worker/1")
    deaf = h.runner.worker("comp/worker/1")
    h.sup.scale_process("worker", 1)
    await h.settle()
    assert states(h)["worker/1"] == "stopping"
    await h.advance(9.75)
    assert deaf.alive and ("kill_group", deaf.pgid, signal.SIGKILL) not in h.runner.calls
    await h.advance(0.25)
    assert ("kill_group", deaf.pgid, signal.SIGKILL) in h.runner.calls and not deaf.alive
    assert states(h) == {"worker/0": "running"}
    assert any("SIGKILLed at graceful_timeout" in e.get("reason", "") for e in h.events_named("process.state"))
    assert h.events_named("process.killed")[-1]["reason"] == "still running at its graceful_timeout"


@pytest.mark.parametrize("name, n, code", [("worker", 5, "out_of_range"), ("worker", -1, "out_of_range"),
                                           ("nope", 1, "not_found")])
@component
async def test_a_scale_out_of_range_or_of_an_unknown_type_is_refused(tmp_path, name, n, code):
    h = await up(tmp_path)
    with pytest.raises(ScaleRefused) as exc:
        h.sup.scale_process(name, n)
    assert exc.value.code == code and name in str(exc.value)
    assert h.sup.workers.desired == {"worker": 2}


@component
async def test_web_scale_through_the_processes_route_is_the_fleets_scale(tmp_path):
    h = await up(tmp_path)
    out = h.sup.scale_process("web", 3)
    assert out["process"] == "web" and out["desired"] == 3 and out["previous"] == 2
    await h.settle()
    assert h.sup.count == 3 and len(h.states()) == 3 and len(h.sup.workers.slots) == 2


@component
async def test_a_scaled_count_survives_a_restart_of_the_daemon(tmp_path):
    h = await up(tmp_path)
    h.sup.scale_process("worker", 3)
    again = Harness(tmp_path, spec_text(tmp_path))
    again.sup.workers.load()
    assert again.sup.workers.desired == {"worker": 3}


@component
async def test_shutdown_stops_every_worker_and_the_deaf_one_at_graceful_timeout(tmp_path):
    h = await up(tmp_path)
    await h.advance(1)
    h.runner.deaf_labels.add("comp/worker/0")
    deaf = h.runner.worker("comp/worker/0")
    stop = asyncio.get_running_loop().create_task(h.sup.workers.stop_all())
    await asyncio.sleep(0.01)
    assert h.runner.workers_alive() == ["comp/worker/0"]
    assert ("signal", "comp/worker/1", signal.SIGTERM) in h.runner.calls
    h.clock.t += 10
    await asyncio.wait_for(stop, 5)
    assert h.runner.workers_alive() == [] and ("kill_group", deaf.pgid, signal.SIGKILL) in h.runner.calls
    assert states(h) == {}   # stopped, then forgotten: nothing of them is wanted


@component
async def test_supervisor_shutdown_stops_the_workers_with_the_web_fleet(tmp_path):
    h = await up(tmp_path)
    await h.advance(1)
    stop = asyncio.get_running_loop().create_task(h.sup.shutdown(timeout=5))
    while not stop.done():   # the harness steps the reconciler the daemon's loop would run
        await h.advance(0.25)
        await asyncio.sleep(0.01)
    await stop
    assert h.runner.workers_alive() == [] and h.rec.instances == {}
    assert not h.events_named("daemon.stop_timeout") and not h.events_named("processes.stop_timeout")
    assert h.events_named("daemon.stopped")


@component
async def test_a_program_that_cannot_be_started_backs_off_and_goes_fatal(tmp_path):
    h = Harness(tmp_path, spec_text(tmp_path, count=1))
    await h.start()
    h.sup.workers.step()
    h.runner.spawn_error = FileNotFoundError(errno.ENOENT, "No such file or directory", "python")
    h.runner.exit_proc(h.runner.worker("comp/worker/0"), 1)
    await h.settle()
    for _ in range(6):
        await h.advance(30, step=1.0)
    assert states(h) == {"worker/0": "fatal"}
    failed = h.events_named("process.spawn_failed")
    assert failed and failed[0]["error"] == "No such file or directory: 'python'"


@component
async def test_a_reload_starts_added_types_stops_removed_ones_and_restarts_a_changed_command(tmp_path):
    h = await up(tmp_path, count=1)
    await h.advance(1)
    old = h.runner.worker("comp/worker/0")
    text = h.spec.source
    new = parse_spec(
        __import__("fakes").SPEC.format(dir=tmp_path, extra=WORKER.format(dir=tmp_path, count=1).replace(
            "worker]", "worker, --burst]") + "  mailer:\n    command: [python, mail.py]\n    max: 2\n"),
        base_dir=tmp_path)
    web_spawns = sum(1 for c in h.runner.calls if c[0] == "spawn" and "--name" in c[1])
    result = h.sup.reload_spec(new)
    # the mailer's processes hold MongoDB pools too: the pool each process gets shrinks, and the
    # web instances restart (one at a time, replaced in place) to take it
    assert new.mongo_pool_per_process() < h.spec.mongo_pool_per_process()
    assert result["changed"] == ["processes"] and result["restarting"] == [8001, 8002]
    await h.advance(5)
    assert sum(1 for c in h.runner.calls if c[0] == "spawn" and "--name" in c[1]) == web_spawns + 2
    assert not old.alive and h.runner.worker("comp/worker/0").argv[-1] == "--burst"
    assert "comp/mailer/0" in h.runner.workers_alive()
    assert h.states() == {8001: "running", 8002: "running"}
    gone = parse_spec(__import__("fakes").SPEC.format(dir=tmp_path, extra=""), base_dir=tmp_path)
    h.sup.reload_spec(gone)
    await h.settle()
    assert h.runner.workers_alive() == [] and h.sup.processes().keys() == {"web"}
    del text


@component
async def test_a_detaching_stop_leaves_the_workers_running_for_the_next_daemon_to_adopt(tmp_path):
    h = await up(tmp_path)
    await h.advance(1)
    before = {i["index"]: i["pid"] for i in h.sup.processes()["worker"]["instances"]}
    await asyncio.wait_for(h.sup.detach(), 5)
    assert h.runner.workers_alive() == ["comp/worker/0", "comp/worker/1"]
    assert not [c for c in h.runner.calls if c[0] == "signal" and isinstance(c[1], str)], "no worker signalled"
    assert all(p.alive for p in h.runner.procs.values() if not p.label)   # the web masters serve on
    again = h.restarted()
    await again.start()
    assert {i["index"]: i["pid"] for i in again.sup.processes()["worker"]["instances"]} == before
    assert len(again.events_named("process.adopted")) == 2


@component
async def test_a_type_a_reload_removes_stops_with_its_own_graceful_timeout_and_shows_while_stopping(tmp_path):
    h = await up(tmp_path, count=1)
    await h.advance(1)
    h.runner.deaf_labels.add("comp/worker/0")
    deaf = h.runner.worker("comp/worker/0")
    h.sup.reload_spec(parse_spec(__import__("fakes").SPEC.format(dir=tmp_path, extra=""), base_dir=tmp_path))
    await h.settle()
    snap = h.sup.processes()["worker"]
    assert (snap["desired"], snap["instances"][0]["state"]) == (0, "stopping")
    await h.advance(9.75)
    assert deaf.alive   # graceful_timeout 10 (the removed type's), not the default 30
    await h.advance(0.25)
    assert not deaf.alive and list(h.sup.processes()) == ["web"]


@component
async def test_a_scale_during_shutdown_is_refused(tmp_path):
    h = await up(tmp_path)
    h.sup.workers.begin_shutdown()
    with pytest.raises(ScaleRefused) as exc:
        h.sup.scale_process("worker", 1)
    assert exc.value.code == "shutting_down"


@component
async def test_a_deploy_rolls_the_workers_to_the_new_release_one_at_a_time(tmp_path):
    """issue 22's deploy order, third step: once the web fleet is on the new release, each worker
    type moves to it one process at a time with its graceful stop (before, a worker kept the old
    release's folder until it next crashed, and a deploy could prune that folder under it)."""
    from test_deploy import drive, new_release
    from ultrascaled.effects import releases
    h = await up(tmp_path, extra="deploy: {soak_seconds: 1, min_requests: 10}\n")
    await h.advance(1)
    rid = new_release(h, tmp_path, "v2")
    await h.sup.deploy(release=rid)
    await drive(h, 20, until=lambda: h.sup.deployer.rollout is None)
    assert h.sup.deployer.state.current == rid
    folder = str(releases.releases_dir(h.spec) / rid)
    for _ in range(40):
        await h.advance(0.25)
        if all(h.runner.worker(f"comp/worker/{i}").cwd == folder for i in (0, 1)) and \
                set(states(h).values()) == {"running"}:
            break
    assert [h.runner.worker(f"comp/worker/{i}").cwd for i in (0, 1)] == [folder, folder]
    stops = [e for e in h.events_named("process.state") if e.get("state") == "stopping"]
    assert len(stops) == 2 and all("folder changed" in e["reason"] for e in stops)
    slots = h.sup.workers.slots
    assert abs(slots[("worker", 1)].started_at - slots[("worker", 0)].started_at) >= 1.0, "one at a time"


@component
async def test_a_release_a_worker_still_runs_in_is_not_pruned(tmp_path):
    from test_deploy import drive, new_release
    from ultrascaled.effects import releases
    h = await up(tmp_path, extra="deploy: {soak_seconds: 1, min_requests: 10, keep_releases: 2}\n")
    await h.advance(1)
    rids = []
    for n in (2, 3, 4):
        rids.append(new_release(h, tmp_path, f"v{n}"))
        if n == 2:   # a worker still on the first release (e.g. a long job in its graceful stop)
            held = str(releases.releases_dir(h.spec) / rids[0])
            h.sup.workers.folders_in_use = lambda: {held}
        await h.sup.deploy(release=rids[-1])
        await drive(h, 20, until=lambda: h.sup.deployer.rollout is None)
    assert h.sup.deployer.state.current == rids[2]
    assert (releases.releases_dir(h.spec) / rids[0]).is_dir(), "kept: a worker runs in it"
    pruned = [r for e in h.events_named("release.pruned") for r in e["releases"]]
    assert rids[0] not in pruned and pruned, pruned   # others beyond keep_releases still go


# ---- adoption across a daemon restart (a daemon SIGKILLed leaves its workers running) -----------

def worker_spawns(h: Harness) -> int:
    return sum(1 for c in h.runner.calls if c[0] == "spawn" and "--name" not in c[1])


def live_record(h: Harness) -> dict:
    body = json.loads((h.rec.state_dir / "processes-live.json").read_text())
    return {f"{r['name']}/{r['index']}": r["pid"] for r in body["processes"]}


def pids(h: Harness, name="worker") -> dict:
    return {i["index"]: i["pid"] for i in h.sup.processes()[name]["instances"]}


@component
async def test_the_next_daemon_adopts_a_killed_daemons_workers_without_a_second_spawn(tmp_path):
    """The defect: a SIGKILLed daemon's workers ran on in their sessions and the next daemon
    started `count` new ones beside them (two sets of Celery/RQ workers, the old never stopped)."""
    h = await up(tmp_path)
    await h.advance(6)
    before = pids(h)
    assert live_record(h) == {"worker/0": before[0], "worker/1": before[1]}
    assert "QUEUE" not in (h.rec.state_dir / "processes-live.json").read_text(), "env values stay off disk"
    spawned = worker_spawns(h)
    again = h.restarted()          # the first daemon is SIGKILLed: nothing of it acts any more
    await again.start()
    assert worker_spawns(again) == spawned, "no second set"
    assert pids(again) == before and states(again) == {"worker/0": "running", "worker/1": "running"}
    assert sorted(h.runner.workers_alive()) == ["comp/worker/0", "comp/worker/1"]
    adopted = again.events_named("process.adopted")
    assert [(e["index"], e["pid"], e["uptime"]) for e in adopted] == [(0, before[0], 6.0), (1, before[1], 6.0)]
    assert [i["uptime"] for i in again.sup.processes()["worker"]["instances"]] == [6.0, 6.0]
    await again.advance(1)
    assert worker_spawns(again) == spawned and live_record(again) == {"worker/0": before[0], "worker/1": before[1]}

    # an adopted process that dies is restarted like one of ours (its exit status unknown)
    h.runner.exit_proc(h.runner.worker("comp/worker/1"), None)
    await again.settle()
    assert pids(again)[1] != before[1] and worker_spawns(again) == spawned + 1
    assert any(e["index"] == 1 and e.get("state") == "backoff" and "status unknown" in e["reason"]
               for e in again.events_named("process.state"))

    # and the daemon's stop stops the adopted one with its stop signal, as its own
    await asyncio.wait_for(again.sup.workers.stop_all(), 5)
    assert h.runner.workers_alive() == [] and ("signal", "comp/worker/0", signal.SIGTERM) in again.runner.calls
    assert live_record(again) == {}


@component
async def test_a_recorded_pid_that_another_process_took_over_or_that_is_gone_is_not_adopted(tmp_path):
    h = await up(tmp_path)
    await h.advance(2)
    before = pids(h)
    stranger = h.runner.procs[before[0]]
    h.runner.start_times[before[0]] += 40          # worker 0 died; its pid is another program's now
    h.runner.procs[before[1]].alive = False        # worker 1 died while no daemon watched
    spawned = worker_spawns(h)
    again = h.restarted()
    await again.start()
    assert again.events_named("process.adopted") == []
    why = {e["index"]: e["reason"] for e in again.events_named("process.not_adopted")}
    assert why[0].startswith(f"pid {before[0]} now belongs to another process") and why[1].startswith("gone")
    assert worker_spawns(again) == spawned + 2
    now = pids(again)
    assert set(now) == {0, 1} and not set(now.values()) & set(before.values())
    assert states(again) == {"worker/0": "starting", "worker/1": "starting"}
    await asyncio.wait_for(again.sup.workers.stop_all(), 5)
    assert stranger.alive, "a process that merely has our old pid is never signalled"
    assert not [c for c in again.runner.calls if c[0] in ("kill_group", "signal_worker") and c[1] == stranger.pid]


@component
async def test_adopted_workers_follow_the_new_spec_removed_type_stopped_extra_index_stopped_changed_rolled(tmp_path):
    mailer = "  mailer:\n    command: [python, mail.py]\n    max: 2\n    stop_signal: INT\n    graceful_timeout: 3\n"
    h = await up(tmp_path, extra=mailer)
    await h.advance(2)
    old = {**{f"worker/{i}": p for i, p in pids(h).items()}, "mailer/0": pids(h, "mailer")[0]}
    h.runner.deaf_labels.add("comp/mailer/0")
    new_spec = spec_text(tmp_path, count=1).replace("worker]", "worker, --burst]")
    again = h.restarted(extra=new_spec)
    await again.start()
    assert {e["pid"] for e in again.events_named("process.adopted")} == set(old.values())
    calls = again.runner.calls
    assert ("signal", "comp/mailer/0", signal.SIGINT) in calls, "the removed type's own stop signal"
    assert ("signal", "comp/worker/1", signal.SIGTERM) in calls, "beyond the count: scaled down"
    assert not h.runner.procs[old["worker/1"]].alive
    assert not h.runner.procs[old["worker/0"]].alive, "started with the old command: rolled"
    assert h.runner.worker("comp/worker/0").argv[-1] == "--burst"
    stops = {(e["process"], e["index"]): e["reason"] for e in again.events_named("process.state")
             if e.get("state") == "stopping"}
    assert stops[("worker", 1)] == "scaled down" and "command" in stops[("worker", 0)]
    snap = again.sup.processes()
    assert snap["mailer"]["instances"][0]["state"] == "stopping"
    await again.advance(2.75)
    assert h.runner.procs[old["mailer/0"]].alive
    await again.advance(0.25)   # its recorded graceful_timeout (3 s), not the default 30
    assert not h.runner.procs[old["mailer/0"]].alive and list(again.sup.processes()) == ["web", "worker"]
    assert live_record(again) == {"worker/0": h.runner.worker("comp/worker/0").pid}


@component
async def test_an_unreadable_record_of_live_processes_is_said_and_the_workers_start_afresh(tmp_path):
    h = await up(tmp_path, count=1)
    await h.advance(1)
    (h.rec.state_dir / "processes-live.json").write_text("{not json")
    spawned = worker_spawns(h)
    again = h.restarted()
    await again.start()
    ignored = [e for e in again.events_named("state.ignored") if e["path"].endswith("processes-live.json")]
    assert ignored and ignored[0]["level"] == "warning" and "unreadable" in ignored[0]["reason"]
    assert worker_spawns(again) == spawned + 1 and states(again) == {"worker/0": "starting"}
    assert again.events_named("process.adopted") == []
    assert live_record(again) == {"worker/0": pids(again)[0]}   # written anew


@component
async def test_a_spec_without_processes_still_stops_the_workers_a_killed_daemon_left(tmp_path):
    h = await up(tmp_path, count=1)
    await h.advance(1)
    left = h.runner.worker("comp/worker/0")
    again = h.restarted(extra="")
    await again.start()
    assert not left.alive and again.sup.processes().keys() == {"web"}


@component
async def test_restart_of_a_type_rolls_its_processes_one_at_a_time_and_leaves_the_others(tmp_path):
    h = await up(tmp_path, extra="  other:\n    command: [sleep, '1000']\n    count: 1\n    max: 2\n")
    await h.advance(1.0)
    before = {k: h.runner.worker(f"comp/{k[0]}/{k[1]}").pid for k in h.sup.workers.slots}
    with pytest.raises(ScaleRefused) as exc:
        h.sup.restart_process("nope")
    assert exc.value.code == "not_found"
    assert h.sup.restart_process("worker") == {"process": "worker", "restarting": [0, 1]}
    await h.settle()
    assert h.runner.worker("comp/worker/0").pid != before[("worker", 0)] and states(h)["worker/0"] == "starting"
    assert h.runner.worker("comp/worker/1").pid == before[("worker", 1)]   # the second waits for the first
    for _ in range(8):
        await h.advance(0.5)
    after = {k: h.runner.worker(f"comp/{k[0]}/{k[1]}").pid for k in h.sup.workers.slots}
    assert after[("worker", 0)] != before[("worker", 0)] and after[("worker", 1)] != before[("worker", 1)]
    assert after[("other", 0)] == before[("other", 0)]
    assert states(h) == {"other/0": "running", "worker/0": "running", "worker/1": "running"}
    reasons = [e.get("reason") for e in h.events_named("process.state") if e["state"] == "stopping"]
    assert reasons == ["restart requested"] * 2
    await h.advance(5.0)
    assert {k: h.runner.worker(f"comp/{k[0]}/{k[1]}").pid for k in h.sup.workers.slots} == after   # once
