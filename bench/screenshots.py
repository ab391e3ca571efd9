"""The dashboard's screenshots in docs/ (scripts/screenshots): a real fleet of 4 instances under
a small bounded load, the page in Debian's headless Chromium at 1280 px wide, photographed

* during a rolling restart (`POST /fleet/restart`): docs/dashboard-rolling-restart.png, taken
  half-way (one instance replaced, the others still on their old masters);
* after a memory recycle: a worker allocates 150 MiB through the reference app's test endpoint
  (`/debug/alloc`) against a 120 MiB per-worker limit and the watchdog recycles it:
  docs/dashboard-memory-recycle.png.

The charts span 3 minutes here (`dashboard.history_seconds: 180`, a point a second) so that a
run of a few minutes fills them; the shipped default is 15 minutes, a point every 5 s.
Every process is ended by pid at the end, also after an error."""
from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.util import REPO, log
from loadtest import BackgroundLoad
from support import browser
from support.browser import open_page, rows, wait
from support.harness import Daemon

SPEC = {"instances": {"count": 4, "min": 1, "max": 6},
        "dashboard": {"sample_interval": 1, "history_seconds": 180},
        "memory": {"worker_limit_mb": 120, "samples_over": 3, "sample_interval": 1.0}}


def shoot(driver, path: Path) -> None:
    """The whole page, at 1280 px wide, as PNG."""
    height = driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": min(height, 2400), "deviceScaleFactor": 1,
                            "mobile": False})
    time.sleep(0.3)  # one frame after the resize
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.write_bytes(base64.b64decode(shot["data"]))
    log(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1024} KiB)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/screenshots", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the PNGs (default docs/)")
    p.add_argument("--warmup", type=float, default=60,
                   help="seconds of load before the first picture (default 60)")
    args = p.parse_args(argv)
    why = browser.missing()
    if why:
        print(f"scripts/screenshots: {why}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="ultrascale-shots-"))
    d = Daemon(tmp, SPEC)
    driver = None
    load = None
    try:
        log("starting a fleet of 4")
        d.start()
        load = BackgroundLoad(f"http://127.0.0.1:{d.nginx_port}/", users=8, think_ms=20,
                              duration_limit=args.warmup + 120, timeout=5.0)
        load.start()
        driver = browser.start(1280, 800)
        open_page(driver, d.api_url)
        log(f"{args.warmup:g} s of load for the charts")
        time.sleep(args.warmup)

        log("rolling restart")
        old_pids = {i["pid"] for i in d.fleet()["instances"]}
        status, body = d.api("POST", "/fleet/restart")
        assert status == 202, body
        # Half-way: one instance replaced already (a new pid, running), another still on its old
        # master (a restart is a replacement: nothing leaves the upstream)
        wait(lambda: any(r["pid"] not in old_pids and r["state"] == "running" for r in rows(driver))
             and any(r["pid"] in old_pids for r in rows(driver)), 60,
             "one instance replaced and one still to go on the page", interval=0.05)
        time.sleep(0.4)
        shoot(driver, args.out / "dashboard-rolling-restart.png")
        d.wait_until(lambda f: not any(i["restart_pending"] for i in f["instances"]) and all(
            i["serving"] for i in f["instances"]), timeout=120, what="rolling restart done")
        time.sleep(15)

        log("memory recycle")
        victim = d.fleet()["instances"][1]
        urllib.request.urlopen(f"http://127.0.0.1:{victim['port']}/debug/alloc?mb=150", timeout=20).read()
        wait(lambda: d.events("watchdog.recycled"), 60, "the watchdog to recycle the worker")
        d.wait_until(lambda f: f["instances"][1]["workers"] and all(i["serving"] for i in f["instances"]),
                     timeout=60, what="the fresh worker")
        time.sleep(4)
        wait(lambda: "watchdog.recycled" in driver.find_element("id", "event-list").text, 20,
             "the event on the page")
        shoot(driver, args.out / "dashboard-memory-recycle.png")
    finally:
        if driver is not None:
            driver.quit()
        if load is not None:
            result = load.stop()
            log(f"load: {result.ok} ok, {result.failed} failed")
        d.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
