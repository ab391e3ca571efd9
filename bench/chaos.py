"""Chaos run: random kill -9 of gunicorn workers and masters under load, then check the fleet.

    scripts/chaos [--duration 60] [--interval 3] [--instances 4] [--workers 2] [--users 200]
                  [--daemon-kill] [--seed N] [--json FILE]

It starts its own ultrascaled (managed nginx, free loopback ports, a temporary folder), sends
load through nginx, kills at random every ~interval seconds, optionally SIGKILLs the daemon
itself once half-way and starts it again, then waits for the fleet to converge and checks:
every instance ready, exactly one master per desired port, no orphaned worker, every port held
by its own instance, and the client's error rate. Exit 0 when all hold (error rate < 1%), 1
otherwise. Everything it started is ended by pid at the end, also on Ctrl-C or error.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

from loadtest import BackgroundLoad
from support.harness import Daemon


def fleet_checks(d: Daemon) -> list[str]:
    """Problems with the fleet's processes: duplicates, orphans, ports held by strangers."""
    fleet = d.fleet()
    problems = []
    if fleet["ready"] != fleet["desired"]:
        problems.append(f"{fleet['ready']}/{fleet['desired']} ready")
    found = d.fleet_processes()
    masters: dict[int, list[int]] = {}
    for lo in found:
        if lo.is_master:
            masters.setdefault(lo.port, []).append(lo.pid)
        elif not lo.master_alive:
            problems.append(f"orphaned worker pid {lo.pid} (port {lo.port})")
    for port in fleet["ports"]:
        pids = masters.get(port, [])
        if len(pids) != 1:
            problems.append(f"port {port}: {len(pids)} masters {pids}")
    extra = sorted(set(masters) - set(fleet["ports"]))
    if extra:
        problems.append(f"masters on undesired ports {extra}")
    listeners = {}
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in fleet["ports"] and c.pid:
            listeners.setdefault(c.laddr.port, set()).add(c.pid)
    for port, pids in listeners.items():
        owner = masters.get(port, [None])[0]
        for pid in pids:
            try:
                pgid = os.getpgid(pid)
            except OSError:
                continue
            if pgid != owner and not (d.proc is not None and pid == d.proc.pid):   # the daemon holds every
                problems.append(f"port {port} held by pid {pid} outside its instance (group {pgid})")  # port's socket
    return problems


def run(args) -> int:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="ultrascale-chaos-"))
    d = Daemon(tmp, {"instances": {"count": args.instances, "max": max(args.instances, 8)},
                     "gunicorn": {"workers": args.workers, "graceful_timeout": 10},
                     "health": {"interval": 0.5}})
    kills: list[dict] = []
    report: dict = {"seed": args.seed, "duration_s": args.duration, "instances": args.instances,
                    "workers": args.workers, "users": args.users}
    load = None
    try:
        d.start()
        print(f"chaos: fleet {d.name} up: {args.instances} instances x {args.workers} workers, nginx on "
              f"127.0.0.1:{d.nginx_port}; load {args.users} users; {args.duration:g}s of kills", flush=True)
        load = BackgroundLoad(f"http://127.0.0.1:{d.nginx_port}/", users=args.users,
                              duration_limit=args.duration + 120, timeout=2.0, procs=1)
        load.start()
        load.wait_for_ok(200, timeout=30)
        t0 = time.monotonic()
        daemon_killed = False
        while time.monotonic() - t0 < args.duration:
            time.sleep(rng.uniform(0.5, 1.5) * args.interval)
            elapsed = time.monotonic() - t0
            if args.daemon_kill and not daemon_killed and elapsed >= args.duration / 2:
                d.proc.kill()
                d.proc.wait()
                kills.append({"t": round(elapsed, 2), "kind": "daemon", "pid": d.proc.pid})
                print(f"  {elapsed:6.2f}s SIGKILL daemon pid {d.proc.pid}; starting it again", flush=True)
                time.sleep(1.0)
                d.start(wait=False)
                daemon_killed = True
                continue
            try:
                fleet = d.fleet()
            except OSError:
                continue
            live = [i for i in fleet["instances"] if i["pid"]]
            if not live:
                continue
            inst = rng.choice(live)
            if inst["workers"] and rng.random() < args.worker_share:
                pid, kind = rng.choice(inst["workers"])["pid"], "worker"
            else:
                pid, kind = inst["pid"], "master"
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills.append({"t": round(elapsed, 2), "kind": kind, "pid": pid, "port": inst["port"]})
            print(f"  {elapsed:6.2f}s kill -9 {kind} pid {pid} (port {inst['port']})", flush=True)
        last_kill = time.monotonic()
        d.wait_until(lambda f: f["ready"] == f["desired"] == len(f["instances"])
                     and all(i["serving"] for i in f["instances"]), timeout=90, what="convergence")
        converge = time.monotonic() - last_kill
        time.sleep(1.0)
        result = load.stop()
        load = None
        problems = fleet_checks(d)
        deadline = time.monotonic() + 40   # orphaned workers of the last kill may still be finishing
        while any(p.startswith("orphaned worker") for p in problems) and time.monotonic() < deadline:
            time.sleep(1.0)       # (they exit by themselves, or are reaped after graceful_timeout)
            problems = fleet_checks(d)
        report.update({
            "kills": kills, "kills_by_kind": {k: sum(1 for x in kills if x["kind"] == k)
                                              for k in ("worker", "master", "daemon")},
            "client": {"ok": result.ok, "failed": result.failed, "error_rate_pct": result.error_rate_pct,
                       "status_counts": result.status_counts, "error_counts": result.error_counts,
                       "p99_ms": result.latency.p99, "rps": round(result.rps)},
            "converged_after_last_kill_s": round(converge, 2), "problems": problems,
            "restarts": {i["port"]: i["restarts"] for i in d.fleet()["instances"]},
        })
        ok = not problems and (result.error_rate_pct or 0) < 1.0
        report["passed"] = ok
        c = report["client"]
        print(f"chaos: {len(kills)} kills {report['kills_by_kind']}; client {c['ok']} ok, {c['failed']} failed "
              f"({c['error_rate_pct'] or 0:.3f}%), {c['rps']} req/s, p99 {c['p99_ms']:.0f} ms; "
              f"errors {c['error_counts'] or {}} statuses {c['status_counts']}")
        print(f"chaos: converged {converge:.2f}s after the last kill; fleet checks: "
              f"{'; '.join(problems) if problems else 'ok (no orphans, no duplicates, ports held by their own instances)'}")
        print(f"chaos: {'PASSED' if ok else 'FAILED'}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0 if ok else 1
    finally:
        if load is not None and load.running:
            load.stop()
        d.stop()
        d.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of kills (default 60)")
    p.add_argument("--interval", type=float, default=3.0, help="mean seconds between kills (default 3)")
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="workers per instance (default 2)")
    p.add_argument("--users", type=int, default=200, help="concurrent load users (default 200)")
    p.add_argument("--worker-share", type=float, default=0.6, help="share of kills aimed at workers")
    p.add_argument("--daemon-kill", action="store_true", help="also SIGKILL the daemon once, half-way")
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--json", help="write the full report here")
    args = p.parse_args(argv)
    if not (1 <= args.duration <= 3600 and 0.2 <= args.interval <= 60 and 1 <= args.instances <= 16):
        p.error("--duration 1..3600, --interval 0.2..60, --instances 1..16")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
