"""A burst of queued jobs drained by a worker type autoscaled on its queue's depth vs a fixed
single worker (`scripts/bench-queue`), in the same run on the same machine.

One redis-server on a free loopback port (tests/support/redis_servers.py), then for each setup a
real daemon (tests/support/harness.py, nginx off) whose `processes.worker` type takes the
queue: with `rq` installed, real RQ jobs (`rq worker -w rq.worker.SimpleWorker`, each job a
`time.sleep(--job-seconds)` in bench_queue_jobs.py); without it, RQ-style items on the list
`rq:queue:default` popped by a small BLPOP loop that sleeps the same per item. `--items` are
enqueued at once and the drain time is the time until every one is done (RQ's finished
registry, or the loop's counter in Redis). The autoscaled type keeps the product's defaults for
the scale-up policies (+4 processes or +100 % per 15 s, the HPA's) with `target` items per
process, `interval` 2 s and a 15 s scale-down window, so the run ends soon. Everything is
stopped by pid at the end, also after an error. About 3 minutes with the defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.util import machine_line, write_section
from support.harness import Daemon, free_port_block
from support.redis_servers import Node, _server_args, missing_tools

BEGIN, END = "<!-- queue-figures:begin -->", "<!-- queue-figures:end -->"
KEY = "rq:queue:default"
DONE = "bench:queue:done"
JOBS = textwrap.dedent("""\
    import time

    def work(seconds):
        time.sleep(seconds)
""")
LOOP = textwrap.dedent("""\
    import sys, time
    import redis
    r = redis.Redis.from_url(sys.argv[1])
    seconds = float(sys.argv[2])
    while True:
        item = r.blpop([sys.argv[3]], timeout=1)
        if item is not None:
            time.sleep(seconds)
            r.incr(sys.argv[4])
