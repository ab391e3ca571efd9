"""The cost of the traffic log (issue 13): the daemon's CPU and memory, and nginx's CPU, with
`nginx.traffic_log` on (the default) and `off`, side by side in one run, idle and under the
built-in load tester through nginx. The two setups alternate round by round (off, on, then
on, off, ...) so that a busy neighbour on the machine weighs on both.

    scripts/bench-accesslog [--rounds 2] [--seconds 15] [--users 200] [--write docs/benchmarks.md]

Everything runs on 127.0.0.1, bounded in time; every process started is ended by pid.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import psutil

from bench.figures import machine, tmpdir
from bench.util import write_section
from loadtest import Config, run
from support.harness import Daemon

BEGIN, END = "<!-- accesslog-cost:begin -->", "<!-- accesslog-cost:end -->"


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def nginx_procs(d: Daemon) -> list[psutil.Process]:
    pid = d.nginx_pid()
    if not pid:
        return []
    master = psutil.Process(pid)
    return [master] + master.children()


def one(mode: str, seconds: float, users: int, idle_s: float) -> dict:
    spec = {"memory": {"sample_interval": 1.0}}
    if mode == "off":
        spec["nginx"] = {"traffic_log": "off"}
    d = Daemon(tmpdir(f"alcost-{mode}"), spec)
    try:
        d.start()
        daemon = psutil.Process(d.proc.pid)
        url = f"http://127.0.0.1:{d.nginx_port}/"
        time.sleep(2)
        c0, t0 = cpu_s([daemon]), time.monotonic()
        time.sleep(idle_s)
        idle_pct = 100 * (cpu_s([daemon]) - c0) / (time.monotonic() - t0)
        run(Config(url=url, users=users, duration=3, timeout=2.0))           # warm-up, not measured
        ng = nginx_procs(d)
        c0, n0, t0 = cpu_s([daemon]), cpu_s(ng), time.monotonic()
        r = run(Config(url=url, users=users, duration=seconds, timeout=2.0))
        time.sleep(1.5)                     # the reader catches up with the last lines
        wall = time.monotonic() - t0
        dc, nc = cpu_s([daemon]) - c0, cpu_s(ng) - n0
        mem = daemon.memory_full_info()
        reqs = r.ok + r.failed
        lines = None
        if mode == "on":
            import urllib.request
            text = urllib.request.urlopen(d.api_url + "/metrics", timeout=10).read().decode()
            for ln in text.splitlines():
                if ln.startswith("ultrascale_traffic_log_lines_total "):
                    lines = int(float(ln.split()[1]))
        return {"mode": mode, "idle_cpu_pct": round(idle_pct, 2), "load_cpu_pct": round(100 * dc / wall, 1),
                "daemon_cpu_ms_per_1k": round(1000 * dc / reqs * 1000, 1) if reqs else None,
                "nginx_cpu_ms_per_1k": round(1000 * nc / reqs * 1000, 1) if reqs else None,
                "rss_mib": round(mem.rss / 2**20, 1), "uss_mib": round(mem.uss / 2**20, 1),
                "requests": reqs, "failed": r.failed, "rps": round(r.rps), "p99_ms": round(r.latency.p99, 1),
                "lines_read": lines}
    finally:
        d.stop()
        d.cleanup()


def markdown(res: dict, argv: list[str]) -> str:
    rows = res["runs"]
    lines = [BEGIN, f"## The traffic log's cost (`scripts/bench-accesslog {' '.join(argv)}`)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.",
             f"Default fleet (2 instances, 1 gevent worker each, the reference app's `/`), {res['users']} "
             f"users of the built-in load tester through nginx for {res['seconds']:g} s per run, the "
             f"daemon idle for {res['idle_s']:g} s before; `nginx.traffic_log` off and on alternate "
             "round by round. The daemon's CPU is % of one core over the loaded run (its memory "
             "sampling, probes and, when on, reading and folding every line); nginx's is its "
             "master and workers (writing the log lines); both also per 1,000 requests.", "",
             "| round | traffic log | daemon CPU idle | daemon CPU under load | daemon CPU ms / 1k req "
             "| nginx CPU ms / 1k req | daemon RSS | daemon USS | req/s | p99 ms | failed | lines read |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, x in enumerate(rows):
        lines.append(f"| {i // 2 + 1} | {x['mode']} | {x['idle_cpu_pct']}% | {x['load_cpu_pct']}% | "
                     f"{x['daemon_cpu_ms_per_1k']} | {x['nginx_cpu_ms_per_1k']} | {x['rss_mib']} MiB | "
                     f"{x['uss_mib']} MiB | {x['rps']:,} | {x['p99_ms']} | {x['failed']} | "
                     f"{'' if x['lines_read'] is None else format(x['lines_read'], ',')} |")
    for mode in ("off", "on"):
        xs = [x for x in rows if x["mode"] == mode]
        avg = lambda k, n=1: round(sum(x[k] for x in xs) / len(xs), n)  # noqa: E731
        lines.append(f"| mean | **{mode}** | {avg('idle_cpu_pct', 2)}% | {avg('load_cpu_pct', 2)}% | "
                     f"{avg('daemon_cpu_ms_per_1k')} | {avg('nginx_cpu_ms_per_1k')} | {avg('rss_mib')} MiB | "
                     f"{avg('uss_mib')} MiB | {round(avg('rps')):,} | {avg('p99_ms')} | | |")
    lines += ["", "`lines read` is `ultrascale_traffic_log_lines_total` after the run: every request of "
              "the warm-up and the measured run, one line each.", "", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench-accesslog", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--write", help="replace this section of the Markdown file")
    a = p.parse_args(argv)
    if not (1 <= a.rounds <= 10 and 1 <= a.seconds <= 120 and 1 <= a.users <= 2000 and 1 <= a.idle <= 120):
        p.error("--rounds 1..10, --seconds 1..120, --users 1..2000, --idle 1..120")
    runs = []
    for r in range(a.rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            print(f"bench-accesslog: round {r + 1}, traffic log {mode} ...", file=sys.stderr, flush=True)
            runs.append(one(mode, a.seconds, a.users, a.idle))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    res = {"runs": runs, "users": a.users, "seconds": a.seconds, "idle_s": a.idle}
    md = markdown(res, argv)
    print(md)
    if a.write:
        write_section(a.write, md, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
