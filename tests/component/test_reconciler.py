"""The reconciler with a fake runner and a fake clock: every behaviour of the supervision core,
in milliseconds. Real processes are in tests/daemon (what only they can show)."""
from __future__ import annotations

import asyncio
import errno
import functools
import signal

import pytest

from fakes import Harness
from ultrascaled.core import command
from ultrascaled.core.seams import Leftover, PortHolder, ProbeResult
from ultrascaled.core.control import ScaleRefused


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


async def up(tmp_path, extra="") -> Harness:
    h = Harness(tmp_path, extra)
    await h.start()
    assert h.states() == {8001: "running", 8002: "running"}
    assert h.rec.applied == {8001, 8002}
    return h


# ---- start, crash, backoff, FATAL ------------------------------------------------------------

@component
async def test_a_fresh_fleet_starts_probes_and_publishes(tmp_path):
    h = await up(tmp_path)
    assert h.runner.kinds().count("spawn") == 2
    assert h.upstream.applied[-1] == [8001, 8002]
    assert h.rec.ready_event.is_set()
    argv = h.runner.calls[0][1]
    assert argv[argv.index("--name") + 1] == "ultrascale-comp-8001"
    assert "--capture-output" in argv and argv[argv.index("--error-logfile") + 1].endswith("instance-8001.log")


@component
async def test_a_crash_restarts_at_once_in_the_upstream_then_with_backoff_out_of_it(tmp_path):
    h = await up(tmp_path)
    h.runner.exit(8001)
    await h.settle()
    assert h.states()[8001] == "running", "the first crash restarts at once"
    assert h.rec.instances[8001].restarts == 1
    assert h.upstream.applied == [[8001, 8002]], \
        "restarting at once on the socket the daemon holds, it stayed in the upstream (no reload)"
    h.runner.exit(8001)
    await h.settle()
    assert [8002] in h.upstream.applied, "backing off, the dead instance left the upstream"
    assert h.states()[8001] == "backoff" and h.rec.instances[8001].next_start == h.clock.t + 0.5
    await h.advance(0.5)
    assert h.states()[8001] == "running"


@component
async def test_regression_five_kills_of_a_serving_instance_never_wedge_it(tmp_path):
    """issue 10, defect 11: the fifth kill -9 within 60 s raised `running -> fatal is not an
    allowed move` inside the exit callback; the instance stayed RUNNING with no pid, then
    STOPPING for ever. Now: backoff (capped), a crash-loop alert, and it serves again."""
    h = await up(tmp_path)
    for _ in range(6):
        h.runner.exit(8001)
        await h.settle()
        await h.advance(h.rec.instances[8001].next_start - h.clock.t + 0.01)
        assert h.states()[8001] == "running"
    assert not h.events_named("reconciler.error")
    inst = h.rec.instances[8001]
    assert inst.pid is not None and inst.restarts == 6
    assert "instance_crash_loop,port=8001" in h.alerts()
    await h.advance(61, step=5)   # served for a whole window: the alert resolves
    assert "instance_crash_loop,port=8001" not in h.alerts()


@component
async def test_an_app_that_fails_to_start_goes_fatal_after_k_failures_in_a_row(tmp_path):
    h = Harness(tmp_path, "")
    h.runner.answers[8001] = ProbeResult(None, "connection refused")
    await h.start()
    for _ in range(4):
        h.runner.exit(8001, 1)
        await h.settle()
        await h.advance(max(0.01, h.rec.instances[8001].next_start - h.clock.t))
    h.runner.exit(8001, 1)
    await h.settle()
    inst = h.rec.instances[8001]
    assert inst.state.value == "fatal" and "failed to start 5 times in a row" in inst.reason
    assert "instance_fatal,port=8001" in h.alerts(), "FATAL raises the alert (webhook, /alerts)"
    assert h.sup.health()[0] is False


@component
async def test_regression_an_app_that_never_gets_ready_backs_off_and_goes_fatal(tmp_path):
    """issue 10, defect 10: a never-ready app looped for ever at 0.5 s backoff with a probe
    every 20 ms, and the reason did not say what the probe got."""
    h = Harness(tmp_path, "")
    h.runner.answers[8001] = ProbeResult(404, "HTTP 404")
    await h.start()
    await h.advance(30, step=0.05)
    assert 40 <= h.runner.probes.count(8001) <= 100, "probes slow down: tens per attempt, not 1500"
    inst = h.rec.instances[8001]
    backoff = [e for e in h.events_named("instance.state") if e["port"] == 8001 and e["new"] == "backoff"]
    assert inst.start_failures == 1 and "not ready after 30s (last probe: HTTP 404)" in backoff[0]["reason"]
    for _ in range(4):
        await h.advance(31 + 30, step=1)
    assert inst.state.value == "fatal", inst.reason
    assert "instance_fatal,port=8001" in h.alerts()


