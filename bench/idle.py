"""The daemon's idle cost as the fleet grows (issue 25, part 4), in one run:

  1. idle CPU (% of one core) and RSS of the supervisor process at 4, 8, 16, 32 and 64
     instances of the reference app (1 sync worker each, nginx off): supervisord, ultrascaled
     as of a git ref (`--before`, default main) and the current tree, interleaved per count;
  2. the memory watchdog's reaction time, before and after: a worker made to cross its limit
     (`/debug/alloc`) at a random moment, to its `watchdog.recycled` event, with the spec's
     memory defaults.

    python -m bench idle [--counts 4,8,16,32,64] [--idle 30] [--before main] [--write docs/benchmarks.md]

CPU is read from /proc/PID/task/*/schedstat (ns on CPU) at the start and end of the window, RSS from
/proc/PID/status every 5 s (the largest); nothing else touches the daemon meanwhile. The
host's CPU over each window is reported beside it (other programs on a shared machine show
there). Everything runs on 127.0.0.1, bounded in time; every process started is ended by pid.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench.setups import render_supervisord_conf
from bench.util import REPO, log, machine_line, stop_pid, wait_ok, write_section
from support.harness import Daemon, free_port_block, http_get, tool
from ultrascaled.spec import parse_spec

BEGIN, END = "<!-- idle-figures:begin -->", "<!-- idle-figures:end -->"
BUDGET_MB = 262144     # the fleet budget never refuses the larger counts (the bench measures idle cost)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid`, in ns (/proc/PID/task/*/schedstat: on-CPU time at the
    scheduler's resolution; utime + stime count whole clock ticks of 10 ms, too coarse here).
    A thread that ended meanwhile is not counted: the daemon's threads live as long as it does."""
    total = 0
    for t in os.scandir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"{t.path}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def host_busy() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def window(pid: int, seconds: float) -> dict:
    c0, h0, t0 = cpu_ns(pid), host_busy(), time.monotonic()
    rss = [rss_kib(pid)]
    while time.monotonic() - t0 < seconds:
        time.sleep(min(5.0, max(0.0, seconds - (time.monotonic() - t0))))
        rss.append(rss_kib(pid))
    c1, h1, wall = cpu_ns(pid), host_busy(), time.monotonic() - t0
    return {"cpu_pct": round(100 * (c1 - c0) / 1e9 / wall, 3), "rss_mib": round(max(rss) / 1024, 1),
            "seconds": round(wall, 1),
            "host_busy_pct": round(100 * (h1[0] - h0[0]) / max(1, h1[1] - h0[1]), 1)}


# ---- the setups -----------------------------------------------------------------------------

class Ultra:
    def __init__(self, label: str, count: int, pythonpath: str | None):
        self.label, self.count, self.pythonpath = label, count, pythonpath

    def start(self) -> int:
        self.tmp = Path(tempfile.mkdtemp(prefix="ultrascale-idle-"))
        n = self.count
        self.d = Daemon(self.tmp, {"instances": {"count": n, "min": 1, "max": n},
                                   "gunicorn": {"workers": 1, "worker_class": "sync"},
                                   "memory": {"fleet_budget_mb": BUDGET_MB}},
                        nginx=False, span=n + 2, tuned=False, name=f"idle{n}")
        if self.pythonpath:
            self.d.env = dict(os.environ, PYTHONPATH=self.pythonpath + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.d.start(wait=False)
        self.d.wait_until(lambda f: f["ready"] == f["desired"] == len(f["instances"]) == n,
                          timeout=60 + 2 * n, what=f"{n} instances ready")
        return self.d.proc.pid

    def stop(self) -> None:
        if getattr(self, "d", None) and self.d.proc and self.d.proc.poll() is None:
            stop_pid(self.d.proc.pid, signal.SIGTERM, timeout=90)
        self.d.cleanup()


class Supervisord:
    label = "supervisord"

    def __init__(self, count: int):
        self.count = count

    def start(self) -> int:
        n = self.count
        self.tmp = Path(tempfile.mkdtemp(prefix="ultrascale-idle-sv-"))
        (self.tmp / "log").mkdir()
        base = free_port_block(n)
        spec = parse_spec(f"""
name: idlesv
app: {{directory: {REPO}, python: {sys.executable}, module: 'app.wsgi:application', config: app/gunicorn_conf.py}}
instances: {{count: {n}, min: 1, max: {n}, base_port: {base}}}
gunicorn: {{workers: 1, worker_class: sync}}
memory: {{fleet_budget_mb: {BUDGET_MB}}}
paths: {{state_dir: {self.tmp / 'state'}, log_dir: {self.tmp / 'log'}}}
nginx: {{mode: "off"}}
""", source="<bench idle supervisord>", base_dir=REPO)
        conf = self.tmp / "supervisord.conf"
        env = dict(os.environ)
        conf.write_text(render_supervisord_conf(spec, n, n, self.tmp, env))
        out = open(self.tmp / "supervisord.out", "ab")
        self.proc = subprocess.Popen([tool("supervisord"), "-c", str(conf)], stdout=out, stderr=out,
                                     stdin=subprocess.DEVNULL, cwd=str(self.tmp), env=env,
                                     start_new_session=True)
        out.close()
        for i in range(n):
            if not wait_ok(spec.port(i), timeout=60 + 2 * n):
                raise RuntimeError(f"supervisord instance {spec.port(i)} did not start")
        return self.proc.pid

    def stop(self) -> None:
        if getattr(self, "proc", None) and self.proc.poll() is None:
            stop_pid(self.proc.pid, signal.SIGTERM, timeout=90)
        shutil.rmtree(self.tmp, ignore_errors=True)


def export(ref: str, into: Path) -> tuple[str, str]:
    into.mkdir(parents=True, exist_ok=True)
    data = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    tarfile.open(fileobj=io.BytesIO(data)).extractall(into, filter="data")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True,
                            text=True, check=True).stdout.strip()
    return str(into), commit


