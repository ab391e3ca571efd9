"""An operator's own app under the real daemon, as docs/your-app.md tells it: a Flask app with an
app factory (`flaskr:create_app()`, no health endpoint: probed on `/`, sync workers), a fresh
Django project (`django-admin startproject`, `/health`, gthread workers) and the FastAPI app
printed in the doc (`main:app` on `uvicorn_worker.UvicornWorker`), each from the spec printed in
the doc, with `app.python` = this venv's python and the daemon's managed nginx.
Then two fleets side by side: restarting one never touches the other."""
from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from support.harness import http_get, pid_alive
from support.your_app_doc import documented_python, documented_spec
from ultrascaled.effects.host_checks import host_problems
from ultrascaled.spec import load_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def write_flask_app(root: Path) -> Path:
    """The Flask tutorial's layout: a package whose __init__ defines create_app(); no /health;
    its SQLite database in the instance folder, made by `flask --app flaskr init-db`."""
    pkg = root / "flaskr"
    pkg.mkdir(parents=True)
    (pkg / "VERSION").write_text("v1")
    (pkg / "__init__.py").write_text(textwrap.dedent("""\
        import os
        import sqlite3

        import click
        from flask import Flask, request


        def create_app():
            app = Flask(__name__, instance_relative_config=True)
            app.config.from_mapping(SECRET_KEY="dev",
                                    DATABASE=os.path.join(app.instance_path, "flaskr.sqlite"))
            app.config.from_prefixed_env()

            def db():
                return sqlite3.connect(app.config["DATABASE"], isolation_level=None)

            @app.cli.command("init-db")
            def init_db():
                os.makedirs(app.instance_path, exist_ok=True)
                db().execute("create table if not exists post (title text)")
                click.echo("Initialized the database.")

            @app.route("/")
            def index():
                return f"flaskr index from {os.getpid()}"

            @app.route("/rows/add")
            def add():
                db().execute("insert into post values (?)", (request.args["name"],))
                return "added"

            @app.route("/rows")
            def rows():
                return " ".join(sorted(r[0] for r in db().execute("select title from post")))

            @app.route("/version")
            def version():
                return open(os.path.join(os.path.dirname(__file__), "VERSION")).read()

            return app
        """))
    return root


def write_django_project(root: Path) -> Path:
    """A fresh `django-admin startproject mysite`, with ALLOWED_HOSTS, DEBUG off and a /health
    view, as the doc says."""
    root.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)],
                   check=True, capture_output=True, timeout=60)
    settings = root / "mysite" / "settings.py"
    text = settings.read_text()
    text = re.sub(r"(?m)^ALLOWED_HOSTS = \[\]$", 'ALLOWED_HOSTS = ["127.0.0.1", "localhost"]', text)
    text = re.sub(r"(?m)^DEBUG = True$", "DEBUG = False", text)
    assert 'ALLOWED_HOSTS = ["127.0.0.1", "localhost"]' in text and "DEBUG = False" in text
    text += '\nSTATIC_ROOT = BASE_DIR / "staticfiles"\n'   # nginx.static serves it
    settings.write_text(text)
    urls = root / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + textwrap.dedent("""
        import os

        from django.http import HttpResponse

        urlpatterns += [
            path("health", lambda request: HttpResponse("ok")),
            path("", lambda request: HttpResponse(f"mysite index from {os.getpid()}")),
        ]
        """))
    return root


ROWS_VIEWS = """
from django.contrib.auth.models import User


def add_row(request):
    User.objects.create(username=request.GET["name"])
    return HttpResponse("added")


urlpatterns += [
    path("rows/add", add_row),
    path("rows", lambda request: HttpResponse(" ".join(sorted(User.objects.values_list("username", flat=True))))),
    path("version", lambda request: HttpResponse(open(os.path.join(os.path.dirname(__file__), "VERSION")).read())),
]
"""


