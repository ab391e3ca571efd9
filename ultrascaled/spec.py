"""The fleet spec: YAML loaded into typed, frozen sections.

Every key is declared once, as a dataclass field whose metadata carries its help text and
bounds; validation, defaults and docs/configuration.md all come from these declarations.
Errors name the key path and the YAML line, and all of them are reported at once:

    instances.base_port (line 7): must be 1024..65535, got 80

This module is pure: it reads a file when asked to and touches nothing else.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ultrascaled import nginx_conf
from ultrascaled.nginx_conf import NginxSettings

MB = 1024 * 1024


def setting(default: Any, help: str, *, min: float | None = None, max: float | None = None,
            choices: tuple = (), path: bool = False) -> Any:
    """A spec key: its default, help text and bounds, in one place."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AppSection:
    module: str = setting("app.wsgi:application", "WSGI callable as `module:callable`.")
    directory: str = setting(".", "Folder gunicorn runs in (its chdir); relative to the spec file.",
                             path=True)
    config: Optional[str] = setting("app/gunicorn_conf.py",
                                    "gunicorn config file (`-c`), relative to `app.directory`; "
                                    "null for none. Values the daemon passes override it.")
    python: Optional[str] = setting(None, "Python interpreter for gunicorn; null = the daemon's own.")
    env: dict = setting({}, "Extra environment for the app (string to string).")


@dataclass(frozen=True)
class InstancesSection:
    count: int = setting(2, "Instances to run when no scale was requested.", min=0, max=256)
    min: int = setting(1, "Lowest count `scale` accepts.", min=0, max=256)
    max: int = setting(8, "Highest count `scale` accepts.", min=1, max=256)
    base_port: int = setting(8001, "Port of instance 0; instance i listens on base_port + i.",
                             min=1024, max=65535)
    host: str = setting("127.0.0.1", "Address the instances bind.")


@dataclass(frozen=True)
class GunicornSection:
    workers: Any = setting("auto", "Workers per instance, or `auto` (cores / 2, at least 1, at most 4).",
                           min=1, max=64)
    worker_class: str = setting("gevent", "gunicorn worker class.",
                                choices=("gevent", "sync", "gthread", "eventlet"))
    worker_connections: int = setting(1000, "Concurrent connections per gevent worker.", min=1,
                                      max=100000)
    timeout: int = setting(30, "Seconds a silent worker lives before its master kills it.", min=1)
    graceful_timeout: int = setting(30, "Seconds a stopping instance gets to finish in-flight requests.",
                                    min=1)
    keepalive: int = setting(5, "Seconds an idle keep-alive connection stays open.", min=0)
    max_requests: int = setting(0, "Requests after which a worker is replaced (0 = never).", min=0)
    max_requests_jitter: int = setting(0, "Random extra requests added to max_requests.", min=0)
    args: list = setting([], "Extra gunicorn command-line arguments.")


@dataclass(frozen=True)
class HealthSection:
    path: str = setting("/health", "Path that answers 200 when an instance is ready.")
    start_timeout: float = setting(30.0, "Seconds an instance may take to become ready.", min=0.5)
    probe_interval: float = setting(0.02, "Seconds between readiness probes while starting.",
                                    min=0.01, max=5)
    interval: float = setting(10.0, "Seconds between health probes of running instances (exits "
                              "are noticed at once anyway; this catches hung ones) and nginx checks.",
                              min=0.1, max=300)
    timeout: float = setting(1.0, "Seconds a health probe may take.", min=0.05, max=60)
    failures: int = setting(3, "Consecutive failed probes that restart a running instance.", min=1)


@dataclass(frozen=True)
class RestartSection:
    backoff_initial: float = setting(0.5, "Seconds before the second restart in a row; the first "
                                     "is immediate.", min=0, max=60)
    backoff_max: float = setting(30.0, "Longest wait between restarts.", min=0, max=3600)
    fatal_crashes: int = setting(5, "Crashes within `fatal_window` that make an instance FATAL.",
                                 min=1)
    fatal_window: float = setting(60.0, "Seconds over which crashes are counted.", min=1)
    drain_seconds: float = setting(0.5, "Seconds an instance keeps serving after it left the "
                                   "upstream, before it is told to stop.", min=0, max=600)


