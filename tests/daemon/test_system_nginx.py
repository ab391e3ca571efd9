"""System mode against a real nginx that the daemon does not own: the test starts it (as the host
would), the daemon only rewrites the upstream include, checks the whole configuration and
reloads it; stopping the daemon empties the upstream and leaves that nginx running."""
from __future__ import annotations

import json
import time
import os
import subprocess

import pytest

from support.harness import http_get, pid_alive
from ultrascaled.spec.nginx import NginxSettings
from ultrascaled.effects.nginx_render import render_site_conf, render_upstream

pytestmark = pytest.mark.integration


@pytest.fixture
def system_nginx(tmp_path, make_daemon):
    d = make_daemon(nginx=False)
    prefix = tmp_path / "sysnginx"
    (prefix / "logs").mkdir(parents=True)
    upstream = prefix / "upstream.conf"
    conf = prefix / "nginx.conf"
    traffic = str(prefix / "logs" / "traffic.log")   # not the host's /var/log/nginx
    settings = NginxSettings(mode="system", listen=d.nginx_port, upstream_file=str(upstream),
                             traffic_log=traffic)
    upstream.write_bytes(render_upstream(settings, []))
    (prefix / "site.conf").write_bytes(render_site_conf(settings))
    conf.write_text(f"""pid {prefix}/logs/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp_body; proxy_temp_path {prefix}/tmp_proxy;
    fastcgi_temp_path {prefix}/tmp_fcgi; uwsgi_temp_path {prefix}/tmp_uwsgi; scgi_temp_path {prefix}/tmp_scgi;
    include {prefix}/site.conf;
}}
""")
    nginx = [os.environ.get("NGINX", "/usr/sbin/nginx"), "-p", str(prefix), "-c", str(conf)]
    subprocess.run(nginx, check=True, timeout=30)
    pid = int((prefix / "logs" / "nginx.pid").read_text())
    d.spec["nginx"] = {"mode": "system", "listen": d.nginx_port, "upstream_file": str(upstream),
                       "test_command": [*nginx, "-t"], "reload_command": [*nginx, "-s", "reload"],
                       "system_pid_file": str(prefix / "logs" / "nginx.pid"), "traffic_log": traffic}
    d.write_spec()
    try:
        yield d, pid, upstream
    finally:
        import psutil
        subprocess.run([*nginx, "-s", "quit"], capture_output=True, timeout=30)
        try:
            master = psutil.Process(pid)
            workers = master.children()
            master.wait(timeout=10)
        except psutil.TimeoutExpired:
            for p in [*workers, master]:  # nginx workers outlive a killed master: end both
                p.kill()
        except psutil.NoSuchProcess:
            pass


def ports_seen(d, n=20):
    return {json.loads(body)["port"] for status, body in (http_get(d.nginx_port) for _ in range(n))
            if status == 200}


def test_system_mode_keeps_the_hosts_nginx_in_step_and_leaves_it_running(system_nginx):
    d, nginx_pid, upstream = system_nginx
    d.start()
    assert ports_seen(d) == {d.base_port, d.base_port + 1}
    assert d.api("GET", "/health")[1]["nginx"]["mode"] == "system"
    assert d.ctl("scale", "3").returncode == 0
    # (the static upstream: nginx tries a port it found closed again after fail_timeout, 2 s)
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while seen != {d.base_port + k for k in range(3)} and time.monotonic() < deadline:
        seen |= ports_seen(d, 10)
    assert seen == {d.base_port + k for k in range(3)}
    assert f"127.0.0.1:{d.base_port + 2}" in upstream.read_text()
    # the per-instance figures come from the host nginx's traffic log too
    import urllib.request
    deadline = time.monotonic() + 30
    while f'ultrascale_upstream_requests_total{{port="{d.base_port + 2}",status="2xx"}}' not in \
            (text := urllib.request.urlopen(d.api_url + "/metrics", timeout=10).read().decode()):
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.2)
    assert d.stop() == 0
    assert pid_alive(nginx_pid), "the host's nginx is not the daemon's to stop"
    status, _ = http_get(d.nginx_port)
    assert status == 503, "no instance left in the upstream: nginx answers 503 at once"
    assert not any(f"127.0.0.1:{d.base_port + k}" in upstream.read_text() for k in range(3))
