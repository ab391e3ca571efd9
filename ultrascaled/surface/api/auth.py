"""Who may call the API and from where: `Settings`, tokens and credentials, Host/Origin rules, TLS."""
from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import os
import re
import ssl
import stat

from ultrascaled.spec import Spec

# ---- settings -------------------------------------------------------------------------------

LOOPBACK_NAMES = ("localhost",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Token:
    name: str
    secret: str


@dataclasses.dataclass(frozen=True)
class Credentials:
    admin: tuple[Token, ...] = ()     # api.token_file: every endpoint
    metrics: tuple[Token, ...] = ()   # api.metrics_token_file: GET /metrics only
    viewer: tuple[Token, ...] = ()    # api.viewer_token_file: every read, no mutation

    def who(self, header: str, metrics: bool = False, viewer: bool = False) -> str | None:
        """The name of the token in an `Authorization: Bearer ...` header, or None. `metrics`,
        `viewer`: a token of those files counts too (for a /metrics scrape, for a read)."""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        found = None
        extra = (self.metrics if metrics else ()) + (self.viewer if viewer else ())
        for t in self.admin + extra:  # compare with every token: no early exit
            if hmac.compare_digest(given.strip().encode(), t.secret.encode()) and found is None:
                found = t.name
        return found


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body: int = 64 * 1024          # client_max_size: bytes of a request body
    idle_timeout: float = 10.0         # idle or half-sent-headers connection closed after this
    body_timeout: float = 10.0         # a request body must arrive within this
    max_connections: int = 256         # open connections; the next gets 503 too_many_requests
    max_followers: int = 32            # concurrent `GET /events?follow=1`
    write_timeout: float = 30.0        # an event follower that takes no data for this long is dropped
    max_line_size: int = 8190          # request line and header sizes (aiohttp's parser)
    max_field_size: int = 8190


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9000
    tls: bool = False
    allowed_hosts: tuple[str, ...] = ()
    credentials: Credentials = Credentials()
    limits: Limits = Limits()

    @property
    def reads_need_token(self) -> bool:
        """Off loopback everything is protected; on loopback only mutations (when a token exists)."""
        return not is_loopback(self.host)

    def host_ok(self, header: str) -> bool:
        """Whether a Host header (or an Origin's host part) names this API (DNS rebinding)."""
        name, port = split_host(header)
        default = 443 if self.tls else 80
        if port is None:
            port = default
        if port != self.port:
            return False
        names = {self.host.lower(), "localhost", "127.0.0.1", "::1",
                 *(h.lower() for h in self.allowed_hosts)}
        return name.lower() in names

    @classmethod
    def from_spec(cls, spec: Spec, credentials: Credentials) -> "Settings":
        api = spec.api
        base = Limits()
        limits = Limits(**{f.name: getattr(api, f.name, getattr(base, f.name))
                           for f in dataclasses.fields(Limits)})
        return cls(host=api.host, port=api.port, tls=bool(getattr(api, "tls_cert", None)),
                   allowed_hosts=tuple(getattr(api, "allowed_hosts", ()) or ()),
                   credentials=credentials, limits=limits)


def split_host(value: str) -> tuple[str, int | None]:
    """`name:port`, `[v6]:port`, `name` → (name, port or None); a bad port gives port -1."""
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    else:
        name, sep, port = value.rpartition(":")
        if not sep:
            name, port = value, None
    if port is None:
        return name, None
    return name, int(port) if re.fullmatch(r"[0-9]{1,5}", port) else -1


# ---- tokens ---------------------------------------------------------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def read_token_file(path: str, key: str) -> tuple[Token, ...]:
    """The tokens in a file of `name:token` or `token` lines (`token` is named "token").

    Refused, with the reason: a missing file, a symlink, a file not owned by the daemon's user,
    or one that group or others may read or write (tokens must not leak to other local users)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"{key}: {path} does not exist; create it (mode 600) holding one "
                         f"`name:token` or `token` line")
    except OSError as exc:
        raise ValueError(f"{key}: cannot open {path}: {exc.strerror}"
                         + (" (a symlink is refused)" if os.path.islink(path) else ""))
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{key}: {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise ValueError(f"{key}: {path} is owned by uid {st.st_uid}, not by the daemon's user "
                             f"(uid {os.geteuid()}); chown it to that user")
        if st.st_mode & 0o077:
            raise ValueError(f"{key}: {path} has mode {stat.S_IMODE(st.st_mode):o}: group and others "
                             f"may access it; chmod 600 {path}")
        text = f.read()
    tokens = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep or not NAME_RE.fullmatch(name):
            name, secret = "token", line
        tokens.append(Token(name, secret))
    if not tokens:
        raise ValueError(f"{key}: {path} holds no token")
    return tuple(tokens)


def read_token(spec: Spec) -> Credentials:
    """The API's tokens from the spec's token files; ValueError with the reason when refused.

    A non-loopback API without a token is refused here too (the spec check says so first)."""
    admin = read_token_file(spec.api.token_file, "api.token_file") if spec.api.token_file else ()
    mfile = getattr(spec.api, "metrics_token_file", None)
    metrics = read_token_file(mfile, "api.metrics_token_file") if mfile else ()
    vfile = getattr(spec.api, "viewer_token_file", None)
    viewer = read_token_file(vfile, "api.viewer_token_file") if vfile else ()
    if not admin and not is_loopback(spec.api.host):
        raise ValueError(f"api.token_file: the API binds {spec.api.host}, which is not loopback, "
                         "so it needs a token file")
    return Credentials(admin, metrics, viewer)


def tls_context(spec: Spec) -> ssl.SSLContext | None:
    """The server TLS context from api.tls_cert and api.tls_key, or None for plain HTTP."""
    cert, key = getattr(spec.api, "tls_cert", None), getattr(spec.api, "tls_key", None)
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("api.tls_cert and api.tls_key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"api.tls_cert/api.tls_key: cannot load {cert} and {key}: {exc}")
    return ctx
