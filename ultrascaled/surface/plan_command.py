"""`ultrascalectl plan`: the capacity planner (core/capacity.py) run on this host's figures (CPU
count, /proc/meminfo, RLIMIT_NOFILE) and a spec file; 0 the plan fits, 1 a budget cannot hold,
2 bad arguments or spec."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys

from ultrascaled.core.capacity import CalibrationError, parse_calibration, plan_for, render
from ultrascaled.spec import SpecError, load_spec
from ultrascaled.spec.loader import DEFAULT_SPEC, FALLBACK_SPEC, default_spec_path

EXIT_FITS, EXIT_OVER_BUDGET, EXIT_USAGE = 0, 1, 2


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
            cal = parse_calibration(data, instances=args.calibration_instances)
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
    plan = plan_for(spec, args.users, calibration=cal, cpu_count=cpu_count,
                    mem_total_bytes=mem, nofile_limit=nofile, mongo_servers=args.mongo_servers)
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
