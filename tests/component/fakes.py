"""A fake runner, clock and upstream for the reconciler: hand-written, recording every call and
failing on demand (the seam's contract is `ultrascaled.effects.runner.Runner`). A test drives the loop
with `Harness.settle()` and moves time with `Harness.advance()`; a crash loop or a 30 s start
timeout runs in milliseconds."""
from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

from ultrascaled.observe.events import EventLog
from ultrascaled.core.seams import CheckResult, Leftover, PortHolder, ProbeResult, ProcMem
from ultrascaled.spec import parse_spec
from ultrascaled.effects import logfiles
from ultrascaled.supervise.supervisor import FROM_SPEC, Supervisor


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t


@dataclass(eq=False)
class FakeProc:
    pid: int
    port: int
    argv: list
    alive: bool = True
    on_exit: object = None
    workers: list = field(default_factory=list)
    label: str = ""          # a worker type's process: its ULTRASCALE_PROCESS (fleet/name/index)
    env: dict = field(default_factory=dict)
    cwd: str = ""
    log_path: str = ""
    pass_fds: tuple = ()
    adopted: bool = False

    @property
    def pgid(self) -> int:
        return self.pid


@dataclass(eq=False)
class FakeSocket:
    fd: int
    addr: tuple
    closed: bool = False
    gate_open: bool = True

    def fileno(self) -> int:
        return self.fd

    def getsockname(self):
        return self.addr

    def close(self):
        self.closed = True


