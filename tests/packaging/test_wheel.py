"""What `pip install ultrascale` installs: the wheel built from this checkout, its contents and
metadata, its packages imported under their installed names, and (integration) a fresh venv
with the plain install checking a spec that does not use the reference app."""
from __future__ import annotations

import email.parser
import os
import resource
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support import needs

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "var", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}
APP_PACKAGES = {"gevent", "packaging", "pymongo", "redis", "python-socketio", "simple-websocket"}


def _copy_checkout(dest: Path) -> Path:
    """The checkout as a build sees it (tests/, bench/, scripts/ included: they must stay out)."""
    def ignore(folder, names):
        return [n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")]
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended (and were waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    needs.setuptools(68)   # the build backend, as new as pyproject.toml's [build-system] asks
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_checkout(tmp / "src")
    out = tmp / "dist"
    out.mkdir()
    cpu0 = _children_cpu()
    # The PEP 517 backend called directly: no build isolation, no index, no pip.
    r = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                        "print(b.build_wheel(sys.argv[1]))", str(out)],
                       cwd=src, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    built = out / r.stdout.strip().splitlines()[-1]
    assert built.is_file(), r.stdout[-2000:]
    # ~1 CPU s: a build that copied or compiled much more would show here (CPU seconds, which
    # a busy host does not stretch as it does the wall time)
    cpu = _children_cpu() - cpu0
    assert cpu < 20, f"building the wheel took {cpu:.1f} CPU s"
    return built


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(meta.replace("METADATA", "entry_points.txt")).decode()
        return email.parser.Parser().parsestr(z.read(meta).decode()), entry_points


def _requirements(msg) -> dict[str | None, set[str]]:
    """Requirement names by extra (None: the base install)."""
    out: dict[str | None, set[str]] = {}
    for req in msg.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        name = spec.strip().split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        extra = None
        if "extra ==" in marker:
            extra = marker.split("extra ==")[1].strip().strip("'\"")
        out.setdefault(extra, set()).add(name.replace("_", "-"))
    return out


def test_the_wheel_holds_the_daemon_the_app_and_the_load_tester_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ultrascaled", "ultrascale_app", "ultrascale_loadtest", "ultrascale-0.1.0.dist-info"}, tops
    daemon = {n.split("/", 1)[1] for n in names if n.startswith("ultrascaled/")}
    # every module of the checkout's package, in its layer folder, and the API's description
    modules = {str(p.relative_to(ROOT / "ultrascaled")) for p in (ROOT / "ultrascaled").rglob("*.py")}
    assert {"daemon.py", "surface/cli.py", "spec/__init__.py", "surface/openapi.yaml"} <= daemon | modules
    assert modules <= daemon, sorted(modules - daemon)
    assert "surface/openapi.yaml" in daemon
    assert not {"harness.py", "chaos.py", "figures.py"} & daemon
    # the dashboard (GET /ui): every static asset, byte for byte
    static_dir = ROOT / "ultrascaled" / "surface" / "static"
    static = sorted(p.name for p in static_dir.iterdir() if p.is_file())
    assert static and {f"surface/static/{n}" for n in static} <= daemon, static
    with zipfile.ZipFile(wheel) as z:
        for n in static:
            assert z.read(f"ultrascaled/surface/static/{n}") == (static_dir / n).read_bytes(), n
    assert not [n for n in daemon if n.startswith("loadtest")]
    assert {"ultrascale_app/wsgi.py", "ultrascale_app/gunicorn_conf.py", "ultrascale_app/cache.py",
            "ultrascale_loadtest/cli.py", "ultrascale_loadtest/__main__.py"} <= set(names)
    # what the checkout has and the wheel must not
    assert not [n for n in names if n.split("/")[0] in ("app", "loadtest", "tests", "bench", "scripts",
                                                        "etc", "docs", "support")]


def test_the_plain_install_needs_no_app_package_and_the_extras_are_declared(wheel):
    msg, entry_points = _metadata(wheel)
    reqs = _requirements(msg)
    base = reqs[None]
    assert base == {"aiohttp", "psutil", "structlog", "pyyaml", "prometheus-client", "gunicorn", "cronsim"}, base
    assert not base & (APP_PACKAGES | {"python-socketio", "socketio"})
    extras = set(msg.get_all("Provides-Extra") or [])
    assert {"app", "loadtest", "test"} <= extras, extras
    assert APP_PACKAGES <= reqs["app"], reqs["app"]
    assert {"ultrascale"} <= reqs["test"]  # ultrascale[app,loadtest]
    assert any("ultrascale[app,loadtest]" in r.replace(" ", "") and "test" in r
               for r in msg.get_all("Requires-Dist")), "the test extra pulls the app and loadtest extras"
    assert "ultrascaled = ultrascaled.daemon:main" in entry_points
    assert "ultrascalectl = ultrascaled.surface.cli:main" in entry_points
    assert "ultrascale-loadtest = ultrascale_loadtest.cli:main" in entry_points


def test_the_installed_packages_work_under_their_own_names(wheel, tmp_path):
    """Unpacked as pip would (pure Python: a wheel is a zip) and imported from outside the
    checkout: no module of the wheel reaches for `app` or `loadtest` (relative imports only)."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = """
import sys
import ultrascale_app.wsgi, ultrascale_app.gunicorn_conf, ultrascale_loadtest.cli
from ultrascale_app.wsgi import create_app
create_app({})
assert ultrascale_app.__file__.startswith(sys.argv[1]), ultrascale_app.__file__
assert ultrascale_loadtest.__file__.startswith(sys.argv[1]), ultrascale_loadtest.__file__
import ultrascaled.surface.dashboard as ui
page = ui._Page()  # the dashboard's assets load from the installed package data
assert str(ui.STATIC).startswith(sys.argv[1]) and b"/ui/static/dashboard.js?v=" in page.html, ui.STATIC
strays = sorted(m for m in sys.modules if m.split(".")[0] in ("app", "loadtest"))
assert not strays, strays
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(site))
    r = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "ultrascale_loadtest", "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--users" in r.stdout, r.stderr


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


