"""Deploys with the fake runner and clock (ultrascaled/supervise/rollout_loop.py over rollout.py's decisions):
each instance starts on its release's own folder, the canary is judged on figures from a fake
traffic source, a bad canary rolls the fleet back by itself with an event and an alert naming
the figure, and a rollout survives a daemon restart. Real gunicorn + nginx: tests/deploy."""
from __future__ import annotations

import asyncio
import functools
import json

import pytest

from fakes import Harness
from ultrascaled.effects import releases
from ultrascaled.core.control import ScaleRefused
from ultrascaled.core.seams import ProbeResult
from ultrascaled.core.traffic import TrafficWindow

SOAK = "deploy: {soak_seconds: 5, min_requests: 10}"


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


W = TrafficWindow   # (requests, errors_5xx, p95)


class FakeTraffic:
    """TrafficSource: per-port windows set by the test; records what was asked."""
    def __init__(self, by_port: dict[int, W]):
        self.by_port = by_port
        self.asked: list[tuple] = []

    def window(self, port, seconds):
        self.asked.append((port, seconds))
        return self.by_port.get(port, W(0, 0, None))


async def up(tmp_path, extra=SOAK, traffic=None) -> Harness:
    h = Harness(tmp_path, extra, traffic=traffic)
    await h.start()
    assert h.states() == {8001: "running", 8002: "running"}
    return h


def new_release(h: Harness, tmp_path, name: str) -> str:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "wsgi.py").write_text(f"VERSION = {name!r}\n")
    return releases.create(h.spec, str(src))


def chdir_of(h: Harness, port: int) -> str:
    argv = h.runner.master(port).argv
    return argv[argv.index("--chdir") + 1]


async def drive(h: Harness, seconds: float, until=lambda: False, step: float = 0.25) -> None:
    """Let the clock run with the deploy loop looking at the fleet each step."""
    end = h.clock.t + seconds
    while h.clock.t < end and not until():
        h.sup.deployer.tick()
        await h.advance(step, step=step)
    h.sup.deployer.tick()


@component
async def test_a_good_deploy_canary_first_then_one_at_a_time_on_the_release_folder(tmp_path):
    h = await up(tmp_path, traffic=FakeTraffic({8001: W(100, 0, 0.02), 8002: W(100, 0, 0.02)}))
    rid = new_release(h, tmp_path, "v2")
    await h.sup.deploy(release=rid)
    folder = str(releases.releases_dir(h.spec) / rid)
    await drive(h, 2)
    assert chdir_of(h, 8001) == folder and chdir_of(h, 8002) == str(tmp_path), "only the canary moved"
    assert h.rec.instances[8001].release == rid and h.sup.deployer.rollout.phase == "canary"
    with pytest.raises(ScaleRefused) as refused:
        await h.sup.deploy(release=rid)
    assert refused.value.code == "deploy_in_progress"
    await drive(h, 30, until=lambda: h.sup.deployer.rollout is None)
    assert [e["event"] for e in h.events.since(0) if e["event"].startswith("deploy.")] == \
        ["deploy.started", "deploy.canary_ready", "deploy.canary_passed", "deploy.completed"]
    assert chdir_of(h, 8001) == chdir_of(h, 8002) == folder
    assert (8001, 5.0) in h.sup.deployer.traffic.asked and (8002, 5.0) in h.sup.deployer.traffic.asked
    saved = json.loads(releases.state_path(h.spec).read_text())
    base = saved["base"]
    assert base not in (None, rid), "the first deploy keeps a copy of app.directory"
    assert saved == {"current": rid, "previous": base, "rollout": None, "base": base}
    assert (releases.releases_dir(h.spec) / "current").resolve() == releases.releases_dir(h.spec) / rid
    snap = h.sup.snapshot()
    assert [i["release"] for i in snap["instances"]] == [rid, rid] and snap["deploy"]["current"] == rid
    # a worker respawned later by this master would still load `folder`; a restart keeps it too
    h.sup.restart(8002)
    await drive(h, 5, until=lambda: not h.rec.instances[8002].restart_requested
                and h.rec.instances[8002].state.value == "running")
    assert chdir_of(h, 8002) == folder
    # and a rollback goes back the same careful way, to the copy of app.directory as it ran
    # before the first deploy (app.directory itself may have been edited since)
    h.sup.rollback()
    await drive(h, 30, until=lambda: h.sup.deployer.rollout is None)
    assert chdir_of(h, 8001) == chdir_of(h, 8002) == str(releases.releases_dir(h.spec) / base)
    assert h.sup.deployer.state.current == base and h.sup.deployer.state.previous == rid


