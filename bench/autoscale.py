"""The autoscaling figure (issue 14): one load trace, 100 -> 1000 -> 2000 -> 100 users, run
against three fleets in the same run -- fixed at min, fixed at max, autoscaled -- and replayed
through the Kubernetes HPA algorithm with its default settings (a simulation on the same signal).

    scripts/bench-autoscale [--phase 15] [--think 1000] [--max 4] [--autoscaled cpu=70,wait=25]
                            [--write docs/benchmarks.md]

Per second it records users, requests, errors and p99 (the built-in load tester through the
managed nginx), the instance count (desired and ready, from GET /fleet) and the fleet's CPU
(the instances' worker CPU seconds from GET /fleet); then instance-seconds, the reaction time
of each scale-up (load step -> the new capacity serving), direction changes, and the seconds
p99 spent over the assessment's target for the current user count.

The users think between requests (--think, default 1000 ms: one request a second per user);
the phases are short (--phase seconds each, the last one twice as long so that the scale-down
shows) to keep the run to a few minutes on a 2-core machine. The autoscaled fleets (one per
--autoscaled, by default `cpu=70` and `cpu=70,wait=25`) use the spec's defaults except their
targets, the scale-down window (--phase instead of 300 s) and the sync period and metrics
window (2 s and 4 s), which docs/autoscaling.md discusses.

Everything runs on 127.0.0.1, bounded in time; every process started is ended by pid.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from loadtest import BackgroundLoad
from bench.util import machine_line, write_section
from support.harness import Daemon

BEGIN, END = "<!-- autoscale-figures:begin -->", "<!-- autoscale-figures:end -->"
PATH = "/cached/hot"


def target_p99_s(users: int) -> float:
    """The assessment's target for `users`: 0.5 s at 100 users, 5 s at 4000; linear between
    (only the two ends are given; the interpolation is our choice)."""
    return 0.5 + max(0, users - 100) * (5.0 - 0.5) / (4000 - 100)


def trace(phase: float) -> list[tuple[float, float, int]]:
    """(start, end, users) of each phase."""
    steps = [(100, phase), (1000, phase), (2000, phase), (100, 2 * phase)]
    out, t = [], 0.0
    for users, length in steps:
        out.append((t, t + length, users))
        t += length
    return out


def users_at(tr, t: float) -> int:
    for start, end, users in tr:
        if start <= t < end:
            return users
    return tr[-1][2]


class FleetSampler:
    """GET /fleet every second: desired, ready, and the workers' CPU seconds."""

    def __init__(self, d: Daemon, t0: float):
        self.d, self.t0 = d, t0
        self.rows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "FleetSampler":
        psutil.cpu_percent(None)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic() - self.t0
            try:
                f = self.d.fleet()
                cpu = sum(w["cpu_seconds"] for i in f["instances"] for w in i["workers"])
                row = {"t": round(t, 2), "desired": f["desired"], "ready": f["ready"],
                       "running": sum(1 for i in f["instances"] if i["state"] == "running"),
                       "cpu_s": cpu, "host_cpu": psutil.cpu_percent(None)}
                status, auto = self.d.api("GET", "/autoscale")
                if status == 200 and auto.get("enabled"):
                    row["signals"] = {k: v.get("value") for k, v in auto.get("signals", {}).items()}
                self.rows.append(row)
            except Exception:  # noqa: BLE001 - a missed sample is a gap, not a failure
                pass
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - self.t0 - t)))

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.rows