HELLO = '''\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
'''


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_fresh_venv_with_the_plain_install_checks_a_spec_without_the_reference_app(wheel, tmp_path):
    """`python -m venv` (no system site packages), `pip install` the wheel without extras (from
    the machine's index and pip cache), then `ultrascaled --check` on a one-file WSGI app with
    sync workers and no nginx. About 15-30 s, most of it pip; integration for that reason."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    bin_ = venv / "bin"
    r = subprocess.run([str(bin_ / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(wheel)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    probe = subprocess.run([str(bin_ / "python"), "-c", "import importlib.util as u; print(sorted(m for m in "
                            "('gevent', 'pymongo', 'redis', 'socketio', 'app', 'loadtest') if u.find_spec(m)))"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr

    app_dir = tmp_path / "myapp"
    app_dir.mkdir()
    (app_dir / "hello.py").write_text(HELLO)
    base, api = _free_ports(2)
    spec = tmp_path / "fleet.yaml"
    spec.write_text(f"""\
name: fresh
app: {{module: "hello:app", directory: {app_dir}, config: null}}
instances: {{count: 1, min: 1, max: 2, base_port: {base}}}
gunicorn: {{worker_class: sync, workers: 1}}
api: {{port: {api}}}
paths: {{state_dir: {tmp_path / 'state'}, log_dir: {tmp_path / 'log'}}}
nginx: {{mode: "off"}}
""")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_}:/usr/bin:/bin:/usr/sbin"
    r = subprocess.run([str(bin_ / "ultrascaled"), "--check", "--spec", str(spec)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for argv in (["ultrascalectl", "--help"], ["ultrascale-loadtest", "--help"]):
        r = subprocess.run([str(bin_ / argv[0]), *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, f"{argv}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
