"""Helpers shared by the setups and the scenarios.

* :class:`Tracker` starts every process of a run and stops all of them by pid at the end, also
  after Ctrl-C or an error. Each process gets ``ULTRASCALE_BENCH_RUN=<run id>`` in its
  environment; children inherit it (gunicorn workers, nginx workers, supervisord's programs,
  ultrascaled's instances), so a final sweep finds whatever the supervisors left behind.
* ``probe`` / ``wait_ok``: raw-socket HTTP/1.0 GETs against one port (no keep-alive, no
  library), used to poll an instance every 10 ms.
* :func:`parse_wrk`: the numbers out of ``wrk --latency`` output.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
RUN_ENV = "ULTRASCALE_BENCH_RUN"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes ----------------------------------------------------------------------------

class Tracker:
    """Starts processes for one run and stops every one of them by pid."""

    def __init__(self, run_id: str | None = None, cmdline_marker: str | None = None):
        # unique per Tracker: two runs of one process within a second must not share a marker
        self.run_id = run_id or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # nginx overwrites its environment with its process title, so its master is found by the
        # run folder in its command line (`-p <prefix>`) and its workers as the master's children.
        self.cmdline_marker = cmdline_marker
        self.popens: list[subprocess.Popen] = []

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env[RUN_ENV] = self.run_id
        return env

    def spawn(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
              log_path: str | os.PathLike | None = None, setsid: bool = True) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 cwd=cwd, env=self.env(env), start_new_session=setsid, close_fds=True)
        finally:
            if log_path:
                out.close()
        self.popens.append(p)
        return p

    def adopt(self, p: subprocess.Popen) -> None:
        """Stop at cleanup a process started elsewhere (the harness's daemon) with `env()`."""
        self.popens.append(p)

    def ours(self) -> list[psutil.Process]:
        """Live processes carrying this run's marker, other than this one and its helpers."""
        me = os.getpid()
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid == me:
                continue
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                mine = bool(self.cmdline_marker) and self.cmdline_marker in cmd
                if not mine:
                    mine = p.environ().get(RUN_ENV) == self.run_id
            except (psutil.Error, OSError):
                continue
            if not mine or "multiprocessing" in cmd:  # skip our load-tester helpers
                continue
            found.append(p)
            try:
                found.extend(p.children(recursive=True))
            except psutil.Error:
                pass
        uniq = {p.pid: p for p in found if p.pid != me}
        return list(uniq.values())

    def cleanup(self, grace: float = 10.0) -> list[int]:
        """TERM what we started, then KILL whatever still carries the marker. Returns the pids
        that had to be killed in the sweep (should be empty)."""
        for p in self.popens:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in self.popens:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        killed = []
        quiet = 0
        for _ in range(5):
            left = self.ours()
            if not left:
                # a process caught between fork and exec can be missed by one scan (its
                # /proc entry is half-written): believe "nothing left" only twice in a row
                quiet += 1
                if quiet == 2:
                    break
                time.sleep(0.05)
                continue
            quiet = 0
            for p in left:
                try:
                    p.kill()
                    killed.append(p.pid)
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=3)
        for p in self.popens:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        return sorted(set(killed))


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 15.0) -> bool:
    """Send `sig` to pid and wait until it is gone; SIGKILL after `timeout`. True if it was alive."""
    try:
        proc = psutil.Process(pid)
        kids = proc.children(recursive=True)
        proc.send_signal(sig)
    except psutil.Error:
        return False
    _, alive = psutil.wait_procs([proc], timeout=timeout)
    for p in alive + [k for k in kids if k.is_running()]:
        try:
            p.kill()
        except psutil.Error:
            pass
    return True


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ---- HTTP probes ----------------------------------------------------------------------------