# What the tests add to the doc's main.py: a version to tell releases apart, rows in the SQL
# chapter's SQLite file (deploy.shared), and a slow answer to have a request in flight.
FASTAPI_TEST_ROUTES = """

import asyncio
import os
import sqlite3
from pathlib import Path

from fastapi.responses import PlainTextResponse


def db():
    return sqlite3.connect("database.db", isolation_level=None)


@app.get("/version", response_class=PlainTextResponse)
async def version():
    return (Path(__file__).parent / "VERSION").read_text()


@app.get("/rows/add", response_class=PlainTextResponse)
def add_row(name: str):
    db().execute("insert into row values (?)", (name,))
    return "added"


@app.get("/rows", response_class=PlainTextResponse)
def rows():
    return " ".join(sorted(r[0] for r in db().execute("select name from row")))


@app.get("/slow")
async def slow(ms: int):
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms, "pid": os.getpid()}
"""


def write_fastapi_app(root: Path) -> Path:
    """docs/your-app.md's main.py as printed, plus FASTAPI_TEST_ROUTES, and the SQLite file made
    before the first start (as the SQL chapter's create_db_and_tables() would)."""
    root.mkdir(parents=True)
    (root / "main.py").write_text(documented_python("main.py") + FASTAPI_TEST_ROUTES)
    (root / "VERSION").write_text("v1")
    with sqlite3.connect(root / "database.db") as conn:
        conn.execute("create table row (name text)")
    return root


def add_rows_and_migrate(root: Path, version: str) -> None:
    """Views that write rows through Django's ORM into the tutorial's db.sqlite3, migrated."""
    urls = root / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + ROWS_VIEWS)
    (root / "mysite" / "VERSION").write_text(version)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=root, check=True,
                   capture_output=True, timeout=120)
    assert (root / "db.sqlite3").is_file()


def fleet_of(make_daemon, tmp_path: Path, filename: str, app_dir: Path):
    """A daemon whose spec is the documented one, with this test's folders, ports and python
    (the name is the harness's unique one, so that parallel runs and cleanup stay apart)."""
    d = make_daemon(sub=filename.split(".")[0])
    spec = documented_spec(filename)
    spec["name"] = d.name
    spec["app"]["directory"] = str(app_dir)
    spec["app"]["python"] = sys.executable
    spec["instances"]["base_port"] = d.base_port
    assert spec["instances"]["max"] <= d.api_port - d.base_port
    spec["api"]["port"] = d.api_port
    spec["paths"] = d.spec["paths"]
    spec["nginx"]["listen"] = d.nginx_port
    spec.setdefault("restart", {})["drain_seconds"] = 0.2   # test speed only
    spec.setdefault("deploy", {})["soak_seconds"] = 3        # test speed only (the default soaks 30 s)
    spec["gunicorn"]["graceful_timeout"] = 5
    d.spec = spec
    d.write_spec()
    return d


@pytest.fixture
def flask_fleet(make_daemon, tmp_path):
    return fleet_of(make_daemon, tmp_path, "flaskr.yaml", write_flask_app(tmp_path / "srv-flaskr"))


@pytest.fixture
def django_fleet(make_daemon, tmp_path):
    return fleet_of(make_daemon, tmp_path, "mysite.yaml", write_django_project(tmp_path / "srv-mysite"))


@pytest.fixture
def fastapi_fleet(make_daemon, tmp_path):
    return fleet_of(make_daemon, tmp_path, "hello.yaml", write_fastapi_app(tmp_path / "srv-hello"))


def serving_pids(d) -> dict[int, tuple[int, tuple[int, ...]]]:
    """port -> (master pid, worker pids) of every running instance."""
    return {i["port"]: (i["pid"], tuple(sorted(w["pid"] for w in i["workers"])))
            for i in d.fleet()["instances"]}


def answers(port: int, path: str, needle: bytes) -> None:
    status, body = http_get(port, path, timeout=5)
    assert status == 200 and needle in body, (port, path, status, body[:300])


def check_serving(d, needle: bytes, workers: int) -> dict:
    fleet = d.wait_until(lambda f: f["ready"] == 2 and all(
        i["state"] == "running" and len(i["workers"]) == workers for i in f["instances"]),
        timeout=30, what="2 instances running with their workers")
    for inst in fleet["instances"]:
        answers(inst["port"], "/", needle)
    answers(d.nginx_port, "/", needle)
    return fleet