class FakeRunner:
    def __init__(self):
        self.next_pid = 100
        self.procs: dict[int, FakeProc] = {}        # pid -> proc
        self.calls: list[tuple] = []
        self.spawn_error: BaseException | None = None   # raised by the next spawns until cleared
        self.busy: dict[int, PortHolder] = {}
        self.answers: dict[int, ProbeResult] = {}  # port -> what its probes get (default 200)
        self.probes: list[int] = []
        self.group_error: OSError | None = None
        self.lingering: set[int] = set()          # pgids whose group survives SIGKILL
        self.leftovers: list[Leftover] = []
        self.rss: dict[int, int] = {}              # pid -> rss
        self.cpu: dict[int, float] = {}            # pid -> cumulative CPU seconds
        self.rotated: list[str] = []
        self.log_sizes: dict[str, int] = {}
        self.next_fd = 10
        self.sockets: list[FakeSocket] = []
        self.listen_error: OSError | None = None
        self.takeable = True
        self.not_holding: set[int] = set()         # masters that closed their listener (a replaced one)
        self.probe_ports: dict[int, int] = {}      # private probe port -> instance port
        self.exit_on_spawn: dict[int, int | None] = {}   # port -> rc its next masters exit with at once
        self.deaf: set[int] = set()                # ports whose masters ignore SIGTERM (a boot in C code)
        self.deaf_labels: set[str] = set()         # worker processes (fleet/name/index) that ignore their stop signal
        self.rotations: dict[str, tuple | None] = {}   # log path -> the rotate= it was last spawned with
        self.start_times: dict[int, float] = {}    # pid -> start time (a test changes one: the pid was reused)
        self.clock: FakeClock | None = None        # a worker's start time is the clock's wall time at spawn
        self.listening: set[tuple[str, int]] = set()   # (host, port) accepting connections (tcp_check)
        self.check_rcs: dict[str, int] = {}        # a readiness command's argv[0] -> its exit code (default 1)
        self.checks: list[tuple] = []              # ("tcp", host, port) / ("command", argv, cwd)

    # -- processes
    def spawn(self, argv, env, cwd, log_path, pass_fds=(), rotate=None):
        self.calls.append(("spawn", argv))
        self.rotations[log_path] = rotate
        if self.spawn_error is not None:
            raise self.spawn_error
        if "--name" not in argv:   # a worker type's process (supervise/workers_loop.py)
            self.next_pid += 10
            p = FakeProc(self.next_pid, 0, list(argv), label=env.get("ULTRASCALE_PROCESS", ""),
                         env=dict(env), cwd=cwd, log_path=log_path, pass_fds=tuple(pass_fds))
            self.procs[p.pid] = p
            self.start_times[p.pid] = self.clock.wall() if self.clock is not None else 1_600_000_000.0
            return p
        port = int(argv[argv.index("--name") + 1].rsplit("-", 1)[1])
        if port in self.exit_on_spawn:   # a master that exits before it is ready (rc)
            rc = self.exit_on_spawn[port]
            p = self._new(port, argv)
            asyncio.get_running_loop().call_soon(lambda: p.alive and (self.exit_proc(p, rc) and None))
            return p
        for fd in pass_fds:   # probes of a master's private socket are answered as its port's
            for sock in self.sockets:
                if sock.fd == fd and sock.addr[1] != port:
                    self.probe_ports[sock.addr[1]] = port
        return self._new(port, argv)

    # -- sockets the daemon holds
    def listen(self, host, port, gate_closed=False):
        if self.listen_error is not None:
            raise self.listen_error
        self.next_fd += 1
        sock = FakeSocket(self.next_fd, (host, port or 40000 + self.next_fd), gate_open=not gate_closed)
        self.sockets.append(sock)
        return sock

    def set_gate(self, sock, open_):
        self.calls.append(("gate", sock.addr[1], open_))
        sock.gate_open = open_

    def gates(self) -> dict[int, bool]:
        """Port -> gate open, for the sockets the daemon still holds."""
        return {s.addr[1]: s.gate_open for s in self.sockets if not s.closed and s.addr[1] < 40000}

    def takeover_channel(self):
        self.next_fd += 2
        return FakeSocket(self.next_fd - 1, ("chan", 0)), FakeSocket(self.next_fd, ("chan", 0))

    def hand_over(self, chan, sock, copies):
        """A spare's workers take `sock` (tests/component/test_spares.py)."""
        self.calls.append(("hand_over", sock.addr[1], copies))
        return copies

    def take_listener(self, pid, host, port):
        if pid in self.not_holding:
            return None
        return FakeSocket(999, (host, port)) if self.takeable else None

    def _new(self, port, argv) -> FakeProc:
        self.next_pid += 10
        p = FakeProc(self.next_pid, port, argv, workers=[self.next_pid + 1])
        self.procs[p.pid] = p
        return p

    def adopt(self, pid):
        self.calls.append(("adopt", pid))
        known = self.procs.get(pid)
        if known is not None and known.label:   # a worker's or a job run's process an earlier daemon left
            known.adopted = True                 # not our child: its exit code is not ours to read
            return known
        lo = next(lo for lo in self.leftovers if lo.pid == pid)
        p = FakeProc(pid, lo.port, list(lo.cmdline), workers=[pid + 1])
        self.procs[pid] = p
        return p

    def watch(self, handle, on_exit):
        handle.on_exit = (lambda rc: on_exit(None)) if handle.adopted else on_exit

    def unwatch(self, handle):
        handle.on_exit = None

    def exit(self, port: int, rc: int | None = -9) -> FakeProc:
        """The master on `port` exits (kill -9 from outside, a crash, ...)."""
        p = self.master(port)
        p.alive = False
        asyncio.get_running_loop().call_soon(p.on_exit, rc)
        return p

    def exit_proc(self, p: FakeProc, rc: int | None = -9) -> FakeProc:
        """This very master exits (e.g. a replacement booting beside the serving one)."""
        p.alive = False
        asyncio.get_running_loop().call_soon(p.on_exit, rc)
        return p

    def worker(self, label: str) -> FakeProc:
        """The live process of a worker type's slot, by its ULTRASCALE_PROCESS."""
        return next(p for p in self.procs.values() if p.label == label and p.alive)

    def workers_alive(self) -> list[str]:
        return sorted(p.label for p in self.procs.values() if p.label and p.alive)

    def master(self, port: int) -> FakeProc:
        return next(p for p in self.procs.values() if p.port == port and p.alive)

    def signal(self, handle, sig):
        self.calls.append(("signal", handle.label or handle.port, sig))
        if not handle.alive:
            return False
        if handle.label:   # a worker stops on its stop signal unless it is deaf to it
            if handle.label not in self.deaf_labels:
                handle.alive = False
                asyncio.get_running_loop().call_soon(handle.on_exit, -sig)
            return True
        if sig == signal.SIGTERM and handle.port not in self.deaf:   # gunicorn stops gracefully
            handle.alive = False
            asyncio.get_running_loop().call_soon(handle.on_exit, 0)
        return True

    def kill_group(self, pgid, sig):
        self.calls.append(("kill_group", pgid, sig))
        p = self.procs.get(pgid)
        if p is not None and p.alive and sig == signal.SIGKILL:
            p.alive = False
            asyncio.get_running_loop().call_soon(p.on_exit, -9)
        return True

    def group_alive(self, pgid):
        if self.group_error is not None:
            raise self.group_error
        return pgid in self.lingering

    def signal_worker(self, pid, sig):
        self.calls.append(("signal_worker", pid, sig))
        return True

    def sample(self, pid, metric):
        p = self.procs.get(pid)
        if p is None or not p.alive:
            return None, []
        return (ProcMem(pid, self.rss.get(pid, 10 << 20), cpu=self.cpu.get(pid, 0.0)),
                [ProcMem(w, self.rss.get(w, 20 << 20), cpu=self.cpu.get(w, 0.0)) for w in p.workers])

    def sample_tree(self, pid, metric):
        """A worker type's process and its children (`FakeProc.workers`: e.g. a Celery pool)."""
        self.calls.append(("sample_tree", pid))
        p = self.procs.get(pid)
        if p is None or not p.alive:
            return []
        return [ProcMem(x, self.rss.get(x, 10 << 20), cpu=self.cpu.get(x, 0.0)) for x in [pid, *p.workers]]

    def forget(self, pids):
        pass

    def find_leftovers(self, fleet):
        return list(self.leftovers)

    def start_time(self, pid):
        p = self.procs.get(pid)
        if p is not None and p.label and not p.alive:
            return None   # a worker's process that exited: no such pid
        return self.start_times.get(pid, 1_600_000_000.0)

    def port_in_use(self, host, port):
        return self.busy.get(port)

    async def probe(self, host, port, path, timeout):
        port = self.probe_ports.get(port, port)
        self.probes.append(port)
        return self.answers.get(port, ProbeResult(200, "HTTP 200"))

    async def tcp_check(self, host, port, timeout):
        self.checks.append(("tcp", host, port))
        if (host, port) in self.listening:
            return CheckResult(True, "connected")
        return CheckResult(False, "connection refused")

    async def run_check(self, argv, env, cwd, timeout):
        self.checks.append(("command", list(argv), cwd, env.get("ULTRASCALE_PROCESS")))
        rc = self.check_rcs.get(argv[0], 1)
        return CheckResult(rc == 0, "exit 0" if rc == 0 else f"{argv[0]} exited {rc}")

    def prepare_metrics_dir(self, path):
        pass

    def log_size(self, path):
        return self.log_sizes.get(path, 0)

    def rotate_log(self, path, backups):
        self.rotated.append(path)
        self.log_sizes[path] = 0

    def log_tail(self, path, lines):
        return logfiles.tail(path, lines)   # the test writes the log the app would have

    def log_since(self, path, offset):
        return logfiles.since(path, offset)

    def kinds(self) -> list:
        return [c[0] for c in self.calls]


