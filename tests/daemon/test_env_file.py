"""app.env_file with a real daemon and real gunicorn instances: an instance sees the file's
values, a reload brings a changed value to new instances, and no value ever appears in what the
daemon shows (the API's fleet, events and health, `status`, the audit log, its own log)."""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from support.harness import http_get, tool

pytestmark = pytest.mark.integration

FIRST, SECOND = "s3cret-First-7f3a", "s3cret-Second-91bc"

# A tiny WSGI app: /health, and /env/NAME answers the variable as the instance sees it.
ENV_APP = textwrap.dedent('''
    import os

    def application(environ, start_response):
        path = environ["PATH_INFO"]
        if path.startswith("/env/"):
            body = os.environ.get(path[5:], "<unset>").encode()
        else:
            body = b"ok"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
''')


def seen(port: int, name: str) -> str:
    status, body = http_get(port, f"/env/{name}")
    assert status == 200
    return body.decode()


def test_instances_get_the_env_file_a_reload_changes_it_and_no_value_is_ever_shown(make_daemon, tmp_path):
    appdir = tmp_path / "envapp"
    appdir.mkdir()
    (appdir / "envapp.py").write_text(ENV_APP)
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f'# the app\'s secrets\nDB_PASSWORD="{FIRST}"\nGREETING=hello world\n'
                       "SHARED=from-file\n")
    os.chmod(secrets, 0o600)
    d = make_daemon({"app": {"directory": str(appdir), "module": "envapp:application",
                             "config": None, "env_file": "secrets.env",
                             "env": {"SHARED": "from-spec"}},
                     "gunicorn": {"worker_class": "sync"}}, nginx=False).start()
    ports = [i["port"] for i in d.fleet()["instances"]]
    for port in ports:
        assert seen(port, "DB_PASSWORD") == FIRST
        assert seen(port, "GREETING") == "hello world"
        assert seen(port, "SHARED") == "from-spec"          # app.env wins over the file

    # a changed value reaches new instances on a reload
    pids = [i["pid"] for i in d.fleet()["instances"]]
    secrets.write_text(f"DB_PASSWORD='{SECOND}'\nGREETING=hello world\n")
    out = d.ctl("reload")
    assert out.returncode == 0, out.stderr
    d.wait_until(lambda f: f["ready"] == 2 and all(i["pid"] not in pids and i["state"] == "running"
                                                  for i in f["instances"]),
                 timeout=30, what="instances restarted with the new env file")
    assert [seen(p, "DB_PASSWORD") for p in ports] == [SECOND, SECOND]

    # a world-readable file holding a secret is refused on reload: named, the running spec stays
    os.chmod(secrets, 0o644)
    status, payload = d.api("POST", "/fleet/reload")
    assert status == 400 and payload["error"]["code"] == "spec_invalid"
    assert any(str(secrets) in e and "DB_PASSWORD (line 1)" in e and "chmod o-r" in e
               for e in payload["error"]["errors"]), payload
    assert d.fleet()["ready"] == 2 and seen(ports[0], "DB_PASSWORD") == SECOND
    os.chmod(secrets, 0o600)

    # nowhere the daemon shows anything: the API, `status`, the audit log, its log, --check
    shown = [json.dumps(d.fleet()), json.dumps(d.api("GET", "/events")[1]),
             json.dumps(d.api("GET", "/health")[1]), json.dumps(payload),
             d.ctl("status").stdout, d.ctl("status", "--json").stdout,
             d.ctl("events").stdout, out.stdout + out.stderr]
    assert d.stop() == 0   # its last words are in its log too; --check wants the fleet's name free
    shown += [(tmp_path / "state" / "audit.log").read_text(), d.log_path.read_text()]
    assert "spec.reloaded" in shown[1] and '"/fleet/reload"' in shown[8]   # they were looked at
    check = subprocess.run([tool("ultrascaled"), "--spec", str(d.spec_path), "--check"],
                           capture_output=True, text=True, timeout=60)
    shown.append(check.stdout + check.stderr)
    assert '"DB_PASSWORD": "***"' in check.stdout, check.stderr
    for text in shown:
        assert FIRST not in text and SECOND not in text