@component
async def test_regression_a_reload_restarts_a_fatal_instance(tmp_path):
    """issue 10, defect 2: bad app.module -> FATAL -> fix the spec -> reload answered
    `restarting: []`."""
    h = Harness(tmp_path, "")
    h.runner.answers[8002] = ProbeResult(None, "connection refused")
    await h.start()
    h.runner.exit(8002, 4)  # gunicorn: app failed to load
    await h.settle()
    assert h.states()[8002] == "fatal"
    del h.runner.answers[8002]
    fixed = h.spec.__class__(**{**h.spec.__dict__})
    result = h.sup.reload_spec(fixed)
    assert result["restarting"] == [8002]
    await h.settle()
    assert h.states()[8002] == "running"
    assert "instance_fatal,port=8002" not in h.alerts()


# ---- scale, drain, rolling restart --------------------------------------------------------------

@component
async def test_scale_up_joins_once_ready_and_scale_down_drains_then_stops(tmp_path):
    h = await up(tmp_path)
    h.runner.answers[8003] = ProbeResult(503, "HTTP 503")
    h.sup.scale(3)
    await h.settle()
    assert h.states()[8003] == "starting" and 8003 not in h.rec.applied, "not ready: not in nginx"
    del h.runner.answers[8003]
    await h.advance(0.1, step=0.02)
    assert h.states()[8003] == "running" and h.upstream.applied[-1] == [8001, 8002, 8003]
    h.sup.scale(2)
    await h.settle()
    assert h.states()[8003] == "draining" and h.upstream.applied[-1] == [8001, 8002]
    assert ("signal", 8003, signal.SIGTERM) not in h.runner.calls, "drain before stop"
    await h.advance(0.5)
    assert ("signal", 8003, signal.SIGTERM) in h.runner.calls
    assert 8003 not in h.rec.instances


@component
async def test_an_instance_stopped_before_it_served_is_killed_at_a_short_deadline(tmp_path):
    """Nothing to drain: SIGTERM, then SIGKILL after Policy.unserved_stop_timeout (2 s), not the
    graceful stop_timeout a serving instance gets (32 s); a scale storm used to leave one in
    `stopping` for ~29 s, and /health 503 meanwhile."""
    h = await up(tmp_path)
    h.runner.deaf |= {8002, 8003}
    h.runner.answers[8003] = ProbeResult(503, "HTTP 503")    # still booting
    h.sup.scale(3)
    await h.settle()
    assert h.states()[8003] == "starting"
    h.sup.scale(1)
    await h.settle()
    assert h.states()[8003] == "stopping" and ("signal", 8003, signal.SIGTERM) in h.runner.calls
    pgid = h.runner.master(8003).pgid
    await h.advance(1.5)
    assert ("kill_group", pgid, signal.SIGKILL) not in h.runner.calls, "SIGTERM gets its moment"
    await h.advance(1.0)
    assert ("kill_group", pgid, signal.SIGKILL) in h.runner.calls
    killed = [e for e in h.events_named("instance.killed") if e["port"] == 8003]
    assert killed and "stopped before it served" in killed[0]["reason"]
    assert 8003 not in h.rec.instances
    # the one that served and ignores SIGTERM is given the graceful time
    assert h.states()[8002] == "stopping"
    assert not [c for c in h.runner.calls if c[0] == "kill_group" and c[1] == h.runner.master(8002).pgid]


@component
async def test_scale_is_persisted_first_and_refused_when_it_cannot_be(tmp_path):
    """issue 12: a failed state write half-applied a scale (500, count changed, fleet scaled,
    state.json kept the old count, a 0-byte temp file left)."""
    h = await up(tmp_path)
    h.sup.scale(3)
    assert '"desired": 3' in (h.rec.state_dir / "state.json").read_text()
    state = h.rec.state_dir / "state.json"
    state.unlink()
    state.mkdir()  # the rename over it fails, as on a full or read-only disk (root ignores modes)
    with pytest.raises(ScaleRefused) as err:
        h.sup.scale(4)
    assert err.value.code == "internal" and "nothing was changed" in str(err.value)
    assert h.sup.count == 3 and h.rec.wanted == (8001, 8002, 8003)
    assert [p.name for p in h.rec.state_dir.iterdir() if "tmp" in p.name] == [], "no temp file left"
    assert h.events_named("state.write_failed")


