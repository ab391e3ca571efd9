"""`ultrascaled --check`: exit 2 with a clear message for every hostile or unusable spec (never a
traceback), host checks that loading does not do, and the budget count a reload would use."""
import json
import os
import sys
from pathlib import Path

import pytest
import structlog

from ultrascaled import daemon
from ultrascaled.effects.host_checks import host_problems, reload_count
from ultrascaled.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def logging_as_before():
    """daemon.main configures structlog on this test's captured stderr, and caches each logger
    on first use: put the defaults back, or a later test logs to a closed file."""
    yield
    structlog.reset_defaults()


def check(path, capsys) -> tuple[int, str]:
    rc = daemon.main(["--check", "--spec", str(path), "--log-format", "console"])
    return rc, capsys.readouterr().err


def write(tmp_path, text: str | bytes, name: str = "fleet.yaml") -> Path:
    f = tmp_path / name
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return f


def base_spec(tmp_path, extra: str = "") -> str:
    return (f"app: {{directory: {ROOT}}}\npaths: {{state_dir: {tmp_path / 'state'}, "
            f"log_dir: {tmp_path / 'log'}}}\n{extra}")


def test_the_repository_spec_passes_check(capsys):
    rc, err = check(ROOT / "etc/ultrascaled/fleet.yaml", capsys)
    assert rc == 0, err


@pytest.mark.parametrize("content,needle", [
    ("", "the spec is empty"),
    ("# nothing\n", "the spec is empty"),
    ("~\n", "the spec is empty"),
    ("[1, 2]\n", "must be a mapping of sections"),
    (b"name: \xff\xfe\n", "not UTF-8 text"),
    ("a: &a [1, *a]\n", "recursive alias"),
    ("nginx: {server_name: 'x; location / { return 200; }'}\n", "nginx.server_name (line 1)"),
    ("name: !!python/object/apply:os.system ['true']\n", "values are not supported"),
    ('{"\\e[2J": 1}\n', "\\x1b[2J (line 1): unknown key"),
])
def test_hostile_specs_exit_2_with_a_message_and_no_traceback(tmp_path, capsys, content, needle):
    rc, err = check(write(tmp_path, content), capsys)
    assert rc == 2 and needle in err and "Traceback" not in err
    assert "\x1b" not in err  # terminal escapes from the file are printed escaped


@pytest.mark.parametrize("make", ["dir", "fifo", "missing", "devzero"])
def test_unreadable_paths_exit_2(tmp_path, capsys, make):
    path = {"dir": tmp_path, "missing": tmp_path / "nope.yaml", "devzero": Path("/dev/zero"),
            "fifo": tmp_path / "fifo"}[make]
    if make == "fifo":
        os.mkfifo(path)
    rc, err = check(path, capsys)
    assert rc == 2 and "cannot read" in err


def test_check_names_a_missing_app_directory_python_and_config(tmp_path, capsys):
    f = write(tmp_path, f"app: {{directory: {tmp_path / 'no-app'}, python: {tmp_path / 'no-python'}, "
                        f"config: app/gunicorn_conf.py}}\n"
                        f"paths: {{state_dir: {tmp_path / 'state'}, log_dir: {tmp_path / 'log'}}}\n")
    rc, err = check(f, capsys)
    assert rc == 2
    assert f"app.directory: {tmp_path / 'no-app'} does not exist" in err
    assert f"app.python: {tmp_path / 'no-python'} is not an executable file" in err
    assert f"app.config: {tmp_path / 'no-app' / 'app/gunicorn_conf.py'} does not exist" in err


def shadowing_app(tmp_path, *missing: str) -> Path:
    """An app folder whose modules `missing` shadow the installed ones and fail to import as a
    missing package does (app.python runs in app.directory, which is first on sys.path)."""
    app = tmp_path / "app-dir"
    app.mkdir(parents=True)
    for name in missing:
        (app / name).mkdir()
        (app / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named {name!r}\", name={name!r})\n")
    (app / "myapp.py").write_text("application = None\n")
    return app


def test_check_says_which_package_the_worker_class_needs(tmp_path, capsys):
    # eventlet is in no extra; an app folder shadowing it makes it missing also where it is installed
    app = shadowing_app(tmp_path, "eventlet")
    rc, err = check(write(tmp_path, base_spec(tmp_path, "gunicorn: {worker_class: eventlet}\n").replace(
        f"app: {{directory: {ROOT}}}", f"app: {{directory: {app}, module: 'myapp:application'}}")), capsys)
    assert rc == 2
    assert (f"app.python: {sys.executable} cannot import eventlet (gunicorn.worker_class eventlet "
            f"needs it); install it: {sys.executable} -m pip install eventlet") in err


