"""scripts/bench: run the benchmark suite (see docs/benchmarks.md). The one runner of every
measurement: the suite, and each figure of docs/benchmarks.md by its own subcommand.

    scripts/bench                       full run (~10 min), writes docs/benchmarks.md
    scripts/bench --quick               1 run of 5 s per cell, shorter idle window (~3 min)
    scripts/bench --only recovery,cli   some sections only
    scripts/bench --no-doc              print only
    python -m bench fleet [--help]      the fleet figures (scripts/bench-fleet, bench/figures.py)
    python -m bench chaos [--help]      the chaos run (scripts/chaos, bench/chaos.py)
    python -m bench autoscale [--help]  the autoscaling trace (scripts/bench-autoscale, bench/autoscale.py)
    python -m bench redis-failover      a Redis primary killed under load (scripts/redis-failover)
    python -m bench accesslog [--help]  the cost of nginx's traffic log (scripts/bench-accesslog)
    python -m bench deploy [--help]     restarts, deploys and bad releases (scripts/bench-deploy)
    python -m bench listeners [--help]  how a port changes hands at the socket level (scripts/bench-listeners)
    python -m bench jobs [--help]       how late a scheduled job starts, against a sleep loop (scripts/bench-jobs)
    python -m bench processes [--help]  RQ jobs through a deploy; the daemon's idle cost with workers (scripts/bench-processes)
    python -m bench plan [--help]       plan --measure against a real fleet at that size (scripts/bench-plan)
    python -m bench queue [--help]      a queue burst: autoscaled worker type vs one (scripts/bench-queue)
    python -m bench spares [--help]     warm spares against none, with a slow boot (scripts/bench-spares)
    python -m bench idle [--help]       the daemon's idle cost from 4 to 64 instances (bench/idle.py)
    python -m bench.dashboard           the dashboard's memory and CPU (scripts/bench-dashboard)
    python -m bench.screenshots         the dashboard screenshots in docs/ (scripts/screenshots)
"""
from __future__ import annotations

import argparse
import importlib
import json
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from bench import report, scenarios
from bench.setups import SETUPS
from bench.util import REPO, OthersSampler, Tracker, log, machine_info

SECTIONS = ("throughput", "failures", "recovery", "footprint", "cli")
ALL_SETUPS = ("sync", "supervisord", "handwired", "ultrascaled")
SECTION_SETUPS = {"throughput": ALL_SETUPS + ("before",), "failures": ("supervisord", "before", "ultrascaled"),
                  "recovery": ("supervisord", "before", "ultrascaled"),
                  "footprint": ("supervisord", "before", "ultrascaled"),
                  "cli": ("supervisord", "before", "ultrascaled")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 run of 5 s per throughput cell, 10 s idle "
                   "window, 3 kills")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--setups", default=",".join(ALL_SETUPS),
                   help=f"comma-separated setups: {','.join(ALL_SETUPS)}")
    p.add_argument("--before", metavar="REF", help="also measure ultrascaled as of this git ref, in the "
                   "same run, beside the current tree (e.g. the commit before a redesign)")
    p.add_argument("--runs", type=int, help="wrk runs per cell (default 3; quick 1)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10; quick 5)")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--endpoints", default="/,cached",
                   help="throughput endpoints: / (hello), cached (the /cached/<key> mix), io (/io?ms=2)")
    p.add_argument("--kills", type=int, help="kills per setup in the recovery section (default 5; quick 3)")
    p.add_argument("--idle", type=float, help="idle seconds in the footprint section (default 30; quick 10)")
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"),
                   help="Markdown file whose generated section is replaced")
    p.add_argument("--no-doc", action="store_true", help="do not write --output")
    p.add_argument("--json", help="write the raw results here (default: in the run folder)")
    p.add_argument("--keep", action="store_true", help="keep the run folder (logs, configs)")
    a = p.parse_args(argv)
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    a.setups = [x.strip() for x in a.setups.split(",") if x.strip()]
    a.endpoints = tuple(x.strip() for x in a.endpoints.split(",") if x.strip())
    for x in a.endpoints:
        if x not in ("/", "cached", "io"):
            p.error(f"--endpoints: unknown endpoint {x!r}; choose from /, cached, io")
    for x in a.only:
        if x not in SECTIONS:
            p.error(f"--only: unknown section {x!r}; choose from {', '.join(SECTIONS)}")
    for x in a.setups:
        if x not in ALL_SETUPS:
            p.error(f"--setups: unknown setup {x!r}; choose from {', '.join(ALL_SETUPS)}")
    if a.before:
        a.setups.append("before")
    a.runs = a.runs or (1 if a.quick else 3)
    a.duration = a.duration or (5 if a.quick else 10)
    a.kills = a.kills or (3 if a.quick else 5)
    a.idle = a.idle or (10.0 if a.quick else 30.0)
    if a.runs < 1 or a.duration < 1 or a.kills < 1 or a.idle <= 0 or a.connections < 1:
        p.error("--runs, --duration, --kills, --idle and --connections must be positive")
    return a


