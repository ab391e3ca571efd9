"""The spec's `nginx:` section: its declaration (:class:`NginxSettings`, every knob with its help
text) and the checks of what it may hold (:func:`validate`, :func:`is_host`, :func:`parse_time`).
Pure: the rendering is :mod:`ultrascaled.effects.nginx_render`, the process control
:mod:`ultrascaled.effects.nginx_control`."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

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
    proxy_error_log_level: str = _f("", "error_log level of the locations that pass requests to "
                                    "the instances; '' = crit with upstream_servers: range, so "
                                    "that the tries of ports with no instance (`connect() failed "
                                    "(111)`, `upstream server temporarily disabled`) stay out of "
                                    "the error log (the traffic log keeps each try's port and "
                                    "status, docs/nginx.md#the-static-upstream-upstream_servers-range), "
                                    "else error_log_level; in system mode it writes "
                                    "/var/log/nginx/<upstream_name>.error.log")
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
    static: dict = field(default_factory=dict, metadata={"help": (
        "URL prefixes nginx serves from folders of the app itself, without an instance: "
        "`{\"/static/\": \"staticfiles\"}` serves Django's `collectstatic` output (STATIC_ROOT). "
        "Each folder is relative to the folder the instances run (`app.directory`, or after a "
        "deploy the current release, through the `current` link, so a deploy needs no nginx "
        "reload); a prefix starts and ends with `/` (docs/nginx.md#static-files)"),
        "keys": "url_prefix"}, hash=False)
    static_max_age: str = _f("1h", "how long browsers may cache files under `static` (an nginx "
                             "time, rendered as `expires`: Cache-Control max-age and Expires); "
                             "off = no cache headers. Long (`365d`) only with hashed names "
                             "(Django's ManifestStaticFilesStorage)")
    # Filled in by the spec loader (not spec keys): where `static` folders are found.
    static_app_dir: str = field(default="", metadata={"help": "", "internal": True})
    static_current: str = field(default="", metadata={"help": "", "internal": True})

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
    def proxy_error_log(self) -> tuple[str, str] | None:
        """(path, level) of the proxy locations' own error_log; None = inherit the server's."""
        level = self.proxy_error_log_level or ("crit" if self.upstream_servers == "range" else "")
        if not level or self.mode == "managed" and level == self.error_log_level:
            return None
        if self.mode == "managed":
            return self.error_log_path, level
        return f"/var/log/nginx/{self.upstream_name}.error.log", level

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
        if f.metadata.get("internal"):
            continue
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((f.name, t, default, f.metadata["help"]))
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


_STATIC_PREFIX = re.compile(r"/(?:[A-Za-z0-9._~-]+/)*\Z")
_STATIC_FOLDER = re.compile(r"[A-Za-z0-9._~@+-]+(?:/[A-Za-z0-9._~@+-]+)*/?\Z")


def static_errors(s: NginxSettings) -> list[str]:
    """The `static` mapping: URL prefixes (`/static/`) to folders inside the app folder."""
    if not isinstance(s.static, dict):
        return [f"nginx.static: must be a mapping of URL prefixes to folders, got {s.static!r}"]
    errs: list[str] = []
    prefixes = []
    for prefix, folder in s.static.items():
        at = f"nginx.static: {prefix!r}"
        if not isinstance(prefix, str) or not _STATIC_PREFIX.match(prefix):
            errs.append(f"{at}: a URL prefix must start and end with / and hold only letters, "
                        "digits and . _ ~ - between the slashes, such as /static/")
            continue
        if prefix == "/":
            errs.append(f"{at}: the prefix / would take every request from the instances; "
                        "use a prefix such as /static/")
            continue
        if any(seg in (".", "..") for seg in prefix.strip("/").split("/")):
            errs.append(f"{at}: a URL prefix must not hold . or .. segments")
            continue
        prefixes.append(prefix)
        if not isinstance(folder, str) or not folder:
            errs.append(f"{at}: the folder must be a path relative to the app folder, got {folder!r}")
            continue
        if os.path.isabs(folder) or folder.startswith("~"):
            errs.append(f"{at}: the folder {folder!r} must be relative to the app folder (the one "
                        "the instances run: app.directory or the current release), not absolute")
        elif ".." in folder.split("/"):
            errs.append(f"{at}: the folder {folder!r} must stay inside the app folder (no ..)")
        elif os.path.normpath(folder) == ".":
            errs.append(f"{at}: the folder {folder!r} is the app folder itself, which would serve "
                        "its source code and settings; name the folder collectstatic fills "
                        "(STATIC_ROOT), such as staticfiles")
        elif not _STATIC_FOLDER.match(folder):
            errs.append(f"{at}: the folder {folder!r} must hold only letters, digits, . _ ~ @ + - "
                        "and / (no spaces, quotes, ; { } # or backslashes)")
    if s.static:
        for name, key in (("static_app_dir", "app.directory"), ("static_current", "deploy.releases_dir")):
            v = getattr(s, name)
            if name == "static_app_dir" and not os.path.isabs(v):
                errs.append(f"nginx.static: the app folder is unknown ({key} not resolved)")
            elif v and (not re.match(rf"{_WORD}+\Z", v) or _UNSAFE & set(v) or "$" in v):
                errs.append(f"nginx.static: nginx reads the folders under {key} ({v}), whose path "
                            "must not hold spaces, ; { } quotes, #, $ or backslashes")
    for p in prefixes:
        for q in prefixes:
            if p != q and q.startswith(p):
                errs.append(f"nginx.static: {q!r} is inside {p!r}: prefixes must not nest")
    for name in ("stub_status_path", "socketio_path"):
        if name == "stub_status_path" and not s.stub_status or name == "socketio_path" and not s.socketio:
            continue
        path = getattr(s, name)
        for p in prefixes:
            if path.startswith(p) or p.startswith(path.rstrip("/") + "/"):
                errs.append(f"nginx.static: {p!r} overlaps nginx.{name} ({path})")
    if s.static_max_age != "off" and parse_time(s.static_max_age) is None:
        errs.append(f"nginx.static_max_age: must be an nginx time such as 1h, 30d or 365d, or off, "
                    f"got {s.static_max_age!r}")
    return errs


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
    if s.proxy_error_log_level and s.proxy_error_log_level not in _LOG_LEVELS:
        bad("proxy_error_log_level", f"must be '' or one of {', '.join(_LOG_LEVELS)}")
    if s.access_log != "off" and (not re.match(rf"{_WORD}+\Z", s.access_log)
                                  or _UNSAFE & set(s.access_log)):
        bad("access_log", "must be off or a path without spaces, ; { } quotes or #")
    elif s.mode == "system" and s.access_log not in ("", "off") and not os.path.isabs(s.access_log):
        bad("access_log", "must be an absolute path in system mode (or off)")
    if s.traffic_log and (not re.match(rf"{_WORD}+\Z", s.traffic_log) or _UNSAFE & set(s.traffic_log)):
        bad("traffic_log", "must be off, '' or a path without spaces, ; { } quotes, # or backslashes")
    elif s.mode == "system" and s.traffic_log not in ("", "off") and not os.path.isabs(s.traffic_log):
        bad("traffic_log", "must be an absolute path in system mode (or '' or off)")
    if s.traffic_log_path and s.access_log not in ("", "off") and \
            os.path.normpath(access_log_path(s)) == os.path.normpath(s.traffic_log_path):
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
    return errs + _syntax_errors(s) + static_errors(s)


# Rendering ------------------------------------------------------------------------------------


def access_log_path(s: NginxSettings) -> str:
    """Where nginx writes its access log: a relative path is under the managed prefix."""
    p = s.prefix.rstrip("/")
    if os.path.isabs(s.access_log) or s.mode != "managed":
        return s.access_log
    return f"{p}/{s.access_log}"