""")


def have_rq() -> bool:
    try:
        import rq  # noqa: F401
        return True
    except ImportError:
        return False


def worker_type(mode: str, url: str, folder: Path, job_seconds: float) -> dict:
    if mode == "rq":
        command = [sys.executable, "-m", "rq.cli", "worker", "--url", url, "-w",
                   "rq.worker.SimpleWorker", "--quiet", "default"]
    else:
        command = [sys.executable, str(folder / "loop.py"), url, str(job_seconds), KEY, DONE]
    return {"command": command, "directory": str(folder), "count": 1, "min": 0, "max": 8,
            "graceful_timeout": 10, "start_seconds": 0.5}


def enqueue(mode: str, url: str, n: int, job_seconds: float) -> None:
    import redis
    r = redis.Redis.from_url(url)
    if mode == "rq":
        from rq import Queue
        q = Queue("default", connection=r)
        with r.pipeline() as pipe:
            for _ in range(n):
                q.enqueue("bench_queue_jobs.work", job_seconds, pipeline=pipe)
            pipe.execute()
    else:
        r.rpush(KEY, *[json.dumps({"id": i}) for i in range(n)])


def done_count(mode: str, url: str) -> int:
    import redis
    r = redis.Redis.from_url(url)
    if mode == "rq":
        from rq import Queue
        from rq.registry import FinishedJobRegistry
        return FinishedJobRegistry(queue=Queue("default", connection=r)).count
    return int(r.get(DONE) or 0)


def measure(name: str, tmp: Path, mode: str, url: str, items: int, job_seconds: float,
            autoscale: dict | None, timeout: float) -> dict:
    import redis
    r = redis.Redis.from_url(url)
    r.flushdb()
    folder = tmp / "jobs"
    t = worker_type(mode, url, folder, job_seconds)
    if autoscale:
        t["autoscale"] = autoscale
    (tmp / name).mkdir(exist_ok=True)
    d = Daemon(tmp / name, {"instances": {"count": 1, "min": 1, "max": 2},
                            "gunicorn": {"workers": 1}, "processes": {"worker": t}}, nginx=False)
    try:
        d.start()
        wait(d, lambda w: w["ready"] == 1, 30, "one worker running")
        enqueue(mode, url, items, job_seconds)
        t0 = time.monotonic()
        peak, at_peak, series = 1, None, []
        while True:
            w = processes(d)
            now = time.monotonic() - t0
            if w["desired"] > peak:
                peak, at_peak = w["desired"], now
            series.append((round(now, 1), w["desired"], r.llen(KEY)))
            if done_count(mode, url) >= items:
                drained = now
                break
            if now > timeout:
                raise RuntimeError(f"{name}: {done_count(mode, url)} of {items} done after {timeout:g}s")
            time.sleep(0.25)
        back = None
        if autoscale:
            wait(d, lambda w: w["desired"] == autoscale.get("min", 1), 60, "back down")
            back = time.monotonic() - t0
        return {"setup": name, "drain_seconds": round(drained, 1), "peak": peak,
                "peak_at": None if at_peak is None else round(at_peak, 1),
                "back_down_at": None if back is None else round(back, 1)}
    finally:
        d.cleanup()


def processes(d: Daemon) -> dict:
    status, body = d.api("GET", "/processes")
    if status != 200:
        raise RuntimeError(f"GET /processes: {status} {body}")
    return body["worker"]


def wait(d: Daemon, cond, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w = processes(d)
        if cond(w):
            return w
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}\n{d.log_tail()}")


def render(results: list[dict], args, mode: str, machine: str, command: str, autoscale: dict) -> str:
    fixed = next(x for x in results if x["setup"] == "fixed")
    auto = next(x for x in results if x["setup"] == "autoscaled")
    what = ("real RQ jobs (rq worker, SimpleWorker)" if mode == "rq"
            else "RQ-style list items (a BLPOP loop)")
    lines = [BEGIN, f"## Scaling on queue depth (`{command}`)", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine}.", "",
             f"A burst of {args.items:,} {what}, each {args.job_seconds:g} s of work, enqueued at once "
             f"on `{KEY}` of one redis-server on 127.0.0.1; the same daemon and worker command in "
             "both rows, run one after the other. Autoscaled: `processes.worker.autoscale: "
             + json.dumps({k: v for k, v in autoscale.items() if k != "queue"})
             + "` (the HPA's default scale-up policies: +4 processes or +100 % per 15 s), max 8.", "",
             "| setup | drain time | processes at most | reached at | back to 1 at |",
             "| --- | --- | --- | --- | --- |"]
    def sec(v) -> str:
        return "-" if v is None else f"{v:.1f} s"
    for x in (fixed, auto):
        label = "fixed at 1 process" if x["setup"] == "fixed" else "autoscaled 1..8"
        lines.append(f"| {label} | {sec(x['drain_seconds'])} | {x['peak']} | {sec(x['peak_at'])} | "
                     f"{sec(x['back_down_at'])} |")
    lines += ["", f"The autoscaled type drained the burst {fixed['drain_seconds'] / auto['drain_seconds']:.1f}x "
              "faster; the times count from the enqueue.", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench-queue", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--job-seconds", type=float, default=0.1)
    p.add_argument("--target", type=float, default=50, help="autoscale.target: items per process")
    p.add_argument("--mode", choices=("rq", "list", "auto"), default="auto",
                   help="rq: real RQ jobs; list: RQ-style list items; auto: rq when installed")
    p.add_argument("--timeout", type=float, default=240, help="most seconds one drain may take")
    p.add_argument("--write", metavar="DOC", help="put the section into this document (docs/benchmarks.md)")
    args = p.parse_args(argv)
    if missing_tools():
        print(f"needs {', '.join(missing_tools())} (scripts/setup installs them)", file=sys.stderr)
        return 2
    mode = args.mode if args.mode != "auto" else ("rq" if have_rq() else "list")
    machine = machine_line()
    command = "scripts/bench-queue " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="ultrascale-bench-queue-") as tmp_s:
        tmp = Path(tmp_s)
        folder = tmp / "jobs"
        folder.mkdir()
        (folder / "bench_queue_jobs.py").write_text(JOBS)
        (folder / "loop.py").write_text(LOOP)
        port = free_port_block(1)
        node = Node(port, tmp / "redis", _server_args(port, []))
        node.start()
        try:
            node.wait_ready()
            url = f"redis://127.0.0.1:{port}/0"
            autoscale = {"queue": {"redis": url, "rq": "default"}, "target": args.target, "min": 1,
                         "interval": 2, "behavior": {"scale_down": {"stabilization_window_seconds": 15}}}
            results = []
            for name, a in (("fixed", None), ("autoscaled", autoscale)):
                print(f"{name}: {args.items} items of {args.job_seconds:g} s ({mode}) ...", file=sys.stderr)
                results.append(measure(name, tmp, mode, url, args.items, args.job_seconds, a, args.timeout))
                print(f"  {results[-1]}", file=sys.stderr)
        finally:
            node.stop()
    md = render(results, args, mode, machine, command.strip(), autoscale)
    print(md)
    if args.write:
        write_section(args.write, md, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