# ---- 1. idle cost by fleet size -------------------------------------------------------------------

def scaling(counts: list[int], idle_s: float, settle_s: float, before_src: str | None) -> dict:
    rows: dict = {}
    for n in counts:
        rows[n] = {}
        setups = [Supervisord(n)] + ([Ultra("before", n, before_src)] if before_src else []) + \
            [Ultra("after", n, str(REPO))]
        for s in setups:
            key = s.label
            try:
                log(f"idle: {key} with {n} instances: starting")
                pid = s.start()
                time.sleep(settle_s)   # start-up settled: first samples and probes, the heap trimmed
                r = window(pid, idle_s)
                rows[n][key] = r
                log(f"idle: {key:12s} n={n:3d} CPU {r['cpu_pct']:.3f} % RSS {r['rss_mib']:.1f} MiB "
                    f"(host busy {r['host_busy_pct']:.1f} %)")
            finally:
                s.stop()
    return rows


# ---- 2. the watchdog's reaction time ------------------------------------------------------------

def reaction(label: str, pythonpath: str | None, trials: int) -> dict:
    """A worker made to cross memory.worker_limit_mb (120 MiB here; /debug/alloc?mb=150) at a
    random moment; seconds from the allocation's answer to the watchdog.recycled event. The
    spec's memory defaults otherwise (sample_interval, samples_over, relaxed_*)."""
    tmp = Path(tempfile.mkdtemp(prefix="ultrascale-idle-react-"))
    d = Daemon(tmp, {"instances": {"count": 1}, "memory": {"worker_limit_mb": 120}}, nginx=False)
    if pythonpath:
        d.env = dict(os.environ, PYTHONPATH=pythonpath + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = []
    try:
        d.start()
        port = d.base_port
        for _ in range(trials):
            seen = len(d.events("watchdog.recycled"))
            old = d.wait_until(lambda f: f["instances"][0]["workers"], timeout=20, what="worker")
            old_pid = old["instances"][0]["workers"][0]["pid"]
            time.sleep(8 + random.uniform(0, 5))     # back to the relaxed interval, at a random phase
            status, _ = http_get(port, "/debug/alloc?mb=150", timeout=10)
            crossed = time.time()
            assert status == 200, status
            deadline = time.monotonic() + 30
            while len(d.events("watchdog.recycled")) <= seen and time.monotonic() < deadline:
                time.sleep(0.05)
            ev = d.events("watchdog.recycled")[seen:]
            assert ev, f"{label}: no recycle within 30 s"
            out.append(round(time.time() - crossed, 2))
            d.wait_until(lambda f: f["instances"][0]["workers"] and
                         f["instances"][0]["workers"][0]["pid"] != old_pid, timeout=30, what="replacement")
        return {"trials_s": out, "median_s": statistics.median(out), "max_s": max(out)}
    finally:
        d.stop()
        d.cleanup()


# ---- the chart and the doc ----------------------------------------------------------------------

def chart(rows: dict, path: Path, labels: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    counts = sorted(rows)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("supervisord", "s--"), ("before", "o:"), ("after", "o-")):
        if not all(key in rows[n] for n in counts):
            continue
        a.plot(counts, [rows[n][key]["cpu_pct"] for n in counts], style, label=labels[key])
        b.plot(counts, [rows[n][key]["rss_mib"] for n in counts], style, label=labels[key])
    for ax, title, unit in ((a, "idle CPU of the supervisor", "% of one core"),
                            (b, "RSS of the supervisor", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.set_xlabel("instances (1 sync worker each)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(res: dict) -> str:
    rows, labels = res["rows"], res["labels"]
    counts = sorted(rows, key=int)
    out = [BEGIN, "", f"Measured {res['date']} on {res['machine']}; command: `{res['command']}`. "
           f"Idle window {res['idle_s']:g} s per cell after {res['settle_s']:g} s of settling, nginx off, "
           "1 sync worker per instance; supervisord, before and after interleaved per count. "
           "CPU: % of one core (on-CPU time of all its threads, schedstat, over the window); RSS: the largest of the window. "
           "Host busy: the whole machine's CPU over the same window (other programs included).", ""]
    keys = [k for k in ("supervisord", "before", "after") if all(k in rows[n] for n in counts)]
    out.append("| instances | " + " | ".join(f"{labels[k]} CPU | {labels[k]} RSS" for k in keys) +
               " | host busy |")
    out.append("|---:|" + "---:|---:|" * len(keys) + "---:|")
    for n in counts:
        cells = []
        for k in keys:
            r = rows[n][k]
            cells += [f"{r['cpu_pct']:.3f} %", f"{r['rss_mib']:.1f} MiB"]
        busy = max(rows[n][k]["host_busy_pct"] for k in keys)
        out.append(f"| {n} | " + " | ".join(cells) + f" | ≤ {busy:.1f} % |")
    out.append("")
    if len(counts) >= 2:
        lo, hi = counts[0], counts[-1]
        per = []
        for k in keys:
            c = (rows[hi][k]["cpu_pct"] - rows[lo][k]["cpu_pct"]) / (int(hi) - int(lo))
            m = (rows[hi][k]["rss_mib"] - rows[lo][k]["rss_mib"]) / (int(hi) - int(lo))
            per.append(f"{labels[k]} {c:.4f} % CPU and {m:.2f} MiB")
        out.append(f"Cost per added instance from {lo} to {hi}: " + "; ".join(per) + ".")
        out.append("")
    if res.get("reaction"):
        out.append("Memory watchdog, worker crossing `memory.worker_limit_mb` (120 MiB, `/debug/alloc?mb=150`) "
                   "at a random moment → `watchdog.recycled`, memory defaults otherwise:")
        out.append("")
        out.append("| version | worst case (documented) | trials | median | max |")
        out.append("|---|---:|---|---:|---:|")
        for k, r in res["reaction"].items():
            out.append(f"| {labels[k]} | {r['worst_s']:g} s | {', '.join(f'{x:.2f}' for x in r['trials_s'])} s | "
                       f"{r['median_s']:.2f} s | {r['max_s']:.2f} s |")
        out.append("")
    if res.get("chart"):
        out.append(f"![idle cost by fleet size]({Path(res['chart']).name})")
        out.append("")
    out.append(END)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench idle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="4,8,16,32,64")
    p.add_argument("--idle", type=float, default=30.0, help="seconds measured per cell")
    p.add_argument("--settle", type=float, default=8.0, help="seconds after start before measuring")
    p.add_argument("--before", default="main", help="git ref measured beside the tree ('' to skip)")
    p.add_argument("--reaction-trials", type=int, default=4, help="0 to skip the watchdog part")
    p.add_argument("--write", help="Markdown file whose idle-figures section is replaced")
    p.add_argument("--chart", default=str(REPO / "docs" / "idle-scaling.png"))
    p.add_argument("--json", default="/tmp/ultrascale-bench-idle.json")
    a = p.parse_args(argv)
    counts = [int(x) for x in a.counts.split(",") if x.strip()]
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine_line(),
                 "command": "python -m bench idle " + shlex.join(argv if argv is not None else sys.argv[1:]),
                 "idle_s": a.idle, "settle_s": a.settle}
    before_src = None
    labels = {"supervisord": "supervisord", "after": "ultrascaled (this tree)"}
    if a.before:
        before_src, commit = export(a.before, Path(tempfile.mkdtemp(prefix="ultrascale-idle-before-")))
        labels["before"] = f"ultrascaled before ({a.before})" if commit.startswith(a.before) else \
            f"ultrascaled before ({a.before} {commit})"
    res["labels"] = labels
    res["rows"] = scaling(counts, a.idle, a.settle, before_src)
    if a.reaction_trials:
        from ultrascaled.core.memwatch import worst_reaction
        from ultrascaled.spec import MemorySection
        m = MemorySection()
        res["reaction"] = {}
        if before_src:
            r = reaction("before", before_src, a.reaction_trials)
            r["worst_s"] = m.samples_over * m.sample_interval
            res["reaction"]["before"] = r
            log(f"reaction before: {r}")
        r = reaction("after", str(REPO), a.reaction_trials)
        r["worst_s"] = worst_reaction(m.sample_interval, m.relaxed_interval, m.samples_over)
        res["reaction"]["after"] = r
        log(f"reaction after: {r}")
    if a.chart:
        chart(res["rows"], Path(a.chart), labels)
        res["chart"] = a.chart
    if before_src:
        shutil.rmtree(before_src, ignore_errors=True)
    Path(a.json).write_text(json.dumps(res, indent=2))
    md = render(res)
    print(md)
    if a.write:
        write_section(a.write, md, BEGIN, END)
        log(f"wrote {a.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
