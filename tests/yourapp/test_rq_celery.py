"""docs/processes.md's worker examples under a real daemon, with real RQ, real Celery and a real
Redis on a free loopback port: the Flask + RQ app and the Django + Celery project are written
from the doc's code blocks and run from the doc's spec (the test's ports and folders put in), so
the doc shows what runs here.

Each test sends a stream of jobs through the app's own web view, kills one worker's main process
with SIGKILL in the middle (its pid from GET /processes), checks that the daemon replaces it and
that every job was done in the end. What a kill -9 does to the job in flight is each queue's
own semantics (docs/processes.md says which): the tests count the jobs that ran twice and print
it, and never assert there were none (at-least-once)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from support.harness import free_port_block, http_get
from support.process_types import marked, pids, processes, running, wait_processes  # noqa: F401
from support.needs import module, redis_tools
from support.redis_servers import Node, _server_args, command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DOC = Path(__file__).resolve().parents[2] / "docs" / "processes.md"
DOC_REDIS = "redis://127.0.0.1:6379/0"       # what the doc's examples name; the test's port is put in


def doc_block(language: str, filename: str) -> str:
    """The ```language block of docs/processes.md whose first line is `# <filename>`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)
    [text] = [b for b in blocks if b.startswith(f"# {filename}\n")]
    return text


def write_from_doc(root: Path, *filenames: str) -> None:
    for name in filenames:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc_block("python", name))


def doc_spec(filename: str, redis_url: str) -> dict:
    """The doc's spec with the test's Redis in place of the doc's."""
    text = doc_block("yaml", filename)
    assert DOC_REDIS in text
    return yaml.safe_load(text.replace(DOC_REDIS, redis_url))




@pytest.fixture
def redis_port(tmp_path):
    """A real redis-server on a free loopback port, ended by pid afterwards (also on failure)."""
    redis_tools()
    port = free_port_block(1)
    node = Node(port, tmp_path / "redis", _server_args(port, []))
    node.start()
    try:
        node.wait_ready()
        yield port
    finally:
        node.stop()


@pytest.fixture
def fleet_names():
    """Fleet names whose left-over worker processes (a work-horse orphaned by the kill, a pool
    child) are SIGKILLed by pid at the end, after the daemon's own cleanup."""
    names: list[str] = []
    yield names
    for _ in range(2):
        for name in names:
            for pid in marked(name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.2)


def fleet_from_doc(make_daemon, tmp_path: Path, spec: dict, app_dir: Path, names: list[str]):
    d = make_daemon(nginx=False)
    names.append(d.name)
    spec["name"] = d.name
    spec["app"]["directory"] = str(app_dir)
    spec["app"]["python"] = sys.executable
    spec["instances"] = {"count": 1, "min": 1, "max": 2, "base_port": d.base_port}
    spec["api"] = {"port": d.api_port}
    spec["paths"] = d.spec["paths"]
    spec["nginx"] = {"mode": "off"}
    spec["health"] = {**spec.get("health", {}), "interval": 0.5}
    d.spec = spec
    d.write_spec()
    return d










def post(port: int, path: str, fields: dict) -> int:
    data = urllib.parse.urlencode(fields).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data),
                                    timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class Poster(threading.Thread):
    def __init__(self, port: int, path: str, field: str, values: list[str]):
        super().__init__(daemon=True)
        self.port, self.path, self.field, self.values = port, path, field, values
        self.statuses: list[int] = []

    def run(self):
        for v in self.values:
            self.statuses.append(post(self.port, self.path, {self.field: v}))


def post_all(port: int, path: str, field: str, values: list[str], threads: int = 2) -> list[Poster]:
    """POSTs every value from `threads` threads at once (a backlog builds up on the queue)."""
    posters = [Poster(port, path, field, values[i::threads]) for i in range(threads)]
    for p in posters:
        p.start()
    return posters