@component
async def test_a_canary_answering_500s_is_rolled_back_with_an_alert_naming_the_5xx_rate(tmp_path):
    h = await up(tmp_path, traffic=FakeTraffic({8001: W(50, 50, 0.02), 8002: W(100, 0, 0.02)}))
    rid = new_release(h, tmp_path, "bad")
    await h.sup.deploy(release=rid)
    await drive(h, 30, until=lambda: h.sup.deployer.rollout is None)
    failed = h.events_named("deploy.failed")
    assert failed and failed[0]["figure"] == "rate_5xx" and "100.0%" in failed[0]["reason"]
    assert h.events_named("deploy.rolled_back")
    assert "deploy_failed" in h.alerts() and "rate_5xx" in h.alerts()["deploy_failed"]["message"]
    assert chdir_of(h, 8001) == chdir_of(h, 8002) == str(tmp_path)
    assert not any(c[0] == "spawn" and c[1][c[1].index("--name") + 1].endswith("-8002")
                   and rid in c[1][c[1].index("--chdir") + 1] for c in h.runner.calls), \
        "the other instance never ran the bad release"
    assert h.sup.deployer.state.current is None


@component
async def test_a_canary_that_cannot_load_rolls_back_at_once_and_never_left_service(tmp_path):
    h = await up(tmp_path, "deploy: {soak_seconds: 600}")
    old_pid = h.rec.instances[8001].pid
    rid = new_release(h, tmp_path, "broken")
    h.runner.answers[8001] = ProbeResult(None, "connection refused")   # the replacement boots...
    await h.sup.deploy(release=rid)
    await drive(h, 3, until=lambda: h.rec.instances[8001].successor is not None)
    successor = h.rec.instances[8001].successor
    assert successor.release == rid and h.states()[8001] == "running"
    h.runner.exit_proc(successor.handle, 4)   # ... then gunicorn says the app failed to load
    del h.runner.answers[8001]
    await drive(h, 30, until=lambda: h.sup.deployer.rollout is None)
    failed = h.events_named("deploy.failed")[0]
    assert failed["figure"] == "boot" and "exit 4" in failed["reason"]
    assert h.states() == {8001: "running", 8002: "running"}
    assert h.rec.instances[8001].pid == old_pid, "the old master served on throughout"
    assert h.rec.instances[8001].release is None and h.clock.t < 1000 + 600
    assert not h.rec.instances[8001].restart_requested and h.sup.deployer.state.current is None
    # the old master serves on, wanted as it is: /fleet shows no failure left over from the canary
    row = next(i for i in h.sup.snapshot()["instances"] if i["port"] == 8001)
    assert row["restart_failed"] is None and "exit 4" not in (row["reason"] or ""), row


@component
async def test_without_traffic_figures_the_canary_is_judged_on_health_after_the_soak(tmp_path):
    h = await up(tmp_path)
    rid = new_release(h, tmp_path, "v2")
    await h.sup.deploy(release=rid)
    await drive(h, 30, until=lambda: h.sup.deployer.rollout is None)
    passed = h.events_named("deploy.canary_passed")[0]
    assert "health and crashes only" in passed["verdict"]
    assert h.sup.deployer.state.current == rid


