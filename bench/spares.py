"""Warm spares (docs/spares.md, issue 25): the reference app with a slow boot
(ULTRASCALE_BOOT_DELAY, default 3 s), `instances.spares` 0 against 1 (and 2 for the scale-up),
under 200 users of the load tester through nginx, from 127.0.0.1, bounded in time (~2 min):

  kill -9 -> capacity back   a serving master killed; the time from the kill to its port serving
                             again (the event that says so: instance.takeover, or the new master's
                             RUNNING), and the requests that failed through it
  scale 2 -> 4               `ultrascalectl scale 4`: the time until both new ports serve (their
                             RUNNING events, against the command's start)
  memory of one spare        the RSS of a ready spare's master and workers (psutil)
  autoscaling step           the autoscaler (CPU target 5 %, 2..3 instances) under the same load:
                             from its decision to the added port serving, and from the load's start

    scripts/bench-spares [--boot 3] [--write docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.deploys import Posts
from bench.util import machine_line, write_section
from loadtest import BackgroundLoad
from support.harness import Daemon

USERS = 200
BEGIN = "<!-- bench-spares:begin -->"
END = "<!-- bench-spares:end -->"


def daemon(tmp: Path, spares: int, boot: float, workers: int, autoscale: dict | None = None) -> Daemon:
    d = Daemon(tmp, {"instances": {"count": 2, "spares": spares}, **({"autoscale": autoscale} if autoscale else {}),
                     "gunicorn": {"worker_class": "sync", "workers": workers},
                     "app": {"env": {"ULTRASCALE_BOOT_DELAY": str(boot)}},
                     "health": {"start_timeout": 30}})
    d.start()
    if spares:
        d.wait_until(lambda f: len(f["spares"]) == spares and all(s["ready"] for s in f["spares"]),
                     timeout=boot * 3 + 20, what="ready spares")
    return d


def load_on(d: Daemon) -> BackgroundLoad:
    load = BackgroundLoad(f"http://127.0.0.1:{d.nginx_port}/", users=USERS, duration_limit=60, timeout=5.0,
                          procs=1)
    load.start()
    load.wait_for_ok(500, timeout=30)
    return load


def kill_9(d: Daemon, boot: float) -> dict:
    f = d.fleet()
    victim = f["instances"][0]
    spare_pid = f["spares"][0]["pid"] if f["spares"] else None
    load = load_on(d)
    posts = Posts(d.nginx_port)      # non-retrying keep-alive clients beside it
    posts.start()
    try:
        time.sleep(0.5)
        seq = max((e["seq"] for e in d.api("GET", "/events")[1]["events"]), default=0)
        killed = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        d.wait_until(lambda f: f["instances"][0]["pid"] not in (None, victim["pid"]) and f["instances"][0]["serving"],
                     timeout=boot + 20, what="the port serving again")
        back = None
        for e in d.api("GET", "/events")[1]["events"]:
            if e["seq"] <= seq or e.get("port") != victim["port"]:
                continue
            if e["event"] == "instance.takeover" or (e["event"] == "instance.state" and e["new"] == "running"):
                back = e["time"] - killed
                break
        if spare_pid:
            d.wait_until(lambda f: f["spares"][0]["ready"] and f["spares"][0]["pid"] != spare_pid,
                         timeout=boot + 20, what="a new spare")
        time.sleep(0.5)
    finally:
        r = load.stop()
        posts.stop()
    return {"back_ms": None if back is None else back * 1000, "failed": r.failed, "ok": r.ok,
            "reconnects": getattr(r, "reconnects", None), "posts_ok": posts.ok, "posts_failed": posts.failed,
            "took_over": bool(spare_pid)}


def scale_up(d: Daemon, boot: float) -> dict:
    load = load_on(d)
    try:
        seq = max((e["seq"] for e in d.api("GET", "/events")[1]["events"]), default=0)
        t0 = time.time()
        out = d.ctl("scale", "4")
        assert out.returncode == 0, out.stderr
        d.wait_until(lambda f: f["ready"] == 4, timeout=boot + 20, what="4 serving")
        new = {d.base_port + 2, d.base_port + 3}
        times, decided = {}, t0
        for e in d.api("GET", "/events")[1]["events"]:
            if e["seq"] > seq and e["event"] == "fleet.scale":
                decided = e["time"]
            if e["seq"] > seq and e["event"] == "instance.state" and e["new"] == "running" and e["port"] in new:
                times.setdefault(e["port"], e["time"])
        time.sleep(0.5)
    finally:
        r = load.stop()
    return {"serving_ms": (max(times.values()) - decided) * 1000 if len(times) == 2 else None,
            "command_ms": (max(times.values()) - t0) * 1000 if len(times) == 2 else None, "failed": r.failed}


def autoscale_step(d: Daemon, boot: float) -> dict:
    """The load step on a fleet whose autoscaler may add one instance (2 -> 3): the time from
    its decision (the `fleet.scale` event it causes) to the new port serving, and from the load's
    start."""
    seq = max((e["seq"] for e in d.api("GET", "/events")[1]["events"]), default=0)
    t0 = time.time()
    load = load_on(d)
    try:
        d.wait_until(lambda f: f["ready"] == 3, timeout=boot + 60, what="the autoscaler's third instance serving")
        decided = serving = None
        for e in d.api("GET", "/events?limit=10000")[1]["events"]:
            if e["seq"] <= seq:
                continue
            if e["event"] == "fleet.scale" and e.get("source") == "autoscale" and decided is None:
                decided = e["time"]
            if decided is not None and serving is None and e.get("port") == d.base_port + 2 and (
                    e["event"] == "instance.takeover" or e["event"] == "instance.state" and e.get("new") == "running"):
                serving = e["time"]
        time.sleep(0.5)
    finally:
        r = load.stop()
    return {"after_decision_ms": None if None in (decided, serving) else (serving - decided) * 1000,
            "after_load_ms": None if serving is None else (serving - t0) * 1000, "failed": r.failed}


AUTOSCALE = {"enabled": True, "min_replicas": 2, "max_replicas": 3, "target": {"cpu_utilization": 5.0}}


def spare_rss(d: Daemon) -> int:
    pid = d.fleet()["spares"][0]["pid"]
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench-spares", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boot", type=float, default=3.0, help="ULTRASCALE_BOOT_DELAY, seconds (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="sync workers per instance (default 2)")
    ap.add_argument("--write", metavar="DOC", help="put the section into this document (docs/benchmarks.md)")
    args = ap.parse_args(argv)
    machine = machine_line()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows, t_begin = {}, time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-spares-") as tmp:
        for k, what in ((0, ("kill", "scale")), (1, ("kill", "rss")), (2, ("scale",)),
                        (0, ("autoscale",)), (1, ("autoscale",))):
            sub = Path(tmp) / f"k{k}-{'-'.join(what)}"
            sub.mkdir()
            d = daemon(sub, k, args.boot, args.workers, AUTOSCALE if "autoscale" in what else None)
            try:
                if "kill" in what:
                    rows[("kill", k)] = kill_9(d, args.boot)
                    print(f"spares {k}: kill -9 -> {rows[('kill', k)]}", file=sys.stderr)
                if "autoscale" in what:
                    rows[("autoscale", k)] = autoscale_step(d, args.boot)
                    print(f"spares {k}: autoscale step -> {rows[('autoscale', k)]}", file=sys.stderr)
                if "rss" in what:
                    rows[("rss", k)] = spare_rss(d)
                if "scale" in what:
                    if "kill" in what:   # the killed port's new master must serve before the step
                        d.wait_until(lambda f: f["ready"] == 2, timeout=args.boot + 20, what="2 serving")
                    rows[("scale", k)] = scale_up(d, args.boot)
                    print(f"spares {k}: scale 2->4 -> {rows[('scale', k)]}", file=sys.stderr)
            finally:
                d.cleanup()
    wall = time.monotonic() - t_begin

    def ms(v):
        return "-" if v is None else f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"

    k0, k1 = rows[("kill", 0)], rows[("kill", 1)]
    s0, s2 = rows[("scale", 0)], rows[("scale", 2)]
    a0, a1 = rows[("autoscale", 0)], rows[("autoscale", 1)]
    md = "\n".join([
        BEGIN,
        f"## Warm spares (`scripts/bench-spares --write docs/benchmarks.md`, {started})",
        "",
        f"The reference app with a {args.boot:g} s boot (`ULTRASCALE_BOOT_DELAY={args.boot:g}`), 2 instances of "
        f"{args.workers} sync workers, {USERS} users of the load tester through the managed nginx from "
        f"127.0.0.1; one run, {wall:.0f} s. Machine: {machine}. Capacity back: from the kill to the event "
        "that the port serves again (`instance.takeover`, or the new master's RUNNING); scale: from "
        "the `fleet.scale` event (the API took the count) to the second new port's RUNNING event, and "
        "in brackets from the start of the `ultrascalectl scale 4` process (docs/spares.md). Autoscaling: "
        "from the autoscaler's decision (the `fleet.scale` event it causes) to the added port serving; "
        "from the load's start the time includes the autoscaler's hold while the host's CPU is over "
        "`autoscale.host_cpu_saturation_percent` (2 cores shared with the load tester).",
        "",
        "| figure | spares: 0 | with spares | goal |",
        "|---|---|---|---|",
        f"| kill -9 of a master -> capacity back to N | {ms(k0['back_ms'])} | {ms(k1['back_ms'])} (spares: 1) | <= 50 ms |",
        f"| failed requests through it | {k0['failed']} of {k0['ok'] + k0['failed']} | "
        f"{k1['failed']} of {k1['ok'] + k1['failed']} | 0 |",
        f"| requests the load tester sent again on a new connection (reconnects) | {k0['reconnects']} | {k1['reconnects']} | - |",
        f"| non-retrying keep-alive POSTs through it (4 threads) | {k0['posts_failed']} failed of "
        f"{k0['posts_ok'] + k0['posts_failed']} | {k1['posts_failed']} failed of {k1['posts_ok'] + k1['posts_failed']} | 0 |",
        f"| `scale 2->4` -> both new instances serving | {ms(s0['serving_ms'])} ({ms(s0['command_ms'])}) | "
        f"{ms(s2['serving_ms'])} ({ms(s2['command_ms'])}) (spares: 2) | <= 100 ms |",
        f"| failed requests through the scale | {s0['failed']} | {s2['failed']} | 0 |",
        f"| autoscaling 2 -> 3 on a load step: the decision -> the added instance serving (from the load's start) "
        f"| {ms(a0['after_decision_ms'])} ({ms(a0['after_load_ms'])}) | {ms(a1['after_decision_ms'])} "
        f"({ms(a1['after_load_ms'])}) (spares: 1) | <= 0.5 s after the decision |",
        f"| memory of one spare (RSS, master + {args.workers} workers, ready) | - | "
        f"{rows[('rss', 1)] / 2**20:.0f} MiB | reported |",
        "",
        END,
    ])
    print(md)
    if args.write:
        write_section(args.write, md, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
