"""The load-generating process: runs a share of the virtual users on one asyncio loop.

Protocol with the coordinator (a duplex multiprocessing Connection):
  worker -> ("ready",)
  coord  -> ("go", t0_monotonic)             users start at t0 + their ramp offset
  worker -> ("batch", dict)                  about once a second: counters and latencies
  coord  -> ("stop",)                        optional: stop issuing requests, drain, finish
  worker -> ("done", dict)                   final batch plus CPU seconds and wall time
CLOCK_MONOTONIC is system-wide on Linux, so t0 and deadlines mean the same in every process.
"""
from __future__ import annotations

import asyncio
import bisect
import gc
import random
import resource
import time
import traceback
from array import array
from dataclasses import dataclass

from .httpclient import Connection, timed_get

MAX_ERROR_SAMPLES = 20
CONNECT_ERROR_PAUSE = 0.01  # seconds a user waits after a failed connect


@dataclass
class WorkerSpec:
    host: str
    port: int
    host_header: str
    paths: list            # [(path, weight)]
    start_offsets: list    # one per user of this worker: seconds after t0
    duration: float | None
    max_requests: int | None
    timeout: float
    think: float           # seconds
    seed: int = 0


class _Batch:
    __slots__ = ("ok", "failed", "status", "errors", "paths", "lat", "samples")

    def __init__(self):
        self.ok = 0
        self.failed = 0
        self.status: dict = {}
        self.errors: dict = {}
        self.paths: dict = {}
        self.lat = array("d")
        self.samples: list = []

    def as_dict(self) -> dict:
        return {"ok": self.ok, "failed": self.failed, "status": self.status, "errors": self.errors,
                "paths": self.paths, "lat": self.lat, "samples": self.samples}


class _Worker:
    def __init__(self, spec: WorkerSpec, conn):
        self.spec = spec
        self.conn = conn
        self.batch = _Batch()
        self.budget = spec.max_requests
        self.stop = asyncio.Event()
        self.samples_left = MAX_ERROR_SAMPLES
        self.connections: list[Connection] = []
        self.cancelled = 0
        self.rng = random.Random(spec.seed)
        total = 0
        self.cum: list[float] = []
        for _, w in spec.paths:
            total += w
            self.cum.append(total)
        self.paths = [p for p, _ in spec.paths]
        self.total_weight = total

    def pick(self) -> str:
        if len(self.paths) == 1:
            return self.paths[0]
        return self.paths[bisect.bisect_right(self.cum, self.rng.random() * self.total_weight)]

    async def sleep_or_stop(self, delay: float) -> None:
        if delay <= 0 or self.stop.is_set():
            return
        try:
            await asyncio.wait_for(self.stop.wait(), delay)
        except TimeoutError:
            pass

    async def user(self, offset: float, t0: float) -> None:
        await self.sleep_or_stop(t0 + offset - time.monotonic())
        conn = Connection(self.spec.host, self.spec.port, self.spec.host_header)
        self.connections.append(conn)
        timeout, think = self.spec.timeout, self.spec.think
        b = None
        perf = time.perf_counter
        try:
            while not self.stop.is_set():
                if self.budget is not None:
                    if self.budget <= 0:
                        break
                    self.budget -= 1
                path = self.pick()
                start = perf()
                status, kind, detail = await timed_get(conn, path, timeout)
                elapsed = perf() - start
                b = self.batch
                b.lat.append(elapsed)
                b.paths[path] = b.paths.get(path, 0) + 1
                if status is not None:
                    b.status[status] = b.status.get(status, 0) + 1
                if kind is None:
                    b.ok += 1
                else:
                    b.failed += 1
                    b.errors[kind] = b.errors.get(kind, 0) + 1
                    if self.samples_left > 0:
                        self.samples_left -= 1
                        b.samples.append({"t": round(time.monotonic() - t0, 3), "kind": kind,
                                          "path": path, "detail": detail[:200]})
                    # A failed connect can fail synchronously (EMFILE, refused on loopback)
                    # without ever yielding: always give the loop a turn, and pause briefly
                    # so a dead target is not hammered in a tight loop.
                    if kind in ("connect_refused", "connect_error"):
                        await self.sleep_or_stop(CONNECT_ERROR_PAUSE)
                    else:
                        await asyncio.sleep(0)
                if think:
                    await self.sleep_or_stop(think)
        finally:
            conn.close()

    def flush(self) -> None:
        b, self.batch = self.batch, _Batch()
        self.conn.send(("batch", b.as_dict()))

    async def reporter(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.flush()

    async def deadline(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        self.stop.set()

    async def main(self, t0: float) -> None:
        loop = asyncio.get_running_loop()

        def on_command():
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                msg = ("stop",)  # coordinator went away: stop too
                loop.remove_reader(self.conn.fileno())
            if msg[0] == "stop":
                self.stop.set()

        loop.add_reader(self.conn.fileno(), on_command)
        helpers = [asyncio.create_task(self.reporter())]
        if self.spec.duration is not None:
            helpers.append(asyncio.create_task(self.deadline(t0 + self.spec.duration)))
        users = [asyncio.create_task(self.user(off, t0)) for off in self.spec.start_offsets]
        # Run until every user finished (budget used up, deadline or stop). Once stopping,
        # in-flight requests get up to `timeout` (+ margin) to finish, then are cancelled.
        pending = set(users)
        while pending:
            if self.stop.is_set():
                done, pending = await asyncio.wait(pending, timeout=self.spec.timeout + 1.0)
                break
            stop_task = asyncio.create_task(self.stop.wait())
            done, pending = await asyncio.wait(pending | {stop_task},
                                               return_when=asyncio.FIRST_COMPLETED)
            if stop_task in done:
                pending.discard(stop_task)
            else:
                stop_task.cancel()
                pending.discard(stop_task)
        for task in pending:
            task.cancel()
            self.cancelled += 1
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        loop.remove_reader(self.conn.fileno())
        for c in self.connections:
            c.close()


def _raise_nofile_limit(users: int) -> None:
    """One socket per user: lift the soft open-files limit towards the hard one if needed."""
    need = users + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass


def worker_entry(spec: WorkerSpec, conn) -> None:
    """Process target: wait for "go", run the users, report, exit."""
    wall0 = time.monotonic()
    _raise_nofile_limit(len(spec.start_offsets))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        conn.send(("ready",))
        msg = conn.recv()
        if msg[0] != "go":
            conn.send(("done", {"ok": 0, "failed": 0, "status": {}, "errors": {}, "paths": {},
                                "lat": array("d"), "samples": [], "cpu": 0.0, "wall": 0.0,
                                "cancelled": 0, "connects": 0, "reconnects": 0}))
            return
        t0 = msg[1]
        gc.freeze()  # fewer full collections while millions of small objects churn
        worker = _Worker(spec, conn)
        asyncio.run(worker.main(t0))
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        final = worker.batch.as_dict()
        final.update(
            cpu=(ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            wall=time.monotonic() - wall0,
            cancelled=worker.cancelled,
            connects=sum(c.connects for c in worker.connections),
            reconnects=sum(c.reconnects for c in worker.connections),
        )
        conn.send(("done", final))
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass
    except BaseException:
        try:
            conn.send(("crash", traceback.format_exc()))
        except Exception:
            pass
        raise
