"""What keeps this host from running a valid spec (`ultrascaled --check` only, never loading):
app.directory, app.python and the packages it can import, app.config, app.module, the
budgets for the count a reload would keep (read from paths.state_dir/state.json), and the
ports the fleet listens on (free, or held by the running fleet of this name)."""
from __future__ import annotations

import errno
import json
import os
import socket
import shutil
import subprocess
import sys
from pathlib import Path

import psutil

from ultrascaled.core import autoscale as autoscale_core
from ultrascaled.core.command import gunicorn_argv, process_env
from ultrascaled.effects import procs
from ultrascaled.spec import Spec, budget_errors
from ultrascaled.spec import workers as worker_classes

# Worker classes: gunicorn's module for each (importing it imports what the worker needs:
# gunicorn 27's gevent worker also imports `packaging`), and the package it needs besides gunicorn.
WORKER_MODULES = {"gevent": "gunicorn.workers.ggevent", "eventlet": "gunicorn.workers.geventlet",
                  "gthread": "gunicorn.workers.gthread", "sync": "gunicorn.workers.sync"}
WORKER_PACKAGES = {"gevent": "gevent", "eventlet": "eventlet", "gthread": None, "sync": None}
# What a worker module imports besides its package, named in the same message when missing, so
# that one `pip install` brings everything (gunicorn 27's gevent worker imports `packaging`).
WORKER_EXTRAS = {"gevent": ("packaging",)}
# Run by app.python in app.directory: import one module; a missing one is named on stdout (its
# top-level name, which is the pip package for everything a worker class imports).
_IMPORT_PROBE = ("import importlib, sys\n"
                 "try:\n    importlib.import_module(sys.argv[1])\n"
                 "except ModuleNotFoundError as e:\n"
                 "    print((e.name or '?').split('.')[0]); sys.exit(3)\n")
# Run by app.python in app.directory: a dotted worker class (`module.Class`) as gunicorn loads
# it: a missing module named on stdout (exit 3), a module without the class exit 4.
_CLASS_PROBE = ("import importlib, sys\n"
                "module, _, cls = sys.argv[1].rpartition('.')\n"
                "try:\n    m = importlib.import_module(module)\n"
                "except ModuleNotFoundError as e:\n"
                "    print((e.name or '?').split('.')[0]); sys.exit(3)\n"
                "if not isinstance(getattr(m, cls, None), type):\n    sys.exit(4)\n")
# pip's name for a top-level module a known dotted class needs, where it differs
PIP_NAMES = {"uvicorn_worker": "uvicorn-worker"}
# Run by app.python in app.directory: is the top-level module of app.module on the import path
# (found, never imported: importing the app could connect to databases)?
_FIND_PROBE = ("import importlib.util, sys\nsys.path.insert(0, '')\n"
               "sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)\n")


