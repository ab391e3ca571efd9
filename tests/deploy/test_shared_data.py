"""Data the app writes survives deploys and rollbacks (deploy.shared), against real gunicorn, a
real managed nginx and a real SQLite database the app writes next to its code, as Django's
tutorial does: a deploy of a folder holding undeclared data is refused with the line to add;
declared, the database moves once to the shared folder while the app writes it (WAL mode), every
release links it, and a vote cast at any moment (before, during and after two deploys and a
rollback, by a client that never retries) is still counted at the end. The rollback returns to
what ran before the first deploy, not to app.directory as edited since."""
from __future__ import annotations

import http.client
import os
import sqlite3
from pathlib import Path

import pytest

from support.clients import NoRetryClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APP = '''\
import os
import sqlite3

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = open(os.path.join(HERE, "VERSION")).read().strip()


def db():
    c = sqlite3.connect(os.path.join(HERE, "db.sqlite3"), timeout=30, isolation_level=None)
    c.execute("pragma journal_mode=wal")
    c.execute("create table if not exists votes (id integer primary key, release text)")
    return c


def application(environ, start_response):
    path = environ["PATH_INFO"]
    c = db()
    try:
        if path == "/vote" and environ["REQUEST_METHOD"] == "POST":
            c.execute("insert into votes (release) values (?)", (VERSION,))
        elif path.startswith("/upload/"):
            os.makedirs(os.path.join(HERE, "media"), exist_ok=True)
            with open(os.path.join(HERE, "media", path[len("/upload/"):]), "w") as f:
                f.write(VERSION)
        n = c.execute("select count(*) from votes").fetchone()[0]
    finally:
        c.close()
    media = sorted(os.listdir(os.path.join(HERE, "media"))) if os.path.isdir(os.path.join(HERE, "media")) else []
    body = f"{VERSION} {n} {','.join(media)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def write_app(root: Path, version: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pollapp.py").write_text(APP)
    (root / "VERSION").write_text(version + "\n")
    return root


def call(port: int, method: str, path: str) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, (r.status, body)
        return (body.split(" ", 2) + ["", ""])[:3]
    finally:
        conn.close()


def votes_in(path: Path) -> int:
    with sqlite3.connect(path) as c:
        return c.execute("select count(*) from votes").fetchone()[0]


def test_a_deploy_and_a_rollback_keep_every_vote_and_upload(make_daemon, tmp_path):
    base = write_app(tmp_path / "mysite", "v1")
    spec = {"app": {"directory": str(base), "module": "pollapp:application", "config": None},
            "gunicorn": {"worker_class": "sync", "workers": 2}, "health": {"path": "/"},
            "deploy": {"soak_seconds": 2}}
    d = make_daemon(spec).start()
    port = d.nginx_port
    for _ in range(9):
        call(port, "POST", "/vote")
    call(port, "GET", "/upload/avatar.png")
    assert (base / "db.sqlite3").is_file() and votes_in(base / "db.sqlite3") == 9

    # undeclared data: refused, with the line to add, and nothing changed
    v2 = write_app(tmp_path / "v2", "v2")
    out = d.ctl("deploy", str(base))
    assert out.returncode == 4 and "release_invalid" in out.stderr, out.stderr
    assert "db.sqlite3" in out.stderr and "media/" in out.stderr and "deploy.shared" in out.stderr
    assert "--allow-data" in out.stderr
    assert d.fleet()["deploy"]["current"] is None and not (base / "db.sqlite3").is_symlink()

    d.write_spec({**d.spec, "deploy": {"soak_seconds": 2, "shared": ["db.sqlite3", "media/"]}})
    assert d.ctl("reload").returncode == 0
    client = NoRetryClient(port, "POST", "/vote", pause=0.01)
    client.start()
    try:
        # the developer's own copy in the folder deployed must not replace the live data
        sqlite3.connect(v2 / "db.sqlite3").execute("create table votes (id integer primary key, release text)")
        out = d.ctl("deploy", str(v2))
        assert out.returncode == 0, out.stderr
        rid2 = d.fleet()["deploy"]["current"]
        shared = Path(d.spec["paths"]["state_dir"]) / "shared"
        assert (base / "db.sqlite3").resolve() == shared / "db.sqlite3", "a link is left where the data was"
        assert (base / "media").resolve() == shared / "media"
        release2 = Path(d.fleet()["deploy"]["releases_dir"]) / rid2
        assert (release2 / "db.sqlite3").resolve() == shared / "db.sqlite3"
        kept = list((shared / ".displaced" / rid2).iterdir())
        assert [p.name for p in kept] == ["db.sqlite3"], "the deployed folder's copy is kept aside"
        version, _, media = call(port, "GET", "/upload/cv.pdf")
        assert version == "v2" and media == "avatar.png,cv.pdf"

        # the folder edited after the first deploy, as docs/your-app.md suggests: rollback
        # returns to what ran before the first deploy (v1), not to the edit
        (base / "VERSION").write_text("v1-edited\n")
        out = d.ctl("rollback")
        assert out.returncode == 0, out.stderr
        assert call(port, "GET", "/")[0] == "v1"
        out = d.ctl("deploy", "--release", rid2)
        assert out.returncode == 0, out.stderr
    finally:
        client.stop()
    assert client.ok > 20 and not client.failures, client.failures[:5]
    version, count, media = call(port, "GET", "/")
    assert version == "v2" and media == "avatar.png,cv.pdf"
    assert int(count) == 9 + client.ok == votes_in(shared / "db.sqlite3"), "every vote is counted"
    events = [e["event"] for e in d.api("GET", "/events?limit=500")[1]["events"]]
    assert events.count("release.shared_moved") == 2, events
    assert os.path.islink(base / "db.sqlite3")