def redis_int(port: int, *args: str) -> int:
    out = command(port, *args).strip()
    return int(out or 0)


def redis_members(port: int, key: str) -> set[str]:
    return set(command(port, "SMEMBERS", key, timeout=5).split())


def wait_for_value(fn, want, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    got = fn()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = fn()
    return got


# ---- Flask + RQ -------------------------------------------------------------------------------

def test_flask_rq_a_stream_of_jobs_survives_kill_9_of_an_rq_worker(make_daemon, tmp_path, redis_port,
                                                                   fleet_names):
    module("rq")
    url = f"redis://127.0.0.1:{redis_port}/0"
    app_dir = tmp_path / "srv-rqapp"
    write_from_doc(app_dir, "rqapp/__init__.py", "rqapp/tasks.py")
    spec = doc_spec("rq-fleet.yaml", url)
    assert spec["processes"]["worker"] == {"command": ["rq", "worker", "--url", url, "default"], "count": 2}
    d = fleet_from_doc(make_daemon, tmp_path, spec, app_dir, fleet_names).start()
    body = wait_processes(d, lambda b: running(b, "worker", 2), what="2 RQ workers running", timeout=30)
    before = pids(body, "worker")
    web = d.fleet()["instances"][0]["port"]
    assert http_get(web, "/")[0] == 200

    n = 300
    orders = [f"o{i}" for i in range(n)]
    posting = post_all(web, "/orders", "order", orders)
    # in the middle of the stream, while worker 0's work-horse runs a job
    wait_for_value(lambda: redis_int(redis_port, "SCARD", "shipped") >= n // 3, True, timeout=30,
                   what="a third shipped")
    rq = module("rq")
    conn = module("redis").Redis(port=redis_port)
    deadline = time.monotonic() + 10
    in_flight, horses = None, []
    while not (in_flight and horses) and time.monotonic() < deadline:
        w = next((w for w in rq.Worker.all(connection=conn) if w.pid == before[0]), None)
        in_flight = w and w.get_current_job_id()
        horses = [c.pid for c in psutil.Process(before[0]).children()]
    assert in_flight and horses, "worker 0 never seen running a job in a work-horse"
    os.kill(before[0], signal.SIGKILL)
    killed_at = time.monotonic()
    shipped_at_kill = redis_int(redis_port, "SCARD", "shipped")
    body = wait_processes(d, lambda b: running(b, "worker", 2) and pids(b, "worker")[0] != before[0],
                          what="the killed RQ worker replaced", timeout=30)
    replaced_in = time.monotonic() - killed_at
    assert pids(body, "worker")[1] == before[1], "the other worker was left alone"
    assert body["worker"]["instances"][0]["restarts"] == 1

    # then kill -9 of worker 1's work-horse in the middle of a job (the OOM killer's way):
    # its worker sees the horse die and fails the job, which Retry(max=3) puts back at once
    wait_for_value(lambda: redis_int(redis_port, "SCARD", "shipped") >= 2 * n // 3, True, timeout=30,
                   what="two thirds shipped")
    worker1_log = tmp_path / "log" / f"{d.name}-worker-1.log"
    horse_job = horse = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "terminated unexpectedly" not in worker1_log.read_text():
        # the job's work-horse, caught while it runs (a try that comes too late is tried again)
        w = next((w for w in rq.Worker.all(connection=conn) if w.pid == before[1]), None)
        job_id = w and w.get_current_job_id()
        kids = psutil.Process(before[1]).children()
        if job_id and kids:
            try:
                os.kill(kids[0].pid, signal.SIGKILL)
                horse_job, horse = job_id, kids[0].pid
            except ProcessLookupError:
                pass
            time.sleep(0.3)
    failed = re.search(r"job (\S+) failed \(Work-horse terminated unexpectedly", worker1_log.read_text())
    assert horse and failed, "no work-horse killed mid-job"
    horse_job = failed.group(1)

    for t in posting:
        t.join(60)
    statuses = [s for t in posting for s in t.statuses]
    assert statuses == [202] * n, sorted(set(statuses))
    done = wait_for_value(lambda: len(redis_members(redis_port, "shipped")), n, timeout=30,
                          what="every order shipped")
    missing = set(orders) - redis_members(redis_port, "shipped")
    runs = command(redis_port, "LRANGE", "ship-runs", "0", "-1", timeout=5).split()
    twice = sorted({o for o in runs if runs.count(o) > 1})
    print(f"RQ: {n} jobs, worker 0 SIGKILLed with {shipped_at_kill} shipped and {in_flight} in its "
          f"work-horse {horses}, replaced in {replaced_in:.1f} s; {done} shipped, {len(runs)} runs, "
          f"ran twice: {twice or 'none'}; missing: {sorted(missing) or 'none'}; "
          f"{in_flight}: {rq.job.Job.fetch(in_flight, connection=conn).get_status()}; "
          f"work-horse {horse} of worker 1 SIGKILLed running {horse_job}: "
          f"{rq.job.Job.fetch(horse_job, connection=conn).get_status()}, "
          f"ran {runs.count(horse_job.removeprefix('ship-'))} times")
    assert not missing, f"{len(missing)} jobs lost: {sorted(missing)[:20]}"
    assert runs.count(in_flight.removeprefix("ship-")) == 1, "the orphaned work-horse ran it, once"
    assert pids(processes(d), "worker") == pids(body, "worker"), "a dead work-horse restarts no worker"
    assert module("rq.registry").FailedJobRegistry(queue=rq.Queue("default", connection=conn)).count == 0


# ---- Django + Celery --------------------------------------------------------------------------

APPENDED = ("proj/settings.py", "proj/urls.py")   # the doc's blocks added to the generated files


def unacked_orders(port: int) -> list[str]:
    """The orders of the messages a Celery worker holds unacked in kombu's `unacked` hash:
    each value is [message, exchange, routing key], the message's body the task's
    [args, kwargs, embed] in base64 JSON."""
    import base64
    import json
    values = module("redis").Redis(port=port).hvals("unacked")
    return sorted(json.loads(base64.b64decode(json.loads(v)[0]["body"]))[0][0] for v in values)


def write_celery_project(root: Path) -> Path:
    """`django-admin startproject proj`, then the doc's files: proj/celery.py, proj/__init__.py,
    the app `shop` (its tasks and the management command), settings and urls added at the end."""
    root.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "django", "startproject", "proj", str(root)],
                   check=True, capture_output=True, timeout=60)
    write_from_doc(root, "proj/celery.py", "proj/__init__.py", "shop/tasks.py",
                   "shop/management/commands/tick.py")
    for pkg in ("shop", "shop/management", "shop/management/commands"):
        (root / pkg / "__init__.py").touch()
    for name in APPENDED:
        path = root / name
        path.write_text(path.read_text() + "\n" + doc_block("python", name))
    return root