def saved_count(spec: Spec) -> int | None:
    """The desired count a daemon saved in `paths.state_dir/state.json`, when readable."""
    try:
        with open(Path(spec.paths.state_dir) / "state.json", "rb") as f:
            saved = json.loads(f.read(1 << 16))["desired"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return saved if isinstance(saved, int) and not isinstance(saved, bool) and saved >= 0 else None


def reload_count(spec: Spec) -> int:
    """The count a reload judges the budgets for: the larger of instances.count and the saved
    count (a scaled fleet keeps its count across a reload)."""
    return max(spec.instances.count, saved_count(spec) or 0)


def host_problems(spec: Spec, nofile_limit: int | None = None, timeout: float = 30.0) -> list[str]:
    """What keeps this host from running a valid spec: app.directory, app.python, app.config,
    the worker class's packages, app.module's module, and the budgets for the count a reload
    would use. Runs `app.python -c ...` (imports gunicorn's worker module, only looks for the
    app's); only `ultrascaled --check` calls this, never load_spec."""
    problems = []
    directory = spec.app.directory
    if not os.path.isdir(directory):
        why = "is not a folder" if os.path.exists(directory) else "does not exist"
        problems.append(f"app.directory: {directory} {why}")
    python = spec.app.python or sys.executable
    found = python if os.sep in python else shutil.which(python)
    if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
        problems.append(f"app.python: {python} is not an executable file")
        found = None
    if spec.app.config and not os.path.isfile(os.path.join(directory, spec.app.config)):
        problems.append(f"app.config: {os.path.join(directory, spec.app.config)} does not exist")
    if found:
        imports = _import_problems(spec, python, found, directory, timeout)
        problems += imports or _argv_problems(spec, python, found, timeout)
    problems += process_problems(spec)
    count = reload_count(spec)
    if count > spec.instances.count:
        problems += [f"{e} (for the count {count} saved in paths.state_dir/state.json, which a "
                     "reload keeps)" for e in budget_errors(spec, count, nofile_limit=nofile_limit)]
    return problems


def _class_problems(wc: str, python: str, probe) -> list[str]:
    """A dotted gunicorn.worker_class as app.python loads it: its module (the package to
    install named for the classes ultrascaled knows) and the class in it."""
    module, cls = worker_classes.split(wc)
    rc, out = probe(_CLASS_PROBE, wc)
    if rc == 0:
        return []
    if rc == 3:
        if worker_classes.is_uvicorn(wc) or out in PIP_NAMES:
            package = PIP_NAMES.get(out, out)
            hint = f"; install it: {python} -m pip install {package}"
            if wc in worker_classes.DEPRECATED:
                hint = (f"; uvicorn.workers is deprecated: install uvicorn-worker ({python} -m pip "
                        f"install uvicorn-worker) and name {worker_classes.DEPRECATED[wc]}, "
                        "the same class")
            return [f"app.python: {python} cannot import {out} (gunicorn.worker_class {wc} "
                    f"needs it){hint}"]
        return [f"app.python: {python} cannot import {module} for gunicorn.worker_class {wc}: "
                f"no module named {out!r} (in app.directory or its venv)"]
    if rc == 4:
        return [f"gunicorn.worker_class: {python} imports {module}, but it has no class {cls!r}"]
    return [f"app.python: {python} cannot import {module} (gunicorn.worker_class {wc}): {out}"]


def process_problems(spec: Spec) -> list[str]:
    """Each worker type's folder exists and its program (and its `ready` command's) is found: a path, or a name on the PATH
    it starts with (the one its processes get: app.python's folder first, then the daemon's
    PATH, unless app.env or its env sets PATH)."""
    problems = []
    for name, t in sorted(spec.processes.items()):
        key = f"processes.{name}"
        folder = t.directory or spec.app.directory
        if t.directory and not os.path.isdir(folder):
            why = "is not a folder" if os.path.exists(folder) else "does not exist"
            problems.append(f"{key}.directory: {folder} {why}")
        ready = (t.ready or {}).get("command") if t.kind == "worker" else None
        for what, argv in (("command", t.command), ("ready.command", ready)):
            program = argv[0] if argv else ""
            if not program:
                continue
            if os.sep in program:
                where = program if os.path.isabs(program) else os.path.join(folder, program)
                found = where if os.path.isfile(where) and os.access(where, os.X_OK) else None
            else:
                found = shutil.which(program, path=process_env(spec, name, 0)["PATH"])
            if not found:
                problems.append(f"{key}.{what}: {program!r} is not an executable file"
                                + ("" if os.sep in program else " on the PATH it starts with (app.python's "
                                   "folder, then the daemon's PATH)"))
    return problems


def _import_problems(spec: Spec, python: str, found: str, directory: str,
                    timeout: float) -> list[str]:
    """gunicorn, the worker class's module and app.module's top-level module, as app.python
    sees them from app.directory; each missing one named with the package to install."""
    cwd = directory if os.path.isdir(directory) else None

    def probe(code: str, arg: str) -> tuple[int, str]:
        try:
            out = subprocess.run([found, "-c", code, arg], capture_output=True, text=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return -1, str(exc)
        last = (out.stderr.strip().splitlines() or [""])[-1]
        return out.returncode, out.stdout.strip() if out.returncode == 3 else last

    wc = spec.gunicorn.worker_class
    problems = []
    # gunicorn, then the worker class's package, then gunicorn's worker module (which imports
    # more: `packaging` for gevent); the first that fails is reported.
    for module in ["gunicorn"] + ([] if worker_classes.is_dotted(wc) else
                                  [WORKER_PACKAGES[wc], WORKER_MODULES[wc]]):
        if not module:
            continue
        rc, missing = probe(_IMPORT_PROBE, module)
        if rc == 0:
            continue
        if rc == 3:
            package = missing
            why = ("gunicorn runs the instances" if package == "gunicorn" else
                   f"gunicorn.worker_class {wc} needs it"
                   + ("" if package == WORKER_PACKAGES[wc] else f": {module} imports it"))
            packages = [package]
            if package == WORKER_PACKAGES[wc]:  # the worker module will want its extras too
                packages += [x for x in WORKER_EXTRAS.get(wc, ()) if probe(_IMPORT_PROBE, x)[0] == 3]
            if len(packages) > 1:
                why += f", and {WORKER_MODULES[wc]} imports {', '.join(packages[1:])}"
            problems.append(f"app.python: {python} cannot import {', '.join(packages)} ({why}); "
                            f"install {'it' if len(packages) == 1 else 'them'}: "
                            f"{python} -m pip install {' '.join(packages)}"
                            + ("" if wc in ("sync", "gthread") else ", or use "
                               "gunicorn.worker_class sync or gthread, which need only gunicorn"))
        else:
            problems.append(f"app.python: {python} cannot import {module} (gunicorn.worker_class "
                            f"{wc}): {missing}")
        break
    if not problems and worker_classes.is_dotted(wc):   # a dotted class, as gunicorn loads it
        problems += _class_problems(wc, python, probe)
    top = spec.app.module.split(":", 1)[0].split(".", 1)[0]
    if cwd and not any(a == "--pythonpath" or a.startswith("--pythonpath=") for a in spec.gunicorn.args):
        rc, err = probe(_FIND_PROBE, top)
        if rc == 3:
            problems.append(f"app.module: {python} finds no module `{top}` in app.directory "
                            f"{directory} (nor in its venv): set app.module to your app's WSGI "
                            "callable, e.g. `mysite.wsgi:application` or `flaskr:create_app()`, "
                            "and app.directory to the folder that holds it")
        elif rc != 0:
            problems.append(f"app.module: {python} could not look for module `{top}`: {err}")
    return problems


# gunicorn's own parser on the command line the daemon would run (its positional arguments
# printed): what gunicorn.args does to it, as the installed gunicorn reads it.
_ARGV_PROBE = ("import json, sys\nfrom gunicorn.config import Config\n"
               "ns = Config().parser().parse_args(sys.argv[1:])\nprint(json.dumps(ns.args))")


def _argv_problems(spec: Spec, python: str, found: str, timeout: float) -> list[str]:
    """gunicorn.args as app.python's gunicorn parses the whole command line: an argument it
    rejects, or one that replaces app.module (a positional, or a flag's missing value), is an
    error; `--check` then refuses a spec whose instances could not start."""
    if not spec.gunicorn.args:
        return []
    argv = gunicorn_argv(spec, spec.instances.base_port)[3:]     # after `python -m gunicorn`
    try:
        out = subprocess.run([found, "-c", _ARGV_PROBE, *argv], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"gunicorn.args: could not check them with {python}'s gunicorn: {exc}"]
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no message)"])[-1].split("error: ", 1)[-1]
        return [f"gunicorn.args: {python}'s gunicorn refuses the command line: {last[:300]}"]
    try:
        positional = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return []
    if positional != [spec.app.module]:
        return [f"gunicorn.args: gunicorn reads the app as {' '.join(map(str, positional))[:200]!r}, not "
                f"app.module {spec.app.module!r}: an argument in gunicorn.args is taken for the app "
                "(a value after a flag that takes none?)"]
    return []


# Bounds of the look through the app's source for the metric names a target needs.
SCAN_MAX_FILES = 20000
SCAN_MAX_BYTES = 2 * 1024 * 1024
SCAN_SKIP = {"__pycache__", "node_modules", "site-packages", "dist-packages", "var", "tests"}


def _source_names(directory: str, names: set[str]) -> set[str]:
    """Which of `names` some .py file under `directory` holds (bounded: SCAN_MAX_FILES files of
    at most SCAN_MAX_BYTES; hidden folders, virtualenvs and caches skipped)."""
    found: set[str] = set()
    seen = 0
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SCAN_SKIP
                   and not os.path.exists(os.path.join(root, d, "pyvenv.cfg"))]
        for f in files:
            if not f.endswith(".py"):
                continue
            seen += 1
            if seen > SCAN_MAX_FILES:
                return found
            try:
                with open(os.path.join(root, f), "rb") as fh:
                    text = fh.read(SCAN_MAX_BYTES)
            except OSError:
                continue
            found |= {n for n in names if n.encode() in text}
            if found == names:
                return found
    return found