@component
async def test_rolling_restart_takes_one_instance_out_at_a_time(tmp_path):
    h = await up(tmp_path, "")
    h.sup.scale(3)
    await h.advance(0.1, step=0.02)
    old = {p: h.rec.instances[p].pid for p in (8001, 8002, 8003)}
    h.sup.restart(None)
    serving = []
    for _ in range(60):
        await h.advance(0.05, step=0.05)
        serving.append(len([p for p in h.rec.applied if h.states()[p] == "running"]))
        if all(h.rec.instances[p].pid != old[p] for p in old) and h.rec.applied == {8001, 8002, 8003}:
            break
    assert all(h.rec.instances[p].pid != old[p] for p in old), h.states()
    assert min(serving) >= 2, "never fewer than N-1 serving"


# ---- memory watchdog ----------------------------------------------------------------------------

@component
async def test_a_worker_over_its_limit_is_recycled_and_killed_after_its_deadline(tmp_path):
    h = await up(tmp_path)
    master = h.runner.master(8001)
    worker = master.workers[0]
    h.runner.rss[worker] = 200 << 20
    await h.sample()
    assert ("signal_worker", worker, signal.SIGTERM) not in h.runner.calls, "one sample is not enough"
    await h.sample()
    assert ("signal_worker", worker, signal.SIGTERM) in h.runner.calls
    assert h.events_named("watchdog.recycled")[0]["action"] == "SIGTERM to worker"
    await h.advance(9.9, step=1)
    assert ("signal_worker", worker, signal.SIGKILL) not in h.runner.calls
    await h.sample()  # still alive (it is still in the master's children)
    await h.advance(0.2, step=0.1)
    assert ("signal_worker", worker, signal.SIGKILL) in h.runner.calls
    assert h.events_named("watchdog.killed")


async def _sampler(h, until: float, crossed: list) -> None:
    """The supervisor's sampler loop on the fake clock: sample, then sleep sample_delay()."""
    while h.clock.t < until:
        await h.sample()
        if any(e["event"] == "watchdog.recycled" for e in h.events.since(0)):
            crossed.append(h.clock.t)
            return
        await h.advance(h.rec.sample_delay(), step=h.rec.sample_delay())


@component
async def test_memory_is_sampled_at_the_relaxed_interval_only_while_every_process_is_far_from_its_limit(tmp_path):
    h = await up(tmp_path)          # workers 20 MiB, masters 10 MiB; limit 100 MiB, budget 1000 MiB
    await h.sample()
    assert h.rec.sample_delay() == 5.0
    assert h.rec.sample_delay(autoscaling=True) == 1.0, "the autoscaler reads the samples' CPU"
    worker = h.runner.master(8001).workers[0]
    h.runner.rss[worker] = 60 << 20            # over memory.relaxed_below (half the limit)
    await h.sample()
    assert h.rec.sample_delay() == 1.0
    h.runner.rss[worker] = 20 << 20
    await h.sample()
    assert h.rec.sample_delay() == 5.0


@component
async def test_regression_the_round_that_sees_a_crossing_brings_the_next_at_the_base_interval(tmp_path):
    """The sampler asks for its next delay right after a round, before the loop has folded that
    round's samples: judged on the records, a crossing waited one more relaxed interval (10.3 s
    measured against a documented worst case of 7 s)."""
    h = await up(tmp_path)
    await h.sample()
    assert h.rec.sample_delay() == 5.0
    h.runner.rss[h.runner.master(8001).workers[0]] = 200 << 20
    h.rec.sample_all()                       # not folded yet
    assert h.rec.sample_delay() == 1.0


@component
async def test_a_worker_crossing_its_limit_right_after_a_relaxed_round_is_recycled_within_the_documented_worst_case(tmp_path):
    """memory.relaxed_interval + (samples_over - 1) x sample_interval: 5 + 1 x 1 = 6 s here."""
    from ultrascaled.core.memwatch import worst_reaction
    h = await up(tmp_path)
    await h.sample()
    assert h.rec.sample_delay() == 5.0
    worker = h.runner.master(8001).workers[0]
    h.runner.rss[worker] = 200 << 20           # crosses now, just after a relaxed round
    t0, recycled = h.clock.t, []
    await h.advance(5.0, step=5.0)
    await _sampler(h, t0 + 30, recycled)
    assert ("signal_worker", worker, signal.SIGTERM) in h.runner.calls
    m = h.spec.memory
    assert recycled and recycled[0] - t0 <= worst_reaction(m.sample_interval, m.relaxed_interval, m.samples_over) == 6.0


