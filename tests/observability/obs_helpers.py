"""Helpers for the observability tests (a uniquely named module so test dirs do not collide)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from support.waiting import wait_for  # noqa: F401 (the tests import it from here)

ROOT = Path(__file__).resolve().parents[2]

# Run in a subprocess with PROMETHEUS_MULTIPROC_DIR set: forks `workers` children, each of which
# records traffic through the app's own AppMetrics (so the files are exactly what gunicorn
# workers write). argv: workers requests errors_per_100 slow_per_100 cache_hits cache_misses [pool]
_WRITER = r"""
import os, sys
workers, requests, err, slow, hits, misses = map(int, sys.argv[1:7])
pool = int(sys.argv[7]) if len(sys.argv) > 7 else -1
from app.monitoring import AppMetrics
import prometheus_client  # once here, not in each child: the metric files are still made after the fork
routes = ["/", "/health", "/cached/{key}", "/items/{id}", "/io", "/socket.io/", "unmatched"]
children = []
for w in range(workers):
    pid = os.fork()
    if pid == 0:
        m = AppMetrics()
        for i in range(requests):
            route = routes[i % len(routes)]
            status = "5xx" if i % 100 < err else ("4xx" if i % 50 == 7 else "2xx")
            seconds = 3.0 if i % 100 < slow else 0.002 * (1 + i % 40)
            m.observe(route, "GET" if i % 5 else "POST", status, seconds)
        for _ in range(hits):
            m.cache_event("hits_memory")
        for _ in range(misses):
            m.cache_event("misses")
        m.cache_event("evictions", 3)
        if pool >= 0:
            from prometheus_client import Gauge
            Gauge("mongodb_connections_in_use", "MongoDB pool connections checked out",
                  namespace="ultrascale", registry=m.registry, multiprocess_mode="livesum").set(pool)
        os._exit(0)
    children.append(pid)
for pid in children:
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
"""


def write_app_metrics(directory, *, workers=4, requests=500, errors_per_100=0, slow_per_100=0,
                      cache_hits=80, cache_misses=20, pool=None) -> subprocess.Popen:
    """Start a writer for one instance directory; call .wait() on the result."""
    os.makedirs(directory, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    env["PYTHONPATH"] = str(ROOT)
    args = [sys.executable, "-c", _WRITER, str(workers), str(requests), str(errors_per_100),
            str(slow_per_100), str(cache_hits), str(cache_misses)]
    if pool is not None:
        args.append(str(pool))
    return subprocess.Popen(args, env=env, cwd=str(ROOT))


def write_many(dirs, **kw) -> None:
    procs = [write_app_metrics(d, **kw) for d in dirs]
    try:
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