def probe(port: int, path: str = "/health", timeout: float = 0.5,
          host: str = "127.0.0.1") -> tuple[int | None, bytes]:
    """(status, body) of one HTTP/1.0 GET; (None, b"") when nothing answered in time."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            chunks = []
            while True:
                d = s.recv(65536)
                if not d:
                    break
                chunks.append(d)
    except OSError:
        return None, b""
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    try:
        return int(parts[1]), body
    except (IndexError, ValueError):
        return None, b""


def health_pid(port: int, timeout: float = 0.5) -> int | None:
    """pid of the worker that answered /health with 200, else None."""
    status, body = probe(port, "/health", timeout)
    if status != 200:
        return None
    try:
        return int(json.loads(body)["pid"])
    except (ValueError, KeyError, TypeError):
        return -1


def wait_ok(port: int, path: str = "/health", timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe(port, path)[0] == 200:
            return True
        time.sleep(interval)
    return False


def wait_closed(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


# ---- wrk ------------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk latency: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    requests: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    socket_errors: dict = field(default_factory=dict)   # connect, read, write, timeout
    non_2xx: int = 0

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx

    @property
    def error_pct(self) -> float:
        # wrk counts a timed-out request in `timeout` but not in `requests`
        attempts = self.requests + self.socket_errors.get("timeout", 0)
        return 100.0 * self.errors / attempts if attempts else 100.0


def parse_wrk(out: str) -> WrkResult:
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M))
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+),", out, re.M)
    if not m:
        raise ValueError("no request count in wrk output:\n" + out)
    requests = int(m.group(1))
    seconds = _ms(m.group(2) + m.group(3)) / 1000.0
    rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))
    errs = {}
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if se:
        errs = dict(zip(("connect", "read", "write", "timeout"), map(int, se.groups())))
    n2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(rps=rps, requests=requests, seconds=seconds,
                     p50_ms=_ms(pct["50"]) if "50" in pct else None,
                     p99_ms=_ms(pct["99"]) if "99" in pct else None,
                     socket_errors=errs, non_2xx=int(n2.group(1)) if n2 else 0)


# ---- the machine ----------------------------------------------------------------------------

def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def machine_line() -> str:
    """The machine in one line, with the load average now (call it before the measurement)."""
    mem = psutil.virtual_memory().total / 2**30
    return (f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, load average before: "
            f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx_v = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_line = (wrk_v.stdout + wrk_v.stderr).splitlines()[0] if (wrk_v.stdout + wrk_v.stderr) else ""
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "nginx": nginx_v.split("/", 1)[-1] if nginx_v else "?",
        "gunicorn": _version("gunicorn"),
        "gevent": _version("gevent"),
        "supervisor": _version("supervisor"),
        "ultrascale": _version("ultrascale"),
        "wrk": " ".join(wrk_line.split()[:2]),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def load_snapshot(tracker: Tracker | None = None, seconds: float = 1.0) -> dict:
    """Load average, host CPU over `seconds`, and the busiest processes that are not this run's."""
    ours = {p.pid for p in tracker.ours()} if tracker else set()
    ours.add(os.getpid())
    procs = {}
    for p in psutil.process_iter(["name"]):
        try:
            procs[p.pid] = (p, p.cpu_times())
        except psutil.Error:
            pass
    psutil.cpu_percent(None)
    time.sleep(seconds)
    host = psutil.cpu_percent(None)
    busy = []
    for pid, (p, t0) in procs.items():
        if pid in ours:
            continue
        try:
            t1 = p.cpu_times()
        except psutil.Error:
            continue
        used = (t1.user + t1.system - t0.user - t0.system) / seconds * 100
        if used >= 5:
            busy.append((round(used), p.info["name"]))
    busy.sort(reverse=True)
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "host_cpu_pct": host,
            "others": [f"{name} {pct}%" for pct, name in busy[:4]]}


class OthersSampler:
    """Background thread: every `interval` s, the CPU used by processes that are not this run's
    (in % of one core), filed under the current section. Tells a shared machine's load apart
    from the benchmark's own (the load average counts both)."""

    def __init__(self, tracker: Tracker, interval: float = 3.0):
        import threading
        self.tracker = tracker
        self.interval = interval
        self.section = "setup"
        self.samples: dict[str, list[tuple[float, list[str]]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-others", daemon=True)
        self._prev: dict[int, float] = {}

    def start(self) -> "OthersSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _ours(self) -> set[int]:
        me = psutil.Process()
        pids = {me.pid} | {p.pid for p in self.tracker.ours()}
        try:
            pids |= {c.pid for c in me.children(recursive=True)}
        except psutil.Error:
            pass
        return pids

    def _tick(self) -> tuple[float, list[str]] | None:
        ours = self._ours()
        cur: dict[int, float] = {}
        names: dict[int, str] = {}
        for p in psutil.process_iter(["name"]):
            if p.pid in ours:
                continue
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            cur[p.pid] = t.user + t.system
            names[p.pid] = p.info["name"] or "?"
        prev, self._prev = self._prev, cur
        if not prev:
            return None
        used = {pid: (c - prev[pid]) / self.interval * 100 for pid, c in cur.items() if pid in prev}
        busy = sorted(((u, names[pid]) for pid, u in used.items() if u >= 5), reverse=True)
        return sum(used.values()), [f"{n} {u:.0f}%" for u, n in busy[:3]]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                s = self._tick()
            except Exception:  # noqa: BLE001 - never break the run for a statistic
                continue
            if s is not None:
                self.samples.setdefault(self.section, []).append(s)

    def summary(self) -> dict[str, dict]:
        out = {}
        for section, samples in self.samples.items():
            cpu = [c for c, _ in samples]
            top: dict[str, int] = {}
            for _, busy in samples:
                for b in busy:
                    name = b.rsplit(" ", 1)[0]
                    top[name] = top.get(name, 0) + 1
            out[section] = {"mean_pct": sum(cpu) / len(cpu), "max_pct": max(cpu), "samples": len(cpu),
                            "busy": sorted(top, key=top.get, reverse=True)[:3]}
        return out


def publish(lines: list[str], begin: str, end: str, write: bool) -> None:
    """A bench's section: `lines` (which start with `begin`) closed with `end`, printed, and put
    into docs/benchmarks.md in place of the section between the markers when `write`."""
    block = "\n".join([*lines, end])
    print(block)
    if write:
        write_section(REPO / "docs" / "benchmarks.md", block, begin, end)


def write_section(path, block: str, begin: str, end: str, fallback: str = "") -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of the section
    between those markers in the document at `path`, or append it; written atomically."""
    path = Path(path)
    text = path.read_text() if path.exists() else fallback
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block.rstrip("\n") + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
