"""A process type's readiness check (`ready:`), its start order (`after:`) and what it waits for
(`requires:`): the values as the spec states them, checked and normalised, and the errors,
each naming its key. Pure: the loops (supervise/workers_loop.py, jobs_loop.py) read the result.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

from ultrascaled.spec.yaml_reader import show_value

READY_KINDS = ("tcp", "http", "command")
LOOPBACK_NAMES = ("localhost",)
MAX_REQUIRES = 16
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _port(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return None
    return value


def check_ready(value: Any) -> tuple[dict | None, str | None]:
    """`ready:` as (normalised value, None) or (None, the problem). The value is a mapping with
    exactly one of `tcp: PORT` (a connect to 127.0.0.1:PORT), `http: URL` (a GET on a loopback
    URL answering 2xx) or `command: [argv]` (exit 0)."""
    example = "e.g. {tcp: 6380}, {http: 'http://127.0.0.1:9101/health'} or {command: [prog, arg]}"
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, f"must be a mapping with one of tcp, http or command ({example}), got {show_value(value)}"
    unknown = [k for k in value if k not in READY_KINDS]
    if unknown:
        return None, (f"unknown key {show_value(unknown[0])}: a check is one of tcp, http or "
                      f"command ({example}); the time it may take is ready_timeout, beside ready")
    given = [k for k in READY_KINDS if k in value]
    if len(given) != 1:
        return None, (f"needs exactly one of tcp, http or command, got "
                      f"{' and '.join(given) if given else 'none'} ({example})")
    kind, v = given[0], value[given[0]]
    if kind == "tcp":
        if _port(v) is None:
            return None, f"tcp: must be a port 1-65535 (connected to on 127.0.0.1), got {show_value(v)}"
        return {"tcp": v}, None
    if kind == "http":
        target, problem = http_target(v)
        if problem:
            return None, f"http: {problem}"
        return {"http": v}, None
    if not isinstance(v, list) or not v or not all(isinstance(a, str) and a for a in v):
        return None, ("command: must be an argv list of non-empty strings (no shell: "
                      f"[sh, -c, '...'] for one), got {show_value(v)}")
    return {"command": list(v)}, None


def http_target(url: Any) -> tuple[tuple[str, int, str] | None, str | None]:
    """(host, port, path) of a readiness URL, or the problem: http only, loopback only (the
    check asks the process itself, on this host)."""
    if not isinstance(url, str):
        return None, f"must be a URL such as http://127.0.0.1:9101/health, got {show_value(url)}"
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError as exc:
        return None, f"{show_value(url)} is not a URL: {exc}"
    if parts.scheme != "http":
        return None, f"must start with http:// (a plain HTTP check on this host), got {show_value(url)}"
    host = parts.hostname or ""
    if not is_loopback(host):
        return None, (f"must be a loopback address (127.0.0.1, ::1 or localhost): the check asks "
                      f"the process itself, on this host; got {show_value(host or url)}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if not re.fullmatch(r"/[\x21-\x7e]*", path):
        return None, f"its path must hold no spaces or control characters, got {show_value(path)}"
    return (host, port, path), None


def tcp_address(text: str) -> tuple[str, int]:
    """`tcp://HOST:PORT` (IPv6 in brackets) as (host, port); ValueError says what is wrong."""
    if not isinstance(text, str) or not text.startswith("tcp://"):
        raise ValueError(f"must be tcp://HOST:PORT (e.g. tcp://127.0.0.1:6379), got {show_value(text)}")
    rest = text[len("tcp://"):]
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
        ok_host = _is_ip(host)
    else:
        host, sep, port = rest.rpartition(":")
        ok_host = ":" not in host and (_is_ip(host) or bool(_HOST.match(host)))   # IPv6 in brackets
    if not sep or not ok_host or not port.isascii() or not port.isdigit() or _port(int(port)) is None:
        raise ValueError(f"must be tcp://HOST:PORT with a port 1-65535 (IPv6 in brackets: "
                         f"tcp://[::1]:6379), got {show_value(text)}")
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def requires_errors(value: list, where: str) -> list[str]:
    if len(value) > MAX_REQUIRES:
        return [f"{where}: at most {MAX_REQUIRES} addresses, got {len(value)}"]
    errors, seen = [], set()
    for item in value:
        try:
            tcp_address(item)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if item in seen:
            errors.append(f"{where}: {show_value(item)} is listed twice")
        seen.add(item)
    return errors


def after_errors(types: Mapping[str, Any], where: Any) -> list[str]:
    """Each worker type's `after`: `web` or other worker types, each once, never itself, no
    cycle; a job or an unknown name is refused, naming the key."""
    workers = {n for n, t in types.items() if t.kind == "worker"}
    errors = []
    for name in sorted(workers):
        key = f"processes.{name}.after"
        seen = set()
        for dep in types[name].after:
            if dep in seen:
                errors.append(f"{where(key)}: {show_value(dep)} is listed twice")
            elif dep == name:
                errors.append(f"{where(key)}: a type cannot start after itself ({show_value(dep)})")
            elif dep != "web" and dep not in workers:
                what = "a job (it has no processes to wait for)" if dep in types else "not a process type"
                known = ", ".join(["web", *sorted(workers - {name})])
                errors.append(f"{where(key)}: {show_value(dep)} is {what}; after names web or "
                              f"worker types ({known})")
            seen.add(dep)
    graph = {n: [d for d in types[n].after if d in workers and d != n] for n in workers}
    for cycle in _cycles(graph):
        errors.append(f"{where(f'processes.{cycle[0]}.after')}: a cycle: {' -> '.join(cycle)} "
                      "(none of them would ever start)")
    return errors


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each cycle once, as a path from its least name back to it."""
    out, seen = [], set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, []):
                if nxt == start:
                    key = frozenset(path)
                    if key not in seen and min(path) == start:
                        seen.add(key)
                        out.append(path + [start])
                elif nxt not in path and nxt > start:
                    stack.append((nxt, path + [nxt]))
    return out
