"""Worker types autoscaled on their queue's depth (supervise/queue_scale_loop.py) with the fake
runner and clock and a fake depth source: a burst scales the type up to max through
WorkersLoop.scale, a drained queue brings it back down after the scale-down window, an
operator's scale pauses it (across a restart too) until resumed, an unreadable queue holds the
count with one warning and an alert once it lasts, and GET /processes shows the last decision."""
from __future__ import annotations

import asyncio
import functools
import json

from fakes import Harness

URL = "redis://:s3cret@127.0.0.1:6379/0"
SPEC = f"""
processes:
  worker:
    command: [python, -m, rq.cli, worker]
    count: 1
    min: 0
    max: 8
    start_seconds: 1
    memory_limit_mb: 16      # 8 of them fit the harness's fleet budget
    autoscale:
      queue: {{redis: "{URL}", rq: default}}
      target: 50
      min: 1
      interval: 5
      behavior: {{scale_down: {{stabilization_window_seconds: 30}}}}
  other:
    command: [python, other.py]
    count: 1
    max: 2
"""


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


class FakeDepth:
    """The seam: `await depth(url, key)`; a test sets `.value` or `.error`."""

    def __init__(self, value: int = 0):
        self.value = value
        self.error: Exception | None = None
        self.reads: list[tuple[str, str]] = []

    async def __call__(self, url: str, key: str) -> int:
        self.reads.append((url, key))
        if self.error is not None:
            raise self.error
        return self.value


async def up(tmp_path, depth: FakeDepth, spec: str = SPEC, **kw) -> Harness:
    h = Harness(tmp_path, spec, queue_depth=depth, **kw)
    await h.start()
    return h


async def run_for(h: Harness, seconds: float, step: float = 0.5) -> None:
    """The queue autoscaler's loop and the workers' under the fake clock."""
    end = h.clock.t + seconds
    while h.clock.t < end:
        await h.sup.queues.step()
        await h.advance(step, step=step)


def alive(h: Harness, name: str = "worker") -> int:
    return sum(1 for label in h.runner.workers_alive() if label.split("/")[1] == name)


@component
async def test_a_burst_scales_up_to_max_through_the_workers_scale(tmp_path):
    depth = FakeDepth(500)
    h = await up(tmp_path, depth)
    assert alive(h) == 1
    await run_for(h, 1)
    assert h.sup.workers.desired["worker"] == 5       # ceil(500/50)=10, +4 per 15 s
    await run_for(h, 20)
    assert h.sup.workers.desired["worker"] == 8 and alive(h) == 8
    assert depth.reads[0] == (URL, "rq:queue:default")
    scales = [(e["previous"], e["desired"]) for e in h.events_named("process.scale") if e["source"] == "autoscale"]
    assert scales == [(1, 5), (5, 8)], scales
    ups = [e for e in h.events_named("process.autoscale") if e["action"] == "scale_up"]
    assert [(e["queue_depth"], e["current"], e["desired"]) for e in ups] == [(500, 1, 5), (500, 5, 8)]
    assert ups[0]["reason"].startswith("queue_depth 500 vs target 50"), ups[0]
    assert h.sup.workers.desired["other"] == 1        # a type without autoscale is left alone


@component
async def test_a_drained_queue_steps_down_to_min_after_the_window(tmp_path):
    depth = FakeDepth(400)
    h = await up(tmp_path, depth)
    await run_for(h, 20)
    assert h.sup.workers.desired["worker"] == 8
    depth.value = 0
    drained_at = h.clock.t
    await run_for(h, 25)
    assert h.sup.workers.desired["worker"] == 8       # within the 30 s window
    await run_for(h, 15)
    assert h.sup.workers.desired["worker"] == 1       # autoscale.min, not the type's 0
    down = [e for e in h.events_named("process.autoscale") if e["action"] == "scale_down"][0]
    assert down["queue_depth"] == 0 and down["desired"] == 1
    assert down["time"] - h.clock.wall() + h.clock.t - drained_at >= 25   # its wall time, on the fake clock
    await h.advance(15)   # graceful stops done
    assert alive(h) == 1


