"""Pure nginx configuration rendering for ultrascale.

Everything here is a pure function from a frozen :class:`NginxSettings` (plus a list of ready
servers) to bytes.  No subprocess, psutil or aiohttp imports: the process control lives in
:mod:`ultrascaled.effects.nginx_control`.  Output is byte-stable: the same input always gives the same bytes,
servers are sorted by (port, host) and de-duplicated.

Three renderers:

* :func:`render_upstream` -- the generated include file (upstream blocks with only the ready
  instances, plus a ``geo`` variable telling the server block whether any instance is ready);
* :func:`render_site_conf` -- the http-level part (include of the upstream file, maps, limit
  zones, server blocks); used as is for ``etc/nginx/ultrascale.conf`` in system mode;
* :func:`render_main_conf` -- a complete nginx.conf for managed mode, with every path inside the
  prefix, embedding :func:`render_site_conf`.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

MODES = ("managed", "system", "off")
SOCKETIO_BALANCE = ("hash", "ip_hash")
UPSTREAM_SERVERS = ("range", "ready")
BACKUP_BALANCE = ("", "least_conn")   # nginx refuses `backup` with hash, ip_hash and random

# Placeholder used when no instance is ready: nginx needs at least one server per upstream.
# It is marked ``down`` so nginx never connects to it ("no live upstreams" -> 502 at once), and
# the server block answers 503 before even reaching the upstream (see ``$<name>_ready``).
PLACEHOLDER_SERVER = ("127.0.0.1", 1)


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class NginxSettings:
    """Every nginx knob of ultrascale.  Field names are the keys of the spec's ``nginx:`` section.

    Sequences given as strings (``reload_command``, ``test_command``, ``stub_status_allow``) are
    split (shlex / whitespace) in ``__post_init__`` so the spec loader can pass YAML strings or
    lists alike.
    """

    mode: str = _f("managed", "managed: ultrascaled runs its own nginx master in `prefix`; "
                   "system: it only rewrites `upstream_file` and reloads the system nginx; "
                   "off: no nginx at all")
    listen: int = _f(8080, "TCP port the managed nginx listens on for HTTP (also used in the "
                     "system-mode example site)")
    listen_host: str = _f("127.0.0.1", "address the HTTP (and TLS) server binds to")
    binary: str = _f("nginx", "nginx executable; looked up on PATH, then in /usr/sbin, "
                     "/usr/local/sbin, /usr/local/nginx/sbin")
    prefix: str = _f("", "managed mode working directory (absolute; conf/, logs/, temp/ live "
                     "under it); the daemon passes a path under its state dir")
    upstream_file: str = _f("", "path of the generated upstream include; managed default "
                            "<prefix>/conf/upstream.conf; system mode e.g. "
                            "/etc/nginx/ultrascale/upstream.conf (required)")
    upstream_name: str = _f("ultrascale", "name of the upstream block (the Socket.IO one is "
                            "<name>_socketio); also prefixes zone and variable names")
    reload_command: tuple[str, ...] = _f(("nginx", "-s", "reload"),
                                         "system mode: command that reloads the system nginx")
    test_command: tuple[str, ...] = _f(("nginx", "-t"), "system mode: command that checks the "
                                       "configuration (managed mode runs "
                                       "`<binary> -t -p <prefix> -c <conf>`)")
    system_pid_file: str = _f("/run/nginx.pid", "system mode: pid file of the system nginx "
                              "master, used to wait until a reload has taken effect")
    balance: str = _f("least_conn", "load-balancing directive of the main upstream: "
                      "least_conn, random two least_conn, or '' for round robin")
    keepalive: int = _f(512, "idle keepalive connections to the instances cached per worker "
                        "(0 = off); 512 so that nginx rarely opens a new connection per request "
                        "(docs/nginx.md)")
    keepalive_requests: int = _f(10000, "requests served over one upstream keepalive "
                                 "connection before it is closed")
    keepalive_timeout: str = _f("4s", "how long an idle upstream keepalive connection is kept; "
                                "short, because a stopping instance (gevent) waits for its idle "
                                "keep-alive connections until nginx closes them (docs/nginx.md)")
    upstream_servers: str = _f("range", "range: the upstream lists every port of "
                               "instances.base_port .. + instances.max - 1 and never changes when "
                               "instances start, stop or restart: the daemon opens and closes "
                               "each port's listening socket instead, so scaling reloads nginx "
                               "only when the whole fleet goes down or comes back (docs/nginx.md); "
                               "ready: it lists only the ready instances, and nginx is reloaded "
                               "at each change")
    max_fails: int = _f(0, "passive failure marking: failed attempts before a server is "
                        "skipped for fail_timeout; 0 = never mark: the daemon takes instances out "
                        "itself (docs/nginx.md); upstream_servers: range renders at least 1")
    fail_timeout: str = _f("2s", "window/skip time for max_fails (only rendered when "
                           "max_fails > 0 or upstream_servers is range); with range, how soon "
                           "nginx tries again a port it found closed, so a started instance "
                           "gets traffic at most this long after it is ready")
    proxy_next_upstream: str = _f("error timeout http_502 http_503", "conditions on which a "
                                  "request is passed to the next instance (nginx never resends "
                                  "a non-idempotent request that reached an instance)")
    proxy_next_upstream_tries: int = _f(3, "maximum attempts per request across instances "
                                        "(0 = unlimited); upstream_servers: range renders 0, each "
                                        "port at most once, as a port with no instance counts as "
                                        "an attempt")
    proxy_next_upstream_timeout: str = _f("10s", "time limit for passing a request to the next "
                                          "instance (0 = unlimited)")
    rate_limit: int = _f(0, "limit_req: requests per second per client IP (0 = off)")
    rate_limit_burst: int = _f(0, "limit_req burst (requests above the rate served at once, "
                               "nodelay)")
    rate_limit_status: int = _f(429, "status returned when rate_limit or conn_limit rejects")
    conn_limit: int = _f(0, "limit_conn: concurrent connections per client IP (0 = off)")
    limit_zone_size: str = _f("10m", "shared memory size of the limit_req / limit_conn zones")
    tls_cert: str = _f("", "PEM certificate (chain) file; with tls_key enables the TLS server")
    tls_key: str = _f("", "PEM private key file; with tls_cert enables the TLS server")
    tls_listen: int = _f(8443, "TLS port (only used when tls_cert and tls_key are set)")
    tls_protocols: str = _f("TLSv1.2 TLSv1.3", "ssl_protocols of the TLS server")
    http2: bool = _f(False, "enable http2 on the TLS listener")
    server_name: str = _f("_", "server_name of the generated server blocks")
    worker_processes: str = _f("auto", "managed mode: nginx worker processes (number or auto)")
    worker_connections: int = _f(4096, "managed mode: connections per worker (clients + "
                                 "upstream)")
    worker_rlimit_nofile: int = _f(0, "managed mode: open-file limit for workers (0 = inherit)")
    worker_shutdown_timeout: str = _f("30s", "managed mode: how long old workers may linger "
                                      "after a reload (bounds WebSocket connections)")
    user: str = _f("", "managed mode, master run as root: `user` directive for workers "
                   "('' = nginx default, nobody)")
    error_log_level: str = _f("warn", "error_log level")
    access_log: str = _f("off", "access_log path (managed: relative to prefix) or 'off'")
    traffic_log: str = _f("", "the JSON-lines access log the daemon reads for per-instance "
                          "requests, 5xx and latency (docs/observability.md); '' = "
                          "<prefix>/logs/traffic.log (managed) or "
                          "/var/log/nginx/<upstream_name>.traffic.log (system); a path "
                          "(managed: relative to prefix); off = none (the error-rate and "
                          "latency alerts then read the app's own metrics)")
    traffic_window: float = _f(300.0, "seconds of per-instance traffic figures the daemon "
                               "keeps (in 300 slots; memory is bounded by it, not by the "
                               "request rate)")
    proxy_connect_timeout: str = _f("500ms", "connect timeout to an instance (loopback: a "
                                    "connect either completes at once or its SYN was dropped -- a "
                                    "full accept queue or a closed gate -- and the next instance "
                                    "is tried)")
    proxy_send_timeout: str = _f("60s", "timeout between two writes to an instance")
    proxy_read_timeout: str = _f("60s", "timeout between two reads from an instance")
    client_header_timeout: str = _f("15s", "timeout for reading the client request header")
    client_body_timeout: str = _f("60s", "timeout between two reads of the client body")
    send_timeout: str = _f("60s", "timeout between two writes to the client")
    client_keepalive_timeout: str = _f("65s", "idle keepalive timeout of client connections")
    client_max_body_size: str = _f("10m", "largest accepted request body")
    client_body_buffer_size: str = _f("128k", "request body buffered in memory before a temp "
                                      "file")
    proxy_buffering: bool = _f(True, "buffer instance responses (frees instances from slow "
                               "clients)")
    proxy_buffer_size: str = _f("8k", "buffer for the response header from an instance")
    proxy_buffers: str = _f("16 8k", "number and size of response buffers per connection")
    stub_status: bool = _f(True, "serve nginx stub_status on stub_status_path")
    stub_status_path: str = _f("/nginx_status", "location of stub_status")
    stub_status_allow: tuple[str, ...] = _f(("127.0.0.1", "::1"), "addresses allowed to read "
                                            "stub_status (all others get 403)")
    socketio: bool = _f(True, "route socketio_path to a sticky upstream with WebSocket upgrade")
    socketio_path: str = _f("/socket.io/", "Socket.IO location prefix")
    socketio_balance: str = _f("hash", "sticky method for Socket.IO: hash ($remote_addr "
                               "consistent) or ip_hash")
    socketio_read_timeout: str = _f("3600s", "read timeout of upgraded WebSocket connections")
    reload_timeout: float = _f(10.0, "seconds to wait for a reload (new workers) to take effect")
    command_timeout: float = _f(15.0, "seconds allowed for nginx -t / reload commands")
    start_timeout: float = _f(10.0, "seconds to wait for a managed master to listen")
    stop_timeout: float = _f(10.0, "seconds to wait for a graceful stop before SIGKILL")
    extra_http: str = _f("", "raw directives appended at http level (escape hatch)")
    extra_server: str = _f("", "raw directives appended to every generated server block")
    extra_upstream: str = _f("", "raw directives appended inside the upstream blocks")

    def __post_init__(self) -> None:
        for name in ("reload_command", "test_command"):
            v = getattr(self, name)
            if isinstance(v, str):
                object.__setattr__(self, name, tuple(shlex.split(v)))
            elif not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))
        v = self.stub_status_allow
        if isinstance(v, str):
            object.__setattr__(self, "stub_status_allow", tuple(v.split()))
        elif not isinstance(v, tuple):
            object.__setattr__(self, "stub_status_allow", tuple(v))

    # Derived paths --------------------------------------------------------------------------
    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    @property
    def conf_path(self) -> str:
        """Managed mode: the main nginx.conf."""
        return os.path.join(self.prefix, "conf", "nginx.conf")

    @property
    def pid_path(self) -> str:
        return os.path.join(self.prefix, "logs", "nginx.pid")

    @property
    def error_log_path(self) -> str:
        return os.path.join(self.prefix, "logs", "error.log")

    @property
    def traffic_log_path(self) -> str | None:
        """Where nginx writes the traffic log; None when it is off."""
        if self.mode == "off" or self.traffic_log == "off":
            return None
        if not self.traffic_log:
            if self.mode == "managed":
                return os.path.join(self.prefix, "logs", "traffic.log")
            return f"/var/log/nginx/{self.upstream_name}.traffic.log"
        if os.path.isabs(self.traffic_log) or self.mode != "managed":
            return self.traffic_log
        return os.path.join(self.prefix, self.traffic_log)

    @property
    def effective_upstream_file(self) -> str:
        if self.upstream_file:
            return self.upstream_file
        if self.mode == "managed" and self.prefix:
            return os.path.join(self.prefix, "conf", "upstream.conf")
        return ""


def settings_help() -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for every field, in declaration order (for docs / spec)."""
    out = []
    for f in dataclasses.fields(NginxSettings):
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append((f.name, t, f.default, f.metadata["help"]))
    return out


