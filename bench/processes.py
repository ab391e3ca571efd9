"""Process types measured (issue 22), each side by side in one run:

  deploy      a stream of RQ jobs (real rq, real Redis) consumed by a worker type of 2 while
              `ultrascalectl deploy` rolls the fleet to a new release (the web canary, then the
              workers one at a time with RQ's warm shutdown on SIGTERM), against the same stream
              with no deploy: jobs enqueued, done, lost (goal 0) and run twice (reported)
  idle        the daemon's own CPU and RSS, idle, with 4 web instances plus 4 worker processes,
              against 4 web instances alone

Each job records its number in a Redis set and counts its runs in a hash, so a job lost or run
twice shows in the counts. Only 127.0.0.1, bounded in time.

    python -m bench processes [--only deploy|idle] [--seconds 20] [--write]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.util import REPO, Tracker, log, machine_line, publish
from support.harness import Daemon, free_port_block
from support.redis_servers import Node, command

BEGIN, END = "<!-- process-types:begin -->", "<!-- process-types:end -->"


def redis_node(tmp: Path, tracker: Tracker) -> Node:
    port = free_port_block(1)
    node = Node(port, tmp / "redis", ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"])
    node.start()
    tracker.adopt(node.proc)
    node.wait_ready()
    return node


def deploy_stream(tmp: Path, tracker: Tracker, seconds: float, deploy: bool) -> dict:
    import redis
    from rq import Queue

    node = redis_node(tmp, tracker)
    url = f"redis://127.0.0.1:{node.port}/0"
    d = Daemon(tmp, {"instances": {"count": 2, "min": 1, "max": 4}, "gunicorn": {"workers": 1},
                     "deploy": {"soak_seconds": 3, "min_requests": 0},
                     "processes": {"worker": {"command": ["rq", "worker", "--url", url, "bench"], "count": 2,
                                              "graceful_timeout": 30, "env": {"BENCH_REDIS_URL": url}}}},
               nginx=False, span=8, tuned=False, name="bench-proc")
    d.env = tracker.env()
    r = redis.Redis.from_url(url)
    q = Queue("bench", connection=r)
    enqueued, stop = [0], threading.Event()

    def stream():
        while not stop.is_set():
            q.enqueue("bench.rq_job.record", enqueued[0])
            enqueued[0] += 1
            time.sleep(0.02)

    try:
        d.start()
        tracker.adopt(d.proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t = d.api("GET", "/processes")[1].get("worker", {})
            if t.get("ready") == 2:
                break
            time.sleep(0.2)
        feeder = threading.Thread(target=stream, daemon=True)
        started = time.monotonic()
        feeder.start()
        took = None
        if deploy:
            time.sleep(seconds / 4)
            t0 = time.monotonic()
            out = d.ctl("deploy", str(REPO), timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"deploy failed: {out.stdout}{out.stderr}")
            # the workers roll after the web fleet, one at a time: until both were stopped and run again
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                stops = [e for e in d.events("process.state") if e.get("process") == "worker"
                         and e.get("state") == "stopping"]
                if len(stops) >= 2 and d.api("GET", "/processes")[1]["worker"]["ready"] == 2:
                    break
                time.sleep(0.2)
            took = time.monotonic() - t0
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        stop.set()
        feeder.join(10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (q.count or r.scard("bench:done") < enqueued[0]):
            time.sleep(0.2)
        time.sleep(1.0)
        done = r.scard("bench:done")
        from rq.registry import FailedJobRegistry
        failed = len(FailedJobRegistry(queue=q))
        twice = sum(1 for v in r.hvals("bench:runs") if int(v) > 1)
        restarted = [e for e in d.events("process.state") if e.get("process") == "worker"
                     and e.get("state") == "stopping"]
    finally:
        stop.set()
        d.cleanup()
        node.terminate()
    return {"enqueued": enqueued[0], "done": done, "lost": enqueued[0] - done, "failed": failed, "twice": twice,
            "worker_stops": len(restarted), "deploy_s": took}


def daemon_cost(tmp: Path, tracker: Tracker, workers: int, seconds: float) -> dict:
    procs = {"processes": {"worker": {"command": [sys.executable, "-c", "import time; time.sleep(10**6)"],
                                      "count": workers}}} if workers else {}
    d = Daemon(tmp, {"instances": {"count": 4, "min": 1, "max": 8}, "gunicorn": {"workers": 1}, **procs},
               nginx=False, span=10, tuned=False, name=f"bench-idle{workers}")
    d.env = tracker.env()
    try:
        d.start()
        tracker.adopt(d.proc)
        deadline = time.monotonic() + 60
        while workers and time.monotonic() < deadline and \
                d.api("GET", "/processes")[1].get("worker", {}).get("ready") != workers:
            time.sleep(0.2)
        time.sleep(5.0)                                  # settled
        p = psutil.Process(d.proc.pid)
        c0, t0 = p.cpu_times(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = p.cpu_times(), time.monotonic()
        rss = p.memory_info().rss
    finally:
        d.cleanup()
    cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
    return {"cpu_percent": cpu, "rss_mib": rss / 2 ** 20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench-processes", description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=("deploy", "idle"))
    p.add_argument("--seconds", type=float, default=20.0, help="job stream / idle sample, 5..300 s (default 20)")
    p.add_argument("--write", action="store_true", help="put the tables into docs/benchmarks.md")
    args = p.parse_args(argv)
    if not 5 <= args.seconds <= 300:
        p.error("--seconds must be 5..300")
    command_line = "scripts/bench-processes " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [BEGIN, f"## Process types: jobs through a deploy, the daemon's idle cost (`{command_line.strip()}`)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine_line()}. "
             f"Command: `{command_line.strip()}`.", ""]
    tracker = Tracker()
    try:
        with tempfile.TemporaryDirectory(prefix="ultrascale-bench-processes-") as tmp:
            if args.only in (None, "deploy"):
                rows = []
                for deploy in (False, True):
                    sub = Path(tmp) / ("deploy" if deploy else "steady")
                    sub.mkdir()
                    rows.append((deploy, deploy_stream(sub, tracker, args.seconds, deploy)))
                    log(f"processes-bench deploy={deploy} {rows[-1][1]}")
                lines += ["RQ jobs (20 ms each, one every 20 ms) consumed by a worker type of 2, "
                          "with and without a deploy of the fleet in the stream:", "",
                          "| run | jobs enqueued | done | lost | of them failed | run twice | worker stops | deploy took |",
                          "|---|---:|---:|---:|---:|---:|---:|---:|"]
                for deploy, r in rows:
                    took = "-" if r["deploy_s"] is None else f"{r['deploy_s']:.1f} s"
                    lines.append(f"| {'deploy in the stream' if deploy else 'no deploy'} | {r['enqueued']:,} "
                                 f"| {r['done']:,} | {r['lost']} | {r['failed']} | {r['twice']} | {r['worker_stops']} | {took} |")
                lines.append("")
            if args.only in (None, "idle"):
                rows = []
                for workers in (0, 4):
                    sub = Path(tmp) / f"idle{workers}"
                    sub.mkdir()
                    rows.append((workers, daemon_cost(sub, tracker, workers, args.seconds)))
                    log(f"processes-bench idle workers={workers} {rows[-1][1]}")
                lines += [f"The daemon idle over {args.seconds:g} s (nginx off), its own process:", "",
                          "| fleet | daemon CPU | daemon RSS |", "|---|---:|---:|"]
                for workers, r in rows:
                    lines.append(f"| 4 web instances{f' + {workers} worker processes' if workers else ''} "
                                 f"| {r['cpu_percent']:.2f} % of a core | {r['rss_mib']:.1f} MiB |")
    finally:
        tracker.cleanup(grace=5)
    publish(lines, BEGIN, END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