@component
async def test_regression_the_memory_budget_alert_reaches_the_alert_path(tmp_path):
    """issue 10, defect 4: alert.memory_budget was a bare event (no webhook, no /alerts)."""
    h = await up(tmp_path)
    for p in list(h.runner.procs):
        h.runner.rss[p] = h.runner.rss[p + 1] = 30 << 20
    await h.sample()
    assert "memory_budget" not in h.alerts()
    h.sup.scale(6)
    await h.advance(0.2, step=0.05)
    for p in list(h.runner.procs):
        h.runner.rss[p] = h.runner.rss[p + 1] = 95 << 20
    await h.sample()
    assert "memory_budget" in h.alerts()


# ---- adoption ------------------------------------------------------------------------------------

@component
async def test_adoption_takes_this_fleets_masters_and_kills_orphans_only(tmp_path):
    h = Harness(tmp_path, "")
    argv = command.gunicorn_argv(h.spec, 8001, str(h.rec.log_path(8001)))
    h.runner.leftovers = [Leftover(500, 8001, tuple(argv), True, True),
                          Leftover(600, 8002, tuple(argv), False, False),    # orphaned worker
                          Leftover(700, 9999, tuple(argv), True, True)]      # outside the port range
    await h.start()
    inst = h.rec.instances[8001]
    assert inst.pid == 500 and inst.adopted and inst.state.value == "running" and not inst.restart_requested
    assert h.runner.kinds().count("spawn") == 1, "only 8002 was started"
    assert ("signal_worker", 600, signal.SIGKILL) in h.runner.calls
    assert not any(c[0] == "kill_group" and c[1] == 700 for c in h.runner.calls)
    assert h.events_named("adopt.ignored")[0]["pid"] == 700


@component
async def test_an_adopted_master_with_another_command_is_rolled(tmp_path):
    h = Harness(tmp_path, "")
    old = ["python", "-m", "gunicorn", "--name", "ultrascale-comp-8001", "--workers", "9"]
    h.runner.leftovers = [Leftover(500, 8001, tuple(old), True, True)]
    await h.start()
    await h.advance(2, step=0.1)
    assert h.rec.instances[8001].pid != 500 and h.states() == {8001: "running", 8002: "running"}


# ---- nginx: temporary vs permanent failures --------------------------------------------------------

@component
async def test_nginx_temporary_failures_are_retried_with_growing_delays(tmp_path):
    h = Harness(tmp_path, "")
    h.upstream.results = [(False, "reload_failed: nginx is down", True)] * 3
    await h.start()
    assert h.rec.upstream_ok is False
    await h.advance(10, step=0.25)
    assert h.rec.upstream_ok and h.rec.applied == {8001, 8002}
    assert [e["retry_in"] for e in h.events_named("upstream.failed")] == [1.0, 2.0, 4.0]
    assert len(h.upstream.applied) == 4
    fired = [e["alert"] for e in h.events_named("alert.firing")]
    assert fired == ["upstream_failed"] and "upstream_failed" not in h.alerts(), "fired at 3, resolved"


@component
async def test_nginx_permanent_failure_stops_retrying_alerts_and_retries_when_its_files_change(tmp_path):
    h = Harness(tmp_path, "")
    h.upstream.results = [(False, "check_failed: unknown directive", False)]
    await h.start()
    tries = len(h.upstream.applied)
    await h.advance(120, step=2)
    assert len(h.upstream.applied) == tries, "the same input is not sent to nginx again"
    assert "upstream_failed" in h.alerts()
    assert h.sup.health()[0] is False
    h.upstream.stamp += 1  # someone mended nginx's configuration
    await h.advance(11, step=1)
    assert h.rec.upstream_ok and h.rec.applied == {8001, 8002}
    assert "upstream_failed" not in h.alerts()


@component
async def test_an_apply_that_raises_is_a_temporary_failure_not_a_crash_loop(tmp_path):
    """issue 10, defect 9: the upstream publisher crashed 13,982 times and flooded the events."""
    h = Harness(tmp_path, "")

    async def boom(servers):
        raise OSError(errno.EMFILE, "Too many open files")
    h.upstream.apply = boom
    await h.start()
    await h.advance(10, step=0.1)
    failed = h.events_named("upstream.failed")
    assert 2 <= len(failed) <= 6 and "Too many open files" in failed[0]["error"]


# ---- the daemon's own resources ---------------------------------------------------------------------

