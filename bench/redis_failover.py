"""A primary killed under load, on three Redis topologies side by side (`scripts/redis-failover`).

For each of: one redis-server (the peer: killed, then restarted after ``--restart-after`` seconds,
as a host supervisor would), a Sentinel setup (1 primary, 2 replicas, 3 sentinels) and a Redis
Cluster (6 nodes), it starts the servers with ``tests/support/redis_servers``, one real gunicorn
(1 gevent worker) serving the reference app with ``REDIS_URL`` for that topology, and a bounded
load of ``/cached/<key>`` requests (half warm keys, half fresh keys, each a Redis lookup) from
``--threads`` threads; ``--kill-at`` seconds in, the primary is SIGKILLed. It reports requests,
failed requests (any non-200 or wrong value), max and p99 latency, seconds from the kill until the
topology has a primary again, and until the app answers a key written by someone else from Redis
again. Everything listens on 127.0.0.1 and is stopped by pid at the end, also after an error.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from support.harness import free_port_block
from support.redis_servers import LocalRedisCluster, LocalRedisSentinel, Node, _server_args, wait_for

REPO = Path(__file__).resolve().parent.parent
PREFIX = "ultrascale:cache:cached:"
APP_ENV = {"CACHE_REDIS_TIMEOUT": "0.25", "CACHE_BREAKER_FAILURES": "2", "CACHE_BREAKER_RETRY": "0.2"}


def compute(key: str) -> str:
    sys.path.insert(0, str(REPO))
    from app.wsgi import compute as c
    return c(key)


class Single:
    """One redis-server: no failover, a restart is the only way back."""

    def __init__(self, workdir: Path, restart_after: float):
        self.name = f"single redis-server (restarted after {restart_after:g} s)"
        port = free_port_block(1)
        self.node = Node(port, workdir / "single", _server_args(port, []))
        self.restart_after = restart_after
        self.url = f"redis://127.0.0.1:{self.node.port}/0"

    def start(self):
        self.node.start()
        self.node.wait_ready()
        return self

    def kill(self):
        self.node.kill()
        threading.Timer(self.restart_after, self.node.start).start()

    def recovered(self) -> bool:
        return self.node.alive and self.node.info("replication").get("role") == "master"

    def client(self):
        import redis
        return redis.Redis(port=self.node.port, socket_timeout=1)

    def stop(self):
        self.node.stop()


class Sentinel:
    name = "Sentinel: 1 primary, 2 replicas, 3 sentinels"

    def __init__(self, workdir: Path, restart_after: float):
        self.t = LocalRedisSentinel(workdir / "sentinel", replicas=2)
        self.url = self.t.url

    def start(self):
        self.t.start()
        return self

    def kill(self):
        self.victim = self.t.primary()
        self.victim.kill()

    def recovered(self) -> bool:
        ports = self.t.primary_port_by_sentinels()
        return len(ports) == 1 and self.victim.port not in ports

    def client(self):
        from redis.sentinel import Sentinel as S
        from support.redis_servers import SENTINEL_SERVICE
        return S([("127.0.0.1", p) for p in self.t.sentinel_ports], socket_timeout=1).master_for(
            SENTINEL_SERVICE, socket_timeout=1)

    def stop(self):
        self.t.stop()


class Cluster:
    name = "Redis Cluster: 3 primaries + 3 replicas"

    def __init__(self, workdir: Path, restart_after: float):
        self.t = LocalRedisCluster(workdir / "cluster")
        self.url = self.t.url

    def start(self):
        self.t.start()
        return self

    def kill(self):
        self.victim = self.t.primary_for(PREFIX + "{fo}")
        self.victim.kill()

    def recovered(self) -> bool:
        return self.t.healthy() and self.victim.port not in [n.port for n in self.t.primaries()]

    def client(self):
        from redis.cluster import ClusterNode, RedisCluster
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.t.ports],
                            socket_timeout=1)

    def stop(self):
        self.t.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, key: str, timeout: float = 10.0):
    url = f"http://127.0.0.1:{port}/cached/{quote(key, safe='')}"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def start_gunicorn(url: str, workdir: Path) -> tuple[subprocess.Popen, int]:
    """One gunicorn (1 gevent worker) serving the reference app with REDIS_URL=url, ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MONGODB_URI")}
    env.update(APP_ENV, REDIS_URL=url, LOG_LEVEL="error", ULTRASCALE_PORT=str(port))
    log = open(workdir / f"gunicorn-{port}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "app/gunicorn_conf.py", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--worker-class", "gevent", "--no-control-socket", "app.wsgi:application"],
        cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_for(lambda: get(port, "ready")[0] == 200, timeout=30, what="gunicorn")
    except BaseException:
        stop_gunicorn(proc)
        raise
    return proc, port


