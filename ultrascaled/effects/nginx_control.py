"""nginx control for ultrascaled: atomic config writes and the :class:`NginxController`.

The pure rendering lives in :mod:`ultrascaled.effects.nginx_render` (re-exported here).  This module is the
thin OS layer: files, subprocesses, signals.  Side effects sit behind two small injectable
interfaces so unit tests can pass fakes:

* ``runner(argv, timeout) -> RunResult`` runs a command (``nginx -t``, ``nginx -s reload``, the
  managed master's start command);
* :class:`ProcessOps` reads the pid file, recognises an nginx master, lists its workers and sends
  signals (psutil-backed by default).

Cycle of :meth:`NginxController.apply`: render -> write only if changed (atomic) -> ``nginx -t``
-> reload (HUP to the managed master, or ``reload_command``) -> wait until the new workers run
and the old ones are shutting down -> done.  A failed check or reload restores the previous file
bytes; nginx keeps serving the old upstream; the result says why.  Nothing here raises for an
nginx failure.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Sequence

import psutil
import structlog

from ultrascaled.effects.files import restore_file, write_atomic
from ultrascaled.effects.nginx_render import normalize_servers, render_main_conf, render_upstream
from ultrascaled.spec.nginx import NginxSettings, validate

log = structlog.get_logger("ultrascaled.effects.nginx_control")

Server = tuple[str, int]

# Result codes (closed set).  Temporary ones are worth retrying with backoff; permanent ones mean
# the input (servers or settings) is rejected by nginx and retrying the same input is useless.
OK = "ok"
UNCHANGED = "unchanged"
DISABLED = "disabled"
WRITE_FAILED = "write_failed"      # temporary (disk full, permissions fixed later)
CHECK_FAILED = "check_failed"      # permanent for this input
RELOAD_FAILED = "reload_failed"    # temporary
START_FAILED = "start_failed"      # temporary (port busy, binary missing is permanent-ish)
INVALID_SETTINGS = "invalid_settings"  # permanent
TEMPORARY_CODES = frozenset({WRITE_FAILED, RELOAD_FAILED, START_FAILED})

SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin", "/sbin")


# Commands -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        return "\n".join(x for x in (self.stderr.strip(), self.stdout.strip()) if x)


Runner = Callable[[Sequence[str], float], Awaitable[RunResult]]


async def run_command(argv: Sequence[str], timeout: float) -> RunResult:
    """Run ``argv`` without a shell; kill it after ``timeout`` s.  Never raises for failures."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as e:
        return RunResult(127, "", f"{argv[0]}: {e}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 2)
        return RunResult(-9, "", f"{' '.join(argv)}: timed out after {timeout:g}s")
    return RunResult(proc.returncode if proc.returncode is not None else -1,
                     out.decode(errors="replace"), err.decode(errors="replace"))


def find_binary(name: str) -> str:
    """Absolute path of the nginx binary: ``name`` if it has a slash, else PATH, else SEARCH_DIRS.

    Returns ``name`` unchanged when nothing is found (the command then fails with 127)."""
    if os.sep in name:
        return name
    found = shutil.which(name)
    if found:
        return found
    for d in SEARCH_DIRS:
        cand = os.path.join(d, name)
        if os.access(cand, os.X_OK):
            return cand
    return name


_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@~-]*\Z")


@functools.lru_cache(maxsize=8)
def find_mime_types(binary: str) -> str | None:
    """nginx's own mime.types: beside the conf path it was built with (``nginx -V``
    ``--conf-path``), else in the usual places; None when there is none (the managed
    config then lists the common types itself, see nginx_render.COMMON_TYPES)."""
    cands = []
    try:
        out = subprocess.run([binary, "-V"], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=10)
        info = out.stderr + out.stdout
        m = re.search(r"--conf-path=(\S+)", info)
        if m:
            cands.append(os.path.join(os.path.dirname(m.group(1)), "mime.types"))
        m = re.search(r"--prefix=(\S+)", info)
        if m:
            cands.append(os.path.join(m.group(1), "conf", "mime.types"))
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    if os.sep in binary:   # a source build: <prefix>/sbin/nginx beside <prefix>/conf
        cands.append(os.path.join(os.path.dirname(os.path.dirname(binary)), "conf", "mime.types"))
    cands += ["/etc/nginx/mime.types", "/usr/local/etc/nginx/mime.types",
              "/usr/local/nginx/conf/mime.types"]
    for c in cands:
        c = os.path.normpath(c)
        if _SAFE_PATH.match(c) and os.path.isfile(c) and os.access(c, os.R_OK):
            return c
    return None


