"""`upstream_servers: range` with a real managed nginx: the tries of ports with no instance
(`connect() failed (111)`, `upstream server temporarily disabled`) stay out of the error log,
while every try, a real failure's included, is still in the traffic log with its port and
status. The same bounded run with the proxy locations logging at the server's level (the
former behaviour) shows the lines being counted."""
import asyncio
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from nginx_helpers import backends, free_port, get, kill_pid, nginx_prefix, wait_for_port  # noqa: F401
from ultrascaled.effects.nginx_control import NginxController
from ultrascaled.spec.nginx import NginxSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# A backend that accepts and closes at once: a running instance that fails (nginx logs
# "upstream prematurely closed connection" and passes the request on).
BROKEN = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
while True:
    c, _ = s.accept(); c.recv(65536); c.close()
"""

NOISE = re.compile(r"connect\(\) failed \(111|upstream server temporarily disabled")


def closed_ports(n):
    out = set()
    while len(out) < n:
        out.add(free_port())   # nothing listens there once the probe socket is closed
    return sorted(out)


def tries(traffic_log):
    """(port, upstream status) of every try in the traffic log."""
    out = []
    for line in open(traffic_log):
        d = json.loads(line)
        for addr, status in zip(d["a"].split(", "), d["u"].split(", ")):
            out.append((int(addr.rsplit(":", 1)[1]), status))
    return out


def bounded_run(s, closed, broken, rounds=3):
    """Requests until each closed port (and the broken one) was tried `rounds` times (each try
    is one fail_timeout apart), at most 4000 requests: (error.log noise lines, tries)."""
    for _ in range(4000):
        status, _ = get(f"http://127.0.0.1:{s.listen}/")
        assert status == 200
        seen = tries(s.traffic_log_path)
        if all(sum(1 for p, _ in seen if p == c) >= rounds for c in closed + [broken]):
            break
    else:
        pytest.fail(f"the closed ports were not tried {rounds} times in 4000 requests")
    log = open(s.error_log_path).read()
    return [ln for ln in log.splitlines() if NOISE.search(ln)], seen, log


@pytest.mark.parametrize("level", ["warn", ""])
def test_ports_with_no_instance_stay_out_of_the_error_log(nginx_prefix, backends, level):
    good = backends(2)
    broken = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BROKEN, str(broken)])
    try:
        wait_for_port(broken)
        closed = closed_ports(5)
        s = NginxSettings(prefix=nginx_prefix, listen=free_port(), worker_processes="2",
                          worker_connections=256, fail_timeout="1s", proxy_error_log_level=level,
                          reload_timeout=5, start_timeout=8, stop_timeout=5)
        ctl = NginxController(s)
        assert asyncio.run(ctl.start([("127.0.0.1", p) for p in good + closed + [broken]])).ok
        try:
            noise, seen, log = bounded_run(s, closed, broken)
        finally:
            asyncio.run(ctl.stop())
    finally:
        kill_pid(proc.pid)
        proc.wait(5)
    refused = [(p, st) for p, st in seen if p in closed]
    print(f"proxy_error_log_level={level!r}: {len(seen)} tries, {len(refused)} on closed ports, "
          f"{len(noise)} error.log lines about them")
    # the traffic log keeps every try: refused ports and the failing instance, with their 502
    assert refused and all(st == "502" for _, st in refused)
    assert any(p == broken and st == "502" for p, st in seen)
    if level == "warn":     # the former behaviour: two lines per try of a closed port
        assert len(noise) >= len(refused)
        assert "prematurely closed" in log
    else:
        assert noise == [] and "prematurely closed" not in log
