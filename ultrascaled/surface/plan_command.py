"""`ultrascalectl plan`: the capacity planner (core/capacity.py) run on this host's figures (CPU
count, /proc/meminfo, RLIMIT_NOFILE) and a spec file; 0 the plan fits, 1 a budget cannot hold,
2 bad arguments or spec, 3 `--measure` could not measure (the app does not start, a URL does not
answer 2xx/3xx, a busy port).

`--measure` starts one instance of the spec's app on a loopback port (effects/solo_instance.py),
loads it at rising concurrency with the project's load tester (effects/loopback_load.py), stops it
by pid, and hands the figures to the planner."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys

from ultrascaled.core.capacity import CalibrationError, latency_target, parse_calibration, plan_for, render
from ultrascaled.spec import SpecError, load_spec
from ultrascaled.spec.loader import DEFAULT_SPEC, FALLBACK_SPEC, default_spec_path

EXIT_FITS, EXIT_OVER_BUDGET, EXIT_USAGE, EXIT_NOT_MEASURED = 0, 1, 2, 3
MEASURE_MAX_SECONDS, MEASURE_MAX_REQUESTS = 600.0, 5_000_000   # what the bounds may be raised to


def _steps(text: str) -> list[int]:
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated user counts, got {text!r}") from None
    if not steps or any(s < 1 or s > 20000 for s in steps):
        raise argparse.ArgumentTypeError(f"user counts must be 1..20000, got {text!r}")
    return steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ultrascalectl plan``."""
    parser.add_argument("--users", type=int, required=True, metavar="N",
                        help="concurrent users to plan for")
    parser.add_argument("--spec", metavar="PATH", default=None,
                        help=f"fleet spec (default: $ULTRASCALE_SPEC, else {DEFAULT_SPEC}, "
                             f"else {FALLBACK_SPEC})")
    parser.add_argument("--calibration", metavar="FILE", default=None,
                        help="load-test result (JSON) with measured capacity; see docs/capacity.md")
    parser.add_argument("--calibration-instances", type=int, metavar="N", default=None,
                        help="instances that served the calibration load test (if not in the file)")
    parser.add_argument("--nofile", type=int, metavar="N", default=None,
                        help="the daemon's open-file limit (default: this process's RLIMIT_NOFILE)")
    parser.add_argument("--mongo-servers", type=int, metavar="N", default=1,
                        help="MongoDB servers each client connects to (default 1)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    m = parser.add_argument_group("measuring (--measure: one instance of the app, loopback load)")
    m.add_argument("--measure", action="store_true",
                   help="start one instance of the spec's app on a free 127.0.0.1 port, load it at "
                        "rising concurrency and plan from what it served (no daemon needed)")
    m.add_argument("--url", dest="urls", action="append", metavar="/PATH",
                   help="path to request, repeatable (default: the spec's plan.urls, else /)")
    m.add_argument("--steps", type=_steps, metavar="U1,U2,...",
                   help="concurrency steps (default: 5 doubling steps up to min(users, workers x "
                        "requests per worker)); the steps stop at the first that misses the target")
    m.add_argument("--step-seconds", type=float, default=5.0, metavar="S",
                   help="seconds of load per step (default 5)")
    m.add_argument("--max-seconds", type=float, default=60.0, metavar="S",
                   help=f"bound on the whole load, warm-up included (default 60, at most {MEASURE_MAX_SECONDS:g})")
    m.add_argument("--max-requests", type=int, default=300_000, metavar="N",
                   help=f"bound on the requests sent in all (default 300000, at most {MEASURE_MAX_REQUESTS})")
    m.add_argument("--port", type=int, metavar="N", default=None,
                   help="port for the instance (default: a free one)")


def mem_total_bytes(meminfo: str = "/proc/meminfo") -> int:
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{meminfo}: no MemTotal line")


def run(args: argparse.Namespace) -> int:
    """``ultrascalectl plan``: 0 the plan fits, 1 a budget cannot hold, 2 bad arguments/spec."""
    def usage(msg: str) -> int:
        sys.stderr.write(f"ultrascalectl plan: {msg}\n")
        return EXIT_USAGE

    if args.users is None or args.users < 1:
        return usage(f"--users must be >= 1, got {args.users}")
    if args.mongo_servers < 1:
        return usage(f"--mongo-servers must be >= 1, got {args.mongo_servers}")
    if args.nofile is not None and args.nofile < 1:
        return usage(f"--nofile must be >= 1, got {args.nofile}")
    measure = getattr(args, "measure", False)
    if not measure:
        for flag, given in (("--url", args.urls), ("--steps", args.steps), ("--port", args.port)):
            if given is not None:
                return usage(f"{flag} goes with --measure")
    else:
        if args.calibration:
            return usage("--measure and --calibration exclude each other: --measure measures")
        if not 0.5 <= args.step_seconds <= MEASURE_MAX_SECONDS:
            return usage(f"--step-seconds must be 0.5..{MEASURE_MAX_SECONDS:g}, got {args.step_seconds:g}")
        if not args.step_seconds <= args.max_seconds <= MEASURE_MAX_SECONDS:
            return usage(f"--max-seconds must be --step-seconds ({args.step_seconds:g})..{MEASURE_MAX_SECONDS:g},"
                         f" got {args.max_seconds:g}")
        if not 1 <= args.max_requests <= MEASURE_MAX_REQUESTS:
            return usage(f"--max-requests must be 1..{MEASURE_MAX_REQUESTS}, got {args.max_requests}")
        if args.port is not None and not 1024 <= args.port <= 65535:
            return usage(f"--port must be 1024..65535, got {args.port}")
        for u in args.urls or []:
            if not u.startswith("/") or any(c <= " " or c == "\x7f" for c in u):
                return usage(f"--url must be a path starting with / (the load goes to the instance "
                             f"on a loopback port), with no spaces, got {u!r}")
    cpu_count = os.cpu_count() or 1
    path = args.spec or default_spec_path()
    try:
        spec = load_spec(path, cpu_count=cpu_count)
    except SpecError as exc:
        if exc.over_budget_only:  # valid, but over its budgets
            sys.stderr.write(f"{path}: budgets that cannot hold:\n")
            sys.stderr.writelines(f"  {e}\n" for e in exc.errors)
            return EXIT_OVER_BUDGET
        sys.stderr.write(f"{path}: invalid spec:\n")
        sys.stderr.writelines(f"  {e}\n" for e in exc.errors)
        return EXIT_USAGE
    cal = None
    if args.calibration:
        try:
            with open(args.calibration) as f:
                data = json.load(f)
            cal = parse_calibration(data, instances=args.calibration_instances,
                                    target_ms=latency_target(spec)[0])
        except OSError as exc:
            return usage(f"{args.calibration}: cannot read: {exc.strerror or exc}")
        except json.JSONDecodeError as exc:
            return usage(f"{args.calibration}: not JSON: {exc}")
        except CalibrationError as exc:
            return usage(f"{args.calibration}: {exc}")
    nofile = args.nofile or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY or nofile < 0:
        nofile = 1 << 20
    try:
        mem = mem_total_bytes()
    except (OSError, ValueError) as exc:
        return usage(f"cannot read the host's memory: {exc}")
    measurement = None
    if measure:
        from ultrascaled.surface.plan_measure import MeasureError, measure_app
        try:
            measurement = measure_app(spec, args.users, urls=args.urls or list(spec.plan.urls),
                                      steps=args.steps, step_seconds=args.step_seconds,
                                      max_seconds=args.max_seconds, max_requests=args.max_requests,
                                      port=args.port, quiet=args.json)
        except MeasureError as exc:
            sys.stderr.write(f"ultrascalectl plan --measure: {exc}\n")
            return EXIT_NOT_MEASURED
    plan = plan_for(spec, args.users, calibration=cal, cpu_count=cpu_count,
                    mem_total_bytes=mem, nofile_limit=nofile, mongo_servers=args.mongo_servers,
                    measurement=measurement)
    if args.json:
        sys.stdout.write(json.dumps(dict(plan.to_dict(), spec=path), indent=2) + "\n")
    else:
        sys.stdout.write(f"Plan for {args.users} users, spec {path}, {cpu_count} cores\n\n")
        sys.stdout.write(render(plan))
    if plan.problems:
        if args.json:
            sys.stderr.writelines(f"{p}\n" for p in plan.problems)
        return EXIT_OVER_BUDGET
    return EXIT_FITS