def run_fleet(label: str, overrides: dict, tr, think_ms: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"ultrascale-autoscale-{label}-"))
    d = Daemon(tmp, overrides, tuned=False)
    loads: list[tuple[float, BackgroundLoad]] = []
    try:
        d.start()
        time.sleep(2)
        url = f"http://127.0.0.1:{d.nginx_port}{PATH}"
        t0 = time.monotonic()
        wall0 = time.time()
        sampler = FleetSampler(d, t0).start()
        # Users are added and removed as groups, so the load never pauses between phases.
        end = tr[-1][1]
        groups = [(0.0, end, 100), (tr[1][0], tr[2][1], 900), (tr[2][0], tr[2][1], 1000)]
        pending = sorted(groups)
        while pending or any(l.running for _, l in loads):
            now = time.monotonic() - t0
            while pending and pending[0][0] <= now:
                start, stop, users = pending.pop(0)
                load = BackgroundLoad(url, users=users, duration_limit=stop - start, think_ms=think_ms,
                                      ramp=1.0, timeout=10.0)
                load.start()
                loads.append((time.monotonic() - t0, load))
            if now > end + 30:
                break
            time.sleep(0.1)
        results = [(start, load.stop()) for start, load in loads]
        fleet_rows = sampler.stop()
        events = d.api("GET", "/events?limit=5000")[1].get("events", [])
    finally:
        for _, load in loads:
            try:
                load.stop()
            except Exception:  # noqa: BLE001
                pass
        d.stop()
        d.cleanup()
    per_second: dict[int, dict] = {}
    ok = failed = 0
    for start, res in results:
        ok += res.ok
        failed += res.failed
        for row in res.timeline:
            sec = int(start + row["t"] - 1)
            cell = per_second.setdefault(sec, {"requests": 0, "errors": 0, "p99_ms": None})
            cell["requests"] += row["requests"]
            cell["errors"] += row["errors"]
            if row.get("p99_ms") is not None:
                cell["p99_ms"] = max(cell["p99_ms"] or 0.0, row["p99_ms"])
    scale_events = [{"t": round(e["time"] - wall0, 2), "desired": e["desired"], "previous": e["previous"],
                     "source": e.get("source")} for e in events if e["event"] == "fleet.scale"]
    decisions = [{"t": round(e["time"] - wall0, 2), "action": e["event"].split(".", 1)[1],
                  "reason": e.get("reason", "")} for e in events if e["event"].startswith("autoscale.")]
    return {"label": label, "ok": ok, "failed": failed, "per_second": per_second, "fleet": fleet_rows,
            "scale_events": scale_events, "decisions": decisions,
            "error_counts": _summed(r.error_counts for _, r in results)}


def _summed(counts) -> dict:
    """Error counts of the user groups, added up by kind."""
    out: dict = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def summarize(run: dict, tr, window: float | None) -> dict:
    rows = run["fleet"]
    inst_s = 0.0
    for a, b in zip(rows, rows[1:]):
        inst_s += a["running"] * (b["t"] - a["t"])
    over = 0
    for sec, cell in run["per_second"].items():
        if cell["p99_ms"] is not None and cell["p99_ms"] / 1000 > target_p99_s(users_at(tr, sec + 0.5)):
            over += 1
    # reaction: each step up in users -> the first time, within that phase, the ready count rose
    # above its value at the step (the new capacity serving); None: no new capacity in the phase
    reactions = []
    for (start, stop, users), prev in zip(tr[1:], tr):
        if users <= prev[2]:
            continue
        before = [r for r in rows if r["t"] <= start]
        base = before[-1]["ready"] if before else None
        after = [r for r in rows if start < r["t"] <= stop]
        rose = next((r["t"] for r in after if base is not None and r["ready"] > base), None)
        reactions.append(None if rose is None else round(rose - start, 1))
    desired = [r["desired"] for r in rows]
    changes = [(rows[i]["t"], 1 if desired[i] > desired[i - 1] else -1)
               for i in range(1, len(desired)) if desired[i] != desired[i - 1]]
    flips = sum(1 for a, b in zip(changes, changes[1:]) if a[1] != b[1] and
                (window is None or b[0] - a[0] < window))
    return {"ok": run["ok"], "failed": run["failed"], "error_counts": run["error_counts"],
            "instance_seconds": round(inst_s, 1), "p99_over_target_s": over,
            "max_instances": max(desired) if desired else None, "reactions_s": reactions,
            "direction_changes_within_window": flips,
            "mean_host_cpu": round(sum(r["host_cpu"] for r in rows) / max(1, len(rows)), 1)}


