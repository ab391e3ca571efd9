"""A start judged on its first clear signal (core/boot_log.py's rule, applied by the reconciler
with the fake runner and clock): HTTP 500 from the health path, repeated, with a traceback in
the instance's log since that master started, fails the start at once; a 500 without one waits
for start_timeout; every failed start quotes the traceback's exception line. Real gunicorn:
tests/deploy/test_fail_fast_real.py."""
from __future__ import annotations

import asyncio
import functools

from fakes import Harness
from ultrascaled.core.boot_log import FAIL_FAST_500S
from ultrascaled.core.seams import ProbeResult
from ultrascaled.effects import releases

IMPORT_ERROR = "ImportError: cannot import name 'missing_view' from 'polls.views' (/srv/app/polls/views.py)"
HTTP_500 = ProbeResult(500, "HTTP 500")


def component(fn):
    @functools.wraps(fn)
    def wrapper(tmp_path, *a, **kw):
        return asyncio.run(fn(tmp_path, *a, **kw))
    return wrapper


def traceback(pid: int, exception: str = IMPORT_ERROR) -> str:
    return (f"[2026-12-07 12:00:01 +0000] [{pid}] [ERROR] Error handling request /health\n"
            "Traceback (most recent call last):\n"
            '  File "/srv/app/wsgi.py", line 9, in application\n'
            "    from polls.views import missing_view\n"
            f"{exception}\n")


def log_of(h: Harness, port: int):
    return h.rec.log_path(port)


