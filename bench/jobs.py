"""How late a scheduled job starts (issue 22: "schedule drift of a job: p50 and p99 of start time
against the schedule, over 100 runs; goal p99 <= 1 s"), side by side in one run with the loop
people hand-wire for a job every few seconds.

  ultrascaled   a real daemon (nginx off, one web instance) with a `kind: job` due `every: 1s`;
                each run appends `<run> <its own start time>` to a file, so the figure is the
                run's process starting, not the daemon deciding; its due time is the event's
                (`job.started`'s `due`): the grid of whole seconds
  shell loop    `while :; do CMD & sleep 1; done` for as many runs, measured against the grid
                of whole seconds from its first run (what a `sleep` loop keeps of a schedule)

Both with the same command (`sh -c 'echo ... >> FILE'`). `--hog` runs a busy loop on one core
beside both, as a loaded host would.

    python -m bench jobs [--runs 100] [--hog] [--write]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.util import Tracker, machine_line, publish
from support.harness import Daemon

BEGIN, END = "<!-- job-drift:begin -->", "<!-- job-drift:end -->"
BODY = 'echo "${ULTRASCALE_PROCESS##*/} $(date +%s.%N)" >> '


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def summary(late: list[float]) -> dict:
    return {"runs": len(late), "p50": percentile(late, 0.5), "p99": percentile(late, 0.99),
            "max": max(late), "mean": statistics.fmean(late)}


def daemon_drift(tmp: Path, tracker: Tracker, runs: int) -> dict:
    out = tmp / "daemon-runs.txt"
    (tmp / "daemon").mkdir(exist_ok=True)
    d = Daemon(tmp / "daemon", {"instances": {"count": 1, "min": 1, "max": 2}, "gunicorn": {"workers": 1},
                                "processes": {"tick": {"kind": "job", "every": "1s", "history": 1000,
                                                       "command": ["sh", "-c", BODY + str(out)]}}},
               nginx=False, span=6, tuned=False, name="bench-jobs")
    d.env = tracker.env()
    try:
        d.start()
        tracker.adopt(d.proc)
        deadline = time.monotonic() + runs * 1.5 + 30
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= runs + 1:
                break
            time.sleep(0.5)
        due = {e["run"]: e["due"] for e in d.api("GET", "/events?limit=10000")[1]["events"]
               if e["event"] == "job.started"}
        skipped = sum(1 for e in d.api("GET", "/events?limit=10000")[1]["events"] if e["event"] == "job.skipped")
    finally:
        d.cleanup()
    started = {int(r): float(t) for r, t in (line.split() for line in out.read_text().splitlines())}
    late = [started[r] - due[r] for r in sorted(started) if r in due][:runs]
    return {**summary(late), "skipped": skipped}


def loop_drift(tmp: Path, tracker: Tracker, runs: int) -> dict:
    out = tmp / "loop-runs.txt"
    script = (f"i=0; while [ $i -lt {runs} ]; do i=$((i+1)); ULTRASCALE_PROCESS=x/$i "
              f"sh -c '{BODY}{out}' & sleep 1; done; wait")
    p = tracker.spawn(["bash", "-c", script])
    p.wait(timeout=runs * 2 + 30)
    times = sorted(float(line.split()[1]) for line in out.read_text().splitlines())
    first = times[0]
    return {**summary([t - (first + k) for k, t in enumerate(times)]), "skipped": 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench-jobs", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=100, help="runs measured per setup, 10..1000 (default 100)")
    p.add_argument("--hog", action="store_true", help="a busy loop on one core beside both")
    p.add_argument("--write", action="store_true", help="put the table into docs/benchmarks.md")
    args = p.parse_args(argv)
    if not 10 <= args.runs <= 1000:
        p.error("--runs must be 10..1000")
    command = "scripts/bench-jobs " + " ".join(argv if argv is not None else sys.argv[1:])
    head = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine_line()}"
            f"{', a busy loop on one core beside it' if args.hog else ''}. Command: `{command.strip()}`.")
    tracker = Tracker()
    hog = tracker.spawn([sys.executable, "-c", "while True: pass"]) if args.hog else None
    try:
        with tempfile.TemporaryDirectory(prefix="ultrascale-bench-jobs-") as tmp:
            rows = {"ultrascaled `every: 1s`": daemon_drift(Path(tmp), tracker, args.runs),
                    "shell loop (`CMD & sleep 1`)": loop_drift(Path(tmp), tracker, args.runs)}
    finally:
        if hog is not None:
            hog.kill()
        tracker.cleanup(grace=5)
    lines = [BEGIN, f"## How late a scheduled job starts (`{command.strip()}`)", "",
             "Each run's own start time against its due time, `kind: job` `every: 1s` against a "
             "hand-wired `sleep` loop (goal: p99 <= 1 s).", "",
             head, "", "| setup | runs | late p50 | late p99 | late max | due runs skipped |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['runs']} | {r['p50'] * 1000:.0f} ms | {r['p99'] * 1000:.0f} ms "
                     f"| {r['max'] * 1000:.0f} ms | {r['skipped']} |")
    publish(lines, BEGIN, END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