@component
async def test_an_operator_scale_pauses_the_type_until_resumed_across_a_restart(tmp_path):
    depth = FakeDepth(500)
    h = await up(tmp_path, depth)
    answer = h.sup.scale_process("worker", 2, source="operator")
    assert "autoscale resume worker" in answer["autoscale"]
    await run_for(h, 20)
    assert h.sup.workers.desired["worker"] == 2
    st = h.sup.queues.status()["worker"]
    assert st["paused"] and st["paused_reason"] == "manual scale to 2"
    assert st["last"]["reason"].startswith("paused until resumed")
    saved = json.loads((tmp_path / "state" / "autoscale-processes.json").read_text())
    assert saved == {"paused": {"worker": "manual scale to 2"}}
    # a restarted daemon keeps the pause
    h2 = Harness(tmp_path, SPEC, queue_depth=depth, runner=h.runner, clock=h.clock)
    await h2.start()
    await run_for(h2, 10)
    assert h2.sup.workers.desired["worker"] == 2 and h2.sup.queues.status()["worker"]["paused"]
    h2.sup.queues.resume("worker")
    await run_for(h2, 1)
    assert h2.sup.workers.desired["worker"] == 6      # +4 from 2
    assert h2.events_named("process.autoscale_resumed")[0]["was_paused"] is True
    # the autoscaler's own scales do not pause it
    assert h2.sup.scale_process("other", 2, source="operator").get("autoscale") is None


@component
async def test_an_unreadable_queue_holds_with_one_warning_and_an_alert_once_it_lasts(tmp_path):
    depth = FakeDepth(500)
    h = await up(tmp_path, depth)
    await run_for(h, 1)
    assert h.sup.workers.desired["worker"] == 5
    depth.error = ConnectionError(f"Error 111 connecting to {URL}: password s3cret refused")
    await run_for(h, 25)
    assert h.sup.workers.desired["worker"] == 5       # held, even with the queue unknown
    warned = h.events_named("process.autoscale_unreachable")
    assert len(warned) == 1 and "s3cret" not in json.dumps(warned), warned
    assert warned[0]["redis"] == "redis://:***@127.0.0.1:6379/0" and warned[0]["list"] == "rq:queue:default"
    assert "queue_unreachable" not in [a["alert"] for a in h.alerts().values()]
    await run_for(h, 10)                              # over 30 s
    firing = [a for a in h.alerts().values() if a["alert"] == "queue_unreachable"]
    assert len(firing) == 1 and firing[0]["process"] == "worker" and "s3cret" not in firing[0]["message"]
    holds = [e for e in h.events_named("process.autoscale") if "cannot be read" in e["reason"]]
    assert holds and all(e["level"] == "warning" for e in holds)
    assert len(holds) <= 3, len(holds)                # again only every 30 s, not every read
    st = h.sup.queues.status()["worker"]
    assert st["reachable"] is False and st["queue_depth"] is None
    depth.error, depth.value = None, 500
    await run_for(h, 6)
    assert len(h.events_named("process.autoscale_reachable")) == 1
    assert "queue_unreachable" not in [a["alert"] for a in h.alerts().values()]
    assert h.sup.workers.desired["worker"] == 8
    assert "s3cret" not in json.dumps(h.events.since(0))


@component
async def test_get_processes_and_autoscale_show_the_last_decision(tmp_path):
    depth = FakeDepth(120)
    h = await up(tmp_path, depth)
    await run_for(h, 1)
    shown = h.sup.processes()["worker"]["autoscale"]
    assert shown["queue"] == {"redis": "redis://:***@127.0.0.1:6379/0", "list": "rq:queue:default"}
    assert (shown["min"], shown["max"], shown["target"]) == (1, 8, 50.0)
    assert shown["last"]["action"] == "scale_up" and shown["last"]["desired"] == 3
    assert shown["last"]["queue_depth"] == 120 and "decisions" not in shown
    assert "autoscale" not in h.sup.processes()["other"]
    assert list(h.sup.queues.status()) == ["worker"]


@component
async def test_no_decision_before_the_web_fleet_is_ready_and_none_once_stopping(tmp_path):
    depth = FakeDepth(500)
    h = Harness(tmp_path, SPEC, queue_depth=depth)
    await h.sup.queues.step()
    assert depth.reads == []                          # the workers have not started
    await h.start()
    h.sup.workers.begin_shutdown()
    await h.sup.queues.step()
    assert depth.reads == []


@component
async def test_a_reload_that_drops_autoscale_forgets_the_type(tmp_path):
    depth = FakeDepth(0)
    h = await up(tmp_path, depth)
    depth.error = ConnectionError("down")
    await run_for(h, 40)
    assert [a["alert"] for a in h.alerts().values()] == ["queue_unreachable"]
    plain = SPEC.split("    autoscale:")[0] + "  other:\n    command: [python, other.py]\n    count: 1\n    max: 2\n"
    h.sup.reload_spec(Harness(tmp_path, plain).spec)
    await h.sup.queues.step()
    assert h.sup.queues.status() == {} and h.alerts() == {}