def test_the_documented_specs_pass_the_host_checks(flask_fleet, django_fleet, fastapi_fleet):
    """What `ultrascaled --check` does on top of loading: gunicorn, the worker class (uvicorn's
    dotted one included) and the app's module (the factory form included) are found by
    app.python in app.directory."""
    for d in (flask_fleet, django_fleet, fastapi_fleet):
        spec = load_spec(d.spec_path)
        assert spec.app.config is None
        assert host_problems(spec) == [], d.spec_path.read_text()


def test_a_flask_app_with_a_factory_and_no_health_endpoint_runs_on_sync_workers(flask_fleet):
    d = flask_fleet.start()
    fleet = check_serving(d, b"flaskr index from", workers=2)
    spec = load_spec(d.spec_path)
    assert (spec.gunicorn.worker_class, spec.health.path, spec.app.module) == \
        ("sync", "/", "flaskr:create_app()")
    for inst in fleet["instances"]:
        cmd = psutil.Process(inst["pid"]).cmdline()
        assert cmd[0] == sys.executable and cmd[-1] == "flaskr:create_app()"
        assert cmd[cmd.index("--worker-class") + 1] == "sync" and "-c" not in cmd
        assert inst["last_probe"] == "HTTP 200"


def test_a_fresh_django_project_runs_on_gthread_workers(django_fleet):
    d = django_fleet.start()
    fleet = check_serving(d, b"mysite index from", workers=2)
    for inst in fleet["instances"]:
        answers(inst["port"], "/health", b"ok")
        cmd = psutil.Process(inst["pid"]).cmdline()
        assert cmd[-1] == "mysite.wsgi:application"
        assert cmd[cmd.index("--worker-class") + 1] == "gthread"
        assert cmd[cmd.index("--threads") + 1] == "4"
    assert http_get(d.nginx_port, "/no-such-page")[0] == 404  # Django itself answers, DEBUG off


def test_two_fleets_side_by_side_never_touch_each_other(flask_fleet, django_fleet):
    flask_d, django_d = flask_fleet.start(), django_fleet.start()
    check_serving(flask_d, b"flaskr index from", workers=2)
    check_serving(django_d, b"mysite index from", workers=2)
    for a, b in ((flask_d, django_d), (django_d, flask_d)):
        before_a, before_b = serving_pids(a), serving_pids(b)
        restarts_b = {i["port"]: i["restarts"] for i in b.fleet()["instances"]}
        out = a.ctl("restart", "--all")
        assert out.returncode == 0, out.stdout + out.stderr
        a.wait_until(lambda f: f["ready"] == 2 and all(
            i["state"] == "running" and i["pid"] != before_a[i["port"]][0] and len(i["workers"]) == 2
            for i in f["instances"]), timeout=60, what="every instance restarted")
        assert serving_pids(b) == before_b, f"restarting {a.name} touched {b.name}"
        assert {i["port"]: i["restarts"] for i in b.fleet()["instances"]} == restarts_b
        for inst in b.fleet()["instances"]:
            assert http_get(inst["port"], "/")[0] == 200
        assert http_get(b.nginx_port, "/")[0] == 200
    assert flask_d.proc.poll() is None and django_d.proc.poll() is None


def deploy_rollback_deploy(d, app_dir: Path, version_file: Path) -> None:
    """Rows written before a deploy, under the new release and after a rollback are all there,
    and each step really changed the code that answers."""
    def add(name):
        assert http_get(d.nginx_port, f"/rows/add?name={name}")[0] == 200

    def rows():
        status, body = http_get(d.nginx_port, "/rows")
        assert status == 200, body[:300]
        return body.decode().split()

    def step(*args, version):
        out = d.ctl(*args)
        assert out.returncode == 0, out.stdout + out.stderr
        # a keep-alive connection nginx holds to a retiring gthread worker may answer once more
        # from the old release right after the step: wait for the new one (seen with Django)
        d.wait_until(lambda f: http_get(d.nginx_port, "/version")[1] == version.encode(), timeout=15,
                     what=f"{version} answering through nginx")

    for n in ("a1", "a2", "a3"):
        add(n)
    version_file.write_text("v2")     # edited in place, then deployed: as the doc says
    step("deploy", str(app_dir), version="v2")
    add("b1")
    assert rows() == ["a1", "a2", "a3", "b1"]
    step("rollback", version="v1")
    assert rows() == ["a1", "a2", "a3", "b1"]
    add("c1")
    version_file.write_text("v3")
    step("deploy", str(app_dir), version="v3")
    assert rows() == ["a1", "a2", "a3", "b1", "c1"]


