"""The memory watchdog's cost per worker process: `procs.sample_tree` (a worker type's process
with its whole tree, issue 22) beside `procs.sample_group` (a gunicorn master and its direct
children, the web's), on a real tree of a parent and N forked children, timed over many calls.

    scripts/bench-worker-sample [--children 4] [--calls 2000]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time

from ultrascaled.effects import procs

TREE = textwrap.dedent("""
    import os, sys, time
    for _ in range(int(sys.argv[1])):
        if os.fork() == 0:
            while True:
                time.sleep(1)
    while True:
        time.sleep(1)
""")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench-worker-sample", description=__doc__.split("\n\n")[0])
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args(argv)
    p = subprocess.Popen([sys.executable, "-c", TREE, str(args.children)], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(procs.sample_tree(p.pid, "rss")) < args.children + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        print("| call | processes | µs per call |\n|---|---:|---:|")
        calls = (("sample_group (the web's: master + direct children)", lambda: procs.sample_group(p.pid, "rss")),
                 ("sample_tree (a worker type's: the whole tree)", lambda: procs.sample_tree(p.pid, "rss")))
        for name, fn in calls:
            out = fn()
            t = time.perf_counter()
            for _ in range(args.calls):
                out = fn()
            per = (time.perf_counter() - t) / args.calls
            n = len(out) if isinstance(out, list) else 1 + len(out[1])
            print(f"| {name} | {n} | {per * 1e6:.0f} |")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
