"""Every background loop runs under the task guard: a dead or stalled loop is loud, turns
/health to 503 naming it, stops the systemd watchdog ping, and is restarted (issue 10, defect 1:
the sampler died on ENOSPC behind a 200 /health and WATCHDOG=1)."""
from __future__ import annotations

import asyncio
import errno
import functools

from fakes import FakeClock, Harness
from ultrascaled.observe.alerts import EventAlerts
from ultrascaled.observe.events import EventLog
from ultrascaled.supervise.tasks import TaskGuard


def component(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        return asyncio.run(fn(*a, **kw))
    return wrapper


@component
async def test_a_loop_that_dies_is_reported_restarted_and_resolved_once_it_beats_again():
    clock = FakeClock()
    events = EventLog(clock=clock.wall)
    alerts = EventAlerts(events.emit)
    guard = TaskGuard(events.emit, clock.now, alerts)
    guard.BACKOFF_INITIAL = 0.01
    runs = []

    async def sampler():
        runs.append(1)
        if len(runs) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        while True:
            guard.beat("sampler")
            await asyncio.sleep(0.001)

    guard.start("sampler", sampler, interval=1.0)
    await asyncio.sleep(0)
    problems = guard.problems()
    assert len(problems) == 1 and "sampler is dead (OSError: [Errno 28] No space left on device)" in problems[0]
    assert "task_crashed,task=sampler" in alerts.raised
    crashed = [e for e in events.since(0) if e["event"] == "daemon.task_crashed"]
    assert crashed and crashed[0]["task"] == "sampler"
    await asyncio.sleep(0.05)
    assert len(runs) == 2 and guard.problems() == [], "restarted, beating again"
    assert "task_crashed,task=sampler" not in alerts.raised
    await guard.stop()


@component
async def test_a_loop_that_stalls_past_its_interval_is_named():
    clock = FakeClock()
    guard = TaskGuard(lambda *a, **k: None, clock.now)

    async def stuck():
        await asyncio.Event().wait()

    guard.start("reconciler", stuck, interval=5.0)
    await asyncio.sleep(0)
    clock.t += 10
    assert guard.problems() == []
    clock.t += 6
    assert guard.problems() == ["task reconciler is stalled: no progress for 16.0s (expected every 5s)"]
    await guard.stop()


@component
async def test_a_loop_that_returns_is_a_dead_loop_too():
    guard = TaskGuard(lambda *a, **k: None)
    guard.BACKOFF_INITIAL = 10

    async def quits():
        return None

    guard.start("alerts", quits)
    await asyncio.sleep(0)
    assert "alerts is dead (returned" in guard.problems()[0]
    await guard.stop()


@component
async def test_health_names_a_dead_task_while_every_instance_serves(tmp_path):
    h = Harness(tmp_path)
    await h.start()
    assert h.sup.health() == (True, [])

    async def broken():
        raise OSError(errno.ENOSPC, "No space left on device")

    h.sup.guard.BACKOFF_INITIAL = 60
    h.sup.start_guarded("sampler", broken, interval=1)
    await asyncio.sleep(0)
    ok, reasons = h.sup.health()
    assert not ok and reasons[0].startswith("task sampler is dead")
    await h.sup.guard.stop()


def test_an_event_whose_log_line_cannot_be_written_is_still_recorded():
    """A full disk or a closed stderr must not turn every event into a crash of its loop."""
    class Broken:
        def __getattr__(self, level):
            def write(*a, **k):
                raise OSError(errno.ENOSPC, "No space left on device")
            return write
    events = EventLog(logger=Broken())
    events.emit("instance.state", port=1)
    assert events.since(0)[0]["event"] == "instance.state" and events.log_failures == 1