class FakeLocks:
    """Job locks (effects/joblock.py) as the kernel keeps flocks: a lock handed to a process
    (pass_fds) is held while that process lives; `outside` holds some for a process we never saw."""

    def __init__(self, runner: FakeRunner):
        self.runner = runner
        self.paths: dict[int, str] = {}     # fd -> lock path
        self.taken: dict[str, int] = {}     # path -> fd the daemon holds between take and release
        self.outside: set[str] = set()
        self.next_fd = 500

    def held(self, path):
        return path in self.outside or path in self.taken or any(
            p.alive and any(self.paths.get(fd) == path for fd in p.pass_fds) for p in self.runner.procs.values())

    def take(self, path):
        if self.held(path):
            return None
        self.next_fd += 1
        self.paths[self.next_fd] = path
        self.taken[path] = self.next_fd
        return self.next_fd

    def release(self, fd):
        self.taken.pop(self.paths[fd], None)


class FakeUpstream:
    def __init__(self):
        self.excluded: frozenset[int] = frozenset()
        self.results: list[tuple[bool, str, bool]] = []   # next apply results (default ok)
        self.applied: list[list[int]] = []
        self.stamp = 1

    async def start(self):
        pass

    async def apply(self, servers):
        self.applied.append([p for _, p in servers])
        return self.results.pop(0) if self.results else (True, "ok", True)

    def config_stamp(self):
        return self.stamp

    async def check(self):
        pass

    async def reconfigure(self, spec):
        self.reconfigured = getattr(self, "reconfigured", 0) + 1
        if hasattr(self, "gated"):
            self.gated = spec.nginx.upstream_servers == "range"
        return True, "ok"

    async def stop(self):
        pass

    def status(self):
        return {"mode": "fake"}


