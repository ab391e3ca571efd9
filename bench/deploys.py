"""Restart and deploy figures (issue 13), side by side in one run:

  before       ultrascaled as of a git ref (default `main`), run from an export of that ref
  after        ultrascaled of this checkout
  supervisord  the supervisord setup of scripts/bench (static upstream, `supervisorctl restart`)

Per operation, under 200 users of the load tester (keep-alive; it counts the requests it had
to send again on a new connection as `reconnects`: a client that never retries sees those as
failures), 4 threads of non-retrying keep-alive POSTs and `wrk` (16 keep-alive connections;
its socket errors, read errors above all, are what a client that never retries sees): failed
requests, reconnects, POST and wrk failures, nginx reloads, the lowest serving capacity seen (instances RUNNING and in the
upstream, sampled every 50 ms) and wall time. Then, for `after` only, deploys of bad releases of
the reference app (import error; every request 500; ten times slower): time from deploy start
to the fleet back on the old release, and requests failed meanwhile.

Canary figures (`--canary N`, `after` only, instead of the operations): the reference app
deployed against itself N times under load (a false rollback is any of them rolled back), then
a release whose one new route raises, at about 1 % of the requests (rolled back, and the
verdict names the route?); written to docs/benchmarks.md with `--write`.

    scripts/bench-deploy [--before REF] [--setups before,after,supervisord] [--no-bad]
    scripts/bench-deploy --canary 50 [--write docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.setups import Before, Supervisord, Ultrascaled
from bench.util import Tracker, log

ROOT = Path(__file__).resolve().parents[1]
USERS = 200


class After(Ultrascaled):
    key, label = "after", "ultrascaled (after)"


def short_soak(s) -> None:
    s.daemon.spec["deploy"] = {"soak_seconds": 5, "min_requests": 20}   # a short soak for the bench
    s.daemon.write_spec()
    s.ctl("reload")


class Posts(threading.Thread):
    """Non-retrying keep-alive POST clients: an error is a failure, then a new connection."""

    def __init__(self, port: int, threads: int = 4):
        super().__init__(daemon=True)
        self.port, self.threads = port, threads
        self.ok = self.failed = 0
        self.samples: list[str] = []
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def one(self):
        conn = None
        deadline = time.monotonic() + 300
        while not self.halt.is_set() and time.monotonic() < deadline:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("POST", "/health", body=b"x" * 100)
                r = conn.getresponse()
                r.read()
                good = r.status < 500
                detail = f"HTTP {r.status}"
            except (OSError, http.client.HTTPException) as exc:
                good, detail = False, f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = None
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1
                    if len(self.samples) < 3:
                        self.samples.append(detail[:120])
            time.sleep(0.01)

    def run(self):
        ts = [threading.Thread(target=self.one, daemon=True) for _ in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def stop(self):
        self.halt.set()
        self.join(30)


class Wrk:
    """`wrk` beside the load tester: 16 keep-alive connections that never retry; its socket
    errors (connect, read, write, timeout) and non-2xx/3xx answers are failed requests. Started
    with a long -d and stopped with SIGINT, after which wrk prints its summary."""

    def __init__(self, url: str):
        import signal
        self.sigint = signal.SIGINT
        self.proc = subprocess.Popen(["wrk", "-t1", "-c16", "-d300s", "--timeout", "10s", url],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) \
            if shutil.which("wrk") else None

    def stop(self) -> dict:
        if self.proc is None:
            return {}
        self.proc.send_signal(self.sigint)
        try:
            out = self.proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out = self.proc.communicate()[0]
        import re
        done = re.search(r"(\d+) requests in", out)
        errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        e = [int(x) for x in errs.groups()] if errs else [0, 0, 0, 0]
        return {"wrk_requests": int(done.group(1)) if done else None,
                "wrk_failed": sum(e) + (int(non2xx.group(1)) if non2xx else 0),
                "wrk_errors": dict(zip(("connect", "read", "write", "timeout"), e))}


class Capacity(threading.Thread):
    """Lowest count of instances RUNNING and in the upstream (ultrascaled setups)."""

    def __init__(self, s):
        super().__init__(daemon=True)
        self.s, self.low, self.halt = s, None, threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                f = self.s.fleet()
                n = sum(1 for i in f["instances"] if i["serving"] and i["state"] == "running")
                self.low = n if self.low is None else min(self.low, n)
            except Exception:  # noqa: BLE001 - a missed sample
                pass
            time.sleep(0.05)

    def stop(self):
        self.halt.set()
        self.join(5)
        return self.low


def reloads(s) -> int | None:
    if not isinstance(s, Ultrascaled):
        return None
    try:
        return json.loads(json.dumps(s.daemon.api("GET", "/health")[1]))["nginx"].get("reload_count")
    except Exception:  # noqa: BLE001
        return None


def measure(s, name: str, action, loaded: bool = True) -> dict:
    from loadtest import BackgroundLoad
    bg = posts = None
    if loaded:
        bg = BackgroundLoad(s.url + "/", users=USERS, duration_limit=300, timeout=5.0)
        bg.start()
        bg.wait_for_ok(200, timeout=30)
        posts = Posts(int(s.url.rsplit(":", 1)[1]))
        posts.start()
        wrk = Wrk(s.url + "/")
        time.sleep(1.0)
    cap = Capacity(s) if isinstance(s, Ultrascaled) else None
    if cap:
        cap.start()
    r0 = reloads(s)
    t0 = time.monotonic()
    err = None
    try:
        how = action(s)
    except Exception as exc:  # noqa: BLE001 - in the table
        how, err = "", f"{type(exc).__name__}: {exc}"[:300]
    took = time.monotonic() - t0
    if loaded:
        time.sleep(1.5)
    low = cap.stop() if cap else None
    r1 = reloads(s)
    row = {"operation": name, "how": how, "error": err, "seconds": round(took, 2),
           "nginx_reloads": (r1 - r0) if r0 is not None and r1 is not None else None, "lowest_capacity": low}
    if loaded:
        res = bg.stop()
        posts.stop()
        row.update(wrk.stop())
        row.update(failed=res.failed, reconnects=res.reconnects, ok=res.ok, post_failed=posts.failed,
                   post_ok=posts.ok, samples=[f"{e.get('kind')} {e.get('detail', '')}"[:120]
                                              for e in (res.error_samples or [])[:2]] + posts.samples[:2])
    log(f"deploy-bench {s.key:12s} {name:32s} {json.dumps({k: v for k, v in row.items() if k != 'samples'})}")
    try:
        s.wait_stable(60)
    except Exception as exc:  # noqa: BLE001
        row["error"] = (row["error"] or "") + f" did not settle: {exc}"
    return row


def kill_master(s, port: int) -> str:
    import os
    import signal
    pid = s.master_pid(port)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if s.master_pid(port) not in (None, pid):
                break
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.05)
    return f"kill -9 master of {port}"


def deploy(s) -> str:
    s.ctl("deploy", str(ROOT))
    return f"ultrascalectl deploy {ROOT} (a release beside the one running; canary soak 5 s)"


def rollback(s) -> str:
    s.ctl("rollback")
    return "ultrascalectl rollback (canary soak 5 s)"


# (name, action, under load, ultrascaled only)
OPERATIONS = [
    ("scale 2→4", lambda s: s.scale(4), True, False),
    ("restart all 4, idle", lambda s: s.restart_all(), False, False),
    ("restart all 4, 200 users", lambda s: s.restart_all(), True, False),
    ("kill -9 one master, 200 users", lambda s: kill_master(s, s.ports()[1]), True, False),
    ("deploy 4, 200 users", deploy, True, True),
    ("rollback 4, 200 users", rollback, True, True),
    ("scale 4→2", lambda s: s.scale(2), True, False),
]


def bad_release(src: Path, dest: Path, kind: str) -> Path:
    """A copy of the reference app's checkout, broken one way."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "docs",
                                                           "tests"))
    wsgi = dest / "app" / "wsgi.py"
    text = wsgi.read_text()
    if kind == "import error":
        text = "import no_such_module_in_this_release  # noqa\n" + text
    elif kind == "one route raises":
        text += '''

_release_inner = application


def application(environ, start_response):  # bench: a new route that raises on every request
    if environ.get("PATH_INFO", "").startswith("/polls/stats/"):
        raise RuntimeError("stats view is broken")
    return _release_inner(environ, start_response)
'''
    else:
        delay = "import gevent; gevent.sleep(0.5)" if kind == "10x slower" else ""   # ~10x the old p95 under this load
        status = '"500 Internal Server Error"' if kind == "every request 500" else None
        text += f'''

_release_inner = application


def application(environ, start_response):  # bench: {kind}
    if environ.get("PATH_INFO") == "/health":
        return _release_inner(environ, start_response)
    {delay or "pass"}
    if {status!r} is not None:
        start_response({status}, [("Content-Type", "text/plain")])
        return [b"broken release"]
    return _release_inner(environ, start_response)
'''
    wsgi.write_text(text)
    return dest


