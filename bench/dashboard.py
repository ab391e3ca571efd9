"""What the dashboard costs the daemon (scripts/bench-dashboard): RSS with 16 instances and a
full history, CPU with one viewer connected, each side by side with a daemon of the same fleet
whose dashboard is off (`dashboard.enabled: false`), in the same run.

Memory: the history ring holds `ceil(history_seconds / sample_interval) + 1` points; the shipped
15 minutes at a point every 5 s is 181 points. Waiting 15 minutes to fill it is replaced by the
same 181-point ring filled ten times faster (`history_seconds: 90`, `sample_interval: 0.5`): the
same points of 16 instances each, real samples of the real fleet, only closer together.

CPU: a second daemon with the shipped defaults (15 minutes, 5 s) and the dashboard on, idle
for a window, then for a window with the page open in Debian's headless Chromium (one viewer:
the event stream, /fleet, /health and /alerts every 5 s, /ui/history every 5 s); the daemon's
own process CPU (not its gunicorn instances) over each window, next to the daemon with the
dashboard off over the same windows.

Instances: the reference app, 1 gevent worker each, no nginx (the dashboard does not depend on
it; two fleets of 16 are 64 processes on a small machine). Every process is ended by pid."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.util import log, machine_info
from support import browser
from support.harness import Daemon

N = 16


def fleet_spec(dashboard: dict) -> dict:
    return {"instances": {"count": N, "min": 1, "max": N}, "dashboard": dashboard,
            "memory": {"worker_limit_mb": 200},  # 16 x (master + worker) x 200 MiB fits the 8 GiB budget
            "health": {"interval": 1.0}}


def start(tag: str, dashboard: dict) -> Daemon:
    d = Daemon(Path(tempfile.mkdtemp(prefix=f"ultrascale-dash-{tag}-")), fleet_spec(dashboard), nginx=False,
               span=N + 4)
    d.start(wait=False)
    return d


def ready(*daemons: Daemon) -> None:
    for d in daemons:
        d.wait_until(lambda f: f["ready"] == f["desired"] == N and all(i["workers"] for i in f["instances"]),
                     timeout=240, what=f"{N} instances ready")


def rss(d: Daemon, samples: int = 5) -> tuple[float, float]:
    """The daemon process's RSS and USS in MiB, the median of a few samples 1 s apart."""
    p = psutil.Process(d.proc.pid)
    r, u = [], []
    for _ in range(samples):
        m = p.memory_full_info()
        r.append(m.rss / 2**20)
        u.append(m.uss / 2**20)
        time.sleep(1)
    return sorted(r)[samples // 2], sorted(u)[samples // 2]


def cpu_window(daemons: list[Daemon], seconds: float) -> list[float]:
    """Percent of one core used by each daemon process (itself only) over the window."""
    procs = [psutil.Process(d.proc.pid) for d in daemons]
    before = [sum(p.cpu_times()[:2]) for p in procs]
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return [100 * (sum(p.cpu_times()[:2]) - b) / dt for p, b in zip(procs, before)]


def points(d: Daemon) -> int:
    return len(d.api("GET", "/ui/history")[1]["points"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench-dashboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=float, default=60, help="seconds of each CPU window (default 60)")
    args = ap.parse_args(argv)
    why = browser.missing()
    if why:
        print(f"scripts/bench-dashboard: {why}", file=sys.stderr)
        return 1
    made: list[Daemon] = []
    driver = None
    try:
        log(f"memory: two fleets of {N}, dashboard off and on (181-point ring filled at 0.5 s)")
        off = start("off", {"enabled": False})
        made.append(off)
        full = start("full", {"history_seconds": 90, "sample_interval": 0.5})
        made.append(full)
        ready(off, full)
        deadline = time.monotonic() + 240
        while points(full) < 181 and time.monotonic() < deadline:
            time.sleep(2)
        n_points = points(full)
        sample = full.api("GET", "/ui/history")[1]["points"][-1]
        assert len(sample["ports"]) == N, sample
        time.sleep(5)  # a few more turns of the ring at full size
        rss_off, uss_off = rss(off)
        rss_full, uss_full = rss(full)
        full.cleanup()
        made.remove(full)

        log("cpu: dashboard on with the shipped defaults, idle, then with one viewer")
        on = start("on", {})
        made.append(on)
        ready(on)
        time.sleep(10)
        idle_off, idle_on = cpu_window([off, on], args.window)
        driver = browser.start()
        browser.open_page(driver, on.api_url)
        browser.wait(lambda: len(browser.rows(driver)) == N, 30, "the page showing the fleet")
        view_off, view_on = cpu_window([off, on], args.window)
        alive = driver.execute_script("return document.body.dataset.live")
        info = machine_info()
    finally:
        if driver is not None:
            driver.quit()
        for d in made:
            d.cleanup()

    date = time.strftime("%Y-%m-%d")
    print(f"\n{date}, {info['cores']} vCPU {info['cpu_model']}, {info['memory_gib']} GiB, {info['os']}, "
          f"Python {info['python']}; {N} instances of the reference app, 1 gevent worker each, no nginx\n")
    print("| daemon process | dashboard off | dashboard on | cost |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| RSS, history full ({n_points} points x {N} instances) | {rss_off:.1f} MiB | {rss_full:.1f} MiB "
          f"| {rss_full - rss_off:+.1f} MiB |")
    print(f"| USS, same | {uss_off:.1f} MiB | {uss_full:.1f} MiB | {uss_full - uss_off:+.1f} MiB |")
    print(f"| CPU, no viewer ({args.window:g} s) | {idle_off:.2f} % | {idle_on:.2f} % "
          f"| {idle_on - idle_off:+.2f} % |")
    print(f"| CPU, one viewer in Chromium ({args.window:g} s, stream live: {alive}) | {view_off:.2f} % | "
          f"{view_on:.2f} % | {view_on - view_off:+.2f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