def host_warnings(spec: Spec) -> list[str]:
    """What may keep an enabled autoscaler's target from ever being measured on this host (a
    warning, not a refusal: an app may export the metric from code this look does not see,
    e.g. an installed package). `ultrascaled --check` prints them."""
    a = spec.autoscale
    if not a.enabled:
        return []
    traffic_log = spec.nginx.traffic_log_path is not None
    wanted = {name: autoscale_core.APP_SOURCE_NAMES[name]
              for name in autoscale_core.targets_of(a)
              if name in autoscale_core.APP_SOURCE_NAMES
              and not (name == "p95_latency_seconds" and traffic_log)}
    if not wanted:
        return []
    directory = spec.app.directory
    found = _source_names(directory, set(wanted.values())) if os.path.isdir(directory) else set()
    grace = autoscale_core.never_seen_grace(a)
    out = []
    for name, source_name in wanted.items():
        if source_name in found:
            continue
        out.append(f"autoscale.target.{name}: no .py file under app.directory {directory} names "
                   f"`{source_name}`, so this signal may never come: "
                   f"{autoscale_core.needs(name, traffic_log)}. Without it the signal is missing: "
                   f"a step up follows the other targets, and a step down waits {grace:g}s after "
                   f"the daemon starts (then the signal is left out of the step-down rule, event "
                   f"autoscale.signal_never_seen)")
    return out


