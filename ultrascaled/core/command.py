"""What an instance runs, pure: gunicorn's argv, its environment, the fingerprint a reload
compares, and the reconciler's policy, all derived from the spec."""
from __future__ import annotations

import json
import os
import sys

from ultrascaled.core.plan import Policy
from ultrascaled.spec import Spec

# systemd's variables are the daemon's: gunicorn would answer NOTIFY_SOCKET with its own READY=1.
DAEMON_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                   "LISTEN_FDNAMES")


# gunicorn's gevent worker exits at once when its master dies, cutting the responses in flight;
# ultrascaled/shims/ultrascale_gevent.py finishes them (on the instances' PYTHONPATH, see below).
# uvicorn's workers never look at their parent: orphaned, they serve on until the daemon kills
# what is left of the group (graceful_timeout + 2 s later); ultrascale_uvicorn.py makes them
# finish what they answer and exit as soon as the parent changes. status, the planner and the
# Kubernetes export name the spec's class; only the instances' command line names the shim.
SHIMS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shims")
WORKER_CLASSES = {"gevent": "ultrascale_gevent.GeventWorker",
                  "uvicorn_worker.UvicornWorker": "ultrascale_uvicorn.UvicornWorker",
                  "uvicorn_worker.UvicornH11Worker": "ultrascale_uvicorn.UvicornH11Worker",
                  "uvicorn.workers.UvicornWorker": "ultrascale_uvicorn.LegacyUvicornWorker",
                  "uvicorn.workers.UvicornH11Worker": "ultrascale_uvicorn.LegacyUvicornH11Worker"}


def marker(fleet: str, port: int) -> str:
    """The `--name` given to gunicorn; it stays in every process's command line (or title)."""
    return f"ultrascale-{fleet}-{port}"


def policy_of(spec: Spec) -> Policy:
    h = spec.health
    return Policy(start_timeout=h.start_timeout, drain_seconds=spec.restart.drain_seconds,
                  stop_timeout=spec.gunicorn.graceful_timeout + 2.0,
                  backoff_initial=spec.restart.backoff_initial, backoff_max=spec.restart.backoff_max,
                  fatal_crashes=spec.restart.fatal_crashes, fatal_window=spec.restart.fatal_window,
                  probe_interval=h.probe_interval, probe_interval_max=max(h.probe_interval, 1.0),
                  health_interval=h.interval, health_failures=h.failures,
                  gates=spec.nginx.mode != "off" and spec.nginx.upstream_servers == "range")


def gunicorn_argv(spec: Spec, port: int, log_path: str | None = None, directory: str | None = None) -> list[str]:
    """`log_path`: gunicorn writes its own and the app's output there (--capture-output) and
    reopens it on SIGUSR1, which is how the daemon rotates it without losing a line.
    `directory`: the release folder the instance runs (ultrascaled/effects/releases.py); app.directory
    when None."""
    g = spec.gunicorn
    argv = [spec.app.python or sys.executable, "-m", "gunicorn",
            "--bind", f"{spec.instances.host}:{port}",
            "--workers", str(spec.workers), "--worker-class", WORKER_CLASSES.get(g.worker_class, g.worker_class),
            "--worker-connections", str(g.worker_connections),
            *(["--threads", str(g.threads)] if g.worker_class == "gthread" else []),
            "--timeout", str(g.timeout), "--graceful-timeout", str(g.graceful_timeout),
            "--keep-alive", str(g.keepalive),
            "--max-requests", str(g.max_requests), "--max-requests-jitter", str(g.max_requests_jitter),
            "--name", marker(spec.name, port), "--no-control-socket",
            "--chdir", directory or spec.app.directory]
    if log_path:
        argv += ["--error-logfile", log_path, "--capture-output"]
    if spec.app.config:
        argv += ["-c", spec.app.config]
    return argv + list(g.args) + [spec.app.module]


def app_env(spec: Spec) -> dict[str, str]:
    """What every process of the fleet starts with: the daemon's environment without its own
    systemd variables, then app.env_file, then app.env over it."""
    env = {k: v for k, v in os.environ.items() if k not in DAEMON_ONLY_ENV}
    env.update(spec.app.file_env)
    env.update(spec.app.env)
    return env