@dataclass(frozen=True)
class MemorySection:
    worker_limit_mb: int = setting(500, "Per-worker memory limit in MiB.", min=16)
    fleet_budget_mb: int = setting(8192, "Memory budget of the whole fleet in MiB.", min=64)
    metric: str = setting("rss", "Memory measure: rss, uss or pss.", choices=("rss", "uss", "pss"))
    sample_interval: float = setting(1.0, "Seconds between memory samples.", min=0.1, max=300)
    samples_over: int = setting(3, "Consecutive samples over the limit before a recycle.", min=1)


@dataclass(frozen=True)
class MongoSection:
    connection_budget: int = setting(500, "MongoDB connections the whole fleet may hold.", min=1)
    min_pool_size: int = setting(0, "minPoolSize per worker process.", min=0)


@dataclass(frozen=True)
class ApiSection:
    host: str = setting("127.0.0.1", "Address of the control API.")
    port: int = setting(9000, "Port of the control API.", min=1, max=65535)
    token_file: Optional[str] = setting(None, "File holding the bearer token for mutating "
                                        "requests; required when `host` is not loopback.", path=True)


@dataclass(frozen=True)
class PathsSection:
    state_dir: str = setting("/var/lib/ultrascaled", "Desired count, instance records, metrics "
                             "folders; relative to the spec file.", path=True)
    log_dir: str = setting("/var/log/ultrascaled", "Instance output logs; relative to the spec file.",
                           path=True)


@dataclass(frozen=True)
class AlertsSection:
    evaluation_interval: float = setting(10.0, "Seconds between alert evaluations (each compares "
                                         "two scrapes of the fleet's metrics).", min=0.5, max=3600)
    min_requests: int = setting(20, "Requests (cache lookups for the cache rule) an interval needs "
                                "before the latency, error-rate and cache rules are judged; "
                                "below it they count as not holding.", min=0)
    p95_latency_seconds: Optional[float] = setting(2.0, "Fire when the fleet's 95th percentile "
                                                   "request latency is over this; null = off.",
                                                   min=0.001)
    p95_latency_for: float = setting(30.0, "Seconds the p95 latency must stay over before firing.",
                                     min=0)
    error_rate: Optional[float] = setting(0.01, "Fire when the share of 5xx responses is over "
                                          "this (0.01 = 1%); null = off.", min=0, max=1)
    error_rate_for: float = setting(30.0, "Seconds the error rate must stay over before firing.",
                                    min=0)
    cpu_percent: Optional[float] = setting(80.0, "Fire when the fleet's processes use more than "
                                           "this percent of the host's CPUs; null = off.",
                                           min=1, max=100)
    cpu_for: float = setting(30.0, "Seconds CPU must stay over before firing.", min=0)
    memory_budget_fraction: Optional[float] = setting(1.0, "Fire when the fleet's memory is over "
                                                      "this fraction of `memory.fleet_budget_mb`; "
                                                      "null = off.", min=0.01, max=10)
    memory_for: float = setting(30.0, "Seconds memory must stay over before firing.", min=0)
    cache_hit_rate: Optional[float] = setting(0.8, "Fire when the cache hit rate (hits / "
                                              "(hits + misses), all tiers) is under this; "
                                              "null = off.", min=0, max=1)
    cache_hit_rate_for: float = setting(30.0, "Seconds the hit rate must stay under before "
                                        "firing.", min=0)
    db_connections_fraction: Optional[float] = setting(1.0, "Fire when MongoDB connections in "
                                                       "use are over this fraction of "
                                                       "`mongodb.connection_budget`; null = off.",
                                                       min=0.01, max=10)
    db_connections_for: float = setting(30.0, "Seconds connections must stay over before firing.",
                                        min=0)
    webhook_url: Optional[str] = setting(None, "URL that gets a JSON POST for every firing and "
                                         "resolved alert; null = none.")
    webhook_timeout: float = setting(2.0, "Seconds one webhook POST may take.", min=0.05, max=60)
    webhook_retries: int = setting(3, "Retries after a failed POST (timeout, connection error, "
                                   "5xx, 429), with doubling backoff.", min=0, max=20)
    webhook_backoff: float = setting(0.5, "Seconds before the first retry; doubles each time.",
                                     min=0, max=60)
    webhook_queue: int = setting(100, "Notifications waiting to be sent; more are dropped and "
                                 "counted.", min=1, max=100000)


