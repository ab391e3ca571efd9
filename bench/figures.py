"""Fleet figures for docs/benchmarks.md (issues 4, 5 and 6), measured in one run:

  1. the daemon's CPU and memory with 16 instances, memory sampled every second, idle and while
     GET /metrics is scraped every second;
  2. a worker recycled by the memory watchdog under load through nginx: time from the worker
     crossing its limit to its replacement serving, and failed requests meanwhile;
  3. the reference app's cached endpoint with Redis up and with Redis down (req/s, p99), and the
     cache hit rate under a Zipf-distributed key mix;
  4. the chaos run (random kill -9 of workers and masters under load, the daemon killed once).

    scripts/bench-fleet [--quick] [--only footprint,recycle,cache,chaos] [--write docs/benchmarks.md]

Everything runs on 127.0.0.1, bounded in time; every process started is ended by pid.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from bench.util import REPO, machine_line, write_section
from loadtest import BackgroundLoad, Config, run
from support.harness import Daemon, free_port_block, http_get

BEGIN, END = "<!-- fleet-figures:begin -->", "<!-- fleet-figures:end -->"


def tmpdir(tag: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"ultrascale-{tag}-"))


def daemon_usage(pid: int, seconds: float, during=None) -> dict:
    p = psutil.Process(pid)
    c0, t0 = p.cpu_times(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        if during:
            during()
        time.sleep(1.0 if not during else max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
    c1, wall = p.cpu_times(), time.monotonic() - t0
    mem = p.memory_full_info()
    return {"cpu_pct": round(100 * ((c1.user - c0.user) + (c1.system - c0.system)) / wall, 2),
            "rss_mib": round(mem.rss / 2**20, 1), "uss_mib": round(mem.uss / 2**20, 1),
            "seconds": round(wall, 1)}


def footprint(quick: bool) -> dict:
    d = Daemon(tmpdir("footprint"), {"instances": {"count": 16, "max": 16}, "gunicorn": {"workers": 1},
                                     "memory": {"sample_interval": 1.0, "fleet_budget_mb": 16384}}, span=20)
    try:
        d.start()
        time.sleep(3)
        secs = 10 if quick else 30
        idle = daemon_usage(d.proc.pid, secs)
        scrape = lambda: urllib.request.urlopen(d.api_url + "/metrics", timeout=5).read()  # noqa: E731
        scraped = daemon_usage(d.proc.pid, secs, during=scrape)
        size = len(scrape())
        return {"instances": 16, "idle": idle, "scraped_every_1s": scraped, "metrics_bytes": size}
    finally:
        d.stop()
        d.cleanup()


def recycle(quick: bool) -> dict:
    d = Daemon(tmpdir("recycle"), {"memory": {"worker_limit_mb": 120, "samples_over": 2,
                                              "sample_interval": 1.0}})
    runs = []
    try:
        d.start()
        load = BackgroundLoad(f"http://127.0.0.1:{d.nginx_port}/", users=200, duration_limit=120, timeout=2.0)
        load.start()
        load.wait_for_ok(500)
        try:
            for _ in range(1 if quick else 3):
                fleet = d.wait_until(lambda f: f["instances"][0]["workers"], timeout=10, what="workers")
                old = fleet["instances"][0]["workers"][0]["pid"]
                assert http_get(d.base_port, "/debug/alloc?mb=150", timeout=10)[0] == 200
                crossed = time.monotonic()

                def replaced(f):
                    ws = f["instances"][0]["workers"]
                    return ws and ws[0]["pid"] != old
                d.wait_until(replaced, timeout=30, what="replacement")
                new = d.fleet()["instances"][0]["workers"][0]["pid"]
                while True:  # the replacement answers
                    status, body = http_get(d.base_port, "/health", timeout=2)
                    if status == 200 and json.loads(body).get("pid") == new:
                        break
                    time.sleep(0.01)
                runs.append(round(time.monotonic() - crossed, 2))
                time.sleep(1)
        finally:
            result = load.stop()
        return {"limit_mib": 120, "samples_over": 2, "sample_interval_s": 1.0,
                "crossing_to_replacement_serving_s": runs, "client_ok": result.ok,
                "client_failed": result.failed, "errors": result.error_counts}
    finally:
        d.stop()
        d.cleanup()


def zipf_paths(keys: int, s: float = 1.1) -> list[tuple[str, float]]:
    return [(f"/cached/k{k}", 1.0 / (k ** s)) for k in range(1, keys + 1)]


def cache_hits(d: Daemon) -> dict:
    text = urllib.request.urlopen(d.api_url + "/metrics", timeout=10).read().decode()
    out = {"memory": 0.0, "redis": 0.0, "misses": 0.0}
    for line in text.splitlines():
        if line.startswith("ultrascale_cache_hits_total{"):
            tier = re.search(r'tier="(\w+)"', line).group(1)
            out[tier] = out.get(tier, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("ultrascale_cache_misses_total{"):
            out["misses"] += float(line.rsplit(" ", 1)[1])
    return out


def cache(quick: bool) -> dict:
    port = free_port_block(1)
    tmp = tmpdir("cache")
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                              "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    d = Daemon(tmp, {"instances": {"count": 2}, "gunicorn": {"workers": 1},
                     "app": {"env": {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}}})
    secs = 5 if quick else 15
    out = {}
    try:
        time.sleep(0.3)
        d.start()
        paths = zipf_paths(10_000)
        for label in ("redis_up", "redis_down"):
            if label == "redis_down":
                redis.terminate()
                redis.wait(5)
                time.sleep(1)
            run(Config(url=f"http://127.0.0.1:{d.nginx_port}/", users=200, duration=3 if quick else 5,
                       paths=paths, timeout=2.0))  # warm-up, not measured: both runs start warm
            before = cache_hits(d)
            r = run(Config(url=f"http://127.0.0.1:{d.nginx_port}/", users=200, duration=secs, paths=paths,
                           timeout=2.0))
            after = cache_hits(d)
            delta = {k: after[k] - before.get(k, 0.0) for k in after}
            lookups = delta["memory"] + delta["redis"] + delta["misses"]
            out[label] = {"rps": round(r.rps), "p50_ms": round(r.latency.p50, 1),
                          "p99_ms": round(r.latency.p99, 1), "failed": r.failed, "ok": r.ok,
                          "hit_rate_pct": round(100 * (delta["memory"] + delta["redis"]) / lookups, 1)
                          if lookups else None,
                          "memory_hits": int(delta["memory"]), "redis_hits": int(delta["redis"]),
                          "misses": int(delta["misses"]), "client_cpu_cores": round(r.client_cpu_cores, 2)}
        return {"users": 200, "seconds": secs, "keys": "10,000, Zipf s=1.1, after a warm-up", **out}
    finally:
        if redis.poll() is None:
            redis.kill()
            redis.wait()
        d.stop()
        d.cleanup()


def chaos(quick: bool) -> dict:
    out = tmpdir("chaos") / "chaos.json"
    cmd = [sys.executable, "-m", "bench", "chaos", "--duration", "20" if quick else "60",
           "--daemon-kill", "--seed", "42", "--json", str(out)]
    subprocess.run(cmd, check=False, timeout=600, cwd=REPO)
    report = json.loads(out.read_text())
    return {"command": "scripts/chaos " + " ".join(cmd[4:-2]), **{k: report[k] for k in (
        "duration_s", "instances", "workers", "users", "kills_by_kind", "client",
        "converged_after_last_kill_s", "problems", "passed")}}




def markdown(res: dict, argv: list[str]) -> str:
    lines = [BEGIN, f"## Fleet figures (`scripts/bench-fleet {' '.join(argv)}`)", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine_line()}.", ""]
    if "footprint" in res:
        f = res["footprint"]
        lines += ["### The daemon with 16 instances (memory sampled every 1 s)", "",
                  "| | daemon CPU | RSS | USS | goal |", "|---|---:|---:|---:|---|",
                  f"| idle, {f['idle']['seconds']:g} s | {f['idle']['cpu_pct']}% | {f['idle']['rss_mib']} MiB | "
                  f"{f['idle']['uss_mib']} MiB | CPU < 1%, RSS < 50 MiB |",
                  f"| `GET /metrics` every 1 s ({f['metrics_bytes']:,} bytes each) | "
                  f"{f['scraped_every_1s']['cpu_pct']}% | {f['scraped_every_1s']['rss_mib']} MiB | "
                  f"{f['scraped_every_1s']['uss_mib']} MiB | cheap enough to leave on |", ""]
    if "recycle" in res:
        r = res["recycle"]
        lines += ["### A leaking worker recycled under load (200 users through nginx)", "",
                  f"Limit {r['limit_mib']} MiB, {r['samples_over']} samples over at {r['sample_interval_s']:g} s; "
                  "the worker allocates 150 MiB through `/debug/alloc`.", "",
                  "| crossing the limit → replacement serving (s) | client ok | client failed (goal 0) |",
                  "|---|---:|---:|",
                  f"| {', '.join(map(str, r['crossing_to_replacement_serving_s']))} | {r['client_ok']:,} | "
                  f"{r['client_failed']} {r['errors'] or ''} |", ""]
    if "cache" in res:
        c = res["cache"]
        lines += [f"### Cached endpoint, {c['users']} users through nginx, {c['seconds']} s, keys {c['keys']}", "",
                  "| Redis | req/s | p50 ms | p99 ms | failed | hit rate (goal > 90%) | memory hits | Redis hits | misses |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label in ("redis_up", "redis_down"):
            x = c[label]
            lines.append(f"| {'up' if label == 'redis_up' else 'down'} | {x['rps']:,} | {x['p50_ms']} | "
                         f"{x['p99_ms']} | {x['failed']} | {x['hit_rate_pct']}% | {x['memory_hits']:,} | "
                         f"{x['redis_hits']:,} | {x['misses']:,} |")
        lines.append("")
    if "chaos" in res:
        c = res["chaos"]
        cl = c["client"]
        lines += ["### Chaos", "",
                  f"`{c['command']}`: {c['duration_s']:g} s of random `kill -9` under {c['users']} users through "
                  f"nginx, {c['instances']} instances x {c['workers']} workers.", "",
                  "| kills | client ok | client failed | error rate (goal < 1%) | converged after last kill | fleet checks |",
                  "|---|---:|---:|---:|---:|---|",
                  f"| {c['kills_by_kind']} | {cl['ok']:,} | {cl['failed']} {cl['error_counts'] or ''} | "
                  f"{cl['error_rate_pct'] or 0:.3f}% | {c['converged_after_last_kill_s']} s | "
                  f"{'; '.join(c['problems']) or 'no orphans, no duplicates'} |", ""]
    lines += ["Notes: the goal of under 1% idle CPU is issue 2's, for 8 instances (see section 4 above);",
              "with 16 it grows with the per-instance sampling and probes. On this 2-core machine the",
              "Redis tier costs throughput: redis-server, the extra round trip on a memory miss and the",
              "load generator share the same two cores; its hits are misses that another instance or a",
              "restarted worker did not have to compute. The Redis-down run comes second, so its memory",
              "tiers start warmer.", "", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench-fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter runs")
    p.add_argument("--only", default="footprint,recycle,cache,chaos")
    p.add_argument("--write", help="replace the fleet-figures section of this Markdown file")
    args = p.parse_args(argv)
    parts = {"footprint": footprint, "recycle": recycle, "cache": cache, "chaos": chaos}
    chosen = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in parts]
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(parts)}")
    res = {}
    for name in chosen:
        print(f"bench-fleet: {name} ...", file=sys.stderr, flush=True)
        res[name] = parts[name](args.quick)
        print(json.dumps(res[name]), file=sys.stderr, flush=True)
    md = markdown(res, argv)
    print(md)
    if args.write:
        write_section(args.write, md, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