def test_a_flask_deploy_and_rollback_keep_the_rows_in_its_instance_database(flask_fleet):
    d = flask_fleet
    app_dir = Path(d.spec["app"]["directory"])
    subprocess.run([sys.executable, "-m", "flask", "--app", "flaskr", "init-db"], cwd=app_dir, check=True,
                   capture_output=True, timeout=60)
    assert (app_dir / "instance" / "flaskr.sqlite").is_file()
    d.start()
    check_serving(d, b"flaskr index from", workers=2)
    deploy_rollback_deploy(d, app_dir, app_dir / "flaskr" / "VERSION")
    assert (app_dir / "instance").is_symlink(), "the running folder links to the shared instance folder"


def test_a_django_deploy_and_rollback_keep_the_rows_in_its_sqlite_database(django_fleet):
    """docs/your-app.md's mysite with deploy.shared: [db.sqlite3]: rows written before a deploy,
    under the new release and after a rollback are all there, and the release really changed."""
    d = django_fleet
    app_dir = Path(d.spec["app"]["directory"])
    add_rows_and_migrate(app_dir, "v1")
    d.start()
    check_serving(d, b"mysite index from", workers=2)
    deploy_rollback_deploy(d, app_dir, app_dir / "mysite" / "VERSION")
    migrated = d.events("deploy.release_command_done")   # the doc's release_command: migrate
    assert len(migrated) == 2, migrated                   # each deploy, not the rollback
    assert (app_dir / "db.sqlite3").is_symlink(), "the running folder links to the shared database"


