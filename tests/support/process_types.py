"""GET /processes from a real daemon (support.harness.Daemon) as the process-type tests read it:
the types, waiting for a state of them, and the processes a fleet's types left on the host."""
from __future__ import annotations

import os
import time

import psutil


def processes(d) -> dict:
    status, body = d.api("GET", "/processes")
    assert status == 200, body
    return body


def wait_processes(d, cond, timeout=20, what="processes", every=0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = processes(d)
        if cond(last):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last /processes: {last}\n{d.log_tail()}")


def running(body, name, n) -> bool:
    """Type `name` runs exactly `n` processes, every one running."""
    t = body.get(name)
    return t is not None and len(t["instances"]) == n and t["ready"] == n and \
        all(i["state"] == "running" for i in t["instances"])


def pids(body, name) -> dict[int, int]:
    return {i["index"]: i["pid"] for i in body[name]["instances"]}


def pid_of(body, name, index):
    return pids(body, name)[index]


def gone(pid, timeout=10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def marked(fleet: str) -> set[int]:
    """Live processes whose environment says they belong to this fleet's process types
    (ULTRASCALE_PROCESS=<fleet>/...): the workers, and what they forked (RQ's work-horses, which
    move to a process group of their own, Celery's pool). A zombie does not count."""
    prefix = f"ULTRASCALE_PROCESS={fleet}/".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
        except OSError:
            continue
        if any(v.startswith(prefix) for v in env.split(b"\0")):
            found.add(int(entry))
    return found