# What the settings may hold where they are rendered into nginx syntax: ASCII, and never a
# character nginx reads as syntax (`;` `{` `}` quotes `#` `\\` whitespace) unless noted.
_HOSTNAME = re.compile(r"(?=[A-Za-z0-9.-]{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")
_TIME = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|M|y)?)+\Z")
_TIME_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
               "M": 2592000, "y": 31536000, "": 1}
_SIZE = re.compile(r"[0-9]+[kKmMgG]?\Z")
_WORD = r"[\x21-\x7e]"  # printable ASCII, no space
_UNSAFE = set(";{}\"'#\\")
_SERVER_NAME = re.compile(r"[A-Za-z0-9._*~^$()\[\]?+:|<>!=,-]+\Z")
_URI_PATH = re.compile(r"/[A-Za-z0-9._~!$&()*+,=:@%/-]*\Z")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?(?: [A-Za-z_][A-Za-z0-9_.-]*\$?)?\Z")
_NEXT_UPSTREAM = {"error", "timeout", "denied", "invalid_header", "http_500", "http_502",
                  "http_503", "http_504", "http_403", "http_404", "http_429", "non_idempotent",
                  "off"}
_PROTOCOLS = {"SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}
_LOG_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")
TIME_SETTINGS = ("keepalive_timeout", "fail_timeout", "proxy_next_upstream_timeout",
                 "worker_shutdown_timeout", "proxy_connect_timeout", "proxy_send_timeout",
                 "proxy_read_timeout", "client_header_timeout", "client_body_timeout",
                 "send_timeout", "socketio_read_timeout")
SIZE_SETTINGS = ("limit_zone_size", "client_max_body_size", "client_body_buffer_size",
                 "proxy_buffer_size")
PATH_SETTINGS = ("binary", "prefix", "upstream_file", "system_pid_file", "tls_cert", "tls_key")


def is_host(host: str) -> bool:
    """An IP address or a DNS host name (ASCII letters, digits, - and . only)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def parse_time(value: str) -> float | None:
    """Seconds of an nginx time (`60s`, `1m30s`, `500ms`, `90`); None when it is not one."""
    if not isinstance(value, str) or not _TIME.match(value):
        return None
    return sum(int(n) * _TIME_UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|M|y)?", value))


def _syntax_errors(s: NginxSettings) -> list[str]:
    """Settings rendered into nginx.conf that nginx would read as something else (a `;` in
    server_name ends the directive and starts another) or that are not in nginx syntax."""
    errs: list[str] = []

    def bad(name: str, what: str) -> None:
        errs.append(f"nginx.{name}: {what}, got {getattr(s, name)!r}")

    for name in TIME_SETTINGS:
        if parse_time(getattr(s, name)) is None:
            bad(name, "must be an nginx time such as 60s, 500ms or 1m30s")
    times = s.client_keepalive_timeout.split(" ")
    if not 1 <= len(times) <= 2 or any(parse_time(t) is None for t in times):
        bad("client_keepalive_timeout", "must be one or two nginx times such as 65s")
    for name in SIZE_SETTINGS:
        if not _SIZE.match(getattr(s, name)):
            bad(name, "must be an nginx size such as 10m, 128k or 4096")
    if not re.match(r"[0-9]+ [0-9]+[kKmM]?\Z", s.proxy_buffers):
        bad("proxy_buffers", "must be `number size`, such as 16 8k")
    if not all(_SERVER_NAME.match(n) for n in s.server_name.split(" ")):
        bad("server_name", "must be names separated by single spaces, without ; { } quotes # "
                           "or backslashes")
    if not (s.listen_host == "*" or is_host(s.listen_host)):
        bad("listen_host", "must be an IP address, a host name or *")
    for name in ("stub_status_path", "socketio_path"):
        if not _URI_PATH.match(getattr(s, name)):
            bad(name, "must be a URI path starting with /, without spaces, ; { } quotes or #")
    for addr in s.stub_status_allow:
        try:
            ipaddress.ip_network(addr, strict=False)
        except ValueError:
            if addr not in ("all", "unix:"):
                errs.append(f"nginx.stub_status_allow: {addr!r} is not an address, a network "
                            "(10.0.0.0/8), unix: or all")
    if s.user and not _USER.match(s.user):
        bad("user", "must be `user` or `user group`")
    if s.worker_processes != "auto" and not re.match(r"[1-9][0-9]{0,3}\Z", s.worker_processes):
        bad("worker_processes", "must be auto or a number 1-9999")
    if s.error_log_level not in _LOG_LEVELS:
        bad("error_log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    if s.access_log != "off" and (not re.match(rf"{_WORD}+\Z", s.access_log)
                                  or _UNSAFE & set(s.access_log)):
        bad("access_log", "must be off or a path without spaces, ; { } quotes or #")
    if s.traffic_log and (not re.match(rf"{_WORD}+\Z", s.traffic_log) or _UNSAFE & set(s.traffic_log)):
        bad("traffic_log", "must be off, '' or a path without spaces, ; { } quotes, # or backslashes")
    elif s.mode == "system" and s.traffic_log not in ("", "off") and not os.path.isabs(s.traffic_log):
        bad("traffic_log", "must be an absolute path in system mode (or '' or off)")
    if s.traffic_log_path and s.access_log not in ("", "off") and \
            os.path.normpath(_access_log_path(s)) == os.path.normpath(s.traffic_log_path):
        bad("access_log", f"is the traffic log's file ({s.traffic_log_path}, nginx.traffic_log), which "
                          "has its own format: give one of them another path")
    if isinstance(s.traffic_window, bool) or not isinstance(s.traffic_window, (int, float)) \
            or not 10 <= s.traffic_window <= 3600:
        bad("traffic_window", "must be 10..3600 seconds")
    for name in PATH_SETTINGS:
        v = getattr(s, name)
        if v and (not re.match(rf"{_WORD}+\Z", v) or _UNSAFE & set(v)):
            bad(name, "must be a path without spaces, ; { } quotes, # or backslashes")
    if not set(s.tls_protocols.split(" ")) <= _PROTOCOLS:
        bad("tls_protocols", f"must be protocols from {', '.join(sorted(_PROTOCOLS))}")
    if not set(s.proxy_next_upstream.split()) <= _NEXT_UPSTREAM or \
            any(c in s.proxy_next_upstream for c in "\t\r\n"):
        bad("proxy_next_upstream", f"must be conditions from {', '.join(sorted(_NEXT_UPSTREAM))}")
    return errs


def validate(s: NginxSettings) -> list[str]:
    """Every problem with the settings, each naming the field; [] when valid."""
    errs: list[str] = []

    def port(name: str) -> None:
        v = getattr(s, name)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
            errs.append(f"nginx.{name}: must be a port 1-65535, got {v!r}")

    if s.mode not in MODES:
        errs.append(f"nginx.mode: must be one of {', '.join(MODES)}, got {s.mode!r}")
    if s.mode == "off":
        return errs
    port("listen")
    if s.tls_enabled:
        port("tls_listen")
        if s.mode == "managed" and s.tls_listen == s.listen:
            errs.append("nginx.tls_listen: must differ from nginx.listen")
    if bool(s.tls_cert) != bool(s.tls_key):
        errs.append("nginx.tls_cert/tls_key: set both or neither")
    if s.mode == "managed" and not os.path.isabs(s.prefix or ""):
        errs.append(f"nginx.prefix: managed mode needs an absolute path, got {s.prefix!r}")
    if s.mode == "system" and not os.path.isabs(s.upstream_file or ""):
        errs.append(f"nginx.upstream_file: system mode needs an absolute path, "
                    f"got {s.upstream_file!r}")
    if s.mode == "system" and not s.reload_command:
        errs.append("nginx.reload_command: must not be empty in system mode")
    if not re.match(r"[A-Za-z0-9_]+\Z", s.upstream_name):
        errs.append(f"nginx.upstream_name: letters, digits and _ only, got {s.upstream_name!r}")
    for name in ("keepalive", "keepalive_requests", "max_fails", "proxy_next_upstream_tries",
                 "rate_limit", "rate_limit_burst", "conn_limit", "worker_rlimit_nofile"):
        v = getattr(s, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            errs.append(f"nginx.{name}: must be an integer >= 0, got {v!r}")
    if s.worker_connections < 16:
        errs.append(f"nginx.worker_connections: must be >= 16, got {s.worker_connections!r}")
    if s.socketio_balance not in SOCKETIO_BALANCE:
        errs.append(f"nginx.socketio_balance: must be one of {', '.join(SOCKETIO_BALANCE)}, "
                    f"got {s.socketio_balance!r}")
    if s.upstream_servers not in UPSTREAM_SERVERS:
        errs.append(f"nginx.upstream_servers: must be one of {', '.join(UPSTREAM_SERVERS)}, "
                    f"got {s.upstream_servers!r}")
    if s.balance not in ("", "least_conn", "random", "random two", "random two least_conn"):
        errs.append(f"nginx.balance: unsupported value {s.balance!r}")
    if not 400 <= s.rate_limit_status <= 599:
        errs.append(f"nginx.rate_limit_status: must be 400-599, got {s.rate_limit_status!r}")
    for name in ("socketio_path", "stub_status_path"):
        if not getattr(s, name).startswith("/"):
            errs.append(f"nginx.{name}: must start with /, got {getattr(s, name)!r}")
    for name in ("reload_timeout", "command_timeout", "start_timeout", "stop_timeout"):
        if not 0 < getattr(s, name) <= 3600:
            errs.append(f"nginx.{name}: must be > 0 and at most 3600, got {getattr(s, name)!r}")
    return errs + _syntax_errors(s)


# Rendering ------------------------------------------------------------------------------------

HEADER = "# Generated by ultrascaled from its nginx settings (ultrascaled/effects/nginx_render.py).\n"


def normalize_servers(servers: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Sorted by (port, host), duplicates removed."""
    return sorted({(str(h), int(p)) for h, p in servers}, key=lambda hp: (hp[1], hp[0]))


def _addr(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _indent(text: str, n: int) -> list[str]:
    pad = " " * n
    return [pad + line if line.strip() else "" for line in text.strip("\n").splitlines()]


def ready_var(s: NginxSettings) -> str:
    return f"${s.upstream_name}_ready"


def render_upstream(s: NginxSettings, servers: Sequence[tuple[str, int]]) -> bytes:
    """The generated include: upstream block(s) listing ``servers`` (the ready ones; with
    ``upstream_servers: range`` the whole port range while any instance is ready).

    With no server, each upstream holds the placeholder ``server 127.0.0.1:1 down;`` (valid for
    nginx, never connected to) and ``$<name>_ready`` is 0 so the server block answers 503.
    """
    srv = normalize_servers(servers)
    ready = len(srv)
    lines = [HEADER.rstrip("\n"), f"# ready servers: {ready}", ""]
    lines.append(f"geo {ready_var(s)} {{ default {1 if ready else 0}; }}")
    blocks = [(s.upstream_name, s.balance)]
    if s.socketio:
        sticky = "hash $remote_addr consistent" if s.socketio_balance == "hash" else "ip_hash"
        blocks.append((f"{s.upstream_name}_socketio", sticky))
    for name, method in blocks:
        lines.append("")
        lines.append(f"upstream {name} {{")
        if method:
            lines.append(f"    {method};")
        ranged = s.upstream_servers == "range"
        if ranged and srv:
            # shared by the workers: a port found closed is skipped by all of them, and tried
            # again once per fail_timeout, not once per worker (2 x 2 KB per server is plenty)
            lines.append(f"    zone {name} {max(64, 4 * len(srv))}k;")
        if srv:
            max_fails = max(1, s.max_fails) if ranged else s.max_fails
            for host, port in srv:
                params = f" max_fails={max_fails}"
                if max_fails > 0:
                    params += f" fail_timeout={s.fail_timeout}"
                lines.append(f"    server {_addr(host, port)}{params};")
            if ranged and method in BACKUP_BALANCE:
                # When every port is marked failed (an app answering 503 everywhere for a moment
                # is enough, as http_503 counts as a failure), nginx would answer "no live
                # upstreams" until fail_timeout ends; the same ports, never marked, serve instead.
                lines.extend(f"    server {_addr(host, port)} backup max_fails=0;" for host, port in srv)
        else:
            lines.append(f"    server {_addr(*PLACEHOLDER_SERVER)} down;  # no ready instance")
        if s.keepalive > 0:
            lines.append(f"    keepalive {s.keepalive};")
            lines.append(f"    keepalive_requests {s.keepalive_requests};")
            lines.append(f"    keepalive_timeout {s.keepalive_timeout};")
        if s.extra_upstream.strip():
            lines.extend(_indent(s.extra_upstream, 4))
        lines.append("}")
    return ("\n".join(lines) + "\n").encode()


# The traffic log (read by ultrascaled/observe/accesslog.py): only values nginx computes (numbers,
# addresses, statuses), nothing a client sends; escape=json keeps every line one JSON object.
TRAFFIC_FIELDS = ('{"t":$msec,"s":$status,"a":"$upstream_addr","u":"$upstream_status",'
                  '"ut":"$upstream_response_time","rt":$request_time}')


def traffic_format_name(upstream_name: str) -> str:
    return f"{upstream_name}_traffic"


def traffic_log_format(upstream_name: str) -> str:
    """The http-level ``log_format`` directive (named per fleet: two fleets can share a system
    nginx)."""
    return f"log_format {traffic_format_name(upstream_name)} escape=json '{TRAFFIC_FIELDS}';"


def _proxy_common(s: NginxSettings) -> list[str]:
    out = [
        "proxy_http_version 1.1;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        f"proxy_next_upstream {s.proxy_next_upstream};" if s.proxy_next_upstream.strip()
        else "proxy_next_upstream off;",
        f"proxy_next_upstream_tries {0 if s.upstream_servers == 'range' else s.proxy_next_upstream_tries};",
        f"proxy_next_upstream_timeout {s.proxy_next_upstream_timeout};",
        f"proxy_connect_timeout {s.proxy_connect_timeout};",
        f"proxy_send_timeout {s.proxy_send_timeout};",
    ]
    return out


def _limits(s: NginxSettings) -> list[str]:
    out = []
    if s.rate_limit > 0:
        burst = f" burst={s.rate_limit_burst} nodelay" if s.rate_limit_burst > 0 else ""
        out.append(f"limit_req zone={s.upstream_name}_req{burst};")
        out.append(f"limit_req_status {s.rate_limit_status};")
    if s.conn_limit > 0:
        out.append(f"limit_conn {s.upstream_name}_conn {s.conn_limit};")
        out.append(f"limit_conn_status {s.rate_limit_status};")
    return out


def _server_block(s: NginxSettings, tls: bool) -> list[str]:
    name = s.upstream_name
    host = _addr(s.listen_host, s.tls_listen if tls else s.listen)
    b = ["server {"]
    if tls:
        b.append(f"    listen {host} ssl{' http2' if s.http2 else ''};")
    else:
        b.append(f"    listen {host};")
    b.append(f"    server_name {s.server_name};")
    if tls:
        b += [f"    ssl_certificate {s.tls_cert};",
              f"    ssl_certificate_key {s.tls_key};",
              f"    ssl_protocols {s.tls_protocols};",
              "    ssl_session_cache shared:" + name + "_tls:10m;",
              "    ssl_session_timeout 1h;"]
    b += [f"    client_max_body_size {s.client_max_body_size};",
          f"    client_body_buffer_size {s.client_body_buffer_size};"]
    if s.traffic_log_path:   # a server-level access_log replaces the http-level one: keep both
        b.append(f"    access_log {s.traffic_log_path} {traffic_format_name(name)};")
        if s.access_log and s.access_log != "off":
            b.append(f"    access_log {_access_log_path(s)};")
    b += ["    " + x for x in _limits(s)]
    if s.stub_status:
        b += ["", f"    location = {s.stub_status_path} {{", "        stub_status;"]
        b += [f"        allow {a};" for a in s.stub_status_allow]
        b += ["        deny all;", "        access_log off;", "    }"]
    if s.socketio:
        b += ["", f"    location {s.socketio_path} {{",
              f"        if ({ready_var(s)} = 0) {{ return 503; }}"]
        b += ["        " + x for x in _proxy_common(s)]
        b += [f"        proxy_set_header Upgrade $http_upgrade;",
              f"        proxy_set_header Connection ${name}_connection_upgrade;",
              f"        proxy_read_timeout {s.socketio_read_timeout};",
              "        proxy_buffering off;",
              f"        proxy_pass http://{name}_socketio;",
              "    }"]
    b += ["", "    location / {", f"        if ({ready_var(s)} = 0) {{ return 503; }}"]
    b += ["        " + x for x in _proxy_common(s)]
    b += ['        proxy_set_header Connection "";',
          f"        proxy_read_timeout {s.proxy_read_timeout};",
          f"        proxy_buffering {'on' if s.proxy_buffering else 'off'};",
          f"        proxy_buffer_size {s.proxy_buffer_size};",
          f"        proxy_buffers {s.proxy_buffers};",
          f"        proxy_pass http://{name};",
          "    }"]
    if s.extra_server.strip():
        b += [""] + _indent(s.extra_server, 4)
    b.append("}")
    return b


def render_site_conf(s: NginxSettings, upstream_file: str | None = None) -> bytes:
    """http-level configuration: include of the upstream file, maps, zones, server blocks.

    In system mode this is the site file (``etc/nginx/ultrascale.conf``); managed mode embeds it
    in :func:`render_main_conf`.
    """
    up = upstream_file if upstream_file is not None else s.effective_upstream_file
    lines = [HEADER.rstrip("\n")] + _site_lines(s, up)
    return ("\n".join(lines) + "\n").encode()


def _site_lines(s: NginxSettings, up: str) -> list[str]:
    name = s.upstream_name
    lines = [f"include {up};", ""]
    if s.traffic_log_path:   # one JSON line per request, read by the daemon (accesslog.py)
        lines += [traffic_log_format(name), ""]
    if s.socketio:
        lines += [f"map $http_upgrade ${name}_connection_upgrade {{",
                  "    default upgrade;",
                  "    ''      '';",
                  "}", ""]
    if s.rate_limit > 0:
        lines.append(f"limit_req_zone $binary_remote_addr zone={name}_req:{s.limit_zone_size} "
                     f"rate={s.rate_limit}r/s;")
    if s.conn_limit > 0:
        lines.append(f"limit_conn_zone $binary_remote_addr zone={name}_conn:{s.limit_zone_size};")
    if s.rate_limit > 0 or s.conn_limit > 0:
        lines.append("")
    lines += _server_block(s, tls=False)
    if s.tls_enabled:
        lines.append("")
        lines += _server_block(s, tls=True)
    if s.extra_http.strip():
        lines += [""] + _indent(s.extra_http, 0)
    return lines


def render_main_conf(s: NginxSettings, upstream_file: str | None = None) -> bytes:
    """Managed mode: a complete nginx.conf; pid, logs and temp paths all inside ``s.prefix``.

    The master daemonizes (``daemon on``) and writes its pid to ``<prefix>/logs/nginx.pid``; the
    controller reads it and checks the process is the nginx master of this prefix.
    """
    p = s.prefix.rstrip("/")
    tmp = f"{p}/temp"
    lines = [HEADER.rstrip("\n"), "daemon on;", "master_process on;"]
    if s.user:
        lines.append(f"user {s.user};")
    lines += [f"worker_processes {s.worker_processes};"]
    if s.worker_rlimit_nofile > 0:
        lines.append(f"worker_rlimit_nofile {s.worker_rlimit_nofile};")
    lines += [f"worker_shutdown_timeout {s.worker_shutdown_timeout};",
              f"pid {s.pid_path};",
              f"error_log {s.error_log_path} {s.error_log_level};",
              "",
              "events {",
              f"    worker_connections {s.worker_connections};",
              "    multi_accept on;",
              "}",
              "",
              "http {",
              "    default_type application/octet-stream;",
              "    sendfile on;",
              "    tcp_nopush on;",
              "    tcp_nodelay on;",
              "    server_tokens off;",
              f"    keepalive_timeout {s.client_keepalive_timeout};",
              f"    client_header_timeout {s.client_header_timeout};",
              f"    client_body_timeout {s.client_body_timeout};",
              f"    send_timeout {s.send_timeout};",
              f"    client_body_temp_path {tmp}/client_body;",
              f"    proxy_temp_path {tmp}/proxy;",
              f"    fastcgi_temp_path {tmp}/fastcgi;",
              f"    uwsgi_temp_path {tmp}/uwsgi;",
              f"    scgi_temp_path {tmp}/scgi;"]
    if s.access_log == "off" or not s.access_log:
        lines.append("    access_log off;")
    else:
        lines.append(f"    access_log {_access_log_path(s)};")
    lines.append("")
    up = upstream_file if upstream_file is not None else s.effective_upstream_file
    lines += [("    " + x) if x else "" for x in _site_lines(s, up)]
    lines.append("}")
    return ("\n".join(lines) + "\n").encode()


def _access_log_path(s: NginxSettings) -> str:
    p = s.prefix.rstrip("/")
    if os.path.isabs(s.access_log) or s.mode != "managed":
        return s.access_log
    return f"{p}/{s.access_log}"


def example_system_settings() -> NginxSettings:
    """Settings used to generate ``etc/nginx/ultrascale.conf`` (system-mode example)."""
    return NginxSettings(mode="system", upstream_file="/etc/nginx/ultrascale/upstream.conf")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ultrascaled.effects.nginx_render example`` prints the system-mode example site."""
    import sys
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["example"]:
        sys.stdout.write(render_site_conf(example_system_settings()).decode())
        return 0
    if args[:1] == ["upstream-example"]:
        sys.stdout.write(render_upstream(example_system_settings(),
                                         [("127.0.0.1", 8001), ("127.0.0.1", 8000)]).decode())
        return 0
    sys.stderr.write("usage: python -m ultrascaled.effects.nginx_render example|upstream-example\n")
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