def bad_deploys(s, run_dir: Path) -> list[dict]:
    from loadtest import BackgroundLoad
    rows = []
    for kind in ("import error", "every request 500", "10x slower"):
        rel = bad_release(ROOT, run_dir / f"release-{kind.replace(' ', '-')}", kind)
        bg = BackgroundLoad(s.url + "/", users=USERS, duration_limit=300, timeout=5.0)
        bg.start()
        bg.wait_for_ok(200, timeout=30)
        time.sleep(1.0)
        t0 = time.monotonic()
        out = s.ctl("deploy", str(rel), check=False)
        took = time.monotonic() - t0
        time.sleep(1.0)
        res = bg.stop()
        f = s.fleet()
        verdict = "rolled back" if out.returncode == 1 else ("deployed (not caught)" if out.returncode == 0
                                                             else f"exit {out.returncode}")
        row = {"release": kind, "outcome": verdict, "seconds": round(took, 2), "failed": res.failed,
               "reconnects": res.reconnects, "ok": res.ok, "message": (out.stderr or out.stdout).strip()[-300:],
               "verdict": (f.get("deploy") or {}).get("last_verdict")}
        log(f"deploy-bench bad release {kind:20s} {json.dumps({k: v for k, v in row.items() if k != 'message'})}")
        rows.append(row)
        if out.returncode == 0:   # not caught: go back for the next one
            s.ctl("rollback", check=False)
        s.wait_stable(60)
    return rows