def test_django_celery_tasks_survive_kill_9_of_the_worker_and_the_job_runs_every_2s(
        make_daemon, tmp_path, redis_port, fleet_names):
    module("celery")
    url = f"redis://127.0.0.1:{redis_port}/0"
    app_dir = write_celery_project(tmp_path / "srv-proj")
    spec = doc_spec("celery-fleet.yaml", url)
    assert spec["processes"] == {
        "celery": {"command": ["celery", "-A", "proj", "worker", "--concurrency", 2, "--loglevel", "info"],
                   "count": 1, "stop_signal": "TERM", "graceful_timeout": 30},
        "tick": {"kind": "job", "every": "2s", "command": ["python", "manage.py", "tick"]}}
    d = fleet_from_doc(make_daemon, tmp_path, spec, app_dir, fleet_names).start()
    started = time.monotonic()
    body = wait_processes(d, lambda b: running(b, "celery", 1), what="the Celery worker running", timeout=30)
    main = pids(body, "celery")[0]
    web = d.fleet()["instances"][0]["port"]
    assert http_get(web, "/health")[0] == 200
    celery_log = tmp_path / "log" / f"{d.name}-celery-0.log"
    wait_for_value(lambda: "ready." in celery_log.read_text(errors="replace"), True, timeout=30,
                   what="celery ready")

    # a first task through the view, done
    assert post(web, "/orders", {"order": "first"}) == 202
    assert wait_for_value(lambda: "first" in redis_members(redis_port, "shipped"), True, timeout=20,
                          what="the first task done"), celery_log.read_text()[-3000:]

    n = 300
    orders = [f"o{i}" for i in range(n)]
    posting = post_all(web, "/orders", "order", orders)
    wait_for_value(lambda: redis_int(redis_port, "SCARD", "shipped") >= n // 3, True, timeout=30,
                   what="a third shipped")
    pool = [c.pid for c in psutil.Process(main).children()]
    os.kill(main, signal.SIGKILL)     # the main process: its pool goes with its process group
    killed_at = time.monotonic()
    shipped_at_kill = redis_int(redis_port, "SCARD", "shipped")
    unacked_after = unacked_orders(redis_port)   # the killed worker's, before a new one takes any
    body = wait_processes(d, lambda b: running(b, "celery", 1) and pids(b, "celery")[0] != main,
                          what="the killed Celery worker replaced", timeout=30)
    replaced_in = time.monotonic() - killed_at
    assert body["celery"]["instances"][0]["restarts"] == 1
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in pool), "the killed worker's pool processes were ended with its group"

    for t in posting:
        t.join(60)
    statuses = [s for t in posting for s in t.statuses]
    assert statuses == [202] * n, sorted(set(statuses))
    # the killed worker's unacked messages come back after the visibility_timeout (10 s)
    done = wait_for_value(lambda: len(redis_members(redis_port, "shipped")), n + 1, timeout=40,
                          what="every order shipped")
    all_done_in = time.monotonic() - killed_at
    missing = set(orders) - redis_members(redis_port, "shipped")
    runs = command(redis_port, "LRANGE", "ship-runs", "0", "-1", timeout=5).split()
    twice = sorted({o for o in runs if runs.count(o) > 1})
    print(f"Celery: {n} tasks, the worker's main process SIGKILLed with {shipped_at_kill} shipped "
          f"and {unacked_after} unacked in its hands, replaced in "
          f"{replaced_in:.1f} s, every order shipped {all_done_in:.1f} s after the kill; "
          f"{done - 1} shipped, {len(runs) - 1} runs, ran twice ({len(twice)}): {twice or 'none'}; "
          f"missing: {sorted(missing) or 'none'}")
    assert not missing, f"{len(missing)} tasks lost: {sorted(missing)[:20]}"
    assert unacked_orders(redis_port) == [], "the killed worker's messages were restored and acked"

    # the job: `python manage.py tick` every 2 s, each run a line in its log
    def tick_runs():
        status, body = d.api("GET", "/jobs/tick/runs")
        assert status == 200, body
        return [r for r in body["runs"] if r["outcome"] == "succeeded"]
    wait_for_value(lambda: len(tick_runs()) >= 5, True, timeout=15, what="5 runs of tick")
    ran_for = time.monotonic() - started
    succeeded = tick_runs()
    ticks = [line for line in (tmp_path / "log" / f"{d.name}-job-tick.log").read_text().splitlines()
             if line.startswith("tick ") and f" {d.name}/tick/" in line]
    print(f"tick: {len(succeeded)} runs succeeded in {ran_for:.0f} s, {len(ticks)} lines")
    assert len(succeeded) >= max(5, ran_for / 2 - 4), succeeded   # every 2 s from the fleet's ready
    assert len(ticks) >= len(succeeded)
