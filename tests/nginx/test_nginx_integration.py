"""Integration tests with the real Debian nginx in managed mode, on free loopback ports, with a
prefix in a tmp dir and tiny real HTTP backends.  Every process is killed by pid afterwards."""
import asyncio
import contextlib
import dataclasses
import os
import signal
import ssl
import subprocess
import time
from collections import Counter

import psutil
import pytest

from nginx_helpers import (backends, free_port, get,  # noqa: F401
                           nginx_pids_of_prefix, nginx_prefix)
from support import needs
from ultrascaled.effects.nginx_control import NginxController, ProcessOps
from ultrascaled.spec.nginx import NginxSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def settings(prefix, **kw):
    return NginxSettings(prefix=prefix, listen=free_port(), worker_processes="2",
                         worker_connections=256, reload_timeout=5, start_timeout=8,
                         stop_timeout=5, **kw)


def answered_by_nginx_itself(s, status: int, body: str) -> bool:
    """A 503 from the server block's `return 503` (no ready instance): nginx's own page, and no
    upstream tried (that would be a 502, an address in the traffic log's `a` and, at the
    proxy locations' error_log level, an error.log line), so nothing waited on one."""
    log = open(s.error_log_path).read() if os.path.exists(s.error_log_path) else ""
    last = open(s.traffic_log_path).read().splitlines()[-1]
    return status == 503 and "503 Service Temporarily Unavailable" in body and "upstream" not in log \
        and '"a":""' in last and '"s":503' in last


def hits(port, n=12, path="/"):
    c = Counter()
    for _ in range(n):
        status, body = get(f"http://127.0.0.1:{port}{path}")
        c[body if status == 200 else status] += 1
    return c


def servers(*ports):
    return [("127.0.0.1", p) for p in ports]


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def running(s, *ports):
    """A managed nginx with `ports` in its upstream, stopped at the end (and the stop checked)."""
    ctl = NginxController(s)
    assert (await ctl.start(servers(*ports))).ok
    try:
        yield ctl
    finally:
        assert await ctl.stop()


def test_routes_only_to_ready_servers_and_503_when_none(nginx_prefix, backends):
    a, b = backends(2)
    s = settings(nginx_prefix)
    ctl = NginxController(s)

    async def scenario():
        r = await ctl.start([])
        assert r.ok and r.restarted, r
        try:
            assert answered_by_nginx_itself(s, *get(f"http://127.0.0.1:{s.listen}/"))

            r = await ctl.apply(servers(a))
            assert r.ok and r.reloaded, r
            assert hits(s.listen) == {str(a): 12}

            r = await ctl.apply(servers(b, a))
            assert r.ok and r.servers == tuple(servers(*sorted([a, b])))
            assert set(hits(s.listen, 20)) == {str(a), str(b)}

            # apply returns once the reload took effect: no request reaches a afterwards
            r = await ctl.apply(servers(b))
            assert r.ok
            assert hits(s.listen, 20) == {str(b): 20}

            assert (await ctl.apply(servers(b))).code == "unchanged"

            r = await ctl.apply([])
            assert r.ok
            assert hits(s.listen, 5) == {503: 5}
            assert answered_by_nginx_itself(s, *get(f"http://127.0.0.1:{s.listen}/"))
            st = ctl.status()
            assert st["running"] and st["servers"] == [] and st["reload_count"] == 4
        finally:
            pid = ctl.pid
            assert await ctl.stop()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert nginx_pids_of_prefix(nginx_prefix) == []
        assert ctl.status()["running"] is False

    run(scenario())


def test_failed_check_restores_previous_upstream_and_keeps_serving(nginx_prefix, backends):
    (a,) = backends(1)
    s = settings(nginx_prefix)

    async def scenario():
        async with running(s, a) as ctl:
            before = open(ctl.upstream_file, "rb").read()
            main_before = open(s.conf_path, "rb").read()
            # port 0 is rejected by nginx -t
            r = await ctl.apply(servers(a) + [("127.0.0.1", 0)])
            assert not r.ok and r.code == "check_failed"
            assert "invalid port" in r.error and "[emerg]" in r.error
            assert open(ctl.upstream_file, "rb").read() == before
            assert hits(s.listen) == {str(a): 12}

            # an invalid directive injected through a settings field
            bad = dataclasses.replace(s, extra_upstream="no_such_directive on;")
            r = await ctl.reconfigure(bad)
            assert r.code == "check_failed" and "unknown directive" in r.error
            assert ctl.settings is s
            assert open(ctl.upstream_file, "rb").read() == before
            assert open(s.conf_path, "rb").read() == main_before
            assert hits(s.listen) == {str(a): 12}
            st = ctl.status()
            assert st["failure_count"] == 2 and st["servers"] == [f"127.0.0.1:{a}"]

            # a valid reconfigure (rate limit) takes effect
            r = await ctl.reconfigure(dataclasses.replace(s, rate_limit=1000, rate_limit_burst=100))
            assert r.ok and r.reloaded
            assert b"limit_req zone=ultrascale_req" in open(s.conf_path, "rb").read()
            assert hits(s.listen, 3) == {str(a): 3}

    run(scenario())


