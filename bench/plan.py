"""The planner against a real fleet (issue 23): `ultrascalectl plan --users U --measure` for the
reference app (the default spec, etc/ultrascaled/fleet.yaml) or, with `--app fastapi`, the
FastAPI service of docs/your-app.md (its main.py and hello.yaml as printed), then a real daemon fleet behind its
managed nginx at the planned size and at one instance fewer, each under U users of the load
tester through nginx. A fleet holds the target when p99 < 2 s, errors < 1 % and no instance left
service (a health probe that failed 3 times in a row restarts it). When the planned size misses,
the next sizes are tried, up to --max-extra more, to say by how much the plan missed.

    scripts/bench-plan [--app reference|fastapi] [--users 1000] [--seconds 20] [--url / ...]
                       [--write docs/benchmarks.md]

Everything runs on 127.0.0.1, bounded in time and requests; every process started is ended by pid
(the daemon stops its instances and nginx; the harness sweeps what is left).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.figures import tmpdir
from bench.util import REPO, machine_line, write_section
from loadtest import Config, run
from support.harness import Daemon, tool
from support.your_app_doc import documented_python, documented_spec

DEFAULT_SPEC = REPO / "etc" / "ultrascaled" / "fleet.yaml"
APPS = {"reference": "the reference app, 1 gevent worker per instance",
        "fastapi": "docs/your-app.md's FastAPI service, 2 uvicorn workers per instance"}


def markers(app: str) -> tuple[str, str]:
    tag = "plan-measure" if app == "reference" else f"plan-measure-{app}"
    return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"


def app_spec(app: str) -> Path:
    """The spec file plan --measure reads: the default one, or the FastAPI service of
    docs/your-app.md written out (main.py as printed, hello.yaml with this venv's Python and
    folders of the run's own)."""
    if app == "reference":
        return DEFAULT_SPEC
    root = Path(tmpdir("plan-fastapi"))
    (root / "hello").mkdir(exist_ok=True)
    (root / "hello" / "main.py").write_text(documented_python("main.py"))
    spec = documented_spec("hello.yaml")
    spec["app"].update(directory=str(root / "hello"), python=sys.executable)
    spec["paths"] = {"state_dir": str(root / "state"), "log_dir": str(root / "log")}
    path = root / "hello.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
TARGET_P99_MS, TARGET_ERRORS_PCT = 2000.0, 1.0
HEALTH_FAILURES = 3   # the default spec's health.failures (the schema's default): a restart


def log(msg: str) -> None:
    print(f"[bench-plan {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(spec: Path, users: int, urls: list[str], args) -> tuple[dict, list[str], str]:
    """`plan --measure --json` on `spec`: (plan, argv shown in the doc, its progress)."""
    base = ["ultrascalectl", "plan", "--users", str(users), "--measure",
            "--max-seconds", f"{args.measure_seconds:g}"] + [x for u in urls for x in ("--url", u)]
    shown = base + ([] if spec == DEFAULT_SPEC else ["--spec", "hello.yaml"])
    argv = [tool("ultrascalectl"), *base[1:], "--spec", str(spec)]
    r = subprocess.run(argv + ["--json"], capture_output=True, text=True, timeout=args.measure_seconds + 120)
    if r.returncode not in (0, 1):
        raise SystemExit(f"plan --measure failed ({r.returncode}):\n{r.stderr}")
    return json.loads(r.stdout), shown, r.stderr


def fleet_spec(spec_path: Path) -> dict:
    """The spec's keys for the app, gunicorn, health and memory (the harness picks the ports,
    paths and a managed nginx on free loopback ports)."""
    spec = yaml.safe_load(spec_path.read_text())
    keep = {k: spec[k] for k in ("gunicorn", "health", "memory", "mongodb") if k in spec}
    app = spec.get("app", {})
    keep["app"] = {"env": dict(app.get("env", {}))}
    if spec_path != DEFAULT_SPEC:   # the app of its own (the harness's default is the reference app)
        keep["app"].update(directory=app["directory"], module=app["module"], python=app["python"], config=None)
    return keep


def one_fleet(spec_path: Path, count: int, users: int, urls: list[str], seconds: float, max_requests: int) -> dict:
    over = fleet_spec(spec_path)
    over["instances"] = {"count": count, "min": 1, "max": max(count, 8)}
    d = Daemon(tmpdir(f"plan-{count}"), over, tuned=False)
    try:
        d.start()
        base = f"http://127.0.0.1:{d.nginx_port}"
        paths = [(u, 1.0) for u in urls]
        run(Config(url=base + urls[0], users=min(users, 200), duration=3, paths=paths, timeout=2.0))  # warm-up
        before = d.fleet()
        seq0 = d.api("GET", "/events")[1]["last"]
        r = run(Config(url=base + urls[0], users=users, duration=seconds, requests=max_requests,
                       paths=paths, timeout=TARGET_P99_MS / 1000.0))
        after = d.fleet()
        events = d.api("GET", f"/events?since={seq0}")[1]["events"]
        restarts = (sum(i.get("restarts", 0) for i in after["instances"])
                    - sum(i.get("restarts", 0) for i in before["instances"]))
        unhealthy = [e for e in events if e["event"] == "instance.unhealthy"]
        in_a_row = max([int(e.get("failures") or 1) for e in unhealthy] or [0])
        p99 = r.latency.p99
        err = r.error_rate_pct or 0.0
        holds = (p99 is not None and p99 < TARGET_P99_MS and err < TARGET_ERRORS_PCT and restarts == 0
                 and in_a_row < HEALTH_FAILURES)
        return {"instances": count, "users": users, "seconds": round(r.wall_s, 1), "requests": r.total,
                "rps": round(r.rps, 1), "p95_ms": round(r.latency.p95 or 0, 1), "p99_ms": round(p99 or 0, 1),
                "error_rate_pct": round(err, 2), "failed_probes": len(unhealthy), "failed_in_a_row": in_a_row,
                "restarts": restarts,
                "warnings": r.warnings, "holds": holds}
    finally:
        d.stop()
        d.cleanup()
        shutil.rmtree(d.tmp, ignore_errors=True)


def verdict_text(planned: int, runs: dict[int, dict]) -> str:
    p = runs.get(planned)
    fewer = runs.get(planned - 1)
    if p and p["holds"]:
        if planned == 1:
            return "the plan holds: 1 instance held the target (one fewer is no fleet)"
        if fewer and not fewer["holds"]:
            return f"the plan holds: {planned} instances held the target and {planned - 1} did not"
        if fewer and fewer["holds"]:
            return (f"the plan is safe but not tight: {planned - 1} instances also held the target, so the "
                    "plan asked for 1 more than needed")
        return f"{planned} instances held the target"
    held = sorted(n for n, x in runs.items() if x["holds"] and n > planned)
    if held:
        return (f"the plan missed by {held[0] - planned}: {planned} {'instance' if planned == 1 else 'instances'} "
                f"did not hold the target, {held[0]} did")
    return (f"the plan missed by more than {max(runs) - planned}: no size up to {max(runs)} held the target "
            "on this machine")


def markdown(res: dict, argv: list[str]) -> str:
    plan = res["plan"]
    m = plan["measurement"]
    cal = plan["calibration"] or {}
    app = res.get("app", "reference")
    begin, end = markers(app)
    title = "" if app == "reference" else f": {APPS[app].split(',')[0]}"
    lines = [begin, f"## The planner against a real fleet{title} (`scripts/bench-plan {' '.join(argv)}`)", "",
             f"Measured {res['date']} on {res['machine']}; the machine is shared with other "
             f"test and benchmark runs, so figures move from run to run. {res['elapsed_s']:.0f} s in all.", "",
             f"1. `{shlex.join(res['measure_argv'])}` on "
             f"{'the default spec' if app == 'reference' else 'the spec of docs/your-app.md'} ({APPS[app]}): one instance alone on a loopback port, the load tester straight "
             f"at it on {', '.join(m['urls'])}, {m['bounds']}; {m['stopped']}. The latency it must "
             f"hold is min(2 s target, `health.timeout` 1 s) = {cal.get('p99_target_ms', 0):g} ms.", "",
             "A step holds when p99 < that, errors < 1 % and fewer than `health.failures` (3) health probes "
             "in a row fail (`GET /health` every 0.25 s during the step, each with `health.timeout`).", "",
             "| users | req/s | p95 ms | p99 ms | errors | requests | failed probes (most in a row) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in m["steps"]:
        lines.append(f"| {s['users']} | {s['rps']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | "
                     f"{s['error_rate_pct']:.2f}% | {s['requests']} | {s['failed_probes']} of {s['probes']} "
                     f"({s['failed_run']}) |")
    lines += ["", f"The plan for {res['users']} users: **{plan['instances']} "
              f"{'instance' if plan['instances'] == 1 else 'instances'}** ({plan['verdict']}; "
              f"{cal.get('source', '')}; memory expected {plan['memory_expected_mib']} MiB).", "",
              f"2. A real daemon fleet (the spec's app, gunicorn, health and memory keys; managed "
              f"nginx) at each size, {res['users']} users of the load tester through nginx on the same "
              f"URLs for {res['seconds']:g} s after a 3 s warm-up (longer than `health.failures` x "
              "`health.interval` = 3 x 10 s); holds = p99 < 2 s, errors < 1 %, no instance restarted and "
              "fewer than 3 failed health probes in a row (failed probes are the daemon's "
              "`instance.unhealthy` events).", "",
              "| instances | req/s | p95 ms | p99 ms | errors | requests | failed probes (most in a row) | restarts | target |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
    for n in sorted(res["runs"]):
        x = res["runs"][n]
        tag = " (planned)" if n == plan["instances"] else ""
        lines.append(f"| {n}{tag} | {x['rps']:.1f} | {x['p95_ms']:.1f} | {x['p99_ms']:.1f} | "
                     f"{x['error_rate_pct']:.2f}% | {x['requests']} | {x['failed_probes']} ({x['failed_in_a_row']}) | "
                     f"{x['restarts']} | "
                     f"{'holds' if x['holds'] else 'misses'} |")
    lines += ["", f"**{res['verdict']}.**", ""]
    warns = sorted({w for x in res["runs"].values() for w in x["warnings"]})
    if warns:
        lines += ["Load tester warnings: " + "; ".join(warns), ""]
    lines.append(end)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench-plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--app", choices=sorted(APPS), default="reference", help="whose plan (default: reference)")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--url", dest="urls", action="append", help="paths (default: /)")
    p.add_argument("--seconds", type=float, default=40.0,
                   help="load per fleet (default 40: longer than health.failures x health.interval, "
                        "3 x 10 s, so that an instance whose probes fail is restarted within it)")
    p.add_argument("--measure-seconds", type=float, default=40.0, help="plan --measure's --max-seconds")
    p.add_argument("--max-requests", type=int, default=400_000, help="bound per fleet run")
    p.add_argument("--max-extra", type=int, default=2, help="sizes above a plan that missed to try")
    p.add_argument("--write", help="replace this section of the Markdown file")
    a = p.parse_args(argv)
    if not (1 <= a.users <= 4000 and 5 <= a.seconds <= 120 and 5 <= a.measure_seconds <= 120
            and 0 <= a.max_extra <= 4):
        p.error("--users 1..4000, --seconds 5..120, --measure-seconds 5..120, --max-extra 0..4")
    urls = a.urls or ["/"]
    t0 = time.monotonic()
    machine = machine_line()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    log(f"plan --measure for {a.users} users ...")
    spec = app_spec(a.app)
    plan, shown, text = measure(spec, a.users, urls, a)
    print(text, file=sys.stderr)
    planned = plan["instances"]
    if not 1 <= planned <= 8 or plan["problems"]:
        raise SystemExit(f"the plan ({planned} instances; {plan['problems']}) is not one this bench runs")
    runs: dict[int, dict] = {}
    sizes = [planned] + ([planned - 1] if planned > 1 else [])
    for n in sizes:
        log(f"fleet of {n}, {a.users} users for {a.seconds:g} s ...")
        runs[n] = one_fleet(spec, n, a.users, urls, a.seconds, a.max_requests)
        log(json.dumps(runs[n]))
    if not runs[planned]["holds"]:
        for n in range(planned + 1, planned + 1 + a.max_extra):
            log(f"the plan missed; fleet of {n} ...")
            runs[n] = one_fleet(spec, n, a.users, urls, a.seconds, a.max_requests)
            log(json.dumps(runs[n]))
            if runs[n]["holds"]:
                break
    res = {"app": a.app, "users": a.users, "seconds": a.seconds, "plan": plan, "measure_argv": shown, "runs": runs,
           "verdict": verdict_text(planned, runs), "machine": machine, "date": date,
           "elapsed_s": time.monotonic() - t0}
    out = Path(tmpdir("plan-result")) / "result.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    log(f"raw result: {out}")
    md = markdown(res, argv)
    print(md)
    if a.write:
        write_section(a.write, md, *markers(a.app))
    return 0


if __name__ == "__main__":
    sys.exit(main())