def test_django_static_files_are_served_by_nginx_with_their_type_and_follow_a_deploy(django_fleet):
    """docs/your-app.md's mysite with nginx.static: after `collectstatic`, the admin's CSS comes
    from nginx as text/css with the cache header (Django, DEBUG off, serves no static file), and
    after a deploy from the release the `current` link points at."""
    d = django_fleet
    if os.geteuid() == 0:   # else nginx's workers are `nobody`, who cannot read pytest's tmp folders
        d.spec["nginx"]["user"] = pwd.getpwuid(os.geteuid()).pw_name
        d.write_spec()
    app_dir = Path(d.spec["app"]["directory"])
    add_rows_and_migrate(app_dir, "v1")
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput"], cwd=app_dir,
                   check=True, capture_output=True, timeout=120)
    assert (app_dir / "staticfiles" / "admin" / "css" / "base.css").is_file()
    d.start()
    fleet = check_serving(d, b"mysite index from", workers=2)

    def fetch(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{d.nginx_port}{path}", timeout=5) as r:
            return r.headers["Content-Type"], r.headers["Cache-Control"], r.read()

    ctype, cache, body = fetch("/static/admin/css/base.css")
    assert (ctype, cache) == ("text/css", "max-age=3600")
    assert body == (app_dir / "staticfiles" / "admin" / "css" / "base.css").read_bytes()
    assert fetch("/static/admin/js/core.js")[0] in ("application/javascript", "text/javascript")
    assert http_get(fleet["instances"][0]["port"], "/static/admin/css/base.css")[0] == 404

    (app_dir / "staticfiles" / "release.css").write_text("/* v2 */")
    out = d.ctl("deploy", str(app_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    (app_dir / "staticfiles" / "release.css").unlink()   # now only in the release
    assert fetch("/static/release.css") == ("text/css", "max-age=3600", b"/* v2 */")


def test_a_fastapi_app_runs_on_uvicorn_workers_and_everything_knows_it(fastapi_fleet):
    """Issue 23: the class is accepted, the instances run it (through the daemon's shim),
    /fleet and `status` name it, and `plan --users 200` counts an async worker's requests at
    once (it asked for 100 instances when everything took the fleet for sync)."""
    d = fastapi_fleet.start()
    fleet = check_serving(d, b'"Hello World"', workers=2)
    assert fleet["gunicorn"] == {"worker_class": "uvicorn_worker.UvicornWorker", "workers": 2,
                                 "requests_per_worker": 1000}
    for inst in fleet["instances"]:
        cmd = psutil.Process(inst["pid"]).cmdline()
        assert cmd[-1] == "main:app"
        assert cmd[cmd.index("--worker-class") + 1] == "ultrascale_uvicorn.UvicornWorker"
    status, body = http_get(d.nginx_port, "/items/5?q=somequery")
    assert (status, json.loads(body)) == (200, {"item_id": 5, "q": "somequery"})
    assert http_get(d.nginx_port, "/items/five")[0] == 422    # FastAPI's own validation answers

    out = d.ctl("status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 x uvicorn_worker.UvicornWorker per instance (1000 requests at once each)" in \
        out.stdout.splitlines()[0], out.stdout

    out = d.ctl("plan", "--users", "200", "--spec", str(d.spec_path), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    plan = json.loads(out.stdout)
    assert (plan["worker_class"], plan["requests_per_worker"], plan["workers_per_instance"]) == \
        ("uvicorn_worker.UvicornWorker", 1000, 2)
    assert plan["instances"] == 1, plan["arithmetic"]
    out = d.ctl("plan", "--users", "200", "--spec", str(d.spec_path))
    assert "worker_class uvicorn_worker.UvicornWorker" in out.stdout, out.stdout


def test_a_fastapi_deploy_and_rollback_keep_the_rows_in_its_sqlite_database(fastapi_fleet):
    """hello.yaml's deploy.shared: [database.db]: rows written before a deploy, under the new
    release and after a rollback are all there, and each step changed the code that answers."""
    d = fastapi_fleet
    app_dir = Path(d.spec["app"]["directory"])
    d.start()
    check_serving(d, b'"Hello World"', workers=2)
    deploy_rollback_deploy(d, app_dir, app_dir / "VERSION")
    assert (app_dir / "database.db").is_symlink(), "the running folder links to the shared database"


def slow_get(port: int, ms: int, out: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", f"/slow?ms={ms}")
        r = conn.getresponse()
        out["status"], out["body"], out["done"] = r.status, r.read(), time.monotonic()
    except (OSError, http.client.HTTPException) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def test_orphaned_uvicorn_workers_finish_in_flight_and_exit_long_before_the_reap(fastapi_fleet):
    """Issue 23: after kill -9 of their master, uvicorn's workers served on until the daemon
    killed the group, graceful_timeout + 2 = 32 s later. Under the shim each finishes what it
    answers (a 2 s request, straight to the instance's port) and exits about a second after:
    measured here from the kill to the last orphan gone."""
    d = fastapi_fleet
    d.spec["gunicorn"]["graceful_timeout"] = 30   # the default: the reap comes at 32 s
    d.write_spec()
    d.start()
    fleet = check_serving(d, b'"Hello World"', workers=2)
    inst = fleet["instances"][0]
    orphans = [w["pid"] for w in inst["workers"]]
    slow: dict = {}
    t = threading.Thread(target=slow_get, args=(inst["port"], 2000, slow))
    t.start()
    time.sleep(0.5)      # in flight on one of the master's workers
    killed = time.monotonic()
    os.kill(inst["pid"], signal.SIGKILL)
    while any(pid_alive(p) for p in orphans) and time.monotonic() - killed < 40:
        time.sleep(0.05)
    lived = time.monotonic() - killed
    t.join(30)
    print(f"orphaned uvicorn workers lived {lived:.2f} s after kill -9 (graceful_timeout 30)")
    assert slow.get("status") == 200, slow            # the answer in flight was not cut
    assert not any(pid_alive(p) for p in orphans)
    assert lived < 5, f"orphans lived {lived:.1f} s: they waited for the daemon's reap"
    assert slow["done"] - killed < lived + 0.1        # they left after answering, not before
    d.wait_until(lambda f: f["instances"][0]["state"] == "running" and f["instances"][0]["pid"] != inst["pid"],
                 timeout=30, what="the instance restarted")
    assert d.events("instance.orphans_finishing") and not d.events("instance.group_lingers")
    assert http_get(d.nginx_port, "/")[0] == 200