def python_first(spec: Spec, env: dict[str, str]) -> dict[str, str]:
    """`env` with app.python's folder first on PATH, so that `python ...` is the app's own."""
    python = spec.app.python or sys.executable
    env["PATH"] = os.pathsep.join(filter(None, [os.path.dirname(python), env.get("PATH")]))
    return env


def mongo_env(spec: Spec) -> dict[str, str]:
    return {"MONGO_MAX_POOL_SIZE": str(spec.mongo_pool_per_process()),
            "MONGO_MIN_POOL_SIZE": str(spec.mongodb.min_pool_size),
            "MONGO_MAX_CONNECTING": str(spec.mongodb.max_connecting)}


def instance_env(spec: Spec, index: int, port: int, metrics_dir: str) -> dict[str, str]:
    env = app_env(spec)
    env.update(mongo_env(spec))
    env.update({
        "PORT": str(port), "ULTRASCALE_PORT": str(port), "ULTRASCALE_INSTANCE": str(index),
        "ULTRASCALE_FLEET": spec.name, "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        "PYTHONUNBUFFERED": "1",
    })
    if spec.gunicorn.worker_class in WORKER_CLASSES:   # after the app's own entries
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [SHIMS, env.get("PYTHONPATH")]))
    return env


def release_env(spec: Spec, release: str) -> dict[str, str]:
    """deploy.release_command's environment: the instances' (app.env_file, then app.env), the
    release's id, and `app.python`'s folder first on PATH, so that `python manage.py migrate`
    runs the app's own Python."""
    env = python_first(spec, app_env(spec))
    env.update({"ULTRASCALE_FLEET": spec.name, "ULTRASCALE_RELEASE": release, "PYTHONUNBUFFERED": "1"})
    return env


def fingerprint(spec: Spec, port: int, log_path: str | None = None, directory: str | None = None) -> str:
    """What an instance was started with; a reload restarts those whose fingerprint changes.
    app.env_file's values are in it as a digest only: the fingerprint never holds a secret."""
    return json.dumps([gunicorn_argv(spec, port, log_path, directory), spec.app.env,
                       spec.app.file_env.digest(), spec.mongo_pool_per_process()], sort_keys=True)


def with_binds(argv: list[str], binds: list[str]) -> list[str]:
    """`argv` with its `--bind` pairs replaced by `binds` (e.g. fd://7 for the socket the daemon
    holds and fd://9 for the master's private probe socket)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--bind" and i + 1 < len(argv):
            if binds:
                for b in binds:
                    out += ["--bind", b]
                binds = []
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def same_command(running: list[str] | tuple[str, ...], wanted: list[str]) -> bool:
    """Whether an adopted master runs `wanted`, whatever sockets it was given (`--bind`)."""
    return with_binds(list(running), ["*"]) == with_binds(wanted, ["*"])


# ---- the worker types (`processes:`; supervise/workers_loop.py starts them) -------------------

def process_label(spec: Spec, name: str, index: int) -> str:
    """`<fleet>/<name>/<index>`: ULTRASCALE_PROCESS, the process's marker in its environment."""
    return f"{spec.name}/{name}/{index}"


def process_env(spec: Spec, name: str, index: int) -> dict[str, str]:
    """A worker's environment: the daemon's, then app.env_file, app.env and the type's env (each
    over the one before), `app.python`'s folder first on PATH (as for deploy.release_command),
    and the markers."""
    ptype = spec.processes[name]
    env = python_first(spec, app_env(spec))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(mongo_env(spec))   # the pool the MongoDB budget gives each process (spec/budget.py)
    env.update(ptype.env)
    env.update({"ULTRASCALE_FLEET": spec.name, "ULTRASCALE_PROCESS": process_label(spec, name, index)})
    return env


def process_fingerprint(spec: Spec, name: str, folder: str) -> str:
    """What a worker type's processes are started with (app.env_file as a digest only), in
    `folder` (theirs, or the current release's): a reload or a deploy restarts the live ones
    whose fingerprint changed, one at a time per type (core/worker_plan.py)."""
    t = spec.processes[name]
    return json.dumps([list(t.command), t.env, folder, spec.app.env, spec.app.file_env.digest(),
                       spec.app.python], sort_keys=True)