@dataclass(frozen=True)
class LogsSection:
    max_bytes: int = setting(50 * 1024 * 1024, "Size at which an instance's log file is rotated "
                             "(copy, then truncate; the instance keeps writing).", min=4096)
    backups: int = setting(5, "Rotated files kept per instance (`instance-PORT.log.1` .. `.N`).",
                           min=0, max=100)


@dataclass(frozen=True)
class Spec:
    name: str = setting("ultrascale", "Fleet name; marks its processes (`--name ultrascale-NAME-PORT`).")
    app: AppSection = field(default_factory=AppSection)
    instances: InstancesSection = field(default_factory=InstancesSection)
    gunicorn: GunicornSection = field(default_factory=GunicornSection)
    health: HealthSection = field(default_factory=HealthSection)
    restart: RestartSection = field(default_factory=RestartSection)
    memory: MemorySection = field(default_factory=MemorySection)
    mongodb: MongoSection = field(default_factory=MongoSection)
    api: ApiSection = field(default_factory=ApiSection)
    paths: PathsSection = field(default_factory=PathsSection)
    logs: LogsSection = field(default_factory=LogsSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    nginx: NginxSettings = field(default_factory=NginxSettings)
    source: Optional[str] = field(default=None, metadata={"internal": True})

    # Derived figures used by the supervisor and the budget checks.
    def port(self, index: int) -> int:
        return self.instances.base_port + index

    @property
    def workers(self) -> int:
        return int(self.gunicorn.workers)

    def mongo_pool_per_process(self) -> int:
        """maxPoolSize per worker process: max instances x workers x (pool + 2 monitoring
        connections pymongo keeps per server) stays within the fleet's connection budget."""
        return self.mongodb.connection_budget // (self.instances.max * self.workers) - 2


class SpecError(Exception):
    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def resolve_auto_workers(cpu_count: int) -> int:
    return max(1, min(4, cpu_count // 2))


# ---- the loader -------------------------------------------------------------------------

def _node_to_python(node: yaml.Node, path: str, lines: dict[str, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(key_node)))
            out[key] = _node_to_python(value_node, f"{path}.{key}" if path else key, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(v, f"{path}[{i}]", lines) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


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
    if fld.name == "workers":  # int or "auto"
        if value == "auto":
            return value, None
        tp = int
    if tp is Any:
        return value, None
    if typing.get_origin(tp) in (tuple, list):  # a command or a list of words: string or list
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value, None
        return value, f"must be a string or a list of strings, got {value!r}"
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads a bare off/on as a boolean
        value = "on" if value else "off"
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        hint = " or `auto`" if fld.name == "workers" else ""
        return value, f"must be {_type_name(tp)}{hint}, got {value!r}"
    if tp is dict:
        bad = [k for k, v in value.items() if not isinstance(v, (str, int, float, bool))]
        if bad:
            return value, f"values must be strings, numbers or booleans; {bad[0]!r} is not"
        return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}, None
    if tp is list:
        if not all(isinstance(v, (str, int, float)) for v in value):
            return value, "must be a list of strings"
        return [str(v) for v in value], None
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices") or ()
    if choices and value not in choices:
        return value, f"must be one of {', '.join(map(str, choices))}; got {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and hi is not None and not lo <= value <= hi:
            return value, f"must be {lo:g}..{hi:g}, got {value:g}"
        if lo is not None and value < lo:
            return value, f"must be at least {lo:g}, got {value:g}"
        if hi is not None and value > hi:
            return value, f"must be at most {hi:g}, got {value:g}"
    if tp is str and not value and not optional and not meta.get("allow_empty"):
        return value, "must not be empty"
    return value, None


def _build(cls: type, data: Any, path: str, lines: dict[str, int], errors: list[str],
           base_dir: Path) -> Any:
    def where(p: str) -> str:
        line = lines.get(p) or lines.get(path)
        return f"{p} (line {line})" if line else p

    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{where(path) if path else 'spec'}: must be a mapping, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            errors.append(f"{where(f'{path}.{key}' if path else key)}: unknown key{hint}")
    kwargs = {}
    for name, fld in fields.items():
        sub = f"{path}.{name}" if path else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):  # absent sections still resolve their relative paths
            kwargs[name] = _build(tp, data.get(name), sub, lines, errors, base_dir)
            continue
        if name not in data:
            continue
        value, err = _check_value(fld, tp, data[name])
        if err:
            errors.append(f"{where(sub)}: {err}")
            continue
        if fld.metadata.get("path") and isinstance(value, str):
            value = str((base_dir / value).resolve()) if not os.path.isabs(value) else value
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a section's own __post_init__ check
        errors.append(f"{where(path)}: {exc}")
        return cls()
    # Defaults that are relative paths resolve against the spec's folder too.
    fixes = {}
    for name, fld in fields.items():
        if name not in kwargs and fld.metadata.get("path"):
            value = getattr(obj, name)
            if isinstance(value, str) and not os.path.isabs(value):
                fixes[name] = str((base_dir / value).resolve())
    return dataclasses.replace(obj, **fixes) if fixes else obj


def _cross_checks(spec: Spec, lines: dict[str, int], nofile_limit: int | None = None) -> list[str]:
    """Checks across keys, including the budgets the fleet must fit in."""
    def where(p: str) -> str:
        line = lines.get(p)
        return f"{p} (line {line})" if line else p

    errors = []
    for msg in nginx_conf.validate(spec.nginx):
        key, _, rest = msg.partition(":")
        errors.append(f"{where(key)}:{rest}" if key.startswith("nginx.") else msg)
    inst = spec.instances
    if inst.min > inst.max:
        errors.append(f"{where('instances.min')}: must not exceed instances.max ({inst.max}), got {inst.min}")
    if not inst.min <= inst.count <= inst.max:
        errors.append(f"{where('instances.count')}: must be within instances.min..max "
                      f"({inst.min}..{inst.max}), got {inst.count}")
    last = inst.base_port + inst.max - 1
    if last > 65535:
        errors.append(f"{where('instances.base_port')}: base_port + max - 1 = {last} is past 65535")
    ports = range(inst.base_port, inst.base_port + inst.max)
    if spec.api.port in ports:
        errors.append(f"{where('api.port')}: {spec.api.port} is inside the instance ports "
                      f"{inst.base_port}..{last}")
    if spec.nginx.mode == "managed" and spec.nginx.listen in ports:
        errors.append(f"{where('nginx.listen')}: {spec.nginx.listen} is inside the instance ports "
                      f"{inst.base_port}..{last}")
    if not spec.name.replace("-", "").replace("_", "").isalnum():
        errors.append(f"{where('name')}: only letters, digits, - and _ (it marks process names), "
                      f"got {spec.name!r}")
    if ":" not in spec.app.module:
        errors.append(f"{where('app.module')}: must be `module:callable`, got {spec.app.module!r}")
    if not spec.health.path.startswith("/"):
        errors.append(f"{where('health.path')}: must start with /, got {spec.health.path!r}")
    if spec.api.host not in ("127.0.0.1", "localhost", "::1") and not spec.api.token_file:
        errors.append(f"{where('api.host')}: {spec.api.host} is not loopback, so api.token_file "
                      "must name a file with the bearer token")
    errors.extend(budget_errors(spec, spec.instances.count, lines, nofile_limit))
    return errors


def budget_errors(spec: Spec, count: int, lines: dict[str, int] | None = None,
                  nofile_limit: int | None = None) -> list[str]:
    """The budgets (memory, MongoDB connections, file descriptors) for `count` instances."""
    from ultrascaled.capacity import budget_problems
    return budget_problems(spec, count, lines=lines, nofile_limit=nofile_limit)


def _line_of(error: str) -> int:
    _, _, rest = error.partition("(line ")
    digits = rest.split(")", 1)[0]
    return int(digits) if digits.isdigit() else 0


def parse_spec(text: str, source: str = "<spec>", base_dir: Path | None = None,
               cpu_count: int | None = None, nofile_limit: int | None = None) -> Spec:
    """Parse and validate spec text; raise SpecError listing every problem."""
    base_dir = base_dir or Path.cwd()
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise SpecError([f"{source}{at}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    lines: dict[str, int] = {}
    data = _node_to_python(node, "", lines) if node is not None else {}
    errors: list[str] = []
    spec = _build(Spec, data, "", lines, errors, base_dir)
    if errors:
        raise SpecError(sorted(errors, key=_line_of))
    if spec.gunicorn.workers == "auto":
        workers = resolve_auto_workers(cpu_count or os.cpu_count() or 1)
        spec = dataclasses.replace(spec, gunicorn=dataclasses.replace(spec.gunicorn, workers=workers))
    if spec.nginx.mode == "managed" and not spec.nginx.prefix:
        prefix = str(Path(spec.paths.state_dir) / "nginx")
        spec = dataclasses.replace(spec, nginx=dataclasses.replace(spec.nginx, prefix=prefix))
    spec = dataclasses.replace(spec, source=source)
    errors = _cross_checks(spec, lines, nofile_limit)
    if errors:
        raise SpecError(errors)
    return spec


def load_spec(path: str | os.PathLike, cpu_count: int | None = None,
              nofile_limit: int | None = None) -> Spec:
    """Read and validate a spec file; `nofile_limit` (the daemon's RLIMIT_NOFILE) enables the
    file-descriptor budget checks."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    return parse_spec(text, source=str(p.resolve()), base_dir=p.resolve().parent, cpu_count=cpu_count,
                      nofile_limit=nofile_limit)


def iter_settings(cls: type = Spec, prefix: str = ""):
    """Yield (path, type name, default, help) for every key: the configuration reference."""
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        if fld.metadata.get("internal"):
            continue
        path = f"{prefix}.{fld.name}" if prefix else fld.name
        tp = hints[fld.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_settings(tp, path)
            continue
        default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()
        yield path, _describe_type(fld, tp), default, fld.metadata.get("help", "")


def _describe_type(fld: dataclasses.Field, tp: Any) -> str:
    if fld.name == "workers":
        return "int or `auto`"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe_type(fld, a) for a in args) + " or null"
    if typing.get_origin(tp) in (tuple, list):
        return "string or list of strings"
    name = {int: "int", float: "float", str: "string", bool: "bool", list: "list of strings",
            dict: "map of strings"}.get(tp, str(tp))
    choices = fld.metadata.get("choices")
    if choices:
        name += ": " + ", ".join(map(str, choices))
    if fld.metadata.get("path"):
        name = "path"
    return name


def reference_markdown() -> str:
    """The key table of docs/configuration.md, generated from the declarations above."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for path, tname, default, help_text in iter_settings():
        shown = "null" if default is None else json.dumps(list(default) if isinstance(default, tuple)
                                                           else default)
        rows.append(f"| `{path}` | {tname} | `{shown}` | {help_text.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m ultrascaled.spec: print the reference table
    print(reference_markdown(), end="")