def hpa_simulation(run: dict, tr, lo: int, hi: int, workers: int, start_delay: float,
                   cpu_target: float) -> dict:
    """The HPA with its defaults (sync every 15 s, tolerance 0.1, scale-up 4 pods or 100 % per
    15 s, scale-down over a 300 s window) on the CPU the autoscaled run measured: the fleet's
    total worker CPU each second, shared by the simulated ready instances."""
    from pathlib import Path as P

    from ultrascaled.core import autoscale as core
    from ultrascaled.spec import parse_spec
    spec = parse_spec(f"instances: {{min: {lo}, max: {hi}, count: {lo}}}\n"
                      "autoscale: {enabled: true, sync_period_seconds: 15, stale_after_seconds: 30, "
                      f"host_cpu_saturation_percent: null, target: {{cpu_utilization: {cpu_target}}}}}\n",
                      base_dir=P("/tmp"), cpu_count=2)
    pol, bounds = spec.autoscale, spec.autoscale.bounds(spec.instances)
    rows = run["fleet"]
    total = {}   # second -> total worker CPU percent (of one core)
    for a, b in zip(rows, rows[1:]):
        if b["t"] > a["t"]:
            total[int(b["t"])] = max(0.0, 100.0 * (b["cpu_s"] - a["cpu_s"]) / (b["t"] - a["t"]))
    st, wanted, ready_at = core.State(), lo, [-1.0] * lo
    out, inst_s = [], 0.0
    end = int(tr[-1][1])
    for sec in range(0, end + 1):
        ready = sum(1 for r in ready_at[:wanted] if r <= sec)
        if sec % 15 == 0 and sec in total:
            window = [total[s] for s in range(max(0, sec - 4), sec + 1) if s in total]
            cpu = sum(window) / len(window) / max(1, ready * workers)
            o = core.Observation(ready, wanted, {"cpu_utilization": core.Signal(cpu, sec)})
            d, st = core.decide(st, o, wanted, pol, bounds, now=float(sec))
            if d.desired > wanted:
                ready_at = ready_at[:wanted] + [sec + start_delay] * (d.desired - wanted)
            elif d.desired < wanted:
                ready_at = ready_at[:d.desired]
            wanted = d.desired
        inst_s += wanted
        out.append({"t": sec, "desired": wanted, "ready": ready})
    return {"rows": out, "instance_seconds": float(inst_s), "max_instances": max(r["desired"] for r in out)}


def at(rows: list[dict], t: float, key: str):
    best = None
    for r in rows:
        if r["t"] <= t:
            best = r[key]
    return best