def append(path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


@component
async def test_repeated_500s_with_a_traceback_since_the_start_fail_the_start_at_once(tmp_path):
    h = Harness(tmp_path)   # health.start_timeout: 30
    path = log_of(h, 8001)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = traceback(50, "KeyError: 'from a start before this one'")
    path.write_text(old)
    h.runner.log_sizes[str(path)] = len(old)      # what the log held before the master started
    h.runner.answers[8001] = HTTP_500
    await h.start()
    await h.advance(5, step=0.05)
    inst = h.rec.instances[8001]
    assert h.states()[8001] == "starting" and inst.http_500s > FAIL_FAST_500S, \
        "500s and only an older start's traceback: wait (an app may answer 500 while warming up)"
    assert not h.events_named("instance.killed")
    append(path, traceback(inst.pid + 1))          # its worker raises on the health path
    await h.advance(1, step=0.05)                    # the next probe (they slow to 0.1 x the time waited)
    killed = h.events_named("instance.killed")
    assert killed and killed[0]["reason"].endswith(IMPORT_ERROR), killed
    assert "not ready after" not in killed[0]["reason"] and "HTTP 500" in killed[0]["reason"]
    backoff = [e for e in h.events_named("instance.state") if e["port"] == 8001 and e["new"] == "backoff"]
    assert backoff and IMPORT_ERROR in backoff[0]["reason"] and "start failure 1 of 5" in backoff[0]["reason"]
    assert backoff[0]["reason"].count(IMPORT_ERROR) == 1, "quoted once"
    assert h.clock.t < 1000 + 30
    # today's policy: backoff, then FATAL after restart.fatal_crashes failed starts, each quoting it
    await h.advance(150, step=0.25)
    assert inst.state.value == "fatal" and IMPORT_ERROR in inst.reason and inst.reason.count(IMPORT_ERROR) == 1, \
        inst.reason
    assert "failed to start 5 times in a row" in inst.reason and inst.since < 1000 + 30, "each start judged at once"
    row = next(i for i in h.sup.snapshot()["instances"] if i["port"] == 8001)
    assert IMPORT_ERROR in row["reason"], row
    assert h.states()[8002] == "running"


@component
async def test_500s_without_a_traceback_wait_for_start_timeout(tmp_path):
    h = Harness(tmp_path)
    h.runner.answers[8001] = HTTP_500
    await h.start()
    await h.advance(29.5, step=0.25)
    assert h.states()[8001] == "starting" and not h.events_named("instance.killed")
    await h.advance(1, step=0.25)
    killed = h.events_named("instance.killed")
    assert [k["reason"] for k in killed] == ["not ready after 30s (last probe: HTTP 500)"]


@component
async def test_a_start_timeout_quotes_the_traceback_its_log_has(tmp_path):
    h = Harness(tmp_path)
    h.runner.answers[8001] = ProbeResult(None, "connection refused")
    await h.start()
    append(log_of(h, 8001), traceback(h.rec.instances[8001].pid + 1) + "[2026-12-07 12:00:02 +0000] [7] [INFO] "
                                                                         "Worker exiting (pid: 7)\n")
    await h.advance(31, step=0.25)
    killed = h.events_named("instance.killed")
    assert [k["reason"] for k in killed] == [f"not ready after 30s (last probe: connection refused): {IMPORT_ERROR}"]
    backoff = [e for e in h.events_named("instance.state") if e["port"] == 8001 and e["new"] == "backoff"]
    assert backoff[0]["reason"].count(IMPORT_ERROR) == 1, backoff[0]["reason"]


@component
async def test_an_exit_at_boot_quotes_the_traceback_its_log_has(tmp_path):
    h = Harness(tmp_path)
    h.runner.answers[8001] = ProbeResult(None, "connection refused")
    await h.start()
    append(log_of(h, 8001), "[2026-12-07 12:00:01 +0000] [9] [ERROR] Exception in worker process\n"
           "Traceback (most recent call last):\n  File \"/srv/app/app.py\", line 3\n    def broken(:\n"
           "               ^\nSyntaxError: invalid syntax\n"
           "[2026-12-07 12:00:01 +0000] [9] [INFO] Worker exiting (pid: 9)\n")
    h.runner.exit(8001, 1)
    await h.settle()
    backoff = [e for e in h.events_named("instance.state") if e["port"] == 8001 and e["new"] == "backoff"]
    assert [e["reason"] for e in backoff] == ["exit 1; start failure 1 of 5: SyntaxError: invalid syntax"]


async def canary_up(tmp_path) -> tuple[Harness, str]:
    h = Harness(tmp_path, "deploy: {soak_seconds: 600}")
    await h.start()
    await h.sample()     # the serving masters' workers are known
    src = tmp_path / "src-bad"
    src.mkdir()
    (src / "wsgi.py").write_text("broken = True\n")
    return h, releases.create(h.spec, str(src))


async def drive(h: Harness, seconds: float, until=lambda: False, step: float = 0.05) -> None:
    end = h.clock.t + seconds
    while h.clock.t < end and not until():
        h.sup.deployer.tick()
        await h.advance(step, step=step)
    h.sup.deployer.tick()


@component
async def test_a_canary_answering_500_with_a_traceback_is_rolled_back_at_once_quoting_it(tmp_path):
    h, rid = await canary_up(tmp_path)
    old = h.rec.instances[8001]
    old_pid, old_worker = old.pid, old.workers[0].pid
    h.runner.answers[8001] = HTTP_500     # the replacement's private probe answers 500 ...
    await h.sup.deploy(release=rid)
    await drive(h, 2, until=lambda: h.rec.instances[8001].successor is not None)
    s = h.rec.instances[8001].successor
    assert s is not None and s.release == rid
    append(log_of(h, 8001), traceback(old_worker, "KeyError: 'an old route'"))   # the serving master's
    await drive(h, 3)
    assert h.rec.instances[8001].successor is s and s.http_500s >= FAIL_FAST_500S and not s.boot_error, \
        "a traceback of the serving master's worker is not the replacement's"
    append(log_of(h, 8001), traceback(s.handle.pid + 1))   # ... and its worker's traceback is in the log
    await drive(h, 30, until=lambda: h.sup.deployer.rollout is None)
    assert h.clock.t < h.rec.instances[8001].since + 30, "judged before start_timeout"
    failed = h.events_named("deploy.failed")
    assert len(failed) == 1 and failed[0]["figure"] == "boot", failed
    assert failed[0]["reason"].endswith(IMPORT_ERROR) and "not ready after" not in failed[0]["reason"]
    assert failed[0]["reason"].count(IMPORT_ERROR) == 1
    assert h.events_named("deploy.rolled_back")
    assert IMPORT_ERROR in h.alerts()["deploy_failed"]["message"]
    assert IMPORT_ERROR in h.sup.deployer.describe()["last_outcome"]["detail"]
    assert h.rec.instances[8001].pid == old_pid and h.states() == {8001: "running", 8002: "running"}
