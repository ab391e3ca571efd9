"""Validation: plain values into the typed sections (each key against its declaration), then
the checks across keys and the budgets the fleet must fit in; every problem with its key and line."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

from ultrascaled.spec import nginx as nginx_checks
from ultrascaled.spec import path_rule, readiness
from ultrascaled.spec import queue as queue_checks
from ultrascaled.spec import workers as worker_classes
from ultrascaled.spec.budget import (TYPICAL_PROCESS_RSS_MIB, WORKER_LIMIT_FLOOR_MIB, budget_problems,
                                     requests_per_worker)
from ultrascaled.spec.schema import Spec
from ultrascaled.spec.yaml_reader import show_value, show_number

def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


def _check_value(fld: dataclasses.Field, tp: Any, value: Any) -> tuple[Any, str | None]:
    """Return (converted value, error message or None) for one scalar key."""
    meta = fld.metadata
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else Any
    if value is None:
        return (None, None) if optional else (value, "must not be empty")
    if _has_nul(value):
        return value, "must not contain a NUL character"
    if meta.get("keys") == "ready":   # processes.NAME.ready: checked in spec/readiness.py
        checked, problem = readiness.check_ready(value)
        return (value, problem) if problem else (checked, None)
    if fld.name == "workers":  # int or "auto"
        if value == "auto":
            return value, None
        tp = int
    if tp is Any:
        return value, None
    if typing.get_origin(tp) in (tuple, list):  # a command or a list of words: string or list
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value, None
        return value, f"must be a string or a list of strings, got {show_value(value)}"
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads a bare off/on as a boolean
        value = "on" if value else "off"
    elif tp is str and isinstance(value, int):  # `worker_processes: 2`
        value = str(value)
    elif tp is str and isinstance(value, float) and fld.name == "every":   # `every: 2.5`
        value = repr(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        hint = " or `auto`" if fld.name == "workers" else ""
        return value, f"must be {_type_name(tp)}{hint}, got {show_value(value)}"
    if tp is float and not math.isfinite(value):
        return value, f"must be a finite number, got {value}"
    if tp is dict and meta.get("keys") == "url_prefix":  # nginx.static: checked in spec/nginx.py
        return dict(value), None
    if tp is dict:
        for k, v in value.items():
            if not _ENV_NAME.match(k):
                return value, (f"{show_value(k)} is not an environment variable name (letters, digits "
                               "and _, not starting with a digit)")
            if not isinstance(v, (str, int, float, bool)):
                return value, f"values must be strings, numbers or booleans; {k!r} is not"
        return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}, None
    if tp is list:
        if not all(isinstance(v, (str, int, float)) for v in value):
            return value, "must be a list of strings"
        return [str(v) for v in value], None
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices") or ()
    if meta.get("dotted") and isinstance(value, str):  # gunicorn.worker_class
        return value, worker_classes.class_error(value)
    if choices and value not in choices:
        return value, f"must be one of {', '.join(map(str, choices))}; got {show_value(value)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and hi is not None and not lo <= value <= hi:
            return value, f"must be {lo:g}..{hi:g}, got {show_number(value)}"
        if lo is not None and value < lo:
            return value, f"must be at least {lo:g}, got {show_number(value)}"
        if hi is not None and value > hi:
            return value, f"must be at most {hi:g}, got {show_number(value)}"
    if tp is str and not value and not optional and not meta.get("allow_empty"):
        return value, "must not be empty"
    return value, None


def _build(cls: type, data: Any, path: str, lines: dict[str, int], errors: list[str],
           base_dir: Path, bad: set[str]) -> Any:
    """The section `cls` from `data`: values that fail their own checks are reported, added to
    `bad` and left at their defaults, so the checks across keys still run on the rest."""
    def where(p: str) -> str:
        line = lines.get(p) or lines.get(path)
        return f"{p} (line {line})" if line else p

    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{where(path) if path else 'spec'}: must be a mapping, got {type(data).__name__}")
        bad.add(path)
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            errors.append(f"{where(f'{path}.{key}' if path else key)}: unknown key"
                          f"{_suggestion(str(key), path, fields)}")
    kwargs = {}
    for name, fld in fields.items():
        sub = f"{path}.{name}" if path else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):  # absent sections still resolve their relative paths
            kwargs[name] = _build(tp, data.get(name), sub, lines, errors, base_dir, bad)
            continue
        if fld.metadata.get("map_of") and name in data:   # processes: name -> section
            kwargs[name] = _build_map(fld.metadata["map_of"], data[name], sub, lines, errors,
                                      base_dir, bad)
            continue
        if name not in data:
            continue
        value, err = _check_value(fld, tp, data[name])
        if err:
            errors.append(f"{where(sub)}: {err}")
            bad.add(sub)
            continue
        if fld.metadata.get("path") and isinstance(value, str):
            value = str((base_dir / value).resolve()) if not os.path.isabs(value) else value
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a section's own __post_init__ check
        errors.append(f"{where(path)}: {exc}")
        bad.add(path)
        return cls()
    # Defaults that are relative paths resolve against the spec's folder too.
    fixes = {}
    for name, fld in fields.items():
        if name not in kwargs and fld.metadata.get("path"):
            value = getattr(obj, name)
            if isinstance(value, str) and not os.path.isabs(value):
                fixes[name] = str((base_dir / value).resolve())
    return dataclasses.replace(obj, **fixes) if fixes else obj


PROCESS_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _build_map(cls: type, data: Any, path: str, lines: dict[str, int], errors: list[str],
               base_dir: Path, bad: set[str]) -> dict:
    """`processes:` (a mapping of names to `cls` sections): each entry built like a section at
    `path.NAME`; a bad name or a kind not built yet is refused alone, naming its key."""
    from ultrascaled.spec.schema import BUILT_KINDS

    def where(p: str) -> str:
        line = lines.get(p) or lines.get(path)
        return f"{p} (line {line})" if line else p

    if data is None:
        return {}
    if not isinstance(data, dict):
        errors.append(f"{where(path)}: must be a mapping of process type names to their "
                      f"settings, got {show_value(data)}")
        bad.add(path)
        return {}
    out = {}
    for name, entry in data.items():
        sub = f"{path}.{name}"
        if not isinstance(name, str) or not PROCESS_NAME.match(name):
            errors.append(f"{where(sub)}: {show_value(name)} is not a process type name "
                          "(1-64 letters, digits, - and _)")
            bad.add(sub)
            continue
        if name == "web":
            errors.append(f"{where(sub)}: `web` is the gunicorn fleet of the top-level sections "
                          "(app, instances, gunicorn); a `web` entry in processes is not built "
                          "yet: name a worker type otherwise")
            bad.add(sub)
            continue
        kind = entry.get("kind", "worker") if isinstance(entry, dict) else "worker"
        if kind == "web":
            errors.append(f"{where(sub + '.kind')}: `kind: web` is not built yet: the web type is "
                          "the top-level gunicorn fleet (app, instances, gunicorn)")
            bad.add(sub)
            continue
        if isinstance(entry, dict) and kind in BUILT_KINDS:
            entry = _check_kind_keys(kind, entry, sub, where, errors, bad)
        if isinstance(entry, dict) and isinstance(entry.get("command"), str):
            errors.append(f"{where(sub + '.command')}: must be an argv list (no shell), got "
                          f"{show_value(entry['command'])}: write it as [prog, arg, ...], or "
                          "[sh, -c, '...'] for a shell")
            bad.add(f"{sub}.command")
            entry = {k: v for k, v in entry.items() if k != "command"}
        section = _build(cls, entry, sub, lines, errors, base_dir, bad)
        if kind not in BUILT_KINDS or sub in bad:   # reported: a kind not one of the choices,
            continue                                # or an entry that is not a mapping
        key = f"{sub}.command"
        line = lines.get(key) or lines.get(sub)
        if key not in bad and not section.command:
            errors.append(f"{key}{f' (line {line})' if line else ''}: is required: the argv to "
                          "run, a list such as [celery, -A, proj, worker]")
            bad.add(key)
        elif key not in bad and not section.command[0]:
            errors.append(f"{where(key)}: its first item (the program) must not be empty")
            bad.add(key)
        if f"{sub}.requires" not in bad:
            errors += readiness.requires_errors(section.requires, where(f"{sub}.requires"))
        if isinstance(entry, dict) and "autoscale" in entry:   # a worker's, on its queue (spec/queue.py)
            for key, message in queue_checks.errors(kind, entry, section, sub, bad):
                near = key   # the line of the key, else of its nearest section written
                while near and near not in lines:
                    near = near.rpartition(".")[0]
                errors.append(f"{key} (line {lines[near]}): {message}" if near else f"{where(key)}: {message}")
                bad.add(key)
        lo, hi, n = section.min, section.max, section.count
        if kind == "job":
            out[name] = section
            continue
        if not _tainted(bad, f"{sub}.min", f"{sub}.max") and lo > hi:
            errors.append(f"{where(sub + '.min')}: must not exceed {sub}.max ({hi}), got {lo}")
        elif not _tainted(bad, f"{sub}.min", f"{sub}.max", f"{sub}.count") and not lo <= n <= hi:
            errors.append(f"{where(sub + '.count')}: must be within {sub}.min..max ({lo}..{hi}), "
                          f"got {n}")
        out[name] = section
    errors += readiness.after_errors(out, where)   # a bad `after` is left at its default
    return out


_NOT_ON_A_JOB = {   # why a worker's start-order key is refused on a job
    "ready": "a job's run is not awaited, it runs to its end (readiness is for workers)",
    "ready_timeout": "a job's run is not awaited, it runs to its end (readiness is for workers)",
    "after": "a job's schedule starts with the web fleet; `requires` skips its runs while a "
             "service is down",
    "memory_limit_mb": "a job's run is bounded by its `timeout`; the memory watchdog watches workers",
}


def _check_kind_keys(kind: str, entry: dict, sub: str, where: Any, errors: list[str],
                     bad: set[str]) -> dict:
    """A worker's keys on a job or a job's on a worker are refused, naming the key; a job needs
    exactly one of `schedule` and `every`, each as cron or a period understands it. Returns the
    entry without the keys refused, so the rest is built."""
    from ultrascaled.spec import jobs
    from ultrascaled.spec.schema import JOB_ONLY, WORKER_ONLY

    foreign, what = (WORKER_ONLY, "a job runs when it is due, one run at a time (`concurrency`)") \
        if kind == "job" else (JOB_ONLY, "only a job (`kind: job`) has it")
    for key in foreign:
        if key in entry:
            why = _NOT_ON_A_JOB.get(key, what) if kind == "job" else what
            errors.append(f"{where(f'{sub}.{key}')}: not a key of a {kind}: {why}")
            bad.add(f"{sub}.{key}")
    entry = {k: v for k, v in entry.items() if k not in foreign}
    if kind != "job":
        return entry
    given = [k for k in ("schedule", "every") if entry.get(k) is not None]
    if len(given) != 1:
        errors.append(f"{where(sub)}: a job needs exactly one of {sub}.schedule (cron, e.g. "
                      f"'*/15 * * * *') and {sub}.every (e.g. 30s), got "
                      f"{'both' if given else 'neither'}")
        bad.add(f"{sub}.schedule")
    elif given == ["schedule"] and isinstance(entry["schedule"], str):
        problem = jobs.check_schedule(entry["schedule"])
        if problem:
            errors.append(f"{where(sub + '.schedule')}: {problem}")
            bad.add(f"{sub}.schedule")
            entry = {k: v for k, v in entry.items() if k != "schedule"}
    elif given == ["every"]:
        try:
            jobs.every_seconds(entry["every"])
        except ValueError as exc:
            errors.append(f"{where(sub + '.every')}: {exc}")
            bad.add(f"{sub}.every")
            entry = {k: v for k, v in entry.items() if k != "every"}
    return entry


def _known_keys(cls: type = Spec, prefix: str = "") -> list[str]:
    """Every key and section path of the spec, e.g. `app`, `app.env_file`."""
    out = []
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        if fld.metadata.get("internal"):
            continue
        sub = f"{prefix}.{fld.name}" if prefix else fld.name
        out.append(sub)
        if dataclasses.is_dataclass(hints[fld.name]):
            out += _known_keys(hints[fld.name], sub)
    return out


_KNOWN: list[str] = []


def _suggestion(key: str, section: str, fields: dict) -> str:
    """What an unknown `key` in `section` may have meant: a dotted path written as one key
    (`app.env_file:` at the top), the same name in another section (`env_file` at the top ->
    `app.env_file`), a close name in this section (`workrs` -> `workers`), or a close name
    anywhere; "" when nothing is near."""
    if not _KNOWN:
        _KNOWN.extend(_known_keys())
    here = f"{section}." if section else ""

    def listed(paths: list[str]) -> str:
        paths = [f"`{p}`" + ("" if "." in p else " at the top level") for p in paths[:3]]
        return paths[0] if len(paths) == 1 else "one of " + ", ".join(paths)

    if "." in key and (here + key) in _KNOWN:
        head, _, rest = (here + key).rpartition(".")
        return f"; write `{rest}` inside the `{head}` section (a dotted name is one key in YAML)"
    elsewhere = [p for p in _KNOWN if p.rpartition(".")[2] == key and p != here + key]
    if elsewhere:
        return f"; `{key}` lives in another section: did you mean {listed(elsewhere)}?"
    close = difflib.get_close_matches(key, fields, n=1)
    if close:
        return f"; did you mean `{close[0]}`?"
    leaves = {}
    for p in _KNOWN:
        leaves.setdefault(p.rpartition(".")[2], []).append(p)
    near = difflib.get_close_matches(key, leaves, n=1, cutoff=0.8)
    if near:
        return f"; did you mean {listed(leaves[near[0]])}?"
    return ""


_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_APP_MODULE = re.compile(rf"{_DOTTED}:{_DOTTED}(?:\([^\x00-\x1f]*\))?\Z")
_HTTP_PATH = re.compile(r"/[\x21-\x7e]*\Z")
# The inputs of each budget message (by the key it names): a budget is not judged when one of
# them could not be read (it would be judged on a default the file did not ask for).
_BUDGET_INPUTS = {
    "memory.fleet_budget_mb": ("instances.count", "gunicorn.workers", "memory", "processes"),
    "mongodb.connection_budget": ("instances.max", "gunicorn.workers", "mongodb"),
    "mongodb.min_pool_size": ("instances.max", "gunicorn.workers", "mongodb"),
    "mongodb.max_connecting": ("instances.max", "gunicorn.workers", "mongodb"),
    "nginx.worker_connections": ("nginx",),
    "gunicorn.worker_connections": ("gunicorn.worker_connections", "gunicorn.workers",
                                    "gunicorn.worker_class", "gunicorn.concurrency",
                                    "instances.max", "mongodb"),
    "gunicorn.concurrency": ("gunicorn.worker_connections", "gunicorn.workers",
                             "gunicorn.worker_class", "gunicorn.concurrency", "instances.max",
                             "mongodb"),
    "instances.max": ("instances.max", "processes"),
}


# gunicorn options the daemon sets itself (core/command.py), with what to use instead: given
# again in gunicorn.args they would win (gunicorn keeps the last), bypassing nginx and the gates
# (--bind), losing the instance (--pid, --daemon, --name) or lying to status and the planner.
OWNED_ARGS: dict[tuple[str, ...], str] = {
    ("-b", "--bind"): "instances.host and instances.base_port (the daemon binds each port itself)",
    ("--fd",): "nothing: the daemon passes each port's held socket itself",
    ("--reuse-port",): "nothing: the daemon holds each port's socket and hands it over",
    ("-p", "--pid"): "nothing: the daemon knows each master's pid",
    ("-n", "--name"): "name (the daemon marks its processes ultrascale-NAME-PORT)",
    ("-D", "--daemon"): "nothing: the daemon supervises each master in the foreground",
    ("--chdir",): "app.directory",
    ("-k", "--worker-class"): "gunicorn.worker_class",
    ("-w", "--workers"): "gunicorn.workers",
    ("--threads",): "gunicorn.threads",
    ("--worker-connections",): "gunicorn.worker_connections",
    ("-t", "--timeout"): "gunicorn.timeout",
    ("--graceful-timeout",): "gunicorn.graceful_timeout",
    ("--keep-alive",): "gunicorn.keepalive",
    ("--max-requests",): "gunicorn.max_requests",
    ("--max-requests-jitter",): "gunicorn.max_requests_jitter",
    ("-u", "--user", "-g", "--group"): "the daemon's own user (systemd's User=, docs/operations.md)",
    ("-c", "--config"): "app.config",
    ("--error-logfile", "--log-file", "--capture-output"): "logs.* (the daemon rotates each instance's log)",
}
_OWNED = {flag: use for flags, use in OWNED_ARGS.items() for flag in flags}


def gunicorn_args_errors(args: list, where: str) -> list[str]:
    """gunicorn.args may add what the spec does not cover; the options the daemon owns and a
    positional argument (gunicorn would take it for the app) are refused, naming what to use."""
    errors = []
    for i, a in enumerate(args):
        if not isinstance(a, str):
            continue
        flag = a.split("=", 1)[0] if a.startswith("--") else a[:2] if a.startswith("-") and len(a) > 1 else None
        if flag is None:
            prev = args[i - 1] if i else ""
            takes_value = isinstance(prev, str) and prev.startswith("-") and "=" not in prev and \
                not (prev.startswith("-") and not prev.startswith("--") and len(prev) > 2)
            if not takes_value:
                errors.append(f"{where}: {a[:60]!r} is a positional argument, which gunicorn would take for "
                              "the app instead of app.module; give the app as app.module")
            continue
        if flag in _OWNED:
            errors.append(f"{where}: {flag} is set by the daemon; use {_OWNED[flag]}")
    return errors


def _tainted(bad: set[str], *inputs: str) -> bool:
    """Whether any input (a key path or a section) is, contains or is inside a bad path."""
    return any(i == b or i.startswith(b + ".") or b.startswith(i + ".")
               for i in inputs for b in bad)


def _cross_checks(spec: Spec, lines: dict[str, int], bad: set[str],
                  nofile_limit: int | None = None) -> list[str]:
    """Checks across keys, including the budgets the fleet must fit in; each runs unless one of
    its inputs could not be read."""
    def where(p: str) -> str:
        line = lines.get(p)
        return f"{p} (line {line})" if line else p

    def ok(*inputs: str) -> bool:
        return not _tainted(bad, *inputs)

    errors = []
    if ok("gunicorn.args"):
        errors += gunicorn_args_errors(spec.gunicorn.args, where("gunicorn.args"))
    for msg in nginx_checks.validate(spec.nginx):
        key, _, rest = msg.partition(":")
        if ok(key, "nginx.mode"):
            errors.append(f"{where(key)}:{rest}" if key.startswith("nginx.") else msg)
    inst = spec.instances
    if ok("instances.min", "instances.max") and inst.min > inst.max:
        errors.append(f"{where('instances.min')}: must not exceed instances.max ({inst.max}), got {inst.min}")
    if ok("instances.min", "instances.max", "instances.count") and not inst.min <= inst.count <= inst.max:
        errors.append(f"{where('instances.count')}: must be within instances.min..max "
                      f"({inst.min}..{inst.max}), got {inst.count}")
    last = inst.base_port + inst.max - 1
    ports = range(inst.base_port, inst.base_port + inst.max)
    instance_ports = ok("instances.base_port", "instances.max")
    if instance_ports and last > 65535:
        errors.append(f"{where('instances.base_port')}: base_port + max - 1 = {last} is past 65535")
    if instance_ports and ok("api.port") and spec.api.port in ports:
        errors.append(f"{where('api.port')}: {spec.api.port} is inside the instance ports "
                      f"{inst.base_port}..{last}")
    if instance_ports and ok("instances.spares") and inst.spares:
        errors += spare_errors(spec, where, ok)
    ng = spec.nginx
    nginx_ports = [] if ng.mode == "off" or not ok("nginx.mode") else (
        [("nginx.listen", ng.listen)] + ([("nginx.tls_listen", ng.tls_listen)] if ng.tls_enabled else []))
    for key, port in nginx_ports:
        if not ok(key):
            continue
        if instance_ports and port in ports:
            errors.append(f"{where(key)}: {port} is inside the instance ports {inst.base_port}..{last}")
        if ok("api.port") and port == spec.api.port:
            errors.append(f"{where('api.port')}: {port} is also {key}")
    if ok("name") and not _NAME.match(spec.name):
        errors.append(f"{where('name')}: only letters, digits, - and _ (it marks process names), "
                      f"got {show_value(spec.name)}")
    if ok("app.module") and not _APP_MODULE.match(spec.app.module):
        errors.append(f"{where('app.module')}: must look like `module:callable` or "
                      f"`module:factory()`, got {show_value(spec.app.module)}")
    if ok("memory.worker_limit_mb") and spec.memory.worker_limit_mb < WORKER_LIMIT_FLOOR_MIB:
        errors.append(f"{where('memory.worker_limit_mb')}: {spec.memory.worker_limit_mb} MiB cannot hold: a "
                      f"gunicorn process of even a small app is about {TYPICAL_PROCESS_RSS_MIB:g} MiB at boot "
                      "(the reference app, docs/benchmarks.md section 4), so every fresh worker would be "
                      f"over it and recycled at once; give at least {WORKER_LIMIT_FLOOR_MIB}")
    g = spec.gunicorn
    if ok("gunicorn.threads", "gunicorn.worker_class") and g.threads > 1 and g.worker_class != "gthread":
        errors.append(f"{where('gunicorn.threads')}: {g.threads} threads need gunicorn.worker_class "
                      f"gthread (got {g.worker_class}; "
                      + ("gunicorn would switch a sync worker to gthread behind the spec's back)"
                         if g.worker_class == "sync" else "which does not use them)"))
    if ok("gunicorn.worker_class", "gunicorn.concurrency"):
        wrong = worker_classes.concurrency_error(g)
        if wrong:   # a missing key is shown at worker_class's line
            line = lines.get(wrong[0]) or lines.get("gunicorn.worker_class")
            errors.append(f"{wrong[0]}{f' (line {line})' if line else ''}: {wrong[1]}")
            bad.add("gunicorn.concurrency")   # the budgets below are not judged on a guess
    if ok("health.path", "nginx.static", "nginx.mode") and ng.mode != "off" and isinstance(ng.static, dict):
        for prefix in ng.static:
            if isinstance(prefix, str) and spec.health.path.split("?")[0].startswith(prefix):
                errors.append(f"{where('nginx.static')}: {prefix!r} covers health.path "
                              f"({spec.health.path}): nginx would answer it from the folder")
    if ok("health.path") and not _HTTP_PATH.match(spec.health.path):
        errors.append(f"{where('health.path')}: must start with / and hold no spaces, CR/LF or "
                      f"other control characters, got {show_value(spec.health.path)}")
    for key in ("instances.host", "api.host"):
        host = spec.instances.host if key == "instances.host" else spec.api.host
        if ok(key) and not nginx_checks.is_host(host):
            errors.append(f"{where(key)}: must be an IP address or a host name, got {show_value(host)}")
    if ok("api.host", "api.token_file") and spec.api.host not in ("127.0.0.1", "localhost", "::1") \
            and not spec.api.token_file:
        errors.append(f"{where('api.host')}: {spec.api.host} is not loopback, so api.token_file "
                      "must name a file with the bearer token")
    for key in ("api.token_file", "api.metrics_token_file", "api.viewer_token_file", "api.tls_cert",
                "api.tls_key"):
        path = getattr(spec.api, key.split(".")[1])
        if ok(key) and path and not os.path.isfile(path):
            why = "is a directory" if os.path.isdir(path) else "does not exist"
            errors.append(f"{where(key)}: {path} {why}")
    if ok("api.tls_cert", "api.tls_key") and bool(spec.api.tls_cert) != bool(spec.api.tls_key):
        errors.append(f"{where('api.tls_cert')}: api.tls_cert and api.tls_key go together")
    if ok("api.allowed_hosts"):
        for h in spec.api.allowed_hosts:
            if not isinstance(h, str) or not nginx_checks.is_host(h):
                errors.append(f"{where('api.allowed_hosts')}: each must be an IP address or a host name "
                              f"(no port, no scheme), got {show_value(h)}")
    keepalive = nginx_checks.parse_time(ng.keepalive_timeout)
    if ng.mode != "off" and ng.keepalive > 0 and keepalive is not None and \
            ok("gunicorn.keepalive", "nginx.mode", "nginx.keepalive", "nginx.keepalive_timeout") \
            and not spec.gunicorn.keepalive > keepalive:
        errors.append(f"{where('gunicorn.keepalive')}: {spec.gunicorn.keepalive} s must be longer "
                      f"than nginx.keepalive_timeout ({ng.keepalive_timeout}), so that nginx, not "
                      "gunicorn, closes idle upstream connections (else a request nginx sends on a "
                      "connection gunicorn is closing fails)")
    errors += autoscale_errors(spec, where, ok)
    if ok("autoscale.enabled", "autoscale.max_replicas", "instances.min", "instances.max",
          "instances.count", "gunicorn.workers", "memory", "mongodb", "nginx"):
        errors += max_replicas_errors(spec, where, lines, nofile_limit)
    if ok("deploy.shared"):
        errors += shared_errors(spec.deploy.shared, where("deploy.shared"))
    if ok("deploy.release_command") and not all(isinstance(a, str) and a for a in spec.deploy.release_command):
        errors.append(f"{where('deploy.release_command')}: must be a list of non-empty strings (an argv, "
                      f"no shell: [python, manage.py, migrate]), got {show_value(spec.deploy.release_command)}")
    targets = [(where(k), what, p, folder, exc) for k, what, p, folder, exc in written_paths(spec) if ok(k)]
    errors += path_rule.problems(targets, spec.app.directory)
    if ok("plan.urls"):
        errors += plan_urls_errors(spec.plan.urls, where("plan.urls"))
    for msg in budget_errors(spec, spec.instances.count, lines, nofile_limit):
        inputs = _BUDGET_INPUTS.get(msg.split(" ", 1)[0].rstrip(":"), ())
        if ok(*inputs):
            errors.append(msg)
    return errors


def written_paths(spec: Spec) -> list[tuple[str, str, str, bool, str | None]]:
    """(key, option, path, is_folder, allowed system folder) for every path the daemon, nginx or
    gunicorn write to (the path rule, spec/path_rule.py)."""
    ng = spec.nginx
    system = ng.mode == "system"
    log_exc = path_rule.SYSTEM_NGINX_EXCEPTIONS["log"] if system else None
    out = [("paths.state_dir", "", spec.paths.state_dir, True, None),
           ("paths.log_dir", "", spec.paths.log_dir, True, None)]
    if spec.deploy.releases_dir:
        out.append(("deploy.releases_dir", "", spec.deploy.releases_dir, True, None))
    if ng.mode == "managed" and ng.prefix:
        out.append(("nginx.prefix", "", ng.prefix, True, None))
    if ng.mode != "off":
        if ng.access_log not in ("", "off") and os.path.isabs(nginx_checks.access_log_path(ng)):
            out.append(("nginx.access_log", "", nginx_checks.access_log_path(ng), False, log_exc))
        if ng.traffic_log_path and os.path.isabs(ng.traffic_log_path):
            out.append(("nginx.traffic_log", "", ng.traffic_log_path, False, log_exc))
        if ng.effective_upstream_file:
            out.append(("nginx.upstream_file", "", ng.effective_upstream_file, False,
                        path_rule.SYSTEM_NGINX_EXCEPTIONS["upstream_file"] if system else None))
    for opt, path, folder in path_rule.gunicorn_write_targets(spec.gunicorn.args):
        out.append(("gunicorn.args", opt, path, folder, None))
    return out


def _budget_keys(problems: list[str]) -> set[str]:
    return {p.split(" ", 1)[0].rstrip(":") for p in problems}


def largest_count_that_fits(spec: Spec, hi: int, nofile_limit: int | None = None) -> int:
    """The most instances (at most `hi`) for which no budget fails that does not already fail
    at instances.count (those are reported for the count); 0 when not even one fits."""
    already = _budget_keys(budget_problems(spec, spec.instances.count, nofile_limit=nofile_limit))
    n = hi
    while n > 0 and _budget_keys(budget_problems(spec, n, nofile_limit=nofile_limit)) - already:
        n -= 1
    return n


def max_replicas_errors(spec: Spec, where, lines: dict[str, int],
                        nofile_limit: int | None = None) -> list[str]:
    """An enabled autoscaler must be able to reach its max_replicas: the budgets (the memory
    worst case above all; spec/budget.py) are judged for that count, not only for
    instances.count. Else the autoscaler's steps past the largest count that fits are vetoed
    at run time, for a number --check accepted."""
    a = spec.autoscale
    if not a.enabled:
        return []
    lo, hi = a.bounds(spec.instances)
    if hi <= spec.instances.count:
        return []    # the budgets for instances.count are checked (and reported) already
    already = _budget_keys(budget_problems(spec, spec.instances.count, nofile_limit=nofile_limit))
    new = [p for p in budget_problems(spec, hi, lines=lines, nofile_limit=nofile_limit)
           if p.split(" ", 1)[0].rstrip(":") not in already]
    if not new:
        return []
    fit = largest_count_that_fits(spec, hi, nofile_limit)
    src = "" if a.max_replicas is not None else f" (null: instances.max {hi})"
    keys = sorted({p.split(" ", 1)[0].rstrip(":") for p in new})
    if fit >= max(lo, 1):
        advice = f"set autoscale.max_replicas to at most {fit}, or raise {' / '.join(keys)}"
    else:
        advice = f"not even autoscale.min_replicas ({lo}) fits; raise {' / '.join(keys)}"
    return [f"{where('autoscale.max_replicas')}{src}: the autoscaler could never reach {hi} "
            f"instances, the budgets hold at most {fit}: " + "; ".join(new) + f"; {advice}"]


def budget_errors(spec: Spec, count: int, lines: dict[str, int] | None = None,
                  nofile_limit: int | None = None) -> list[str]:
    """The budgets (memory, MongoDB connections, file descriptors) for `count` instances."""
    return budget_problems(spec, count, lines=lines, nofile_limit=nofile_limit)


def _line_of(error: str) -> int:
    _, _, rest = error.partition("(line ")
    digits = rest.split(")", 1)[0]
    return int(digits) if digits.isascii() and digits.isdigit() else 1 << 30


def _sorted(errors: list[str]) -> list[str]:
    """By line (errors without one last), then text; each once."""
    return sorted(set(errors), key=lambda e: (_line_of(e), e))


def autoscale_errors(spec: "Spec", where, ok) -> list[str]:
    """Checks across the autoscale keys (part of _cross_checks)."""
    a, inst, errors = spec.autoscale, spec.instances, []
    lo, hi = a.bounds(inst)
    if ok("autoscale.min_replicas", "instances.min", "instances.max") and a.min_replicas is not None \
            and not inst.min <= a.min_replicas <= inst.max:
        errors.append(f"{where('autoscale.min_replicas')}: must be within instances.min..max "
                      f"({inst.min}..{inst.max}), got {a.min_replicas}")
    if ok("autoscale.max_replicas", "instances.min", "instances.max") and a.max_replicas is not None \
            and not inst.min <= a.max_replicas <= inst.max:
        errors.append(f"{where('autoscale.max_replicas')}: must be within instances.min..max "
                      f"({inst.min}..{inst.max}), got {a.max_replicas}")
    if ok("autoscale.min_replicas", "autoscale.max_replicas", "instances.min", "instances.max") \
            and lo > hi:
        errors.append(f"{where('autoscale.min_replicas')}: the autoscaler's min ({lo}) exceeds its "
                      f"max ({hi})")
    if a.enabled and ok("autoscale.enabled", "autoscale.min_replicas", "instances.min") and lo < 1:
        errors.append(f"{where('autoscale.min_replicas')}: an enabled autoscaler keeps at least 1 "
                      f"instance (no instance, no signal to scale up on), got {lo}"
                      + ("" if a.min_replicas is not None else " from instances.min"))
    t = a.target
    if a.enabled and ok("autoscale.enabled", "autoscale.target") and \
            t.cpu_utilization is None and t.cpu_wait_percent is None and t.in_flight_per_worker is None \
            and t.p95_latency_seconds is None:
        errors.append(f"{where('autoscale.target')}: autoscale.enabled needs at least one target "
                      "(cpu_utilization, cpu_wait_percent, in_flight_per_worker or "
                      "p95_latency_seconds)")
    if t.in_flight_per_worker is not None and ok("autoscale.target.in_flight_per_worker",
                                                 "gunicorn.worker_class", "gunicorn.threads",
                                                 "gunicorn.worker_connections",
                                                 "gunicorn.concurrency"):
        per, formula = requests_per_worker(spec)
        if t.in_flight_per_worker > per:
            errors.append(f"{where('autoscale.target.in_flight_per_worker')}: {t.in_flight_per_worker:g} "
                          f"requests in flight per worker cannot happen: a worker serves {formula}, "
                          f"so the autoscaler would never scale up; use at most {per} "
                          f"(e.g. {0.8 * per:g}, leaving headroom)")
    for direction in ("scale_up", "scale_down"):
        rules = getattr(a.behavior, direction)
        key = f"autoscale.behavior.{direction}"
        if ok(key) and rules.select_policy != "Disabled" and rules.pods_value is None \
                and rules.percent_value is None:
            errors.append(f"{where(key + '.select_policy')}: {rules.select_policy} needs a policy: "
                          f"set {direction}.pods_value or {direction}.percent_value, or "
                          "select_policy Disabled")
    if a.enabled and t.cpu_utilization is not None and ok(
            "autoscale.enabled", "autoscale.stale_after_seconds", "memory.sample_interval") and \
            spec.memory.sample_interval >= a.stale_after_seconds:
        errors.append(f"{where('autoscale.stale_after_seconds')}: must be longer than "
                      f"memory.sample_interval ({spec.memory.sample_interval:g}s), the CPU samples' "
                      f"interval, got {a.stale_after_seconds:g} (cpu_utilization would always be stale)")
    if ok("autoscale.stale_after_seconds", "autoscale.sync_period_seconds") and \
            a.stale_after_seconds < a.sync_period_seconds:
        errors.append(f"{where('autoscale.stale_after_seconds')}: must be at least "
                      f"autoscale.sync_period_seconds ({a.sync_period_seconds:g}), got "
                      f"{a.stale_after_seconds:g} (every signal would be stale)")
    return errors


MAX_SHARED = 64
NOT_SHARED = (".git", ".venv", "__pycache__")  # never copied into a release, so never linked


def shared_errors(entries: list[str], where: str) -> list[str]:
    """deploy.shared: relative, normalised paths inside the app's folder, each once, none inside
    another (a link inside a linked folder would point into the shared copy itself)."""
    if len(entries) > MAX_SHARED:
        return [f"{where}: at most {MAX_SHARED} paths, got {len(entries)}"]
    errors, seen = [], []
    for e in entries:
        path = e.rstrip("/")
        parts = path.split("/")
        why = ("is empty" if not path else
               "must be relative to the app's folder" if e.startswith("/") else
               "must be a plain path (no `.`, `..` or empty parts)"
               if any(x in ("", ".", "..") for x in parts) else
               f"is under {parts[0]}, which a release never holds" if parts[0] in NOT_SHARED else
               f"is too long ({len(path)} characters; at most 1024)" if len(path) > 1024 else None)
        if why is None:
            other = next((o for o in seen if o == path or path.startswith(o + "/") or o.startswith(path + "/")), None)
            if other is not None:
                why = "is listed twice" if other == path else f"overlaps {other!r}: list one of them"
        if why:
            errors.append(f"{where}: {show_value(e)} {why}")
        else:
            seen.append(path)
    return errors


MAX_PLAN_URLS = 32


def plan_urls_errors(urls: list[str], where: str) -> list[str]:
    """plan.urls: 1..32 paths on the instance, each starting with / (no scheme or host: the load
    goes to one instance on a loopback port only), no spaces or control characters."""
    if not urls:
        return [f"{where}: must list at least one path, e.g. [/]"]
    if len(urls) > MAX_PLAN_URLS:
        return [f"{where}: at most {MAX_PLAN_URLS} paths, got {len(urls)}"]
    return [f"{where}: each must be a path starting with / (no scheme or host: the load goes to "
            f"one instance on a loopback port) and hold no spaces or control characters, got "
            f"{show_value(u)}" for u in urls if not _HTTP_PATH.match(u)]


SPARE_WORKER_CLASSES = ("sync", "gthread")   # ultrascaled/shims/ultrascale_spare.py takes a socket in these


def spare_errors(spec, where, ok) -> list[str]:
    """instances.spares: the spares' ports (base_port + max .. + spares - 1, just past the range
    nginx lists) must exist and be free of the API's and nginx's; their workers must be able to
    take a serving port's socket (docs/spares.md)."""
    inst, errors = spec.instances, []
    first, last = inst.base_port + inst.max, inst.base_port + inst.max + inst.spares - 1
    if last > 65535:
        errors.append(f"{where('instances.spares')}: the spares' ports {first}..{last} (base_port + max + j) "
                      "are past 65535")
    taken = [("api.port", spec.api.port)]
    if spec.nginx.mode != "off":
        taken.append(("nginx.listen", spec.nginx.listen))
        if spec.nginx.tls_enabled:
            taken.append(("nginx.tls_listen", spec.nginx.tls_listen))
    for key, port in taken:
        if ok(key) and first <= port <= last:
            errors.append(f"{where('instances.spares')}: the spares' ports {first}..{last} hold {key} ({port})")
    if ok("gunicorn.worker_class") and spec.gunicorn.worker_class not in SPARE_WORKER_CLASSES:
        errors.append(f"{where('instances.spares')}: spares need gunicorn.worker_class "
                      f"{' or '.join(SPARE_WORKER_CLASSES)} (a spare's workers take over a serving port's "
                      f"socket), got {spec.gunicorn.worker_class}")
    return errors