def markdown(res: dict, argv: list[str]) -> str:
    tr = res["trace"]
    runs, sums = res["runs"], res["summary"]
    labels = list(runs)
    autos = [lb for lb in labels if lb.startswith("autoscaled")]
    shown = [a for i, a in enumerate(argv) if a != "--json" and (i == 0 or argv[i - 1] != "--json")]
    title = f"## Autoscaling on a load trace (`scripts/bench-autoscale {' '.join(shown)}`)"
    lines = [BEGIN, title, "",
             f"Measured {res['date']} on {res['machine']}. The default fleet (reference app, gevent, "
             f"`workers: auto` = {res['workers']} per instance, managed nginx), `{PATH}`, users thinking "
             f"{res['think_ms']:g} ms between requests, phases of {res['phase']:g} s: "
             + " -> ".join(f"{u} users ({e - s:g} s)" for s, e, u in tr) + ". "
             f"The fleets run one after the other in the same run: fixed at {res['min']}, fixed at "
             f"{res['max']}, and autoscaled {res['min']}..{res['max']} with the targets in their labels "
             "(cpu = `cpu_utilization`, wait = `cpu_wait_percent`; sync 2 s, metrics window 4 s, "
             "scale-down window "
             f"{res['down_window']:g} s, the rest the spec's defaults: the host CPU guard at 90 % unless the "
             "label says otherwise). "
             "p99 target: the assessment's, 0.5 s at 100 users to 5 s at 4000, linear between. "
             "The HPA rows replay the same trace through the HPA algorithm with its defaults (sync "
             "15 s, scale-down window 300 s) on the fleet CPU that autoscaled run measured.", "",
             "| fleet | requests ok | failed | p99 over target (s) | instance-seconds | max instances | "
             "reaction to each step up (s) | direction changes within a window | mean host CPU |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for label in labels:
        sm = sums[label]
        lines.append(f"| {label} | {sm['ok']:,} | {sm['failed']} {sm['error_counts'] or ''} | "
                     f"{sm['p99_over_target_s']} | {sm['instance_seconds']:g} | {sm['max_instances']} | "
                     f"{', '.join('-' if r is None else f'{r:g}' for r in sm['reactions_s']) or '-'} | "
                     f"{sm['direction_changes_within_window']} | {sm['mean_host_cpu']}% |")
    for label in autos:
        h = res["hpa"][label]
        lines.append(f"| HPA defaults, simulated on the {label} run | | | | {h['instance_seconds']:g} | "
                     f"{h['max_instances']} | | | |")
    lines += ["", "Over time (every 5 s): p99 in ms (the worst second), instances ready / desired, the "
              "autoscaler's signals as `GET /autoscale` gave them (CPU and run-queue wait, % of a core per "
              "worker), "
              "and what the simulated HPA would run:", "",
              "| t (s) | users | " + " | ".join(f"{lb} p99" for lb in labels) + " | "
              + " | ".join(f"{lb}: instances, cpu, wait | HPA" for lb in autos) + " |",
              "|---:|---:|" + "---:|" * len(labels) + "---|---:|" * len(autos)]
    end = tr[-1][1]
    for t in range(0, int(end) + 1, 5):
        cells = []
        for label in labels:
            ps = runs[label]["per_second"]
            vals = [ps[x]["p99_ms"] for x in range(t, t + 5) if x in ps and ps[x]["p99_ms"] is not None]
            cells.append(f"{max(vals):.0f}" if vals else "-")
        for label in autos:
            rows = runs[label]["fleet"]
            win = [r for r in rows if t <= r["t"] < t + 5 and r.get("signals")]
            sig = win[-1]["signals"] if win else {}
            cpu, wait = sig.get("cpu_utilization"), sig.get("cpu_wait_percent")
            hrow = next((r for r in res["hpa"][label]["rows"] if r["t"] == t), None)
            cells.append(f"{at(rows, t + 4.9, 'ready')} / {at(rows, t + 4.9, 'desired')}, "
                         f"{'-' if cpu is None else f'{cpu:.0f}'}, {'-' if wait is None else f'{wait:.0f}'}")
            cells.append(str(hrow["desired"]) if hrow else "-")
        lines.append(f"| {t} | {users_at(tr, t + 0.5)} | " + " | ".join(cells) + " |")
    for label in autos:
        lines += ["", f"The decisions of the {label} fleet (events `autoscale.*`; a hold is an event when "
                  "its reason changes), t from the trace's start:", "", "```"]
        for dcs in runs[label]["decisions"][:30]:
            lines.append(f"{dcs['t']:7.1f}s {dcs['action']:10} {dcs['reason'][:170]}")
        lines.append("```")
    lines += ["", END]
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench-autoscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", type=float, default=15.0, help="seconds per phase (the last is twice as long)")
    p.add_argument("--think", type=float, default=1000.0, help="ms each user thinks between requests")
    p.add_argument("--min", type=int, default=1)
    p.add_argument("--max", type=int, default=4)
    p.add_argument("--autoscaled", action="append", metavar="TARGETS",
                   help="an autoscaled fleet's targets, e.g. cpu=70,wait=25 (keys cpu, wait, p95, "
                        "inflight; guard=off or a percent); repeatable; default: cpu=70 and "
                        "cpu=70,wait=25")
    p.add_argument("--only", default="all",
                   help="fleets whose label starts with these, e.g. fixed,autoscaled")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--write", help="replace the autoscale-figures section of this Markdown file")
    p.add_argument("--replot", metavar="JSON", help="no run: summarize and write the results a run "
                   "saved with --json (after a change to the summary or the table)")
    args = p.parse_args(argv)
    if args.replot:
        return replot(Path(args.replot), args.write)
    if not 5 <= args.phase <= 120 or args.think < 0 or not 1 <= args.min <= args.max <= 8:
        p.error("--phase must be 5..120 s, --think >= 0, 1 <= --min <= --max <= 8")
    tr = trace(args.phase)
    down = args.phase
    base = {"instances": {"min": args.min, "max": args.max},
            "memory": {"fleet_budget_mb": 16384}}
    names = {"cpu": "cpu_utilization", "wait": "cpu_wait_percent", "p95": "p95_latency_seconds",
             "inflight": "in_flight_per_worker"}
    fixed = {"instances": {**base["instances"], "count": args.min}}
    setups = {f"fixed {args.min}": {**base, **fixed},
              f"fixed {args.max}": {**base, "instances": {**base["instances"], "count": args.max}}}
    for text in args.autoscaled or ["cpu=70", "cpu=70,wait=25"]:
        target: dict = {k: None for k in names.values()}
        guard: float | None = 90.0
        try:
            for item in text.split(","):
                key, _, value = item.partition("=")
                if key.strip() == "guard":
                    guard = None if value.strip() == "off" else float(value)
                else:
                    target[names[key.strip()]] = float(value)
        except (KeyError, ValueError):
            p.error(f"--autoscaled {text!r}: use KEY=VALUE pairs, keys {', '.join(names)} and guard")
        label = "autoscaled " + ", ".join(f"{k} {target[v]:g}" for k, v in names.items()
                                          if target[v] is not None)
        label += "" if guard == 90.0 else f", host guard {'off' if guard is None else f'{guard:g}%'}"
        setups[label] = {**base, **fixed,
                         "autoscale": {"enabled": True, "sync_period_seconds": 2, "metrics_window_seconds": 4,
                                       "host_cpu_saturation_percent": guard, "target": target,
                                       "behavior": {"scale_down": {"stabilization_window_seconds": down}}}}
    chosen = list(setups) if args.only == "all" else [k for k in setups if any(
        k.startswith(x.strip()) for x in args.only.split(",") if x.strip())]
    if not any(k.startswith("autoscaled") for k in chosen):
        p.error("--only must include an autoscaled fleet")
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_line(), "argv": argv,
           "trace": tr, "think_ms": args.think, "phase": args.phase, "min": args.min, "max": args.max,
           "down_window": down, "workers": max(1, min(4, (os.cpu_count() or 1) // 2)),
           "runs": {}, "summary": {}}
    for label in chosen:
        print(f"bench-autoscale: {label} ...", file=sys.stderr, flush=True)
        res["runs"][label] = run_fleet(label.replace(" ", "-"), setups[label], tr, args.think)
        window = down if label.startswith("autoscaled") else None
        res["summary"][label] = summarize(res["runs"][label], tr, window)
        print(json.dumps(res["summary"][label]), file=sys.stderr, flush=True)
    res["hpa"] = {}
    for label in [k for k in res["runs"] if k.startswith("autoscaled")]:
        auto = res["runs"][label]
        delays = []
        for e in auto["scale_events"]:
            if e["desired"] > e["previous"]:
                ready = next((r["t"] for r in auto["fleet"]
                              if r["t"] >= e["t"] and r["ready"] >= e["desired"]), None)
                if ready is not None:
                    delays.append(ready - e["t"])
        auto["start_delay_s"] = round(sorted(delays)[len(delays) // 2], 1) if delays else 2.0
        target = setups[label]["autoscale"]["target"]["cpu_utilization"] or 70.0
        res["hpa"][label] = hpa_simulation(auto, tr, args.min, args.max, res["workers"],
                                           auto["start_delay_s"], target)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return write(res, argv, args.write)


def replot(path: Path, output: str | None) -> int:
    res = json.loads(path.read_text())
    for run in res["runs"].values():
        run["per_second"] = {int(k): v for k, v in run["per_second"].items()}
    res["trace"] = [tuple(x) for x in res["trace"]]
    for label, run in res["runs"].items():
        res["summary"][label] = summarize(run, res["trace"],
                                          res["down_window"] if label.startswith("autoscaled") else None)
    return write(res, res.get("argv", []), output)


def write(res: dict, argv: list[str], output: str | None) -> int:
    md = markdown(res, argv)
    print(md)
    if output:
        write_section(output, md, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