SPEC = """
name: comp
app: {{directory: {dir}}}
instances: {{count: 2, min: 0, max: 6, base_port: 8001}}
gunicorn: {{workers: 1, graceful_timeout: 5}}
health: {{start_timeout: 30, interval: 10}}
restart: {{drain_seconds: 0.5, backoff_initial: 0.5, backoff_max: 30, fatal_crashes: 5, fatal_window: 60}}
memory: {{worker_limit_mb: 100, samples_over: 2, fleet_budget_mb: 1000}}
paths: {{state_dir: {dir}/state, log_dir: {dir}/logs}}
nginx: {{mode: "off"}}
{extra}
"""


class Harness:
    def __init__(self, tmp_path, extra: str = "", traffic=FROM_SPEC, autoscale=None, *,
                 runner: FakeRunner | None = None, clock: FakeClock | None = None, locks: FakeLocks | None = None,
                 queue_depth=None):
        """`runner`, `clock`, `locks`: an earlier Harness's, for a daemon restarted on the same host.
        `queue_depth`: the worker types' queue read (tests/component/test_queue_scale.py's fake)."""
        self.tmp_path = tmp_path
        self.spec = parse_spec(SPEC.format(dir=tmp_path, extra=extra), base_dir=tmp_path)
        self._extra = extra
        self.clock = clock or FakeClock()
        self.runner = runner or FakeRunner()
        self.runner.clock = self.clock
        self.locks = locks or FakeLocks(self.runner)
        self.upstream = FakeUpstream()
        self.events = EventLog(clock=self.clock.wall)
        self.sup = Supervisor(self.spec, self.events, self.upstream, runner=self.runner, clock=self.clock,
                              lock=False,  # tests/component/test_fleetlock.py tests the lock
                              traffic=traffic, autoscale=autoscale, job_locks=self.locks,
                              queue_depth=queue_depth)
        self.rec = self.sup.rec
        self.sup.guard.BACKOFF_INITIAL = 0.001

    async def start(self):
        """What Supervisor.start does, without the background loops: the test drives them."""
        for d in (self.rec.state_dir, self.rec.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.sup._load_state()
        self.sup.workers.load()
        self.sup.jobs.load()
        self.rec.adopt_leftovers()
        self.sup.workers.adopt()
        await self.settle()
        if self.spec.processes or self.sup.workers.slots:   # the supervisor starts the worker and job types once the web fleet is ready
            assert self.rec.ready_event.is_set()
            self.sup.workers.begin()
            self.sup.jobs.begin()
            await self.settle()

    def restarted(self, extra: str | None = None) -> "Harness":
        """A new daemon on the same host and state folder after this one was SIGKILLed: its
        processes run on (the web masters are its leftovers), nothing of this one's loops
        acts any more. `extra`: the new daemon's spec (default: the same)."""
        self.runner.leftovers = [Leftover(p.pid, p.port, tuple(p.argv), True, True)
                                 for p in self.runner.procs.values() if p.alive and not p.label]
        return Harness(self.tmp_path, self._extra if extra is None else extra, runner=self.runner,
                       clock=self.clock, locks=self.locks)

    async def settle(self, rounds: int = 50):
        """Step the loop until nothing is left to do at this instant."""
        for _ in range(rounds):
            self.rec.step()
            if self.sup.workers.started:
                self.sup.workers.step()
            if self.sup.jobs.started:
                self.sup.jobs.step()
            for _ in range(5):
                await asyncio.sleep(0)
            if self.rec._tasks:  # sampling runs in a thread: wait for it, not for wall time
                await asyncio.wait(list(self.rec._tasks), timeout=5)
            if not self.rec._inbox and not self.rec._tasks:
                self.rec.step()
                moves = self.sup.workers.moves
                if self.sup.workers.started:
                    self.sup.workers.step()
                if self.sup.jobs.started:
                    self.sup.jobs.step()
                for _ in range(5):
                    await asyncio.sleep(0)
                if not self.rec._inbox and not self.rec._tasks and self.sup.workers.moves == moves:
                    return
        raise AssertionError("the reconciler did not settle")

    async def advance(self, seconds: float, step: float = 0.25):
        """Move the fake clock forward, letting the loop act at each step (timers fire)."""
        end = self.clock.t + seconds
        while self.clock.t < end:
            self.clock.t = min(end, self.clock.t + step)
            await self.settle()

    async def sample(self):
        self.sup.sample_all()   # the web instances', then the worker processes' (one pass)
        await self.settle()

    def states(self) -> dict[int, str]:
        return {p: i.state.value for p, i in sorted(self.rec.instances.items())}

    def events_named(self, name: str) -> list[dict]:
        return [e for e in self.events.since(0) if e["event"] == name]

    def alerts(self) -> dict[str, dict]:
        return dict(self.rec.alerts.raised)