# Atomic files -------------------------------------------------------------------------------

# Processes ----------------------------------------------------------------------------------

class ProcessOps:
    """psutil-backed process inspection and signals (replace with a fake in unit tests)."""

    def read_pid(self, path: str) -> int | None:
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _proc(self, pid: int) -> psutil.Process | None:
        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return None

    def alive(self, pid: int) -> bool:
        return self._proc(pid) is not None

    def is_master(self, pid: int, prefix: str | None = None) -> bool:
        """True if ``pid`` is a live nginx master (of ``prefix`` when given)."""
        p = self._proc(pid)
        if p is None:
            return False
        try:
            title = " ".join(p.cmdline())
            name = p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
        if "nginx" not in name and "nginx" not in title:
            return False
        if "master process" not in title:
            return False
        if prefix is not None:
            words = title.split()
            for i, w in enumerate(words[:-1]):
                if w == "-p" and os.path.normpath(words[i + 1]) == os.path.normpath(prefix):
                    return True
            return False
        return True

    def workers(self, pid: int) -> dict[int, str]:
        """Worker processes of master ``pid``: {pid: title}.  Titles end in "is shutting down"
        for workers of an older configuration."""
        p = self._proc(pid)
        if p is None:
            return {}
        out: dict[int, str] = {}
        try:
            children = p.children()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return {}
        for c in children:
            try:
                if c.status() == psutil.STATUS_ZOMBIE:
                    continue
                title = " ".join(c.cmdline()).strip()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if "worker process" in title:
                out[c.pid] = title
        return out

    def strays(self, prefix: str) -> list[int]:
        """nginx processes (e.g. workers orphaned by a killed master) holding a file open under
        ``prefix``; they keep the listening socket and would make a new master's bind fail."""
        root = os.path.normpath(prefix) + os.sep
        out = []
        for p in psutil.process_iter(["name"]):
            try:
                if p.info["name"] != "nginx" or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if any(f.path.startswith(root) for f in p.open_files()):
                    out.append(p.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def signal(self, pid: int, sig: int) -> bool:
        try:
            os.kill(pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False


# Controller ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ApplyResult:
    """Outcome of start/apply/reconfigure/ensure_running.

    ok: nginx now serves ``servers``; code: one of ok, unchanged, disabled, write_failed,
    check_failed, reload_failed, start_failed, invalid_settings; changed: the file was rewritten
    (and kept); reloaded: a reload took effect; restarted: the managed master was (re)started;
    error: nginx's message (stderr / error log) on failure; duration: seconds spent.
    """
    ok: bool
    code: str
    servers: tuple[Server, ...] = ()
    changed: bool = False
    reloaded: bool = False
    restarted: bool = False
    error: str = ""
    duration: float = 0.0

    @property
    def retryable(self) -> bool:
        return self.code in TEMPORARY_CODES


class NginxController:
    """Keeps nginx's upstream in step with the ready instances.

    ``settings.mode``: ``managed`` runs (or adopts) an nginx master in ``settings.prefix``;
    ``system`` rewrites ``upstream_file`` and reloads the system nginx with ``reload_command``;
    ``off`` makes every call a no-op returning code ``disabled``.

    All public coroutines are serialized by one lock and never raise for nginx failures.
    """

    def __init__(self, settings: NginxSettings, *, runner: Runner = run_command,
                 procs: ProcessOps | None = None, binary: str | None = None,
                 clock: Callable[[], float] = time.time,
                 poll_interval: float = 0.02, mime_types: str | None | bool = True) -> None:
        self.settings = settings
        # True: look for nginx's mime.types at the first write; a path; None = the common types
        self._mime_types = mime_types
        self.runner = runner
        self.procs = procs or ProcessOps()
        self.binary = binary or find_binary(settings.binary)
        self.clock = clock
        self.poll = poll_interval
        self._lock = asyncio.Lock()
        self.pid: int | None = None
        self.adopted = False
        self._in_effect: tuple[Server, ...] | None = None  # None = unknown
        self._last: dict = {"at": None, "code": None, "error": "", "ok": None}
        self.reload_count = 0
        self.failure_count = 0
        self.restart_count = 0

    # Paths and commands ---------------------------------------------------------------------
    @property
    def mime_types(self) -> str | None:
        """nginx's mime.types the managed config includes (None: the common types inline)."""
        if self._mime_types is True:
            self._mime_types = find_mime_types(self.binary)
            log.info("nginx.mime_types", source=self._mime_types or "built-in common types")
        return self._mime_types or None

    @property
    def upstream_file(self) -> str:
        return self.settings.effective_upstream_file

    def _resolve(self, argv: Sequence[str]) -> list[str]:
        argv = list(argv)
        if argv and argv[0] in ("nginx", self.settings.binary) and os.sep not in argv[0]:
            argv[0] = self.binary
        return argv

    def _managed_args(self) -> list[str]:
        s = self.settings
        return ["-p", os.path.normpath(s.prefix) + "/", "-c", s.conf_path,
                "-e", s.error_log_path]

    def test_argv(self) -> list[str]:
        if self.settings.mode == "managed":
            return [self.binary, "-t", "-q", *self._managed_args()]
        return self._resolve(self.settings.test_command)

    def start_argv(self) -> list[str]:
        return [self.binary, *self._managed_args()]

    # Public API ----------------------------------------------------------------------------
    async def start(self, servers: Iterable[Server] | None = None) -> ApplyResult:
        """Managed: write conf + upstream, check, start (or adopt) the master, wait until it
        listens.  System: write the upstream (when ``servers`` given), check that the include
        is in effect (``nginx -T`` lists it) and reload.  ``servers=None`` keeps an existing
        upstream file (empty upstream if none)."""
        async with self._lock:
            return await self._start(servers)

    async def apply(self, servers: Iterable[Server]) -> ApplyResult:
        """Make nginx route to exactly ``servers``; returns once the reload has taken effect
        (new workers running, old ones shutting down), so a removed instance can be stopped."""
        async with self._lock:
            return await self._apply(normalize_servers(servers))

    async def ensure_running(self) -> ApplyResult:
        """Managed: restart the master if it died (with the upstream last in effect)."""
        async with self._lock:
            return await self._ensure_running()

    async def reconfigure(self, settings: NginxSettings) -> ApplyResult:
        """Switch to new settings (spec reload): rewrite the main conf (managed) and upstream,
        check, reload; on failure restore both files and keep the old settings.  Changing
        ``mode`` or ``prefix`` needs stop() + a new controller (code invalid_settings)."""
        async with self._lock:
            return await self._reconfigure(settings)

    async def stop(self) -> bool:
        """Managed: SIGQUIT (graceful), wait ``stop_timeout``, then SIGKILL master and workers
        by pid.  True when no process of the master is left.  System/off: nothing to stop."""
        async with self._lock:
            return await self._stop()

    async def reopen_logs(self) -> bool:
        """Managed: USR1 to the master, which reopens its log files (after a rotation renamed
        them). System mode: False; the host's logrotate rotates the system nginx's logs."""
        async with self._lock:
            s = self.settings
            if s.mode != "managed" or self.pid is None or not self.procs.is_master(self.pid, s.prefix):
                return False
            return self.procs.signal(self.pid, signal.SIGUSR1)

    def config_stamp(self) -> tuple:
        """(path, mtime) of the main configuration (managed mode) or the folder holding the
        upstream file (system mode, where the site's files live beside it)."""
        s = self.settings
        paths = [s.conf_path] if s.mode == "managed" else [os.path.dirname(self.upstream_file)]
        out = []
        for p in paths:
            try:
                out.append((p, os.stat(p).st_mtime_ns))
            except OSError:
                out.append((p, None))
        return tuple(out)

    def status(self) -> dict:
        s = self.settings
        running = False
        workers: list[int] = []
        if s.mode == "managed" and self.pid is not None:
            running = self.procs.is_master(self.pid, s.prefix)
            if running:
                workers = sorted(self.procs.workers(self.pid))
        elif s.mode == "system":
            running = None  # type: ignore[assignment]  # not ours to know cheaply
        return {
            "mode": s.mode,
            "running": running,
            "pid": self.pid if running else None,
            "adopted": self.adopted,
            "worker_pids": workers,
            "listen": f"{s.listen_host}:{s.listen}" if s.mode == "managed" else None,
            "upstream_file": self.upstream_file,
            "servers": [f"{h}:{p}" for h, p in self._in_effect] if self._in_effect is not None
            else None,
            "last_reload_at": self._last["at"],
            "last_result": self._last["code"],
            "last_ok": self._last["ok"],
            "last_error": self._last["error"],
            "reload_count": self.reload_count,
            "failure_count": self.failure_count,
            "restart_count": self.restart_count,
        }

    # Internals ------------------------------------------------------------------------------
    def _result(self, t0: float, ok: bool, code: str, servers: Sequence[Server] = (),
                **kw) -> ApplyResult:
        r = ApplyResult(ok=ok, code=code, servers=tuple(servers),
                        duration=round(time.monotonic() - t0, 4), **kw)
        if code not in (UNCHANGED, DISABLED):
            self._last = {"at": self.clock(), "code": code, "error": r.error, "ok": ok}
        if not ok:
            self.failure_count += 1
            log.warning("nginx.failed", code=code, error=r.error[-2000:], servers=len(servers))
        return r

    def _render_upstream_for(self, servers: Sequence[Server] | None) -> bytes:
        if servers is None:
            try:
                with open(self.upstream_file, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                servers = ()
        return render_upstream(self.settings, servers)

    @staticmethod
    def _servers_in(data: bytes) -> tuple[Server, ...]:
        """Servers listed in an upstream file we rendered (first upstream block)."""
        out: list[Server] = []
        in_block = False
        for line in data.decode(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("upstream "):
                if in_block or out:
                    break
                in_block = True
            elif in_block and line.startswith("server ") and " down;" not in line and " backup " not in line:
                addr = line.split()[1].rstrip(";")
                host, _, port = addr.rpartition(":")
                out.append((host.strip("[]"), int(port)))
            elif in_block and line == "}":
                break
        return tuple(out)

    async def _check(self) -> RunResult:
        r = await self.runner(self.test_argv(), self.settings.command_timeout)
        return r

    def _err_size(self) -> int:
        try:
            return os.path.getsize(self.settings.error_log_path)
        except OSError:
            return 0

    def _err_since(self, pos: int) -> str:
        try:
            with open(self.settings.error_log_path, "rb") as f:
                f.seek(pos)
                return f.read(65536).decode(errors="replace")
        except OSError:
            return ""

    async def _wait_new_generation(self, pid: int, before: dict[int, str], timeout: float,
                                   err_pos: int | None) -> tuple[bool, str]:
        """Wait until ``pid`` has a worker not in ``before`` and every active worker of
        ``before`` is gone or shutting down.  (False, message) on timeout, master death or an
        [emerg] in the error log."""
        old_active = {p for p, t in before.items() if "shutting down" not in t}
        deadline = time.monotonic() + timeout
        while True:
            now = self.procs.workers(pid)
            new = [p for p, t in now.items() if p not in before and "shutting down" not in t]
            if new and all(p not in now or "shutting down" in now[p] for p in old_active):
                return True, ""
            if not self.procs.alive(pid):
                return False, f"nginx master {pid} exited during reload"
            if err_pos is not None:
                text = self._err_since(err_pos)
                if "[emerg]" in text:
                    return False, text.strip()
            if time.monotonic() > deadline:
                extra = self._err_since(err_pos) if err_pos is not None else ""
                return False, (f"reload did not take effect within {timeout:g}s "
                               f"(no new nginx workers) {extra}").strip()
            await asyncio.sleep(self.poll)

    async def _reload(self) -> tuple[bool, str]:
        s = self.settings
        if s.mode == "managed":
            pid = self.pid
            if pid is None or not self.procs.is_master(pid, s.prefix):
                return False, "managed nginx master is not running"
            before = self.procs.workers(pid)
            pos = self._err_size()
            if not self.procs.signal(pid, signal.SIGHUP):
                return False, f"cannot signal nginx master {pid}"
            return await self._wait_new_generation(pid, before, s.reload_timeout, pos)
        # system mode
        mpid = self.procs.read_pid(s.system_pid_file)
        if mpid is not None and not self.procs.is_master(mpid):
            mpid = None
        before = self.procs.workers(mpid) if mpid else {}
        r = await self.runner(self._resolve(s.reload_command), s.command_timeout)
        if not r.ok:
            return False, r.output or f"reload command exited {r.returncode}"
        if mpid:
            return await self._wait_new_generation(mpid, before, s.reload_timeout, None)
        return True, ""

    def _prepare_prefix(self) -> None:
        p = self.settings.prefix
        for sub in ("conf", "logs", "temp"):
            os.makedirs(os.path.join(p, sub), exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(self.upstream_file)), exist_ok=True)

    async def _start(self, servers: Iterable[Server] | None) -> ApplyResult:
        t0 = time.monotonic()
        s = self.settings
        if s.mode == "off":
            return self._result(t0, True, DISABLED)
        errs = validate(s)
        if errs:
            return self._result(t0, False, INVALID_SETTINGS, error="; ".join(errs))
        srv = None if servers is None else normalize_servers(servers)
        if s.mode == "system":
            return await self._start_system(t0, srv)
        return await self._start_managed(t0, srv)

    async def _start_system(self, t0: float, srv: list[Server] | None) -> ApplyResult:
        s = self.settings
        if srv is not None:
            res = await self._apply(srv)
            if not res.ok:
                return res
        r = await self.runner(self._dump_argv(), s.command_timeout)
        if not r.ok:
            return self._result(t0, False, CHECK_FAILED, error=r.output)
        if f"# configuration file {self.upstream_file}:" not in r.stdout:
            return self._result(
                t0, False, CHECK_FAILED,
                error=f"{self.upstream_file} is not included in the system nginx configuration "
                      f"(see docs/nginx.md: include it at http level)")
        if srv is None:
            try:
                with open(self.upstream_file, "rb") as f:
                    self._in_effect = self._servers_in(f.read())
            except OSError:
                self._in_effect = None
        log.info("nginx.system_ready", upstream_file=self.upstream_file)
        return self._result(t0, True, OK, self._in_effect or ())

    def _dump_argv(self) -> list[str]:
        argv = self._resolve(self.settings.test_command)
        return [a if a != "-t" else "-T" for a in argv] if "-t" in argv else [*argv, "-T"]

    async def _write_managed_files(self, srv: Sequence[Server] | None
                                   ) -> tuple[list[tuple[str, bytes | None]], bool, bytes]:
        """Write main conf + upstream; returns (undo list, changed, upstream bytes)."""
        s = self.settings
        undo: list[tuple[str, bytes | None]] = []
        up_bytes = self._render_upstream_for(srv)
        changed = False
        for path, data in ((self.upstream_file, up_bytes),
                           (s.conf_path, render_main_conf(s, self.upstream_file, self.mime_types))):
            w = write_atomic(path, data)
            if w.changed:
                undo.append((path, w.previous))
                changed = True
        return undo, changed, up_bytes

    @staticmethod
    def _undo(undo: list[tuple[str, bytes | None]]) -> None:
        for path, prev in reversed(undo):
            with contextlib.suppress(OSError):
                restore_file(path, prev)

    async def _start_managed(self, t0: float, srv: list[Server] | None) -> ApplyResult:
        s = self.settings
        try:
            self._prepare_prefix()
            undo, changed, up_bytes = await self._write_managed_files(srv)
        except OSError as e:
            return self._result(t0, False, WRITE_FAILED, error=str(e))
        servers = self._servers_in(up_bytes)
        chk = await self._check()
        if not chk.ok:
            self._undo(undo)
            return self._result(t0, False, CHECK_FAILED, servers, error=chk.output)
        pid = self.procs.read_pid(s.pid_path)
        if pid is not None and self.procs.is_master(pid, s.prefix):
            # A master of this prefix from a previous run: adopt it, and reload so it surely
            # runs the files now on disk.
            self.pid, self.adopted = pid, True
            ok, err = await self._reload()
            if not ok:
                self._undo(undo)
                self._in_effect = None
                return self._result(t0, False, RELOAD_FAILED, servers, error=err)
            self._in_effect = servers
            self.reload_count += 1
            log.info("nginx.adopted", pid=pid, prefix=s.prefix, servers=len(servers))
            return self._result(t0, True, OK, servers, changed=changed, reloaded=True)
        self.adopted = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(s.pid_path)  # stale
        strays = self.procs.strays(s.prefix)
        if strays:
            log.warning("nginx.killing_strays", pids=strays)
            for p in strays:
                self.procs.signal(p, signal.SIGKILL)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and any(self.procs.alive(p) for p in strays):
                await asyncio.sleep(self.poll)
        pos = self._err_size()
        r = await self.runner(self.start_argv(), s.start_timeout)
        if not r.ok:
            return self._result(t0, False, START_FAILED, servers,
                                error=r.output or self._err_since(pos).strip())
        ok, err = await self._wait_started()
        if not ok:
            return self._result(t0, False, START_FAILED, servers,
                                error=(err + " " + self._err_since(pos)).strip())
        self._in_effect = servers
        self.restart_count += 1
        log.info("nginx.started", pid=self.pid, listen=f"{s.listen_host}:{s.listen}",
                 servers=len(servers))
        return self._result(t0, True, OK, servers, changed=changed, restarted=True)

    async def _wait_started(self) -> tuple[bool, str]:
        s = self.settings
        deadline = time.monotonic() + s.start_timeout
        while time.monotonic() < deadline:
            pid = self.procs.read_pid(s.pid_path)
            if pid is not None and self.procs.is_master(pid, s.prefix) and self.procs.workers(pid):
                self.pid = pid
                if await self._listening(s.listen_host, s.listen):
                    return True, ""
            await asyncio.sleep(self.poll * 2)
        return False, f"nginx did not start listening on {s.listen_host}:{s.listen} " \
                      f"within {s.start_timeout:g}s"

    @staticmethod
    async def _listening(host: str, port: int) -> bool:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()
        return True

    async def _ensure_running(self) -> ApplyResult:
        t0 = time.monotonic()
        s = self.settings
        if s.mode != "managed":
            return self._result(t0, True, DISABLED if s.mode == "off" else UNCHANGED)
        if self.pid is not None and self.procs.is_master(self.pid, s.prefix):
            return self._result(t0, True, UNCHANGED, self._in_effect or ())
        log.warning("nginx.master_died", pid=self.pid)
        self.pid = None
        srv = list(self._in_effect) if self._in_effect is not None else None
        return await self._start_managed(t0, srv)

    async def _apply(self, srv: list[Server]) -> ApplyResult:
        t0 = time.monotonic()
        s = self.settings
        if s.mode == "off":
            return self._result(t0, True, DISABLED, srv)
        if s.mode == "managed" and (self.pid is None or
                                    not self.procs.is_master(self.pid, s.prefix)):
            if self.pid is not None:
                log.warning("nginx.master_died", pid=self.pid)
            self.pid = None
            return await self._start_managed(t0, srv)
        data = render_upstream(s, srv)
        try:
            w = write_atomic(self.upstream_file, data)
        except OSError as e:
            return self._result(t0, False, WRITE_FAILED, srv, error=str(e))
        if not w.changed and self._in_effect == tuple(srv):
            return self._result(t0, True, UNCHANGED, srv)
        undo = [(self.upstream_file, w.previous)] if w.changed else []
        chk = await self._check()
        if not chk.ok:
            self._undo(undo)
            log.warning("nginx.rolled_back", stage="check")
            return self._result(t0, False, CHECK_FAILED, srv, error=chk.output)
        ok, err = await self._reload()
        if not ok:
            self._undo(undo)
            self._in_effect = None  # the reload may or may not have happened
            log.warning("nginx.rolled_back", stage="reload")
            return self._result(t0, False, RELOAD_FAILED, srv, error=err)
        self._in_effect = tuple(srv)
        self.reload_count += 1
        log.info("nginx.reloaded", servers=len(srv), changed=w.changed,
                 took=round(time.monotonic() - t0, 3))
        return self._result(t0, True, OK, srv, changed=w.changed, reloaded=True)

    async def _reconfigure(self, new: NginxSettings) -> ApplyResult:
        t0 = time.monotonic()
        old = self.settings
        if (new.mode, new.prefix, new.effective_upstream_file) != \
                (old.mode, old.prefix, old.effective_upstream_file):
            return self._result(t0, False, INVALID_SETTINGS,
                                error="mode, prefix and upstream_file changes need a restart")
        errs = validate(new)
        if errs:
            return self._result(t0, False, INVALID_SETTINGS, error="; ".join(errs))
        if new.mode == "off":
            self.settings = new
            return self._result(t0, True, DISABLED)
        srv = list(self._in_effect) if self._in_effect is not None else None
        self.settings = new
        undo: list[tuple[str, bytes | None]] = []
        try:
            if new.mode == "managed":
                undo, changed, up = await self._write_managed_files(srv)
            else:
                w = write_atomic(self.upstream_file, self._render_upstream_for(srv))
                undo = [(self.upstream_file, w.previous)] if w.changed else []
                changed = w.changed
        except OSError as e:
            self._undo(undo)
            self.settings = old
            return self._result(t0, False, WRITE_FAILED, error=str(e))
        if not changed:
            return self._result(t0, True, UNCHANGED, srv or ())
        chk = await self._check()
        if not chk.ok:
            self._undo(undo)
            self.settings = old
            return self._result(t0, False, CHECK_FAILED, srv or (), error=chk.output)
        ok, err = await self._reload()
        if not ok:
            self._undo(undo)
            self.settings = old
            self._in_effect = None
            return self._result(t0, False, RELOAD_FAILED, srv or (), error=err)
        self.reload_count += 1
        log.info("nginx.reconfigured")
        return self._result(t0, True, OK, srv or (), changed=True, reloaded=True)

    async def _stop(self) -> bool:
        s = self.settings
        if s.mode != "managed":
            return True
        pid = self.pid
        if pid is None:
            cand = self.procs.read_pid(s.pid_path)
            if cand is not None and self.procs.is_master(cand, s.prefix):
                pid = cand
        if pid is None or not self.procs.is_master(pid, s.prefix):
            self.pid = None
            return True
        children = set(self.procs.workers(pid))
        self.procs.signal(pid, signal.SIGQUIT)
        deadline = time.monotonic() + s.stop_timeout
        while time.monotonic() < deadline:
            children |= set(self.procs.workers(pid))
            if not self.procs.alive(pid):
                break
            await asyncio.sleep(self.poll * 2)
        else:
            log.warning("nginx.stop_timeout", pid=pid)
            self.procs.signal(pid, signal.SIGKILL)
        for c in children:  # workers left behind by a killed master
            if self.procs.alive(c):
                self.procs.signal(c, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(self.procs.alive(p) for p in {pid, *children}):
            await asyncio.sleep(self.poll)
        gone = not any(self.procs.alive(p) for p in {pid, *children})
        log.info("nginx.stopped", pid=pid, clean=gone)
        self.pid = None
        self._in_effect = None
        return gone