def test_stub_status_answers_on_loopback(nginx_prefix, backends):
    (a,) = backends(1)
    s = settings(nginx_prefix)

    async def scenario():
        async with running(s, a):
            status, body = get(f"http://127.0.0.1:{s.listen}/nginx_status")
            assert status == 200 and body.startswith("Active connections:")

    run(scenario())


def _make_cert(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([needs.openssl(), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return str(cert), str(key)


def test_tls_server_answers_over_https(nginx_prefix, backends, tmp_path):
    needs.openssl()   # makes the self-signed certificate
    (a,) = backends(1)
    cert, key = _make_cert(tmp_path)
    s = settings(nginx_prefix, tls_cert=cert, tls_key=key, tls_listen=free_port())

    async def scenario():
        async with running(s, a):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            assert get(f"https://127.0.0.1:{s.tls_listen}/", context=ctx) == (200, str(a))
            assert get(f"http://127.0.0.1:{s.listen}/") == (200, str(a))

    run(scenario())


def test_new_controller_adopts_running_master_of_same_prefix(nginx_prefix, backends):
    a, b = backends(2)
    s = settings(nginx_prefix)

    async def scenario():
        first = NginxController(s)
        assert (await first.start(servers(a))).ok
        pid = first.pid
        del first  # dropped without stop(), as when the daemon is killed
        second = NginxController(s)
        try:
            r = await second.start(None)  # keeps the upstream file on disk
            assert r.ok and second.adopted and second.pid == pid, r
            masters = [p for p in nginx_pids_of_prefix(nginx_prefix)
                       if "master" in " ".join(psutil.Process(p).cmdline())]
            assert masters == [pid]
            assert r.servers == tuple(servers(a))
            assert hits(s.listen) == {str(a): 12}
            assert (await second.apply(servers(b))).ok
            assert hits(s.listen) == {str(b): 12}
        finally:
            assert await second.stop()
        assert nginx_pids_of_prefix(nginx_prefix) == []

    run(scenario())


def test_killed_master_is_restarted_with_the_upstream_in_effect(nginx_prefix, backends):
    (a,) = backends(1)
    s = settings(nginx_prefix)

    async def scenario():
        async with running(s, a) as ctl:
            old = ctl.pid
            os.kill(old, signal.SIGKILL)  # its workers live on, holding the port
            deadline = time.monotonic() + 3
            while ProcessOps().alive(old) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            r = await ctl.ensure_running()
            assert r.ok and r.restarted, r
            assert ctl.pid != old
            assert hits(s.listen) == {str(a): 12}
            assert ctl.status()["restart_count"] == 2
        assert nginx_pids_of_prefix(nginx_prefix) == []

    run(scenario())


def test_removing_then_killing_an_instance_under_load_fails_no_request(nginx_prefix, backends):
    """The daemon's scale-down order: apply without the instance, then stop it."""
    import threading
    a, b = backends(2)
    s = settings(nginx_prefix)
    ctl = NginxController(s)
    results: Counter = Counter()
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                status, body = get(f"http://127.0.0.1:{s.listen}/", timeout=2)
                results[body if status == 200 else status] += 1
            except Exception as e:  # connection errors count as failures
                results[type(e).__name__] += 1

    async def scenario():
        assert (await ctl.start(servers(a, b))).ok
        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        try:
            for t in threads:
                t.start()
            await asyncio.sleep(0.5)
            assert (await ctl.apply(servers(b))).ok
            victim = [p for p in psutil.Process().children()
                      if str(a) in " ".join(p.cmdline())]
            assert len(victim) == 1
            victim[0].kill()
            await asyncio.sleep(0.7)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            assert await ctl.stop()
        assert set(results) == {str(a), str(b)}, results
        assert results[str(b)] > 20

    run(scenario())
