"""Start order and readiness of the `processes:` types (supervise/workers_loop.py, jobs_loop.py)
with the fake runner and clock: a `ready` check holds a process STARTING, a never-ready one is a
start failure, `after` orders worker types, `requires` holds a type (and skips a job's runs)
until an address accepts connections. supervisord has no start order at all (Supervisor/supervisor#122)."""
from __future__ import annotations

import asyncio
import functools
import signal

from fakes import Harness
from ultrascaled.core.seams import ProbeResult
from ultrascaled.surface import cli

REDIS = ("127.0.0.1", 6379)


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


async def up(tmp_path, text: str) -> Harness:
    h = Harness(tmp_path, text)
    await h.start()
    return h


def states(h: Harness) -> dict:
    return {f"{n}/{i}": s.state.value for (n, i), s in sorted(h.sup.workers.slots.items())}


def tcp_checks(h: Harness, port: int) -> int:
    return sum(1 for c in h.runner.checks if c[0] == "tcp" and c[2] == port)


@component
async def test_a_worker_with_a_tcp_check_stays_starting_until_its_port_accepts(tmp_path):
    h = await up(tmp_path, """
processes:
  cache:
    command: [redis-server, --port, "6380"]
    max: 2
    start_seconds: 1
    ready: {tcp: 6380}
""")
    assert states(h) == {"cache/0": "starting"}
    await h.advance(3.0)
    assert states(h) == {"cache/0": "starting"}                # alive 3 s, but not ready
    assert 6 <= tcp_checks(h, 6380) <= 8                        # about every 0.5 s
    assert h.sup.processes()["cache"]["ready"] == 0
    h.runner.listening.add(("127.0.0.1", 6380))
    await h.advance(0.5)
    assert states(h) == {"cache/0": "running"}
    (ready,) = h.events_named("process.ready")
    assert ready["process"] == "cache" and 3.0 <= ready["after"] <= 3.5
    n = tcp_checks(h, 6380)
    await h.advance(5.0)
    assert tcp_checks(h, 6380) == n                             # no check once running


@component
async def test_a_check_that_passes_at_once_still_waits_for_start_seconds(tmp_path):
    h = Harness(tmp_path, """
processes:
  celery:
    command: [celery, -A, proj, worker]
    max: 2
    start_seconds: 2
    env: {QUEUE: mail}
    ready: {command: [sh, -c, 'celery -A proj inspect ping -d celery@$HOSTNAME']}
""")
    h.runner.check_rcs["sh"] = 0
    await h.start()
    await h.advance(1.5)
    assert states(h) == {"celery/0": "starting"}
    await h.advance(0.5)
    assert states(h) == {"celery/0": "running"}
    (kind, argv, cwd, label) = next(c for c in h.runner.checks if c[0] == "command")
    assert argv == ["sh", "-c", "celery -A proj inspect ping -d celery@$HOSTNAME"]
    assert (cwd, label) == (str(tmp_path), "comp/celery/0")    # the process's folder and environment


@component
async def test_an_http_check_wants_a_2xx_from_its_loopback_url(tmp_path):
    h = Harness(tmp_path, """
processes:
  exporter:
    command: [python, exporter.py]
    max: 2
    start_seconds: 0
    ready: {http: "http://127.0.0.1:9101/health"}
""")
    h.runner.answers[9101] = ProbeResult(503, "HTTP 503")
    await h.start()
    await h.advance(2.0)
    assert states(h) == {"exporter/0": "starting"}
    assert h.sup.workers.slots[("exporter", 0)].check_detail == "HTTP 503"
    h.runner.answers[9101] = ProbeResult(204, "HTTP 204")
    await h.advance(0.5)
    assert states(h) == {"exporter/0": "running"}


@component
async def test_never_ready_is_a_start_failure_sigkilled_at_ready_timeout_then_backoff_then_fatal(tmp_path):
    h = await up(tmp_path, """
processes:
  cache:
    command: [redis-server]
    max: 2
    ready: {tcp: 6380}
    ready_timeout: 3
""")
    first = h.runner.worker("comp/cache/0")
    await h.advance(2.75)
    assert states(h) == {"cache/0": "starting"} and first.alive
    await h.advance(0.25)
    assert ("kill_group", first.pgid, signal.SIGKILL) in h.runner.calls and not first.alive
    (nr,) = h.events_named("process.not_ready")
    assert nr["ready_timeout"] == 3 and nr["last_check"] == "connection refused"
    backoff = [e for e in h.events_named("process.state") if e["state"] == "backoff"]
    assert "not ready within ready_timeout (3s): connection refused" in backoff[0]["reason"]
    assert "start failure 1 of 5" in backoff[0]["reason"]
    for _ in range(200):                         # restart.fatal_crashes: 5 in a row
        if states(h)["cache/0"] == "fatal":
            break
        await h.advance(0.5, step=0.5)
    assert states(h) == {"cache/0": "fatal"}
    assert len(h.events_named("process.not_ready")) == 5 and h.runner.workers_alive() == []
    assert "failed to start 5 times in a row" in h.events_named("process.state")[-1]["reason"]


@component
async def test_an_exit_before_the_check_passed_is_a_start_failure_saying_so(tmp_path):
    h = await up(tmp_path, "processes:\n  cache:\n    command: [x]\n    max: 2\n    ready: {tcp: 6380}\n")
    await h.advance(2.0)
    h.runner.exit_proc(h.runner.worker("comp/cache/0"), 1)
    await h.settle()
    last = [e for e in h.events_named("process.state") if e["state"] == "backoff"][-1]
    assert "before its ready check passed (last: connection refused)" in last["reason"]


