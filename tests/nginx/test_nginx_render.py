"""Unit tests of the pure renderers in ultrascaled.effects.nginx_render."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from ultrascaled.effects import nginx_render as nginx_conf
from ultrascaled.effects.nginx_render import render_main_conf, render_site_conf, render_upstream
from ultrascaled.spec.nginx import NginxSettings, settings_help, validate

ROOT = Path(__file__).resolve().parents[2]
S = NginxSettings(prefix="/srv/us/nginx")
A, B, C = ("127.0.0.1", 8001), ("127.0.0.1", 8000), ("127.0.0.1", 8002)


def test_pure_module_imports_no_process_or_web_libraries():
    code = ("import sys, ultrascaled.effects.nginx_render; "
            "bad = {'aiohttp', 'psutil', 'subprocess', 'asyncio'} & set(sys.modules); "
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "[]"


def test_upstream_is_byte_stable_and_sorted_by_port():
    one = render_upstream(S, [A, B, C])
    two = render_upstream(S, [C, A, B, A])
    assert one == two
    text = one.decode()
    assert text.index(":8000 ") < text.index(":8001 ") < text.index(":8002 ")
    assert text.count("server 127.0.0.1:8001 ") == 3  # main (and its backup) + socketio upstream


def test_upstream_lists_only_given_servers_with_max_fails_zero_and_keepalive():
    text = render_upstream(dataclasses.replace(S, upstream_servers="ready"), [A]).decode()
    assert "server 127.0.0.1:8001 max_fails=0;" in text
    assert "fail_timeout" not in text
    assert "keepalive 512;" in text
    assert ":8000" not in text
    assert "geo $ultrascale_ready { default 1; }" in text


def test_range_marks_a_closed_port_failed_and_tries_each_port_once():
    # A port of the range with no instance (or a closed gate) must be skipped after one failed
    # attempt, and a request must be able to pass every such port: tries 3 would let three
    # empty ports in a row turn a request into a 502.
    text = render_upstream(S, [A, B, C]).decode()
    assert text.count("max_fails=1 fail_timeout=2s;") == 6      # main + socketio upstream
    # ... and when every port is marked (an app's 503 everywhere), the same ports unmarked
    # serve as backups instead of "no live upstreams"; nginx refuses backups with hashing.
    main, socketio = text.split("upstream ultrascale_socketio")
    assert main.count(" backup max_fails=0;") == 3 and "backup" not in socketio
    assert "backup" not in render_upstream(dataclasses.replace(S, balance="random"), [A]).decode()
    assert "max_fails=4 fail_timeout=2s;" in render_upstream(dataclasses.replace(S, max_fails=4), [A]).decode()
    site = render_site_conf(S).decode() if isinstance(render_site_conf(S), bytes) else render_site_conf(S)
    assert "proxy_next_upstream_tries 0;" in site
    ready = render_site_conf(dataclasses.replace(S, upstream_servers="ready"))
    ready = ready.decode() if isinstance(ready, bytes) else ready
    assert "proxy_next_upstream_tries 3;" in ready
    assert validate(dataclasses.replace(S, upstream_servers="all")) == [
        "nginx.upstream_servers: must be one of range, ready, got 'all'"]


def test_upstream_max_fails_and_fail_timeout_when_configured():
    text = render_upstream(dataclasses.replace(S, max_fails=3, fail_timeout="5s"), [A]).decode()
    assert "max_fails=3 fail_timeout=5s;" in text


def test_upstream_without_keepalive():
    assert "keepalive" not in render_upstream(dataclasses.replace(S, keepalive=0), [A]).decode()


def test_zero_servers_renders_down_placeholder_and_not_ready_flag():
    text = render_upstream(S, []).decode()   # (also in range mode: nginx answers 503 at once)
    assert "server 127.0.0.1:1 down;" in text
    assert "geo $ultrascale_ready { default 0; }" in text
    assert "max_fails" not in text


def test_socketio_upstream_is_sticky_by_consistent_hash_or_ip_hash():
    text = render_upstream(S, [A, B]).decode()
    assert "upstream ultrascale_socketio {\n    hash $remote_addr consistent;" in text
    ip = render_upstream(dataclasses.replace(S, socketio_balance="ip_hash"), [A]).decode()
    assert "    ip_hash;" in ip
    none = render_upstream(dataclasses.replace(S, socketio=False), [A]).decode()
    assert "socketio" not in none


def test_main_conf_keeps_every_path_inside_prefix_and_includes_upstream():
    text = render_main_conf(S).decode()
    assert "pid /srv/us/nginx/logs/nginx.pid;" in text
    assert "error_log /srv/us/nginx/logs/error.log warn;" in text
    assert "include /srv/us/nginx/conf/upstream.conf;" in text
    for line in text.splitlines():
        if "_temp_path" in line:
            assert "/srv/us/nginx/temp/" in line
    assert "listen 127.0.0.1:8080;" in text
    assert "proxy_http_version 1.1;" in text and 'proxy_set_header Connection "";' in text
    assert "proxy_next_upstream error timeout http_502 http_503;" in text
    assert "proxy_next_upstream_tries 0;" in text  # range: each port once
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "location = /nginx_status" in text and "allow 127.0.0.1;" in text
    assert "deny all;" in text
    assert render_main_conf(S) == render_main_conf(NginxSettings(prefix="/srv/us/nginx"))


def test_limits_and_tls_only_when_configured():
    plain = render_main_conf(S).decode()
    for word in ("limit_req", "limit_conn", "ssl", "8443"):
        assert word not in plain
    s = dataclasses.replace(S, rate_limit=20, rate_limit_burst=40, conn_limit=10,
                            tls_cert="/c.pem", tls_key="/k.pem")
    text = render_main_conf(s).decode()
    assert "limit_req_zone $binary_remote_addr zone=ultrascale_req:10m rate=20r/s;" in text
    assert "limit_req zone=ultrascale_req burst=40 nodelay;" in text
    assert "limit_conn ultrascale_conn 10;" in text
    assert "listen 127.0.0.1:8443 ssl;" in text
    assert "ssl_certificate /c.pem;" in text and "ssl_certificate_key /k.pem;" in text
    # only a cert is not enough
    assert "ssl" not in render_main_conf(dataclasses.replace(S, tls_cert="/c.pem")).decode()


def test_site_conf_is_the_http_part_of_main_conf():
    site = render_site_conf(S).decode().splitlines()[1:]  # without the header
    main = render_main_conf(S).decode()
    indented = "\n".join(("    " + x) if x else "" for x in site)
    assert indented in main


def test_shipped_system_example_matches_renderer():
    shipped = (ROOT / "etc/nginx/ultrascale.conf").read_bytes()
    assert shipped == render_site_conf(nginx_conf.example_system_settings()), (
        "regenerate with: .venv/bin/python -m ultrascaled.effects.nginx_render example "
        "> etc/nginx/ultrascale.conf")


def test_every_field_has_help_and_docs_mention_it():
    docs = (ROOT / "docs/nginx.md").read_text()
    for name, _type, _default, help_ in settings_help():
        assert help_.strip(), name
        assert f"`{name}`" in docs, f"docs/nginx.md does not describe {name}"


def test_string_commands_are_split():
    s = NginxSettings(reload_command="systemctl reload nginx", test_command=["nginx", "-t"],
                      stub_status_allow="127.0.0.1 10.0.0.0/8")
    assert s.reload_command == ("systemctl", "reload", "nginx")
    assert s.test_command == ("nginx", "-t")
    assert s.stub_status_allow == ("127.0.0.1", "10.0.0.0/8")
    hash(s)


@pytest.mark.parametrize("kw,needle", [
    ({"mode": "both"}, "nginx.mode"),
    ({"listen": 0}, "nginx.listen"),
    ({"prefix": "relative"}, "nginx.prefix"),
    ({"tls_cert": "/c.pem"}, "tls_cert/tls_key"),
    ({"mode": "system", "upstream_file": ""}, "nginx.upstream_file"),
    ({"socketio_balance": "sticky"}, "nginx.socketio_balance"),
    ({"upstream_name": "a b"}, "nginx.upstream_name"),
    ({"keepalive": -1}, "nginx.keepalive"),
])
def test_validate_names_the_field(kw, needle):
    errs = validate(dataclasses.replace(S, **kw))
    assert any(needle in e for e in errs), errs


def test_default_settings_with_prefix_are_valid():
    assert validate(S) == []
    assert validate(NginxSettings(mode="off")) == []