@pytest.mark.parametrize("missing,wc,via", [
    ("gevent", "gevent", ""),
    ("packaging", "gevent", ": gunicorn.workers.ggevent imports it"),  # gunicorn 27's gevent worker
])
def test_check_names_the_package_the_worker_class_cannot_import(tmp_path, capsys, missing, wc, via):
    app = shadowing_app(tmp_path, missing)
    f = write(tmp_path, base_spec(tmp_path, f"gunicorn: {{worker_class: {wc}}}\n").replace(
        f"app: {{directory: {ROOT}}}", f"app: {{directory: {app}, module: 'myapp:application'}}"))
    rc, err = check(f, capsys)
    assert rc == 2
    assert (f"app.python: {sys.executable} cannot import {missing} (gunicorn.worker_class {wc} "
            f"needs it{via}); install it: {sys.executable} -m pip install {missing}, or use "
            "gunicorn.worker_class sync or gthread, which need only gunicorn") in err


def test_a_venv_without_gevent_and_packaging_is_told_to_install_both_at_once(tmp_path):
    app = shadowing_app(tmp_path, "gevent", "packaging")
    f = write(tmp_path, base_spec(tmp_path, "gunicorn: {worker_class: gevent}\n").replace(
        f"app: {{directory: {ROOT}}}", f"app: {{directory: {app}, module: 'myapp:application'}}"))
    py = sys.executable
    assert host_problems(load_spec(f)) == [
        f"app.python: {py} cannot import gevent, packaging (gunicorn.worker_class gevent needs it, "
        f"and gunicorn.workers.ggevent imports packaging); install them: {py} -m pip install gevent "
        "packaging, or use gunicorn.worker_class sync or gthread, which need only gunicorn"]


@pytest.mark.parametrize("wc", ["sync", "gthread"])
def test_sync_and_gthread_need_nothing_besides_gunicorn(tmp_path, wc):
    app = shadowing_app(tmp_path, "gevent")
    f = write(tmp_path, base_spec(tmp_path, f"gunicorn: {{worker_class: {wc}}}\n").replace(
        f"app: {{directory: {ROOT}}}", f"app: {{directory: {app}, module: 'myapp:application'}}"))
    assert host_problems(load_spec(f)) == []


@pytest.mark.parametrize("module,found", [
    ("myapp:application", True), ("myapp:create_app()", True), ("mysite.wsgi:application", False),
])
def test_check_says_when_app_python_finds_no_app_module(tmp_path, module, found):
    app = tmp_path / "own"
    app.mkdir()
    (app / "myapp.py").write_text("raise SystemExit('imported!')\n")  # looked for, never imported
    f = write(tmp_path, base_spec(tmp_path).replace(
        f"app: {{directory: {ROOT}}}", f"app: {{directory: {app}, module: '{module}'}}"))
    problems = host_problems(load_spec(f))
    if found:
        assert problems == []
    else:
        assert problems == [f"app.module: {sys.executable} finds no module `mysite` in app.directory "
                            f"{app} (nor in its venv): set app.module to your app's WSGI callable, "
                            "e.g. `mysite.wsgi:application` or `flaskr:create_app()`, and "
                            "app.directory to the folder that holds it"]


def test_the_host_checks_pass_for_this_checkout(tmp_path):
    assert host_problems(load_spec(write(tmp_path, base_spec(tmp_path)))) == []


def test_check_judges_the_budget_for_the_count_a_reload_keeps(tmp_path, capsys):
    f = write(tmp_path, base_spec(tmp_path, "gunicorn: {workers: 1}\nmemory: {fleet_budget_mb: 2000}\n"))
    assert reload_count(load_spec(f)) == 2
    assert check(f, capsys)[0] == 0
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(json.dumps({"desired": 3}))
    assert reload_count(load_spec(f)) == 3
    rc, err = check(f, capsys)
    assert rc == 2
    assert ("memory.fleet_budget_mb: 3 instances x (1 worker + 1 master) x 500 MiB = 3000 "
            "MiB exceeds the budget of 2000 MiB by 1000 MiB (for the count 3 saved in") in err
    (tmp_path / "state" / "state.json").write_text("{not json")
    assert reload_count(load_spec(f)) == 2


# ---- warnings: a target whose signal the app may never supply (issue 23) ------------------

def app_dir(tmp_path, source: str) -> Path:
    d = tmp_path / "shop"
    (d / "shop").mkdir(parents=True)
    (d / "shop" / "wsgi.py").write_text(source)
    return d


def test_check_warns_when_the_app_does_not_export_the_in_flight_gauge(tmp_path, capsys):
    d = app_dir(tmp_path, "def application(environ, start_response): ...\n")
    spec = write(tmp_path, f"app: {{directory: {d}, module: 'shop.wsgi:application'}}\n"
                 f"paths: {{state_dir: {tmp_path / 'state'}, log_dir: {tmp_path / 'log'}}}\n"
                 "gunicorn: {worker_class: sync}\nnginx: {mode: 'off'}\n"
                 "autoscale: {enabled: true, target: {in_flight_per_worker: 0.8, "
                 "p95_latency_seconds: 0.5}}\n")
    rc, err = check(spec, capsys)
    assert rc == 0, err                                   # a warning, not a refusal
    assert "warnings for spec" in err and "(not errors)" in err
    assert "autoscale.target.in_flight_per_worker: no .py file under app.directory" in err
    assert "the gauge `ultrascale_http_requests_in_flight`" in err
    # nginx off: no traffic log, so the p95 needs the app's counter and histogram
    assert "autoscale.target.p95_latency_seconds:" in err
    assert "`ultrascale_http_request_duration_seconds`" in err and "nginx's traffic log" in err
    assert "a step down waits 300s after the daemon starts" in err