@component
async def test_after_starts_worker_b_once_every_process_of_worker_a_is_running(tmp_path):
    h = await up(tmp_path, """
processes:
  a:
    command: [redis-server]
    max: 2
    count: 2
    ready: {tcp: 6380}
  b:
    command: [celery, worker]
    max: 2
    after: [a]
""")
    assert states(h) == {"a/0": "starting", "a/1": "starting"}    # b not spawned
    assert h.sup.processes()["b"]["waiting_for"] == ["a"]
    assert h.sup.processes()["a"]["waiting_for"] == []
    (w,) = [e for e in h.events_named("processes.waiting") if e["process"] == "b"]
    assert w["awaits"] == ["a"]
    await h.advance(5.0)
    assert "b/0" not in states(h)
    h.runner.listening.add(("127.0.0.1", 6380))
    await h.advance(0.5)
    assert states(h)["a/0"] == "running" and states(h)["b/0"] == "starting"
    assert h.sup.processes()["b"]["waiting_for"] == []
    released = h.events_named("processes.released")
    assert [e["process"] for e in released] == ["a", "b"] and released[1]["waited"] >= 5.0
    # the order holds the first start only: a crash of a does not stop or hold b
    await h.advance(1.0)
    h.runner.exit_proc(h.runner.worker("comp/a/0"), -9)
    h.runner.exit_proc(h.runner.worker("comp/b/0"), -9)
    await h.settle()
    assert states(h)["b/0"] == "starting" and states(h)["a/0"] == "starting"


@component
async def test_requires_holds_a_type_says_so_every_10s_then_starts_once_the_address_accepts(tmp_path):
    h = await up(tmp_path, """
processes:
  worker:
    command: [rq, worker]
    max: 2
    requires: ["tcp://127.0.0.1:6379"]
""")
    assert states(h) == {}
    snap = h.sup.processes()["worker"]
    assert snap["waiting_for"] == ["tcp://127.0.0.1:6379"] and snap["instances"] == []
    await h.advance(25.0)
    waits = h.events_named("processes.waiting")
    assert [round(e["waited"]) for e in waits] == [0, 10, 20]   # re-said every 10 s, not per probe
    assert waits[0]["awaits"] == ["tcp://127.0.0.1:6379"] and waits[0]["process"] == "worker"
    assert tcp_checks(h, 6379) >= 40                          # connected to about every 0.5 s
    assert h.runner.workers_alive() == []
    shown = cli.render_workers({"worker": h.sup.processes()["worker"]})
    assert shown.splitlines()[0] == "worker (worker): 0/1 running, waiting for tcp://127.0.0.1:6379"
    h.runner.listening.add(REDIS)
    await h.advance(0.5)
    assert h.runner.workers_alive() == ["comp/worker/0"]
    assert h.events_named("processes.released")[0]["requires"] == ["tcp://127.0.0.1:6379"]
    assert h.sup.processes()["worker"]["waiting_for"] == []
    # the address going down later holds nothing: a crash restarts at once
    h.runner.listening.discard(REDIS)
    await h.advance(1.0)
    h.runner.exit_proc(h.runner.worker("comp/worker/0"), -9)
    await h.settle()
    assert h.runner.workers_alive() == ["comp/worker/0"]


@component
async def test_the_default_waits_for_the_web_fleet_and_after_empty_starts_at_once(tmp_path):
    h = Harness(tmp_path, """
processes:
  early: {command: [early], after: [], max: 2}
  late: {command: [late], max: 2}
""")
    for port in (8001, 8002):   # the web fleet never gets ready
        h.runner.answers[port] = ProbeResult(503, "HTTP 503")
    for d in (h.rec.state_dir, h.rec.log_dir):
        d.mkdir(parents=True, exist_ok=True)
    h.sup.workers.load()
    h.sup.workers.begin()       # what the supervisor does at start, the web fleet not ready
    await h.settle()
    await h.advance(2.0)
    assert not h.rec.ready_event.is_set()
    assert states(h) == {"early/0": "running"}
    assert h.sup.processes()["late"]["waiting_for"] == ["web"]
    h.runner.answers.clear()
    for _ in range(40):
        if h.rec.ready_event.is_set():
            break
        await h.advance(0.5)
    await h.settle()
    assert h.rec.ready_event.is_set() and states(h)["late/0"] == "starting"


@component
async def test_a_job_whose_requirement_is_down_skips_its_due_runs_saying_why(tmp_path):
    h = await up(tmp_path, """
processes:
  report:
    kind: job
    command: [python, report.py]
    every: 10s
    requires: ["tcp://127.0.0.1:6379", "tcp://127.0.0.1:27017"]
""")
    h.runner.listening.add(("127.0.0.1", 27017))
    await h.advance(25.0)
    skipped = h.events_named("job.skipped")
    assert len(skipped) == 2 and h.events_named("job.started") == []
    assert skipped[0]["reason"] == "requires tcp://127.0.0.1:6379 (connection refused)"
    assert h.sup.processes()["report"]["waiting_for"] == ["tcp://127.0.0.1:6379"]
    h.runner.listening.add(REDIS)
    await h.advance(10.0)
    assert len(h.events_named("job.started")) == 1 and len(h.events_named("job.skipped")) == 2
    assert h.sup.processes()["report"]["waiting_for"] == []