CANARY_BEGIN, CANARY_END = "<!-- canary-routes:begin -->", "<!-- canary-routes:end -->"


def canary_figures(s, run_dir: Path, n: int) -> dict:
    """The same release deployed against itself `n` times under 200 users, then one whose new
    route raises on every request at about 1 % of them (2 more users on that route)."""
    from loadtest import BackgroundLoad
    same, verdicts = [], []
    for i in range(n):
        bg = BackgroundLoad(s.url + "/", users=USERS, duration_limit=300, timeout=5.0)
        bg.start()
        bg.wait_for_ok(200, timeout=30)
        out = s.ctl("deploy", str(ROOT), check=False)
        res = bg.stop()
        v = (s.fleet().get("deploy") or {}).get("last_verdict") or {}
        same.append({"exit": out.returncode, "failed": res.failed, "ok": res.ok, "verdict": v.get("detail")})
        verdicts.append(v)
        log(f"deploy-bench canary {i + 1}/{n}: exit {out.returncode} {v.get('detail')!r}")
        s.wait_stable(60)
    rel = bad_release(ROOT, run_dir / "release-route", "one route raises")
    bg = BackgroundLoad(s.url + "/", users=USERS, duration_limit=300, timeout=5.0)
    broken = BackgroundLoad(s.url + "/polls/stats/1/", users=2, duration_limit=300, timeout=5.0)
    bg.start()
    broken.start()
    bg.wait_for_ok(200, timeout=30)
    out = s.ctl("deploy", str(rel), check=False)
    res, bad = bg.stop(), broken.stop()
    failed = [e for e in s.daemon.events("deploy.failed")][-1:] if out.returncode == 1 else []
    route = {"exit": out.returncode, "message": (out.stderr or out.stdout).strip()[-400:],
             "share": round((bad.ok + bad.failed) / max(1, bad.ok + bad.failed + res.ok + res.failed), 4),
             "figure": failed[0].get("figure") if failed else None,
             "routes": failed[0].get("failed_routes") if failed else None,
             "canary_rate_5xx": failed[0].get("canary_rate_5xx") if failed else None,
             "others_failed": res.failed}
    log(f"deploy-bench canary route release: {json.dumps(route)}")
    return {"same": same, "route": route}