def _on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# Measurements with their own options, run as `python -m bench NAME [options]`.
SUBCOMMANDS = {"fleet": "bench.figures", "chaos": "bench.chaos", "accesslog": "bench.accesslog",
               "redis-failover": "bench.redis_failover", "autoscale": "bench.autoscale",
               "deploy": "bench.deploys", "listeners": "bench.listeners", "plan": "bench.plan",
               "jobs": "bench.jobs", "processes": "bench.processes", "queue": "bench.queue",
               "spares": "bench.spares",
               "idle": "bench.idle"}


def main(argv: list[str] | None = None) -> int:
    rest = sys.argv[1:] if argv is None else argv
    if rest and rest[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[rest[0]]).main(rest[1:])
    args = parse_args(argv)
    if not shutil.which("wrk") and "throughput" in args.only:
        print("wrk not found: run scripts/setup test,bench", file=sys.stderr)
        return 2
    tracker = Tracker()
    run_dir = Path(f"/tmp/ultrascale-bench-{tracker.run_id}")
    tracker.cmdline_marker = str(run_dir)
    run_dir.mkdir(parents=True)
    if args.before:
        SETUPS["before"].export(args.before, run_dir)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    others = OthersSampler(tracker).start()
    ctx = scenarios.Context(tracker, run_dir, quick=args.quick, runs=args.runs, duration=args.duration,
                            others=others)
    which = lambda section: [k for k in SECTION_SETUPS[section] if k in args.setups]  # noqa: E731
    t_start = time.monotonic()
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "quick": args.quick,
                     "command": "scripts/bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
                     "machine": machine_info(), "loads": ctx.loads}
    results["command"] = results["command"].strip()
    code = 0
    log(f"run folder {run_dir}; sections {','.join(args.only)}")
    try:
        if "throughput" in args.only and which("throughput"):
            results["throughput"] = scenarios.throughput(ctx, which("throughput"), args.connections,
                                                         args.endpoints)
        if "failures" in args.only and which("failures"):
            results["failures"] = scenarios.failures(ctx, which("failures"))
        if "recovery" in args.only and which("recovery"):
            results["recovery"] = scenarios.recovery(ctx, which("recovery"), kills=args.kills)
        fp, cli = "footprint" in args.only, "cli" in args.only
        if (fp or cli) and which("footprint"):
            results["footprint_cli"] = scenarios.footprint_and_cli(
                ctx, which("footprint"), do_footprint=fp, do_cli=cli, idle_s=args.idle)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({str(exc) or 'Ctrl-C'}); stopping everything")
        code = 130
    except Exception as exc:  # noqa: BLE001 - report what we have, then fail
        import traceback
        traceback.print_exc()
        log(f"error: {exc}; stopping everything")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        others.stop()
        results["others"] = others.summary()
        leftovers = tracker.cleanup()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if leftovers:
            log(f"killed leftover processes: {leftovers}")
        results["leftovers"] = leftovers
    results["elapsed_s"] = time.monotonic() - t_start
    json_path = Path(args.json) if args.json else run_dir / "results.json"
    results["json_path"] = str(json_path)
    json_path.write_text(json.dumps(results, indent=2, default=str))
    md = report.render(results)
    print(md)
    if code == 0 and not args.no_doc:
        report.write_doc(Path(args.output), md)
        log(f"wrote {args.output}")
    elif code:
        log("not writing the doc: the run did not finish")
    if not args.keep and code == 0:
        for sub in run_dir.iterdir():
            if sub.is_dir():
                shutil.rmtree(sub, ignore_errors=True)
        log(f"raw results kept in {json_path}")
    else:
        log(f"run folder kept: {run_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