def fleet_ports(spec: Spec) -> list[tuple[str, str, int]]:
    """(key, host, port) of every port the fleet listens on: the API, a managed nginx's, and
    each instance's for the count a start (or a reload) would run."""
    out = [("api.port", spec.api.host, spec.api.port)]
    ng = spec.nginx
    if ng.mode == "managed":
        host = "0.0.0.0" if ng.listen_host == "*" else ng.listen_host
        out.append(("nginx.listen", host, ng.listen))
        if ng.tls_enabled:
            out.append(("nginx.tls_listen", host, ng.tls_listen))
    out += [("instances.base_port", spec.instances.host, spec.port(i)) for i in range(reload_count(spec))]
    return out


def port_problems(spec: Spec, fleet_pid: int | None = None) -> list[str]:
    """Ports of the fleet another program holds. A port held by this fleet is fine: by
    `fleet_pid` (the ultrascaled running this fleet's name here) or its children, by a gunicorn
    process with this fleet's marker, or by its nginx (left running for the next daemon to
    adopt, or the running fleet's): the fleet is checked against itself."""
    problems, busy = [], []
    for key, host, port in fleet_ports(spec):
        try:
            if not _bindable(host, port):
                busy.append((key, host, port))
        except OSError as exc:
            problems.append(f"{key}: cannot check {host}:{port}: {exc.strerror or exc}")
    holders = _listeners({port for _, _, port in busy}) if busy else {}
    for key, host, port in busy:
        pid = holders.get(port)
        if pid and _fleet_owns(spec, pid, fleet_pid):
            continue
        try:
            who = f"pid {pid} ({psutil.Process(pid).name()})" if pid else "a program this user cannot see"
        except psutil.Error:
            who = f"pid {pid}"
        hint = ("; if it is the running fleet's, run --check as the user that runs it"
                if fleet_pid and not pid else "")
        problems.append(f"{key}: {host}:{port} is in use by {who}{hint}")
    return problems


def _bindable(host: str, port: int) -> bool:
    """Whether `host:port` can be bound now (False: in use); OSError for any other failure."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return False
        raise
    finally:
        s.close()


def _listeners(ports: set[int]) -> dict[int, int]:
    """port -> pid listening there, for `ports`, in one scan (pids this user can see)."""
    try:
        return {c.laddr.port: c.pid for c in psutil.net_connections("inet")
                if c.laddr and c.laddr.port in ports and c.status == psutil.CONN_LISTEN and c.pid}
    except psutil.Error:
        return {}


def _fleet_owns(spec: Spec, pid: int, fleet_pid: int | None) -> bool:
    """Whether `pid` is the running fleet's: the daemon or one of its children, a gunicorn
    process with this fleet's marker (adopted masters), or the fleet's nginx (its pid file)."""
    try:
        nginx_pid = int(Path(spec.nginx.pid_path).read_text().strip()) if spec.nginx.mode == "managed" else None
    except (OSError, ValueError):
        nginx_pid = None
    try:
        p = psutil.Process(pid)
        ours = {fleet_pid, nginx_pid} - {None}
        if any(q.pid in ours for q in [p, *p.parents()]):
            return True
        return procs.marker_port(p.cmdline(), spec.name) is not None
    except psutil.Error:
        return False