def test_no_warning_when_the_app_names_the_metrics_or_nginx_logs_the_traffic(tmp_path):
    from ultrascaled.effects.host_checks import host_warnings
    d = app_dir(tmp_path, "Gauge('http_requests_in_flight', 'in flight')\n")
    text = (f"app: {{directory: {d}, module: 'shop.wsgi:application'}}\n"
            f"paths: {{state_dir: {tmp_path / 'state'}, log_dir: {tmp_path / 'log'}}}\n"
            "autoscale: {enabled: true, target: {in_flight_per_worker: 0.8, p95_latency_seconds: 0.5}}\n")
    s = load_spec(write(tmp_path, text))                    # managed nginx: its traffic log is on
    assert host_warnings(s) == []
    assert host_warnings(load_spec(write(tmp_path, text.replace("enabled: true", "enabled: false")))) == []
    # the reference app (the repository) exports both
    ref = load_spec(write(tmp_path, base_spec(tmp_path, "nginx: {mode: 'off'}\nautoscale: {enabled: "
                                              "true, target: {in_flight_per_worker: 0.8, "
                                              "p95_latency_seconds: 0.5}}\n")))
    assert host_warnings(ref) == []


@pytest.mark.parametrize("args,needle", [
    ('["--preload", "x"]', "gunicorn reads the app as 'x app.wsgi:application', not app.module"),
    ('["--no-such-flag"]', "gunicorn refuses the command line: unrecognized arguments: --no-such-flag"),
    ('["--limit-request-line", "many"]', "invalid int value: 'many'"),
])
@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_check_parses_gunicorn_args_with_the_apps_own_gunicorn(tmp_path, capsys, args, needle):
    rc, err = check(write(tmp_path, base_spec(tmp_path, f"gunicorn: {{args: {args}}}\n")), capsys)
    assert rc == 2 and needle in err, err


def test_check_passes_gunicorn_args_gunicorn_accepts(tmp_path, capsys):
    rc, err = check(write(tmp_path, base_spec(tmp_path, 'gunicorn: {args: ["--log-level", "debug"]}\n')), capsys)
    assert rc == 0, err


def app_spec(tmp_path, app: Path, gunicorn: str) -> Path:
    return write(tmp_path, base_spec(tmp_path, f"gunicorn: {{{gunicorn}}}\n").replace(
        f"app: {{directory: {ROOT}}}", f"app: {{directory: {app}, module: 'myapp:application'}}"))


@pytest.mark.parametrize("wc", ["uvicorn_worker.UvicornWorker", "uvicorn.workers.UvicornWorker"])
def test_uvicorns_classes_pass_where_app_python_has_them(tmp_path, wc):
    app = shadowing_app(tmp_path)
    assert host_problems(load_spec(app_spec(tmp_path, app, f"worker_class: {wc}"))) == []


def test_check_says_to_install_uvicorn_worker_when_app_python_lacks_it(tmp_path):
    app = shadowing_app(tmp_path, "uvicorn_worker")
    py = sys.executable
    assert host_problems(load_spec(app_spec(tmp_path, app, "worker_class: uvicorn_worker.UvicornWorker"))) == [
        f"app.python: {py} cannot import uvicorn_worker (gunicorn.worker_class "
        f"uvicorn_worker.UvicornWorker needs it); install it: {py} -m pip install uvicorn-worker"]


def test_the_deprecated_uvicorn_class_without_uvicorn_points_to_uvicorn_worker(tmp_path):
    app = shadowing_app(tmp_path, "uvicorn")
    py = sys.executable
    [problem] = host_problems(load_spec(app_spec(tmp_path, app, "worker_class: uvicorn.workers.UvicornWorker")))
    assert problem == (f"app.python: {py} cannot import uvicorn (gunicorn.worker_class "
                       "uvicorn.workers.UvicornWorker needs it); uvicorn.workers is deprecated: install "
                       f"uvicorn-worker ({py} -m pip install uvicorn-worker) and name "
                       "uvicorn_worker.UvicornWorker, the same class")


def test_check_names_a_dotted_class_whose_module_or_class_is_missing(tmp_path):
    app = shadowing_app(tmp_path)
    (app / "myworkers.py").write_text("class Other:\n    pass\n")
    py = sys.executable
    assert host_problems(load_spec(app_spec(tmp_path, app, "worker_class: nosuch.Worker, concurrency: 4"))) == [
        f"app.python: {py} cannot import nosuch for gunicorn.worker_class nosuch.Worker: no module "
        "named 'nosuch' (in app.directory or its venv)"]
    assert host_problems(load_spec(app_spec(tmp_path, app, "worker_class: myworkers.Fast, concurrency: 4"))) == [
        f"gunicorn.worker_class: {py} imports myworkers, but it has no class 'Fast'"]
    assert host_problems(load_spec(app_spec(tmp_path, app, "worker_class: myworkers.Other, concurrency: 4"))) == []