@component
async def test_a_daemon_restart_before_the_verdict_rolls_the_canary_back(tmp_path):
    h = await up(tmp_path, "deploy: {soak_seconds: 600}")
    rid = new_release(h, tmp_path, "v2")
    await h.sup.deploy(release=rid)
    await drive(h, 3, until=lambda: h.sup.deployer.rollout.canary_ready_at is not None)
    assert json.loads(releases.state_path(h.spec).read_text())["rollout"]["phase"] == "canary"
    # a new daemon on the same state folder (its instances start afresh: adoption is tested apart)
    h2 = Harness(tmp_path, "deploy: {soak_seconds: 600}")
    h2.sup.deployer.load()
    assert h2.sup.deployer.rollout.phase == "reverting"
    await h2.start()
    await drive(h2, 10, until=lambda: h2.sup.deployer.rollout is None)
    assert {i.release for i in h2.rec.instances.values()} == {None}
    assert h2.events_named("deploy.resumed") and h2.events_named("deploy.rolled_back")
    assert "deploy_failed" in h2.alerts()


@component
async def test_bad_releases_are_refused_and_change_nothing(tmp_path):
    h = await up(tmp_path)
    for kw, code in (({"release": "nope"}, "release_not_found"), ({"directory": "relative/dir"}, "release_invalid"),
                     ({"directory": str(tmp_path / "missing")}, "release_not_found"),
                     ({"directory": str(tmp_path)}, "release_invalid"),   # holds the releases folder
                     ({"release": "../etc"}, "release_invalid"), ({}, "release_invalid")):
        with pytest.raises(ScaleRefused) as refused:
            await h.sup.deploy(**kw)
        assert refused.value.code == code, kw
    with pytest.raises(ScaleRefused) as refused:
        h.sup.rollback()
    assert refused.value.code == "no_rollback_target"
    assert h.sup.deployer.rollout is None and not releases.state_path(h.spec).exists()


RELEASE_CMD = ("deploy: {{soak_seconds: 5, min_requests: 10, release_timeout: {timeout}, release_command: "
               "[{python}, -c, {code!r}]}}")


def with_release_command(code: str, timeout: float = 60) -> str:
    import sys
    return RELEASE_CMD.format(python=sys.executable, code=code, timeout=timeout)


@component
async def test_the_release_command_runs_in_the_new_folder_before_any_process_of_it_starts(tmp_path):
    code = ("import os; open('migrated', 'w').write(os.environ['ULTRASCALE_RELEASE']); "
            "print('Applying polls.0002... OK')")
    h = await up(tmp_path, extra=with_release_command(code))
    rid = new_release(h, tmp_path, "v2")
    await h.sup.deploy(release=rid)
    folder = releases.releases_dir(h.spec) / rid
    assert (folder / "migrated").read_text() == rid, "it ran in the release's folder, with its id"
    done = h.events_named("deploy.release_command_done")
    assert done and done[0]["release"] == rid
    names = [e["event"] for e in h.events.since(0)]
    assert names.index("deploy.release_command_done") < names.index("deploy.started")
    assert "Applying polls.0002" in (tmp_path / "logs" / f"release-{rid}.log").read_text()


@pytest.mark.parametrize("code,timeout,why", [
    ("import sys; print('django.db.utils.OperationalError: no such table'); sys.exit(3)", 60, "exited with 3"),
    ("import time; print('waiting for a lock', flush=True); time.sleep(60)", 1, "ran past deploy.release_timeout (1s)"),
])
def test_a_failing_release_command_stops_the_deploy_with_nothing_moved(tmp_path, code, timeout, why):
    async def run():
        h = await up(tmp_path, extra=with_release_command(code, timeout))
        rid = new_release(h, tmp_path, "v2")
        before = {p: i.pid for p, i in h.rec.instances.items()}
        with pytest.raises(ScaleRefused) as refused:
            await h.sup.deploy(release=rid)
        msg = str(refused.value)
        assert refused.value.code == "release_command_failed" and why in msg, msg
        assert ("no such table" in msg) or ("waiting for a lock" in msg), "the output's tail is quoted"
        assert h.sup.deployer.rollout is None and h.sup.deployer.state.current is None
        assert {p: i.pid for p, i in h.rec.instances.items()} == before
        failed = h.events_named("deploy.release_command_failed")
        assert failed and failed[0]["release"] == rid and failed[0]["output"]
        assert not h.sup.deployer.preparing, "the next deploy may go"
    asyncio.run(run())