def canary_markdown(res: dict, argv: list[str]) -> str:
    same, route = res["same"], res["route"]
    rolled = sum(1 for r in same if r["exit"] == 1)
    other = sum(1 for r in same if r["exit"] not in (0, 1))
    lines = [CANARY_BEGIN, f"## The canary per route (`scripts/bench-deploy {' '.join(argv)}`)", "",
             f"Measured {res['date']} on {res['machine']}. The reference app under 200 users through nginx "
             "(`/`), 2 instances, `deploy.soak_seconds` 5, every other `deploy.*` at its default.", "",
             "| | deploys | rolled back | other exits | requests failed |", "|---|---:|---:|---:|---:|",
             f"| the same release against itself | {len(same)} | {rolled} | {other} | "
             f"{sum(r['failed'] for r in same):,} of {sum(r['ok'] + r['failed'] for r in same):,} |",
             f"| a new route that raises, {route['share']:.2%} of the requests | 1 | "
             f"{1 if route['exit'] == 1 else 0} | {0 if route['exit'] in (0, 1) else 1} | "
             f"{route['others_failed']:,} on `/` |", "",
             f"The broken release's verdict: figure `{route['figure']}`, routes {route['routes']}, the canary's "
             f"whole 5xx rate {route['canary_rate_5xx']}: `{route['message'].splitlines()[-1] if route['message'] else ''}`",
             CANARY_END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench-deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="main", help="git ref of the `before` setup (default main)")
    p.add_argument("--setups", default="before,after,supervisord")
    p.add_argument("--no-bad", action="store_true", help="skip the bad-release deploys")
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--canary", type=int, metavar="N", help="the canary figures instead: N self-deploys, "
                   "then a release with one failing route (`after` only)")
    p.add_argument("--write", help="with --canary: put its section into this markdown file")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.canary is not None:
        return run_canary(args, argv)
    keys = args.setups.split(",")
    run_dir = Path(f"/tmp/ultrascale-bench-deploy-{int(time.time())}")
    run_dir.mkdir(parents=True)
    tracker = Tracker()
    if "before" in keys:
        Before.export(args.before, run_dir)
    here = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    After.label = f"ultrascaled after ({here})"
    classes = {"before": Before, "after": After, "supervisord": Supervisord}
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "users": USERS, "setups": {}}
    try:
        for key in keys:
            (run_dir / key).mkdir()
            s = classes[key](tracker, run_dir / key)
            rows = []
            try:
                log(f"deploy-bench: starting {s.label} with 2 instances")
                s.start(2)
                if isinstance(s, Ultrascaled):
                    short_soak(s)
                    s.ctl("deploy", str(ROOT), check=True)   # a first release: the reference app
                for name, action, loaded, ours in OPERATIONS:
                    if ours and not isinstance(s, Ultrascaled):
                        continue
                    rows.append(measure(s, name, action, loaded))
                if key == "after" and not args.no_bad:
                    out["bad_releases"] = bad_deploys(s, run_dir)
            finally:
                s.stop()
            out["setups"][key] = {"label": s.label, "rows": rows}
    finally:
        tracker.cleanup()
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


def run_canary(args, argv: list[str]) -> int:
    from bench.util import machine_line, write_section
    machine = machine_line()
    if args.canary < 1:
        raise SystemExit("scripts/bench-deploy: --canary must be at least 1")
    run_dir = Path(f"/tmp/ultrascale-bench-deploy-{int(time.time())}")
    run_dir.mkdir(parents=True)
    tracker = Tracker()
    (run_dir / "after").mkdir()
    s = After(tracker, run_dir / "after")
    try:
        s.start(2)
        short_soak(s)
        s.ctl("deploy", str(ROOT), check=True)
        res = canary_figures(s, run_dir, args.canary)
    finally:
        s.stop()
        tracker.cleanup()
    res.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=machine)
    md = canary_markdown(res, [a for i, a in enumerate(argv) if a != "--json" and argv[i - 1:i] != ["--json"]])
    print(md)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.write:
        write_section(args.write, md, CANARY_BEGIN, CANARY_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