@component
async def test_regression_a_spawn_that_fails_for_want_of_fds_backs_off_and_never_goes_fatal(tmp_path):
    """issue 10, defect 9: spawns failing with EMFILE made an instance FATAL."""
    h = await up(tmp_path)
    h.runner.spawn_error = OSError(errno.EMFILE, "Too many open files")
    h.runner.exit(8001)
    await h.settle()
    await h.advance(60, step=1)
    assert h.states()[8001] == "backoff" and "Too many open files" in h.rec.instances[8001].reason
    assert "instance_cannot_start,port=8001" in h.alerts()
    h.runner.spawn_error = None
    await h.advance(31, step=1)
    assert h.states()[8001] == "running"


@component
async def test_regression_reaping_survives_a_moment_without_fds(tmp_path):
    """issue 10, defect 9: os.scandir('/proc') raised EMFILE in the reap task, which died; the
    instance stayed in BACKOFF after the fds were free and `restart` did not help."""
    h = await up(tmp_path)
    h.rec.listeners.pop(8001)  # a port whose socket the daemon does not hold: the group gates the respawn
    h.runner.group_error = OSError(errno.EMFILE, "Too many open files")
    h.runner.exit(8001)
    for _ in range(20):
        await asyncio.sleep(0.01)
        h.rec.step()
    assert h.rec.instances[8001].group_alive
    h.runner.group_error = None
    for _ in range(40):
        await asyncio.sleep(0.03)
        h.rec.step()
        if h.states()[8001] == "running":
            break
    assert h.states()[8001] == "running"
    assert h.events_named("instance.reap_retry")


@component
async def test_a_spawn_the_os_refuses_for_good_is_fatal_with_the_reason(tmp_path):
    h = await up(tmp_path)
    h.runner.spawn_error = FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/python")
    h.runner.exit(8001)
    await h.settle()
    assert h.states()[8001] == "fatal" and "/no/python" in h.rec.instances[8001].reason


@component
async def test_a_busy_port_backs_off_naming_its_holder(tmp_path):
    h = Harness(tmp_path, "")
    h.runner.busy[8002] = PortHolder(4242, "redis-server")
    await h.start()
    inst = h.rec.instances[8002]
    assert inst.state.value == "backoff" and "pid 4242 (redis-server)" in inst.reason
    del h.runner.busy[8002]
    await h.advance(2)
    assert h.states()[8002] == "running"


# ---- one writer, loud errors ----------------------------------------------------------------------

@component
async def test_an_error_while_handling_an_observation_is_loud_and_the_loop_goes_on(tmp_path):
    h = await up(tmp_path)
    h.rec.fold = lambda msg: (_ for _ in ()).throw(RuntimeError("bug"))
    h.runner.exit(8001)
    await h.settle()
    assert h.events_named("reconciler.error") and "reconciler_error" in h.alerts()
    del h.rec.fold
    h.runner.exit(8002)
    await h.settle()
    assert h.states()[8002] == "running", "the next observation still counts"


@component
async def test_log_rotation_renames_and_tells_gunicorn_to_reopen(tmp_path):
    h = await up(tmp_path)
    path = str(h.rec.log_path(8001))
    h.runner.log_sizes[path] = h.spec.logs.max_bytes
    await h.sample()
    assert h.runner.rotated == [path]
    assert ("signal", 8001, signal.SIGUSR1) in h.runner.calls


@component
async def test_regression_a_limit_below_the_boot_size_does_not_recycle_for_ever(tmp_path):
    """issue 12: a worker_limit_mb below what the app needs to boot recycled every fresh worker
    for ever, without backoff or alert."""
    h = await up(tmp_path)
    master = h.runner.master(8001)
    for n in range(10):
        worker = master.workers[0] = 7000 + n   # each recycle: a fresh worker, over the limit at once
        h.runner.rss[worker] = 200 << 20
        await h.sample()
        await h.sample()
        await h.advance(1)
    sent = [c for c in h.runner.calls if c[0] == "signal_worker" and c[2] == signal.SIGTERM]
    assert len(sent) == 5, "at most restart.fatal_crashes recycles per fatal_window"
    assert "memory_recycle_loop,port=8001" in h.alerts() and h.events_named("watchdog.held")


@component
async def test_a_corrupt_state_file_is_ignored_with_an_event(tmp_path):
    h = Harness(tmp_path)
    h.rec.state_dir.mkdir(parents=True)
    (h.rec.state_dir / "state.json").write_text('{"desired": 4')
    await h.start()
    ignored = h.events_named("state.ignored")
    assert ignored and "unreadable" in ignored[0]["reason"] and h.sup.count == 2