def stop_gunicorn(proc: subprocess.Popen | None) -> None:
    """By its process group (the session it was started in): master and worker."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def connections(workdir: Path, concurrency: tuple[int, ...] = (1, 10, 100)) -> list[tuple[int, int, int]]:
    """Redis connections one worker holds after bursts of ``c`` concurrent requests for fresh keys
    (each a Redis GET and SET) on the cluster: (c, connections, nodes they go to)."""
    import psutil
    from concurrent.futures import ThreadPoolExecutor
    topo = Cluster(workdir, 0)
    proc = None
    rows = []
    try:
        topo.start()
        proc, port = start_gunicorn(topo.url, workdir)
        worker = psutil.Process(proc.pid).children()[0]
        for c in concurrency:
            with ThreadPoolExecutor(c) as ex:
                list(ex.map(lambda k: get(port, k), [f"conn-{c}-{i}" for i in range(c * 10)]))
            conns = [x for x in worker.net_connections() if x.raddr and x.raddr.port in topo.t.ports]
            rows.append((c, len(conns), len({x.raddr.port for x in conns})))
    finally:
        stop_gunicorn(proc)
        topo.stop()
    return rows


def run_one(cls, workdir: Path, args) -> dict:
    topo = cls(workdir, args.restart_after)
    gunicorn = None
    stop = threading.Event()
    try:
        topo.start()
        gunicorn, port = start_gunicorn(topo.url, workdir)
        warm = [f"warm-{i}" for i in range(20)]
        for k in warm:
            get(port, k)
        results = {"n": 0, "failed": 0, "lat": []}
        lock = threading.Lock()

        def worker(tid: int):
            i = 0
            while not stop.is_set():
                i += 1
                key = warm[i % len(warm)] if i % 2 else f"fresh-{tid}-{i}"
                t0 = time.monotonic()
                ok = False
                try:
                    status, body = get(port, key)
                    ok = status == 200 and body.get("value") == compute(key)
                except Exception:
                    pass
                with lock:
                    results["n"] += 1
                    results["failed"] += 0 if ok else 1
                    results["lat"].append(time.monotonic() - t0)
        threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(args.threads)]
        for t in threads:
            t.start()
        time.sleep(args.kill_at)
        t_kill = time.monotonic()
        topo.kill()
        wait_for(topo.recovered, timeout=60, interval=0.05, what="a primary again")
        t_primary = time.monotonic() - t_kill
        client = topo.client()
        n = [0]

        def hit():
            n[0] += 1
            key = f"{{fo}}-probe-{n[0]}"
            client.set(PREFIX + key, json.dumps(compute(key)), px=300_000)
            return get(port, key)[1]["source"] == "redis"
        wait_for(hit, timeout=60, interval=0.05, what="Redis hits through the app")
        t_hits = time.monotonic() - t_kill
        time.sleep(max(0.0, args.duration - args.kill_at - t_hits))
        stop.set()
        for t in threads:
            t.join(15)
        lat = sorted(results["lat"])
        return {"topology": topo.name, "requests": results["n"], "failed": results["failed"],
                "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 1) if lat else None,
                "max_ms": round(lat[-1] * 1000, 1) if lat else None,
                "primary_s": round(t_primary, 2), "hits_s": round(t_hits, 2)}
    finally:
        stop.set()
        stop_gunicorn(gunicorn)
        time.sleep(args.restart_after if cls is Single else 0)   # let the restart timer fire first
        topo.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/redis-failover", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="concurrent request loops (default 2)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load per topology (default 15)")
    p.add_argument("--kill-at", type=float, default=3.0, help="seconds into the load to kill the primary")
    p.add_argument("--restart-after", type=float, default=3.0,
                   help="single server: seconds until it is restarted (default 3)")
    p.add_argument("--only", choices=("failover", "connections"),
                   help="one table: the failover run, or the Redis connections one worker holds")
    args = p.parse_args(argv)
    if not (1 <= args.threads <= 16 and 5 <= args.duration <= 120 and 0 < args.kill_at < args.duration):
        p.error("--threads 1-16, --duration 5-120 s, 0 < --kill-at < --duration")
    load = os.getloadavg()
    print(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, "
          f"Linux {platform.release()}, Python {platform.python_version()}, load average before: "
          f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}. Command: scripts/redis-failover "
          + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
    with tempfile.TemporaryDirectory(prefix="ultrascale-redis-failover-") as tmp:
        if args.only in (None, "failover"):
            print("| topology | requests | failed | p99 | max | primary again | Redis hits again |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for cls in (Single, Sentinel, Cluster):
                r = run_one(cls, Path(tmp) / cls.__name__, args)
                print(f"| {r['topology']} | {r['requests']:,} | {r['failed']} | {r['p99_ms']} ms "
                      f"| {r['max_ms']} ms | {r['primary_s']} s | {r['hits_s']} s |", flush=True)
            print()
        if args.only in (None, "connections"):
            print("| concurrent requests (fresh keys), Redis Cluster | connections of one worker | to nodes |")
            print("|---:|---:|---:|")
            for c, n, nodes in connections(Path(tmp) / "connections"):
                print(f"| {c} | {n} | {nodes} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
